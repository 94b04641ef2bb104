#!/usr/bin/env bash
# `make demo`: kind + real TensorFlow Serving when Docker works; else the local real node (a real
# kubelet with the static CPU manager; root on Linux); else the local simulated cluster.
# `make demo-down` (tools/demo.sh down) stops what it started and gives the host back as it was.
set -euo pipefail
cd "$(dirname "$0")/.."
py=.venv/bin/python
if [ "${1:-up}" = down ]; then
  if docker info >/dev/null 2>&1 && [ -x "$(bash tools/testbin.sh kind 2>/dev/null)/kind" ]; then
    "$py" -m tools.demo_kind down || true
  fi
  if "$py" -m tools.node check >/dev/null 2>&1; then
    "$py" -m tools.node down
  fi
  "$py" -m tools.demo_local down
  exit 0
fi
if docker info >/dev/null 2>&1; then
  echo "== Docker is available: kind cluster with the static CPU manager and real TensorFlow Serving"
  exec "$py" -m tools.demo_kind up
fi
echo "== Docker is not available here (no engine answers 'docker info')."
if why=$("$py" -m tools.node check); then
  echo "== Using the local real node: a real kubelet (static CPU manager, full-pcpus-only) on containerd,"
  echo "   joined to a local control plane; pinserve installed with its Helm chart. The model server is the"
  echo "   TF Serving stand-in (real TensorFlow; TF Serving's own binary cannot be installed here)."
  echo "   First run: builds Kubernetes, the kubelet and the images (tens of minutes); then about 2 minutes."
  PATH="$(bash tools/testbin.sh 2>/dev/null):$PATH" exec "$py" -m tools.node demo
fi
echo "== The local real node cannot run here either: $why."
echo "== Falling back to the local simulated control plane: etcd + kube-apiserver + KWOK nodes built"
echo "   from real CPU topologies. Pods are simulated, so there is no TensorFlow Serving and no latency"
echo "   figures; you see planning, pinning and status exactly as the operator computes them."
exec "$py" -m tools.demo_local up
