"""Carries out reconcile Outcomes: apply, delete, status, events — serialised per ModelServer.

Observations come from kopf indices (filled by watches), so a reconcile makes no reads;
writes happen only for what differs, which makes a no-op resync free.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from pinserve import status as status_writer
from pinserve.api import API_VERSION, KIND
from pinserve.kube import ApiError, KubeApi
from pinserve.planning import NodeInfo
from pinserve.reconcile import EventSpec, Observed, Outcome, reconcile
from pinserve.render.common import LABEL_COMPONENT
from pinserve.settings import Settings
from pinserve.status import Condition

log = logging.getLogger("pinserve")

Key = tuple[str, str]  # (namespace, ModelServer name)
IN_FLIGHT_SECONDS = 10.0


@dataclass
class Snapshot:
    """What the indices hold for one ModelServer, as plain data."""

    body: Mapping[str, Any] | None
    nodes: list[NodeInfo]
    observed: Observed


@dataclass
class _Written:
    resource_version: str
    status: dict[str, Any]


@dataclass
class Controller:
    api: KubeApi
    settings: Settings
    locks: dict[Key, asyncio.Lock] = field(default_factory=dict)
    # Status we wrote, keyed by the resourceVersion it replaced: until the watch delivers
    # the new object, the index still shows the old one and must not be trusted.
    written: dict[Key, _Written] = field(default_factory=dict)
    # (kind, namespace, name) -> (resourceVersion seen before our apply, when), for the same reason.
    applied: dict[tuple[str, str, str], tuple[str | None, float]] = field(default_factory=dict)
    reconciles: int = 0

    def _lock(self, key: Key) -> asyncio.Lock:
        return self.locks.setdefault(key, asyncio.Lock())

    def forget(self, key: Key) -> None:
        self.locks.pop(key, None)
        self.written.pop(key, None)
        for k in [k for k in self.applied if (k[1], k[2]) == key or k[1:] == key]:
            self.applied.pop(k, None)

    def _fresh_body(self, key: Key, body: Mapping[str, Any]) -> Mapping[str, Any]:
        written = self.written.get(key)
        if written is None:
            return body
        if (body.get("metadata") or {}).get("resourceVersion") == written.resource_version:
            return {**body, "status": written.status}
        del self.written[key]
        return body

    def _in_flight(self, obj: Mapping[str, Any], observed: Observed) -> bool:
        """Our last apply of this object has not come back through the watch yet."""
        meta = obj["metadata"]
        marker = (obj["kind"], meta["namespace"], meta["name"])
        if marker not in self.applied:
            return False
        live = observed.children.get((obj["kind"], meta["name"]))
        live_rv = (live or {}).get("metadata", {}).get("resourceVersion")
        before, when = self.applied[marker]
        # A watch delivers our own write within moments; after that, a difference is real drift
        # (e.g. the object was deleted by hand) and must be repaired.
        if live_rv == before and time.monotonic() - when < IN_FLIGHT_SECONDS:
            return True
        del self.applied[marker]
        return False

    async def sync(self, key: Key, snapshot: Snapshot) -> Outcome | None:
        async with self._lock(key):
            if snapshot.body is None:
                return None
            body = self._fresh_body(key, snapshot.body)
            self.reconciles += 1
            now = status_writer.now_rfc3339()
            outcome = reconcile(body, snapshot.nodes, snapshot.observed, self.settings, now)
            failure = await self._carry_out(outcome, snapshot.observed)
            desired = outcome.status
            if failure is not None:
                generation = int((body.get("metadata") or {}).get("generation") or 1)
                desired = status_writer.desired_status(
                    desired, generation=generation, conditions=[failure], fields={}, now=now
                )
                previous: Mapping[str, Any] = next(
                    (c for c in (body.get("status") or {}).get("conditions") or [] if c.get("type") == "Ready"), {}
                )
                if (previous.get("reason"), previous.get("message")) != (failure.reason, failure.message):
                    outcome.events.append(EventSpec("Warning", failure.reason, failure.message))
            await self._write_status(key, body, desired)
            for event in outcome.events:
                await self._post_event(body, event)
            return outcome

    async def _carry_out(self, outcome: Outcome, observed: Observed) -> Condition | None:
        owner_uid = outcome.modelserver.ref.uid if outcome.modelserver else ""
        for obj in outcome.apply:
            if self._in_flight(obj, observed):
                continue
            meta = obj["metadata"]
            live = observed.children.get((obj["kind"], meta["name"]))
            if live is None:
                # Not in our indices, so not ours: one read, only before a create, so that a
                # same-named object of someone else's is never overwritten by the apply.
                live = await self.api.get(obj["kind"], meta["namespace"], meta["name"])
            if live is not None and not controlled_by(live, owner_uid):
                return Condition("Ready", "False", "NameConflict",
                                 f"a {obj['kind']} named {meta['name']} already exists and is not owned by this "
                                 "ModelServer; pinserve leaves it alone (rename the ModelServer or remove it)")
            log.info("applying %s %s/%s (%s)", obj["kind"], meta["namespace"], meta["name"],
                     "create" if live is None else "drifted from the desired state")
            try:
                await self.api.apply(obj)
            except ApiError as exc:
                if not exc.is_client_error:
                    raise
                # The API server refused what the spec produced: say so, never crash-loop.
                return Condition("Ready", "False", "ApplyFailed",
                                 f"{obj['kind']} {meta['name']} was refused: {exc.message}")
            self.applied[(obj["kind"], meta["namespace"], meta["name"])] = (
                (live or {}).get("metadata", {}).get("resourceVersion"), time.monotonic()
            )
        ms = outcome.modelserver
        for kind, name in outcome.delete:
            if ms is not None:
                await self.api.delete(kind, ms.ref.namespace, name)
        return None

    async def _write_status(self, key: Key, body: Mapping[str, Any], desired: dict[str, Any]) -> None:
        current = body.get("status")
        patch = status_writer.status_patch(current, desired)
        if patch is None:
            return
        log.debug("writing status of %s/%s: %s", key[0], key[1], patch)
        try:
            await status_writer.write_status(self.api, key[0], key[1], current, desired)
        except ApiError as exc:
            if exc.status == 404:
                return  # deleted meanwhile; its children go with it
            raise
        rv = (body.get("metadata") or {}).get("resourceVersion")
        if rv:
            self.written[key] = _Written(rv, desired)

    async def _post_event(self, body: Mapping[str, Any], event: EventSpec) -> None:
        meta = body.get("metadata") or {}
        now = status_writer.now_rfc3339()
        try:
            await self.api.request("POST", f"/api/v1/namespaces/{meta.get('namespace')}/events", body={
                "metadata": {"generateName": f"{meta.get('name')}.", "namespace": meta.get("namespace")},
                "involvedObject": {"apiVersion": API_VERSION, "kind": KIND, "name": meta.get("name"),
                                   "namespace": meta.get("namespace"), "uid": meta.get("uid")},
                "type": event.type, "reason": event.reason, "message": event.message[:1024],
                "source": {"component": "pinserve"},
                "reportingComponent": "pinserve.io", "reportingInstance": os.environ.get("HOSTNAME", "pinserve"),
                "firstTimestamp": now, "lastTimestamp": now, "count": 1,
            })
        except ApiError as exc:
            log.warning("could not post event %s for %s: %s", event.reason, meta.get("name"), exc)


def controlled_by(obj: Mapping[str, Any], uid: str) -> bool:
    refs = (obj.get("metadata") or {}).get("ownerReferences") or []
    return any(ref.get("controller") and ref.get("uid") == uid for ref in refs)


def observed_for(
    key: Key,
    children: Iterable[Mapping[str, Any]],
    pods: Iterable[Mapping[str, Any]],
) -> Observed:
    by_kind: dict[tuple[str, str], Mapping[str, Any]] = {}
    jobs: list[Mapping[str, Any]] = []
    for obj in children:
        kind = obj.get("kind", "")
        name = (obj.get("metadata") or {}).get("name", "")
        if kind == "Job":
            jobs.append(obj)
        by_kind[(kind, name)] = obj
    server: list[Mapping[str, Any]] = []
    bench: list[Mapping[str, Any]] = []
    for pod in pods:
        component = ((pod.get("metadata") or {}).get("labels") or {}).get(LABEL_COMPONENT)
        (bench if component == "benchmark" else server).append(pod)
    return Observed(children=by_kind, pods=server, jobs=jobs, bench_pods=bench)
