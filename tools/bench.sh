#!/usr/bin/env bash
# `make bench`: prints figures; asserts nothing.
set -euo pipefail
cd "$(dirname "$0")/.."
py=.venv/bin/python
export PATH="${PINSERVE_BIN_DIR:-$(bash tools/testbin.sh 2>/dev/null)}:$PATH"

echo "== pinserve render (planning + rendering, per ModelServer and per process)"
"$py" -m tools.bench_render

echo
echo "== benchmark client cost against a no-op gRPC server on loopback"
"$py" -m tools.bench_client

echo
echo "== operator at scale on the local control plane"
"$py" -m tools.bench_operator "$@"
