#!/usr/bin/env bash
# `make demo`: kind + real TensorFlow Serving when Docker works, else the local simulated cluster.
# `make demo-down` (tools/demo.sh down) stops what it started.
set -euo pipefail
cd "$(dirname "$0")/.."
py=.venv/bin/python
if [ "${1:-up}" = down ]; then
  if docker info >/dev/null 2>&1 && [ -x "$(bash tools/testbin.sh kind 2>/dev/null)/kind" ]; then
    "$py" tools/demo_kind.py down || true
  fi
  "$py" tools/demo_local.py down
  exit 0
fi
if docker info >/dev/null 2>&1; then
  echo "== Docker is available: kind cluster with the static CPU manager and real TensorFlow Serving"
  exec "$py" tools/demo_kind.py up
fi
echo "== Docker is not available here (no engine answers 'docker info')."
echo "== Falling back to the local simulated control plane: etcd + kube-apiserver + KWOK nodes built"
echo "   from real CPU topologies. Pods are simulated, so there is no TensorFlow Serving and no latency"
echo "   figures; you see planning, pinning and status exactly as the operator computes them."
exec "$py" tools/demo_local.py up
