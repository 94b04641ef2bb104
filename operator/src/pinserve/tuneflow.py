"""Pure tuning bookkeeping in the cluster: which trial pod to run next, how to read it, the winner.

A tuning run (spec.tuning.enabled) searches pinserve.tuning's candidates, Intel's rule first, **one trial pod
at a time** (pinserve.render.trial: the server's own pod template, node class and whole cores, plus a
`pinserve tune-trial` container measuring it as the benchmark Job does). The run's state lives in
status.tuning, so an operator restart resumes it: each finished trial is recorded there and its pod deleted;
the next trial starts once no trial pod of the run is left. A winner other than the baseline is measured once
more beside the baseline (pinserve.tuning.confirm). The winner is applied to the Deployment unless
spec.threading fixes the threads (then tuning only reports).

One run per spec (a run key hashes the spec without replicas and threading, and the on-demand request
``pinserve.io/tuning-requested``). Every wait is bounded against ``now``: a trial pod's
activeDeadlineSeconds (settings.tune_trial_seconds), a trial pod Pending as Unschedulable for
settings.bench_unschedulable_seconds (``NoCapacity``: the run ends; trials never take cores from serving
pods), and the whole run (spec.tuning.timeoutMinutes, ``TimedOut``).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from pinserve import tuning as search
from pinserve.api import ModelServer
from pinserve.benchflow import BenchEvent, parse_time
from pinserve.planning import Placement
from pinserve.render.trial import (
    ANNOTATION_TUNED,
    LABEL_RUN,
    LABEL_TRIAL,
    render_trial_pod,
    render_tuning_config_map,
    tuning_config_map_name,
    with_candidate,
)
from pinserve.settings import Settings
from pinserve.status import Condition
from pinserve.tuning import Candidate, Measurement, Objective, Trial, TrialStatus

ANNOTATION_REQUESTED = "pinserve.io/tuning-requested"
RUNNING, COMPLETED, FAILED = "Running", "Completed", "Failed"
_TRIAL_CONTAINER = "trial"


@dataclass(frozen=True)
class TuneDecision:
    served: ModelServer  # what the serving children render from: the winner applied, or the spec as it is
    condition: Condition | None = None  # Tuned; None while tuning was never enabled
    status: dict[str, Any] | None = None  # the new status.tuning, or None to keep it
    apply: list[dict[str, Any]] = field(default_factory=list)
    delete: list[tuple[str, str]] = field(default_factory=list)
    events: list[BenchEvent] = field(default_factory=list)
    recheck_after: float | None = None
    running: bool = False  # a run is in progress: the benchmark waits for its winner
    holding: bool = False  # spec.tuning.beforeServing: the Deployment is held at 0 replicas meanwhile


def run_key(ms: ModelServer) -> str:
    spec = {k: v for k, v in ms.spec.to_wire().items() if k not in ("replicas", "threading")}
    data = {"spec": spec, "requested": ms.annotations.get(ANNOTATION_REQUESTED, "")}
    return hashlib.sha256(json.dumps(data, sort_keys=True, separators=(",", ":")).encode()).hexdigest()[:16]


def threads_fixed(ms: ModelServer) -> bool:
    return ms.spec.threading.intra_op is not None or ms.spec.threading.inter_op is not None


def plan_candidates(ms: ModelServer, placement: Placement) -> list[Candidate]:
    """The run's candidates, Intel's rule first; ValueError for a search space that has none."""
    t = ms.spec.tuning
    cores = search.Cores(placement.physical_cores, placement.threads_per_core)

    def within(name: str, values: list[int] | None) -> tuple[int, ...] | None:
        # The start script never gives a pool more threads than the replica's CPUs: a larger candidate would
        # run as that many and be recorded as something it was not.
        if not values:
            return None
        kept = tuple(v for v in values if v <= cores.cpus)
        if not kept:
            raise ValueError(f"spec.tuning.search.{name}: every value exceeds the {cores.cpus} CPUs of a replica")
        return kept

    space = search.SearchSpace(within("intraOp", t.search.intra_op), within("interOp", t.search.inter_op),
                               tuple(t.search.batching) if t.search.batching else None)
    return search.candidates(cores, Objective(t.objective), space, t.max_trials)


def _seconds(since: Any, now: str) -> float:
    start, end = parse_time(since), parse_time(now)
    return 0.0 if start is None or end is None else max((end - start).total_seconds(), 0.0)


def _label(pod: Mapping[str, Any], key: str) -> str:
    return str(((pod.get("metadata") or {}).get("labels") or {}).get(key) or "")


def _describe(c: Candidate) -> str:
    return f"intra-op {c.intra_op}, inter-op {c.inter_op}, batching {'on' if c.batching else 'off'}"


def _container(pod: Mapping[str, Any], name: str, key: str = "containerStatuses") -> Mapping[str, Any]:
    return next((c for c in (pod.get("status") or {}).get(key) or [] if c.get("name") == name), {})


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
class _PodState:
    trial: Trial | None = None  # finished (measured, stopped or failed)
    no_capacity: str | None = None  # unschedulable past the bound: why
    recheck_after: float | None = None
    progress: str = ""


def judge_pod(pod: Mapping[str, Any], candidate: Candidate, objective: Objective, budget: float | None, *,
              settings: Settings, now: str) -> _PodState:
    """Where a trial pod stands; a finished trial once it has one."""
    meta, status = pod.get("metadata") or {}, pod.get("status") or {}
    seconds = _seconds(meta.get("creationTimestamp"), now)
    pending = _unschedulable_since(pod)
    if pending is not None:
        waited = _seconds(pending[0], now)
        bound = settings.bench_unschedulable_seconds
        if waited >= bound:
            return _PodState(no_capacity=f"trial pod {meta.get('name')} could not be scheduled for {bound}s: "
                                         f"{pending[1]}")
        return _PodState(recheck_after=bound - waited, progress=f"waiting for cores ({pending[1]})")
    term = (_container(pod, _TRIAL_CONTAINER).get("state") or {}).get("terminated")
    if term:
        if term.get("message"):
            return _PodState(read_report(candidate, str(term["message"]), objective, budget, seconds))
        why = f"the trial container exited with code {term.get('exitCode')} ({term.get('reason') or 'no report'})"
        return _PodState(Trial(candidate, TrialStatus.FAILED, reason=why, seconds=seconds))
    for key, what in (("initContainerStatuses", "the model init container"), ("containerStatuses", "the server")):
        for cs in status.get(key) or []:
            if key == "containerStatuses" and cs.get("name") == _TRIAL_CONTAINER:
                continue
            state = cs.get("state") or {}
            ended = state.get("terminated") or {}
            failed = ended and (key == "containerStatuses" or ended.get("exitCode") not in (0, None))
            waiting = (state.get("waiting") or {}).get("reason") or ""
            if failed or waiting in ("ErrImagePull", "ImagePullBackOff", "CreateContainerConfigError",
                                     "InvalidImageName", "CreateContainerError"):
                detail = ended.get("message") or (state.get("waiting") or {}).get("message") or ""
                why = f"{what} {'exited with code ' + str(ended.get('exitCode')) if ended else waiting}"
                return _PodState(Trial(candidate, TrialStatus.FAILED, reason=f"{why}: {detail}"[:300].rstrip(": "),
                                       seconds=seconds))
    if status.get("phase") == "Failed":
        reason = status.get("reason") or "Failed"
        why = (f"TimedOut: the trial did not finish within {settings.tune_trial_seconds}s"
               if reason == "DeadlineExceeded" else f"{reason}: {status.get('message') or ''}".rstrip(": "))
        return _PodState(Trial(candidate, TrialStatus.FAILED, reason=why[:300], seconds=seconds))
    return _PodState(progress="measuring" if status.get("phase") == "Running" else "starting")


def _applied(ms: ModelServer, state: Mapping[str, Any]) -> ModelServer:
    best = state.get("best")
    if state.get("phase") != COMPLETED or not state.get("applied") or not isinstance(best, Mapping):
        return ms
    winner = search.trial_from_dict(best).candidate
    served = with_candidate(ms, winner)
    marker = f"{winner.intra_op}-{winner.inter_op}-{'on' if winner.batching else 'off'}"
    return served.model_copy(update={"annotations": {**ms.annotations, ANNOTATION_TUNED: marker}})


def _finished_condition(state: Mapping[str, Any]) -> Condition:
    if state.get("phase") == COMPLETED:
        return Condition("Tuned", "True", "Tuned", str(state.get("summary") or "tuned"))
    err = state.get("error") or {}
    return Condition("Tuned", "False", str(err.get("reason") or "Failed"), str(err.get("message") or ""))


def _gain_text(gain: Any) -> str:
    return "unknown" if gain is None else f"{gain:+g}%"


def _complete(ms: ModelServer, state: dict[str, Any], trials: list[Trial], confirmation: list[Trial],
              now: str) -> dict[str, Any]:
    t = ms.spec.tuning
    objective = Objective(t.objective)
    result = search.result(objective, trials, t.p99_budget_ms, confirmation)
    state.update(result, completedAt=now, tuningSeconds=round(_seconds(state.get("startedAt"), now), 1))
    best = result.get("best")
    if best is None:
        state.update(phase=FAILED, applied=False, error={
            "reason": "NoWinner", "message": f"none of {len(trials)} trial(s) qualified: " + "; ".join(
                f"{_describe(x.candidate)}: {x.status}" + (f" ({x.reason})" if x.reason else "")
                for x in trials)[:900]})
        return state
    winner = search.trial_from_dict(best).candidate
    base = trials[0].candidate
    if winner == base:
        applied, how = False, "Intel's rule stands (nothing to apply)"
    elif threads_fixed(ms):
        applied, how = False, "reported only: spec.threading fixes the threads"
    else:
        applied, how = True, "applied to the Deployment"
    figure = (f"p99 {best.get('p99Ms')} ms" if objective is Objective.LATENCY
              else f"{best.get('itemsPerSecond')} items/s")
    state.update(phase=COMPLETED, applied=applied, summary=(
        f"best of {len(trials)} trial(s): {_describe(winner)}, {figure}, {_gain_text(result.get('gainPercent'))} "
        f"over Intel's rule; {how}"))
    return state


def evaluate(ms: ModelServer, placement: Placement, *, current: Mapping[str, Any] | None,
             pods: Sequence[Mapping[str, Any]], config_map_present: bool, bench_running: bool,
             settings: Settings, now: str) -> TuneDecision:
    t = ms.spec.tuning
    cleanup = [("Pod", str(p["metadata"]["name"])) for p in pods
               if not (p.get("metadata") or {}).get("deletionTimestamp")]
    if config_map_present:
        cleanup.append(("ConfigMap", tuning_config_map_name(ms)))
    if not t.enabled:
        cond = Condition("Tuned", "False", "Disabled", "spec.tuning.enabled is false") if current else None
        return TuneDecision(ms, cond, delete=cleanup)
    key = run_key(ms)
    objective = Objective(t.objective)
    state: dict[str, Any] = dict(current) if current and current.get("runKey") == key else {}
    if state.get("phase") in (COMPLETED, FAILED):
        return TuneDecision(_applied(ms, state), _finished_condition(state), delete=cleanup)
    try:
        cands = plan_candidates(ms, placement)
    except ValueError as exc:
        state = {"runKey": key, "generation": ms.ref.generation, "phase": FAILED, "objective": str(objective),
                 "trials": [], "completedAt": now, "error": {"reason": "InvalidSearch", "message": str(exc)}}
        return TuneDecision(ms, _finished_condition(state), status=state, delete=cleanup)
    if not state:
        state = {"runKey": key, "generation": ms.ref.generation, "phase": RUNNING, "objective": str(objective),
                 "p99BudgetMs": t.p99_budget_ms, "startedAt": now, "planned": len(cands), "trials": []}
    trials = [search.trial_from_dict(x) for x in state.get("trials") or []]
    confirmation = [search.trial_from_dict(x) for x in state.get("confirmation") or []]
    alive = [p for p in pods if not (p.get("metadata") or {}).get("deletionTimestamp")]
    # One trial at a time: a pod still terminating holds its cores (and its CPU manager assignment).
    terminating = len(pods) - len(alive)
    stale = [("Pod", str(p["metadata"]["name"])) for p in alive if _label(p, LABEL_RUN) != key[:63]]
    hold = t.before_serving

    def finish(reason: str, message: str) -> TuneDecision:
        done = {**state, "phase": FAILED, "completedAt": now, "error": {"reason": reason, "message": message[:900]},
                "tuningSeconds": round(_seconds(state.get("startedAt"), now), 1)}
        return TuneDecision(ms, _finished_condition(done), status=done, delete=cleanup)

    elapsed = _seconds(state.get("startedAt"), now)
    if elapsed > t.timeout_minutes * 60:
        return finish("TimedOut", f"the run did not finish within spec.tuning.timeoutMinutes ({t.timeout_minutes}); "
                                  f"{len(trials)} of {len(cands)} trial(s) ran")
    # What to measure next: every candidate, then the baseline and the winner once more.
    if len(trials) < len(cands):
        index, candidate, what = len(trials), cands[len(trials)], f"trial {len(trials) + 1}/{len(cands)}"
    elif search.needs_confirmation(objective, trials) and len(confirmation) < 2:
        best = search.best_trial(objective, trials)
        assert best is not None  # needs_confirmation says there is one
        candidate = (trials[0].candidate, best.candidate)[len(confirmation)]
        index, what = len(trials) + len(confirmation), f"confirmation {len(confirmation) + 1}/2"
    else:
        done = _complete(ms, state, trials, confirmation, now)
        events = []
        if done["phase"] == COMPLETED:
            events.append(BenchEvent("Normal", "TuningCompleted", str(done["summary"])))
        return TuneDecision(_applied(ms, done), _finished_condition(done), status=done, delete=cleanup,
                            events=events)
    base_remaining = t.timeout_minutes * 60 - elapsed
    mine = [p for p in alive if _label(p, LABEL_RUN) == key[:63] and _label(p, LABEL_TRIAL) == str(index)]
    others = [("Pod", str(p["metadata"]["name"])) for p in alive
              if _label(p, LABEL_RUN) == key[:63] and _label(p, LABEL_TRIAL) != str(index)]

    def running(message: str, *, apply: Sequence[dict[str, Any]] = (), delete: Sequence[tuple[str, str]] = (),
                recheck: float | None = None, status: dict[str, Any] | None = None) -> TuneDecision:
        again = base_remaining if recheck is None else min(recheck, base_remaining)
        return TuneDecision(ms, Condition("Tuned", "Unknown", "Running", message), status=status or state,
                            apply=list(apply), delete=[*stale, *delete], recheck_after=max(again, 1.0),
                            running=True, holding=hold)

    if mine:
        pod = mine[0]
        seen = judge_pod(pod, candidate, objective, t.p99_budget_ms, settings=settings, now=now)
        if seen.no_capacity is not None:
            return finish("NoCapacity", f"{seen.no_capacity}; a trial needs {placement.cpu_request} exclusive "
                                        "CPUs on a node of the server's class beside the serving pods (set "
                                        "spec.tuning.beforeServing to tune on the server's own cores)")
        if seen.trial is None:
            return running(f"{what}: {_describe(candidate)} ({seen.progress})", delete=others,
                           recheck=seen.recheck_after)
        recorded = {**state}
        name = "confirmation" if len(trials) >= len(cands) else "trials"
        recorded[name] = [*(state.get(name) or []), seen.trial.as_dict()]
        return running(f"{what}: {_describe(candidate)} finished ({seen.trial.status}); the next starts once its "
                       "pod is gone", delete=[("Pod", str(pod["metadata"]["name"])), *others], status=recorded)
    if bench_running:
        return running("waiting for the running benchmark Job to finish before the first trial")
    if others or stale or terminating:
        return running(f"{what}: waiting for the previous trial pod to go", delete=others)
    best_so_far = search.best_trial(objective, trials) if what.startswith("trial") and index > 0 else None
    pod = render_trial_pod(ms, placement, settings, candidate, run_key=key, index=index, objective=objective,
                           best=best_so_far)
    return running(f"{what}: {_describe(candidate)} (started {pod['metadata']['name']})",
                   apply=[render_tuning_config_map(ms, placement), pod])
