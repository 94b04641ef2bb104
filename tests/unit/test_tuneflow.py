"""The in-cluster tuning flow (pinserve.tuneflow), driven against a simulated kubelet: trial pods one at a time,
read back from their termination messages, a known-best setting found, confirmed, applied; failures bounded."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest

from pinserve import tuneflow
from pinserve.api import ModelServer, parse_modelserver
from pinserve.planning import Placement, node_info, plan
from pinserve.render.trial import ANNOTATION_TUNED, LABEL_RUN, LABEL_TRIAL, TRIAL_CONTAINER
from pinserve.settings import Settings
from pinserve.tuning import Candidate, Measurement, Objective, Trial, TrialStatus, early_stop

pytestmark = pytest.mark.unit

SETTINGS = Settings(bench_unschedulable_seconds=60, tune_trial_seconds=300)
T0 = dt.datetime(2026, 12, 1, 0, 0, 0, tzinfo=dt.UTC)
Latency = Callable[[Candidate], float]


def stamp(seconds: float) -> str:
    return (T0 + dt.timedelta(seconds=seconds)).isoformat().replace("+00:00", "Z")


def ms_with(make_ms: Callable[..., dict[str, Any]], tuning: dict[str, Any], *, threading: dict[str, Any] | None = None,
            annotations: dict[str, str] | None = None, cores: int = 4) -> ModelServer:
    body = make_ms(generation=2, annotations=annotations)
    body["spec"]["resources"]["physicalCores"] = cores
    body["spec"]["tuning"] = {"enabled": True, **tuning}
    if threading:
        body["spec"]["threading"] = threading
    return parse_modelserver(body)


@pytest.fixture
def place(topo: Callable[..., Any], make_node: Callable[..., dict[str, Any]]) -> Callable[[ModelServer], Placement]:
    node = node_info(make_node("n", topo(1, 8, 2)))  # 8 cores, 2 threads each
    return lambda ms: plan(ms.spec, [node], SETTINGS)


def candidate_of(pod: dict[str, Any]) -> Candidate:
    server = pod["spec"]["containers"][0]
    env = {e["name"]: e.get("value") for e in server["env"]}
    return Candidate(int(env["TENSORFLOW_INTRA_OP_PARALLELISM"]), int(env["TENSORFLOW_INTER_OP_PARALLELISM"]),
                     bool(env["PINSERVE_BATCHING_CONFIG"]))


def trial_args(pod: dict[str, Any]) -> list[str]:
    container = next(c for c in pod["spec"]["containers"] if c["name"] == TRIAL_CONTAINER)
    return list(container["args"])


def report_for(pod: dict[str, Any], latency: Latency) -> str:
    """What `pinserve tune-trial` would write: a stop after the probe, or the benchmark's summary."""
    c = candidate_of(pod)
    ms_ = latency(c)
    args = trial_args(pod)
    if "--best-p99-ms" in args:
        best = Trial(c, TrialStatus.OK, Measurement(p99_ms=float(args[args.index("--best-p99-ms") + 1])))
        probe = Measurement(p50_ms=ms_)
        why = early_stop(Objective.LATENCY, probe, best)
        if why:
            return json.dumps({"stoppedEarly": why, "probe": {"p50Ms": ms_}})
    return json.dumps({"latencyMs": {"p50": ms_, "p99": ms_ * 1.2},
                       "throughput": {"batchSize": 8, "itemsPerSecond": 1000.0 / ms_, "latencyMs": {"p99": ms_ * 9}}})


