"""The operator's Prometheus metrics: a text exposition (format 0.0.4) served by a small aiohttp app.

Counters the operator keeps anyway (reconciles, API requests by verb, errors by reason) are read at scrape
time; the reconcile latency is a histogram filled by ``observe_reconcile``. No client library: the format is
a few lines of text, and the operator image stays as it is.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

from aiohttp import web

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
# Seconds: a reconcile that writes nothing takes milliseconds; one that applies a few objects, tens to hundreds.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


@dataclass
class Histogram:
    buckets: tuple[float, ...] = LATENCY_BUCKETS
    counts: list[int] = field(default_factory=list)
    total: float = 0.0
    count: int = 0

    def __post_init__(self) -> None:
        self.counts = [0] * len(self.buckets)

    def observe(self, value: float) -> None:
        self.total += value
        self.count += 1
        for i, bound in enumerate(self.buckets):
            if value <= bound:
                self.counts[i] += 1

    def quantile(self, q: float) -> float:
        """An estimate of the ``q`` quantile as Prometheus' histogram_quantile makes it: linear within the bucket
        it falls in; beyond the last bound, that bound; NaN when empty."""
        if not 0 <= q <= 1:
            raise ValueError(f"a quantile is between 0 and 1, not {q}")
        if self.count == 0:
            return math.nan
        rank = q * self.count
        below, lower = 0, 0.0
        for bound, cumulative in zip(self.buckets, self.counts, strict=True):
            if cumulative >= rank:
                inside = cumulative - below
                return lower + (bound - lower) * ((rank - below) / inside if inside else 1.0)
            below, lower = cumulative, bound
        return self.buckets[-1]


@dataclass
class Sample:
    """What one scrape shows; every field read from the operator's own state."""

    reconciles: Mapping[str, int]  # result -> count
    errors: Mapping[str, int]  # reason -> count
    requests: Mapping[str, int]  # verb -> count
    triggers: Mapping[str, int]  # source (ModelServer, a child kind, Node, timer, resync, leader) -> count
    latency: Histogram
    queue_active: int
    queue_scheduled: int
    modelservers: int
    leader: bool
    # how long a triggered ModelServer waited for its run: "first" (never reconciled yet), "again" (re-runs)
    queue_wait: Mapping[str, Histogram] = field(default_factory=dict)
    loop_lag: Histogram | None = None  # how late the event loop's probe woke (pinserve.loopwatch)
    gc_collections: Mapping[str, int] = field(default_factory=dict)  # generation -> collections
    gc_seconds: Mapping[str, float] = field(default_factory=dict)  # generation -> seconds the collector ran


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _number(value: float) -> str:
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value)) if not float(value).is_integer() else str(int(value))


def _family(name: str, kind: str, help_text: str, samples: Iterable[tuple[str, Mapping[str, str], float]]) -> list[str]:
    lines = [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}"]
    for suffix, labels, value in samples:
        rendered = ",".join(f'{k}="{_escape(v)}"' for k, v in sorted(labels.items()))
        where = f"{{{rendered}}}" if rendered else ""
        lines.append(f"{name}{suffix}{where} {_number(value)}")
    return lines


def _labelled(label: str, counts: Mapping[str, int]) -> list[tuple[str, Mapping[str, str], float]]:
    return [("", {label: key}, float(value)) for key, value in sorted(counts.items())]


def _histogram(h: Histogram, labels: Mapping[str, str] | None = None) -> list[tuple[str, Mapping[str, str], float]]:
    on = dict(labels or {})
    cumulative: list[tuple[str, Mapping[str, str], float]] = [
        ("_bucket", {**on, "le": _number(b)}, float(count)) for b, count in zip(h.buckets, h.counts, strict=True)
    ]
    return [*cumulative, ("_bucket", {**on, "le": "+Inf"}, float(h.count)), ("_sum", on, h.total),
            ("_count", on, float(h.count))]


def _loop(sample: Sample) -> list[str]:
    lines: list[str] = []
    if sample.loop_lag is not None:
        lines += _family("pinserve_event_loop_lag_seconds", "histogram",
                         "How late a timer of the operator's event loop fired (probed every 0.1 s): the time any "
                         "event waits before the operator can look at it.", _histogram(sample.loop_lag))
    if sample.gc_collections:
        lines += _family("pinserve_gc_collections_total", "counter",
                         "Collections of Python's cyclic garbage collector by generation.",
                         _labelled("generation", sample.gc_collections))
        lines += _family("pinserve_gc_pause_seconds_total", "counter",
                         "Seconds the garbage collector stopped the operator, by generation.",
                         [("", {"generation": g}, float(v)) for g, v in sorted(sample.gc_seconds.items())])
    return lines


def exposition(sample: Sample) -> str:
    """The Prometheus text format of one sample."""
    buckets = _histogram(sample.latency)
    lines = [
        *_family("pinserve_reconciles_total", "counter",
                 "Reconciles of a ModelServer by result (ok, or error: Ready=False for a reason the operator met).",
                 _labelled("result", sample.reconciles)),
        *_family("pinserve_reconcile_errors_total", "counter",
                 "Reconciles that ended in an error, by reason (ApiError, ApplyFailed, NameConflict, Exception).",
                 _labelled("reason", sample.errors)),
        *_family("pinserve_reconcile_triggers_total", "counter",
                 "What set reconciles off: the ModelServer's events (not our own status write coming back), a child "
                 "kind's, a node's, a timed requeue, the periodic resync, becoming leader. Triggers coalesce.",
                 _labelled("source", sample.triggers)),
        *_family("pinserve_reconcile_duration_seconds", "histogram",
                 "Time of one reconcile: plan, render, apply, status and events.", buckets),
        *_family("pinserve_workqueue_depth", "gauge",
                 "ModelServers queued or being reconciled now.", [("", {}, float(sample.queue_active))]),
        *_family("pinserve_workqueue_queue_duration_seconds", "histogram",
                 "How long a triggered ModelServer waited before its reconcile started, by run: first (a ModelServer "
                 "not reconciled yet, served first) or again.",
                 [row for run, h in sorted(sample.queue_wait.items()) for row in _histogram(h, {"run": run})]),
        *_family("pinserve_workqueue_scheduled", "gauge",
                 "ModelServers waiting for a timed requeue (a bounded wait or an API error's backoff).",
                 [("", {}, float(sample.queue_scheduled))]),
        *_family("pinserve_api_requests_total", "counter",
                 "Requests of the operator's own API client by verb (GET, POST, PATCH, DELETE, WATCH).",
                 _labelled("verb", sample.requests)),
        *_family("pinserve_modelservers", "gauge", "ModelServers the operator knows.",
                 [("", {}, float(sample.modelservers))]),
        *_family("pinserve_leader", "gauge",
                 "1 when this replica is the one that reconciles (kopf peering), 0 while it waits.",
                 [("", {}, 1.0 if sample.leader else 0.0)]),
        *_loop(sample),
    ]
    return "\n".join(lines) + "\n"


def app(sample: Callable[[], Sample]) -> web.Application:
    async def metrics(_: web.Request) -> web.Response:
        return web.Response(body=exposition(sample()).encode(), headers={"Content-Type": CONTENT_TYPE})

    application = web.Application()
    application.router.add_get("/metrics", metrics)
    return application


async def serve(sample: Callable[[], Sample], host: str, port: int) -> web.AppRunner:
    """Start the endpoint (``http://host:port/metrics``); the caller cleans the runner up."""
    runner = web.AppRunner(app(sample), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    return runner


def counts(counter: Counter[str] | Mapping[str, int]) -> dict[str, int]:
    return {key: int(value) for key, value in counter.items()}
