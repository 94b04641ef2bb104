"""The controller against a real HTTP server on 127.0.0.1 playing the API server: conflicts and errors.

A 409 on an apply is retried after re-reading the object; an error that persists becomes
Ready=False ApiError (verb, object, answer) in the status written, an Event, and a requeue.
"""

from __future__ import annotations

import json
import time
import types
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiohttp import web

from pinserve import controller as controller_module
from pinserve.controller import Controller, Snapshot
from pinserve.kube import Credentials, KubeApi
from pinserve.planning import node_info
from pinserve.reconcile import Observed
from pinserve.settings import Settings

pytestmark = pytest.mark.unit

DEPLOYMENT = "/apis/apps/v1/namespaces/ml/deployments/rfcn"
UID = "11111111-2222-3333-4444-555555555555"


@dataclass
class FakeApiServer:
    """GETs answer 404 (nothing exists yet) unless told; applies echo; status and events are recorded."""

    apply_answers: dict[str, list[tuple[int, dict[str, str]]]] = field(default_factory=dict)
    get_answers: dict[str, dict[str, Any]] = field(default_factory=dict)
    status_answer: int = 200
    taken_on_apply: bool = False  # someone else creates the Deployment between our read and our apply
    seen: list[tuple[str, str]] = field(default_factory=list)
    statuses: list[dict[str, Any]] = field(default_factory=list)
    events: list[dict[str, Any]] = field(default_factory=list)

    async def handle(self, request: web.Request) -> web.Response:
        self.seen.append((request.method, request.path))
        body = await request.json() if request.can_read_body else None
        if request.method == "GET":
            if request.path in self.get_answers:
                return web.json_response(self.get_answers[request.path])
            return _status(404, "NotFound")
        if request.method == "POST":
            self.events.append(body)
            return web.json_response(body, status=201)
        if request.path.endswith("/status"):
            if self.status_answer != 200:
                return _status(self.status_answer, "InternalError")
            self.statuses.append(body)
            return web.json_response(body)
        if self.taken_on_apply and request.path == DEPLOYMENT:
            self.get_answers[DEPLOYMENT] = {"kind": "Deployment", "metadata": {"name": "rfcn", "uid": "theirs"}}
        script = self.apply_answers.get(request.path)
        if script:
            code, headers = script.pop(0) if len(script) > 1 else script[0]
            if code != 200:
                return _status(code, {409: "Conflict", 503: "ServiceUnavailable"}.get(code, "Error"), headers)
        return web.json_response(body)


def _status(code: int, reason: str, headers: dict[str, str] | None = None) -> web.Response:
    return web.json_response({"kind": "Status", "code": code, "reason": reason,
                              "message": f"the server answered {code}"}, status=code, headers=headers)


@pytest.fixture
async def fake() -> AsyncIterator[tuple[Controller, FakeApiServer, list[float]]]:
    server = FakeApiServer()
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", server.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    waits: list[float] = []

    async def record(seconds: float) -> None:
        waits.append(seconds)

    api = KubeApi(Credentials.for_server(f"http://127.0.0.1:{port}", "t"), sleep=record,
                  rand=lambda: 0.0)
    try:
        yield Controller(api=api, settings=Settings(resync_seconds=60)), server, waits
    finally:
        await api.close()
        await runner.cleanup()


@pytest.fixture
def snapshot(make_ms: Callable[..., dict[str, Any]], make_node: Callable[..., dict[str, Any]],
             topo: Callable[..., Any]) -> Snapshot:
    body = make_ms()
    body["metadata"]["resourceVersion"] = "10"
    return Snapshot(body=body, nodes=[node_info(make_node("n1", topo(1, 8, 2)))], observed=Observed())


def ready(server: FakeApiServer) -> dict[str, Any]:
    conditions = server.statuses[-1]["status"]["conditions"]
    return dict(next(c for c in conditions if c["type"] == "Ready"))


async def test_a_create_reads_nothing_first(
        fake: tuple[Controller, FakeApiServer, list[float]], snapshot: Snapshot) -> None:
    controller, server, _ = fake
    await controller.sync(("ml", "rfcn"), snapshot)
    assert [m for m, _ in server.seen if m == "GET"] == []
    applies = [p for m, p in server.seen if m == "PATCH" and not p.endswith("/status")]
    assert len(applies) == 3  # Deployment, Service, ConfigMap: one create-only apply each