@dataclass
class Sim:
    """The API server and the kubelet as the flow sees them, one reconcile per step (10 s apart)."""

    ms: ModelServer
    placement: Placement
    latency: Latency
    schedulable: bool = True
    server_crash: Callable[[Candidate], bool] = lambda c: False
    status: dict[str, Any] | None = None
    pods: dict[str, dict[str, Any]] = field(default_factory=dict)
    config_map: bool = False
    created: list[str] = field(default_factory=list)
    concurrent: int = 0  # the most trial pods that ever existed at once
    events: list[str] = field(default_factory=list)
    t: float = 0.0

    def step(self) -> tuneflow.TuneDecision:
        now = stamp(self.t)
        d = tuneflow.evaluate(self.ms, self.placement, current=self.status, pods=list(self.pods.values()),
                              config_map_present=self.config_map, bench_running=False, settings=SETTINGS, now=now)
        for kind, name in d.delete:
            if kind == "Pod":
                self.pods.pop(name, None)
            elif kind == "ConfigMap":
                self.config_map = False
        for obj in d.apply:
            if obj["kind"] == "ConfigMap":
                self.config_map = True
                continue
            name = obj["metadata"]["name"]
            assert name not in self.pods
            self.created.append(name)
            self.pods[name] = {**obj, "metadata": {**obj["metadata"], "creationTimestamp": now}, "status": {}}
        self.concurrent = max(self.concurrent, len(self.pods))
        if d.status is not None:
            self.status = d.status
        self.events += [f"{e.reason}: {e.message}" for e in d.events]
        self.t += 10
        self.kubelet(stamp(self.t))
        return d

    def kubelet(self, now: str) -> None:
        for pod in self.pods.values():
            if not self.schedulable:
                pod["status"] = {"phase": "Pending", "conditions": [
                    {"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                     "message": "0/1 nodes are available: 1 Insufficient cpu.", "lastTransitionTime":
                         pod["metadata"]["creationTimestamp"]}]}
            elif self.server_crash(candidate_of(pod)):
                pod["status"] = {"phase": "Running", "containerStatuses": [
                    {"name": "server", "state": {"terminated": {"exitCode": 139, "reason": "Error",
                                                                "message": "Segmentation fault"}}},
                    {"name": TRIAL_CONTAINER, "state": {"running": {"startedAt": now}}}]}
            else:
                pod["status"] = {"phase": "Running", "containerStatuses": [
                    {"name": "server", "state": {"running": {"startedAt": now}}},
                    {"name": TRIAL_CONTAINER, "state": {"terminated": {
                        "exitCode": 0, "message": report_for(pod, self.latency)}}}]}

    def run(self, steps: int = 80) -> tuneflow.TuneDecision:
        for _ in range(steps):
            d = self.step()
            if d.condition is not None and d.condition.status != "Unknown":
                return d
        raise AssertionError(f"tuning did not finish in {steps} steps: {self.status}")


def table(best: Candidate, base_ms: float = 10.0) -> Latency:
    """Latency grows with the distance from ``best`` in each dimension (a shape the test knows)."""
    return lambda c: base_ms * (1 + 0.3 * abs(c.intra_op - best.intra_op) + 0.2 * abs(c.inter_op - best.inter_op)
                                + (0.5 if c.batching != best.batching else 0.0))


def test_finds_confirms_and_applies_the_known_best(make_ms: Callable[..., dict[str, Any]], place: Any) -> None:
    ms = ms_with(make_ms, {"search": {"intraOp": [2, 3, 4], "interOp": [1, 2]}, "maxTrials": 6})
    best = Candidate(3, 1)
    sim = Sim(ms, place(ms), table(best))
    final = sim.run()
    status = sim.status
    assert status is not None and status["phase"] == "Completed"
    assert (status["best"]["intraOp"], status["best"]["interOp"]) == (3, 1)
    assert status["baseline"]["intraOp"] == 4 and status["baseline"]["interOp"] == 2  # Intel's rule first
    assert status["trials"][0]["intraOp"] == 4 and len(status["trials"]) == 6
    assert len(status["confirmation"]) == 2 and status["gainPercent"] > 0
    assert status["applied"] is True and "applied to the Deployment" in status["summary"]
    assert final.condition is not None and (final.condition.status, final.condition.reason) == ("True", "Tuned")
    assert any(e.startswith("TuningCompleted") for e in sim.events)
    # One at a time, all cleaned up, and the served spec is the winner.
    assert sim.concurrent == 1 and not sim.pods and not sim.config_map
    assert len(sim.created) == 8  # six trials and the two confirmations
    served = final.served
    assert (served.spec.threading.intra_op, served.spec.threading.inter_op) == (3, 1)
    assert served.annotations[ANNOTATION_TUNED] == "3-1-off"
    assert not final.running and not final.holding


