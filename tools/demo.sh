#!/usr/bin/env bash
# `make demo`: kind + real TensorFlow Serving when Docker works, else the local simulated cluster.
# `make demo-down` (tools/demo.sh down) stops what it started.
set -euo pipefail
cd "$(dirname "$0")/.."
py=.venv/bin/python
if [ "${1:-up}" = down ]; then
  if docker info >/dev/null 2>&1 && [ -x "$(bash tools/testbin.sh kind 2>/dev/null)/kind" ]; then
    "$py" -m tools.demo_kind down || true
  fi
  "$py" -m tools.demo_local down
  exit 0
fi
if docker info >/dev/null 2>&1; then
  echo "== Docker is available: kind cluster with the static CPU manager and real TensorFlow Serving"
  exec "$py" -m tools.demo_kind up
fi
echo "== Docker is not available here (no engine answers 'docker info')."
echo "== Falling back to the local simulated control plane: etcd + kube-apiserver + KWOK nodes built"
echo "   from real CPU topologies. Pods are simulated, so there is no TensorFlow Serving and no latency"
echo "   figures; you see planning, pinning and status exactly as the operator computes them."
exec "$py" -m tools.demo_local up
