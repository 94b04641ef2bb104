"""The operator's Prometheus exposition: text format 0.0.4, parsed back by a strict reader."""

from __future__ import annotations

import asyncio
import re
import socket

import aiohttp
import pytest

from pinserve.metrics import CONTENT_TYPE, Histogram, Sample, exposition, serve

pytestmark = pytest.mark.unit

LINE = re.compile(r'^([a-z_:][a-z0-9_:]*)(\{([a-z_]+="(?:[^"\\]|\\.)*"(,[a-z_]+="(?:[^"\\]|\\.)*")*)?\})? (\S+)$')


def parse(text: str) -> dict[str, float]:
    """series (name{labels}) -> value; every line a comment, HELP/TYPE, or a well-formed sample."""
    assert text.endswith("\n")
    series: dict[str, float] = {}
    types: dict[str, str] = {}
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ")
            assert kind in {"counter", "gauge", "histogram"}
            types[name] = kind
            continue
        if line.startswith("# HELP "):
            continue
        match = LINE.match(line)
        assert match, line
        name = match.group(1)
        assert any(name == t or name.startswith(t + "_") for t in types), f"{name} has no TYPE"
        key = f"{name}{{{match.group(3)}}}" if match.group(3) else name
        assert key not in series, f"duplicate series {key}"
        series[key] = float(match.group(5).replace("+Inf", "inf"))
    return series


def sample(**over: object) -> Sample:
    latency = Histogram()
    for value in (0.003, 0.02, 0.02, 0.7, 45.0):
        latency.observe(value)
    fields: dict[str, object] = {
        "reconciles": {"ok": 4, "error": 1}, "errors": {"ApiError": 1},
        "requests": {"GET": 3, "PATCH": 7, "WATCH": 2}, "latency": latency,
        "triggers": {"ModelServer": 3, "Pod": 9, "timer": 1},
        "queue_active": 2, "queue_scheduled": 1, "modelservers": 5, "leader": True,
    }
    fields.update(over)
    return Sample(**fields)  # type: ignore[arg-type]


def test_exposition_has_every_family() -> None:
    series = parse(exposition(sample()))
    assert series['pinserve_reconciles_total{result="ok"}'] == 4
    assert series['pinserve_reconciles_total{result="error"}'] == 1
    assert series['pinserve_reconcile_errors_total{reason="ApiError"}'] == 1
    assert series['pinserve_api_requests_total{verb="PATCH"}'] == 7
    assert series['pinserve_reconcile_triggers_total{source="Pod"}'] == 9
    assert series['pinserve_reconcile_triggers_total{source="timer"}'] == 1
    assert series["pinserve_workqueue_depth"] == 2
    assert series["pinserve_workqueue_scheduled"] == 1
    assert series["pinserve_modelservers"] == 5
    assert series["pinserve_leader"] == 1


def test_histogram_buckets_are_cumulative() -> None:
    series = parse(exposition(sample()))
    assert series['pinserve_reconcile_duration_seconds_bucket{le="0.005"}'] == 1
    assert series['pinserve_reconcile_duration_seconds_bucket{le="0.025"}'] == 3
    assert series['pinserve_reconcile_duration_seconds_bucket{le="1"}'] == 4
    assert series['pinserve_reconcile_duration_seconds_bucket{le="30"}'] == 4
    assert series['pinserve_reconcile_duration_seconds_bucket{le="+Inf"}'] == 5
    assert series["pinserve_reconcile_duration_seconds_count"] == 5
    assert series["pinserve_reconcile_duration_seconds_sum"] == pytest.approx(45.743)
    buckets = [v for k, v in series.items() if k.startswith("pinserve_reconcile_duration_seconds_bucket")]
    assert buckets == sorted(buckets)


def test_label_values_are_escaped_and_a_follower_says_so() -> None:
    series = parse(exposition(sample(errors={'odd "reason"\\x\n': 2}, leader=False, reconciles={})))
    assert series['pinserve_reconcile_errors_total{reason="odd \\"reason\\"\\\\x\\n"}'] == 2
    assert series["pinserve_leader"] == 0
    assert not any(k.startswith("pinserve_reconciles_total") for k in series)


def test_served_over_http() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]

    async def scrape() -> tuple[str, str]:
        runner = await serve(sample, "127.0.0.1", port)
        try:
            async with aiohttp.ClientSession() as session, session.get(f"http://127.0.0.1:{port}/metrics") as resp:
                assert resp.status == 200
                return resp.headers["Content-Type"], await resp.text()
        finally:
            await runner.cleanup()

    content_type, text = asyncio.run(scrape())
    assert content_type == CONTENT_TYPE
    assert parse(text)["pinserve_leader"] == 1


@pytest.mark.parametrize(("values", "q", "expected"), [
    ([], 0.5, None),
    ([0.003] * 4, 0.5, 0.0025),  # all in the first bucket (0, 0.005]: linear within it
    ([0.003, 0.02, 0.02, 0.7], 0.5, 0.0175),  # rank 2 is the first of the 2 in (0.01, 0.025]: halfway
    ([0.003, 0.02, 0.02, 0.7], 1.0, 1.0),
    ([45.0, 50.0], 0.99, 30.0),  # beyond the last bound: that bound, as Prometheus does
])
def test_histogram_quantiles_interpolate_within_buckets(values: list[float], q: float, expected: float | None) -> None:
    h = Histogram()
    for value in values:
        h.observe(value)
    if expected is None:
        assert h.quantile(q) != h.quantile(q)  # NaN
    else:
        assert h.quantile(q) == pytest.approx(expected)


def test_a_quantile_outside_0_1_is_refused() -> None:
    with pytest.raises(ValueError, match="between 0 and 1"):
        Histogram().quantile(1.5)


def test_queue_waits_are_one_histogram_per_run() -> None:
    first, again = Histogram(), Histogram()
    first.observe(0.02)
    again.observe(0.3)
    again.observe(0.4)
    series = parse(exposition(sample(queue_wait={"first": first, "again": again})))
    assert series['pinserve_workqueue_queue_duration_seconds_count{run="first"}'] == 1
    assert series['pinserve_workqueue_queue_duration_seconds_count{run="again"}'] == 2
    assert series['pinserve_workqueue_queue_duration_seconds_bucket{le="0.25",run="again"}'] == 0
    assert series['pinserve_workqueue_queue_duration_seconds_bucket{le="+Inf",run="again"}'] == 2
