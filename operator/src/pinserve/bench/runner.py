"""The measurement loops: SingleStream latency and fixed-duration throughput under concurrency.

Both take a prepared payload (serialized once) and a transport's call; nothing is built on the timed path.
Only the call itself sits between the two clock reads. The latency loop is synchronous (a blocking call
on a persistent connection, run in a worker thread): with one request in flight an event loop only adds
thread wake-ups to every sample. The throughput loop is asyncio: C coroutines share one thread cheaply.
"""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from pinserve.bench.errors import BenchError, error_for_status

Call = Callable[[bytes], Awaitable[Any]]
BlockingCall = Callable[[bytes], Any]
# (status code name, message) for a failed call, None for an exception that is not a request failure.
Classify = Callable[[BaseException], "tuple[str, str] | None"]


@dataclass
class LatencyRun:
    latencies_s: list[float]
    first_response: Any


@dataclass
class ThroughputRun:
    batch_size: int
    concurrency: int
    latencies_s: list[float]
    errors: collections.Counter[str]
    elapsed_s: float
    cpu_s: float
    first_error: dict[str, str] = field(default_factory=dict)

    @property
    def ok(self) -> int:
        return len(self.latencies_s)

    @property
    def attempted(self) -> int:
        return self.ok + sum(self.errors.values())


def _failure(classify: Classify, exc: BaseException, what: str) -> BenchError | None:
    found = classify(exc)
    if found is None:
        return None
    code, message = found
    return error_for_status(code, f"{what}: {code}: {message}")


def run_latency(call: BlockingCall, payload: bytes, warmup: int, requests: int, classify: Classify) -> LatencyRun:
    """Warm-up then `requests` sequential calls, one in flight; the first failure aborts the run."""
    first: Any = None
    perf = time.perf_counter
    latencies: list[float] = []
    for phase, count in (("warm-up", warmup), ("latency", requests)):
        for i in range(count):
            try:
                start = perf()
                response = call(payload)
                end = perf()
            except Exception as exc:
                failure = _failure(classify, exc, f"{phase} request {i + 1} of {count}")
                if failure is None:
                    raise
                raise failure from exc
            if first is None:
                first = response
            if phase == "latency":
                latencies.append(end - start)
    return LatencyRun(latencies, first)


async def _warm_up_concurrently(calls: Sequence[Call], payload: bytes, warmup: int, classify: Classify) -> Any:
    """At least one call per worker (every channel connected, every shape seen) before the clock starts."""
    rounds = max(1, -(-warmup // len(calls)))
    first: Any = None
    for r in range(rounds):
        results = await asyncio.gather(*(call(payload) for call in calls), return_exceptions=True)
        for result in results:
            if isinstance(result, BaseException):
                failure = _failure(classify, result, f"throughput warm-up round {r + 1} of {rounds}")
                if failure is None:
                    raise result
                raise failure from result
            if first is None:
                first = result
    return first


async def run_throughput(
    calls: Sequence[Call],
    payload: bytes,
    *,
    batch_size: int,
    duration_s: float,
    warmup: int,
    classify: Classify,
) -> tuple[ThroughputRun, Any]:
    """len(calls) workers, each with one request in flight, issuing until `duration_s` has passed.

    Failed requests are counted by status code and do not stop the run. Elapsed time runs to the last
    completion, so in-flight requests are neither dropped nor counted against a shorter window.
    """
    first = await _warm_up_concurrently(calls, payload, warmup, classify)
    latencies: list[float] = []
    errors: collections.Counter[str] = collections.Counter()
    first_error: dict[str, str] = {}
    perf = time.perf_counter
    record = latencies.append

    async def worker(call: Call, stop_at: float) -> None:
        while True:
            start = perf()
            if start >= stop_at:
                return
            try:
                await call(payload)
            except Exception as exc:
                found = classify(exc)
                if found is None:
                    raise
                errors[found[0]] += 1
                first_error.setdefault(found[0], found[1])
                continue
            record(perf() - start)

    cpu0 = time.process_time()
    began = perf()
    stop_at = began + duration_s
    await asyncio.gather(*(worker(call, stop_at) for call in calls))
    elapsed = perf() - began
    cpu = time.process_time() - cpu0
    return ThroughputRun(batch_size, len(calls), latencies, errors, elapsed, cpu, first_error), first