def test_clearly_worse_candidates_stop_after_the_probe(make_ms: Callable[..., dict[str, Any]], place: Any) -> None:
    ms = ms_with(make_ms, {"search": {"intraOp": [1, 4], "interOp": [2]}})
    sim = Sim(ms, place(ms), lambda c: 1.0 if c.intra_op == 4 else 10.0)
    sim.run()
    assert sim.status is not None
    assert [t["status"] for t in sim.status["trials"]] == ["ok", "stoppedEarly"]
    assert sim.status["applied"] is False and "the spec already serves it" in sim.status["summary"]


def test_fixed_threads_only_report(make_ms: Callable[..., dict[str, Any]], place: Any) -> None:
    ms = ms_with(make_ms, {"search": {"intraOp": [2, 4], "interOp": [2]}}, threading={"intraOp": 4})
    sim = Sim(ms, place(ms), table(Candidate(2, 2)))
    final = sim.run()
    assert sim.status is not None and sim.status["best"]["intraOp"] == 2
    assert sim.status["applied"] is False and "reported only" in sim.status["summary"]
    assert final.served.spec.threading.intra_op == 4  # the user's value stands


def test_trial_pods_are_the_servers_shape_and_never_serve(make_ms: Callable[..., dict[str, Any]],
                                                          place: Any) -> None:
    ms = ms_with(make_ms, {"objective": "throughput", "search": {"intraOp": [4], "interOp": [2], "batching": [True]}})
    sim = Sim(ms, place(ms), table(Candidate(4, 2, True)))
    d = sim.step()
    pod = next(o for o in d.apply if o["kind"] == "Pod")
    labels = pod["metadata"]["labels"]
    assert labels["app.kubernetes.io/component"] == "tuning" and labels[LABEL_TRIAL] == "0"
    assert labels[LABEL_RUN] == tuneflow.run_key(ms, sim.placement)
    assert labels["app.kubernetes.io/name"] == "pinserve-tuning-trial"  # no user selector of the server's
    spec = pod["spec"]
    server = spec["containers"][0]
    assert server["resources"]["limits"] == server["resources"]["requests"]
    assert server["resources"]["limits"]["cpu"] == "8"  # 4 cores x 2 threads: the server's own shape
    assert spec["restartPolicy"] == "Never" and spec["activeDeadlineSeconds"] > 300
    assert spec["affinity"]["nodeAffinity"]  # the node class the Deployment selects
    assert {v["configMap"]["name"] for v in spec["volumes"] if "configMap" in v} == {"rfcn-tuning"}
    args = trial_args(pod)
    assert args[:2] == ["--objective", "throughput"] and "--" in args
    assert args[args.index("--target") + 1] == "127.0.0.1:8500"
    for container in spec["containers"]:
        assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert d.running and d.condition is not None and d.condition.reason == "Running"


def test_no_capacity_ends_the_run_and_serving_continues(make_ms: Callable[..., dict[str, Any]], place: Any) -> None:
    ms = ms_with(make_ms, {"search": {"intraOp": [2, 4], "interOp": [2]}, "beforeServing": True})
    sim = Sim(ms, place(ms), table(Candidate(2, 2)), schedulable=False)
    first = sim.step()
    assert first.holding and first.running
    final = sim.run()
    assert final.condition is not None and (final.condition.status, final.condition.reason) == ("False", "NoCapacity")
    assert "Insufficient cpu" in final.condition.message and "beforeServing" in final.condition.message
    assert not final.holding and not sim.pods and final.served.spec.threading.intra_op is None


def test_failed_trials_are_recorded_and_the_rest_go_on(make_ms: Callable[..., dict[str, Any]], place: Any) -> None:
    ms = ms_with(make_ms, {"search": {"intraOp": [2, 4], "interOp": [2]}})
    sim = Sim(ms, place(ms), table(Candidate(4, 2)), server_crash=lambda c: c.intra_op == 2)
    sim.run()
    assert sim.status is not None
    failed = [t for t in sim.status["trials"] if t["status"] == "failed"]
    assert len(failed) == 1 and "the server exited with code 139" in failed[0]["reason"]
    assert sim.status["phase"] == "Completed"


