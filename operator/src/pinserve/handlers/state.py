"""Process-wide operator state shared by the adapters (set at start-up, reset at cleanup)."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Iterable, Mapping
from typing import Any

from pinserve.api import KIND
from pinserve.controller import Controller, Key, Snapshot, observed_for
from pinserve.informer import Informer
from pinserve.metrics import Histogram
from pinserve.planning import NodeInfo
from pinserve.workqueue import KeyedQueue

CONTROLLER: Controller | None = None
RESYNC_TASK: asyncio.Task[None] | None = None
STATS_TASK: asyncio.Task[None] | None = None
QUEUE: KeyedQueue[Key] | None = None
# False while another replica leads (kopf peering, pinserve.peering); standalone operators always lead.
LEADING = True
LATENCY = Histogram()
# ModelServers, nodes and the children pinserve owns, from list+watch caches (started at start-up, stopped at
# cleanup).
INFORMER: Informer | None = None
# Node name -> what we plan with, as the node store last had it (handlers.watches.nodes_changed keeps it).
LAST_NODES: dict[str, NodeInfo] = {}
# The nodes as a list, kept until a node changes what we plan with (the same objects, so plans stay cached):
# building it per reconcile walked every node of the cluster.
_NODES: list[NodeInfo] | None = None
# Reconcile triggers by what set them off (the ModelServer's own events, a child kind, a node, a timed requeue, the
# periodic resync): triggers of a key already queued coalesce, so they outnumber reconciles.
TRIGGERS: Counter[str] = Counter()
# Changes that need no answer within the moment (a child's status moving on, our own status write coming back)
# fold into one reconcile per this many seconds (KeyedQueue.trigger_soon); 0 reconciles on every change.
SETTLE_SECONDS = 0.5
# Key -> when (time.monotonic) its last reconcile started: the periodic resync re-checks only the keys that have
# not been reconciled for a whole period, so it is spread over time instead of one burst of every ModelServer.
LAST_RUN: dict[Key, float] = {}
# Key -> the generation of the ModelServer's last event: a change of its spec (a new generation) or its creation is
# reconciled at once; a change of metadata or status only (someone's label, our own status write coming back
# before its answer did) settles with the children's changes.
GENERATIONS: dict[Key, int] = {}

CHILD_KINDS = ("Deployment", "Service", "ConfigMap", "Job")


def reset() -> None:
    global CONTROLLER, RESYNC_TASK, STATS_TASK, QUEUE, LEADING, LATENCY, INFORMER, _NODES  # noqa: PLW0603  (module state by design)
    if QUEUE is not None:
        QUEUE.cancel()
    QUEUE = None
    CONTROLLER = None
    INFORMER = None
    RESYNC_TASK = None
    STATS_TASK = None
    LEADING = True
    LATENCY = Histogram()
    _NODES = None
    LAST_NODES.clear()
    TRIGGERS.clear()
    LAST_RUN.clear()
    GENERATIONS.clear()


def nodes() -> list[NodeInfo]:
    global _NODES  # noqa: PLW0603  (module state by design)
    if _NODES is None:
        _NODES = sorted(LAST_NODES.values(), key=lambda n: n.name)
    return _NODES


def nodes_changed() -> None:
    """A node appeared, left or changed what we plan with: the next nodes() builds the list again."""
    global _NODES  # noqa: PLW0603  (module state by design)
    _NODES = None


def modelserver_keys() -> list[Key]:
    return sorted(INFORMER.keys(KIND)) if INFORMER is not None else []


def modelserver_body(key: Key) -> Mapping[str, Any] | None:
    return INFORMER.get(KIND, key[0], key[1]) if INFORMER is not None else None


def snapshot(key: Key) -> Snapshot:
    informer = INFORMER
    children = [obj for kind in CHILD_KINDS for obj in informer.owned_by(kind, key)] if informer else []
    pods = informer.owned_by("Pod", key) if informer else []
    return Snapshot(
        body=modelserver_body(key),
        nodes=nodes(),
        observed=observed_for(key, children, pods),
    )


async def _reconcile(key: Key) -> None:
    # The snapshot is taken when the work runs, so a coalesced burst sees its latest event.
    if INFORMER is not None:
        await INFORMER.primed.wait()  # never judge from caches not yet listed (start-up waits for this too)
    if CONTROLLER is not None and LEADING:
        started = LAST_RUN[key] = time.monotonic()
        try:
            outcome = await CONTROLLER.sync(key, snapshot(key))
        except Exception:
            CONTROLLER.results["error"] += 1
            CONTROLLER.errors["Exception"] += 1
            raise
        finally:
            LATENCY.observe(time.monotonic() - started)
        # A bounded wait (benchmark), a held status or an API error's backoff: come back then, not only at the
        # resync. The run's answer replaces what an earlier run asked: a hold whose status has settled is dropped.
        if outcome is not None:
            queue().requeue(key, outcome.requeue_after)


def queue() -> KeyedQueue[Key]:
    global QUEUE  # noqa: PLW0603  (module state by design)
    if QUEUE is None:
        QUEUE = KeyedQueue(_reconcile)
    return QUEUE


def triggers() -> dict[str, int]:
    """Reconcile triggers by source, the timed requeues that fired included."""
    fired = {"timer": QUEUE.fired} if QUEUE is not None and QUEUE.fired else {}
    return {**TRIGGERS, **fired}


def trigger(key: Key, source: str, *, settle: bool = False) -> None:
    """Reconcile ``key`` now, or with ``settle`` within SETTLE_SECONDS, folded with the changes that follow."""
    if CONTROLLER is not None:
        TRIGGERS[source] += 1
        if settle:
            queue().trigger_soon(key, SETTLE_SECONDS)
        else:
            queue().trigger(key)


def children_changed(kind: str, keys: Iterable[Key]) -> None:
    """The informer saw owned objects of ``kind`` change: reconcile their ModelServers (those that exist).

    A pod that starts changes several times within a second, and its Deployment's status follows each change:
    these settle (SETTLE_SECONDS) into one reconcile. A change to the ModelServer itself does not wait.
    """
    for key in keys:
        if INFORMER is not None and INFORMER.has(KIND, key[0], key[1]):
            trigger(key, kind, settle=True)


def own_status_echo(key: Key, body: Mapping[str, Any]) -> bool:
    """``body`` is the object our last status write made, come back through the watch."""
    written = CONTROLLER.written.get(key) if CONTROLLER is not None else None
    rv = (body.get("metadata") or {}).get("resourceVersion")
    return written is not None and written.made is not None and rv == written.made


def modelserver_event(key: Key, body: Mapping[str, Any]) -> None:
    """The ModelServer was created or changed (not by our own status write: see own_status_echo)."""
    generation = int((body.get("metadata") or {}).get("generation") or 0)
    settle = GENERATIONS.get(key) == generation
    GENERATIONS[key] = generation
    trigger(key, "ModelServer", settle=settle)


def forget(key: Key) -> None:
    """The ModelServer is gone: drop what is kept for it."""
    LAST_RUN.pop(key, None)
    GENERATIONS.pop(key, None)
    if CONTROLLER is not None:
        CONTROLLER.forget(key)
    if QUEUE is not None:
        QUEUE.forget(key)


def set_leading(leading: bool) -> None:
    """This replica starts or stops leading; a new leader looks at everything at once."""
    global LEADING  # noqa: PLW0603  (module state by design)
    LEADING = leading
    if leading:
        resync_all("leader")


def resync_all(source: str) -> None:
    if not LEADING:
        return
    for key in modelserver_keys():
        trigger(key, source)


def resync_stale(period: float, now: float | None = None) -> int:
    """The periodic safety net: reconcile the ModelServers not reconciled for ``period`` seconds; how many.

    Events and timed requeues keep a busy ModelServer reconciled; only a quiet one is re-checked, each on its
    own clock, so 1,000 ModelServers do not all come due in the same second.
    """
    if not LEADING:
        return 0
    now = time.monotonic() if now is None else now
    due = [key for key in modelserver_keys() if now - LAST_RUN.get(key, float("-inf")) >= period]
    for key in due:
        trigger(key, "resync")
    return len(due)
