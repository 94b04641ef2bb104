"""Pod Security "restricted" for every pod pinserve makes: non-root, seccomp RuntimeDefault, no capabilities,
no privilege escalation, and no ServiceAccount token (none of them talks to the API server)."""

from __future__ import annotations

from typing import Any

from pinserve.settings import Settings


def pod_security_context(settings: Settings) -> dict[str, Any]:
    """A non-zero user and group (the TF Serving image runs as root by default); fsGroup makes the model
    emptyDir group-owned and writable by the init container that fills it."""
    return {
        "runAsNonRoot": True,
        "runAsUser": settings.pod_uid,
        "runAsGroup": settings.pod_gid,
        "fsGroup": settings.pod_gid,
        # A model PVC is not chowned file by file at every start.
        "fsGroupChangePolicy": "OnRootMismatch",
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def container_security_context() -> dict[str, Any]:
    return {
        "allowPrivilegeEscalation": False,
        "runAsNonRoot": True,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def restrict(pod_spec: dict[str, Any], settings: Settings) -> dict[str, Any]:
    """Lock a rendered pod spec down in place (every container and init container); returns it."""
    pod_spec["automountServiceAccountToken"] = False
    pod_spec["securityContext"] = pod_security_context(settings)
    for container in [*pod_spec.get("initContainers", []), *pod_spec.get("containers", [])]:
        container["securityContext"] = container_security_context()
    return pod_spec
