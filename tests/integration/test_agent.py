"""`pinserve agent` against the local control plane, as a real process with exactly the RBAC it asks for.

Each test makes a KWOK node without pinserve metadata (the machine is an hwloc snapshot, which also serves
as the agent's sysfs root), bare pods carrying the pinserve labels bound to it through ``spec.nodeName``,
and a CPU manager checkpoint file written the way the kubelet writes it. The agent runs under a
ServiceAccount whose ClusterRole grants pods get/list/watch/patch and nodes get/patch, nothing more.
Most tests give it no pod-resources socket (the checkpoint's entries are used, as without one); the last
ones serve the kubelet's pod-resources API from this process (tests/fakekubelet.py, real gRPC on a unix
socket), where a KWOK node has no kubelet to serve it.
"""

from __future__ import annotations

import asyncio
import copy
import json
import subprocess
import textwrap
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from agent_harness import PINNED_CPUS, SNAPSHOT, Setup, service_account_kubeconfig

from fakekubelet import fake_kubelet
from pinserve.agent.loop import AgentConfig, NodeAgent, load_topology, write_count
from pinserve.agent.publisher import ANNOTATION_CPU_MANAGER
from pinserve.kube import Credentials, KubeApi
from pinserve.pinning import ANNOTATION_CPUS, ANNOTATION_CPUS_SOURCE
from pinserve.topology.cpuset import format_cpulist
from pinserve.topology.model import Topology
from pinserve.topology.publish import ANNOTATION_CPU_TOPOLOGY
from tools import cluster as cluster_tools
from tools import fakenodes

pytestmark = pytest.mark.integration
# Hand-made test pods (no pinserve securityContext): the namespace fixture enforces nothing here.
POD_SECURITY = "privileged"

AGENT_RULES = [
    {"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch", "patch"]},
    {"apiGroups": [""], "resources": ["nodes"], "verbs": ["get", "patch"]},
]


@pytest.fixture
def setup(
    cluster: cluster_tools.IntegrationCluster, namespace: str, tmp_path: Path
) -> Iterator[Setup]:
    if cluster.local is None:
        pytest.skip("PINSERVE_KUBECONFIG cluster: simulated nodes are not added to it")
    suffix = uuid.uuid4().hex[:6]
    node = f"kwok-agent-{suffix}"
    role = f"pinserve-agent-test-{suffix}"
    cluster.add_fake_node(node, SNAPSHOT, topology=False)
    cluster.apply_yaml(textwrap.dedent(f"""
        apiVersion: v1
        kind: ServiceAccount
        metadata: {{name: agent, namespace: {namespace}}}
        ---
        apiVersion: rbac.authorization.k8s.io/v1
        kind: ClusterRole
        metadata: {{name: {role}}}
        rules: {json.dumps(AGENT_RULES)}
        ---
        apiVersion: rbac.authorization.k8s.io/v1
        kind: ClusterRoleBinding
        metadata: {{name: {role}}}
        roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: {role}}}
        subjects: [{{kind: ServiceAccount, name: agent, namespace: {namespace}}}]
        """))
    kubeconfig = service_account_kubeconfig(cluster, namespace, "agent", tmp_path / "agent.kubeconfig")
    root = fakenodes.unpack_snapshot(SNAPSHOT)
    try:
        yield Setup(cluster, namespace, node, root, load_topology(root), kubeconfig,
                    tmp_path / "cpu_manager_state", tmp_path)
    finally:
        cluster.kubectl("delete", "clusterrolebinding,clusterrole", role, "--ignore-not-found", check=False)
        cluster.remove_node(node, wait=False)


def test_rbac_is_what_the_agent_asks_for(setup: Setup) -> None:
    def can(*args: str) -> bool:
        proc = setup.cluster.kubectl("auth", "can-i", *args, f"--as=system:serviceaccount:{setup.namespace}:agent",
                                     check=False)
        return proc.stdout.strip() == "yes"

    assert can("patch", "nodes") and can("get", "nodes") and can("watch", "pods") and can("patch", "pods")
    assert not can("get", "nodes", "--subresource=proxy") and not can("list", "nodes")
    assert not can("update", "nodes") and not can("patch", "nodes", "--subresource=status")
    assert not can("delete", "pods") and not can("get", "secrets")


