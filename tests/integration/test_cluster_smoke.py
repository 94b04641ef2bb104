"""The local control plane itself: API server, simulated nodes, KWOK pod lifecycles, garbage collection."""

from __future__ import annotations

import json
import textwrap
from typing import Any

import pytest

from pinserve.topology.model import Topology
from pinserve.topology.publish import (
    ANNOTATION_CPU_TOPOLOGY,
    LABEL_CORES_PER_NUMA,
    LABEL_CPU_MANAGER_POLICY,
    LABEL_NUMA_NODES,
    LABEL_PHYSICAL_CORES,
    LABEL_SMT,
    LABEL_THREADS_PER_CORE,
    LABEL_TOPOLOGY_SOURCE,
    TOPOLOGY_LABELS,
)
from tools import cluster as cluster_tools
from tools import fakenodes

pytestmark = pytest.mark.integration
# Hand-made test pods (no pinserve securityContext): the namespace fixture enforces nothing here.
POD_SECURITY = "privileged"


def _pods(cluster: cluster_tools.IntegrationCluster, namespace: str, selector: str) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = cluster.get_json("pods", "-n", namespace, "-l", selector)["items"]
    return items


def _condition(obj: dict[str, Any], kind: str) -> str | None:
    for cond in obj.get("status", {}).get("conditions", []) or []:
        if cond.get("type") == kind:
            return str(cond.get("status"))
    return None


def test_api_server_is_up(cluster: cluster_tools.IntegrationCluster) -> None:
    assert cluster.kubectl("get", "--raw", "/readyz").stdout.strip() == "ok"
    version = json.loads(cluster.kubectl("version", "-o", "json").stdout)
    if cluster.local is not None:
        assert version["serverVersion"]["gitVersion"] == cluster_tools.read_versions()["KUBERNETES_VERSION"]
    # The admin identity is a cluster admin through RBAC (group system:masters).
    assert cluster.kubectl("auth", "can-i", "*", "*").stdout.strip() == "yes"


@pytest.mark.parametrize("spec", fakenodes.DEFAULT_NODES, ids=lambda s: s.name)
def test_fake_nodes_are_ready_with_topology(
    cluster: cluster_tools.IntegrationCluster, spec: fakenodes.NodeSpec
) -> None:
    if cluster.local is None:
        pytest.skip("PINSERVE_KUBECONFIG cluster: the default simulated nodes are not managed here")
    node = cluster.get_json("node", spec.name)
    meta, status = node["metadata"], node["status"]
    assert cluster_tools.node_ready(node)
    assert not node["spec"].get("taints")
    assert meta["annotations"][fakenodes.KWOK_ANNOTATION] == "fake"
    for key in ("kubernetes.io/hostname", "kubernetes.io/os", "kubernetes.io/arch"):
        assert meta["labels"][key]
    assert meta["labels"]["node.kubernetes.io/instance-type"]

    topology = Topology.from_dict(json.loads(meta["annotations"][ANNOTATION_CPU_TOPOLOGY]))
    labels = meta["labels"]
    assert labels[LABEL_PHYSICAL_CORES] == str(topology.physical_cores)
    assert labels[LABEL_THREADS_PER_CORE] == str(topology.threads_per_core)
    assert labels[LABEL_SMT] == ("true" if topology.smt else "false")
    assert labels[LABEL_NUMA_NODES] == str(topology.numa_count)
    assert labels[LABEL_CORES_PER_NUMA] == str(topology.max_cores_in_one_numa)
    assert labels[LABEL_CPU_MANAGER_POLICY] == "static"
    assert labels[LABEL_TOPOLOGY_SOURCE] == "agent"
    assert status["capacity"]["cpu"] == str(topology.logical_cpus)
    assert int(status["allocatable"]["cpu"]) < topology.logical_cpus
    assert status["capacity"]["pods"] == "110"


