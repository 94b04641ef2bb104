"""Pure tuning bookkeeping in the cluster: which trial pod to run next, how to read it, the winner.

A tuning run (spec.tuning.enabled) searches pinserve.tuning's candidates, Intel's rule first, **one trial pod
at a time** (pinserve.render.trial: the server's own pod template, node class and whole cores, plus a
`pinserve tune-trial` container measuring it as the benchmark Job does; pinserve.trialpods reads it). The
run's state lives in status.tuning, so an operator restart resumes it: each finished trial is recorded there,
its pod deleted once status shows it, and the next trial starts once no trial pod of the run is left. A
winner other than the baseline is measured once more beside the baseline (pinserve.tuning.confirm). A
confirmed winner serves (status.tuning.serving, kept while later runs go on or fail) unless spec.threading
fixes the threads (then tuning only reports). Trials never start beside a rollout of the Deployment.

One run per spec (a run key hashes the spec without replicas, threading and the run's own bounds, the
replica's CPUs, and the on-demand request ``pinserve.io/tuning-requested``). Every wait is bounded against
``now``: a trial pod's activeDeadlineSeconds (render.trial.trial_deadline), a trial pod Pending as
Unschedulable for settings.bench_unschedulable_seconds (``NoCapacity``: the run ends; trials never take cores
from serving pods), and the whole run (spec.tuning.timeoutMinutes, ``TimedOut``).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from pinserve import tuning as search
from pinserve.api import ModelServer
from pinserve.benchflow import BenchEvent
from pinserve.planning import DEFAULT_INTER_OP, Placement
from pinserve.render.trial import (
    ANNOTATION_TUNED,
    LABEL_RUN,
    LABEL_TRIAL,
    render_trial_pod,
    render_tuning_config_map,
    trial_deadline,
    tuning_config_map_name,
    with_candidate,
)
from pinserve.settings import Settings
from pinserve.status import Condition
from pinserve.trialpods import judge_pod, pod_candidate, seconds_between
from pinserve.tuning import Candidate, Objective, Trial, TrialStatus

ANNOTATION_REQUESTED = "pinserve.io/tuning-requested"
RUNNING, COMPLETED, FAILED = "Running", "Completed", "Failed"
# What the spec may set that every trial would inherit, so that no candidate could vary it.
_OVERRIDES_ENV = ("TENSORFLOW_INTRA_OP_PARALLELISM", "TENSORFLOW_INTER_OP_PARALLELISM")
_OVERRIDES_ARGS = ("--tensorflow_intra_op_parallelism", "--tensorflow_inter_op_parallelism", "--enable_batching",
                   "--batching_parameters_file")


@dataclass(frozen=True)
class TuneDecision:
    served: ModelServer  # what the serving children render from: the tuned settings, or the spec as it is
    condition: Condition | None = None  # Tuned; None while tuning was never enabled
    status: dict[str, Any] | None = None  # the new status.tuning, or None to keep it
    apply: list[dict[str, Any]] = field(default_factory=list)
    delete: list[tuple[str, str]] = field(default_factory=list)
    events: list[BenchEvent] = field(default_factory=list)
    recheck_after: float | None = None
    running: bool = False  # a run is in progress: the benchmark waits for its winner
    holding: bool = False  # spec.tuning.beforeServing: the Deployment is held at 0 replicas meanwhile


def run_key(ms: ModelServer, placement: Placement | None = None) -> str:
    """What a run measured: the spec but what cannot change a measurement (replicas, the threads a trial sets,
    the run's own time bound and hold), the replica's CPUs, and the on-demand request."""
    spec = {k: v for k, v in ms.spec.to_wire().items() if k not in ("replicas", "threading")}
    spec["tuning"] = {k: v for k, v in dict(spec.get("tuning") or {}).items()
                      if k not in ("timeoutMinutes", "beforeServing")}
    data: dict[str, Any] = {"spec": spec, "requested": ms.annotations.get(ANNOTATION_REQUESTED, "")}
    if placement is not None:
        data["cpus"] = [placement.physical_cores, placement.threads_per_core]
    return hashlib.sha256(json.dumps(data, sort_keys=True, separators=(",", ":")).encode()).hexdigest()[:16]


def threads_fixed(ms: ModelServer) -> bool:
    return ms.spec.threading.intra_op is not None or ms.spec.threading.inter_op is not None


def overridden(ms: ModelServer) -> str | None:
    """A thread or batching setting the spec passes to the server itself, which every trial would inherit."""
    for env in ms.spec.server.env:
        if env.name in _OVERRIDES_ENV:
            return f"spec.server.env sets {env.name}"
    for arg in ms.spec.server.args:
        if arg.split("=", 1)[0] in _OVERRIDES_ARGS:
            return f"spec.server.args passes {arg.split('=', 1)[0]}"
    return None


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


def _label(pod: Mapping[str, Any], key: str) -> str:
    return str(((pod.get("metadata") or {}).get("labels") or {}).get(key) or "")


def _describe(c: Candidate) -> str:
    return f"intra-op {c.intra_op}, inter-op {c.inter_op}, batching {'on' if c.batching else 'off'}"


def _as_spec_serves(ms: ModelServer, placement: Placement) -> Candidate:
    """What the spec serves without tuning: Intel's rule and the spec's own batching."""
    return Candidate(placement.physical_cores, min(DEFAULT_INTER_OP, placement.cpu_request),
                     ms.spec.server.batching is not None)


def _served(ms: ModelServer, placement: Placement, state: Mapping[str, Any]) -> ModelServer:
    """The spec with the tuned settings it serves (status.tuning.serving, kept across runs), unless the user
    fixed the threads, the replica's CPUs changed, or tuning is off."""
    serving = state.get("serving")
    if not isinstance(serving, Mapping) or threads_fixed(ms) or overridden(ms) \
            or serving.get("cpus") != placement.cpu_request:
        return ms
    winner = search.trial_from_dict(serving).candidate
    marker = f"{winner.intra_op}-{winner.inter_op}-{'on' if winner.batching else 'off'}"
    served = with_candidate(ms, winner)
    return served.model_copy(update={"annotations": {**ms.annotations, ANNOTATION_TUNED: marker}})


def _finished_condition(ms: ModelServer, state: Mapping[str, Any]) -> Condition:
    if state.get("phase") == COMPLETED:
        message = str(state.get("summary") or "tuned")
        if state.get("serving") and threads_fixed(ms):
            message += "; not applied: spec.threading fixes the threads"
        return Condition("Tuned", "True", "Tuned", message)
    err = state.get("error") or {}
    return Condition("Tuned", "False", str(err.get("reason") or "Failed"), str(err.get("message") or ""))


def _gain_text(gain: Any) -> str:
    return "unknown" if gain is None else f"{gain:+g}%"


def _complete(ms: ModelServer, placement: Placement, state: dict[str, Any], *, trials: list[Trial],
              confirmation: list[Trial], now: str) -> dict[str, Any]:
    t = ms.spec.tuning
    objective = Objective(t.objective)
    result = search.result(objective, trials, t.p99_budget_ms, confirmation)
    state.update(result, completedAt=now, tuningSeconds=round(seconds_between(state.get("startedAt"), now), 1))
    best = result.get("best")
    if best is None:
        state.update(phase=FAILED, applied=False, error={
            "reason": "NoWinner", "message": f"none of {len(trials)} trial(s) qualified: " + "; ".join(
                f"{_describe(x.candidate)}: {x.status}" + (f" ({x.reason})" if x.reason else "")
                for x in trials)[:900]})
        return state
    winner = search.trial_from_dict(best).candidate
    unconfirmed = len(confirmation) == 2 and any(c.status is not TrialStatus.OK for c in confirmation)
    if unconfirmed:
        applied, how = False, "not applied: its confirmation run did not complete (see confirmation[])"
    elif threads_fixed(ms):
        applied, how = False, "reported only: spec.threading fixes the threads"
    elif winner == _as_spec_serves(ms, placement):
        applied, how = False, "the spec already serves it (nothing to apply)"
    else:
        applied, how = True, "applied to the Deployment"
    if not unconfirmed and not threads_fixed(ms):
        # What serves from now on, until a run says otherwise: the winner, or the spec as it is.
        state["serving"] = {**winner.as_dict(), "cpus": placement.cpu_request} if applied else None
    figure = (f"p99 {best.get('p99Ms')} ms" if objective is Objective.LATENCY
              else f"{best.get('itemsPerSecond')} items/s")
    state.update(phase=COMPLETED, applied=applied, summary=(
        f"best of {len(trials)} trial(s): {_describe(winner)}, {figure}, {_gain_text(result.get('gainPercent'))} "
        f"over Intel's rule; {how}"))
    return state


def evaluate(ms: ModelServer, placement: Placement, *, current: Mapping[str, Any] | None,
             pods: Sequence[Mapping[str, Any]], config_map_present: bool, bench_running: bool,
             settings: Settings, now: str, settled: bool = True) -> TuneDecision:
    """``settled``: the Deployment is rolled out and Ready (a trial never competes with its rollout for cores,
    unless spec.tuning.beforeServing holds it)."""
    t = ms.spec.tuning
    cleanup = [("Pod", str(p["metadata"]["name"])) for p in pods
               if not (p.get("metadata") or {}).get("deletionTimestamp")]
    if config_map_present:
        cleanup.append(("ConfigMap", tuning_config_map_name(ms)))
    if not t.enabled:
        if not current:
            return TuneDecision(ms, delete=cleanup)
        off = {**current, "serving": None, "applied": False} if current.get("serving") else None
        return TuneDecision(ms, Condition("Tuned", "False", "Disabled", "spec.tuning.enabled is false"),
                            status=off, delete=cleanup)
    key = run_key(ms, placement)
    objective = Objective(t.objective)
    previous = dict(current or {})
    state: dict[str, Any] = previous if previous.get("runKey") == key else {}
    if state.get("phase") in (COMPLETED, FAILED):
        return TuneDecision(_served(ms, placement, state), _finished_condition(ms, state), delete=cleanup)
    carried = {"serving": previous["serving"]} if previous.get("serving") else {}
    fresh = {"runKey": key, "generation": ms.ref.generation, "phase": RUNNING, "objective": str(objective),
             "p99BudgetMs": t.p99_budget_ms, "startedAt": now, "trials": [], **carried}
    try:
        why = overridden(ms)
        if why:
            raise ValueError(f"{why}: every trial would run with it; remove it to tune, or disable tuning")
        cands = plan_candidates(ms, placement)
    except ValueError as exc:
        failed = {**(state or fresh), "phase": FAILED, "completedAt": now,
                  "error": {"reason": "InvalidSearch", "message": str(exc)}}
        return TuneDecision(_served(ms, placement, failed), _finished_condition(ms, failed), status=failed,
                            delete=cleanup)
    state = state or {**fresh, "planned": len(cands)}
    served = _served(ms, placement, state)  # a re-run keeps serving what the last one settled on
    trials = [search.trial_from_dict(x) for x in state.get("trials") or []]
    confirmation = [search.trial_from_dict(x) for x in state.get("confirmation") or []]
    alive = [p for p in pods if not (p.get("metadata") or {}).get("deletionTimestamp")]
    # One trial at a time: a pod still terminating holds its cores (and its CPU manager assignment).
    terminating = len(pods) - len(alive)
    stale = [("Pod", str(p["metadata"]["name"])) for p in alive if _label(p, LABEL_RUN) != key[:63]]
    hold = t.before_serving

    def finish(reason: str, message: str) -> TuneDecision:
        done = {**state, "phase": FAILED, "completedAt": now, "error": {"reason": reason, "message": message[:900]},
                "tuningSeconds": round(seconds_between(state.get("startedAt"), now), 1)}
        return TuneDecision(served, _finished_condition(ms, done), status=done, delete=cleanup)

    elapsed = seconds_between(state.get("startedAt"), now)
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
        done = _complete(ms, placement, state, trials=trials, confirmation=confirmation, now=now)
        events = []
        if done["phase"] == COMPLETED:
            events.append(BenchEvent("Normal", "TuningCompleted", str(done["summary"])))
        return TuneDecision(_served(ms, placement, done), _finished_condition(ms, done), status=done,
                            delete=cleanup, events=events)
    base_remaining = t.timeout_minutes * 60 - elapsed
    mine = [p for p in alive if _label(p, LABEL_RUN) == key[:63] and _label(p, LABEL_TRIAL) == str(index)]
    others = [("Pod", str(p["metadata"]["name"])) for p in alive
              if _label(p, LABEL_RUN) == key[:63] and _label(p, LABEL_TRIAL) != str(index)]

    def running(message: str, *, apply: Sequence[dict[str, Any]] = (), delete: Sequence[tuple[str, str]] = (),
                recheck: float | None = None, status: dict[str, Any] | None = None) -> TuneDecision:
        again = base_remaining if recheck is None else min(recheck, base_remaining)
        return TuneDecision(served, Condition("Tuned", "Unknown", "Running", message), status=status or state,
                            apply=list(apply), delete=[*stale, *delete], recheck_after=max(again, 1.0),
                            running=True, holding=hold)

    if mine:
        pod = mine[0]
        ran = pod_candidate(pod) or candidate  # what the pod measured, whatever the plan says by now
        seen = judge_pod(pod, ran, objective, t.p99_budget_ms, settings=settings,
                         deadline=trial_deadline(ms, settings), now=now)
        if seen.no_capacity is not None:
            return finish("NoCapacity", f"{seen.no_capacity}; a trial needs {placement.cpu_request} exclusive "
                                        "CPUs (and the benchmark client's) on a node of the server's class beside "
                                        "the serving pods (spec.tuning.beforeServing tunes on the server's own)")
        if seen.trial is None:
            return running(f"{what}: {_describe(ran)} ({seen.progress})", delete=others, recheck=seen.recheck_after)
        recorded = {**state}
        name = "confirmation" if len(trials) >= len(cands) else "trials"
        recorded[name] = [*(state.get(name) or []), seen.trial.as_dict()]
        # The pod goes once status shows the trial (the next reconcile): a lost write measures it again.
        return running(f"{what}: {_describe(ran)} finished ({seen.trial.status})", delete=others, status=recorded)
    if bench_running:
        return running("waiting for the running benchmark Job to finish before the next trial")
    if others or stale or terminating:
        return running(f"{what}: waiting for the previous trial pod to go", delete=others)
    if not settled and not hold:
        return running(f"{what}: waiting for the Deployment to be rolled out and Ready (a trial never competes "
                       "with its rollout for cores)")
    best_so_far = search.best_trial(objective, trials) if what.startswith("trial") and index > 0 else None
    pod = render_trial_pod(ms, placement, settings, candidate, run_key=key, index=index, objective=objective,
                           best=best_so_far)
    return running(f"{what}: {_describe(candidate)} (started {pod['metadata']['name']})",
                   apply=[render_tuning_config_map(ms, placement), pod])