def test_every_trial_failing_is_tuned_false(make_ms: Callable[..., dict[str, Any]], place: Any) -> None:
    ms = ms_with(make_ms, {"search": {"intraOp": [2, 4], "interOp": [2]}})
    sim = Sim(ms, place(ms), table(Candidate(4, 2)), server_crash=lambda c: True)
    final = sim.run()
    assert final.condition is not None and (final.condition.status, final.condition.reason) == ("False", "NoWinner")


def test_the_run_is_bounded_in_time(make_ms: Callable[..., dict[str, Any]], place: Any) -> None:
    ms = ms_with(make_ms, {"search": {"intraOp": [2, 4], "interOp": [2]}, "timeoutMinutes": 1})
    sim = Sim(ms, place(ms), table(Candidate(4, 2)))
    sim.server_crash = lambda c: False
    sim.kubelet = lambda now: None  # type: ignore[method-assign]  # pods that never finish
    final = sim.run()
    assert final.condition is not None and final.condition.reason == "TimedOut" and not sim.pods


def test_runs_once_per_spec_and_again_on_request(make_ms: Callable[..., dict[str, Any]], place: Any) -> None:
    tuning = {"search": {"intraOp": [2, 4], "interOp": [2]}}
    ms = ms_with(make_ms, tuning)
    sim = Sim(ms, place(ms), table(Candidate(2, 2)))
    sim.run()
    done = sim.status
    # More replicas: the same run key, no new trial.
    more = ms.model_copy(update={"spec": ms.spec.model_copy(update={"replicas": 3})})
    assert tuneflow.run_key(more, sim.placement) == tuneflow.run_key(ms, sim.placement)
    again = tuneflow.evaluate(more, sim.placement, current=done, pods=[], config_map_present=False,
                              bench_running=False, settings=SETTINGS, now=stamp(9999))
    assert not again.apply and again.status is None and again.condition is not None
    requested = ms_with(make_ms, tuning, annotations={tuneflow.ANNOTATION_REQUESTED: "2026-12-01"})
    assert tuneflow.run_key(requested, sim.placement) != tuneflow.run_key(ms, sim.placement)
    fresh = tuneflow.evaluate(requested, sim.placement, current=done, pods=[], config_map_present=False,
                              bench_running=False, settings=SETTINGS, now=stamp(9999))
    assert [o["kind"] for o in fresh.apply] == ["ConfigMap", "Pod"] and fresh.status is not None
    assert fresh.status["trials"] == [] and fresh.status["phase"] == "Running"


def test_waits_for_a_running_benchmark(make_ms: Callable[..., dict[str, Any]], place: Any) -> None:
    ms = ms_with(make_ms, {"search": {"intraOp": [4], "interOp": [2]}})
    d = tuneflow.evaluate(ms, place(ms), current=None, pods=[], config_map_present=False, bench_running=True,
                          settings=SETTINGS, now=stamp(0))
    assert not d.apply and d.condition is not None and "benchmark" in d.condition.message


def test_disabled_cleans_up_and_says_so_only_after_a_run(make_ms: Callable[..., dict[str, Any]], place: Any) -> None:
    body = make_ms()
    ms = parse_modelserver(body)
    pod = {"metadata": {"name": "rfcn-tune-x-0", "labels": {}}}
    d = tuneflow.evaluate(ms, place(ms), current=None, pods=[pod], config_map_present=True, bench_running=False,
                          settings=SETTINGS, now=stamp(0))
    assert d.condition is None and set(d.delete) == {("Pod", "rfcn-tune-x-0"), ("ConfigMap", "rfcn-tuning")}
    after = tuneflow.evaluate(ms, place(ms), current={"phase": "Completed"}, pods=[], config_map_present=False,
                              bench_running=False, settings=SETTINGS, now=stamp(0))
    assert after.condition is not None and after.condition.reason == "Disabled"