def test_agent_publishes_node_topology_and_pod_cpusets_then_writes_nothing(setup: Setup) -> None:
    pinned = setup.pod("pinned")
    setup.pod("shared")  # no entry in the checkpoint: the shared pool
    setup.pod("unmanaged", managed=False)  # not a pinserve pod: never touched
    other_node = fakenodes.DEFAULT_NODES[0].name
    setup.pod("elsewhere", node=other_node)  # a pinserve pod on another node: not this agent's
    default = setup.write_state({pinned["metadata"]["uid"]: PINNED_CPUS})

    first = setup.run_once()
    assert "api-writes=3" in first.stderr, first.stderr  # the node and two pods

    labels = setup.labels(setup.node)
    assert {k: v for k, v in labels.items() if k.startswith("pinserve.io/") and k != "pinserve.io/simulated-node"} == {
        "pinserve.io/cpu-manager-policy": "static",
        "pinserve.io/smt": "true",
        "pinserve.io/threads-per-core": "2",
        "pinserve.io/physical-cores": "16",
        "pinserve.io/numa-nodes": "2",
        "pinserve.io/cores-per-numa": "8",
        "pinserve.io/topology-source": "agent",
        "pinserve.io/isa-avx2": "true",
        "pinserve.io/isa-avx512f": "true",
    }
    node_annotations = setup.annotations("node", setup.node)
    assert Topology.from_dict(json.loads(node_annotations[ANNOTATION_CPU_TOPOLOGY])) == setup.topology
    assert json.loads(node_annotations[ANNOTATION_CPU_MANAGER]) == {
        "policy": "static", "defaultCpuSet": default, "source": "checkpoint"
    }

    pinned_ann = setup.annotations("pod", "pinned")
    assert (pinned_ann[ANNOTATION_CPUS], pinned_ann[ANNOTATION_CPUS_SOURCE]) == (PINNED_CPUS, "exclusive")
    shared_ann = setup.annotations("pod", "shared")
    assert (shared_ann[ANNOTATION_CPUS], shared_ann[ANNOTATION_CPUS_SOURCE]) == (default, "shared")
    assert ANNOTATION_CPUS not in setup.annotations("pod", "unmanaged")
    assert ANNOTATION_CPUS not in setup.annotations("pod", "elsewhere")

    # Nothing changed: a second process pass and an in-process pass (counting requests by verb) write nothing.
    second = setup.run_once()
    assert "api-writes=0" in second.stderr, second.stderr

    async def in_process() -> tuple[int, dict[str, int]]:
        api = KubeApi(Credentials.from_kubeconfig(str(setup.kubeconfig)))
        try:
            agent = NodeAgent(api, AgentConfig(node=setup.node, sysfs_root=str(setup.root),
                                               state_path=str(setup.state)))
            for _ in range(3):
                result = await agent.run_once()
                assert result.ok and result.writes == 0, result.summary()
            counted = write_count(api.requests), dict(api.requests)
            # The UID guard: a pod of that name with another UID (recreated) is refused by the API server.
            impostor = copy.deepcopy(pinned)
            impostor["metadata"]["uid"] = str(uuid.uuid4())
            impostor["metadata"]["annotations"] = {}
            assert await agent.sync_pod(impostor) is False
            return counted
        finally:
            await api.close()

    writes, requests = asyncio.run(in_process())
    assert writes == 0 and requests.get("PATCH", 0) == 0, requests
    assert requests["GET"] == 6  # per pass: the node, the pod list
    assert setup.annotations("pod", "pinned")[ANNOTATION_CPUS] == PINNED_CPUS


def test_missing_state_file_is_published_as_unknown_and_pods_are_left(setup: Setup) -> None:
    pinned = setup.pod("pinned")
    setup.write_state({pinned["metadata"]["uid"]: PINNED_CPUS})
    setup.run_once()
    before = setup.annotations("pod", "pinned")

    missing = setup.tmp / "no-kubelet-here" / "cpu_manager_state"
    setup.run_once(state=missing)
    assert setup.labels(setup.node)["pinserve.io/cpu-manager-policy"] == "unknown"
    summary = json.loads(setup.annotations("node", setup.node)[ANNOTATION_CPU_MANAGER])
    assert summary["policy"] == "unknown"
    assert str(missing) in summary["reason"] and "does not exist" in summary["reason"]
    assert "defaultCpuSet" not in summary
    after = setup.annotations("pod", "pinned")
    assert {k: after.get(k) for k in (ANNOTATION_CPUS, ANNOTATION_CPUS_SOURCE)} == {
        ANNOTATION_CPUS: PINNED_CPUS, ANNOTATION_CPUS_SOURCE: "exclusive"
    } == {k: before[k] for k in (ANNOTATION_CPUS, ANNOTATION_CPUS_SOURCE)}

    # The checkpoint is back: so is the policy.
    setup.run_once()
    assert setup.labels(setup.node)["pinserve.io/cpu-manager-policy"] == "static"


