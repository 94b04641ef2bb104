"""Pure benchmark bookkeeping: when to start a benchmark Job, how to read its report.

One benchmark per spec generation (and per on-demand request, via the annotation
``pinserve.io/benchmark-requested``), started only once the current revision is fully rolled out
(Ready=True).  A generation that changed nothing but spec.replicas (what an HPA writes through the
scale subresource) keeps the figures: status.benchmark.specKey says which spec they measured.
Failed attempts are retried a bounded number of times as new Jobs; the report travels in the
bench container's termination message.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from pinserve.api import ModelServer
from pinserve.render.common import bench_job_name
from pinserve.render.job import LABEL_RUN_KEY, render_bench_job
from pinserve.settings import Settings
from pinserve.status import Condition

ANNOTATION_REQUESTED = "pinserve.io/benchmark-requested"
# Client failures that another attempt cannot fix (the bench client's reasons).
PERMANENT_FAILURES = frozenset({"ModelNotFound", "SignatureNotFound", "InvalidArgument", "InvalidInput", "Usage"})
MAX_MESSAGE = 4096
_LATENCY_KEYS = ("p50", "p90", "p99", "mean", "max", "min", "stddev")


@dataclass(frozen=True)
class BenchEvent:
    type: str
    reason: str
    message: str


@dataclass(frozen=True)
class BenchDecision:
    condition: Condition
    status: dict[str, Any] | None = None  # new status.benchmark, or None to keep it
    apply: list[dict[str, Any]] = field(default_factory=list)
    delete: list[tuple[str, str]] = field(default_factory=list)
    events: list[BenchEvent] = field(default_factory=list)


def run_key(ms: ModelServer) -> str:
    """Identifies one requested benchmark: the generation, plus the on-demand request if any."""
    requested = ms.annotations.get(ANNOTATION_REQUESTED, "")
    if not requested:
        return str(ms.ref.generation)
    return f"{ms.ref.generation}-{hashlib.sha256(requested.encode()).hexdigest()[:6]}"


def spec_key(ms: ModelServer) -> str:
    """What a benchmark measures: the spec without replicas, and the on-demand request if any."""
    spec = {k: v for k, v in ms.spec.to_wire().items() if k != "replicas"}
    data = {"spec": spec, "requested": ms.annotations.get(ANNOTATION_REQUESTED, "")}
    return hashlib.sha256(json.dumps(data, sort_keys=True, separators=(",", ":")).encode()).hexdigest()[:16]


def _job_state(job: Mapping[str, Any]) -> str:
    status = job.get("status") or {}
    for cond in status.get("conditions") or []:
        if cond.get("status") == "True" and cond.get("type") in ("Complete", "Failed"):
            return str(cond["type"])
    if status.get("succeeded"):
        return "Complete"
    if status.get("failed"):
        return "Failed"
    return "Running"


def _has_pod(pods: Sequence[Mapping[str, Any]], job_name: str) -> bool:
    return any(((p.get("metadata") or {}).get("labels") or {}).get("job-name") == job_name for p in pods)


def termination_message(pods: Sequence[Mapping[str, Any]], job_name: str) -> str | None:
    for pod in pods:
        if ((pod.get("metadata") or {}).get("labels") or {}).get("job-name") != job_name:
            continue
        for cs in (pod.get("status") or {}).get("containerStatuses") or []:
            term = (cs.get("state") or {}).get("terminated") or {}
            if term.get("message"):
                return str(term["message"])
    return None


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return round(float(value), 3)


def parse_summary(message: str) -> dict[str, Any]:
    """The bench client's compact JSON summary -> status.benchmark fields; ValueError if malformed."""
    if len(message.encode()) > MAX_MESSAGE:
        raise ValueError(f"report is {len(message.encode())} bytes, over the {MAX_MESSAGE}-byte limit")
    try:
        data = json.loads(message)
    except ValueError as exc:
        raise ValueError(f"report is not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ValueError("report is not a JSON object")
    if isinstance(data.get("error"), dict):
        err = data["error"]
        raise BenchmarkClientError(str(err.get("reason") or "ClientError"), str(err.get("message") or ""))
    latency = data.get("latencyMs")
    if not isinstance(latency, dict):
        raise ValueError("report has no latencyMs object")
    out: dict[str, Any] = {
        "latencyMs": {k: _number(latency.get(k)) for k in _LATENCY_KEYS if _number(latency.get(k)) is not None},
    }
    if isinstance(data.get("requests"), int):
        out["requests"] = data["requests"]
    errors = data.get("errors")
    if isinstance(errors, int):
        out["errors"] = errors
    elif isinstance(errors, dict):
        out["errors"] = sum(v for v in errors.values() if isinstance(v, int))
    tput = data.get("throughput")
    if isinstance(tput, dict):
        out["throughput"] = {
            k: v for k in ("batchSize", "concurrency", "requestsPerSecond", "itemsPerSecond")
            if (v := _number(tput.get(k))) is not None
        }
        for k in ("batchSize", "concurrency"):
            if k in out["throughput"]:
                out["throughput"][k] = int(out["throughput"][k])
    notes = data.get("notes")
    if isinstance(notes, list):
        out["notes"] = [str(n)[:200] for n in notes[:10]]
    return out


class BenchmarkClientError(ValueError):
    def __init__(self, reason: str, message: str) -> None:
        super().__init__(f"{reason}: {message}")
        self.reason = reason
        self.message = message


def _headline(summary: Mapping[str, Any]) -> str:
    lat = summary.get("latencyMs") or {}
    parts = [f"p50 {lat['p50']} ms" if "p50" in lat else "p50 n/a",
             f"p99 {lat['p99']} ms" if "p99" in lat else "p99 n/a (too few samples)"]
    tput = summary.get("throughput") or {}
    if "itemsPerSecond" in tput:
        parts.append(f"{tput['itemsPerSecond']} items/s at batch {tput.get('batchSize')}")
    return ", ".join(parts)


def _cleanup(jobs: Sequence[Mapping[str, Any]], keep: int, current: str) -> list[tuple[str, str]]:
    def created(job: Mapping[str, Any]) -> str:
        return str((job.get("metadata") or {}).get("creationTimestamp") or "")

    finished = [j for j in jobs if _job_state(j) != "Running" and
                ((j.get("metadata") or {}).get("labels") or {}).get(LABEL_RUN_KEY) != current]
    finished.sort(key=created, reverse=True)
    return [("Job", j["metadata"]["name"]) for j in finished[max(keep - 1, 0):]]


def target_pod_ip(server_pods: Sequence[Mapping[str, Any]]) -> str | None:
    """The IP of a ready, running server pod (the first by name), for ``bench_target: pod``."""
    def ready(pod: Mapping[str, Any]) -> bool:
        status = pod.get("status") or {}
        return (status.get("phase") == "Running" and bool(status.get("podIP"))
                and not (pod.get("metadata") or {}).get("deletionTimestamp")
                and any(c.get("type") == "Ready" and c.get("status") == "True" for c in status.get("conditions") or []))

    candidates = sorted((p for p in server_pods if ready(p)), key=lambda p: str(p["metadata"]["name"]))
    return str(candidates[0]["status"]["podIP"]) if candidates else None


def evaluate(
    ms: ModelServer,
    ready: Condition,
    *,
    jobs: Sequence[Mapping[str, Any]],
    current: Mapping[str, Any] | None,
    settings: Settings,
    pods: Sequence[Mapping[str, Any]] = (),
    server_pods: Sequence[Mapping[str, Any]] = (),
) -> BenchDecision:
    bench = ms.spec.benchmark
    if not bench.enabled:
        return BenchDecision(Condition("Benchmarked", "False", "Disabled", "spec.benchmark.enabled is false"))
    key = run_key(ms)
    cleanup = _cleanup(jobs, settings.keep_bench_jobs, key)
    if current and (current.get("runKey") == key or current.get("specKey") == spec_key(ms)):
        done = "error" not in current
        return BenchDecision(
            Condition("Benchmarked", "True" if done else "False",
                      "Measured" if done else str(current.get("error", {}).get("reason", "Failed")),
                      _headline(current) if done else str(current.get("error", {}).get("message", ""))),
            delete=cleanup,
        )
    if ms.spec.replicas == 0:
        # Nothing serves behind the Service: a Job would only fail and use up the retries.
        return BenchDecision(Condition("Benchmarked", "Unknown", "ScaledToZero",
                                       "the benchmark runs once spec.replicas is above 0"), delete=cleanup)
    if ready.status != "True":
        # Ready=True only once the current revision is fully rolled out: never measure a mix of revisions.
        return BenchDecision(Condition("Benchmarked", "Unknown", "WaitingForReady",
                                       "the benchmark runs once the current revision is rolled out and Ready"),
                             delete=cleanup)
    mine = sorted(
        (j for j in jobs if ((j.get("metadata") or {}).get("labels") or {}).get(LABEL_RUN_KEY) == key),
        key=lambda j: str(j["metadata"]["name"]),
    )
    attempt = len(mine)
    target_host: str | None = None
    if settings.bench_target == "pod":
        target_host = target_pod_ip(server_pods)
        if target_host is None and (not mine or _job_state(mine[-1]) != "Running"):
            return BenchDecision(Condition("Benchmarked", "Unknown", "WaitingForServerPod",
                                           "the benchmark targets a ready server pod by IP; none has one yet"),
                                 delete=cleanup)
    if not mine:
        job = render_bench_job(ms, settings, bench_job_name(ms, key), key, target_host)
        return BenchDecision(Condition("Benchmarked", "Unknown", "Running", f"started {job['metadata']['name']}"),
                             apply=[job], delete=cleanup)
    last = mine[-1]
    name = str(last["metadata"]["name"])
    state = _job_state(last)
    if state == "Running":
        return BenchDecision(Condition("Benchmarked", "Unknown", "Running", f"job {name} is running"),
                             apply=[], delete=cleanup)
    message = termination_message(pods, name)
    if message is None and not _has_pod(pods, name):
        # The Job's status can arrive before its pod's: wait for the pod and its report.
        return BenchDecision(Condition("Benchmarked", "Unknown", "Running", f"job {name} finished; reading its report"),
                             delete=cleanup)
    base = {"generation": ms.ref.generation, "runKey": key, "specKey": spec_key(ms), "jobName": name,
            "completedAt": _completed_at(last), "protocol": bench.protocol}
    try:
        if message is None:
            raise BenchmarkClientError("NoReport", f"job {name} ended without a report in its termination message")
        summary = parse_summary(message)
        if state != "Complete":
            raise BenchmarkClientError("BenchmarkFailed", f"job {name} failed")
    except BenchmarkClientError as exc:
        if attempt <= settings.bench_retries and exc.reason not in PERMANENT_FAILURES:
            job = render_bench_job(ms, settings, bench_job_name(ms, key, attempt), key, target_host)
            return BenchDecision(
                Condition("Benchmarked", "Unknown", "Retrying",
                          f"attempt {attempt} failed ({exc.reason}: {exc.message}); started {job['metadata']['name']}"),
                apply=[job], delete=cleanup)
        status = {**base, "error": {"reason": exc.reason, "message": exc.message[:500]}}
        return BenchDecision(Condition("Benchmarked", "False", exc.reason, exc.message[:1000]), status=status,
                             delete=cleanup)
    except ValueError as exc:
        status = {**base, "error": {"reason": "BadReport", "message": str(exc)[:500]}}
        return BenchDecision(Condition("Benchmarked", "False", "BadReport", str(exc)[:1000]), status=status,
                             delete=cleanup)
    status = {**base, **summary}
    headline = _headline(summary)
    return BenchDecision(Condition("Benchmarked", "True", "Measured", headline), status=status,
                         delete=cleanup, events=[BenchEvent("Normal", "BenchmarkCompleted", headline)])


def _completed_at(job: Mapping[str, Any]) -> str:
    status = job.get("status") or {}
    for cond in status.get("conditions") or []:
        if cond.get("type") in ("Complete", "Failed") and cond.get("lastTransitionTime"):
            return str(cond["lastTransitionTime"])
    return str(status.get("completionTime") or "")
