"""Reported percentiles against a server whose latency distribution is known.

The server sleeps a delay taken in turn from a fixed list and records how long each sleep really took
(a sleep ends late on a busy machine, never early). The client's latency for a request is that delay plus
a transport overhead that is never negative, so every order statistic the client reports is bounded below
exactly by the injected delays' and above by them plus the overhead. The tests check the reported
figures against the injected delays' own percentiles with that bound: a few percent, plus the overhead
the same server shows around a constant delay (measured first, so a loaded machine does not fail the
test). No assertion depends on how fast the machine is.
"""

from __future__ import annotations

import itertools
import math
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import pytest

pytestmark = pytest.mark.unit

# 100 evenly spaced delays, 5.0 to 54.5 ms: no percentile sits on a cliff where one outlier moves it far.
DELAYS_MS = [5.0 + 0.5 * i for i in range(100)]
ORDER = [DELAYS_MS[(i * 37) % 100] for i in range(100)]  # 37 is coprime to 100: a permutation
TOLERANCE = 0.03
ROUNDING_MS = 0.001  # reports carry microseconds


def _percentile(values: Sequence[float], p: float) -> float:
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


def _latency_run(fake_serving: Any, run_bench: Any, order: list[float]) -> tuple[dict[str, Any], list[float]]:
    """Report of a latency run and the delays the server really applied (ms), one per measured request."""
    server = fake_serving(_cycling_sleeper(order))
    run = run_bench(
        "--target", server.target, "--model", "fake", "--mode", "latency",
        "--warmup", "0", "--requests", str(len(order)), "--quiet",
    )  # fmt: skip
    assert run.code == 0, run.stderr
    return run.report, [s * 1000 for s in server.servicer.handled_s]


@pytest.fixture
def overhead_ms(fake_serving: Any, run_bench: Any) -> float:
    """What transport and scheduling add to a request on this machine now, at the 90th percentile.

    Measured over a constant 10 ms delay rather than none: after an idle wait every thread involved has to
    be woken, and on a busy machine that costs far more than a back-to-back round trip.
    """
    report, applied = _latency_run(fake_serving, run_bench, [10.0] * 64)
    p90: float = report["latencyMs"]["p90"] - _percentile(applied, 90)
    return max(p90, 0.0)


def test_order_is_a_permutation() -> None:
    assert sorted(ORDER) == DELAYS_MS


def test_latency_percentiles_match_the_injected_distribution(
    fake_serving: Any, run_bench: Any, overhead_ms: float
) -> None:
    # Warm-up 0 and 100 requests: the measured requests see each delay of the list exactly once.
    report, applied = _latency_run(fake_serving, run_bench, ORDER)
    lat = report["latencyMs"]
    assert len(applied) == 100
    # The applied delays are the list, give or take the sleeps' late wake-ups.
    assert all(a >= d for a, d in zip(applied, ORDER, strict=True))
    truth = {
        "p50": _percentile(applied, 50),
        "p90": _percentile(applied, 90),
        "mean": sum(applied) / len(applied),
        "min": min(applied),
    }
    # The load can change between the overhead fixture's run and this one; this run's own mean overhead
    # (quantiles of delay + overhead shift by about the overhead's mean when the delays spread widely)
    # keeps the bound honest if it grew.
    slack = max(overhead_ms, 1.5 * (lat["mean"] - truth["mean"]))
    for key, true in truth.items():
        assert true - ROUNDING_MS <= lat[key] <= true * (1 + TOLERANCE) + slack, (key, true, lat, slack)
    # ...and against the nominal list, for the record: p50 29.5 ms and p90 49.5 ms by construction.
    assert lat["p50"] >= _percentile(DELAYS_MS, 50) - ROUNDING_MS
    assert lat["p90"] >= _percentile(DELAYS_MS, 90) - ROUNDING_MS
    assert lat["max"] >= max(applied) - ROUNDING_MS
    assert lat["p99"] is None  # 100 samples cannot support p99


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
    applied = [s * 1000 for s in server.servicer.handled_s[4:]]  # the warm-up round completes first
    true = _percentile(applied, 50)
    slack = max(overhead_ms, 1.5 * (thr["latencyMs"]["mean"] - sum(applied) / len(applied)))
    assert true - ROUNDING_MS <= thr["latencyMs"]["p50"] <= true * (1 + TOLERANCE) + slack, (true, thr, slack)
    assert thr["itemsPerSecond"] == pytest.approx(2 * thr["requestsPerSecond"], rel=1e-3)
