"""The operator's in-cluster login finds the API server the way client-go does."""

from __future__ import annotations

import pytest

from pinserve.kube import in_cluster_server

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(("env", "want"), [
    ({}, None),
    ({"KUBERNETES_SERVICE_HOST": "10.96.0.1"}, "https://10.96.0.1:443"),
    ({"KUBERNETES_SERVICE_HOST": "127.0.0.1", "KUBERNETES_SERVICE_PORT": "36443"}, "https://127.0.0.1:36443"),
    ({"KUBERNETES_SERVICE_HOST": "fd00::1", "KUBERNETES_SERVICE_PORT": "443"}, "https://[fd00::1]:443"),
    ({"KUBERNETES_SERVICE_HOST": " "}, None),
])
def test_in_cluster_server(env: dict[str, str], want: str | None) -> None:
    assert in_cluster_server(env) == want
