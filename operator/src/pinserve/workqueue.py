"""A keyed work queue: at most one reconcile per key at a time, and triggers coalesce.

A burst of watch events for one ModelServer (pods, ReplicaSets, Deployment status, our own
status write coming back) runs the reconcile once more after the current run, not once per
event; a concurrency limit keeps a flood of keys from swamping the API server. ``trigger_later``
brings a key back after a delay (a bounded wait running out, an API error's backoff), one timer per key.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
log = logging.getLogger("pinserve")


class KeyedQueue(Generic[K]):
    def __init__(self, work: Callable[[K], Awaitable[object]], *, concurrency: int = 16) -> None:
        self._work = work
        self._limit = asyncio.Semaphore(concurrency)
        self._active: dict[K, asyncio.Task[None]] = {}
        self._dirty: set[K] = set()
        self._timers: dict[K, asyncio.TimerHandle] = {}

    def trigger(self, key: K) -> None:
        """Run ``work(key)`` soon; if it is queued or running, make sure it runs once more."""
        if key in self._active:
            self._dirty.add(key)
            return
        self._active[key] = asyncio.get_running_loop().create_task(self._run(key))

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

    def _fire(self, key: K) -> None:
        self._timers.pop(key, None)
        self.trigger(key)

    def forget(self, key: K) -> None:
        """Drop the key's timer (its object is gone)."""
        timer = self._timers.pop(key, None)
        if timer is not None:
            timer.cancel()

    def scheduled(self) -> int:
        return len(self._timers)

    async def _run(self, key: K) -> None:
        try:
            async with self._limit:
                while True:
                    self._dirty.discard(key)
                    try:
                        await self._work(key)
                    except Exception:  # one key's failure must not stop the queue; resync retries it
                        log.exception("reconcile of %s failed", key)
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
        for timer in self._timers.values():
            timer.cancel()
        self._timers.clear()
