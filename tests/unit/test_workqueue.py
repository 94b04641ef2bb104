"""The keyed work queue: one run per key at a time, bursts coalesce, failures do not stop it."""

from __future__ import annotations

import asyncio

import pytest

from pinserve.workqueue import KeyedQueue, PriorityLimiter

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

    queue: KeyedQueue[int] = KeyedQueue(work, concurrency=3, reserved_first=0)
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


def _recording_queue() -> tuple[list[str], asyncio.Event, KeyedQueue[str]]:
    """A queue whose runs record their key and set the event."""
    runs: list[str] = []
    ran = asyncio.Event()

    async def work(key: str) -> None:
        runs.append(key)
        ran.set()

    return runs, ran, KeyedQueue(work)


async def test_trigger_later_runs_once_and_the_earlier_timer_wins() -> None:
    runs, done, queue = _recording_queue()
    queue.trigger_later("a", 60)
    queue.trigger_later("a", 0.01)  # earlier: replaces the first
    queue.trigger_later("a", 30)  # later: ignored
    assert queue.scheduled() == 1
    await asyncio.wait_for(done.wait(), 5)
    await queue.drain()
    assert runs == ["a"] and queue.scheduled() == 0 and queue.fired == 1


async def test_requeue_replaces_the_timer_with_the_last_runs_answer() -> None:
    """A run's answer supersedes an earlier run's: later or earlier, and None drops the timer."""
    runs, done, queue = _recording_queue()
    queue.trigger_later("a", 0.01)
    queue.requeue("a", 60)  # later than the timer it replaces: still replaces it
    await asyncio.sleep(0.05)
    assert runs == [] and queue.scheduled() == 1
    queue.requeue("a", None)  # settled: nothing to come back for
    assert queue.scheduled() == 0
    queue.requeue("b", None)  # no timer: nothing to drop
    queue.requeue("a", 0.01)
    await asyncio.wait_for(done.wait(), 5)
    await queue.drain()
    assert runs == ["a"] and queue.fired == 1 and queue.scheduled() == 0


async def test_forget_and_cancel_drop_the_timers() -> None:
    runs, _, queue = _recording_queue()
    queue.trigger_later("a", 0.01)
    queue.trigger_later("b", 0.01)
    queue.forget("a")
    queue.cancel()
    await asyncio.sleep(0.05)
    assert runs == [] and queue.scheduled() == 0


async def test_trigger_soon_folds_a_window_of_triggers_into_one_run() -> None:
    runs, ran, queue = _recording_queue()
    for _ in range(20):
        queue.trigger_soon("a", 0.05)
        await asyncio.sleep(0)
    assert runs == [] and queue.folding() == 1  # nothing runs before the window closes
    await asyncio.wait_for(ran.wait(), 5)
    await queue.drain()
    assert runs == ["a"] and queue.folding() == 0
    queue.trigger_soon("a", 0)  # no window: at once
    await queue.drain()
    assert runs == ["a", "a"]


async def test_a_run_that_starts_closes_the_window_it_covers() -> None:
    runs, _, queue = _recording_queue()
    queue.trigger_soon("a", 60)
    queue.trigger("a")  # e.g. the ModelServer changed: this run reads the children too
    await queue.drain()
    assert runs == ["a"] and queue.folding() == 0
    queue.trigger_soon("a", 60)
    queue.trigger_soon("b", 60)
    queue.forget("a")
    assert queue.folding() == 1
    queue.cancel()
    assert queue.folding() == 0 and runs == ["a"]


async def test_a_window_opened_during_a_run_brings_one_more_run() -> None:
    """The running reconcile read its state before the change: the window's run reads it."""
    order, gate, queue = _one_slot_queue()
    queue.trigger("a")
    await asyncio.sleep(0)  # runs, holds the gate
    queue.trigger_soon("a", 0.05)
    queue.trigger_soon("a", 0.05)
    gate.set()
    await queue.drain()
    assert order == ["a"] and queue.folding() == 1
    for _ in range(500):  # the window closes, then its run ends
        if not (queue.folding() or queue.pending()):
            break
        await asyncio.sleep(0.01)
    assert order == ["a", "a"]


def _one_slot_queue() -> tuple[list[str], asyncio.Event, KeyedQueue[str]]:
    """A one-slot queue whose runs record their key, then wait for the gate."""
    order: list[str] = []
    gate = asyncio.Event()

    async def work(key: str) -> None:
        order.append(key)
        await gate.wait()

    return order, gate, KeyedQueue(work, concurrency=1, reserved_first=0)


async def test_a_keys_first_run_goes_before_the_reruns_of_others() -> None:
    """A create is not queued behind the echoes (pods, status) of the keys reconciled before it."""
    order, gate, queue = _one_slot_queue()
    for key in ("old-1", "old-2"):  # reconciled once already
        queue.trigger(key)
        gate.set()
        await queue.drain()
        gate.clear()
    order.clear()
    queue.trigger("busy")  # holds the only slot
    await asyncio.sleep(0)
    queue.trigger("old-1")
    queue.trigger("old-2")
    queue.trigger("new-1")
    queue.trigger("new-2")
    await asyncio.sleep(0)
    gate.set()
    await queue.drain()
    assert order == ["busy", "new-1", "new-2", "old-1", "old-2"]
    # Forgotten (deleted) and seen again: first again.
    queue.forget("old-1")
    gate.clear()
    order.clear()
    queue.trigger("busy")
    await asyncio.sleep(0)
    queue.trigger("old-2")
    queue.trigger("old-1")
    await asyncio.sleep(0)
    gate.set()
    await queue.drain()
    assert order == ["busy", "old-1", "old-2"]


