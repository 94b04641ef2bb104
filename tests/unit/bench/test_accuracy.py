"""Reported percentiles against a server whose latency distribution is known exactly.

The server sleeps a delay taken in turn from a fixed list, so the true distribution of what the client
measures is that list plus the transport's overhead, which is positive and small. The assertions compare
reported figures to the list's own percentiles: the lower bound is exact (a sleep never ends early, so
every order statistic dominates the list's), the upper bound allows a few percent plus the overhead the
same server shows with no delay at all (measured first, so a loaded machine does not fail the test).
"""

from __future__ import annotations

import itertools
import math
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

pytestmark = pytest.mark.unit

# 100 evenly spaced delays, 5.0 to 54.5 ms, so no percentile sits on a cliff where one outlier moves it far.
DELAYS_MS = [5.0 + 0.5 * i for i in range(100)]
ORDER = [DELAYS_MS[(i * 37) % 100] for i in range(100)]  # 37 is coprime to 100: a permutation
TOLERANCE = 0.03
ROUNDING_MS = 0.001


def _true_percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[max(1, math.ceil(p / 100 * len(ordered))) - 1]


def _cycling_sleeper(order: list[float]) -> Callable[[Any, Any], None]:
    lock = threading.Lock()
    delays = itertools.cycle(order)

    def behaviour(request: Any, context: Any) -> None:
        with lock:
            delay = next(delays)
        if delay:
            time.sleep(delay / 1000)

    return behaviour


def _latency_run(fake_serving: Any, run_bench: Any, order: list[float]) -> dict[str, Any]:
    server = fake_serving(_cycling_sleeper(order))
    run = run_bench(
        "--target", server.target, "--model", "fake", "--mode", "latency",
        "--warmup", "0", "--requests", str(len(order)), "--quiet",
    )  # fmt: skip
    assert run.code == 0, run.stderr
    report: dict[str, Any] = run.report
    return report


@pytest.fixture
def overhead_ms(fake_serving: Any, run_bench: Any) -> float:
    """What this machine adds, right now, to a sleeping request: p90 over a constant 10 ms delay.

    It covers the transport and the sleep's late wake-up, which grows with the machine's load.
    """
    p90: float = _latency_run(fake_serving, run_bench, [10.0] * 64)["latencyMs"]["p90"]
    return p90 - 10.0


def test_order_is_a_permutation() -> None:
    assert sorted(ORDER) == DELAYS_MS


def test_latency_percentiles_match_the_injected_distribution(
    fake_serving: Any, run_bench: Any, overhead_ms: float
) -> None:
    # Warm-up 0 and 100 requests: the measured requests see each delay exactly once.
    lat = _latency_run(fake_serving, run_bench, ORDER)["latencyMs"]
    checks = {
        "p50": _true_percentile(DELAYS_MS, 50),
        "p90": _true_percentile(DELAYS_MS, 90),
        "mean": sum(DELAYS_MS) / len(DELAYS_MS),
        "min": min(DELAYS_MS),
        "max": max(DELAYS_MS),
    }
    for key, true in checks.items():
        if key == "max":
            # One unlucky request is enough to move the max; only the lower bound is exact.
            assert lat[key] >= true - ROUNDING_MS
            continue
        assert true - ROUNDING_MS <= lat[key] <= true * (1 + TOLERANCE) + overhead_ms, (key, lat, overhead_ms)
    assert lat["p99"] is None  # 100 samples cannot support p99
    true_sd = (sum((d - checks["mean"]) ** 2 for d in DELAYS_MS) / 99) ** 0.5
    assert lat["stddev"] == pytest.approx(true_sd, rel=0.10)


def test_throughput_latency_under_load(fake_serving: Any, run_bench: Any, overhead_ms: float) -> None:
    server = fake_serving(_cycling_sleeper(ORDER))
    run = run_bench(
        "--target", server.target, "--model", "fake", "--mode", "throughput", "--warmup", "0",
        "--batch-size", "2", "--concurrency", "4", "--duration", "1.5", "--quiet",
    )  # fmt: skip
    assert run.code == 0, run.stderr
    thr = run.report["throughput"]
    # Every request the server saw was counted: one warm-up per worker, then the timed ones, none dropped.
    assert server.servicer.calls == thr["requests"] + 4
    true = _true_percentile(DELAYS_MS, 50)
    assert abs(thr["latencyMs"]["p50"] - true) <= true * 0.05 + overhead_ms, (thr, overhead_ms)
    assert thr["itemsPerSecond"] == pytest.approx(2 * thr["requestsPerSecond"], rel=1e-3)
