"""The event-loop lag probe and garbage-collector timing behind /metrics and the benchmark's loop rows."""

from __future__ import annotations

import asyncio
import gc
import time
from typing import Any

import pytest

from pinserve.loopwatch import LAG_BUCKETS, LoopWatch
from pinserve.metrics import exposition
from tests.unit.test_metrics import parse, sample
from tools.procstats import loop_delta

pytestmark = pytest.mark.unit


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_lag_is_never_negative_and_the_worst_is_kept() -> None:
    watch = LoopWatch()
    for late in (-0.0004, 0.002, 0.3, 0.01):
        watch.observe_lag(late)
    assert watch.lag.count == 4
    assert watch.lag.total == pytest.approx(0.312)
    assert watch.lag_max == pytest.approx(0.3)
    over = watch.summary()["lag_over"]
    assert over["0.001"] == 3 and over["0.25"] == 1 and over["0.5"] == 0
    assert set(over) == {f"{b:g}" for b in LAG_BUCKETS}


@pytest.mark.parametrize("interval", [0, -1.0])
def test_the_probe_interval_must_be_positive(interval: float) -> None:
    with pytest.raises(ValueError, match="positive"):
        LoopWatch(interval=interval)


def test_collections_are_timed_by_generation() -> None:
    clock = Clock()
    watch = LoopWatch(clock=clock)
    for generation, took in ((0, 0.001), (2, 0.120), (2, 0.030), (1, 0.004)):
        watch.on_gc("start", {"generation": generation})
        clock.now += took
        watch.on_gc("stop", {"generation": generation, "collected": 0, "uncollectable": 0})
    watch.on_gc("stop", {"generation": 2})  # a stop without its start (hooked mid-collection) is not counted
    assert watch.gc_collections == {0: 1, 1: 1, 2: 2}
    assert watch.gc_seconds[2] == pytest.approx(0.150)
    assert watch.gc_longest[2] == pytest.approx(0.120)
    assert watch.summary()["gc"]["2"] == {"collections": 2, "seconds": pytest.approx(0.150),
                                          "longest": pytest.approx(0.120)}


def test_a_blocked_loop_shows_as_lag_and_real_collections_are_counted() -> None:
    async def scenario() -> LoopWatch:
        watch = LoopWatch(interval=0.02)
        watch.start()
        watch.start()  # idempotent: one probe, one hook
        assert gc.callbacks.count(watch.on_gc) == 1
        await asyncio.sleep(0.05)
        time.sleep(0.2)  # the loop is blocked: the probe's timer cannot fire for 0.2 s
        await asyncio.sleep(0.05)
        gc.collect()
        await watch.stop()
        assert watch.on_gc not in gc.callbacks
        return watch

    watch = asyncio.run(scenario())
    assert watch.lag.count >= 2
    assert watch.lag_max >= 0.1  # blocked 0.2 s against a 0.02 s sleep: at least this late, however slow the host
    assert watch.gc_collections[2] >= 1


def test_metrics_show_lag_and_collections_only_when_watched() -> None:
    assert not any("event_loop" in k or "_gc_" in k for k in parse(exposition(sample())))
    watch = LoopWatch()
    watch.observe_lag(0.3)
    series = parse(exposition(sample(loop_lag=watch.lag, gc_collections={"0": 40, "2": 3},
                                     gc_seconds={"0": 0.05, "2": 0.4})))
    assert series['pinserve_event_loop_lag_seconds_bucket{le="0.25"}'] == 0
    assert series['pinserve_event_loop_lag_seconds_bucket{le="0.5"}'] == 1
    assert series["pinserve_event_loop_lag_seconds_count"] == 1
    assert series['pinserve_gc_collections_total{generation="2"}'] == 3
    assert series['pinserve_gc_pause_seconds_total{generation="2"}'] == pytest.approx(0.4)


def test_the_bench_takes_the_difference_of_two_stats_files() -> None:
    def stats(lag: float, over: int, gc2: int, gc2_s: float, gc0_s: float) -> dict[str, Any]:
        return {"lag_seconds": lag, "lag_samples": 10, "lag_max": 0.5,
                "lag_over": {"0.05": over, "0.25": 0, "1": 0},
                "gc": {"0": {"collections": 9, "seconds": gc0_s, "longest": 0.001},
                       "1": {"collections": 1, "seconds": 0.01, "longest": 0.01},
                       "2": {"collections": gc2, "seconds": gc2_s, "longest": 0.2}}}

    delta = loop_delta(stats(1.0, 2, 1, 0.1, 0.02), stats(4.5, 9, 4, 0.7, 0.05))
    assert delta["lag_seconds"] == pytest.approx(3.5)
    assert delta["over 0.05"] == 7
    assert delta["gc2"] == 3 and delta["gc2 s"] == pytest.approx(0.6)
    assert delta["gc01 s"] == pytest.approx(0.03)
    assert loop_delta({}, {}) == {}
    assert loop_delta({}, stats(1.0, 2, 1, 0.1, 0.02))["gc2"] == 1  # the floor's first file has no "before"
