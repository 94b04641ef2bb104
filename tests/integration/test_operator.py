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
