"""The full report's summary fields and the compact summary's 4 KiB bound."""

from __future__ import annotations

import collections
import json
from typing import Any

import pytest

from pinserve.bench.errors import ModelNotFoundError
from pinserve.bench.report import SUMMARY_LIMIT, compact_summary, error_report, throughput_section
from pinserve.bench.runner import ThroughputRun

pytestmark = pytest.mark.unit


def _report(codes: dict[str, int], notes: list[str]) -> dict[str, Any]:
    run = ThroughputRun(8, 4, [0.01] * 1000, collections.Counter(codes), 10.0, 0.5)
    section, section_notes = throughput_section(run, 8)
    return {
        "completedAt": "2024-01-01T00:00:00Z",
        "model": "rfcn",
        "signature": "serving_default",
        "protocol": "grpc",
        "latencyMs": {"p50": 1.0, "p90": 2.0, "p99": None, "mean": 1.2, "stddev": 0.1, "min": 0.9, "max": 5.0},
        "requests": 200,
        "throughput": section,
        "errors": section["errors"],
        "errorsByCode": dict(codes),
        "notes": notes + section_notes,
    }


def test_throughput_section_figures() -> None:
    run = ThroughputRun(
        8, 4, [0.01] * 1000, collections.Counter({"UNAVAILABLE": 10}), 10.0, 0.505, {"UNAVAILABLE": "refused"}
    )
    section, notes = throughput_section(run, 8)
    assert notes == ["throughput: 10 request(s) failed with UNAVAILABLE, first: refused"]
    assert section["requestsPerSecond"] == 100.0
    assert section["itemsPerSecond"] == 800.0
    assert section["errors"] == 10
    assert section["clientCpuMicrosPerRequest"] == 500.0
    assert section["latencyMs"]["p50"] == 10.0


def test_summary_carries_the_status_fields() -> None:
    summary = json.loads(compact_summary(_report({}, ["latency: p99 not reported"])))
    assert summary["latencyMs"] == {
        "p50": 1.0, "p90": 2.0, "p99": None, "mean": 1.2, "max": 5.0, "min": 0.9, "stddev": 0.1
    }  # fmt: skip
    assert summary["requests"] == 200
    assert summary["throughput"]["batchSize"] == 8
    assert summary["throughput"]["concurrency"] == 4
    assert summary["throughput"]["requestsPerSecond"] == 100.0
    assert summary["throughput"]["itemsPerSecond"] == 800.0
    assert summary["errors"] == 0
    assert summary["notes"] == ["latency: p99 not reported"]


def test_summary_fits_with_many_error_codes_and_notes() -> None:
    codes = {f"HTTP_{500 + i}_SOME_VERY_LONG_REASON_PHRASE_{i}": i + 1 for i in range(400)}
    notes = [f"note {i}: " + "x" * 500 for i in range(50)]
    report = _report(codes, notes)
    report["error"] = {"reason": "RequestErrors", "message": "m" * 20000}
    encoded = compact_summary(report)
    assert len(encoded) <= SUMMARY_LIMIT
    summary = json.loads(encoded)
    # The figures survive and the error counts still add up.
    assert summary["latencyMs"]["p50"] == 1.0
    assert summary["throughput"]["requestsPerSecond"] == 100.0
    assert summary["errors"] == sum(codes.values())
    if "errorsByCode" in summary:
        assert sum(summary["errorsByCode"].values()) == sum(codes.values())
        assert "OTHER" in summary["errorsByCode"]
        # The most frequent codes are the ones kept by name.
        assert "HTTP_899_SOME_VERY_LONG_REASON_PHRASE_399" in summary["errorsByCode"]
    assert summary["error"]["reason"] == "RequestErrors"


@pytest.mark.parametrize("count", [1, 10, 100, 1000, 5000])
def test_summary_bound_over_error_code_counts(count: int) -> None:
    codes = {f"CODE_{i:05d}": 1 for i in range(count)}
    assert len(compact_summary(_report(codes, []))) <= SUMMARY_LIMIT


def test_error_summary_shape() -> None:
    report = error_report(ModelNotFoundError("model 'x' not found"), {"model": "x"})
    summary = json.loads(compact_summary(report))
    assert summary["error"] == {"reason": "ModelNotFound", "message": "model 'x' not found"}
    assert summary["model"] == "x"
    assert "latencyMs" not in summary
