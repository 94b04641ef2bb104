"""The reconcile core, pure: a ModelServer and what we observe -> what to apply and the status.

Handlers gather the observations from kopf indices, call ``reconcile`` and carry out the
Outcome; nothing in here performs I/O, so every branch is table-tested without a cluster.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from pinserve import benchflow, tuneflow
from pinserve.api import InvalidSpecError, ModelServer, parse_modelserver
from pinserve.drift import in_sync, stamped
from pinserve.nodeclass import PlacementRecord
from pinserve.pinning import pinned_condition, pod_view
from pinserve.plancache import PLANS
from pinserve.planning import NodeInfo, Placement, PlanError
from pinserve.podfailures import KEEP_REJECTED, new_causes, ready_problem, rejected_record, rejected_to_delete
from pinserve.redact import redact_text
from pinserve.render import render_children
from pinserve.render.common import selector_string
from pinserve.render.service import endpoints
from pinserve.render.trial import placement_for, tuning_config_map_name
from pinserve.settings import Settings
from pinserve.status import Condition, desired_status


@dataclass(frozen=True)
class Observed:
    """Live children of one ModelServer, keyed by (kind, name), plus its pods and benchmark jobs."""

    children: Mapping[tuple[str, str], Mapping[str, Any]] = field(default_factory=dict)
    pods: Sequence[Mapping[str, Any]] = ()
    jobs: Sequence[Mapping[str, Any]] = ()
    bench_pods: Sequence[Mapping[str, Any]] = ()
    trial_pods: Sequence[Mapping[str, Any]] = ()  # tuning trials (pinserve.tuneflow)


@dataclass(frozen=True)
class EventSpec:
    type: str  # Normal | Warning
    reason: str
    message: str

    def __post_init__(self) -> None:
        # Events are readable namespace-wide: no presigned query string or URI password in them.
        object.__setattr__(self, "message", redact_text(self.message))


@dataclass(frozen=True)
class Outcome:
    apply: list[dict[str, Any]]
    status: dict[str, Any]
    events: list[EventSpec]
    delete: list[tuple[str, str]] = field(default_factory=list)  # (kind, name)
    modelserver: ModelServer | None = None
    placement: Placement | None = None
    requeue_after: float | None = None  # reconcile again in this many seconds (a bounded wait runs out)


def out_of_sync(desired: Sequence[Mapping[str, Any]], observed: Observed) -> list[dict[str, Any]]:
    """The desired (stamped) objects to apply: missing, rendered differently since the last apply, or edited."""
    return [dict(obj) for obj in desired
            if not in_sync(observed.children.get((obj["kind"], obj["metadata"]["name"])), obj)]


def rollout_pending(deployment: Mapping[str, Any], want: int) -> tuple[str, str] | None:
    """(reason, message) while the current revision is not fully rolled out, else None.

    kubectl rollout status's rule: the controller has observed the current generation, every replica
    runs the current revision (updatedReplicas >= spec.replicas), no old replica is left
    (replicas <= updatedReplicas) and every updated replica is available.
    """
    status = deployment.get("status") or {}
    generation = int((deployment.get("metadata") or {}).get("generation") or 0)
    observed = int(status.get("observedGeneration") or 0)
    if observed < generation:
        return "RollingOut", f"the Deployment controller has not observed generation {generation} yet"
    total, updated = int(status.get("replicas") or 0), int(status.get("updatedReplicas") or 0)
    available, ready = int(status.get("availableReplicas") or 0), int(status.get("readyReplicas") or 0)
    if total > updated:
        return "RollingOut", (f"{updated}/{want} replicas run the current revision, "
                              f"{total - updated} old replica(s) still running")
    if updated < want or available < updated:
        return "PodsNotReady", f"{ready}/{want} replicas ready"
    return None


def _settled(deployment: Mapping[str, Any]) -> bool:
    """Rolled out and every replica ready (what a trial waits for before taking spare cores)."""
    want = int((deployment.get("spec") or {}).get("replicas") or 0)
    ready = int((deployment.get("status") or {}).get("readyReplicas") or 0)
    return rollout_pending(deployment, want) is None and ready >= want


def _deployment_ready(ms: ModelServer, deployment: Mapping[str, Any] | None, rolling: bool,
                      raw_pods: Sequence[Mapping[str, Any]], rejected: Sequence[Mapping[str, Any]]) -> Condition:
    if deployment is None:
        return Condition("Ready", "False", "Deploying", "creating the serving Deployment")
    if rolling:
        return Condition("Ready", "False", "RollingOut", "applying the changed Deployment")
    want = int((deployment.get("spec") or {}).get("replicas", ms.spec.replicas))
    pending = rollout_pending(deployment, want)
    if want == 0:
        if pending is None:
            return Condition("Ready", "True", "ScaledToZero", "spec.replicas is 0")
        return Condition("Ready", "False", *pending)
    ready = int((deployment.get("status") or {}).get("readyReplicas") or 0)
    if pending is None and ready >= want:
        return Condition("Ready", "True", "Available", f"{ready}/{want} replicas ready")
    problem = ready_problem(raw_pods, deployment, ms.spec.resources.memory, rejected)
    if problem is not None:
        return problem
    if pending is not None:
        return Condition("Ready", "False", *pending)
    return Condition("Ready", "False", "PodsNotReady", f"{ready}/{want} replicas ready")


_TERMINAL = frozenset({"Failed", "Succeeded"})
# Progress states are not news: no Event for them. AdmissionRejected has one Event per cause instead.
_PROGRESS = frozenset({"Deploying", "RollingOut", "PodsNotReady", "WaitingForReady", "Running", "NoReadyPods",
                       "AdmissionRejected", "Tuning", "WaitingForTuning"})


def _transitions(old: Sequence[Mapping[str, Any]], new: Sequence[Mapping[str, Any]]) -> list[EventSpec]:
    before = {c.get("type"): (c.get("status"), c.get("reason")) for c in old}
    events = []
    for cond in new:
        if before.get(cond["type"]) == (cond["status"], cond["reason"]):
            continue
        # Unknown is a waiting state, and a measured benchmark has its own headline Event.
        if cond["status"] == "Unknown" or cond["reason"] in _PROGRESS:
            continue
        if cond["type"] in ("Benchmarked", "Tuned") and cond["status"] == "True":
            continue  # BenchmarkCompleted and TuningCompleted say it with the figures
        if cond["reason"] == "Disabled" and cond["type"] not in before:
            continue  # off from the start, as the spec says: not news
        if cond["type"] == "Placed" and cond["status"] == "True" and cond["type"] not in before:
            continue  # the first plan is what a create asks for (status.placement holds it); a re-plan is news
        normal = cond["status"] == "True" or cond["reason"] == "Disabled"
        kind = "Normal" if normal else "Warning"
        events.append(EventSpec(kind, cond["reason"], f"{cond['type']}={cond['status']}: {cond['message']}"))
    return events


def reconcile(
    body: Mapping[str, Any],
    nodes: Sequence[NodeInfo],
    observed: Observed,
    settings: Settings,
    now: str,
) -> Outcome:
    meta = body.get("metadata") or {}
    generation = int(meta.get("generation") or 1)
    current = body.get("status") or {}
    old_conditions = current.get("conditions") or []

    def finish(conditions: list[Condition], fields: dict[str, Any], **kw: Any) -> Outcome:
        status = desired_status(current, generation=generation, conditions=conditions, fields=fields, now=now)
        return Outcome(status=status, events=_transitions(old_conditions, status["conditions"]), **kw)

    try:
        ms = parse_modelserver(body)
    except InvalidSpecError as exc:
        bad = [
            Condition("Ready", "False", "InvalidSpec", str(exc)),
            Condition("Placed", "False", "InvalidSpec", f"not planned: {exc}"),
        ]
        return finish(bad, {}, apply=[])

    deployment = observed.children.get(("Deployment", ms.ref.name))
    # Failed and Succeeded pods hold no CPUs: status.pods and Pinned are about the live ones.
    pods = [pod_view(p) for p in observed.pods if (p.get("status") or {}).get("phase") not in _TERMINAL]
    by_name = {n.name: n for n in nodes}
    rejected = rejected_record(observed.pods, current.get("rejectedPods"))
    rejection_events = [EventSpec("Warning", e.reason, e.message)
                        for e in new_causes(current.get("rejectedPods"), rejected)]
    fields: dict[str, Any] = {
        "replicas": int(((deployment or {}).get("status") or {}).get("replicas") or 0),
        "readyReplicas": int(((deployment or {}).get("status") or {}).get("readyReplicas") or 0),
        # The scale subresource's labelSelectorPath: an HPA finds the server pods by it.
        "selector": selector_string(ms),
        "pods": [p.to_status(by_name) for p in sorted(pods, key=lambda p: p.name) if not p.deleting],
        "rejectedPods": rejected or None,
    }

    def rejected_pods(ready: Condition) -> list[tuple[str, str]]:
        # Kept for `kubectl describe` while the problem lasts; history once the revision is rolled out.
        return rejected_to_delete(observed.pods, ms.ref.name, keep=0 if ready.status == "True" else KEEP_REJECTED)

    try:
        # The recorded placement sticks while the spec is the same and a node of its class is left.
        placement = PLANS.plan(ms.spec, nodes, settings, PlacementRecord.from_status(current.get("placement")))
    except PlanError as exc:
        conditions = [Condition("Placed", "False", exc.reason, exc.message)]
        ready = _deployment_ready(ms, deployment, False, observed.pods, rejected)
        if deployment is None:
            ready = Condition("Ready", "False", "NotPlaced", exc.message)
        conditions.append(ready)
        outcome = finish(conditions, fields, apply=[], delete=rejected_pods(ready), modelserver=ms)
        outcome.events.extend(rejection_events)
        return outcome

    def tune_with(settled: bool) -> tuneflow.TuneDecision:
        return tuneflow.evaluate(
            ms, placement, current=current.get("tuning"), pods=observed.trial_pods,
            config_map_present=("ConfigMap", tuning_config_map_name(ms)) in observed.children,
            bench_running=any(benchflow.job_state(j) == "Running" for j in observed.jobs), settings=settings,
            now=now, settled=settled,
        )

    tune = tune_with(deployment is not None and _settled(deployment))
    served = tune.served  # the tuned settings, when a run settled on some
    if served is not ms:
        placement = placement_for(served, placement)
    if tune.holding:
        served = served.model_copy(update={"spec": served.spec.model_copy(update={"replicas": 0})})
    children = [stamped(obj) for obj in render_children(served, placement, settings)]
    stale = out_of_sync(children, observed)
    rolling = any(obj["kind"] == "Deployment" for obj in stale)
    if rolling and tune.apply and not tune.holding:
        tune = tune_with(False)  # the Deployment is about to roll: no trial beside its rollout
    stale.extend(out_of_sync([stamped(obj) for obj in tune.apply], observed))
    ready = _deployment_ready(served, deployment, rolling, observed.pods, rejected)
    if tune.holding and tune.condition is not None:
        ready = Condition("Ready", "False", "Tuning", "the server starts once the tuning run ends "
                          f"(spec.tuning.beforeServing): {tune.condition.message}")
    fields.update(placement=placement.to_status(), endpoints=endpoints(ms))
    planned = (f"{placement.physical_cores} physical cores = {placement.cpu_request} CPUs per replica on nodes "
               f"with {placement.threads_per_core} thread(s) per core; "
               f"{len(placement.candidate_nodes)} node(s) can hold it")
    replanned: list[EventSpec] = []
    if placement.replanned:
        planned += f" (re-planned: {placement.replanned})"
        replanned.append(EventSpec("Warning", "Replanned", f"{placement.replanned}; re-planned for "
                                   f"{placement.threads_per_core} thread(s) per core, the server pods roll"))
    conditions = [
        Condition("Placed", "True", "Planned", planned),
        ready,
        pinned_condition(pods, by_name, placement.cpu_request),
    ]
    bench = benchflow.evaluate(
        served, ready, jobs=observed.jobs, current=current.get("benchmark"), settings=settings, now=now,
        pods=observed.bench_pods, server_pods=observed.pods, threads_per_core=placement.threads_per_core,
        hold="the benchmark measures the settings the tuning run settles on" if tune.running else None,
    )
    conditions.append(bench.condition)
    if bench.status is not None:
        fields["benchmark"] = bench.status
    if tune.condition is not None:
        conditions.append(tune.condition)
    if tune.status is not None:
        fields["tuning"] = tune.status
    stale.extend(bench.apply)
    waits = [w for w in (bench.recheck_after, tune.recheck_after) if w is not None]
    outcome = finish(conditions, fields, apply=stale, delete=[*bench.delete, *tune.delete, *rejected_pods(ready)],
                     modelserver=ms, placement=placement, requeue_after=min(waits, default=None))
    outcome.events.extend(replanned)
    outcome.events.extend(rejection_events)
    outcome.events.extend(EventSpec(e.type, e.reason, e.message) for e in [*bench.events, *tune.events])
    return outcome
