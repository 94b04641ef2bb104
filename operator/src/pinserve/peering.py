"""Leader election between operator replicas, on kopf's peering.

kopf keeps every operator's keep-alive (priority, lifetime, last seen) in the status of a ClusterKopfPeering
(or, watching only some namespaces, a KopfPeering in each) and pauses its watchers while a live peer has a
higher priority; peers of equal priority pause each other. So each replica gets its own priority: by default
older wins (``default_priority``: the earlier the start, the higher), so a replica that starts later — the
second of two, or the new pod of a rolling update — waits, and the incumbent keeps reconciling.

kopf pauses its watchers but not pinserve's own loops (the periodic resync, timed requeues): ``Follower``
reads the same peering objects and says whether this replica leads; the work queue does nothing while it
does not. When the leader stops it removes its keep-alive (or, killed, its keep-alive expires after the
peering lifetime), kopf resumes the next one's watchers and ``Follower`` lets it reconcile.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from pinserve.kube import ApiError, KubeApi

log = logging.getLogger("pinserve")

CLUSTER_KIND = "ClusterKopfPeering"
NAMESPACED_KIND = "KopfPeering"
_EPOCH_MS = 1_767_225_600_000  # 2026-01-01: keeps the default priorities small enough for JSON's 2**53


def default_priority(now: float | None = None, rand: Callable[[int, int], int] = random.randint) -> int:
    """Higher for an earlier start (milliseconds), with a random last digit against same-millisecond starts."""
    started_ms = int((time.time() if now is None else now) * 1000) - _EPOCH_MS
    return -(started_ms * 10 + rand(0, 9))


def _parse_time(value: Any) -> datetime.datetime | None:
    try:
        parsed = datetime.datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=datetime.UTC)


def leads(status: Mapping[str, Any] | None, identity: str, priority: int, now: datetime.datetime) -> bool:
    """kopf's rule, seen from one peer: no other live peer with a priority as high or higher."""
    for peer, info in (status or {}).items():
        if peer == identity or not isinstance(info, Mapping):
            continue
        if not identity and int(info.get("priority") or 0) == priority:
            continue  # our own entry, when kopf chose the identity (priorities are unique per replica)
        lastseen = _parse_time(info.get("lastseen"))
        lifetime = int(info.get("lifetime") or 0)
        if lastseen is None or lastseen + datetime.timedelta(seconds=lifetime) <= now:
            continue  # dead (or going away: kopf writes lifetime 0 when it exits)
        if int(info.get("priority") or 0) >= priority:
            return False
    return True


@dataclass
class Follower:
    """Watches the peering objects named ``name`` and keeps ``leading`` current."""

    api: KubeApi
    name: str
    identity: str
    priority: int
    clusterwide: bool = True
    namespaces: tuple[str, ...] = ()  # watched by a namespaced operator: a KopfPeering in each
    on_change: Callable[[bool], None] = lambda leading: None
    leading: bool = False
    _objects: dict[str, Mapping[str, Any]] = field(default_factory=dict)  # namespace ("" cluster) -> status
    _timer: asyncio.TimerHandle | None = None

    def _evaluate(self) -> None:
        now = datetime.datetime.now(datetime.UTC)
        leading = bool(self._objects) and all(
            leads(status, self.identity, self.priority, now) for status in self._objects.values()
        )
        # Re-evaluate when a live peer's keep-alive runs out, even if nothing else arrives.
        if self._timer is not None:
            self._timer.cancel()
        deadlines = [
            lastseen + datetime.timedelta(seconds=int(info.get("lifetime") or 0))
            for status in self._objects.values() for peer, info in status.items()
            if peer != self.identity and isinstance(info, Mapping)
            and (lastseen := _parse_time(info.get("lastseen"))) is not None
        ]
        future = [(d - now).total_seconds() for d in deadlines if d > now]
        self._timer = asyncio.get_running_loop().call_later(min(future) + 0.5, self._evaluate) if future else None
        if leading != self.leading:
            self.leading = leading
            log.info("this replica (%s, priority %d) %s", self.identity, self.priority,
                     "leads: reconciling" if leading else "waits: another replica reconciles")
            self.on_change(leading)

    def _seen(self, event: Mapping[str, Any]) -> str | None:
        obj = event.get("object") or {}
        meta = obj.get("metadata") or {}
        if event.get("type") == "BOOKMARK":
            return str(meta.get("resourceVersion") or "") or None
        if meta.get("name") != self.name:
            return None
        where = "" if self.clusterwide else str(meta.get("namespace") or "")
        if event.get("type") == "DELETED":
            self._objects.pop(where, None)
        else:
            self._objects[where] = obj.get("status") or {}
        self._evaluate()
        return str(meta.get("resourceVersion") or "") or None

    async def ensure(self) -> None:
        """Create the peering object(s) kopf keeps its keep-alives in, if missing: kopf does not, and pauses
        without them. Made here rather than by the chart, so a plain `kubectl apply` of the install manifest
        (the CRDs and their objects in one go) works on a fresh cluster."""
        kind = CLUSTER_KIND if self.clusterwide else NAMESPACED_KIND
        for namespace in [None] if self.clusterwide else list(self.namespaces):
            body = {"apiVersion": "kopf.dev/v1", "kind": kind,
                    "metadata": {"name": self.name, **({"namespace": namespace} if namespace else {}),
                                 "labels": {"app.kubernetes.io/part-of": "pinserve"}}}
            if await self.api.get(kind, namespace, self.name) is not None:
                continue  # the usual case: a replica that waits writes nothing at all
            try:
                await self.api.create(body)
                log.info("created %s %s%s for leader election", kind, f"{namespace}/" if namespace else "", self.name)
            except ApiError as exc:
                if exc.status != 409:  # 409: it exists (another replica, or an earlier run)
                    raise

    async def run(self) -> None:
        kind = CLUSTER_KIND if self.clusterwide else NAMESPACED_KIND
        selector = f"metadata.name={self.name}"
        resource_version: str | None = None
        while True:
            try:
                if resource_version is None:
                    await self.ensure()
                    listed = await self.api.list_object(kind, None, field_selector=selector)
                    self._objects = {
                        ("" if self.clusterwide else str(o["metadata"].get("namespace") or "")): o.get("status") or {}
                        for o in listed.get("items", [])
                    }
                    self._evaluate()
                    resource_version = str((listed.get("metadata") or {}).get("resourceVersion") or "") or None
                async for event in self.api.watch(kind, None, field_selector=selector,
                                                  resource_version=resource_version):
                    if event.get("type") == "ERROR":
                        resource_version = None
                        break
                    resource_version = self._seen(event) or resource_version
            except asyncio.CancelledError:
                raise
            except (ApiError, OSError, ValueError, TimeoutError) as exc:
                log.warning("peering watch of %s %s failed (%s); retrying", kind, self.name, exc)
                resource_version = None
                await asyncio.sleep(2)
