"""Percentiles and the MLPerf sample-count rule."""

from __future__ import annotations

import math
import statistics

import pytest

from pinserve.bench.stats import min_samples_for_percentile, nearest_rank, summarize

pytestmark = pytest.mark.unit


def _at_most_one_exceeds(n: int, p: float) -> float:
    """P[Binomial(n, 1 - p) <= 1], computed directly as the rule's definition."""
    return sum(math.comb(n, k) * (1 - p) ** k * p ** (n - k) for k in range(2))


@pytest.mark.parametrize(("percentile", "floor"), [(50, 11), (90, 64), (99, 662)])
def test_mlperf_floors(percentile: int, floor: int) -> None:
    assert min_samples_for_percentile(percentile) == floor


@pytest.mark.parametrize("percentile", [50, 75, 90, 95, 99, 99.9])
def test_floor_is_the_smallest_count_meeting_the_confidence(percentile: float) -> None:
    n = min_samples_for_percentile(percentile)
    p = percentile / 100
    assert _at_most_one_exceeds(n, p) <= 0.01 < _at_most_one_exceeds(n - 1, p)


@pytest.mark.parametrize("bad", [0, 100, -5, 150])
def test_rule_rejects_nonsense(bad: float) -> None:
    with pytest.raises(ValueError, match="percentile"):
        min_samples_for_percentile(bad)


def test_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert nearest_rank(values, 50) == 50.0
    assert nearest_rank(values, 90) == 90.0
    assert nearest_rank(values, 99) == 99.0
    assert nearest_rank([7.0], 99) == 7.0
    with pytest.raises(ValueError, match="no samples"):
        nearest_rank([], 50)


def test_summary_withholds_what_the_count_cannot_support() -> None:
    samples = [0.001 * (i % 10 + 1) for i in range(100)]  # 1..10 ms
    s = summarize(samples, "latency")
    assert s.count == 100
    assert s.values["p50"] == 5.0
    assert s.values["p90"] == 9.0
    assert s.values["p99"] is None
    assert any("p99" in n and "662" in n and "100 samples" in n for n in s.notes)
    assert s.values["mean"] == pytest.approx(5.5)
    assert s.values["stddev"] == pytest.approx(statistics.stdev(v * 1000 for v in samples), abs=1e-3)
    assert (s.values["min"], s.values["max"]) == (1.0, 10.0)


def test_summary_reports_all_percentiles_with_enough_samples() -> None:
    s = summarize([0.002] * 662, "latency")
    assert s.values["p99"] == 2.0
    assert s.notes == []


def test_summary_of_nothing() -> None:
    s = summarize([], "throughput")
    assert all(v is None for v in s.values.values())
    assert set(s.values) == {"p50", "p90", "p99", "mean", "stddev", "min", "max"}
    assert s.notes


def test_few_samples_hide_even_the_median() -> None:
    s = summarize([0.001] * 10, "latency")
    assert s.values["p50"] is None
    assert s.values["mean"] == 1.0