async def test_a_create_that_finds_the_object_gone_again_creates_at_once(
        fake: tuple[Controller, FakeApiServer, list[float]], snapshot: Snapshot) -> None:
    controller, server, waits = fake
    server.apply_answers[DEPLOYMENT] = [(409, {}), (200, {})]
    outcome = await controller.sync(("ml", "rfcn"), snapshot)
    assert outcome is not None and outcome.requeue_after is None
    calls = [c for c in server.seen if c[1] == DEPLOYMENT]
    assert calls == [("PATCH", DEPLOYMENT), ("GET", DEPLOYMENT), ("PATCH", DEPLOYMENT)]
    assert waits == []
    assert ready(server)["reason"] != "ApiError"


async def test_a_conflict_on_apply_is_retried_after_a_re_read(
        fake: tuple[Controller, FakeApiServer, list[float]], snapshot: Snapshot) -> None:
    controller, server, waits = fake
    assert snapshot.body is not None
    ours = {"kind": "Deployment", "metadata": {"name": "rfcn", "namespace": "ml", "resourceVersion": "5",
            "ownerReferences": [{"controller": True, "uid": snapshot.body["metadata"]["uid"]}]}}
    snapshot.observed = Observed(children={("Deployment", "rfcn"): ours})
    server.get_answers[DEPLOYMENT] = ours
    server.apply_answers[DEPLOYMENT] = [(409, {}), (200, {})]
    outcome = await controller.sync(("ml", "rfcn"), snapshot)
    assert outcome is not None and outcome.requeue_after is None
    calls = [c for c in server.seen if c[1] == DEPLOYMENT]
    assert calls == [("PATCH", DEPLOYMENT), ("GET", DEPLOYMENT), ("PATCH", DEPLOYMENT)]
    assert waits == [0.125]
    assert ready(server)["reason"] != "ApiError"


async def test_a_conflict_with_someone_elses_object_is_a_name_conflict(
        fake: tuple[Controller, FakeApiServer, list[float]], snapshot: Snapshot) -> None:
    controller, server, _ = fake
    server.apply_answers[DEPLOYMENT] = [(409, {}), (200, {})]
    server.taken_on_apply = True
    await controller.sync(("ml", "rfcn"), snapshot)
    assert ready(server)["reason"] == "NameConflict"
    assert sum(1 for c in server.seen if c == ("PATCH", DEPLOYMENT)) == 1


async def test_a_persistent_conflict_is_said_in_the_status(
        fake: tuple[Controller, FakeApiServer, list[float]], snapshot: Snapshot) -> None:
    controller, server, _ = fake
    server.apply_answers[DEPLOYMENT] = [(409, {})]
    outcome = await controller.sync(("ml", "rfcn"), snapshot)
    cond = ready(server)
    assert (cond["status"], cond["reason"]) == ("False", "ApiError")
    assert cond["message"].startswith("apply Deployment ml/rfcn failed after 3 attempt(s): 409 Conflict: "
                                      "the server answered 409")
    assert [e["reason"] for e in server.events if e["type"] == "Warning"] == ["ApiError"]
    assert outcome is not None and outcome.requeue_after is not None and 2.5 <= outcome.requeue_after <= 5.0


async def test_503_retry_after_is_honoured_then_said_and_requeued(
        fake: tuple[Controller, FakeApiServer, list[float]], snapshot: Snapshot) -> None:
    controller, server, waits = fake
    server.apply_answers[DEPLOYMENT] = [(503, {"Retry-After": "20"})]
    outcome = await controller.sync(("ml", "rfcn"), snapshot)
    assert waits == [20.0, 20.0, 20.0]  # KubeApi's own tries, as the server asked
    cond = ready(server)
    assert cond["reason"] == "ApiError"
    assert "apply Deployment ml/rfcn failed after 4 attempt(s): 503 ServiceUnavailable" in cond["message"]
    assert outcome is not None and outcome.requeue_after is not None and outcome.requeue_after >= 20.0
    # Repeated failures back off further, bounded by the resync period.
    delays = []
    for _ in range(6):
        again = await controller.sync(("ml", "rfcn"), snapshot)
        assert again is not None and again.requeue_after is not None
        delays.append(again.requeue_after)
    assert max(delays) <= 60.0 and delays[-1] >= 30.0
    # The API server recovers: the next reconcile clears it, and no requeue is asked for.
    server.apply_answers.clear()
    snapshot.body = {**(snapshot.body or {}), "status": server.statuses[-1]["status"]}
    fine = await controller.sync(("ml", "rfcn"), snapshot)
    assert fine is not None and fine.requeue_after is None
    assert ready(server)["reason"] != "ApiError"
    assert ("ml", "rfcn") not in controller.api_failures