def test_running_agent_follows_new_pods_and_checkpoint_changes(setup: Setup) -> None:
    first = setup.pod("first")
    setup.write_state({})
    log_path = setup.tmp / "agent.log"
    with log_path.open("w") as log:
        proc = subprocess.Popen(
            setup.agent_argv("--interval", "300", "--state-interval", "0.5"),
            env=setup.env(), stdout=subprocess.DEVNULL, stderr=log, text=True,
        )
    try:
        def source(name: str) -> str | None:
            return setup.annotations("pod", name).get(ANNOTATION_CPUS_SOURCE)

        setup.cluster.wait_for("pod first in the shared pool", lambda: source("first") == "shared" or None, timeout=30)

        # The kubelet pins it (a new checkpoint): the agent republishes the pod and the node's default set.
        default = setup.write_state({first["metadata"]["uid"]: PINNED_CPUS})
        setup.cluster.wait_for("pod first pinned", lambda: source("first") == "exclusive" or None, timeout=30)
        assert setup.annotations("pod", "first")[ANNOTATION_CPUS] == PINNED_CPUS
        setup.cluster.wait_for(
            "the node's default set",
            lambda: json.loads(setup.annotations("node", setup.node)[ANNOTATION_CPU_MANAGER]).get("defaultCpuSet")
            == default or None,
            timeout=30,
        )

        # A pod that starts while the agent runs is annotated from the watch.
        setup.pod("second")
        setup.cluster.wait_for("pod second", lambda: source("second") == "shared" or None, timeout=30)

        # Then a quiet spell: KWOK's status updates and our own patches come back as watch events,
        # and the checkpoint is checked every 0.5 s; none of it may write.
        time.sleep(5)
        assert proc.poll() is None, log_path.read_text()
    finally:
        proc.terminate()  # SIGTERM: the agent stops its loop and logs its write count
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    stderr = log_path.read_text()
    assert proc.returncode == 0, stderr
    # node (first publication) + first (shared) + node (default set) + first (exclusive) + second (shared)
    assert "stopped; api-writes=5 " in stderr, stderr


def test_operator_reports_pods_cpus_and_pinned_from_the_agent(setup: Setup, tmp_path: Path) -> None:
    """Agent and operator together: status.pods carries the real cpuset; Pinned follows the kubelet's state."""
    from operator_harness import (  # noqa: PLC0415  (integration helpers, imported where used)
        condition,
        eventually,
        install_crd,
        install_operator_rbac,
        modelserver,
        running_operator,
    )

    cluster, ns = setup.cluster, setup.namespace
    setup.write_state({})
    setup.run_once()  # the node now carries its topology and the static policy
    install_crd(cluster)
    operator_kubeconfig = tmp_path / "operator.kubeconfig"
    install_operator_rbac(cluster, operator_kubeconfig)
    with running_operator(operator_kubeconfig, PINSERVE_RESYNC_SECONDS="2"):
        body = modelserver("pinned", cores=4, placement={"nodeSelector": {"kubernetes.io/hostname": setup.node}})
        cluster.kubectl("apply", "-n", ns, "-f", "-", input=yaml.safe_dump(body))

        def ms() -> dict[str, Any]:
            return dict(cluster.get_json("-n", ns, "modelserver/pinned"))

        eventually("pinned Ready", lambda: condition(ms(), "Ready").get("status") == "True", timeout=90)
        placement = ms()["status"]["placement"]
        assert (placement["cpuRequest"], placement["threadsPerCore"]) == (8, 2)  # SMT: whole cores
        pod = cluster.get_json("-n", ns, "pods", "-l", "pinserve.io/modelserver=pinned")["items"][0]
        uid, name = pod["metadata"]["uid"], pod["metadata"]["name"]

        def pinned(reason: str) -> dict[str, Any]:
            setup.run_once()
            return eventually(f"Pinned reason {reason}",
                              lambda: (c := condition(ms(), "Pinned")).get("reason") == reason and c, timeout=30)

        # Shared pool: the container is not in the checkpoint's entries.
        assert pinned("SharedCpus")["status"] == "False"
        # Exclusive whole cores: both threads of cores 2-5 on socket 0.
        setup.write_state({uid: PINNED_CPUS})
        assert pinned("ExclusiveCores")["status"] == "True"
        [entry] = ms()["status"]["pods"]
        assert entry == {"name": name, "node": setup.node, "qosClass": "Guaranteed", "ready": True,
                         "cpus": PINNED_CPUS, "physicalCores": 4}
        # Eight CPUs that are one thread of eight cores: exclusive, but not whole cores.
        setup.write_state({uid: "2-9"})
        assert pinned("PartialCores")["status"] == "False"
        # A kubelet without the static policy.
        setup.state.write_text(json.dumps({"policyName": "none", "defaultCpuSet": "", "checksum": 1}))
        cond = pinned("CpuManagerNotStatic")
        assert cond["status"] == "False" and "--cpu-manager-policy=static" in cond["message"]
        # No checkpoint at all: the agent says it cannot tell, and so does the operator.
        setup.state.unlink()
        assert pinned("CpuManagerUnknown")["status"] == "Unknown"


