"""The operator against a real kube-apiserver, under its chart's RBAC, with KWOK-simulated pods."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from operator_harness import (
    condition,
    eventually,
    install_crd,
    install_operator_rbac,
    modelserver,
    running_operator,
)

from pinserve.handlers import state

pytestmark = pytest.mark.integration

OPERATOR_ENV = {"PINSERVE_RESYNC_SECONDS": "2", "PINSERVE_BENCH_RETRIES": "1"}


@pytest.fixture(scope="module")
def operator_kubeconfig(cluster: Any, tmp_path_factory: pytest.TempPathFactory) -> Path:
    install_crd(cluster)
    path = tmp_path_factory.mktemp("operator") / "kubeconfig"
    install_operator_rbac(cluster, path)
    return path


@pytest.fixture(scope="module")
def operator(operator_kubeconfig: Path) -> Iterator[Any]:
    with running_operator(operator_kubeconfig, **OPERATOR_ENV) as runner:
        yield runner
    assert runner.exception is None, runner.exception


def settle(reconciles: int) -> None:
    """Wait until the in-process operator has run this many more reconciles (no clocks involved)."""
    assert state.CONTROLLER is not None
    target = state.CONTROLLER.reconciles + reconciles
    eventually(f"{reconciles} more reconciles", lambda: state.CONTROLLER is not None
               and state.CONTROLLER.reconciles >= target)


def get_ms(cluster: Any, namespace: str, name: str) -> dict[str, Any]:
    return dict(cluster.get_json("-n", namespace, f"modelserver/{name}"))


def get_obj(cluster: Any, namespace: str, kind: str, name: str) -> dict[str, Any] | None:
    proc = cluster.kubectl("get", "-n", namespace, kind, name, "-o", "json", check=False)
    return json.loads(proc.stdout) if proc.returncode == 0 else None


def apply(cluster: Any, namespace: str, body: dict[str, Any]) -> None:
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=yaml.safe_dump(body))


def wait_ready(cluster: Any, namespace: str, name: str, generation: int = 1) -> dict[str, Any]:
    def probe() -> dict[str, Any] | None:
        body = get_ms(cluster, namespace, name)
        ready = condition(body, "Ready")
        if ready.get("status") == "True" and body["status"].get("observedGeneration") == generation:
            return body
        return None

    return eventually(f"{name} Ready at generation {generation}", probe, timeout=90)


def server_container(deployment: dict[str, Any]) -> dict[str, Any]:
    containers = deployment["spec"]["template"]["spec"]["containers"]
    return dict(next(c for c in containers if c["name"] == "server"))


def test_create_deploys_guaranteed_pods_and_reports_ready(cluster: Any, operator: Any, namespace: str) -> None:
    apply(cluster, namespace, modelserver("hp2", cores=2))
    deployment = eventually("the Deployment", lambda: get_obj(cluster, namespace, "deployment", "hp2"))
    owner = deployment["metadata"]["ownerReferences"][0]
    assert owner["kind"] == "ModelServer" and owner["name"] == "hp2" and owner["controller"] is True
    pod_spec = deployment["spec"]["template"]["spec"]
    for container in pod_spec["containers"] + pod_spec.get("initContainers", []):
        assert container["resources"]["requests"] == container["resources"]["limits"], container["name"]
    server = server_container(deployment)
    assert server["resources"]["limits"]["cpu"] == "2"  # default nodes: two non-SMT machines outvote one SMT
    env = {e["name"]: e.get("value") for e in server["env"]}
    assert env["PINSERVE_PLANNED_CORES"] == "2"
    assert get_obj(cluster, namespace, "service", "hp2") is not None
    assert get_obj(cluster, namespace, "configmap", "hp2-serving") is not None

    body = wait_ready(cluster, namespace, "hp2")
    status = body["status"]
    assert status["readyReplicas"] == 1 and status["replicas"] == 1
    assert status["placement"]["threads"]["intraOp"] == 2
    assert status["placement"]["threads"]["interOp"] == 2
    assert condition(body, "Placed")["status"] == "True"
    pods = eventually("status.pods", lambda: get_ms(cluster, namespace, "hp2")["status"].get("pods"))
    assert pods[0]["qosClass"] == "Guaranteed"
    assert pods[0]["node"].startswith("kwok-")
    # Progress lives in annotations or nowhere: kopf must not have written into status.
    assert "kopf" not in status


def test_update_of_cores_rolls_the_deployment(cluster: Any, operator: Any, namespace: str) -> None:
    apply(cluster, namespace, modelserver("roll", cores=1))
    wait_ready(cluster, namespace, "roll")
    apply(cluster, namespace, modelserver("roll", cores=3))

    def rolled() -> dict[str, Any] | None:
        dep = get_obj(cluster, namespace, "deployment", "roll")
        return dep if dep and server_container(dep)["resources"]["limits"]["cpu"] == "3" else None

    eventually("the Deployment to ask for 3 CPUs", rolled)
    body = wait_ready(cluster, namespace, "roll", generation=2)
    assert body["status"]["placement"]["physicalCores"] == 3
    assert body["status"]["placement"]["threads"]["omp"] == 3
    assert all(c["observedGeneration"] == 2 for c in body["status"]["conditions"])


def test_delete_garbage_collects_children(cluster: Any, operator: Any, namespace: str) -> None:
    apply(cluster, namespace, modelserver("gone", cores=1))
    wait_ready(cluster, namespace, "gone")
    cluster.kubectl("delete", "-n", namespace, "modelserver/gone", "--wait=true", timeout=60)
    for kind, name in (("deployment", "gone"), ("service", "gone"), ("configmap", "gone-serving")):
        eventually(f"{kind}/{name} to be collected",
                   lambda kind=kind, name=name: get_obj(cluster, namespace, kind, name) is None)


@pytest.mark.parametrize(
    ("spec_patch", "expected"),
    [
        ({"resources": {"physicalCores": 0, "memory": "1Gi"}}, "physicalCores"),
        ({"model": {"uri": "https://x/m.tgz", "image": "example/model:1"}}, "exactly one of"),
        ({"model": {"uri": "ftp://x/m.tgz"}}, "uri"),
        ({"threading": {"intraOp": 99}}, "intraOp"),
        ({"resources": {"physicalCores": 1, "memory": "lots"}}, "memory"),
        ({"replicas": -1}, "replicas"),
        # spec.server.env is a map keyed by name (x-kubernetes-list-type: map): duplicates are refused.
        ({"server": {"env": [{"name": "A", "value": "1"}, {"name": "A", "value": "2"}]}}, "Duplicate value"),
        ({"tuning": {"enabled": True, "timeoutMinutes": 0}}, "timeoutMinutes"),
        ({"tuning": {"p99BudgetMs": 5}}, "throughput only"),
    ],
)
def test_api_server_rejects_bad_specs(cluster: Any, operator_kubeconfig: Path, namespace: str,
                                      spec_patch: dict[str, Any], expected: str) -> None:
    body = modelserver("bad", cores=2)
    body["spec"].update(spec_patch)
    proc = cluster.kubectl("apply", "-n", namespace, "-f", "-", input=yaml.safe_dump(body), check=False)
    assert proc.returncode != 0, proc.stdout
    assert expected in proc.stderr, proc.stderr
    assert get_obj(cluster, namespace, "modelserver", "bad") is None


def test_unplaceable_spec_waits_then_recovers_when_a_node_fits(cluster: Any, operator: Any, namespace: str) -> None:
    apply(cluster, namespace, modelserver("huge", cores=40, placement={"nodeSelector": {"pool": "huge"}}))

    def unplaced() -> dict[str, Any] | None:
        placed = condition(get_ms(cluster, namespace, "huge"), "Placed")
        return placed if placed.get("status") == "False" else None

    placed = eventually("Placed=False", unplaced)
    assert placed["reason"] == "Unschedulable"
    assert "spec.resources" in placed["message"]
    assert get_obj(cluster, namespace, "deployment", "huge") is None
    cluster.add_fake_node("kwok-huge", "96em64t-4no4pa3ca2co", labels={"pool": "huge"})
    try:
        body = wait_ready(cluster, namespace, "huge")
        assert condition(body, "Placed")["status"] == "True"
        assert body["status"]["placement"]["nodes"] == ["kwok-huge"]
    finally:
        cluster.kubectl("delete", "-n", namespace, "modelserver/huge", "--wait=true", timeout=60)
        cluster.remove_node("kwok-huge")


def test_hand_edited_child_is_put_back(cluster: Any, operator: Any, namespace: str) -> None:
    apply(cluster, namespace, modelserver("edit", cores=1))
    wait_ready(cluster, namespace, "edit")
    patch = {"spec": {"template": {"spec": {"containers": [
        {"name": "server", "resources": {"limits": {"cpu": "3"}, "requests": {"cpu": "3"}}}]}}}}
    cluster.kubectl("patch", "-n", namespace, "deployment/edit", "--type=strategic", "-p", json.dumps(patch))

    def restored() -> bool:
        dep = get_obj(cluster, namespace, "deployment", "edit")
        return bool(dep) and server_container(dep)["resources"]["limits"]["cpu"] == "1"

    eventually("the Deployment's CPU limit to be restored", restored)
    cluster.kubectl("delete", "-n", namespace, "configmap/edit-serving")
    eventually("the deleted ConfigMap to come back",
               lambda: get_obj(cluster, namespace, "configmap", "edit-serving") is not None)


def test_objects_it_does_not_own_are_left_alone(cluster: Any, operator: Any, namespace: str) -> None:
    foreign = {
        "apiVersion": "v1", "kind": "Service", "metadata": {"name": "taken", "labels": {"team": "other"}},
        "spec": {"selector": {"app": "other"}, "ports": [{"port": 80}]},
    }
    cluster.kubectl("create", "-n", namespace, "-f", "-", input=json.dumps(foreign))
    before = get_obj(cluster, namespace, "service", "taken")
    assert before is not None
    apply(cluster, namespace, modelserver("taken", cores=1))

    def conflict() -> dict[str, Any] | None:
        ready = condition(get_ms(cluster, namespace, "taken"), "Ready")
        return ready if ready.get("reason") == "NameConflict" else None

    ready = eventually("Ready=False NameConflict", conflict)
    assert "Service named taken" in ready["message"]
    after = get_obj(cluster, namespace, "service", "taken")
    assert after is not None
    assert after["metadata"]["resourceVersion"] == before["metadata"]["resourceVersion"]
    assert "ownerReferences" not in after["metadata"]


def test_child_the_api_server_refuses_becomes_a_condition(cluster: Any, operator: Any, namespace: str) -> None:
    """placement.affinity is a free-form Kubernetes type: the API server judges it when the Deployment is applied.
    The answer becomes Ready=False ApplyFailed naming the field, with no retry storm and no crash."""
    affinity = {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
        {"matchExpressions": [{"key": "zone", "operator": "Sometimes", "values": ["a"]}]}]}}}
    apply(cluster, namespace, modelserver("refused", cores=1, placement={"affinity": affinity}))

    def refused() -> dict[str, Any] | None:
        ready = condition(get_ms(cluster, namespace, "refused"), "Ready")
        return ready if ready.get("reason") == "ApplyFailed" else None

    ready = eventually("Ready=False ApplyFailed", refused)
    assert ready["message"].startswith("Deployment refused was refused") and "operator" in ready["message"]
    assert get_obj(cluster, namespace, "deployment", "refused") is None
    version = get_ms(cluster, namespace, "refused")["metadata"]["resourceVersion"]
    settle(3)  # several periodic resyncs later nothing has been rewritten
    assert get_ms(cluster, namespace, "refused")["metadata"]["resourceVersion"] == version
    events = cluster.get_json("-n", namespace, "events", "--field-selector", "involvedObject.name=refused")["items"]
    assert sum(1 for e in events if e["reason"] == "ApplyFailed") == 1


# -- issue 10: removals, node churn, rollouts, the scale subresource --------------------------------------


def test_fields_removed_from_the_spec_leave_the_deployment(cluster: Any, operator: Any, namespace: str) -> None:
    env = [{"name": "KEEP", "value": "1"}, {"name": "DROP", "value": "2"}]
    apply(cluster, namespace, modelserver("removal", cores=1, server={"env": env},
                                          placement={"nodeSelector": {"type": "kwok"}}))
    wait_ready(cluster, namespace, "removal")
    deployment = get_obj(cluster, namespace, "deployment", "removal")
    assert deployment is not None
    assert {"KEEP", "DROP"} <= {e["name"] for e in server_container(deployment)["env"]}
    assert deployment["spec"]["template"]["spec"]["nodeSelector"] == {"type": "kwok"}
    assert "pinserve.io/desired-hash" in deployment["metadata"]["annotations"]

    apply(cluster, namespace, modelserver("removal", cores=1, server={"env": env[:1]}))

    def removed() -> dict[str, Any] | None:
        dep = get_obj(cluster, namespace, "deployment", "removal")
        names = {e["name"] for e in server_container(dep)["env"]} if dep else {"DROP"}
        return dep if dep and "DROP" not in names and "nodeSelector" not in dep["spec"]["template"]["spec"] else None

    dep = eventually("DROP and the nodeSelector to leave the pod template", removed)
    assert "KEEP" in {e["name"] for e in server_container(dep)["env"]}
    wait_ready(cluster, namespace, "removal", generation=2)
    # Steady state: the Deployment's spec is not written again (its generation would move).
    generation = cluster.get_json("-n", namespace, "deployment/removal")["metadata"]["generation"]
    settle(3)
    assert cluster.get_json("-n", namespace, "deployment/removal")["metadata"]["generation"] == generation


SMT_SNAPSHOT = "32intel64-2p8co2t+8ve"  # 2 threads per core
PLAIN_SNAPSHOT = "8em64t-2s2ca2c"  # 1 thread per core


def test_node_churn_rolls_nothing_until_the_class_is_gone(cluster: Any, operator: Any, namespace: str) -> None:
    pool = f"p{namespace[-6:]}"  # a letter first: a hex suffix such as 474e73 is a number to the YAML parser
    smt, plain = f"kwok-sticky-smt-{pool}", [f"kwok-sticky-plain-{pool}-{i}" for i in range(2)]
    cluster.add_fake_node(smt, SMT_SNAPSHOT, labels={"pool": pool})
    try:
        apply(cluster, namespace, modelserver("sticky", cores=1, placement={"nodeSelector": {"pool": pool}}))
        body = wait_ready(cluster, namespace, "sticky")
        assert body["status"]["placement"]["threadsPerCore"] == 2
        before = get_obj(cluster, namespace, "deployment", "sticky")
        assert before is not None and server_container(before)["resources"]["limits"]["cpu"] == "2"

        # Two nodes of another class join and outnumber it: by majority the plan would flip and roll.
        for name in plain:
            cluster.add_fake_node(name, PLAIN_SNAPSHOT, labels={"pool": pool})
        settle(4)
        after = get_obj(cluster, namespace, "deployment", "sticky")
        assert after is not None
        assert after["metadata"]["generation"] == before["metadata"]["generation"]
        assert after["spec"]["template"] == before["spec"]["template"]
        placement = get_ms(cluster, namespace, "sticky")["status"]["placement"]
        assert placement["threadsPerCore"] == 2 and placement["nodes"] == [smt]

        # The last node of the class leaves: re-planned for the nodes that are left, and said so.
        cluster.remove_node(smt)

        def replanned() -> dict[str, Any] | None:
            dep = get_obj(cluster, namespace, "deployment", "sticky")
            return dep if dep and server_container(dep)["resources"]["limits"]["cpu"] == "1" else None

        eventually("the Deployment to be re-planned for 1 thread per core", replanned)
        # The status is written after the Deployment is applied, and the Event after the status.
        eventually("the re-plan in status", lambda: get_ms(cluster, namespace, "sticky")["status"]["placement"][
            "threadsPerCore"] == 1)
        # The Event is posted after the status it follows.
        [event] = eventually("the Replanned Event", lambda: [e for e in cluster.get_json(
            "-n", namespace, "events", "--field-selector", "involvedObject.name=sticky")["items"]
            if e["reason"] == "Replanned"], timeout=30)
        assert "no eligible node of the recorded class (2 thread(s) per core" in event["message"]
    finally:
        cluster.kubectl("delete", "-n", namespace, "modelserver/sticky", "--wait=true", timeout=60, check=False)
        for name in (smt, *plain):
            cluster.remove_node(name)


def test_ready_only_once_the_new_revision_is_rolled_out(cluster: Any, operator: Any, namespace: str) -> None:
    apply(cluster, namespace, modelserver("rollout", cores=1))
    wait_ready(cluster, namespace, "rollout")
    # A new revision whose pod cannot be scheduled (the affinity is the API server's business, not planning's):
    # the old pod keeps serving and stays ready, the surge pod stays Pending.
    nowhere = {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
        {"matchExpressions": [{"key": "pinserve-test/nowhere", "operator": "Exists"}]}]}}}
    apply(cluster, namespace, modelserver("rollout", cores=1, placement={"affinity": nowhere}))

    def mid_rollout() -> dict[str, Any] | None:
        dep = get_obj(cluster, namespace, "deployment", "rollout")
        status = (dep or {}).get("status") or {}
        if status.get("updatedReplicas") == 1 and status.get("replicas") == 2 and status.get("readyReplicas") == 1:
            return dep
        return None

    eventually("a rollout with the old pod ready and the new one Pending", mid_rollout)
    settle(3)
    body = get_ms(cluster, namespace, "rollout")
    ready = condition(body, "Ready")
    assert ready["status"] == "False" and ready["observedGeneration"] == 2, ready
    assert ready["reason"] in ("RollingOut", "Unschedulable"), ready
    # Fixed: the revision rolls out fully, and only then it is Ready.
    apply(cluster, namespace, modelserver("rollout", cores=1))
    body = wait_ready(cluster, namespace, "rollout", generation=3)
    dep = get_obj(cluster, namespace, "deployment", "rollout")
    assert dep is not None and dep["status"]["replicas"] == dep["status"]["updatedReplicas"] == 1


def test_the_scale_subresource_drives_the_deployment(cluster: Any, operator: Any, namespace: str) -> None:
    """What an HPA does: read and write spec.replicas through /scale, find the pods by status.selector."""
    apply(cluster, namespace, modelserver("scaled", cores=1))
    wait_ready(cluster, namespace, "scaled")
    placement = get_ms(cluster, namespace, "scaled")["status"]["placement"]
    cluster.kubectl("patch", "-n", namespace, "modelserver/scaled", "--subresource=scale", "--type=merge",
                    "-p", json.dumps({"spec": {"replicas": 2}}))

    def scaled() -> dict[str, Any] | None:
        dep = get_obj(cluster, namespace, "deployment", "scaled")
        return dep if dep and dep["spec"]["replicas"] == 2 else None

    eventually("the Deployment to follow spec.replicas=2", scaled)
    body = wait_ready(cluster, namespace, "scaled", generation=2)
    assert body["status"]["replicas"] == 2 and body["status"]["readyReplicas"] == 2
    assert body["status"]["placement"] == placement  # scaling re-plans nothing
    scale = cluster.get_json("-n", namespace, "modelserver/scaled", "--subresource=scale")
    assert scale["kind"] == "Scale" and scale["spec"]["replicas"] == 2 and scale["status"]["replicas"] == 2
    selector = scale["status"]["selector"]
    pods = cluster.get_json("-n", namespace, "pods", "-l", selector)["items"]
    assert len(pods) == 2 and all(p["metadata"]["labels"]["app.kubernetes.io/component"] == "server" for p in pods)
    # Nothing puts the count back: several resyncs later the Deployment still has two replicas.
    settle(3)
    dep = get_obj(cluster, namespace, "deployment", "scaled")
    assert dep is not None and dep["spec"]["replicas"] == 2
