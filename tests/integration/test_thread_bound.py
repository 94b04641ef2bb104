"""Threads where pods get no exclusive cores, against a real kube-apiserver with KWOK nodes.

A node whose kubelet runs the ``none`` CPU manager policy gives a Guaranteed pod the whole host as its
affinity; the start script then caps the threads at the container's CPU limit, and the status says so.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
import yaml
from operator_harness import (
    condition,
    eventually,
    modelserver,
    operator_fixture,
)

pytestmark = pytest.mark.integration

SMT_SNAPSHOT = "32intel64-2p8co2t+8ve"  # 2 x 8 cores x 2 threads: 16 physical cores
CPU_LIMIT_REF = {"containerName": "server", "resource": "limits.cpu", "divisor": "1m"}


operator = operator_fixture(PINSERVE_RESYNC_SECONDS="2")


def _ready(cluster: Any, namespace: str, name: str) -> dict[str, Any]:
    def probe() -> dict[str, Any] | None:
        body: dict[str, Any] = cluster.get_json("-n", namespace, f"modelserver/{name}")
        return body if condition(body, "Ready").get("status") == "True" else None

    return eventually(f"{name} Ready", probe, timeout=90)


def _server_env(cluster: Any, namespace: str, name: str) -> dict[str, Any]:
    deployment = cluster.get_json("-n", namespace, f"deployment/{name}")
    [server] = [c for c in deployment["spec"]["template"]["spec"]["containers"] if c["name"] == "server"]
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in server["env"]}


def test_shared_cpu_node_caps_threads_in_status(cluster: Any, operator: Any, namespace: str) -> None:
    pool = f"shared-{namespace[-6:]}"
    node = f"kwok-shared-{namespace[-6:]}"
    cluster.add_fake_node(node, SMT_SNAPSHOT, labels={"pool": pool}, cpu_manager_policy="none")
    try:
        body = modelserver("shared", cores=2, placement={"nodeSelector": {"pool": pool}})
        cluster.kubectl("apply", "-n", namespace, "-f", "-", input=yaml.safe_dump(body))
        status = _ready(cluster, namespace, "shared")["status"]
        placement = status["placement"]
        assert placement["nodes"] == [node] and placement["cpuRequest"] == 4
        # The host's 16 cores capped at the 4-CPU limit, not pinned: as the pod's log line will say.
        assert placement["threads"]["bound"] == "cpuLimit" and placement["threads"]["capped"] is True
        assert (placement["threads"]["omp"], placement["threads"]["intraOp"]) == (4, 4)
        assert placement["threads"]["kmpAffinity"] == "none"
        assert any(node in note and "CPU limit (4 CPUs)" in note for note in placement["assumptions"]), placement
        # The API server kept the downward-API reference the start script reads.
        assert _server_env(cluster, namespace, "shared")["PINSERVE_CPU_LIMIT"] == {"resourceFieldRef": CPU_LIMIT_REF}
    finally:
        cluster.kubectl("delete", "-n", namespace, "modelserver/shared", "--wait=true", timeout=60)
        cluster.remove_node(node)


def test_static_nodes_are_not_capped(cluster: Any, operator: Any, namespace: str) -> None:
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=yaml.safe_dump(modelserver("pinned", cores=1)))
    placement = _ready(cluster, namespace, "pinned")["status"]["placement"]
    assert (placement["threads"]["bound"], placement["threads"]["capped"]) == ("cores", False), json.dumps(placement)
    env = _server_env(cluster, namespace, "pinned")
    assert env["PINSERVE_CPU_LIMIT"] == {"resourceFieldRef": CPU_LIMIT_REF}
    assert (env["PINSERVE_DEFAULT_INTER_OP"], env["PINSERVE_DEFAULT_KMP_BLOCKTIME"]) == ("2", "1")
