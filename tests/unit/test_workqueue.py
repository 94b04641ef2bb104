"""The keyed work queue: one run per key at a time, bursts coalesce, failures do not stop it."""

from __future__ import annotations

import asyncio

import pytest

from pinserve.workqueue import KeyedQueue

pytestmark = pytest.mark.unit


async def test_a_burst_for_one_key_runs_once_more_not_once_per_trigger() -> None:
    runs: list[str] = []
    gate = asyncio.Event()

    async def work(key: str) -> None:
        runs.append(key)
        await gate.wait()

    queue: KeyedQueue[str] = KeyedQueue(work)
    queue.trigger("a")
    await asyncio.sleep(0)  # the first run starts and blocks on the gate
    for _ in range(50):
        queue.trigger("a")
    gate.set()
    await queue.drain()
    assert runs == ["a", "a"]


async def test_keys_run_concurrently_up_to_the_limit() -> None:
    active = 0
    peak = 0
    release = asyncio.Event()

    async def work(key: int) -> None:
        nonlocal active, peak
        active += 1
        peak = max(peak, active)
        await release.wait()
        active -= 1

    queue: KeyedQueue[int] = KeyedQueue(work, concurrency=3)
    for key in range(10):
        queue.trigger(key)
    for _ in range(5):
        await asyncio.sleep(0)
    assert peak == 3 and queue.pending() == 10
    release.set()
    await queue.drain()
    assert queue.pending() == 0


async def test_a_failing_key_is_logged_and_the_queue_goes_on(caplog: pytest.LogCaptureFixture) -> None:
    done: list[str] = []

    async def work(key: str) -> None:
        if key == "bad":
            raise RuntimeError("boom")
        done.append(key)

    queue: KeyedQueue[str] = KeyedQueue(work)
    queue.trigger("bad")
    queue.trigger("good")
    await queue.drain()
    assert done == ["good"]
    assert "reconcile of bad failed" in caplog.text
    queue.trigger("bad")  # a failed key can be triggered again
    await queue.drain()
    assert queue.pending() == 0


async def test_trigger_later_runs_once_and_the_earlier_timer_wins() -> None:
    runs: list[str] = []
    done = asyncio.Event()

    async def work(key: str) -> None:
        runs.append(key)
        done.set()

    queue: KeyedQueue[str] = KeyedQueue(work)
    queue.trigger_later("a", 60)
    queue.trigger_later("a", 0.01)  # earlier: replaces the first
    queue.trigger_later("a", 30)  # later: ignored
    assert queue.scheduled() == 1
    await asyncio.wait_for(done.wait(), 5)
    await queue.drain()
    assert runs == ["a"] and queue.scheduled() == 0


async def test_forget_and_cancel_drop_the_timers() -> None:
    runs: list[str] = []

    async def work(key: str) -> None:
        runs.append(key)

    queue: KeyedQueue[str] = KeyedQueue(work)
    queue.trigger_later("a", 0.01)
    queue.trigger_later("b", 0.01)
    queue.forget("a")
    queue.cancel()
    await asyncio.sleep(0.05)
    assert runs == [] and queue.scheduled() == 0