def test_agent_reads_the_kubelets_pod_resources_socket_live_and_falls_back_without_it(setup: Setup) -> None:
    pinned = setup.pod("pinned")
    setup.pod("other")
    setup.write_state({pinned["metadata"]["uid"]: PINNED_CPUS})  # the checkpoint as the agent's pod started
    cpu_manager = lambda: json.loads(setup.annotations("node", setup.node)[ANNOTATION_CPU_MANAGER])  # noqa: E731
    source = lambda name: setup.annotations("pod", name).get(ANNOTATION_CPUS_SOURCE)  # noqa: E731
    log_path = setup.tmp / "agent.log"
    with fake_kubelet(setup.tmp / "kubelet.sock", allocatable=format_cpulist(setup.topology.cpus - {0, 16})) as kubelet:
        kubelet.set_pod(setup.namespace, "pinned", {"server": PINNED_CPUS})
        kubelet.set_pod(setup.namespace, "other", {"server": ""})
        setup.socket = str(kubelet.socket)
        with log_path.open("w") as log:
            proc = subprocess.Popen(setup.agent_argv("--interval", "300", "--state-interval", "0.5"),
                                    env=setup.env(), stdout=subprocess.DEVNULL, stderr=log, text=True)
        try:
            # The pods and the node are written by two loops: wait for both.
            setup.cluster.wait_for("both pods and the node", lambda: source("pinned") and source("other") and (
                ANNOTATION_CPU_MANAGER in setup.annotations("node", setup.node)), timeout=30)
            assert setup.annotations("pod", "pinned")[ANNOTATION_CPUS] == PINNED_CPUS
            assert source("pinned") == "exclusive" and source("other") == "shared"
            summary = cpu_manager()
            assert summary["source"] == "pod-resources" and summary["allocatableCpuSet"] == "1-15,17-31"

            # The kubelet pins "other" and writes a new checkpoint, which a single-file mount would never show
            # (here the file is simply left alone): the socket is live, the agent follows it.
            kubelet.set_pod(setup.namespace, "other", {"server": "6-7,22-23"})
            setup.cluster.wait_for("other pinned", lambda: source("other") == "exclusive" or None, timeout=30)
            assert setup.annotations("pod", "other")[ANNOTATION_CPUS] == "6-7,22-23"
            setup.cluster.wait_for(
                "the shared pool without both", lambda: cpu_manager()["defaultCpuSet"] == format_cpulist(
                    setup.topology.cpus - {2, 3, 4, 5, 18, 19, 20, 21, 6, 7, 22, 23}) or None, timeout=30)

            # The kubelet goes away: the agent says so and falls back to the checkpoint's entries.
            kubelet.stop()
            setup.cluster.wait_for("the fallback", lambda: cpu_manager()["source"] == "checkpoint" or None,
                                   timeout=30)
            assert "kubelet.sock" in cpu_manager()["podResourcesError"]
            setup.cluster.wait_for("other back in the shared pool (the checkpoint's word)",
                                   lambda: source("other") == "shared" or None, timeout=30)
            assert proc.poll() is None, log_path.read_text()
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    stderr = log_path.read_text()
    assert proc.returncode == 0, stderr
    assert "CPU assignments from the kubelet's pod-resources API" in stderr, stderr
    assert "instead of the pod-resources API: cannot connect" in stderr or "does not exist" in stderr, stderr
