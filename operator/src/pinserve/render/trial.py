"""A tuning trial: one short-lived pod serving the model with a candidate's settings on the server's shape (the
same pod template as the Deployment: node class, whole cores, model source), and a `pinserve tune-trial`
container measuring it over the pod's loopback exactly as the benchmark Job does."""

from __future__ import annotations

import copy
import dataclasses
import hashlib
from typing import Any

from pinserve.api import Batching, ModelServer
from pinserve.planning import Placement, plan_threads
from pinserve.render.common import GRPC_PORT, REST_PORT, metadata
from pinserve.render.configmap import config_data
from pinserve.render.deployment import CONFIG_VOLUME, render_deployment
from pinserve.render.job import TERMINATION_LOG, bench_args, bench_resources
from pinserve.render.security import restrict
from pinserve.settings import Settings
from pinserve.tuning import Candidate, Objective, Trial

COMPONENT = "tuning"
TRIAL_CONTAINER = "trial"
LABEL_RUN = "pinserve.io/tuning-run"
LABEL_TRIAL = "pinserve.io/tuning-trial"
# An internal marker on the served ModelServer (never written to the API): the applied winner, so that the
# benchmark measures the tuned Deployment again (pinserve.benchflow.run_key).
ANNOTATION_TUNED = "pinserve.io/tuned"
# On a trial pod: the candidate it runs ("intraOp=2 interOp=1 batching=off"); the trial is recorded from it.
ANNOTATION_CANDIDATE = "pinserve.io/tuning-candidate"


def with_candidate(ms: ModelServer, candidate: Candidate) -> ModelServer:
    """The ModelServer as if its spec fixed the candidate's threads and batching (the user's batching parameters
    when it has them, TF Serving's defaults otherwise)."""
    spec = ms.spec
    threading = spec.threading.model_copy(update={"intra_op": candidate.intra_op, "inter_op": candidate.inter_op})
    batching = (spec.server.batching or Batching()) if candidate.batching else None
    server = spec.server.model_copy(update={"batching": batching})
    return ms.model_copy(update={"spec": spec.model_copy(update={"threading": threading, "server": server})})


def placement_for(ms: ModelServer, placement: Placement) -> Placement:
    """The placement with the threads planned for ``ms`` (a candidate's, or the applied winner's); how they
    are bounded on the chosen nodes stays the placement's."""
    threads, _ = plan_threads(ms.spec, placement.threads_per_core)
    threads = dataclasses.replace(threads, bound=placement.threads.bound, capped=placement.threads.capped)
    return dataclasses.replace(placement, threads=threads)


def trial_deadline(ms: ModelServer, settings: Settings) -> int:
    """A trial pod's activeDeadlineSeconds: the model's load (settings.tune_trial_seconds, also the client's
    wait for it), the probe and the full measurement (twice the throughput run, with slack for the latency
    requests)."""
    return settings.tune_trial_seconds + 2 * ms.spec.benchmark.throughput.duration_seconds + 300


def tuning_config_map_name(ms: ModelServer) -> str:
    return f"{ms.ref.name}-tuning"


def trial_pod_name(ms: ModelServer, run_key: str, index: int) -> str:
    tail = f"-tune-{run_key[:8]}-{index}"
    name = ms.ref.name
    if len(name) + len(tail) > 63:
        name = f"{name[: 63 - len(tail) - 6].rstrip('-')}-{hashlib.sha256(name.encode()).hexdigest()[:5]}"
    return name + tail


def render_tuning_config_map(ms: ModelServer, placement: Placement) -> dict[str, Any]:
    """The trials' configuration: the serving one, with a batching file whether or not the server batches."""
    batched = with_candidate(ms, Candidate(placement.physical_cores, 1, True))
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": metadata(ms, tuning_config_map_name(ms), COMPONENT),
        "data": config_data(batched, placement),
    }


def trial_args(ms: ModelServer, settings: Settings, objective: Objective, best: Trial | None) -> list[str]:
    """`pinserve tune-trial` arguments: the probe threshold (the best so far), then the benchmark Job's own."""
    args = ["--objective", str(objective)]
    if best is not None and objective is Objective.LATENCY and best.measurement.p99_ms:
        args += ["--best-p99-ms", f"{best.measurement.p99_ms:g}"]
    if best is not None and objective is Objective.THROUGHPUT and best.measurement.items_per_second:
        args += ["--best-items-per-second", f"{best.measurement.items_per_second:g}"]
    bench = bench_args(ms, "127.0.0.1")
    # The server in the same pod may load a big model for a while: wait as long as the trial may last.
    at = bench.index("--wait-ready")
    bench[at + 1] = str(settings.tune_trial_seconds)
    return [*args, "--", *bench]


def render_trial_pod(ms: ModelServer, placement: Placement, settings: Settings, candidate: Candidate, *,
                     run_key: str, index: int, objective: Objective, best: Trial | None) -> dict[str, Any]:
    trial = with_candidate(ms, candidate)
    template = render_deployment(trial, placement_for(trial, placement), settings)["spec"]["template"]
    pod: dict[str, Any] = copy.deepcopy(template["spec"])
    pod["restartPolicy"] = "Never"
    pod["activeDeadlineSeconds"] = trial_deadline(ms, settings)
    pod["terminationGracePeriodSeconds"] = 5
    for volume in pod["volumes"]:
        if volume["name"] == CONFIG_VOLUME:
            volume["configMap"]["name"] = tuning_config_map_name(ms)
    server = pod["containers"][0]
    # Nothing routes to a trial: no readiness gate on it; a crash ends the trial (restartPolicy Never).
    for probe in ("readinessProbe", "livenessProbe"):
        server.pop(probe, None)
    server["ports"] = [{"name": "grpc", "containerPort": GRPC_PORT, "protocol": "TCP"},
                       {"name": "rest", "containerPort": REST_PORT, "protocol": "TCP"}]
    pod["containers"].append({
        "name": TRIAL_CONTAINER,
        "image": settings.bench_image,
        "command": ["pinserve", "tune-trial"],
        "args": trial_args(ms, settings, objective, best),
        "resources": bench_resources(ms, settings, placement.threads_per_core),
        "terminationMessagePath": TERMINATION_LOG,
        "terminationMessagePolicy": "File",
    })
    restrict(pod, settings)
    meta = metadata(ms, trial_pod_name(ms, run_key, index), COMPONENT)
    # Not "tensorflow-serving": a Service or monitor of the user's selecting that must not find a trial.
    meta["labels"].update({"app.kubernetes.io/name": "pinserve-tuning-trial", LABEL_RUN: run_key[:63],
                           LABEL_TRIAL: str(index)})
    meta["annotations"] = {ANNOTATION_CANDIDATE: (
        f"intraOp={candidate.intra_op} interOp={candidate.inter_op} batching={'on' if candidate.batching else 'off'}")}
    return {"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": pod}


__all__ = ["COMPONENT", "LABEL_RUN", "LABEL_TRIAL", "render_trial_pod", "render_tuning_config_map",
           "with_candidate"]
