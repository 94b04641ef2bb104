"""Restarting the operator creates nothing twice, rewrites nothing and loses no status."""

from __future__ import annotations

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

WRITE_VERBS = ("POST", "PUT", "PATCH", "DELETE")


def test_restart_is_a_no_op(cluster: Any, namespace: str, tmp_path: Path) -> None:
    install_crd(cluster)
    kubeconfig = tmp_path / "kubeconfig"
    install_operator_rbac(cluster, kubeconfig)
    env = {"PINSERVE_RESYNC_SECONDS": "1"}
    # Scoped to the test's namespace: ModelServers other tests leave behind are not this test's business.
    with running_operator(kubeconfig, namespace, **env) as first:
        cluster.kubectl("apply", "-n", namespace, "-f", "-", input=yaml.safe_dump(modelserver("keep", cores=1)))

        def ready() -> dict[str, Any] | None:
            body = cluster.get_json("-n", namespace, "modelserver/keep")
            return body if condition(body, "Ready").get("status") == "True" else None

        eventually("keep Ready", ready, timeout=90)
        assert state.CONTROLLER is not None
        settled = state.CONTROLLER.reconciles + 3
        eventually("the first operator to settle", lambda: state.CONTROLLER is not None
                   and state.CONTROLLER.reconciles >= settled)
        before = cluster.get_json("-n", namespace, "modelserver/keep")
        deployment = cluster.get_json("-n", namespace, "deployment/keep")
    assert first.exception is None

    with running_operator(kubeconfig, namespace, **env) as second:
        eventually("the restarted operator to start", lambda: state.CONTROLLER is not None)
        assert state.CONTROLLER is not None
        controller = state.CONTROLLER
        # Resume reconcile plus a few periodic resyncs.
        eventually("three reconciles after restart", lambda: controller.reconciles >= 3, timeout=60)
        writes = {verb: controller.api.requests[verb] for verb in WRITE_VERBS}
        after = cluster.get_json("-n", namespace, "modelserver/keep")
        deployment_after = cluster.get_json("-n", namespace, "deployment/keep")
        deployments = cluster.get_json("-n", namespace, "deployments", "-l", "pinserve.io/modelserver=keep")
    assert second.exception is None

    assert writes == dict.fromkeys(WRITE_VERBS, 0), f"a no-op restart wrote: {writes}"
    assert len(deployments["items"]) == 1
    assert deployment_after["metadata"]["uid"] == deployment["metadata"]["uid"]
    assert deployment_after["metadata"]["resourceVersion"] == deployment["metadata"]["resourceVersion"]
    assert after["metadata"]["resourceVersion"] == before["metadata"]["resourceVersion"]
    assert after["status"] == before["status"]