def test_candidates_never_exceed_the_cpus_of_a_replica(make_ms: Callable[..., dict[str, Any]], place: Any) -> None:
    ms = ms_with(make_ms, {"search": {"intraOp": [4, 8, 16], "interOp": [2, 64]}})
    cands = tuneflow.plan_candidates(ms, place(ms))  # 4 cores x 2 threads = 8 CPUs
    assert {c.intra_op for c in cands} == {4, 8} and {c.inter_op for c in cands} == {2}
    too_big = ms_with(make_ms, {"search": {"intraOp": [9, 16]}})
    d = tuneflow.evaluate(too_big, place(too_big), current=None, pods=[], config_map_present=False,
                          bench_running=False, settings=SETTINGS, now=stamp(0))
    assert d.condition is not None and (d.condition.status, d.condition.reason) == ("False", "InvalidSearch")
    assert "search.intraOp" in d.condition.message and not d.apply


def _done_run(make_ms: Callable[..., dict[str, Any]], place: Any, **kw: Any) -> tuple[Sim, ModelServer]:
    ms = ms_with(make_ms, {"search": {"intraOp": [2, 4], "interOp": [2]}}, **kw)
    sim = Sim(ms, place(ms), table(Candidate(2, 2)))
    sim.run()
    assert sim.status is not None and sim.status["applied"] is True
    return sim, ms


def _again(sim: Sim, ms: ModelServer, **kw: Any) -> tuneflow.TuneDecision:
    return tuneflow.evaluate(ms, sim.placement, current=sim.status, pods=[], config_map_present=False,
                             bench_running=False, settings=SETTINGS, now=stamp(sim.t), **kw)


def test_threads_fixed_after_a_run_win_over_its_winner(make_ms: Callable[..., dict[str, Any]], place: Any) -> None:
    sim, _ = _done_run(make_ms, place)
    fixed = ms_with(make_ms, {"search": {"intraOp": [2, 4], "interOp": [2]}}, threading={"intraOp": 3, "interOp": 1})
    d = _again(sim, fixed)
    assert (d.served.spec.threading.intra_op, d.served.spec.threading.inter_op) == (3, 1)
    assert d.condition is not None and "not applied: spec.threading fixes the threads" in d.condition.message


def test_a_new_run_keeps_serving_the_last_winner(make_ms: Callable[..., dict[str, Any]], place: Any) -> None:
    sim, _ = _done_run(make_ms, place)
    requested = ms_with(make_ms, {"search": {"intraOp": [2, 4], "interOp": [2]}},
                        annotations={tuneflow.ANNOTATION_REQUESTED: "again"})
    d = _again(sim, requested)
    assert d.running and [o["kind"] for o in d.apply] == ["ConfigMap", "Pod"]
    assert d.served.spec.threading.intra_op == 2  # still the winner while the new run goes on
    # ... and after it fails.
    sim.ms, sim.status, sim.schedulable = requested, d.status, False
    final = sim.run()
    assert final.condition is not None and final.condition.reason == "NoCapacity"
    assert final.served.spec.threading.intra_op == 2


def test_an_unconfirmed_winner_is_not_applied(make_ms: Callable[..., dict[str, Any]], place: Any) -> None:
    ms = ms_with(make_ms, {"search": {"intraOp": [2, 4], "interOp": [2]}})
    runs: dict[Candidate, int] = {}

    def crash_on_second_run(c: Candidate) -> bool:  # the winner's confirmation run crashes
        return c == Candidate(2, 2) and runs.get(c, 0) > 1

    sim = Sim(ms, place(ms), table(Candidate(2, 2)), server_crash=crash_on_second_run)
    real_kubelet = sim.kubelet

    def counting(now: str) -> None:
        for pod in sim.pods.values():
            if not pod["status"]:
                runs[candidate_of(pod)] = runs.get(candidate_of(pod), 0) + 1
        real_kubelet(now)

    sim.kubelet = counting  # type: ignore[method-assign]
    final = sim.run()
    assert sim.status is not None and sim.status["applied"] is False
    assert "confirmation run did not complete" in sim.status["summary"]
    assert final.served.spec.threading.intra_op is None


def test_thread_settings_passed_to_the_server_fail_the_run(make_ms: Callable[..., dict[str, Any]],
                                                           place: Any) -> None:
    body = make_ms(generation=2)
    body["spec"]["tuning"] = {"enabled": True}
    body["spec"]["server"] = {"env": [{"name": "TENSORFLOW_INTRA_OP_PARALLELISM", "value": "4"}]}
    ms = parse_modelserver(body)
    d = tuneflow.evaluate(ms, place(ms), current=None, pods=[], config_map_present=False, bench_running=False,
                          settings=SETTINGS, now=stamp(0))
    assert d.condition is not None and d.condition.reason == "InvalidSearch" and not d.apply
    assert "TENSORFLOW_INTRA_OP_PARALLELISM" in d.condition.message


