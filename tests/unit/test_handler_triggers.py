"""What sets a reconcile off, and when: the ModelServer's own changes at once, the rest folded into a window."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest

from pinserve.api import KIND
from pinserve.controller import Controller, _Written
from pinserve.handlers import state, watches
from pinserve.informer import Informer
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
    state.INFORMER = Informer(None, watches.changed)  # type: ignore[arg-type]  (its stores only: never started)
    state.INFORMER.open_streams()[(KIND, None)].replace([_ms(1, "1")], "1")
    yield done
    state.reset()


def _ms(generation: int, version: str, name: str = "ms") -> dict[str, Any]:
    return {"metadata": {"name": name, "namespace": "ns", "generation": generation, "resourceVersion": version}}


def deliver(kind: str, event: str, obj: dict[str, Any]) -> None:
    """One watch event, as the informer hands it on: into the store, then what it changed to watches.changed."""
    assert state.INFORMER is not None
    change = state.INFORMER.open_streams()[(kind, None)].handle({"type": event, "object": obj})
    if change.keys:
        watches.changed(kind, change.keys)


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


async def test_a_new_spec_is_reconciled_at_once_metadata_and_status_changes_settle(
        runs: list[tuple[str, str]]) -> None:
    state.SETTLE_SECONDS = 60.0
    deliver(KIND, "DELETED", _ms(1, "2"))
    deliver(KIND, "ADDED", _ms(1, "10"))  # created: at once
    await state.queue().drain()
    assert runs == [KEY]
    # A label, or our own status write whose watch event came before the write's answer: same generation.
    deliver(KIND, "MODIFIED", _ms(1, "11"))
    await state.queue().drain()
    assert runs == [KEY] and state.queue().folding() == 1
    deliver(KIND, "MODIFIED", _ms(2, "12"))  # a new spec
    await state.queue().drain()
    assert runs == [KEY, KEY] and state.queue().folding() == 0  # the run covered the open window
    deliver(KIND, "DELETED", _ms(2, "13"))
    assert KEY not in state.GENERATIONS and state.modelserver_keys() == []
    # Recreated under the same name (generation 1 again, or even the same number): a creation is never held.
    deliver(KIND, "ADDED", _ms(2, "14"))
    await state.queue().drain()
    assert runs == [KEY, KEY, KEY]


async def test_our_own_status_write_coming_back_triggers_nothing(runs: list[tuple[str, str]]) -> None:
    assert state.CONTROLLER is not None
    state.SETTLE_SECONDS = 60.0
    state.CONTROLLER.written[KEY] = _Written("41", {"phase": "x"}, made="42")
    echo, other = _ms(1, "42"), _ms(1, "43")
    assert state.own_status_echo(KEY, echo)
    assert not state.own_status_echo(KEY, other)
    assert not state.own_status_echo(("ns", "other"), echo)
    deliver(KIND, "MODIFIED", echo)
    assert runs == [] and state.queue().folding() == 0 and state.queue().pending() == 0
    deliver(KIND, "MODIFIED", other)
    await state.queue().drain()
    assert runs == [KEY] and state.queue().folding() == 0  # someone else's change (first seen): at once
    assert state.triggers() == {"ModelServer": 1}
    runs.clear()
    state.SETTLE_SECONDS = 0.0  # no window: every trigger at once, as before
    state.children_changed("Pod", [KEY])
    await state.queue().drain()
    assert runs == [KEY]


async def test_the_resync_rechecks_only_what_nothing_reconciled_for_a_period(runs: list[tuple[str, str]]) -> None:
    quiet, busy, new = ("ns", "quiet"), ("ns", "busy"), ("ns", "new")
    assert state.INFORMER is not None
    state.INFORMER.open_streams()[(KIND, None)].replace([_ms(1, "1", key[1]) for key in (quiet, busy, new)], "2")
    state.LAST_RUN.update({quiet: 100.0, busy: 150.0})  # new: never reconciled (e.g. seen while following)
    assert state.resync_stale(60.0, now=170.0) == 2
    await state.queue().drain()
    assert sorted(runs) == [("ns", "new"), ("ns", "quiet")]
    assert state.triggers() == {"resync": 2}
    state.LEADING = False  # a follower reconciles nothing
    assert state.resync_stale(60.0, now=1000.0) == 0


def _node(name: str, cpu: str = "8", ready: bool = True, beat: str = "t0") -> dict[str, Any]:
    return {"metadata": {"name": name, "resourceVersion": beat},
            "status": {"allocatable": {"cpu": cpu, "memory": "16Gi"},
                       "conditions": [{"type": "Ready", "status": str(ready), "lastHeartbeatTime": beat}]}}


async def test_the_node_list_is_kept_until_a_node_changes_what_we_plan_with(runs: list[tuple[str, str]]) -> None:
    assert state.INFORMER is not None
    deliver("Node", "ADDED", _node("b"))  # the first listing: nothing set off (the ModelServers' listing is)
    assert [n.name for n in state.nodes()] == ["b"]
    deliver("Node", "ADDED", _node("a"))
    assert [n.name for n in state.nodes()] == ["a", "b"] and state.triggers() == {}
    state.INFORMER.primed.set()
    deliver("Node", "MODIFIED", _node("a", beat="t1"))  # a heartbeat: the store keeps the same, nothing changes
    assert state.nodes() is state.nodes() and state.triggers() == {}
    deliver("Node", "ADDED", _node("c", cpu="2"))  # a new node: every ModelServer may plan with it
    assert [n.name for n in state.nodes()] == ["a", "b", "c"] and state.triggers() == {"Node": 1}
    deliver("Node", "MODIFIED", _node("b", ready=False))  # what we plan with
    assert not next(n for n in state.nodes() if n.name == "b").ready
    assert state.triggers() == {"Node": 2}
    deliver("Node", "DELETED", _node("c", cpu="2"))
    assert [n.name for n in state.nodes()] == ["a", "b"] and state.triggers() == {"Node": 3}
    await state.queue().drain()
    assert runs == [KEY]  # the triggers came before the run: one run