async def test_a_status_write_that_fails_is_requeued_not_raised(
        fake: tuple[Controller, FakeApiServer, list[float]], snapshot: Snapshot) -> None:
    controller, server, _ = fake
    server.status_answer = 500
    outcome = await controller.sync(("ml", "rfcn"), snapshot)
    assert outcome is not None and outcome.requeue_after is not None
    assert sum(1 for m, p in server.seen if m == "PATCH" and p.endswith("/status")) == 4


def test_the_events_say_the_verb_object_and_answer() -> None:
    from pinserve.controller import api_error_condition  # noqa: PLC0415
    from pinserve.kube import ApiError  # noqa: PLC0415

    exc = ApiError(0, "Timeout", "PATCH /x: no answer within 30s")
    exc.attempts = 4
    cond = api_error_condition("delete", "Pod", "ml", "rfcn-1", exc)
    assert cond.message == ("delete Pod ml/rfcn-1 failed after 4 attempt(s): Timeout: PATCH /x: no answer within "
                            "30s; pinserve will retry")
    assert json.dumps(cond.reason) == '"ApiError"'


@pytest.mark.parametrize(("delivered", "trusted"), [
    ("100", False),  # the object our write replaced
    ("101", False),  # another change that happened before our write: still the old status
    ("102", True),  # our write
    ("150", True),  # something after it
    ("opaque", False),  # not a number: wait for ours (or the time limit)
])
def test_the_index_is_trusted_again_once_it_shows_our_status_write(delivered: str, trusted: bool) -> None:
    from pinserve.controller import _Written  # noqa: PLC0415

    controller = Controller(api=None, settings=Settings())  # type: ignore[arg-type]
    ours = {"conditions": [{"type": "Ready", "status": "True"}]}
    controller.written[("ml", "rfcn")] = _Written("100", ours, "102")
    body = {"metadata": {"resourceVersion": delivered}, "status": {"conditions": []}}
    fresh = controller._fresh_body(("ml", "rfcn"), body)
    assert (fresh["status"] == body["status"]) is trusted
    assert (("ml", "rfcn") in controller.written) is not trusted


# `due - now` with `due = now + hold` can come out a few ulps above `hold`.
FLOAT_SLACK = 1e-6


def held_for(wait: float | None, hold: float) -> bool:
    """A hold just set: about `hold` seconds, and not more than it beyond float rounding."""
    return wait is not None and hold * 0.9 < wait <= hold + FLOAT_SLACK


