"""Objects that are not pinserve's never reach the operator; its own children still trigger reconciles."""

from __future__ import annotations

import json
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
from pinserve.render.common import LABEL_MANAGED_BY, LABEL_MODELSERVER

pytestmark = pytest.mark.integration


def unrelated(namespace: str, name: str, labels: dict[str, str]) -> list[dict[str, Any]]:
    """A bare pod and a Deployment of someone else's, labelled ``labels``."""
    # The test namespaces enforce PodSecurity "restricted".
    container = {"name": "c", "image": "registry.example.com/other:1", "securityContext": {
        "allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}, "runAsNonRoot": True,
        "seccompProfile": {"type": "RuntimeDefault"}}}
    return [
        {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": namespace, "labels": labels},
         "spec": {"containers": [container]}},
        {"apiVersion": "apps/v1", "kind": "Deployment",
         "metadata": {"name": name, "namespace": namespace, "labels": labels},
         "spec": {"replicas": 1, "selector": {"matchLabels": {"other": name}},
                  "template": {"metadata": {"labels": {**labels, "other": name}},
                               "spec": {"containers": [container]}}}},
    ]


def test_only_owned_objects_reach_the_operator(cluster: Any, namespace: str, tmp_path: Path) -> None:
    install_crd(cluster)
    kubeconfig = tmp_path / "kubeconfig"
    install_operator_rbac(cluster, kubeconfig)
    # Neither label alone is enough: each of these lacks one of the selector's two.
    before = [*unrelated(namespace, "plain", {"app": "other"}),
              *unrelated(namespace, "half-a", {LABEL_MANAGED_BY: "pinserve"}),
              *unrelated(namespace, "half-b", {LABEL_MODELSERVER: "filtered"})]
    cluster.apply_objects(before)
    # A long resync: a repaired child below can only come from the informer's event.
    with running_operator(kubeconfig, PINSERVE_RESYNC_SECONDS="600") as runner:
        eventually("the operator to start", lambda: state.INFORMER is not None and state.INFORMER.primed.is_set())
        informer = state.INFORMER
        assert informer is not None
        cluster.apply_objects(unrelated(namespace, "later", {"app": "other"}))
        cluster.kubectl("apply", "-n", namespace, "-f", "-", input=yaml.safe_dump(modelserver("filtered", cores=1)))

        def ready() -> dict[str, Any] | None:
            body = cluster.get_json("-n", namespace, "modelserver/filtered")
            return body if condition(body, "Ready").get("status") == "True" else None

        eventually("filtered Ready", ready, timeout=90)
        key = (namespace, "filtered")
        deployments = [d["metadata"]["name"] for d in informer.owned_by("Deployment", key)]
        assert deployments == ["filtered"]
        assert informer.owned_by("Pod", key), "the ModelServer's own pod is cached"
        for kind in ("Pod", "Deployment"):
            for name in ("plain", "half-a", "half-b", "later"):
                assert informer.get(kind, namespace, name) is None, f"{kind} {name} reached the operator"
        assert informer.foreign() == 0, "the API server sent objects without pinserve's labels"

        # An owned child removed by hand comes back at once: its DELETED event triggered the reconcile.
        service = cluster.get_json("-n", namespace, "service/filtered")
        cluster.kubectl("delete", "-n", namespace, "service", "filtered", "--wait=true")

        def new_service() -> dict[str, Any] | None:
            proc = cluster.kubectl("get", "-n", namespace, "service", "filtered", "-o", "json", check=False)
            found = json.loads(proc.stdout) if proc.returncode == 0 else None
            return found if found and found["metadata"]["uid"] != service["metadata"]["uid"] else None

        recreated = eventually("the Service recreated", new_service, timeout=30)
        assert recreated["metadata"]["labels"][LABEL_MODELSERVER] == "filtered"
    assert runner.exception is None, runner.exception
