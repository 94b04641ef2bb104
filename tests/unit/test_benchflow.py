"""benchflow: when a benchmark Job starts, how its report is read, retries, on-demand runs, clean-up."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest

from pinserve import benchflow
from pinserve.api import ModelServer, parse_modelserver
from pinserve.bench.report import compact_summary
from pinserve.benchflow import (
    ANNOTATION_REQUESTED,
    MAX_MESSAGE,
    BenchmarkClientError,
    evaluate,
    parse_summary,
    run_key,
    spec_key,
    termination_message,
)
from pinserve.planning import Placement, node_info, plan
from pinserve.render.job import LABEL_RUN_KEY, TERMINATION_LOG
from pinserve.settings import Settings
from pinserve.status import Condition

pytestmark = pytest.mark.unit

SETTINGS = Settings(bench_retries=2, keep_bench_jobs=3)
READY = Condition("Ready", "True", "Available", "1/1 replicas ready")
NOT_READY = Condition("Ready", "False", "PodsNotReady", "0/1 replicas ready")
SUMMARY = {
    "latencyMs": {"p50": 12.3456, "p90": 15.0, "p99": 20.25, "mean": 12.9, "max": 31.0},
    "requests": 200,
    "throughput": {"batchSize": 8, "concurrency": 4, "requestsPerSecond": 51.234, "itemsPerSecond": 409.87},
    "errors": 0,
}


def ms_of(make_ms: Callable[..., dict[str, Any]], generation: int = 3, annotations: dict[str, str] | None = None,
          **spec_over: Any) -> ModelServer:
    body = make_ms(generation=generation, annotations=annotations)
    body["spec"].update(spec_over)
    return parse_modelserver(body)


@pytest.fixture
def placement(topo: Callable[..., Any], make_node: Callable[..., dict[str, Any]],
              make_ms: Callable[..., dict[str, Any]]) -> Placement:
    return plan(ms_of(make_ms).spec, [node_info(make_node("n", topo(1, 8, 2)))], SETTINGS)


def job(name: str, key: str, state: str = "Running", created: str = "2024-01-01T00:00:00Z") -> dict[str, Any]:
    status: dict[str, Any] = {"active": 1}
    if state in ("Complete", "Failed"):
        status = {"conditions": [{"type": state, "status": "True", "lastTransitionTime": "2024-01-01T00:10:00Z"}],
                  "succeeded" if state == "Complete" else "failed": 1}
    return {"apiVersion": "batch/v1", "kind": "Job",
            "metadata": {"name": name, "labels": {LABEL_RUN_KEY: key}, "creationTimestamp": created},
            "status": status}


def bench_pod(job_name: str, message: str | None, exit_code: int = 0) -> dict[str, Any]:
    terminated: dict[str, Any] = {"exitCode": exit_code, "reason": "Completed" if exit_code == 0 else "Error"}
    if message is not None:
        terminated["message"] = message
    return {"metadata": {"name": f"{job_name}-x7k2p", "labels": {"job-name": job_name}},
            "status": {"containerStatuses": [{"name": "bench", "state": {"terminated": terminated}}]}}


NOW = "2024-01-01T00:10:05Z"  # five seconds after the test Jobs finish


def decide(ms: ModelServer, placement: Placement, *, jobs: list[dict[str, Any]] | None = None,
           pods: list[dict[str, Any]] | None = None, current: dict[str, Any] | None = None,
           ready: Condition = READY, settings: Settings = SETTINGS, now: str = NOW) -> benchflow.BenchDecision:
    del placement  # the Job targets the Service; callers keep passing a planned placement for realism
    return evaluate(ms, ready, jobs=jobs or [], current=current, settings=settings, pods=pods or [], now=now)


# -- starting ---------------------------------------------------------------------------------------------


def test_disabled(make_ms: Callable[..., Any], placement: Placement) -> None:
    decision = decide(ms_of(make_ms, benchmark={"enabled": False}), placement)
    assert (decision.condition.status, decision.condition.reason) == ("False", "Disabled")
    assert decision.apply == [] and decision.status is None


def test_waits_for_ready(make_ms: Callable[..., Any], placement: Placement) -> None:
    decision = decide(ms_of(make_ms), placement, ready=NOT_READY)
    assert (decision.condition.status, decision.condition.reason) == ("Unknown", "WaitingForReady")
    assert decision.apply == []


def test_scaled_to_zero_starts_no_job(make_ms: Callable[..., Any], placement: Placement) -> None:
    decision = decide(ms_of(make_ms, replicas=0), placement, ready=Condition("Ready", "True", "ScaledToZero"))
    assert decision.apply == []
    assert decision.condition.status != "True"


def test_ready_starts_one_guaranteed_job(make_ms: Callable[..., Any], placement: Placement) -> None:
    decision = decide(ms_of(make_ms, generation=3), placement)
    assert (decision.condition.status, decision.condition.reason) == ("Unknown", "Running")
    [started] = decision.apply
    assert started["kind"] == "Job" and started["metadata"]["name"] == "rfcn-bench-3"
    assert started["metadata"]["labels"][LABEL_RUN_KEY] == "3"
    [container] = started["spec"]["template"]["spec"]["containers"]
    res = container["resources"]
    assert res["requests"] == res["limits"] and res["requests"]["cpu"].isdigit()
    args = container["args"]
    assert args[args.index("--summary-file") + 1] == TERMINATION_LOG == "/dev/termination-log"
    assert "rfcn-bench-3" in decision.condition.message


def test_running_job_is_left_alone(make_ms: Callable[..., Any], placement: Placement) -> None:
    decision = decide(ms_of(make_ms), placement, jobs=[job("rfcn-bench-3", "3")])
    assert (decision.condition.status, decision.condition.reason) == ("Unknown", "Running")
    assert decision.apply == [] and decision.status is None and decision.events == []


# -- reading the report -----------------------------------------------------------------------------------


def test_complete_job_fills_status_and_emits_one_event(make_ms: Callable[..., Any], placement: Placement) -> None:
    ms = ms_of(make_ms, generation=3)
    decision = decide(ms, placement, jobs=[job("rfcn-bench-3", "3", "Complete")],
                      pods=[bench_pod("rfcn-bench-3", json.dumps(SUMMARY, separators=(",", ":")))])
    assert (decision.condition.status, decision.condition.reason) == ("True", "Measured")
    status = decision.status
    assert status is not None
    assert status["generation"] == 3 and status["runKey"] == "3" and status["jobName"] == "rfcn-bench-3"
    assert status["completedAt"] == "2024-01-01T00:10:00Z"
    assert status["latencyMs"] == {"p50": 12.346, "p90": 15.0, "p99": 20.25, "mean": 12.9, "max": 31.0}
    assert status["requests"] == 200 and status["errors"] == 0
    assert status["throughput"] == {"batchSize": 8, "concurrency": 4, "requestsPerSecond": 51.234,
                                    "itemsPerSecond": 409.87}
    [event] = decision.events
    assert (event.type, event.reason) == ("Normal", "BenchmarkCompleted")
    assert "p50 12.346 ms" in event.message and "p99 20.25 ms" in event.message
    assert decision.apply == []
    # The next reconcile sees its own result in status: same condition, no new Job, no new Event.
    again = decide(ms, placement, jobs=[job("rfcn-bench-3", "3", "Complete")], current=status)
    assert again.condition == decision.condition
    assert again.apply == [] and again.events == [] and again.status is None


def test_report_from_the_bench_client_round_trips(make_ms: Callable[..., Any], placement: Placement) -> None:
    report = {**SUMMARY, "model": "rfcn", "protocol": "grpc", "completedAt": "2024-01-01T00:09:59Z",
              "notes": ["p99 needs more samples"], "errorsByCode": {}}
    message = compact_summary(report).decode()
    decision = decide(ms_of(make_ms), placement, jobs=[job("rfcn-bench-3", "3", "Complete")],
                      pods=[bench_pod("rfcn-bench-3", message)])
    assert decision.condition.reason == "Measured"
    assert decision.status is not None and decision.status["latencyMs"]["p99"] == 20.25


BAD_REPORTS = [
    ("not json", "latency was fine"),
    ("truncated json", json.dumps(SUMMARY)[:40]),
    ("json list", "[1, 2]"),
    ("no latency", json.dumps({"requests": 3})),
    ("latency not an object", json.dumps({"latencyMs": 12})),
    ("oversized", json.dumps({**SUMMARY, "notes": ["x" * MAX_MESSAGE]})),
]


@pytest.mark.parametrize("message", [b[1] for b in BAD_REPORTS], ids=[b[0] for b in BAD_REPORTS])
def test_bad_report_is_a_condition_not_an_exception(make_ms: Callable[..., Any], placement: Placement,
                                                    message: str) -> None:
    decision = decide(ms_of(make_ms), placement, jobs=[job("rfcn-bench-3", "3", "Complete")],
                      pods=[bench_pod("rfcn-bench-3", message)])
    assert (decision.condition.status, decision.condition.reason) == ("False", "BadReport")
    assert decision.status is not None and decision.status["error"]["reason"] == "BadReport"
    assert decision.apply == [] and decision.events == []
    assert len(decision.condition.message) <= 1000


# -- retries ----------------------------------------------------------------------------------------------


def test_permanent_client_failures_are_not_retried(make_ms: Callable[..., Any], placement: Placement) -> None:
    ms = ms_of(make_ms, generation=3)
    message = json.dumps({"error": {"reason": "ModelNotFound", "message": "no model rfcn"}})
    decision = decide(ms, placement, jobs=[job("rfcn-bench-3", "3", "Failed")],
                      pods=[bench_pod("rfcn-bench-3", message, 1)])
    assert (decision.condition.status, decision.condition.reason) == ("False", "ModelNotFound")
    assert decision.apply == []


def test_a_finished_job_waits_for_its_pod_before_judging(make_ms: Callable[..., Any], placement: Placement) -> None:
    ms = ms_of(make_ms, generation=3)
    decision = decide(ms, placement, jobs=[job("rfcn-bench-3", "3", "Complete")], pods=[])
    assert (decision.condition.status, decision.condition.reason) == ("Unknown", "Running")
    assert decision.apply == [] and decision.status is None


@pytest.mark.parametrize(("state", "message", "reason"), [
    ("Failed", None, "NoReport"),
    ("Complete", None, "NoReport"),
    ("Failed", json.dumps(SUMMARY), "BenchmarkFailed"),
    ("Failed", json.dumps({"error": {"reason": "Unavailable", "message": "connection refused"}}), "Unavailable"),
])
def test_failures_are_retried_then_reported(make_ms: Callable[..., Any], placement: Placement, state: str,
                                            message: str | None, reason: str) -> None:
    ms = ms_of(make_ms, generation=3)
    jobs: list[dict[str, Any]] = [job("rfcn-bench-3", "3", state)]
    pods = [bench_pod("rfcn-bench-3", message, 1)]
    names = ["rfcn-bench-3"]
    for attempt in range(1, SETTINGS.bench_retries + 1):
        decision = decide(ms, placement, jobs=jobs, pods=pods)
        assert (decision.condition.status, decision.condition.reason) == ("Unknown", "Retrying")
        assert reason in decision.condition.message
        [retry] = decision.apply
        assert retry["metadata"]["name"] == f"rfcn-bench-3-r{attempt}"
        assert retry["metadata"]["labels"][LABEL_RUN_KEY] == "3"
        assert decision.status is None
        names.append(retry["metadata"]["name"])
        # The retry runs, then fails the same way.
        assert decide(ms, placement, jobs=[*jobs, job(names[-1], "3")], pods=pods).apply == []
        jobs.append(job(names[-1], "3", state))
        pods.append(bench_pod(names[-1], message, 1))
    final = decide(ms, placement, jobs=jobs, pods=pods)
    assert (final.condition.status, final.condition.reason) == ("False", reason)
    assert final.apply == []
    assert final.status is not None and final.status["error"]["reason"] == reason
    assert final.status["jobName"] == names[-1] and final.status["generation"] == 3
    assert len(names) == 1 + SETTINGS.bench_retries
    # Reported: nothing more happens for this generation.
    settled = decide(ms, placement, jobs=jobs, pods=pods, current=final.status)
    assert (settled.condition.status, settled.condition.reason) == ("False", reason)
    assert settled.apply == [] and settled.status is None


def test_no_retries_configured(make_ms: Callable[..., Any], placement: Placement) -> None:
    decision = decide(ms_of(make_ms), placement, jobs=[job("rfcn-bench-3", "3", "Failed")],
                      pods=[bench_pod("rfcn-bench-3", None, 1)], settings=Settings(bench_retries=0))
    assert (decision.condition.status, decision.condition.reason) == ("False", "NoReport")


# -- on-demand runs ---------------------------------------------------------------------------------------


def test_run_key_follows_generation_and_request(make_ms: Callable[..., Any]) -> None:
    plain = ms_of(make_ms, generation=3)
    first = ms_of(make_ms, generation=3, annotations={ANNOTATION_REQUESTED: "2024-05-01T10:00:00Z"})
    second = ms_of(make_ms, generation=3, annotations={ANNOTATION_REQUESTED: "2024-05-02T10:00:00Z"})
    assert run_key(plain) == "3"
    assert run_key(first).startswith("3-") and len(run_key(first)) == len("3-") + 6
    assert len({run_key(plain), run_key(first), run_key(second)}) == 3
    assert run_key(first) == run_key(ms_of(make_ms, generation=3,
                                           annotations={ANNOTATION_REQUESTED: "2024-05-01T10:00:00Z"}))
    assert run_key(ms_of(make_ms, generation=3, annotations={ANNOTATION_REQUESTED: ""})) == "3"


def test_on_demand_request_starts_a_new_run(make_ms: Callable[..., Any], placement: Placement) -> None:
    measured = {"generation": 3, "runKey": "3", "latencyMs": {"p50": 1.0}}
    ms = ms_of(make_ms, generation=3, annotations={ANNOTATION_REQUESTED: "now please"})
    key = run_key(ms)
    decision = decide(ms, placement, jobs=[job("rfcn-bench-3", "3", "Complete")], current=measured)
    [started] = decision.apply
    assert started["metadata"]["name"] == f"rfcn-bench-3-{key.split('-')[1]}"
    assert started["metadata"]["labels"][LABEL_RUN_KEY] == key
    # Its retry keeps the run key and is told apart from the first attempt.
    failed = decide(ms, placement, jobs=[job("rfcn-bench-3", "3", "Complete"),
                                         job(started["metadata"]["name"], key, "Failed")],
                    pods=[bench_pod(started["metadata"]["name"], None, 1)])
    [retry] = failed.apply
    assert retry["metadata"]["name"] == f"rfcn-bench-3-{key.split('-')[1]}-r1"


# -- clean-up ---------------------------------------------------------------------------------------------


def test_old_finished_jobs_beyond_the_limit_are_deleted(make_ms: Callable[..., Any], placement: Placement) -> None:
    old = [job(f"rfcn-bench-{g}", str(g), "Complete", created=f"2024-01-0{g}T00:00:00Z") for g in (1, 2)]
    old += [job("rfcn-bench-2-r1", "2", "Failed", created="2024-01-02T01:00:00Z"),
            job("rfcn-bench-2-abc123", "2-abc123", "Complete", created="2024-01-02T02:00:00Z")]
    running_old = job("rfcn-bench-0", "0", "Running", created="2023-12-01T00:00:00Z")
    current = [job("rfcn-bench-3", "3", "Failed", created="2024-01-03T00:00:00Z"),
               job("rfcn-bench-3-r1", "3", "Running", created="2024-01-03T01:00:00Z")]
    decision = decide(ms_of(make_ms, generation=3), placement, jobs=[*old, running_old, *current])
    deleted = {name for kind, name in decision.delete if kind == "Job"}
    assert deleted == {"rfcn-bench-1", "rfcn-bench-2"}  # the oldest finished ones
    kept_finished_old = [j for j in old if j["metadata"]["name"] not in deleted]
    assert len(kept_finished_old) == SETTINGS.keep_bench_jobs - 1  # the current run is the last one kept


def test_clean_up_happens_whatever_the_state(make_ms: Callable[..., Any], placement: Placement) -> None:
    old = [job(f"rfcn-bench-1-r{i}", "1", "Complete", created=f"2024-01-01T0{i}:00:00Z") for i in range(5)]
    for kwargs in ({"ready": NOT_READY}, {"current": {"runKey": "3"}}, {}):
        decision = decide(ms_of(make_ms, generation=3), placement, jobs=old, **kwargs)  # type: ignore[arg-type]
        assert {n for _, n in decision.delete} == {"rfcn-bench-1-r0", "rfcn-bench-1-r1", "rfcn-bench-1-r2"}


# -- parse_summary and termination_message ----------------------------------------------------------------


def test_parse_summary_keeps_numbers_and_drops_the_rest() -> None:
    message = json.dumps({
        "latencyMs": {"p50": 1.23456, "p90": None, "p99": "fast", "mean": True, "max": 9, "min": 0.5},
        "requests": 10, "errors": {"UNAVAILABLE": 2, "DEADLINE_EXCEEDED": 1, "bogus": "x"},
        "throughput": {"batchSize": 8.0, "concurrency": 2, "itemsPerSecond": 100.0, "extra": 1},
        "notes": [f"note {i} " + "y" * 250 for i in range(12)],
        "unknown": {"a": 1},
    })
    out = parse_summary(message)
    assert out["latencyMs"] == {"p50": 1.235, "max": 9.0, "min": 0.5}
    assert out["requests"] == 10 and out["errors"] == 3
    assert out["throughput"] == {"batchSize": 8, "concurrency": 2, "itemsPerSecond": 100.0}
    assert isinstance(out["throughput"]["batchSize"], int)
    assert len(out["notes"]) == 10 and all(len(n) <= 200 for n in out["notes"])
    assert "unknown" not in out


def test_parse_summary_limit_is_in_bytes() -> None:
    padding = MAX_MESSAGE - len(json.dumps({"latencyMs": {}, "n": ""}))
    fits = json.dumps({"latencyMs": {}, "n": "x" * padding})
    assert len(fits.encode()) == MAX_MESSAGE
    assert parse_summary(fits)["latencyMs"] == {}
    multibyte = json.dumps({"latencyMs": {}, "n": "é" * (padding // 2 + 1)}, ensure_ascii=False)
    with pytest.raises(ValueError, match="over the 4096-byte limit"):
        parse_summary(multibyte)


def test_parse_summary_client_error() -> None:
    with pytest.raises(BenchmarkClientError) as caught:
        parse_summary(json.dumps({"error": {"reason": "Unreachable", "message": "connection refused"}}))
    assert caught.value.reason == "Unreachable" and caught.value.message == "connection refused"


def test_termination_message_picks_the_jobs_own_pod() -> None:
    pods = [bench_pod("other-job", "theirs"), {"metadata": {"labels": {"job-name": "j"}}, "status": {}},
            bench_pod("j", "mine")]
    assert termination_message(pods, "j") == "mine"
    assert termination_message(pods, "missing") is None
    assert termination_message([bench_pod("j", "")], "j") is None


# -- what a new generation re-measures: not a change of replicas alone (an HPA) -----------------------------


def _measured(ms: ModelServer, placement: Placement) -> dict[str, Any]:
    key = run_key(ms)
    done = decide(ms, placement, jobs=[job(f"rfcn-bench-{key}", key, "Complete")],
                  pods=[bench_pod(f"rfcn-bench-{key}", json.dumps(SUMMARY))])
    assert done.status is not None and done.status["specKey"] == spec_key(ms)
    return done.status


# (id, spec change in the next generation, annotations, a new Job expected)
NEXT_GENERATION = [
    ("replicas only (an HPA through the scale subresource)", {"replicas": 4}, None, False),
    ("a new generation with the same spec", {"replicas": 1}, None, False),
    ("cores", {"resources": {"physicalCores": 2, "memory": "8Gi"}}, None, True),
    ("server env", {"server": {"env": [{"name": "A", "value": "1"}]}}, None, True),
    ("benchmark settings", {"benchmark": {"latency": {"requests": 800}}}, None, True),
    ("replicas, with an on-demand request", {"replicas": 4}, {ANNOTATION_REQUESTED: "now"}, True),
]


@pytest.mark.parametrize(("change", "annotations", "new_job"), [c[1:] for c in NEXT_GENERATION],
                         ids=[c[0] for c in NEXT_GENERATION])
def test_what_a_new_generation_re_measures(make_ms: Callable[..., Any], placement: Placement,
                                            change: dict[str, Any], annotations: dict[str, str] | None,
                                            new_job: bool) -> None:
    current = _measured(ms_of(make_ms, generation=3), placement)
    later = ms_of(make_ms, generation=4, annotations=annotations, **change)
    decision = decide(later, placement, current=current)
    assert bool(decision.apply) is new_job
    if not new_job:
        assert (decision.condition.status, decision.condition.reason) == ("True", "Measured")
        assert decision.status is None  # the figures of generation 3 stay


def test_spec_key_ignores_replicas_only(make_ms: Callable[..., Any]) -> None:
    assert spec_key(ms_of(make_ms, replicas=1)) == spec_key(ms_of(make_ms, generation=9, replicas=5))
    assert spec_key(ms_of(make_ms)) != spec_key(ms_of(make_ms, annotations={ANNOTATION_REQUESTED: "x"}))


def test_waiting_for_the_rollout_says_so(make_ms: Callable[..., Any], placement: Placement) -> None:
    rolling = Condition("Ready", "False", "RollingOut", "1/2 replicas run the current revision")
    decision = decide(ms_of(make_ms), placement, ready=rolling)
    assert decision.apply == [] and "rolled out" in decision.condition.message
