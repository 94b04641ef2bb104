"""Carries out reconcile Outcomes: apply, delete, status, events — serialised per ModelServer.

Observations come from the informer's caches (pinserve.informer: ModelServers, nodes, children), so a reconcile
makes no reads; writes happen only for what differs, which makes a no-op resync free. A child missing
from the caches is created with a create-only apply; only a 409 makes it read the object (NameConflict
or adopt).

API errors: KubeApi retries 429/5xx/timeouts itself (pinserve.retry); a 409 Conflict on an apply is
retried here after re-reading the object; what still fails becomes ``Ready=False`` reason ``ApiError``
naming the verb, the object and the answer, and the ModelServer is reconciled again after a backoff that
grows per consecutive failure (bounded by the resync period, or the server's Retry-After).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import random
import time
from collections import Counter
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
CONFLICT_ATTEMPTS = 3  # applies answered 409 Conflict: re-read and try again, this many tries in all
# Ready=False reasons that only say "on its way": their status writes may wait (Controller.status_coalesce).
PROGRESS_REASONS = frozenset({"Deploying", "RollingOut", "PodsNotReady"})
# Once progress is shown, more progress (the same start or rollout moving on, nothing failing) is written only
# this many first holds later (5 min by default): a slow start is reported once, then settles or fails.
PROGRESS_REFRESH_FACTOR = 30
API_ERROR_REQUEUE = 5.0  # seconds before reconciling again after an API error, doubled per consecutive one
API_ERROR_REQUEUE_MAX = 300.0  # ... up to this, or the resync period if shorter


class _CarryOutError(Exception):
    """Carrying out an Outcome stopped: ``condition`` says why (Ready=False)."""

    def __init__(self, condition: Condition, retry_after: float | None = None) -> None:
        super().__init__(condition.message)
        self.condition = condition
        self.retry_after = retry_after


def api_error_condition(verb: str, kind: str, namespace: str, name: str, exc: ApiError) -> Condition:
    answer = f"{exc.status} {exc.reason}" if exc.status else exc.reason
    return Condition("Ready", "False", "ApiError",
                     f"{verb} {kind} {namespace}/{name} failed after {exc.attempts} attempt(s): {answer}: "
                     f"{exc.message}; pinserve will retry")


@dataclass
class Snapshot:
    """What the indices hold for one ModelServer, as plain data."""

    body: Mapping[str, Any] | None
    nodes: list[NodeInfo]
    observed: Observed


@dataclass
class _Written:
    resource_version: str  # of the object the write replaced
    status: dict[str, Any]
    made: str | None = None  # the resourceVersion the write made (the API's answer)
    at: float = field(default_factory=time.monotonic)

    def superseded_by(self, resource_version: str | None) -> bool:
        """The index shows our write, or something after it; the status there can be trusted again."""
        if resource_version is None or self.made is None:
            return resource_version != self.resource_version
        if resource_version == self.made:
            return True
        try:  # etcd revisions: a larger one is later (any other form: wait for ours, or the time limit)
            return int(resource_version) > int(self.made)
        except ValueError:
            return False


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
    # Consecutive reconciles of a key that ended in an API error: the backoff before the next one.
    api_failures: dict[Key, int] = field(default_factory=dict)
    # Progress (PROGRESS_REASONS, no failure, no Warning) is written at the latest this long after it is first
    # seen, as it then is (once shown, PROGRESS_REFRESH_FACTOR times as long); a settled status at once: a
    # starting pod's transitions cost one write. 0: no holding.
    status_coalesce: float = 0.0
    status_due: dict[Key, float] = field(default_factory=dict)
    # Key -> the generation whose progress is shown (written since the status last settled or failed): see
    # PROGRESS_REFRESH_FACTOR. A new generation's progress is held only the first hold: observedGeneration moves.
    progress_shown: dict[Key, int | None] = field(default_factory=dict)
    reconciles: int = 0
    # For the metrics: reconciles by result (ok, error) and errors by reason (the Ready=False reason).
    results: Counter[str] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)

    def _lock(self, key: Key) -> asyncio.Lock:
        return self.locks.setdefault(key, asyncio.Lock())

    def forget(self, key: Key) -> None:
        self.locks.pop(key, None)
        self.written.pop(key, None)
        self.api_failures.pop(key, None)
        self.status_due.pop(key, None)
        self.progress_shown.pop(key, None)
        for k in [k for k in self.applied if (k[1], k[2]) == key or k[1:] == key]:
            self.applied.pop(k, None)

    def _fresh_body(self, key: Key, body: Mapping[str, Any]) -> Mapping[str, Any]:
        written = self.written.get(key)
        if written is None:
            return body
        # An object delivered between the one we wrote over and our write (a watch may deliver either) still
        # holds the old status: judged against it, a transition would be announced twice.
        rv = (body.get("metadata") or {}).get("resourceVersion")
        if written.superseded_by(rv) or time.monotonic() - written.at > IN_FLIGHT_SECONDS:
            del self.written[key]
            return body
        return {**body, "status": written.status}

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
            api_error: float | None = None
            desired = outcome.status
            failed_reason: str | None = None
            try:
                await self._carry_out(outcome, snapshot.observed)
            except _CarryOutError as failed:
                failure = failed.condition
                failed_reason = failure.reason
                if failure.reason == "ApiError":
                    api_error = failed.retry_after if failed.retry_after is not None else 0.0
                generation = int((body.get("metadata") or {}).get("generation") or 1)
                desired = status_writer.desired_status(
                    desired, generation=generation, conditions=[failure], fields={}, now=now
                )
                previous: Mapping[str, Any] = next(
                    (c for c in (body.get("status") or {}).get("conditions") or [] if c.get("type") == "Ready"), {}
                )
                if (previous.get("reason"), previous.get("message")) != (failure.reason, failure.message):
                    outcome.events.append(EventSpec("Warning", failure.reason, failure.message))
            urgent = failed_reason is not None or any(e.type == "Warning" for e in outcome.events)
            wait = self._coalesce(key, body, desired, urgent)
            if wait is not None:
                # Nothing a user must see at once: write (and announce) the state it settles in shortly.
                self.results["ok"] += 1
                again = self._requeue(key, outcome.requeue_after, None)
                wait = wait if again is None else min(again, wait)
                return dataclasses.replace(outcome, events=[], requeue_after=wait)
            try:
                await self._write_status(key, body, desired)
            except ApiError as exc:
                log.warning("could not write the status of %s/%s: %s", key[0], key[1], exc)
                api_error = max(api_error or 0.0, exc.retry_after or 0.0)
                failed_reason = failed_reason or "ApiError"
            self.results["error" if failed_reason else "ok"] += 1
            if failed_reason:
                self.errors[failed_reason] += 1
            for event in outcome.events:
                await self._post_event(body, event)
            return dataclasses.replace(outcome, requeue_after=self._requeue(key, outcome.requeue_after, api_error))

    def _coalesce(self, key: Key, body: Mapping[str, Any], desired: Mapping[str, Any], urgent: bool) -> float | None:
        """Seconds to hold a status write back, or None to write now.

        Only progress is held back (Ready=False while deploying or rolling out, nothing failing): a start
        that settles within ``status_coalesce`` costs one status write, made as soon as it settles; a slower
        one shows its progress once (after 10 s by default), then its end: Ready, or the failure, at once.
        Progress that goes on past PROGRESS_REFRESH_FACTOR holds (5 min) is written again, as it then is.
        """
        ready: Mapping[str, Any] = next((c for c in desired.get("conditions") or [] if c.get("type") == "Ready"), {})
        settled = ready.get("status") == "True" or ready.get("reason") not in PROGRESS_REASONS
        if urgent or settled:
            self.progress_shown.pop(key, None)
        if self.status_coalesce <= 0 or urgent or settled or \
                status_writer.status_patch(body.get("status"), desired) is None:
            self.status_due.pop(key, None)
            return None
        now = time.monotonic()
        generation = desired.get("observedGeneration")
        shown = key in self.progress_shown and self.progress_shown[key] == generation
        hold = self.status_coalesce * (PROGRESS_REFRESH_FACTOR if shown else 1)
        # The earlier of the due time already set and this hold's: a new generation cuts a long hold short.
        due = self.status_due[key] = min(self.status_due.get(key, now + hold), now + hold)
        if now >= due:
            del self.status_due[key]
            self.progress_shown[key] = generation
            return None
        return due - now

    def _requeue(self, key: Key, wanted: float | None, api_error: float | None) -> float | None:
        """When to come back: the core's bounded wait, or a growing, jittered backoff after an API error."""
        if api_error is None:
            self.api_failures.pop(key, None)
            return wanted
        failures = self.api_failures[key] = self.api_failures.get(key, 0) + 1
        limit = max(min(float(self.settings.resync_seconds), API_ERROR_REQUEUE_MAX), 1.0)
        backoff = min(API_ERROR_REQUEUE * 2.0 ** (failures - 1), limit) * (0.5 + random.random() / 2)
        delay = max(backoff, api_error)
        return delay if wanted is None else min(wanted, delay)

    async def _carry_out(self, outcome: Outcome, observed: Observed) -> None:
        """Apply and delete what the Outcome says; raises _CarryOutError with the condition when something cannot be."""
        ms = outcome.modelserver
        owner_uid = ms.ref.uid if ms else ""
        if ms is not None:
            # Children the cache shows in sync: our apply came back, so a later absence is a deletion to repair.
            stale = {(o["kind"], o["metadata"]["name"]) for o in outcome.apply}
            for kind, name in observed.children:
                if (kind, name) not in stale:
                    self.applied.pop((kind, ms.ref.namespace, name), None)
        # The children are independent objects: applied side by side (one round trip, not one per child).
        todo = [obj for obj in outcome.apply if not self._in_flight(obj, observed)]
        answers = await asyncio.gather(*(self._apply_child(obj, observed, owner_uid) for obj in todo),
                                       return_exceptions=True)
        for answer in answers:
            if isinstance(answer, BaseException):
                raise answer  # the first in apply order says why
        for kind, name in outcome.delete:
            if ms is None:
                continue
            try:
                await self.api.delete(kind, ms.ref.namespace, name)
            except ApiError as exc:
                raise _CarryOutError(api_error_condition("delete", kind, ms.ref.namespace, name, exc),
                              exc.retry_after) from None

    async def _apply_child(self, obj: Mapping[str, Any], observed: Observed, owner_uid: str) -> None:
        meta = obj["metadata"]
        kind, namespace, name = obj["kind"], meta["namespace"], meta["name"]
        live = observed.children.get((kind, name))
        try:
            self._check_owner(obj, live, owner_uid)
            log.info("applying %s %s/%s (%s)", kind, namespace, name,
                     "create" if live is None else "drifted from the desired state")
            # Not in the label-filtered cache: create only (never overwrite someone else's object).
            await self._apply(obj, owner_uid, create=live is None)
        except ApiError as exc:
            if exc.is_client_error:
                # The API server refused what the spec produced: say so, never crash-loop.
                raise _CarryOutError(Condition("Ready", "False", "ApplyFailed",
                                               f"{kind} {name} was refused: {exc.message}")) from None
            raise _CarryOutError(api_error_condition("apply", kind, namespace, name, exc),
                                 exc.retry_after) from None
        self.applied[(kind, namespace, name)] = (
            (live or {}).get("metadata", {}).get("resourceVersion"), time.monotonic()
        )

    @staticmethod
    def _check_owner(obj: Mapping[str, Any], live: Mapping[str, Any] | None, owner_uid: str) -> None:
        if live is not None and not controlled_by(live, owner_uid):
            raise _CarryOutError(Condition("Ready", "False", "NameConflict",
                                    f"a {obj['kind']} named {obj['metadata']['name']} already exists and is not "
                                    "owned by this ModelServer; pinserve leaves it alone (rename the ModelServer "
                                    "or remove it)"))

    async def _apply(self, obj: Mapping[str, Any], owner_uid: str, *, create: bool = False) -> None:
        """Server-side apply; a 409 Conflict is answered by re-reading the object (still ours?) and trying again.

        ``create``: the object is not in the cache, so it is either absent or not pinserve's (a foreign or
        unlabelled object of the same name). The apply then carries a resourceVersion no object can have:
        the server creates the object, as an apply, or answers 409 when one exists. Only then is it read,
        to tell a NameConflict from an object of ours to adopt — no read before an ordinary create.
        """
        meta = obj["metadata"]
        for attempt in range(CONFLICT_ATTEMPTS):
            try:
                await self.api.apply(create_only(obj) if create else obj)
                return
            except ApiError as exc:
                if exc.status != 409 or attempt + 1 == CONFLICT_ATTEMPTS:
                    exc.attempts = max(exc.attempts, attempt + 1)
                    raise
                log.info("%s %s %s/%s (%s); re-reading it", "creating" if create else "conflict applying",
                         obj["kind"], meta["namespace"], meta["name"], exc.message)
            if not create:  # an object that exists already needs no wait: it is read at once
                await self.api.sleep(self.api.retry.backoff(attempt, self.api.rand()))
            live = await self.api.get(obj["kind"], meta["namespace"], meta["name"])
            self._check_owner(obj, live, owner_uid)
            create = live is None

    async def _write_status(self, key: Key, body: Mapping[str, Any], desired: dict[str, Any]) -> None:
        current = body.get("status")
        patch = status_writer.status_patch(current, desired)
        if patch is None:
            return
        log.debug("writing status of %s/%s: %s", key[0], key[1], patch)
        try:
            answer = await status_writer.write_status(self.api, key[0], key[1], current, desired)
        except ApiError as exc:
            if exc.status == 404:
                return  # deleted meanwhile; its children go with it
            raise
        rv = (body.get("metadata") or {}).get("resourceVersion")
        if rv:
            made = ((answer or {}).get("metadata") or {}).get("resourceVersion")
            self.written[key] = _Written(rv, desired, str(made) if made else None)

    async def _post_event(self, body: Mapping[str, Any], event: EventSpec) -> None:
        meta = body.get("metadata") or {}
        now = status_writer.now_rfc3339()
        try:
            await self.api.create({
                "apiVersion": "v1", "kind": "Event",
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


# No object ever has this resourceVersion (the largest etcd revision): an apply carrying it creates or fails.
CREATE_ONLY_RESOURCE_VERSION = "18446744073709551615"


def create_only(obj: Mapping[str, Any]) -> dict[str, Any]:
    """``obj`` as an apply that only creates: 409 Conflict when an object of that name exists."""
    return {**obj, "metadata": {**obj["metadata"], "resourceVersion": CREATE_ONLY_RESOURCE_VERSION}}


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
    split: dict[str, list[Mapping[str, Any]]] = {"benchmark": [], "tuning": [], "server": []}
    for pod in pods:
        component = ((pod.get("metadata") or {}).get("labels") or {}).get(LABEL_COMPONENT)
        split.get(str(component), split["server"]).append(pod)
    return Observed(children=by_kind, pods=split["server"], jobs=jobs, bench_pods=split["benchmark"],
                    trial_pods=split["tuning"])
