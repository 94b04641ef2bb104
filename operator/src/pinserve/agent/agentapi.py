"""What the node agent needs of the API server: :class:`AgentApi` (``pinserve.kube.KubeApi`` is one) and
how its writes are counted."""

from __future__ import annotations

from collections import Counter
from collections.abc import AsyncIterator, Mapping
from typing import Any, Protocol

__all__ = ["WRITE_VERBS", "AgentApi", "write_count"]

WRITE_VERBS: tuple[str, ...] = ("POST", "PUT", "PATCH", "DELETE")


def write_count(requests: Mapping[str, int]) -> int:
    """How many of the counted API requests were writes."""
    return sum(requests.get(verb, 0) for verb in WRITE_VERBS)


class AgentApi(Protocol):
    """The part of :class:`pinserve.kube.KubeApi` the agent uses (tests pass an in-memory fake)."""

    requests: Counter[str]

    async def get(self, kind: str, namespace: str | None, name: str) -> dict[str, Any] | None: ...

    async def merge_patch(
        self, kind: str, namespace: str | None, name: str, patch: Mapping[str, Any], sub: str = ""
    ) -> dict[str, Any]: ...

    async def list_object(
        self, kind: str, namespace: str | None = None, *, label_selector: str | None = None,
        field_selector: str | None = None,
    ) -> dict[str, Any]: ...

    def watch(
        self, kind: str, namespace: str | None = None, *, label_selector: str | None = None,
        field_selector: str | None = None, resource_version: str | None = None, timeout_seconds: int = 300,
    ) -> AsyncIterator[dict[str, Any]]: ...
