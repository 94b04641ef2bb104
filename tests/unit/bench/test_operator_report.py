"""The operator benchmark's table: every figure of every column, the floor ratios, '-' where a column has none."""

from __future__ import annotations

import argparse
from collections import Counter

import pytest

from tools.operator_report import Result, percentile, report

pytestmark = pytest.mark.unit


def column(label: str, latencies: list[float], **extra: object) -> Result:
    result = Result(label, f"namespace {label}", latencies=latencies, per_create=Counter({"PATCH": 300}),
                    cpu_s=6.0, rss_start=80, rss_end=100, rss_idle=99, cluster_cores=0.2, converged_s=12)
    for name, value in extra.items():
        setattr(result, name, value)
    return result


def test_percentile_is_nearest_rank_and_nan_when_empty() -> None:
    assert percentile([5.0, 1.0, 3.0], 0.5) == 3.0
    assert percentile([5.0, 1.0, 3.0], 0.99) == 5.0
    assert percentile([], 0.5) != percentile([], 0.5)


def test_the_table_compares_with_the_floor_and_marks_what_a_column_lacks() -> None:
    loop = {"lag_seconds": 2.5, "over 0.05": 7, "over 0.25": 1, "over 1": 0, "gc2": 3, "gc2 s": 0.21, "gc01 s": 0.5}
    timings = {"wait first": {"count": 100, "p50": 0.004, "p99": 0.2},
               "reconcile": {"count": 900, "p50": 0.012, "p99": 0.3}}
    pinserve = column("pinserve", [30.0, 60.0, 90.0], reconciles=850, triggers=Counter({"Pod": 300}),
                      loop=loop, timings=timings, cached={"Deployment": 100})
    noisy = column("+5000 pods", [40.0, 80.0, 120.0], rss_start=81, rss_end=104)
    floor = column("kopf floor", [20.0, 40.0, 60.0], per_create_own=Counter({"PATCH": 300}))
    text = report([pinserve, noisy, floor], argparse.Namespace(modelservers=100, idle=5.0))
    header = text.splitlines()[0]
    assert header.split() == ["pinserve", "+5000", "pods", "kopf", "floor"]
    table = text.splitlines()
    line = next(t for t in table if t.strip().startswith("p50 / floor p50"))
    assert line.split()[-3:] == ["1.50x", "2.00x", "1.00x"]
    line = next(t for t in table if t.strip().startswith("p99 / floor p99"))
    assert line.split()[-3:] == ["1.50x", "2.00x", "1.00x"]
    line = next(t for t in table if t.strip().startswith("wait first p50 / p99"))
    assert line.split()[-5:] == ["4", "/", "200", "-", "-"]
    line = next(t for t in table if t.strip().startswith("wait again p50 / p99"))
    assert line.split()[-3:] == ["-", "-", "-"]
    line = next(t for t in table if t.strip().startswith("GC gen 2"))
    assert "3, 0.21 (0.50)" in line
    line = next(t for t in table if t.strip().startswith("RSS added by unrelated pods"))
    assert "+1 before creates, +4 converged" in line
    line = next(t for t in table if t.strip().startswith("operator CPU per create"))
    assert line.split()[-3:] == ["60.0", "60.0", "60.0"]
