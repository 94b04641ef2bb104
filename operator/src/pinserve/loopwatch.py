"""Is the operator's event loop keeping up: how late its timers fire, and how long the garbage collector stops it.

One asyncio loop runs every watch, reconcile and API request of the operator. When it falls behind, a create
waits before anything looks at it, however cheap its reconcile is. ``LoopWatch`` measures that wait directly: a
probe sleeps ``interval`` seconds again and again, and each wake-up's lateness is the loop's lag at that moment.
It also times each collection of the cyclic garbage collector (``gc.callbacks``), which stops the whole loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import time
from collections.abc import Callable
from typing import Any

from pinserve.metrics import Histogram

# Seconds: a loop that keeps up wakes within a millisecond; one that falls behind, hundreds of them late.
LAG_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
PROBE_SECONDS = 0.1
GENERATIONS = (0, 1, 2)


def _bound(seconds: float) -> str:
    return f"{seconds:g}"


class LoopWatch:
    """Event-loop lag (a probe's late wake-ups) and garbage-collector pauses by generation."""

    def __init__(self, interval: float = PROBE_SECONDS, clock: Callable[[], float] = time.perf_counter) -> None:
        if interval <= 0:
            raise ValueError(f"the probe interval must be positive, not {interval}")
        self.interval = interval
        self.lag = Histogram(LAG_BUCKETS)
        self.lag_max = 0.0
        self.gc_collections = dict.fromkeys(GENERATIONS, 0)
        self.gc_seconds = dict.fromkeys(GENERATIONS, 0.0)
        self.gc_longest = dict.fromkeys(GENERATIONS, 0.0)
        self._clock = clock
        self._gc_started: float | None = None
        self._task: asyncio.Task[None] | None = None

    def observe_lag(self, late: float) -> None:
        late = max(late, 0.0)  # a timer never fires early; clock granularity can make it look so
        self.lag.observe(late)
        self.lag_max = max(self.lag_max, late)

    def on_gc(self, phase: str, info: dict[str, Any]) -> None:
        """A ``gc.callbacks`` entry: ``start`` and ``stop`` of one collection."""
        if phase == "start":
            self._gc_started = self._clock()
        elif phase == "stop" and self._gc_started is not None:
            took = self._clock() - self._gc_started
            self._gc_started = None
            generation = int(info.get("generation", 0))
            self.gc_collections[generation] = self.gc_collections.get(generation, 0) + 1
            self.gc_seconds[generation] = self.gc_seconds.get(generation, 0.0) + took
            self.gc_longest[generation] = max(self.gc_longest.get(generation, 0.0), took)

    def start(self) -> None:
        """Start the probe on the running loop and hook the garbage collector; ``stop`` undoes both."""
        if self.on_gc not in gc.callbacks:
            gc.callbacks.append(self.on_gc)
        if self._task is None:
            self._task = asyncio.create_task(self._probe())

    async def stop(self) -> None:
        with contextlib.suppress(ValueError):
            gc.callbacks.remove(self.on_gc)
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _probe(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            before = loop.time()
            await asyncio.sleep(self.interval)
            self.observe_lag(loop.time() - before - self.interval)

    def summary(self) -> dict[str, Any]:
        """Plain numbers for a stats file: the lag's total, count and worst; collections and pauses by generation."""
        return {
            "lag_seconds": self.lag.total, "lag_samples": self.lag.count, "lag_max": self.lag_max,
            # wake-ups later than each bound (not cumulative upwards: over 0.05 includes those over 0.25)
            "lag_over": {_bound(b): self.lag.count - n for b, n in zip(self.lag.buckets, self.lag.counts, strict=True)},
            "gc": {str(g): {"collections": self.gc_collections[g], "seconds": self.gc_seconds[g],
                            "longest": self.gc_longest[g]} for g in sorted(self.gc_collections)},
        }
