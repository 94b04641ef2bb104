"""Pure benchmark bookkeeping: when to start a benchmark Job, how to read its report.

One benchmark per spec generation (and per on-demand request, via the annotation
``pinserve.io/benchmark-requested``), started only once the current revision is fully rolled out
(Ready=True).  A generation that changed nothing but spec.replicas (what an HPA writes through the
scale subresource) keeps the figures: status.benchmark.specKey says which spec they measured.
Failed attempts are retried a bounded number of times as new Jobs; the report travels in the
bench container's termination message.

Every wait is bounded, against ``now`` (passed in: nothing here reads a clock):

- the client's pod Pending as Unschedulable longer than ``settings.bench_unschedulable_seconds``:
  ``ClientUnschedulable`` (the Job is deleted; not retried: another attempt needs the same CPUs);
- the Job past its activeDeadlineSeconds (Failed, reason DeadlineExceeded): ``TimedOut``;
- a finished Job whose report does not arrive (its pod gone, or never terminated) within
  ``settings.bench_report_grace_seconds``: ``NoReport``.

Retry policy: ``TimedOut``, ``NoReport``, ``BenchmarkFailed`` and the client's transient reasons
(``Unavailable``, ...) start a new Job, at most ``settings.bench_retries`` times per run;
``ClientUnschedulable``, ``BadReport`` and the client's permanent reasons (PERMANENT_FAILURES) are
reported at once. The result stands for the run: a new spec generation (one that changes more than
spec.replicas) or a new ``pinserve.io/benchmark-requested`` value starts over.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from pinserve.api import ModelServer
from pinserve.render.common import bench_job_name
from pinserve.render.job import LABEL_RUN_KEY, render_bench_job
from pinserve.render.trial import ANNOTATION_TUNED
from pinserve.settings import Settings
from pinserve.status import Condition

ANNOTATION_REQUESTED = "pinserve.io/benchmark-requested"
# On a retry's Job: why the attempt before it failed (the condition says so while the retry runs).
ANNOTATION_PREVIOUS = "pinserve.io/benchmark-previous-attempt"
# Client failures that another attempt cannot fix (the bench client's reasons).
PERMANENT_FAILURES = frozenset({"ModelNotFound", "SignatureNotFound", "InvalidArgument", "InvalidInput", "Usage"})
# ...and the operator's own: another Job would wait for the same CPUs.
NOT_RETRIED = PERMANENT_FAILURES | {"ClientUnschedulable"}
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
    recheck_after: float | None = None  # seconds until a bound on a wait runs out: reconcile again then


def run_key(ms: ModelServer) -> str:
    """Identifies one requested benchmark: the generation, plus the on-demand request and the applied tuning
    winner (pinserve.tuneflow: a tuned Deployment is measured again) if any."""
    requested = ms.annotations.get(ANNOTATION_REQUESTED, "")
    tuned = ms.annotations.get(ANNOTATION_TUNED, "")
    if not requested and not tuned:
        return str(ms.ref.generation)
    extra = requested if not tuned else f"{requested}|tuned={tuned}"
    return f"{ms.ref.generation}-{hashlib.sha256(extra.encode()).hexdigest()[:6]}"


def spec_key(ms: ModelServer) -> str:
    """What a benchmark measures: the spec without replicas and tuning, and the on-demand request if any."""
    spec = {k: v for k, v in ms.spec.to_wire().items() if k not in ("replicas", "tuning")}
    data = {"spec": spec, "requested": ms.annotations.get(ANNOTATION_REQUESTED, "")}
    if ms.annotations.get(ANNOTATION_TUNED):
        data["tuned"] = ms.annotations[ANNOTATION_TUNED]
    return hashlib.sha256(json.dumps(data, sort_keys=True, separators=(",", ":")).encode()).hexdigest()[:16]


def job_state(job: Mapping[str, Any]) -> str:
    status = job.get("status") or {}
    for cond in status.get("conditions") or []:
        if cond.get("status") == "True" and cond.get("type") in ("Complete", "Failed"):
            return str(cond["type"])
    if status.get("succeeded"):
        return "Complete"
    if status.get("failed"):
        return "Failed"
    return "Running"


def _job_failure_reason(job: Mapping[str, Any]) -> str:
    for cond in (job.get("status") or {}).get("conditions") or []:
        if cond.get("type") == "Failed" and cond.get("status") == "True":
            return str(cond.get("reason") or "")
    return ""


def _pods_of(pods: Sequence[Mapping[str, Any]], job_name: str) -> list[Mapping[str, Any]]:
    mine = [p for p in pods if ((p.get("metadata") or {}).get("labels") or {}).get("job-name") == job_name]
    return sorted(mine, key=lambda p: str((p.get("metadata") or {}).get("creationTimestamp") or ""))


def parse_time(text: Any) -> dt.datetime | None:
    """An RFC 3339 timestamp as the API server writes it, or None."""
    if not isinstance(text, str) or not text:
        return None
    try:
        when = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return when if when.tzinfo else when.replace(tzinfo=dt.UTC)


def _seconds_since(start: Any, now: dt.datetime | None) -> float | None:
    begun = parse_time(start)
    return None if begun is None or now is None else max((now - begun).total_seconds(), 0.0)


def _unschedulable(pod: Mapping[str, Any]) -> Mapping[str, Any] | None:
    """The PodScheduled=False condition of a Pending pod the scheduler cannot place, or None."""
    status = pod.get("status") or {}
    if status.get("phase") not in (None, "Pending") or (pod.get("metadata") or {}).get("deletionTimestamp"):
        return None
    for cond in status.get("conditions") or []:
        if cond.get("type") == "PodScheduled" and cond.get("status") == "False" \
                and cond.get("reason") in (None, "Unschedulable"):
            return dict(cond)
    return None


def _waiting(pod: Mapping[str, Any]) -> str:
    """Why the client's container is not running yet (ErrImagePull, ...), or ''."""
    for cs in (pod.get("status") or {}).get("containerStatuses") or []:
        waiting = (cs.get("state") or {}).get("waiting") or {}
        if waiting.get("reason") and waiting["reason"] != "ContainerCreating":
            return f"{waiting['reason']}: {waiting.get('message') or ''}".strip(": ")
    return ""


