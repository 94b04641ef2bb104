"""The informer's loop against a scripted API: filtered list, watch from its resourceVersion, relist on 410."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

import pytest

from pinserve.api import API_VERSION, KIND
from pinserve.childcache import SELECTOR, Store, node_essentials
from pinserve.informer import Informer, watch_count
from pinserve.kube import ApiError
from pinserve.render.common import LABEL_MANAGED_BY, LABEL_MODELSERVER

pytestmark = pytest.mark.unit

OURS = {LABEL_MANAGED_BY: "pinserve", LABEL_MODELSERVER: "rfcn"}


def dep(name: str, rv: str) -> dict[str, Any]:
    return {"metadata": {"name": name, "namespace": "ml", "resourceVersion": rv, "labels": OURS}}


class ScriptedApi:
    """Lists answer from ``lists`` (in turn), watches replay ``watches`` (in turn), then hang."""

    def __init__(self, lists: list[Any], watches: list[Any]) -> None:
        self.lists = lists
        self.watches = watches
        self.calls: list[tuple[str, str | None, str | None, str | None]] = []
        self.requests: Counter[str] = Counter()

    async def list_object(self, kind: str, namespace: str | None = None, *, label_selector: str | None = None,
                          field_selector: str | None = None) -> dict[str, Any]:
        self.calls.append(("LIST", namespace, label_selector, None))
        answer = self.lists.pop(0) if self.lists else {"items": [], "metadata": {"resourceVersion": "1"}}
        if isinstance(answer, Exception):
            raise answer
        return dict(answer)

    async def watch(self, kind: str, namespace: str | None = None, *, label_selector: str | None = None,
                    field_selector: str | None = None, resource_version: str | None = None,
                    timeout_seconds: int = 300) -> AsyncIterator[dict[str, Any]]:
        self.calls.append(("WATCH", namespace, label_selector, resource_version))
        script = self.watches.pop(0) if self.watches else None
        if isinstance(script, Exception):
            raise script
        for event in script or []:
            yield event
        if script is None:
            await asyncio.Event().wait()


async def settle() -> None:
    for _ in range(20):
        await asyncio.sleep(0)


async def run_one_kind(api: ScriptedApi, **kw: Any) -> tuple[Informer, list[set[tuple[str, str]]]]:
    changes: list[set[tuple[str, str]]] = []
    informer = Informer(api, lambda _kind, keys: changes.append(set(keys)),  # type: ignore[arg-type]
                        stores={"Deployment": Store("Deployment")}, **kw)
    informer.start()
    return informer, changes


async def test_list_then_watch_from_its_resource_version_with_the_selector() -> None:
    api = ScriptedApi([{"items": [dep("a", "3")], "metadata": {"resourceVersion": "7"}}],
                      [[{"type": "MODIFIED", "object": dep("a", "8")},
                        {"type": "BOOKMARK", "object": {"metadata": {"resourceVersion": "12"}}}]])
    informer, changes = await run_one_kind(api)
    assert await informer.wait_primed(timeout=5)
    await settle()
    assert api.calls[:3] == [("LIST", None, SELECTOR, None), ("WATCH", None, SELECTOR, "7"),
                             ("WATCH", None, SELECTOR, "12")]  # the stream ended: watch again from the bookmark
    assert changes == [{("ml", "rfcn")}, {("ml", "rfcn")}]
    assert informer.owned_by("Deployment", ("ml", "rfcn"))[0]["metadata"]["resourceVersion"] == "8"
    await informer.stop()


async def test_410_relists_and_tells_what_changed_meanwhile() -> None:
    api = ScriptedApi([{"items": [dep("a", "3"), dep("b", "4")], "metadata": {"resourceVersion": "7"}},
                       {"items": [dep("a", "3")], "metadata": {"resourceVersion": "30"}}],
                      [[{"type": "ERROR", "object": {"kind": "Status", "code": 410, "reason": "Expired"}}]])
    informer, changes = await run_one_kind(api)
    await informer.wait_primed(timeout=5)
    await settle()
    assert [c[0] for c in api.calls[:4]] == ["LIST", "WATCH", "LIST", "WATCH"]
    assert api.calls[3][3] == "30"
    assert changes == [{("ml", "rfcn")}, {("ml", "rfcn")}]  # b went away while the watch was gone
    assert [o["metadata"]["name"] for o in informer.owned_by("Deployment", ("ml", "rfcn"))] == ["a"]
    assert informer.relists == 2
    await informer.stop()


async def test_a_410_answer_to_the_watch_request_relists_too() -> None:
    waits: list[float] = []

    async def no_wait(seconds: float) -> None:
        waits.append(seconds)

    api = ScriptedApi([{"items": [], "metadata": {"resourceVersion": "7"}}],
                      [ApiError(410, "Expired", "too old"), ApiError(0, "ConnectionError", "refused")])
    informer, _ = await run_one_kind(api, sleep=no_wait)
    await informer.wait_primed(timeout=5)
    for _ in range(5):
        await settle()
    kinds = [(c[0], c[3]) for c in api.calls[:5]]
    assert kinds == [("LIST", None), ("WATCH", "7"), ("LIST", None), ("WATCH", "1"), ("WATCH", "1")]
    assert waits == [1.0, 2.0]  # backoff grows per consecutive failure
    await informer.stop()


async def test_not_primed_until_every_stream_is_listed() -> None:
    gate = asyncio.Event()

    async def backoff(seconds: float) -> None:
        await gate.wait()

    api = ScriptedApi([ApiError(503, "ServiceUnavailable", "later")], [])
    changes: list[set[tuple[str, str]]] = []
    informer = Informer(api, lambda _kind, keys: changes.append(set(keys)),  # type: ignore[arg-type]
                        stores={"Deployment": Store("Deployment")}, namespaces=("a", "b"), sleep=backoff)
    informer.start()
    await settle()
    assert not informer.primed.is_set()  # one of the two lists failed
    assert {c[1] for c in api.calls if c[0] == "LIST"} == {"a", "b"}  # one stream per namespace
    gate.set()
    assert await informer.wait_primed(timeout=5)
    await informer.stop()


async def test_modelservers_and_nodes_are_listed_unfiltered_nodes_once_for_the_cluster() -> None:
    """ModelServers per watched namespace without a selector, keyed by themselves; nodes in one cluster-wide
    stream, whatever the namespaces; children with the selector. Every stream holds a connection."""
    ms = {"metadata": {"name": "rfcn", "namespace": "a", "resourceVersion": "3"}}
    node = {"metadata": {"name": "n1", "resourceVersion": "4"}, "status": {"allocatable": {"cpu": "8"}}}
    api = ScriptedApi([], [])

    async def list_object(kind: str, namespace: str | None = None, *, label_selector: str | None = None,
                          field_selector: str | None = None) -> dict[str, Any]:
        api.calls.append(("LIST", namespace, label_selector, kind))
        items = {KIND: [ms] if namespace == "a" else [], "Node": [node]}.get(kind, [])
        return {"items": items, "metadata": {"resourceVersion": "9"}}

    api.list_object = list_object  # type: ignore[method-assign]
    changes: list[tuple[str, set[tuple[str, str]]]] = []
    informer = Informer(api, lambda kind, keys: changes.append((kind, set(keys))),  # type: ignore[arg-type]
                        namespaces=("a", "b"))
    informer.start()
    assert await informer.wait_primed(timeout=5)
    lists = {(c[3], c[1], c[2]) for c in api.calls if c[0] == "LIST"}
    assert {(KIND, "a", None), (KIND, "b", None), ("Node", None, None), ("Pod", "a", SELECTOR)} <= lists
    assert not any(c[3] == "Node" and c[1] is not None for c in api.calls if c[0] == "LIST")
    assert len(informer.open_streams()) == watch_count(("a", "b")) == 2 * 6 + 1
    assert watch_count(()) == 7
    assert informer.keys(KIND) == [("a", "rfcn")] and informer.keys("Node") == [("", "n1")]
    assert (KIND, {("a", "rfcn")}) in changes and ("Node", {("", "n1")}) in changes
    assert informer.get("Node", "", "n1") == {"apiVersion": "v1", "kind": "Node", **node_essentials(node)}
    assert informer.get(KIND, "a", "rfcn")["apiVersion"] == API_VERSION  # type: ignore[index]
    await informer.stop()


async def test_the_first_listing_is_told_before_primed_is_set() -> None:
    """What the first listing brings is part of the start: a node listed last must not look like a change
    after it (which would re-trigger every ModelServer already triggered by theirs)."""
    api = ScriptedApi([{"items": [dep("a", "3")], "metadata": {"resourceVersion": "7"}}], [])
    seen: list[bool] = []
    informer = Informer(api, lambda _kind, _keys: seen.append(informer.primed.is_set()),  # type: ignore[arg-type]
                        stores={"Deployment": Store("Deployment")})
    informer.start()
    assert await informer.wait_primed(timeout=5)
    assert seen == [False]
    assert informer.has("Deployment", "ml", "a") and not informer.has("Deployment", "ml", "b")
    await informer.stop()