class Clock:
    """The controller's monotonic clock, moved only by the test (from the real one's value, so the in-flight
    bookkeeping stamped with the real clock still compares)."""

    def __init__(self) -> None:
        self.now = time.monotonic()

    def monotonic(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds + FLOAT_SLACK  # past the due time, whatever the rounding of `due - now`


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    fake = Clock()
    monkeypatch.setattr(controller_module, "time", types.SimpleNamespace(monotonic=fake.monotonic))
    return fake


async def test_a_status_change_is_held_back_then_written_as_it_then_is(
        fake: tuple[Controller, FakeApiServer, list[float]], snapshot: Snapshot, clock: Clock) -> None:
    controller, server, _ = fake
    controller.status_coalesce = 0.2
    outcome = await controller.sync(("ml", "rfcn"), snapshot)
    assert server.statuses == [] and server.events == []  # nothing urgent: held back, announced later
    assert outcome is not None and held_for(outcome.requeue_after, 0.2)
    clock.advance(0.1)
    again = await controller.sync(("ml", "rfcn"), snapshot)  # another event meanwhile: still held, not longer
    assert server.statuses == [] and again is not None and held_for(again.requeue_after, 0.1)
    assert again.requeue_after is not None
    clock.advance(again.requeue_after)
    done = await controller.sync(("ml", "rfcn"), snapshot)
    assert len(server.statuses) == 1 and done is not None and done.requeue_after is None
    assert server.events == []  # the first plan is no Event; progress (Deploying) neither


async def test_progress_is_shown_once_then_its_end(monkeypatch: pytest.MonkeyPatch, clock: Clock) -> None:
    """A slow start: its progress is written after the first hold, then only when it settles or fails (or has
    gone on for PROGRESS_REFRESH_FACTOR holds)."""
    monkeypatch.setattr(controller_module, "PROGRESS_REFRESH_FACTOR", 3)
    controller = Controller(api=None, settings=Settings(), status_coalesce=0.1)  # type: ignore[arg-type]
    key = ("ml", "rfcn")

    def progress(reason: str, message: str = "") -> dict[str, Any]:
        return {"conditions": [{"type": "Ready", "status": "False", "reason": reason, "message": message}]}

    shown: dict[str, Any] = {}
    first = controller._coalesce(key, {"status": shown}, progress("Deploying"), False)
    assert held_for(first, 0.1)
    clock.advance(first)
    assert controller._coalesce(key, {"status": shown}, progress("RollingOut"), False) is None  # shown
    shown = progress("RollingOut")
    # The start moves on (another reason, another message): held for 3 holds now, not 1.
    wait = controller._coalesce(key, {"status": shown}, progress("PodsNotReady", "0/1 replicas ready"), False)
    assert held_for(wait, 0.3)
    # ...but a failure or the end of it goes out at once.
    assert controller._coalesce(key, {"status": shown}, progress("PodsNotReady"), True) is None
    ready = {"conditions": [{"type": "Ready", "status": "True", "reason": "Available"}]}
    assert controller._coalesce(key, {"status": shown}, ready, False) is None
    # Settled: the next rollout's progress is held the first hold again.
    again = controller._coalesce(key, {"status": ready}, progress("RollingOut"), False)
    assert held_for(again, 0.1)
    # Progress that goes on is written again after the longer hold, as it then is.
    clock.advance(again)
    assert controller._coalesce(key, {"status": ready}, progress("RollingOut"), False) is None
    later = controller._coalesce(key, {"status": progress("RollingOut")}, progress("PodsNotReady"), False)
    assert later is not None
    clock.advance(later)
    assert controller._coalesce(key, {"status": progress("RollingOut")}, progress("PodsNotReady"), False) is None
    # A new generation while the long hold runs (a spec change during a slow start): the first hold again,
    # so observedGeneration and the new plan show within it.
    shown = progress("PodsNotReady")
    moved = controller._coalesce(key, {"status": shown}, progress("RollingOut", "generation 2"), False)
    assert held_for(moved, 0.3)
    newer = {**progress("RollingOut", "generation 2"), "observedGeneration": 2}
    cut = controller._coalesce(key, {"status": shown}, newer, False)
    assert cut is not None and cut <= 0.1 + FLOAT_SLACK
    controller.forget(key)
    assert key not in controller.progress_shown


async def test_a_failure_is_written_at_once(
        fake: tuple[Controller, FakeApiServer, list[float]], snapshot: Snapshot) -> None:
    controller, server, _ = fake
    controller.status_coalesce = 60.0
    server.apply_answers[DEPLOYMENT] = [(409, {}), (200, {})]
    server.taken_on_apply = True
    await controller.sync(("ml", "rfcn"), snapshot)
    assert ready(server)["reason"] == "NameConflict"


@pytest.mark.parametrize(("reason", "status", "urgent", "held"), [
    ("Deploying", "False", False, True),
    ("PodsNotReady", "False", False, True),
    ("RollingOut", "False", False, True),
    ("PodsNotReady", "False", True, False),  # a Warning or a failure goes out at once
    ("Available", "True", False, False),  # settled: written as soon as it is seen
    ("NotPlaced", "False", False, False),
])
def test_only_progress_is_held_back(reason: str, status: str, urgent: bool, held: bool) -> None:
    controller = Controller(api=None, settings=Settings(), status_coalesce=5.0)  # type: ignore[arg-type]
    desired = {"conditions": [{"type": "Ready", "status": status, "reason": reason}]}
    wait = controller._coalesce(("ml", "rfcn"), {"status": {}}, desired, urgent)
    assert (wait is not None) == held
    assert wait is None or held_for(wait, 5.0)
    assert (("ml", "rfcn") in controller.status_due) == held
    # Nothing to write: nothing held.
    assert controller._coalesce(("ml", "rfcn"), {"status": desired}, desired, urgent) is None


def test_a_create_only_apply_carries_a_resource_version_no_object_has() -> None:
    from pinserve.controller import CREATE_ONLY_RESOURCE_VERSION, create_only  # noqa: PLC0415

    obj = {"kind": "Service", "metadata": {"name": "rfcn", "namespace": "ml", "labels": {"a": "b"}}}
    made = create_only(obj)
    assert made["metadata"] == {**obj["metadata"], "resourceVersion": CREATE_ONLY_RESOURCE_VERSION}
    assert "resourceVersion" not in obj["metadata"]  # the desired object is left alone
    assert int(CREATE_ONLY_RESOURCE_VERSION) == 2**64 - 1
