"""The product's promise on a real kubelet: exclusive cores, threads sized to them, a real benchmark.

Runs on kind or on the local real node (see conftest.py). The order matters: the last test deletes
the ModelServer.
"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from e2e_support import Backend, exec_in, free_the_pinnable_cpu, modelserver, start_line

from pinserve.topology.cpuset import parse_cpulist
from pinserve.topology.model import Topology
from pinserve.topology.sysfs import read_topology
from tools.node.config import BRIDGE

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(3600)]

REPO = Path(__file__).resolve().parents[2]
CGROUP_CPUSET = ("cat /sys/fs/cgroup/cpuset/cpuset.cpus 2>/dev/null || cat /sys/fs/cgroup/cpuset.cpus.effective")


def _pods(backend: Backend) -> list[dict[str, Any]]:
    pods: list[dict[str, Any]] = modelserver(backend)["status"]["pods"]
    assert pods, "status.pods is empty"
    return pods


def _cpu_manager_state(backend: Backend) -> dict[str, Any]:
    state: dict[str, Any] = json.loads(backend.stack.node.layout.cpu_manager_state.read_text())  # type: ignore[attr-defined]
    return state


def test_operator_and_agent_run_as_pods_from_the_chart(backend: Backend) -> None:
    pods = json.loads(backend.kubectl("get", "pods", "-n", "pinserve-system", "-o", "json"))["items"]
    components = {p["metadata"]["labels"].get("app.kubernetes.io/component"): p["status"]["phase"] for p in pods}
    assert components.get("operator") == "Running", components
    assert components.get("agent") == "Running", components


def test_server_pods_are_guaranteed_with_the_cpus_status_reports(backend: Backend) -> None:
    status = modelserver(backend)["status"]
    conditions = {c["type"]: c for c in status["conditions"]}
    assert (conditions["Pinned"]["status"], conditions["Pinned"]["reason"]) == ("True", "ExclusiveCores"), conditions
    for pod in _pods(backend):
        live = json.loads(backend.kubectl("get", "pod", "-n", backend.namespace, pod["name"], "-o", "json"))
        assert live["status"]["qosClass"] == "Guaranteed" == pod["qosClass"]
        # What the kernel enforces inside the server container is what status reports.
        allowed = exec_in(backend, pod["name"], "server", "grep Cpus_allowed_list /proc/1/status")
        assert parse_cpulist(allowed.split(":", 1)[1]) == parse_cpulist(pod["cpus"])
        cgroup = exec_in(backend, pod["name"], "server", CGROUP_CPUSET)
        assert parse_cpulist(cgroup) == parse_cpulist(pod["cpus"])
        # The agent read the same set from the kubelet and published it on the pod.
        assert parse_cpulist(live["metadata"]["annotations"]["pinserve.io/cpus"]) == parse_cpulist(pod["cpus"])


def test_pod_traffic_stays_on_this_machine(backend: Backend) -> None:
    """The host reaches the pods over the node's bridge (the kubelet's probes), never its default route."""
    if backend.name != "realnode":
        pytest.skip("the local real node's network only")
    for pod in _pods(backend):
        ip = backend.kubectl("get", "pod", "-n", backend.namespace, pod["name"], "-o", "jsonpath={.status.podIP}")
        route = subprocess.run(["ip", "route", "get", ip], capture_output=True, text=True, check=True).stdout
        assert f"dev {BRIDGE} " in route, route


def test_the_kubelet_assigned_those_cpus_exclusively(backend: Backend) -> None:
    if backend.name != "realnode":
        pytest.skip("reads the kubelet's checkpoint on the host: the real-node backend only")
    state = _cpu_manager_state(backend)
    assert state["policyName"] == "static"
    for pod in _pods(backend):
        uid = backend.kubectl("get", "pod", "-n", backend.namespace, pod["name"], "-o", "jsonpath={.metadata.uid}")
        entry = state.get("entries", {}).get(uid, {})
        assert parse_cpulist(entry.get("server", "")) == parse_cpulist(pod["cpus"]), state
        assert not parse_cpulist(pod["cpus"]) & parse_cpulist(state["defaultCpuSet"])


def test_the_agent_published_the_nodes_real_topology(backend: Backend) -> None:
    for pod in _pods(backend):
        node = json.loads(backend.kubectl("get", "node", pod["node"], "-o", "json"))
        published = Topology.from_dict(json.loads(node["metadata"]["annotations"]["pinserve.io/cpu-topology"]))
        labels = node["metadata"]["labels"]
        assert labels["pinserve.io/cpu-manager-policy"] == "static"
        assert int(labels["pinserve.io/physical-cores"]) == published.physical_cores
        if backend.name == "realnode":
            host = read_topology("/")
            assert published.cpus == host.cpus
            assert published.physical_cores == host.physical_cores
            assert published.threads_per_core == host.threads_per_core


def test_the_start_script_sized_threads_to_the_exclusive_cores(backend: Backend) -> None:
    status = modelserver(backend)["status"]
    cores = status["placement"]["physicalCores"]
    for pod in _pods(backend):
        fields = start_line(backend, pod["name"])
        assert int(fields["physical_cores"]) == cores == len(parse_cpulist(pod["cpus"]))
        assert int(fields["TENSORFLOW_INTRA_OP_PARALLELISM"]) == cores
        inter = int(fields["TENSORFLOW_INTER_OP_PARALLELISM"])
        # The server process (PID 1: the start script execs it) received exactly those numbers.
        argv = exec_in(backend, pod["name"], "server", "tr '\\0' '\\n' < /proc/1/cmdline").splitlines()
        assert f"--tensorflow_intra_op_parallelism={cores}" in argv, argv
        assert f"--tensorflow_inter_op_parallelism={inter}" in argv, argv
        if backend.name == "realnode":
            # The stand-in reports the pools TensorFlow really configured.
            log = backend.kubectl("logs", "-n", backend.namespace, pod["name"], "-c", "server")
            applied = next(row for row in log.splitlines() if "stand-in" in row and "serving: intra_op" in row)
            assert f"intra_op_parallelism={cores} inter_op_parallelism={inter}" in applied, applied


def test_the_benchmark_ran_and_its_figures_are_in_status(backend: Backend) -> None:
    ms = modelserver(backend)
    conditions = {c["type"]: c for c in ms["status"]["conditions"]}
    assert conditions["Benchmarked"]["status"] == "True", conditions["Benchmarked"]
    bench = ms["status"]["benchmark"]
    latency = bench["latencyMs"]
    assert 0 < latency["p50"] <= latency["p90"] <= latency["p99"]
    assert bench["throughput"]["itemsPerSecond"] > 0
    assert bench["errors"] == 0
    table = backend.kubectl("get", "modelservers", "-n", backend.namespace)
    header, *rows = table.splitlines()
    row = dict(zip(header.split(), next(r for r in rows if r.split()[0] == "demo").split(), strict=False))
    assert float(row["P50(MS)"]) == pytest.approx(latency["p50"], rel=0.01, abs=0.01)
    assert float(row["P99(MS)"]) == pytest.approx(latency["p99"], rel=0.01, abs=0.01)


def test_deleting_the_modelserver_frees_the_cpu_and_removes_its_objects(backend: Backend) -> None:
    pods = _pods(backend)
    uids = [backend.kubectl("get", "pod", "-n", backend.namespace, p["name"], "-o", "jsonpath={.metadata.uid}")
            for p in pods]
    backend.kubectl("delete", "-n", backend.namespace, "modelserver/demo", "--wait=true", "--timeout=120s")
    selector = "pinserve.io/modelserver=demo"
    deadline = time.monotonic() + 180
    left = ""
    while time.monotonic() < deadline:
        left = backend.kubectl("get", "deployments,services,configmaps,jobs,pods", "-n", backend.namespace,
                               "-l", selector, "-o", "name")
        if not left.strip():
            break
        time.sleep(2)
    assert not left.strip(), f"still there: {left}"
    if backend.name == "realnode":
        freed = False
        while time.monotonic() < deadline and not freed:
            entries = _cpu_manager_state(backend).get("entries", {})
            freed = not any(uid in entries for uid in uids)
            time.sleep(1)
        assert freed, _cpu_manager_state(backend)


def test_without_exclusive_cores_the_threads_are_capped_by_the_cpu_limit(backend: Backend) -> None:
    """A Burstable pod (limits.cpu 1) runs in the shared pool: the shipped start script caps the threads."""
    script = (REPO / "operator/src/pinserve/render/start.sh").read_text()
    ns = backend.namespace
    free_the_pinnable_cpu(backend)
    configmap = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "e2e-start-script"},
                 "data": {"start.sh": script}}
    image = json.loads(backend.kubectl("get", "pods", "-n", "pinserve-system", "-l",
                                       "app.kubernetes.io/component=operator", "-o", "json"))["items"][0]
    pod = {
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "e2e-capped"},
        "spec": {
            "restartPolicy": "Never",
            "containers": [{
                "name": "server", "image": image["spec"]["containers"][0]["image"],
                "command": ["/bin/sh", "/start/start.sh"],
                "env": [{"name": "PINSERVE_SERVER_BINARY", "value": "true"},
                        {"name": "PINSERVE_CPU_LIMIT", "valueFrom": {"resourceFieldRef": {
                            "containerName": "server", "resource": "limits.cpu", "divisor": "1m"}}}],
                "resources": {"requests": {"cpu": "100m", "memory": "64Mi"},
                              "limits": {"cpu": "1", "memory": "64Mi"}},
                "volumeMounts": [{"name": "start", "mountPath": "/start"}],
            }],
            "volumes": [{"name": "start", "configMap": {"name": "e2e-start-script"}}],
        },
    }
    for obj in (configmap, pod):
        backend.kubectl("apply", "-n", ns, "-f", "-", input_text=json.dumps(obj))
    try:
        deadline = time.monotonic() + 180
        phase = ""
        while time.monotonic() < deadline and phase not in ("Succeeded", "Failed"):
            phase = backend.kubectl("get", "pod", "-n", ns, "e2e-capped", "-o", "jsonpath={.status.phase}")
            time.sleep(1)
        log = backend.kubectl("logs", "-n", ns, "e2e-capped")
        assert phase == "Succeeded", log
        line = next(row for row in log.splitlines() if row.startswith("pinserve:"))
        fields = dict(kv.split("=", 1) for kv in line.removeprefix("pinserve:").split() if "=" in kv)
        assert int(fields["TENSORFLOW_INTRA_OP_PARALLELISM"]) == 1, line
        assert int(fields["physical_cores"]) == 1, line
        capped = int(fields["affinity_cores"]) > 1
        if backend.name == "realnode":
            # The demo is gone: the shared pool is both CPUs, the limit is 1.
            assert capped, line
        assert fields["capped"] == ("true" if capped else "false"), line
        if capped:
            assert fields["cpu_bound"] in ("cfs-quota", "limits.cpu"), line
    finally:
        backend.kubectl("delete", "-n", ns, "pod/e2e-capped", "configmap/e2e-start-script", "--wait=false",
                        check=False)