def test_default_nodes_cover_the_shapes_we_plan_for(cluster: cluster_tools.IntegrationCluster) -> None:
    if cluster.local is None:
        pytest.skip("PINSERVE_KUBECONFIG cluster")
    nodes = cluster.get_json("nodes", "-l", cluster_tools.SIMULATED_NODE_SELECTOR)["items"]
    shapes = {(n["metadata"]["labels"][LABEL_SMT], int(n["metadata"]["labels"][LABEL_NUMA_NODES]) > 1) for n in nodes}
    assert ("true", True) in shapes  # 2-socket SMT, one NUMA node per socket
    assert ("false", False) in shapes  # non-SMT, one NUMA node
    assert ("false", True) in shapes  # multi-NUMA AMD


def test_deployment_pod_becomes_running_and_ready(cluster: cluster_tools.IntegrationCluster, namespace: str) -> None:
    cluster.apply_yaml(
        textwrap.dedent(
            f"""
            apiVersion: apps/v1
            kind: Deployment
            metadata: {{name: smoke, namespace: {namespace}}}
            spec:
              replicas: 1
              selector: {{matchLabels: {{app: smoke}}}}
              template:
                metadata: {{labels: {{app: smoke}}}}
                spec:
                  nodeSelector: {{"{LABEL_SMT}": "true"}}
                  containers:
                  - name: server
                    image: tensorflow/serving:mkl
                    resources:
                      requests: {{cpu: "4", memory: 1Gi}}
                      limits: {{cpu: "4", memory: 1Gi}}
            """
        )
    )

    def running_pod() -> dict[str, Any] | None:
        for pod in _pods(cluster, namespace, "app=smoke"):
            if pod["status"].get("phase") == "Running" and _condition(pod, "Ready") == "True":
                return pod
        return None

    pod = cluster.wait_for("the Deployment's pod to be Running and Ready", running_pod, timeout=60)
    assert pod["spec"]["nodeName"] == "kwok-intel-2s-smt"  # bound by the scheduler, honouring nodeSelector
    assert pod["status"]["podIP"]
    assert pod["status"]["qosClass"] == "Guaranteed"
    assert all(cs["ready"] and "running" in cs["state"] for cs in pod["status"]["containerStatuses"])
    assert [cs["state"].keys() for cs in pod["status"]["containerStatuses"]] == [{"running"}]
    owner = pod["metadata"]["ownerReferences"][0]
    assert owner["kind"] == "ReplicaSet"

    cluster.wait_for(
        "the Deployment to report 1 ready replica",
        lambda: (
            True
            if cluster.get_json("deployment", "smoke", "-n", namespace)["status"].get("readyReplicas") == 1
            else None
        ),
        timeout=30,
    )


def _job_yaml(namespace: str, name: str, annotations: dict[str, str]) -> str:
    return textwrap.dedent(
        f"""
        apiVersion: batch/v1
        kind: Job
        metadata: {{name: {name}, namespace: {namespace}}}
        spec:
          backoffLimit: 0
          template:
            metadata:
              annotations: {json.dumps(annotations)}
            spec:
              restartPolicy: Never
              containers:
              - name: bench
                image: pinserve-bench:dev
            """
    )


def test_job_pod_completes_with_fake_termination_message(
    cluster: cluster_tools.IntegrationCluster, namespace: str
) -> None:
    message = json.dumps({"latencyMs": {"p50": 12.5, "p99": 20.25}, "requests": 200, "note": 'a "quoted" <x>'})
    cluster.apply_yaml(
        _job_yaml(namespace, "bench", {"pinserve.io/fake-termination-message": message}),
    )

    def complete() -> bool | None:
        job = cluster.get_json("job", "bench", "-n", namespace)
        return True if _condition(job, "Complete") == "True" else None

    cluster.wait_for("the Job to complete", complete, timeout=60)
    (pod,) = _pods(cluster, namespace, "job-name=bench")
    assert pod["status"]["phase"] == "Succeeded"
    (container,) = pod["status"]["containerStatuses"]
    assert set(container["state"]) == {"terminated"}
    terminated = container["state"]["terminated"]
    assert terminated["exitCode"] == 0
    assert terminated["reason"] == "Completed"
    assert json.loads(terminated["message"]) == json.loads(message)


