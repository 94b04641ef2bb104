"""The chart's operator for issue 11 items 3, 5 and 6: pod user, replicas with leader election, metrics."""

from __future__ import annotations

import pytest

from tests.unit.test_chart import by_kind, env_of, one, render

pytestmark = pytest.mark.unit


def test_defaults_one_replica_peering_metrics_service() -> None:
    docs = render()
    deploy = one(docs, "Deployment", "operator")
    (container,) = deploy["spec"]["template"]["spec"]["containers"]
    env = env_of(container)
    assert env["POD_ID"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    assert env["PINSERVE_PEERING"] == "pinserve"
    assert env["PINSERVE_PEERING_PRIORITY"] == ""
    assert env["PINSERVE_METRICS_HOST"] == "0.0.0.0"
    assert env["PINSERVE_METRICS_PORT"] == "9090"
    assert env["PINSERVE_POD_UID"] == "65532" and env["PINSERVE_POD_GID"] == "65532"
    assert {"name": "metrics", "containerPort": 9090, "protocol": "TCP"} in container["ports"]
    # The operator creates its peering object: a CR beside its CRD in one `kubectl apply` would fail.
    assert not by_kind(docs, "ClusterKopfPeering") and not by_kind(docs, "KopfPeering")
    (service,) = by_kind(docs, "Service")
    assert service["spec"]["ports"] == [{"name": "metrics", "port": 9090, "targetPort": "metrics", "protocol": "TCP"}]
    assert service["spec"]["selector"] == deploy["spec"]["selector"]["matchLabels"]
    assert not by_kind(docs, "ServiceMonitor") and not by_kind(docs, "PodDisruptionBudget")
    assert "affinity" not in deploy["spec"]["template"]["spec"]


def test_two_replicas_get_a_pdb_and_spread() -> None:
    docs = render("operator.replicas=2")
    deploy = one(docs, "Deployment", "operator")
    assert deploy["spec"]["replicas"] == 2
    (pdb,) = by_kind(docs, "PodDisruptionBudget")
    assert pdb["spec"] == {"minAvailable": 1, "selector": deploy["spec"]["selector"]}
    anti = deploy["spec"]["template"]["spec"]["affinity"]["podAntiAffinity"]
    term = anti["preferredDuringSchedulingIgnoredDuringExecution"][0]["podAffinityTerm"]
    assert term["labelSelector"]["matchLabels"] == deploy["spec"]["selector"]["matchLabels"]


def test_host_network_binds_metrics_to_loopback_and_recreates() -> None:
    deploy = one(render("operator.hostNetwork=true"), "Deployment", "operator")
    (container,) = deploy["spec"]["template"]["spec"]["containers"]
    assert env_of(container)["PINSERVE_METRICS_HOST"] == "127.0.0.1"
    assert deploy["spec"]["strategy"] == {"type": "Recreate"}
    explicit = one(render("operator.hostNetwork=true", "operator.metrics.host=10.0.0.1"), "Deployment", "operator")
    assert env_of(explicit["spec"]["template"]["spec"]["containers"][0])["PINSERVE_METRICS_HOST"] == "10.0.0.1"


def test_service_monitor_on_request() -> None:
    docs = render("operator.metrics.serviceMonitor.enabled=true", "operator.metrics.serviceMonitor.labels.release=prom")
    (monitor,) = by_kind(docs, "ServiceMonitor")
    assert monitor["metadata"]["labels"]["release"] == "prom"
    assert monitor["spec"]["endpoints"][0]["port"] == "metrics"
    (service,) = by_kind(docs, "Service")
    assert all(service["metadata"]["labels"].get(k) == v for k, v in monitor["spec"]["selector"]["matchLabels"].items())


def test_metrics_and_peering_can_be_turned_off() -> None:
    docs = render("operator.metrics.enabled=false", "operator.peering.enabled=false")
    (container,) = one(docs, "Deployment", "operator")["spec"]["template"]["spec"]["containers"]
    assert env_of(container)["PINSERVE_METRICS_PORT"] == "0"
    assert env_of(container)["PINSERVE_PEERING"] == ""
    assert not by_kind(docs, "Service")
    assert one(docs, "Deployment", "operator")["spec"]["strategy"] == {"type": "Recreate"}


def test_pod_user_is_a_value() -> None:
    (container,) = one(render("pods.runAsUser=1000", "pods.runAsGroup=3000"), "Deployment",
                       "operator")["spec"]["template"]["spec"]["containers"]
    assert env_of(container)["PINSERVE_POD_UID"] == "1000" and env_of(container)["PINSERVE_POD_GID"] == "3000"
