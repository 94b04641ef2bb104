"""A keyed work queue: at most one reconcile per key at a time, and triggers coalesce.

A burst of watch events for one ModelServer (pods, ReplicaSets, Deployment status, our own
status write coming back) runs the reconcile once more after the current run, not once per
event; a concurrency limit keeps a flood of keys from swamping the API server. A key's first run (a
ModelServer just created, or just seen) goes before the re-runs of keys already reconciled, and has slots of
its own that re-runs never hold: a create is neither queued behind the pod and status echoes of the creates
before it nor waits for their runs (each a status write and an Event on a busy API server) to end.
``trigger_later`` brings a key back after a delay (a bounded wait running out, an API error's backoff), one
timer per key.

``trigger_soon`` is for changes that need no answer within the moment (a child's status moving on, our own
status write coming back): the changes of a short window fold into one run. A pod that starts sends several
events within a second (scheduled, running, ready) and its Deployment's status follows each; folded, they
cost one or two reconciles instead of one per event.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Hashable
from typing import Generic, TypeVar

from pinserve.metrics import Histogram

K = TypeVar("K", bound=Hashable)
# Seconds from a trigger to its run's start: a queue that keeps up starts within milliseconds.
WAIT_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
log = logging.getLogger("pinserve")


class PriorityLimiter:
    """A semaphore with two classes of waiters: the first class is served first, each class in arrival order.

    ``reserved`` slots are the first class's alone: the second class holds at most ``slots``, so a first-class
    waiter never waits for second-class work to end while any reserved slot is free. A freed slot is handed to
    the next waiter directly, so a newcomer cannot overtake the ones waiting.
    """

    def __init__(self, slots: int, reserved: int = 0) -> None:
        if slots < 1 or reserved < 0:
            raise ValueError(f"a limiter needs at least one slot and no negative reserve, not {slots}, {reserved}")
        self._slots = slots
        self._reserved = reserved
        self._in_use = 0
        self._waiting: tuple[deque[asyncio.Future[None]], deque[asyncio.Future[None]]] = (deque(), deque())

    def _room(self, first: bool) -> bool:
        return self._in_use < self._slots + (self._reserved if first else 0)

    async def acquire(self, first: bool) -> None:
        line = self._waiting[0 if first else 1]
        ahead = self._waiting[0] if first else (*self._waiting[0], *self._waiting[1])
        if self._room(first) and not ahead:
            self._in_use += 1
            return
        turn: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        line.append(turn)
        try:
            await turn
        except asyncio.CancelledError:
            if turn.done() and not turn.cancelled():
                self.release()  # handed a slot, then cancelled: pass it on
            else:
                if turn in line:  # a release may have dropped it already (cancelled before the task resumed)
                    line.remove(turn)
                self._admit()  # a second-class waiter may have waited behind this one only
            raise

    def release(self) -> None:
        self._in_use -= 1
        self._admit()

    def _admit(self) -> None:
        """Hand free slots to the waiters: the first class first, the second only within its ``slots``."""
        for first, line in ((True, self._waiting[0]), (False, self._waiting[1])):
            while line and self._room(first):
                turn = line.popleft()
                if not turn.done():
                    self._in_use += 1
                    turn.set_result(None)
            if line:
                return  # this class still waits: the next may not overtake it

    def waiting(self) -> int:
        return len(self._waiting[0]) + len(self._waiting[1])

    def in_use(self) -> int:
        return self._in_use


class KeyedQueue(Generic[K]):
    def __init__(self, work: Callable[[K], Awaitable[object]], *, concurrency: int = 16,
                 reserved_first: int = 16) -> None:
        self._work = work
        # Re-runs hold at most ``concurrency`` slots; first runs (a ModelServer just created) may use
        # ``reserved_first`` more: a create never waits for the slow re-runs (status writes, Events) of others.
        self._limit = PriorityLimiter(concurrency, reserved_first)
        self._ran: set[K] = set()  # keys run at least once since they were (last) forgotten
        self._active: dict[K, asyncio.Task[None]] = {}
        self._dirty: set[K] = set()
        self._timers: dict[K, asyncio.TimerHandle] = {}
        self.fired = 0  # timers that ran out (each a trigger)
        self._soon: dict[K, asyncio.TimerHandle] = {}  # trigger_soon's windows
        self._since: dict[K, float] = {}  # key -> when (loop time) the trigger its next run answers came
        # Trigger to run start, by run: "first" (never run since forgotten) and "again".
        self.waits: dict[str, Histogram] = {"first": Histogram(WAIT_BUCKETS), "again": Histogram(WAIT_BUCKETS)}

    def trigger(self, key: K) -> None:
        """Run ``work(key)`` soon; if it is queued or running, make sure it runs once more."""
        loop = asyncio.get_running_loop()
        self._since.setdefault(key, loop.time())
        if key in self._active:
            self._dirty.add(key)
            return
        self._active[key] = loop.create_task(self._run(key))

    def trigger_later(self, key: K, delay: float) -> None:
        """Trigger ``key`` in ``delay`` seconds; of two timers for one key, the earlier one stays."""
        loop = asyncio.get_running_loop()
        when = loop.time() + max(delay, 0.0)
        timer = self._timers.get(key)
        if timer is not None:
            if timer.when() <= when:
                return
            timer.cancel()
        self._timers[key] = loop.call_at(when, self._fire, key)

    def requeue(self, key: K, delay: float | None) -> None:
        """What the key's last run asks for: a trigger in ``delay`` seconds, or (None) no timed trigger.

        Replaces the key's timer, earlier or later: each run reads the whole state, so its answer supersedes
        what an earlier run asked (a hold for a status that has meanwhile settled would only make a no-op run).
        """
        timer = self._timers.pop(key, None)
        if timer is not None:
            timer.cancel()
        if delay is not None:
            self.trigger_later(key, delay)

    def trigger_soon(self, key: K, window: float) -> None:
        """Run ``work(key)`` within ``window`` seconds: the triggers of one window fold into one run.

        The run's work reads the state when it starts, so a run that starts meanwhile (any trigger) covers the
        window and closes it. The wait is bounded by ``window`` from the first trigger: a key whose children
        keep changing is still reconciled every ``window``.
        """
        if window <= 0:
            self.trigger(key)
        elif key not in self._soon:
            self._soon[key] = asyncio.get_running_loop().call_later(window, self._window_closed, key)

    def _window_closed(self, key: K) -> None:
        self._soon.pop(key, None)
        self.trigger(key)

    def _fire(self, key: K) -> None:
        self._timers.pop(key, None)
        self.fired += 1
        self.trigger(key)

    def forget(self, key: K) -> None:
        """Drop the key's timer (its object is gone)."""
        self._ran.discard(key)
        self._since.pop(key, None)
        for timers in (self._timers, self._soon):
            timer = timers.pop(key, None)
            if timer is not None:
                timer.cancel()

    def scheduled(self) -> int:
        return len(self._timers)

    def folding(self) -> int:
        """Keys with a trigger_soon window open."""
        return len(self._soon)

    async def _run(self, key: K) -> None:
        try:
            while True:
                # A re-run gives its slot back and queues again, as client-go's workqueue re-adds a key: a key
                # whose pods keep changing does not hold a slot that a waiting first run could use.
                first = key not in self._ran
                await self._limit.acquire(first=first)
                try:
                    self._dirty.discard(key)
                    self._ran.add(key)
                    since = self._since.pop(key, None)
                    if since is not None:
                        self.waits["first" if first else "again"].observe(asyncio.get_running_loop().time() - since)
                    window = self._soon.pop(key, None)
                    if window is not None:  # this run reads what the window was waiting for
                        window.cancel()
                    try:
                        await self._work(key)
                    except Exception:  # one key's failure must not stop the queue; resync retries it
                        log.exception("reconcile of %s failed", key)
                finally:
                    self._limit.release()
                if key not in self._dirty:
                    break
        finally:
            del self._active[key]

    def pending(self) -> int:
        return len(self._active)

    async def drain(self) -> None:
        while self._active:
            await asyncio.gather(*list(self._active.values()), return_exceptions=True)

    def cancel(self) -> None:
        for task in self._active.values():
            task.cancel()
        for timers in (self._timers, self._soon):
            for timer in timers.values():
                timer.cancel()
            timers.clear()
