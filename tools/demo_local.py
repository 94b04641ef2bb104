"""`make demo` without Docker: the local simulated control plane, the operator, the examples.

Usage: python -m tools.demo_local up|down   (from the repository root)
The operator runs as a background process (its PID and log under the cluster's state dir);
`down` stops exactly that process and the control plane tools/cluster.py started.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from tools import cluster as cluster_tools

REPO = Path(__file__).resolve().parent.parent

NAMESPACE = "demo"


def say(message: str) -> None:
    print(f"== {message}", flush=True)


def state_dir() -> Path:
    return cluster_tools.cache_root() / "cluster-demo"


def operator_pid_file() -> Path:
    return state_dir() / "operator.pid"


def stop_operator() -> None:
    pid_file = operator_pid_file()
    if not pid_file.exists():
        return
    pid = int(pid_file.read_text().strip())
    try:
        os.kill(pid, signal.SIGTERM)
        for _ in range(100):
            os.kill(pid, 0)
            time.sleep(0.1)
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    pid_file.unlink(missing_ok=True)


def up() -> None:
    started = time.monotonic()
    say("building or reusing the control-plane binaries (tools/testbin.sh; the first build takes a while)")
    bin_dir = cluster_tools.build_binaries()
    local = cluster_tools.LocalCluster(state_dir(), bin_dir)
    say("starting etcd, kube-apiserver, controller-manager, scheduler and KWOK on 127.0.0.1")
    local.up(build=False)
    kube = local.kube()
    say("installing the CRD")
    kube.install_crd(REPO / "crds/modelservers.pinserve.io.yaml", "modelservers.pinserve.io")
    stop_operator()
    say("starting the operator (pinserve run) in the background")
    log = open(state_dir() / "operator.log", "w")  # noqa: SIM115  (the child keeps it)
    env = {**os.environ, "KUBECONFIG": str(local.kubeconfig), "PINSERVE_RESYNC_SECONDS": "10"}
    proc = subprocess.Popen([sys.executable, "-m", "pinserve", "run", "--liveness", "http://127.0.0.1:0/healthz"],
                            env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    operator_pid_file().write_text(str(proc.pid))
    kube.kubectl("create", "namespace", NAMESPACE, check=False)
    say(f"applying manifests/examples/ into namespace {NAMESPACE}")
    kube.kubectl("apply", "-n", NAMESPACE, "-f", str(REPO / "manifests/examples"))
    names = kube.kubectl("get", "-n", NAMESPACE, "modelservers", "-o", "name").stdout.split()
    kube.kubectl("wait", "-n", NAMESPACE, *names, "--for=condition=Placed", "--timeout=90s", check=False,
                 timeout=120)
    # Examples whose model lives on a PVC stay Pending here (no such claim); the others become Ready.
    kube.kubectl("wait", "-n", NAMESPACE, *names, "--for=condition=Ready", "--timeout=30s", check=False, timeout=60)
    print()
    print(kube.kubectl("get", "nodes", "-L", "pinserve.io/physical-cores,pinserve.io/threads-per-core,"
                       "pinserve.io/numa-nodes,pinserve.io/cpu-manager-policy").stdout)
    print(kube.kubectl("get", "-n", NAMESPACE, "modelservers", "-o", "wide").stdout)
    print(kube.kubectl("get", "-n", NAMESPACE, "modelservers", "-o",
                       "custom-columns=NAME:.metadata.name,PLACED:.status.conditions[?(@.type=='Placed')].reason,"
                       "CPUS:.status.placement.cpuRequest,THREADS/CORE:.status.placement.threadsPerCore,"
                       "KMP_AFFINITY:.status.placement.threads.kmpAffinity,NODES:.status.placement.nodes,"
                       "PODS:.status.pods[*].node").stdout)
    say(f"up in {time.monotonic() - started:.0f}s. Try:  export KUBECONFIG={local.kubeconfig}")
    say(f"  {bin_dir}/kubectl describe -n {NAMESPACE} modelserver rfcn     (operator log: {state_dir()}/operator.log)")
    say("Simulated pods run no TensorFlow Serving: benchmark Jobs wait (Benchmarked=Unknown). "
        "`make demo-down` stops everything.")


def down() -> None:
    stop_operator()
    local = cluster_tools.LocalCluster(state_dir())
    local.down()
    say("stopped the operator and the local control plane")


if __name__ == "__main__":
    {"up": up, "down": down}[sys.argv[1] if len(sys.argv) > 1 else "up"]()
