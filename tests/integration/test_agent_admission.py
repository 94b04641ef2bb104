"""The chart's ValidatingAdmissionPolicy against the real API server: the agent writes only its own node.

The agent's ClusterRole, ClusterRoleBinding and the policy are rendered from charts/pinserve with real helm
(the agent's ServiceAccount named ``agent`` in the test's namespace). The agent's token is a real bound
token: a TokenRequest for the ServiceAccount bound to a pod scheduled on node A, as the kubelet asks for
the token it mounts into the agent's pod, so the API server puts node A into the token's user extra
``authentication.kubernetes.io/node-name``. Nothing else marks the node: no feature gate, no flag.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from agent_harness import SNAPSHOT, server_pod, service_account_kubeconfig, wait_running

from pinserve.pinning import ANNOTATION_CPUS, ANNOTATION_CPUS_SOURCE
from tools import cluster as cluster_tools
from tools import fakenodes

pytestmark = pytest.mark.integration
# Hand-made test pods (no pinserve securityContext): the namespace fixture enforces nothing here.
POD_SECURITY = "privileged"

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "pinserve"
NODE_NAME_KEY = "authentication.kubernetes.io/node-name"


@dataclass
class Bound:
    cluster: cluster_tools.IntegrationCluster
    namespace: str
    node_a: str
    node_b: str
    policy: str
    kubeconfig: Path  # the agent's ServiceAccount, token bound to its pod on node A
    unbound: Path  # the same ServiceAccount, a token bound to nothing
    tmp: Path

    def as_agent(self, *args: str, kubeconfig: Path | None = None) -> subprocess.CompletedProcess[str]:
        return self.cluster.kubectl("--kubeconfig", str(kubeconfig or self.kubeconfig), *args, check=False)

    def patch(self, kind: str, name: str, patch: dict[str, Any], *, kubeconfig: Path | None = None
              ) -> subprocess.CompletedProcess[str]:
        scope = ["-n", self.namespace] if kind == "pod" else []
        return self.as_agent("patch", kind, name, *scope, "--type", "merge", "-p", json.dumps(patch),
                             kubeconfig=kubeconfig)

    def refused(self, proc: subprocess.CompletedProcess[str], says: str) -> None:
        assert proc.returncode != 0, f"allowed, should have been refused: {proc.stdout}"
        assert f"ValidatingAdmissionPolicy '{self.policy}'" in proc.stderr, proc.stderr
        assert says in proc.stderr, proc.stderr


def labels(*pairs: tuple[str, str]) -> dict[str, Any]:
    return {"metadata": {"labels": dict(pairs)}}


def annotations(*pairs: tuple[str, str]) -> dict[str, Any]:
    return {"metadata": {"annotations": dict(pairs)}}


@pytest.fixture
def bound(cluster: cluster_tools.IntegrationCluster, namespace: str, tmp_path: Path) -> Iterator[Bound]:
    if cluster.local is None:
        pytest.skip("PINSERVE_KUBECONFIG cluster: simulated nodes are not added to it")
    suffix = uuid.uuid4().hex[:6]
    node_a, node_b = f"kwok-vap-a-{suffix}", f"kwok-vap-b-{suffix}"
    fullname = f"it-vap-{suffix}"
    for node in (node_a, node_b):
        cluster.add_fake_node(node, SNAPSHOT, topology=False)
    rendered = subprocess.run(
        [str(cluster.bin_dir / "helm"), "template", "pinserve", str(CHART), "--namespace", namespace,
         "--set", f"fullnameOverride={fullname}", "--set", "serviceAccount.agent.name=agent",
         "--show-only", "templates/rbac-agent.yaml", "--show-only", "templates/agent-admission-policy.yaml"],
        capture_output=True, text=True, check=True, timeout=60,
    ).stdout
    docs = [d for d in yaml.safe_load_all(rendered) if d]
    assert sorted(d["kind"] for d in docs) == ["ClusterRole", "ClusterRoleBinding", "ValidatingAdmissionPolicy",
                                               "ValidatingAdmissionPolicyBinding"]
    (policy,) = [d["metadata"]["name"] for d in docs if d["kind"] == "ValidatingAdmissionPolicy"]
    cluster.kubectl("create", "serviceaccount", "agent", "-n", namespace)
    cluster.apply_objects(docs)
    # The agent's own pod on node A (its token is bound to it), and a serving pod on each node.
    objects = [server_pod("agent-a", node_a, managed=False, account="agent"), server_pod("server-a", node_a),
               server_pod("server-b", node_b)]
    cluster.apply_yaml(yaml.safe_dump_all(objects), namespace=namespace)
    setup = Bound(
        cluster, namespace, node_a, node_b, policy,
        service_account_kubeconfig(cluster, namespace, "agent", tmp_path / "agent", "Pod", "agent-a"),
        service_account_kubeconfig(cluster, namespace, "agent", tmp_path / "unbound"), tmp_path,
    )
    try:
        yield setup
    finally:
        kinds = "validatingadmissionpolicybinding,validatingadmissionpolicy"
        cluster.kubectl("delete", kinds, policy, "--ignore-not-found", check=False)
        cluster.kubectl("delete", "clusterrolebinding,clusterrole", f"{fullname}-agent", "--ignore-not-found",
                        check=False)
        for node in (node_a, node_b):
            cluster.remove_node(node, wait=False)


def _wait_for_policy(setup: Bound) -> None:
    """The API server takes a new policy in asynchronously: wait until it refuses the agent on node B."""
    def refusing() -> bool | None:
        proc = setup.patch("node", setup.node_b, labels(("pinserve.io/probe", uuid.uuid4().hex[:8])))
        return True if setup.policy in proc.stderr else None

    setup.cluster.wait_for(f"policy {setup.policy} in force", refusing, timeout=60, interval=0.5)


def test_the_bound_token_names_node_a(bound: Bound) -> None:
    review = json.loads(bound.as_agent("auth", "whoami", "-o", "json").stdout)
    user = review["status"]["userInfo"]
    assert user["username"] == f"system:serviceaccount:{bound.namespace}:agent"
    assert user.get("extra", {}).get(NODE_NAME_KEY) == [bound.node_a], (
        "the API server put no node name into a token bound to a pod on node A: it needs the "
        f"ServiceAccountTokenPodNodeInfo feature (beta and on by default from 1.30, GA from 1.32); got {user}"
    )


def test_the_agent_writes_only_pinserve_metadata_of_its_own_node(bound: Bound) -> None:
    _wait_for_policy(bound)
    a, b = bound.node_a, bound.node_b

    # Its own node: pinserve.io/ labels and annotations, set and removed.
    assert bound.patch("node", a, labels(("pinserve.io/smt", "true"))).returncode == 0
    assert bound.patch("node", a, annotations(("pinserve.io/cpu-manager", '{"policy":"static"}'))).returncode == 0
    assert bound.patch("node", a, {"metadata": {"labels": {"pinserve.io/smt": None}}}).returncode == 0

    # Another node, even with pinserve.io/ keys.
    bound.refused(bound.patch("node", b, labels(("pinserve.io/smt", "true"))),
                  f"the pinserve agent of node {a} may not write node {b}")
    # Anything but pinserve.io/ on its own node: a foreign label or annotation, set, changed or removed.
    bound.refused(bound.patch("node", a, labels(("evil.io/x", "1"))), "only pinserve.io/ labels, not evil.io/x")
    bound.refused(bound.patch("node", a, annotations(("evil.io/x", "1"))),
                  "only pinserve.io/ annotations, not evil.io/x")
    bound.refused(bound.patch("node", a, {"metadata": {"labels": {"kubernetes.io/hostname": None}}}),
                  "not kubernetes.io/hostname")
    bound.refused(bound.patch("node", a, labels(("pinserve.io/smt", "true"), ("node-role.kubernetes.io/x", ""))),
                  "not node-role.kubernetes.io/x")
    # The node's spec (cordon, taints) and finalizers.
    bound.refused(bound.patch("node", a, {"spec": {"unschedulable": True}}), "not the spec")
    bound.refused(bound.patch("node", a, {"spec": {"taints": [{"key": "x", "effect": "NoSchedule"}]}}),
                  "not the spec")
    bound.refused(bound.patch("node", a, {"metadata": {"finalizers": ["evil.io/keep"]}}), "finalizers")

    # Pods: only those bound to its node, only pinserve.io/ metadata.
    assert bound.patch("pod", "server-a", annotations((ANNOTATION_CPUS, "2-3"))).returncode == 0
    bound.refused(bound.patch("pod", "server-b", annotations((ANNOTATION_CPUS, "2-3"))),
                  f"may not write pod {bound.namespace}/server-b: it is not bound to that node")
    bound.refused(bound.patch("pod", "server-a", annotations(("evil.io/x", "1"))), "not evil.io/x")
    bound.refused(bound.patch("pod", "server-a", labels(("app.kubernetes.io/managed-by", "me"))),
                  "not app.kubernetes.io/managed-by")
    bound.refused(bound.patch("pod", "server-a", {"spec": {"activeDeadlineSeconds": 5}}), "not the spec")

    # The same ServiceAccount with a token bound to no pod names no node: it may write nothing.
    bound.refused(bound.patch("node", a, labels(("pinserve.io/smt", "true")), kubeconfig=bound.unbound),
                  "token names no node")
    bound.refused(bound.patch("pod", "server-a", annotations((ANNOTATION_CPUS, "4")), kubeconfig=bound.unbound),
                  "token names no node")

    # What was refused left nothing behind; an admin is not bound by the policy.
    node_b = bound.cluster.get_json("node", b)["metadata"]
    assert "pinserve.io/smt" not in node_b.get("labels", {})
    assert "evil.io/x" not in (bound.cluster.get_json("node", a)["metadata"].get("labels") or {})
    bound.cluster.kubectl("label", "node", b, "evil.io/admin=1")
    bound.cluster.kubectl("label", "node", b, "evil.io/admin-")


def test_the_real_agent_publishes_on_its_node_and_is_refused_on_another(bound: Bound) -> None:
    _wait_for_policy(bound)
    pod = wait_running(bound.cluster, bound.namespace, "server-a")
    wait_running(bound.cluster, bound.namespace, "server-b")
    root = fakenodes.unpack_snapshot(SNAPSHOT)
    state = bound.tmp / "cpu_manager_state"
    state.write_text(json.dumps({"policyName": "static", "defaultCpuSet": "0-1,6-17,22-31",
                                 "entries": {pod["metadata"]["uid"]: {"server": "2-5,18-21"}}, "checksum": 1}))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PINSERVE_", "KUBERNETES_SERVICE"))}
    env["KUBECONFIG"] = str(bound.kubeconfig)

    def agent(node: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "pinserve.agent", "--once", "--node", node, "--sysfs-root", str(root),
             "--cpu-manager-state", str(state), "--pod-resources-socket", ""],
            env=env, capture_output=True, text=True, timeout=120, check=False,
        )

    own = agent(bound.node_a)
    assert own.returncode == 0, own.stderr
    assert "api-writes=2" in own.stderr, own.stderr  # the node and server-a
    node_labels = bound.cluster.get_json("node", bound.node_a)["metadata"]["labels"]
    assert node_labels["pinserve.io/physical-cores"] == "16"
    served = bound.cluster.get_json("pod", "server-a", "-n", bound.namespace)["metadata"]["annotations"]
    assert (served[ANNOTATION_CPUS], served[ANNOTATION_CPUS_SOURCE]) == ("2-5,18-21", "exclusive")

    # Told it runs on node B, it is refused there (and writes nothing to B or its pods).
    other = agent(bound.node_b)
    assert other.returncode != 0
    assert f"may not write node {bound.node_b}" in other.stderr, other.stderr
    assert "pinserve.io/physical-cores" not in bound.cluster.get_json("node", bound.node_b)["metadata"]["labels"]
    server_b = bound.cluster.get_json("pod", "server-b", "-n", bound.namespace)["metadata"]
    assert ANNOTATION_CPUS not in (server_b.get("annotations") or {})
