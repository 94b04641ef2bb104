#!/usr/bin/env bash
# `make bench`: prints figures; asserts nothing.
set -euo pipefail
cd "$(dirname "$0")/.."
py=.venv/bin/python
export PATH="${PINSERVE_BIN_DIR:-$(bash tools/testbin.sh 2>/dev/null)}:$PATH"

echo "== pinserve render (planning + rendering, per ModelServer and per process)"
"$py" tools/bench_render.py

echo
echo "== benchmark client cost against a no-op gRPC server on loopback"
"$py" tools/bench_client.py

echo
echo "== operator at scale on the local control plane"
"$py" tools/bench_operator.py "$@"
