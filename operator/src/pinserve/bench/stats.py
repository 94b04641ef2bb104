"""Latency statistics: nearest-rank percentiles, withheld when the sample count cannot support them."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cache
from typing import Any

PERCENTILES = (50, 90, 99)
CONFIDENCE = 0.99


@cache
def min_samples_for_percentile(percentile: float, confidence: float = CONFIDENCE) -> int:
    """Fewest samples for which a `percentile` (e.g. 90) latency may be reported.

    This is the floor of MLPerf LoadGen's early-stopping rule for SingleStream (tolerance 0, confidence
    0.99): the smallest n such that, if one of the n queries exceeded the reported value, the chance of
    seeing at most one such query when the true exceedance rate is (1 - p) is at most 1 - confidence:

        P[Binomial(n, 1 - p) <= 1] = p**n + n * (1 - p) * p**(n - 1) <= 1 - confidence

    It gives 11 samples for p50, 64 for p90 and 662 for p99. Below it a run is too short to claim the
    percentile at that confidence, so the report leaves the value out and says why.
    """
    p = percentile / 100.0
    if not 0.0 < p < 1.0:
        raise ValueError(f"percentile must be in (0, 100), got {percentile}")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    allowed = 1.0 - confidence
    # Logs keep p**n from underflowing; the probability falls monotonically in n.
    log_p, log_q = math.log(p), math.log1p(-p)
    n = 2
    while True:
        at_most_one = math.exp(n * log_p) + math.exp(math.log(n) + log_q + (n - 1) * log_p)
        if at_most_one <= allowed:
            return n
        n += 1


def nearest_rank(sorted_values: Sequence[float], percentile: float) -> float:
    """The smallest sample with at least `percentile` % of the samples at or below it."""
    if not sorted_values:
        raise ValueError("no samples")
    rank = max(1, math.ceil(percentile / 100.0 * len(sorted_values)))
    return sorted_values[rank - 1]


@dataclass
class LatencySummary:
    """Milliseconds; a percentile the sample count cannot support is None with a note naming the floor."""

    count: int
    values: dict[str, float | None] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return dict(self.values)


def _ms(seconds: float) -> float:
    # Microsecond resolution is all a millisecond report needs.
    return round(seconds * 1000.0, 3)


def summarize(latencies_s: Sequence[float], label: str) -> LatencySummary:
    """p50/p90/p99, mean, stddev (sample), min and max of latencies given in seconds."""
    count = len(latencies_s)
    summary = LatencySummary(count)
    if count == 0:
        empty: dict[str, float | None] = {f"p{p}": None for p in PERCENTILES}
        summary.values = empty | dict.fromkeys(("mean", "stddev", "min", "max"))
        summary.notes.append(f"{label}: no successful requests, no latency figures")
        return summary
    ordered = sorted(latencies_s)
    for p in PERCENTILES:
        floor = min_samples_for_percentile(p)
        if count >= floor:
            summary.values[f"p{p}"] = _ms(nearest_rank(ordered, p))
        else:
            summary.values[f"p{p}"] = None
            summary.notes.append(
                f"{label}: p{p} not reported: {count} samples, MLPerf's early-stopping rule needs >= {floor}"
            )
    mean = math.fsum(ordered) / count
    variance = math.fsum((x - mean) ** 2 for x in ordered) / (count - 1) if count > 1 else 0.0
    summary.values |= {
        "mean": _ms(mean),
        "stddev": _ms(math.sqrt(variance)),
        "min": _ms(ordered[0]),
        "max": _ms(ordered[-1]),
    }
    return summary