def test_job_pod_fails_with_fake_exit_code(cluster: cluster_tools.IntegrationCluster, namespace: str) -> None:
    cluster.apply_yaml(
        _job_yaml(
            namespace,
            "broken",
            {"pinserve.io/fake-exit-code": "3", "pinserve.io/fake-termination-message": "model not found"},
        )
    )

    def failed() -> bool | None:
        job = cluster.get_json("job", "broken", "-n", namespace)
        return True if _condition(job, "Failed") == "True" else None

    cluster.wait_for("the Job to fail", failed, timeout=60)
    (pod,) = _pods(cluster, namespace, "job-name=broken")
    assert pod["status"]["phase"] == "Failed"
    terminated = pod["status"]["containerStatuses"][0]["state"]["terminated"]
    assert terminated["exitCode"] == 3
    assert terminated["reason"] == "Error"
    assert terminated["message"] == "model not found"


def test_deleting_an_owner_garbage_collects_its_dependents(
    cluster: cluster_tools.IntegrationCluster, namespace: str
) -> None:
    cluster.apply_yaml(
        textwrap.dedent(
            f"""
            apiVersion: apps/v1
            kind: Deployment
            metadata: {{name: owner, namespace: {namespace}}}
            spec:
              replicas: 2
              selector: {{matchLabels: {{app: owner}}}}
              template:
                metadata: {{labels: {{app: owner}}}}
                spec:
                  containers: [{{name: c, image: busybox}}]
            """
        )
    )
    cluster.wait_for(
        "2 Running pods",
        lambda: (
            True
            if sum(p["status"].get("phase") == "Running" for p in _pods(cluster, namespace, "app=owner")) == 2
            else None
        ),
        timeout=60,
    )
    # An object of ours owned by the Deployment, the way the operator owns its children.
    deployment = cluster.get_json("deployment", "owner", "-n", namespace)
    owner_ref = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": "owner",
        "uid": deployment["metadata"]["uid"],
        "controller": True,
        "blockOwnerDeletion": True,
    }
    cluster.apply_yaml(
        json.dumps(
            {
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": {"name": "dependent", "namespace": namespace, "ownerReferences": [owner_ref]},
                "data": {"k": "v"},
            }
        )
    )
    assert cluster.get_json("replicasets", "-n", namespace, "-l", "app=owner")["items"]

    cluster.kubectl("delete", "deployment", "owner", "-n", namespace, "--wait=false")

    def all_gone() -> bool | None:
        left = cluster.kubectl("get", "replicasets,pods", "-n", namespace, "-l", "app=owner", "-o", "name", check=False)
        dependent = cluster.exists("configmap", "dependent", "-n", namespace)
        return True if not left.stdout.strip() and not dependent else None

    cluster.wait_for("the ReplicaSet, its pods and the ConfigMap to be collected", all_gone, timeout=60)


def test_nodes_can_be_added_and_removed_at_runtime(cluster: cluster_tools.IntegrationCluster) -> None:
    if cluster.local is None:
        pytest.skip("PINSERVE_KUBECONFIG cluster: simulated nodes are not added to it")
    name = "kwok-smoke-no-agent"
    node = cluster.add_fake_node(name, "16em64t-4s2c2t", topology=False)
    try:
        live = cluster.get_json("node", name)
        assert cluster_tools.node_ready(live)
        assert ANNOTATION_CPU_TOPOLOGY not in live["metadata"]["annotations"]
        assert not set(TOPOLOGY_LABELS) & set(live["metadata"]["labels"])
        assert live["status"]["capacity"]["cpu"] == node["status"]["capacity"]["cpu"] == "16"
    finally:
        cluster.remove_node(name)
    assert not cluster.exists("node", name)
