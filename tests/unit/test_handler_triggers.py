"""What sets a reconcile off, and when: the ModelServer's own changes at once, the rest folded into a window."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest

from pinserve.childcache import pack
from pinserve.controller import Controller, _Written
from pinserve.handlers import state, watches
from pinserve.planning import node_info
from pinserve.settings import Settings

pytestmark = pytest.mark.unit

KEY = ("ns", "ms")


@pytest.fixture
def runs(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[tuple[str, str]]]:
    """The operator's state with one ModelServer in the index; reconciles are recorded, not carried out."""
    done: list[tuple[str, str]] = []

    async def reconcile(key: tuple[str, str]) -> None:
        done.append(key)

    state.reset()
    monkeypatch.setattr(state, "_reconcile", reconcile)
    state.CONTROLLER = Controller(api=None, settings=Settings())  # type: ignore[arg-type]
    state.INDICES[state.MODELSERVER_INDEX] = {KEY: [pack({"metadata": {"name": "ms", "namespace": "ns"}})]}
    yield done
    state.reset()


async def _settled() -> None:
    for _ in range(500):
        queue = state.queue()
        if not (queue.folding() or queue.pending()):
            return
        await asyncio.sleep(0.01)
    raise AssertionError("the queue did not settle")


async def test_child_changes_fold_into_one_reconcile(runs: list[tuple[str, str]]) -> None:
    state.SETTLE_SECONDS = 0.05
    for kind in ("Pod", "Deployment", "Pod", "Pod", "Deployment"):
        state.children_changed(kind, [KEY, ("ns", "gone")])  # a ModelServer not in the index: nothing
    assert runs == [] and state.queue().folding() == 1
    await _settled()
    assert runs == [KEY]
    assert state.triggers() == {"Pod": 3, "Deployment": 2}


async def test_the_modelserver_changing_does_not_wait_and_covers_the_window(runs: list[tuple[str, str]]) -> None:
    state.SETTLE_SECONDS = 60.0
    state.children_changed("Pod", [KEY])
    state.trigger(KEY, "ModelServer")
    await state.queue().drain()
    assert runs == [KEY] and state.queue().folding() == 0


def _event(generation: int, version: str) -> dict[str, Any]:
    return {"metadata": {"name": "ms", "namespace": "ns", "generation": generation, "resourceVersion": version}}


async def test_a_new_spec_is_reconciled_at_once_metadata_and_status_changes_settle(
        runs: list[tuple[str, str]]) -> None:
    state.SETTLE_SECONDS = 60.0
    changed = watches.modelserver_changed
    await changed(event={"type": "ADDED"}, namespace="ns", name="ms", body=_event(1, "10"))  # created: at once
    await state.queue().drain()
    assert runs == [KEY]
    # A label, or our own status write whose watch event came before the write's answer: same generation.
    await changed(event={"type": "MODIFIED"}, namespace="ns", name="ms", body=_event(1, "11"))
    await state.queue().drain()
    assert runs == [KEY] and state.queue().folding() == 1
    await changed(event={"type": "MODIFIED"}, namespace="ns", name="ms", body=_event(2, "12"))  # a new spec
    await state.queue().drain()
    assert runs == [KEY, KEY] and state.queue().folding() == 0  # the run covered the open window
    await changed(event={"type": "DELETED"}, namespace="ns", name="ms", body=_event(2, "13"))
    assert KEY not in state.GENERATIONS
    # Recreated under the same name (generation 1 again, or even the same number): a creation is never held.
    await changed(event={"type": "ADDED"}, namespace="ns", name="ms", body=_event(2, "14"))
    await state.queue().drain()
    assert runs == [KEY, KEY, KEY]


async def test_our_own_status_write_coming_back_triggers_nothing(runs: list[tuple[str, str]]) -> None:
    assert state.CONTROLLER is not None
    state.SETTLE_SECONDS = 60.0
    state.CONTROLLER.written[KEY] = _Written("41", {"phase": "x"}, made="42")
    echo: dict[str, Any] = {"metadata": {"name": "ms", "namespace": "ns", "resourceVersion": "42"}}
    other = {"metadata": {"name": "ms", "namespace": "ns", "resourceVersion": "43"}}
    assert state.own_status_echo(KEY, echo)
    assert not state.own_status_echo(KEY, other)
    assert not state.own_status_echo(("ns", "other"), echo)
    await watches.modelserver_changed(event={"type": "MODIFIED"}, namespace="ns", name="ms", body=echo)
    assert runs == [] and state.queue().folding() == 0 and state.queue().pending() == 0
    await watches.modelserver_changed(event={"type": "MODIFIED"}, namespace="ns", name="ms", body=other)
    await state.queue().drain()
    assert runs == [KEY] and state.queue().folding() == 0  # someone else's change: at once
    assert state.triggers() == {"ModelServer": 1}
    runs.clear()
    state.SETTLE_SECONDS = 0.0  # no window: every trigger at once, as before
    state.children_changed("Pod", [KEY])
    await state.queue().drain()
    assert runs == [KEY]


async def test_the_resync_rechecks_only_what_nothing_reconciled_for_a_period(runs: list[tuple[str, str]]) -> None:
    quiet, busy, new = ("ns", "quiet"), ("ns", "busy"), ("ns", "new")
    state.INDICES[state.MODELSERVER_INDEX] = {key: [pack({"metadata": {"name": key[1]}})] for key in (quiet, busy, new)}
    state.LAST_RUN.update({quiet: 100.0, busy: 150.0})  # new: never reconciled (e.g. seen while following)
    assert state.resync_stale(60.0, now=170.0) == 2
    await state.queue().drain()
    assert sorted(runs) == [("ns", "new"), ("ns", "quiet")]
    assert state.triggers() == {"resync": 2}
    state.LEADING = False  # a follower reconciles nothing
    assert state.resync_stale(60.0, now=1000.0) == 0


def _node(name: str, cpu: str = "8", ready: bool = True) -> dict[str, Any]:
    return {"metadata": {"name": name}, "status": {"allocatable": {"cpu": cpu, "memory": "16Gi"},
                                                   "conditions": [{"type": "Ready", "status": str(ready)}]}}


async def test_the_node_list_is_kept_until_a_node_changes_what_we_plan_with(runs: list[tuple[str, str]]) -> None:
    index: dict[str, list[Any]] = {}
    state.INDICES[state.NODE_INDEX] = index

    async def event(name: str, kind: str | None, body: dict[str, Any]) -> None:
        index[name] = [node_info(body)]  # kopf updates its index, then calls the handler
        await watches.node_changed(event={"type": kind}, name=name, body=body, **state.INDICES)

    await event("b", None, _node("b"))  # the initial listing
    assert [n.name for n in state.nodes()] == ["b"]
    await event("a", None, _node("a"))
    assert [n.name for n in state.nodes()] == ["a", "b"]
    await event("a", "MODIFIED", _node("a"))  # a heartbeat: the same NodeInfo
    assert state.nodes() is state.nodes() and state.triggers() == {}
    await event("c", "ADDED", _node("c", cpu="2"))  # a new node: every ModelServer may plan with it
    assert [n.name for n in state.nodes()] == ["a", "b", "c"] and state.triggers() == {"Node": 1}
    await event("b", "MODIFIED", _node("b", ready=False))  # what we plan with
    assert not next(n for n in state.nodes() if n.name == "b").ready
    assert state.triggers() == {"Node": 2}
    await state.queue().drain()
    assert runs == [KEY]  # the two triggers came before the run: one run
