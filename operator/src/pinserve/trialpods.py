"""Reading a tuning trial pod (pure): where it stands, and the trial once it has finished.

The measuring container (`pinserve tune-trial`) writes the benchmark's summary, or a stop after its probe, or
the client's error, to its termination message; the server or the model init container may fail first; the
pod may wait for cores or run past its activeDeadlineSeconds.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pinserve import tuning as search
from pinserve.benchflow import parse_time
from pinserve.render.trial import ANNOTATION_CANDIDATE, TRIAL_CONTAINER
from pinserve.settings import Settings
from pinserve.tuning import Candidate, Measurement, Objective, Trial, TrialStatus

# A container that waits for one of these will not start without a change by someone.
_STUCK = frozenset({"ErrImagePull", "ImagePullBackOff", "CreateContainerConfigError", "InvalidImageName",
                    "CreateContainerError", "RunContainerError"})


def seconds_between(since: Any, now: str) -> float:
    start, end = parse_time(since), parse_time(now)
    return 0.0 if start is None or end is None else max((end - start).total_seconds(), 0.0)


def pod_candidate(pod: Mapping[str, Any]) -> Candidate | None:
    """The candidate a trial pod runs, as its annotation records it (what was measured, whatever the plan
    says by now)."""
    text = ((pod.get("metadata") or {}).get("annotations") or {}).get(ANNOTATION_CANDIDATE) or ""
    try:
        fields = dict(part.split("=", 1) for part in text.split())
        return Candidate(int(fields["intraOp"]), int(fields["interOp"]), fields["batching"] == "on")
    except (KeyError, ValueError):
        return None


def read_report(candidate: Candidate, message: str, objective: Objective, budget: float | None,
                seconds: float) -> Trial:
    """A trial from its container's termination message: the benchmark summary, a stop after the probe, or
    the client's error."""
    try:
        data = json.loads(message)
        if not isinstance(data, dict):
            raise ValueError("not a JSON object")
    except ValueError as exc:
        return Trial(candidate, TrialStatus.FAILED, reason=f"BadReport: {exc}", seconds=seconds)
    if "stoppedEarly" in data:
        probe = data.get("probe") or {}
        m = Measurement(probe.get("p50Ms"), probe.get("p99Ms"), probe.get("itemsPerSecond"))
        return Trial(candidate, TrialStatus.STOPPED_EARLY, m, str(data["stoppedEarly"])[:300], seconds)
    if isinstance(data.get("error"), dict):
        err = data["error"]
        why = f"{err.get('reason') or 'ClientError'}: {err.get('message') or ''}".rstrip(": ")
        return Trial(candidate, TrialStatus.FAILED, reason=why[:300], seconds=seconds)
    return search.judge(objective, candidate, search.measurement_from_report(data), budget, seconds)


def _unschedulable_since(pod: Mapping[str, Any]) -> tuple[Any, str] | None:
    status = pod.get("status") or {}
    if status.get("phase") not in (None, "Pending"):
        return None
    for cond in status.get("conditions") or []:
        if cond.get("type") == "PodScheduled" and cond.get("status") == "False":
            since = cond.get("lastTransitionTime") or (pod.get("metadata") or {}).get("creationTimestamp")
            return since, str(cond.get("message") or "no node has the cores free")
    return None


@dataclass(frozen=True)
class PodState:
    trial: Trial | None = None  # finished (measured, stopped or failed)
    no_capacity: str | None = None  # unschedulable past the bound: why
    recheck_after: float | None = None
    progress: str = ""


def _failed(candidate: Candidate, why: str, seconds: float) -> PodState:
    return PodState(Trial(candidate, TrialStatus.FAILED, reason=why[:300].rstrip(": "), seconds=seconds))


def judge_pod(pod: Mapping[str, Any], candidate: Candidate, objective: Objective, budget: float | None, *,
              settings: Settings, deadline: int, now: str) -> PodState:
    """Where a trial pod stands; a finished trial once it has one."""
    meta, status = pod.get("metadata") or {}, pod.get("status") or {}
    seconds = seconds_between(meta.get("creationTimestamp"), now)
    pending = _unschedulable_since(pod)
    if pending is not None:
        waited = seconds_between(pending[0], now)
        bound = settings.bench_unschedulable_seconds
        if waited >= bound:
            return PodState(no_capacity=f"trial pod {meta.get('name')} could not be scheduled for {bound}s: "
                                        f"{pending[1]}")
        return PodState(recheck_after=bound - waited, progress=f"waiting for cores ({pending[1]})")
    if status.get("phase") == "Failed" and status.get("reason") == "DeadlineExceeded":
        return _failed(candidate, f"TimedOut: the trial did not finish within its {deadline}s", seconds)
    statuses = {c.get("name"): c for c in status.get("containerStatuses") or []}
    term = ((statuses.get(TRIAL_CONTAINER) or {}).get("state") or {}).get("terminated")
    if term:
        if term.get("message"):
            return PodState(read_report(candidate, str(term["message"]), objective, budget, seconds))
        return _failed(candidate, f"the trial container exited with code {term.get('exitCode')} "
                                  f"({term.get('reason') or 'no report'})", seconds)
    for key, what in (("initContainerStatuses", "the model init container"), ("containerStatuses", None)):
        for cs in status.get(key) or []:
            name = what or ("the measuring container" if cs.get("name") == TRIAL_CONTAINER else "the server")
            state = cs.get("state") or {}
            ended = state.get("terminated") or {}
            failed = ended and (key == "containerStatuses" or ended.get("exitCode") not in (0, None))
            waiting = state.get("waiting") or {}
            if failed:
                return _failed(candidate, f"{name} exited with code {ended.get('exitCode')}: "
                                          f"{ended.get('message') or ended.get('reason') or ''}", seconds)
            if waiting.get("reason") in _STUCK:
                return _failed(candidate, f"{name}: {waiting['reason']}: {waiting.get('message') or ''}", seconds)
    if status.get("phase") == "Failed":
        return _failed(candidate, f"{status.get('reason') or 'Failed'}: {status.get('message') or ''}", seconds)
    return PodState(progress="measuring" if status.get("phase") == "Running" else "starting")
