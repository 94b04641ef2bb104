"""Every pod pinserve renders meets Pod Security "restricted" (issue 11 item 3), for every golden case."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from pinserve.render.security import pod_security_context
from pinserve.settings import Settings
from tests.unit import test_render
from tests.unit.test_render import GOLDEN_CASES, everything

pytestmark = pytest.mark.unit
placed = test_render.placed  # the fixture: one ModelServer placed on one node


def pod_specs(objects: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [o["spec"]["template"]["spec"] for o in objects if o["kind"] in ("Deployment", "Job")]


def assert_restricted(pod: dict[str, Any]) -> None:
    """The checks of the "restricted" profile (kubernetes.io/docs/concepts/security/pod-security-standards)."""
    assert pod["automountServiceAccountToken"] is False
    assert not pod.get("hostNetwork") and not pod.get("hostPID") and not pod.get("hostIPC")
    ctx = pod["securityContext"]
    assert ctx["runAsNonRoot"] is True
    assert ctx["runAsUser"] > 0 and ctx["runAsGroup"] > 0 and ctx["fsGroup"] > 0
    assert ctx["seccompProfile"] == {"type": "RuntimeDefault"}
    for volume in pod.get("volumes", []):
        assert set(volume) - {"name"} <= {"configMap", "emptyDir", "persistentVolumeClaim", "secret",
                                          "projected", "downwardAPI", "csi", "ephemeral"}
    for container in [*pod.get("initContainers", []), *pod["containers"]]:
        sc = container["securityContext"]
        assert sc["allowPrivilegeEscalation"] is False, container["name"]
        assert sc["capabilities"] == {"drop": ["ALL"]}, container["name"]
        assert sc.get("runAsUser", 1) != 0 and not sc.get("privileged"), container["name"]
        assert sc["seccompProfile"] == {"type": "RuntimeDefault"}, container["name"]
        assert not any("hostPort" in p for p in container.get("ports", [])), container["name"]


@pytest.mark.parametrize("case", sorted(GOLDEN_CASES))
def test_every_rendered_pod_is_restricted(case: str, placed: Callable[..., Any]) -> None:
    spec, machine = GOLDEN_CASES[case]
    pods = pod_specs(everything(*placed(spec, machine)))
    assert len(pods) == 2
    for pod in pods:
        assert_restricted(pod)


def test_the_pod_user_is_a_setting() -> None:
    settings = Settings.from_env({"PINSERVE_POD_UID": "1000", "PINSERVE_POD_GID": "2000"})
    assert pod_security_context(settings)["runAsUser"] == 1000
    assert pod_security_context(settings)["runAsGroup"] == 2000
    assert pod_security_context(settings)["fsGroup"] == 2000
    assert Settings.from_env({}).pod_uid == 65532
    for bad in ("0", "-1"):
        with pytest.raises(ValueError, match="PINSERVE_POD_UID"):
            Settings.from_env({"PINSERVE_POD_UID": bad})
