"""List+watch of the kinds pinserve reads (an informer): its ModelServers, the nodes, and the children it
owns, label-filtered so that the API server does the filtering.

Per kind (and per namespace when the operator is restricted to some; nodes once, cluster-wide): list with
the store's selector (:data:`pinserve.childcache.SELECTOR` for children), then watch from the list's
resourceVersion with bookmarks,
re-watching from the last resourceVersion seen when the server ends the stream, relisting when it
says the resourceVersion expired (410 Gone, or any ERROR event), backing off on failures. Each change
calls ``on_change`` with the kind and the keys it concerns (ModelServers; nodes as ("", name)).

``primed`` is set once every store has been listed: reconciles wait for it, so a reconcile never
judges from an empty cache (and never re-creates what already exists).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from pinserve.childcache import Change, Key, Store, new_stores
from pinserve.kube import ApiError, KubeApi

log = logging.getLogger("pinserve")

BACKOFF_FIRST = 1.0
BACKOFF_MAX = 60.0
WATCH_TIMEOUT = 300


def watch_count(namespaces: tuple[str, ...], stores: dict[str, Store] | None = None) -> int:
    """How many watches an informer over ``namespaces`` (empty: the cluster) keeps open, a connection each."""
    per_namespace = max(len(namespaces), 1)
    return sum(1 if store.cluster_scoped else per_namespace for store in (stores or new_stores()).values())


class Informer:
    """Fills ``stores`` from the API server; ``namespaces`` empty means the whole cluster."""

    def __init__(self, api: KubeApi, on_change: Callable[[str, Iterable[Key]], None], *,
                 namespaces: tuple[str, ...] = (), stores: dict[str, Store] | None = None,
                 watch_timeout: int = WATCH_TIMEOUT,
                 sleep: Callable[[float], Awaitable[None]] = asyncio.sleep) -> None:
        self.api = api
        self.on_change = on_change
        self.stores = stores if stores is not None else new_stores()
        self.namespaces: tuple[str | None, ...] = namespaces or (None,)
        self.watch_timeout = watch_timeout
        self.sleep = sleep  # injected for tests
        self.primed = asyncio.Event()
        self.relists = 0
        self._tasks: list[asyncio.Task[None]] = []
        # One store per (kind, namespace) stream; reads go through the merged per-kind view below.
        self._streams: dict[tuple[str, str | None], Store] = {}
        self._listed: set[tuple[str, str | None]] = set()

    # -- reads (what state.snapshot needs) -------------------------------------------------------------

    def _store(self, kind: str, namespace: str) -> Store | None:
        found = self._streams.get((kind, None))  # the whole cluster, or the namespace's own stream
        return found if found is not None else self._streams.get((kind, namespace))

    def owned_by(self, kind: str, key: Key) -> list[dict[str, Any]]:
        store = self._store(kind, key[0])
        return store.owned_by(key) if store is not None else []

    def get(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        store = self._store(kind, namespace)
        return store.get(namespace, name) if store is not None else None

    def has(self, kind: str, namespace: str, name: str) -> bool:
        store = self._store(kind, namespace)
        return store is not None and (namespace, name) in store.objects

    def keys(self, kind: str) -> list[Key]:
        """Every key the stores of ``kind`` hold objects under."""
        return [key for (k, _), store in self._streams.items() if k == kind for key in store.owners()]

    def sizes(self) -> dict[str, int]:
        counts: dict[str, int] = dict.fromkeys(self.stores, 0)
        for (kind, _), store in self._streams.items():
            counts[kind] += len(store)
        return counts

    def foreign(self) -> int:
        """Objects received that are not pinserve's: stays 0 while the API server filters."""
        return sum(store.foreign for store in self._streams.values())

    # -- running ------------------------------------------------------------------------------------------

    def open_streams(self) -> dict[tuple[str, str | None], Store]:
        """The stores, one per (kind, watched namespace); a cluster-scoped kind has one, cluster-wide."""
        if not self._streams:
            for kind, template in self.stores.items():
                namespaces: tuple[str | None, ...] = (None,) if template.cluster_scoped else self.namespaces
                for ns in namespaces:
                    self._streams[(kind, ns)] = template if len(namespaces) == 1 else template.empty()
        return self._streams

    def start(self) -> None:
        for (kind, ns), store in self.open_streams().items():
            self._tasks.append(asyncio.create_task(self._run(kind, ns, store), name=f"informer-{kind}-{ns}"))

    async def wait_primed(self, timeout: float | None = None) -> bool:
        try:
            await asyncio.wait_for(self.primed.wait(), timeout)
        except TimeoutError:
            return False
        return True

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()

    def _notify(self, kind: str, change: Change) -> None:
        if change.keys:
            self.on_change(kind, change.keys)

    async def _list(self, kind: str, ns: str | None, store: Store) -> None:
        answer = await self.api.list_object(kind, ns, label_selector=store.selector)
        change = store.replace(answer.get("items") or [], (answer.get("metadata") or {}).get("resourceVersion"))
        self.relists += 1
        # Told before ``primed`` is set: what the first listing brings is part of the start, not a change after it.
        self._notify(kind, change)
        self._listed.add((kind, ns))
        if len(self._listed) == len(self._streams):
            self.primed.set()

    async def _watch(self, kind: str, ns: str | None, store: Store) -> None:
        """Follow events until the stream ends (re-watch) or the store asks for a relist."""
        async for event in self.api.watch(kind, ns, label_selector=store.selector,
                                          resource_version=store.resource_version,
                                          timeout_seconds=self.watch_timeout):
            change = store.handle(event)
            if change.relist:
                status = event.get("object") or {}
                log.info("%s watch: %s %s; listing again", kind, status.get("code"), status.get("reason"))
                return
            self._notify(kind, change)

    async def _run(self, kind: str, ns: str | None, store: Store) -> None:
        backoff = BACKOFF_FIRST
        while True:
            try:
                if store.resource_version is None:
                    await self._list(kind, ns, store)
                await self._watch(kind, ns, store)
                backoff = BACKOFF_FIRST
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the loop must survive any single failure
                if isinstance(exc, ApiError) and exc.status == 410:
                    store.resource_version = None
                log.warning("%s list/watch failed (%s); again in %.0f s", kind, exc, backoff)
                await self.sleep(backoff)
                backoff = min(backoff * 2, BACKOFF_MAX)