def test_no_trial_beside_a_rollout(make_ms: Callable[..., dict[str, Any]], place: Any) -> None:
    ms = ms_with(make_ms, {"search": {"intraOp": [2, 4], "interOp": [2]}})
    d = tuneflow.evaluate(ms, place(ms), current=None, pods=[], config_map_present=False, bench_running=False,
                          settings=SETTINGS, now=stamp(0), settled=False)
    assert not d.apply and d.condition is not None and "rolled out" in d.condition.message
    held = ms_with(make_ms, {"search": {"intraOp": [2, 4], "interOp": [2]}, "beforeServing": True})
    d = tuneflow.evaluate(held, place(held), current=None, pods=[], config_map_present=False, bench_running=False,
                          settings=SETTINGS, now=stamp(0), settled=False)
    assert [o["kind"] for o in d.apply] == ["ConfigMap", "Pod"]


def test_a_trial_is_recorded_before_its_pod_goes(make_ms: Callable[..., dict[str, Any]], place: Any) -> None:
    ms = ms_with(make_ms, {"search": {"intraOp": [2, 4], "interOp": [2]}})
    sim = Sim(ms, place(ms), table(Candidate(2, 2)))
    sim.step()  # creates trial 0; the kubelet finishes it
    name = sim.created[0]
    recording = sim.step()
    assert recording.status is not None and len(recording.status["trials"]) == 1
    assert ("Pod", name) not in recording.delete  # still there should the status write be lost
    lost = tuneflow.evaluate(ms, sim.placement, current=None, pods=list(sim.pods.values()), config_map_present=True,
                             bench_running=False, settings=SETTINGS, now=stamp(sim.t))
    assert lost.status is not None and len(lost.status["trials"]) == 1  # measured from the same pod again
    following = sim.step()
    assert ("Pod", name) in following.delete


def test_the_trial_is_recorded_as_its_pod_ran(make_ms: Callable[..., dict[str, Any]], place: Any) -> None:
    ms = ms_with(make_ms, {"search": {"intraOp": [2, 4], "interOp": [2]}})
    sim = Sim(ms, place(ms), table(Candidate(2, 2)))
    sim.step()
    pod = sim.pods[sim.created[0]]
    pod["metadata"]["annotations"]["pinserve.io/tuning-candidate"] = "intraOp=3 interOp=1 batching=off"
    d = sim.step()
    assert d.status is not None and (d.status["trials"][0]["intraOp"], d.status["trials"][0]["interOp"]) == (3, 1)


@pytest.mark.parametrize(("status", "reason"), [
    ({"phase": "Pending", "containerStatuses": [
        {"name": "trial", "state": {"waiting": {"reason": "ImagePullBackOff", "message": "no such image"}}}]},
     "the measuring container: ImagePullBackOff"),
    ({"phase": "Failed", "reason": "DeadlineExceeded", "containerStatuses": [
        {"name": "trial", "state": {"terminated": {"exitCode": 137, "reason": "Error"}}}]}, "TimedOut"),
    ({"phase": "Failed", "initContainerStatuses": [
        {"name": "fetch-model", "state": {"terminated": {"exitCode": 3, "message": "404 Not Found"}}}]},
     "the model init container exited with code 3: 404 Not Found"),
])
def test_a_failed_trial_says_why(make_ms: Callable[..., dict[str, Any]], place: Any, status: dict[str, Any],
                                 reason: str) -> None:
    ms = ms_with(make_ms, {"search": {"intraOp": [2, 4], "interOp": [2]}})
    sim = Sim(ms, place(ms), table(Candidate(2, 2)))
    sim.kubelet = lambda now: None  # type: ignore[method-assign]
    sim.step()
    sim.pods[sim.created[0]]["status"] = status
    d = sim.step()
    assert d.status is not None and d.status["trials"][0]["status"] == "failed"
    assert reason in d.status["trials"][0]["reason"]