def _terminated(pod: Mapping[str, Any]) -> bool:
    status = pod.get("status") or {}
    return status.get("phase") in ("Succeeded", "Failed") or any(
        (cs.get("state") or {}).get("terminated") for cs in status.get("containerStatuses") or [])


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

    finished = [j for j in jobs if job_state(j) != "Running" and
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
    now: str,
    pods: Sequence[Mapping[str, Any]] = (),
    server_pods: Sequence[Mapping[str, Any]] = (),
    threads_per_core: int = 1,
    hold: str | None = None,
) -> BenchDecision:
    """What to do about the benchmark of this run; ``now`` (RFC 3339) bounds the waits.

    ``threads_per_core`` is the placement's: the client's whole cores are CPUs in that multiple; ``hold`` (why)
    keeps a new benchmark from starting, e.g. while a tuning run is in progress."""
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
    started = any(((j.get("metadata") or {}).get("labels") or {}).get(LABEL_RUN_KEY) == key for j in jobs)
    if hold and not started:
        # A tuning run is in progress (pinserve.tuneflow): measure what it settles on, and not beside a trial.
        # A Job already started runs its course (its own bounds apply).
        return BenchDecision(Condition("Benchmarked", "Unknown", "WaitingForTuning", hold), delete=cleanup)
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
        if target_host is None and (not mine or job_state(mine[-1]) != "Running"):
            return BenchDecision(Condition("Benchmarked", "Unknown", "WaitingForServerPod",
                                           "the benchmark targets a ready server pod by IP; none has one yet"),
                                 delete=cleanup)
    if not mine:
        job = render_bench_job(ms, settings, bench_job_name(ms, key), key, target_host,
                               threads_per_core=threads_per_core)
        return BenchDecision(Condition("Benchmarked", "Unknown", "Running", f"started {job['metadata']['name']}"),
                             apply=[job], delete=cleanup)
    last = mine[-1]
    name = str(last["metadata"]["name"])
    state = job_state(last)
    moment = parse_time(now)
    job_pods = _pods_of(pods, name)
    base = {"generation": ms.ref.generation, "runKey": key, "specKey": spec_key(ms), "jobName": name,
            "completedAt": _completed_at(last) or now, "protocol": bench.protocol}

    def failed(reason: str, message: str, *, delete: Sequence[tuple[str, str]] = ()) -> BenchDecision:
        if attempt <= settings.bench_retries and reason not in NOT_RETRIED:
            job = render_bench_job(ms, settings, bench_job_name(ms, key, attempt), key, target_host,
                                   threads_per_core=threads_per_core)
            job["metadata"].setdefault("annotations", {})[ANNOTATION_PREVIOUS] = f"{reason}: {message}"[:500]
            return BenchDecision(
                Condition("Benchmarked", "Unknown", "Retrying",
                          f"attempt {attempt} failed ({reason}: {message}); started {job['metadata']['name']}"),
                apply=[job], delete=[*cleanup, *delete])
        status = {**base, "error": {"reason": reason, "message": message[:500]}}
        return BenchDecision(Condition("Benchmarked", "False", reason, message[:1000]), status=status,
                             delete=[*cleanup, *delete])

    if state == "Running":
        pod = job_pods[-1] if job_pods else None
        pending = _unschedulable(pod) if pod is not None else None
        if pod is not None and pending is not None:
            pod_name = pod["metadata"]["name"]
            bound = settings.bench_unschedulable_seconds
            since = pending.get("lastTransitionTime") or pod["metadata"].get("creationTimestamp")
            waited = _seconds_since(since, moment)
            why = str(pending.get("message") or "the scheduler has no node for it")
            if waited is not None and waited >= bound:
                return failed("ClientUnschedulable",
                              f"the benchmark client's pod {pod_name} could not be scheduled for {bound}s: {why} "
                              "(it needs spec.benchmark.physicalCores whole CPUs, or the operator's "
                              "PINSERVE_BENCH_CPU; spec.benchmark.placement narrows the nodes)",
                              delete=[("Job", name)])
            left = bound - (waited or 0.0)
            return BenchDecision(Condition("Benchmarked", "Unknown", "Running",
                                           f"job {name}: pod {pod_name} cannot be scheduled yet ({why}); "
                                           f"giving up in {left:.0f}s"),
                                 delete=cleanup, recheck_after=left)
        waiting = _waiting(pod) if pod is not None else ""
        previous = ((last.get("metadata") or {}).get("annotations") or {}).get(ANNOTATION_PREVIOUS)
        return BenchDecision(Condition("Benchmarked", "Unknown", "Running",
                                       f"job {name} is running" + (f" (its pod waits: {waiting})" if waiting else "")
                                       + (f"; attempt {attempt}, after {previous}" if previous else "")),
                             delete=cleanup)
    if state == "Failed" and _job_failure_reason(last) == "DeadlineExceeded":
        deadline = (last.get("spec") or {}).get("activeDeadlineSeconds")
        return failed("TimedOut", f"job {name} did not finish within its activeDeadlineSeconds ({deadline}s)")
    message = termination_message(job_pods, name)
    if message is None and not any(_terminated(p) for p in job_pods):
        # The Job's status can arrive before its pod's; a pod deleted meanwhile never reports.
        grace = settings.bench_report_grace_seconds
        waited = _seconds_since(_completed_at(last), moment)
        if waited is None or waited < grace:
            left = grace - (waited or 0.0)
            return BenchDecision(Condition("Benchmarked", "Unknown", "Running",
                                           f"job {name} finished; reading its report"),
                                 delete=cleanup, recheck_after=left)
        gone = "its pod is gone" if not job_pods else "its pod never terminated"
        return failed("NoReport", f"job {name} finished ({_job_failure_reason(last) or state}) but {gone}: "
                                  f"no report after {grace}s")
    try:
        if message is None:
            raise BenchmarkClientError("NoReport", f"job {name} ended without a report in its termination message")
        summary = parse_summary(message)
        if state != "Complete":
            raise BenchmarkClientError("BenchmarkFailed", f"job {name} failed")
    except BenchmarkClientError as exc:
        return failed(exc.reason, exc.message)
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