async def test_a_rerun_queues_again_behind_a_waiting_first_run() -> None:
    """A key that keeps changing gives its slot back between runs: a create waiting for it goes first."""
    order, gate, queue = _one_slot_queue()
    queue.trigger("busy")
    await asyncio.sleep(0)  # runs, holds the only slot
    queue.trigger("new")  # waits for the slot
    queue.trigger("busy")  # changed again while running: one more run, after "new"
    await asyncio.sleep(0)
    gate.set()
    await queue.drain()
    assert order == ["busy", "new", "busy"]


async def test_the_limiter_passes_a_slot_on_and_survives_cancelled_waiters() -> None:
    limiter = PriorityLimiter(1)
    await limiter.acquire(first=False)
    waiting = [asyncio.create_task(limiter.acquire(first=f)) for f in (False, True, False)]
    await asyncio.sleep(0)
    assert limiter.waiting() == 3
    waiting[1].cancel()  # the first-class waiter gives up: the slot goes to the next in line
    await asyncio.sleep(0)
    assert limiter.waiting() == 2
    limiter.release()
    await asyncio.sleep(0)
    assert waiting[0].done() and not waiting[2].done()
    limiter.release()
    await asyncio.sleep(0)
    assert waiting[2].done()
    limiter.release()
    await limiter.acquire(first=False)  # free again: taken at once
    assert limiter.waiting() == 0


async def test_the_wait_from_trigger_to_run_is_measured_by_run() -> None:
    release = asyncio.Event()

    async def work(key: str) -> None:
        await release.wait()

    queue: KeyedQueue[str] = KeyedQueue(work, concurrency=1, reserved_first=0)
    queue.trigger("a")  # runs at once
    queue.trigger("b")  # a first run, waits for a's slot
    await asyncio.sleep(0)
    queue.trigger("a")  # a re-run: waits for a's own run to end, then for the slot behind b
    queue.trigger("a")  # coalesces with the one before: one wait, measured from the earlier trigger
    await asyncio.sleep(0.05)
    release.set()
    await queue.drain()
    first, again = queue.waits["first"], queue.waits["again"]
    assert first.count == 2 and again.count == 1
    assert first.total >= 0.05  # b waited for a's run, blocked at least the 0.05 s slept above
    assert again.total >= 0.05


async def test_a_forgotten_key_starts_its_wait_afresh() -> None:
    async def work(key: str) -> None:
        return None

    queue: KeyedQueue[str] = KeyedQueue(work)
    queue.trigger("a")
    await queue.drain()
    queue.forget("a")
    queue.trigger("a")
    await queue.drain()
    assert queue.waits["first"].count == 2 and queue.waits["again"].count == 0


async def test_first_runs_have_slots_of_their_own_that_reruns_never_hold() -> None:
    """Re-runs stuck on a slow API server fill their share; a create still starts at once, in a reserved slot."""
    started: list[str] = []
    gate = asyncio.Event()

    async def work(key: str) -> None:
        started.append(key)
        await gate.wait()

    queue: KeyedQueue[str] = KeyedQueue(work, concurrency=2, reserved_first=1)
    for key in ("old-1", "old-2", "old-3"):  # reconciled once already
        queue.trigger(key)
        gate.set()
        await queue.drain()
        gate.clear()
    started.clear()
    for key in ("old-1", "old-2", "old-3"):  # re-runs: two run, the third waits
        queue.trigger(key)
    await asyncio.sleep(0)
    assert started == ["old-1", "old-2"]
    queue.trigger("new-1")  # the reserved slot: starts at once
    queue.trigger("new-2")  # every slot taken: waits, and goes before old-3
    await asyncio.sleep(0)
    assert started == ["old-1", "old-2", "new-1"]
    gate.set()
    await queue.drain()
    assert started == ["old-1", "old-2", "new-1", "new-2", "old-3"]


async def test_the_limiter_keeps_the_reserve_for_the_first_class() -> None:
    limiter = PriorityLimiter(1, reserved=2)
    await limiter.acquire(first=False)
    rerun = asyncio.create_task(limiter.acquire(first=False))  # its share (1) is held: waits
    await limiter.acquire(first=True)  # reserved slot
    await limiter.acquire(first=True)  # reserved slot
    assert limiter.in_use() == 3
    create = asyncio.create_task(limiter.acquire(first=True))  # all three taken: waits
    await asyncio.sleep(0)
    assert limiter.waiting() == 2
    limiter.release()  # a reserved slot frees: the first-class waiter, not the re-run
    await asyncio.sleep(0)
    assert create.done() and not rerun.done()
    limiter.release()
    limiter.release()  # 1 in use (the first second-class holder): the re-run's share is still full
    await asyncio.sleep(0)
    assert not rerun.done()
    limiter.release()
    await asyncio.sleep(0)
    assert rerun.done() and limiter.in_use() == 1


@pytest.mark.parametrize(("slots", "reserved"), [(0, 4), (2, -1)])
def test_a_limiter_needs_a_slot_and_no_negative_reserve(slots: int, reserved: int) -> None:
    with pytest.raises(ValueError, match="at least one slot"):
        PriorityLimiter(slots, reserved)


async def test_a_waiter_cancelled_before_a_release_reaches_it_leaves_the_limiter_whole() -> None:
    limiter = PriorityLimiter(1)
    await limiter.acquire(first=False)
    waiter = asyncio.create_task(limiter.acquire(first=True))
    await asyncio.sleep(0)
    waiter.cancel()  # its turn is cancelled now; the task itself resumes only on the next loop step
    limiter.release()  # drops the cancelled turn and keeps the slot free
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert limiter.in_use() == 0 and limiter.waiting() == 0
    await limiter.acquire(first=False)
    assert limiter.in_use() == 1
