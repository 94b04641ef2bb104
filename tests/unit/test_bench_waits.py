"""benchflow's bounded waits: every way a benchmark can stall ends in a reason, against ``now``.

Table-driven: a Job (and its pod) in some state, the time now, and what the operator must say and do.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest

from pinserve.api import ModelServer, parse_modelserver
from pinserve.benchflow import ANNOTATION_REQUESTED, NOT_RETRIED, PERMANENT_FAILURES, evaluate, parse_time
from pinserve.render.job import LABEL_RUN_KEY
from pinserve.settings import Settings
from pinserve.status import Condition

pytestmark = pytest.mark.unit

SETTINGS = Settings(bench_retries=1, bench_unschedulable_seconds=300, bench_report_grace_seconds=60)
READY = Condition("Ready", "True", "Available", "1/1 replicas ready")
T0 = "2024-01-01T00:00:00Z"


def at(seconds: int) -> str:
    minutes, secs = divmod(seconds, 60)
    hours, minutes = divmod(minutes, 60)
    return f"2024-01-01T{hours:02}:{minutes:02}:{secs:02}Z"


def job(name: str, state: str = "Running", reason: str = "", finished: str = T0) -> dict[str, Any]:
    status: dict[str, Any] = {"active": 1, "startTime": T0}
    if state in ("Complete", "Failed"):
        cond = {"type": state, "status": "True", "lastTransitionTime": finished}
        if reason:
            cond["reason"] = reason
        status = {"conditions": [cond], "startTime": T0, "succeeded" if state == "Complete" else "failed": 1}
    return {"apiVersion": "batch/v1", "kind": "Job",
            "metadata": {"name": name, "labels": {LABEL_RUN_KEY: "3"}, "creationTimestamp": T0},
            "spec": {"activeDeadlineSeconds": 910}, "status": status}


def pod(job_name: str, *, phase: str = "Pending", scheduled: str | None = None, since: str | None = T0,
        waiting: str | None = None, terminated: dict[str, Any] | None = None) -> dict[str, Any]:
    conditions = []
    if scheduled is not None:
        cond = {"type": "PodScheduled", "status": "False" if scheduled == "Unschedulable" else "True",
                "reason": scheduled, "message": "0/3 nodes are available: 3 Insufficient cpu."}
        if since is not None:
            cond["lastTransitionTime"] = since
        conditions.append(cond)
    state: dict[str, Any] = {}
    if waiting:
        state = {"waiting": {"reason": waiting, "message": "pull access denied"}}
    if terminated is not None:
        state = {"terminated": terminated}
    return {"metadata": {"name": f"{job_name}-x7k2p", "labels": {"job-name": job_name}, "creationTimestamp": at(1)},
            "status": {"phase": phase, "conditions": conditions,
                       "containerStatuses": [{"name": "bench", "state": state}] if state else []}}


@dataclass
class Case:
    id: str
    jobs: list[dict[str, Any]]
    pods: list[dict[str, Any]]
    now: str
    condition: tuple[str, str]  # (status, reason) of Benchmarked
    says: str = ""  # in the condition's message
    started: list[str] = field(default_factory=list)  # Jobs applied
    deleted: list[str] = field(default_factory=list)  # Jobs deleted
    recheck: float | None = None  # seconds until the bound runs out
    error: str | None = None  # status.benchmark.error.reason


CASES = [
    # -- the client's pod cannot be scheduled
    Case("unschedulable, within the bound", [job("rfcn-bench-3")],
         [pod("rfcn-bench-3", scheduled="Unschedulable")], at(100), ("Unknown", "Running"),
         says="cannot be scheduled yet (0/3 nodes are available: 3 Insufficient cpu.); giving up in 200s",
         recheck=200),
    Case("unschedulable, past the bound: reported, the Job deleted, not retried", [job("rfcn-bench-3")],
         [pod("rfcn-bench-3", scheduled="Unschedulable")], at(300), ("False", "ClientUnschedulable"),
         says="could not be scheduled for 300s: 0/3 nodes are available", deleted=["rfcn-bench-3"],
         error="ClientUnschedulable"),
    Case("unschedulable, the bound counted from the pod's creation without a transition time",
         [job("rfcn-bench-3")], [pod("rfcn-bench-3", scheduled="Unschedulable", since=None)], at(301),
         ("False", "ClientUnschedulable"), deleted=["rfcn-bench-3"], error="ClientUnschedulable"),
    Case("unschedulable on the retry too", [job("rfcn-bench-3", "Failed"), job("rfcn-bench-3-r1")],
         [pod("rfcn-bench-3", phase="Failed", terminated={"exitCode": 1}),
          pod("rfcn-bench-3-r1", scheduled="Unschedulable", since=at(50))], at(400),
         ("False", "ClientUnschedulable"), deleted=["rfcn-bench-3-r1"], error="ClientUnschedulable"),
    Case("scheduled, pulling its image: running until the Job's deadline", [job("rfcn-bench-3")],
         [pod("rfcn-bench-3", scheduled="Scheduled", waiting="ImagePullBackOff")], at(5000), ("Unknown", "Running"),
         says="its pod waits: ImagePullBackOff: pull access denied"),
    Case("running", [job("rfcn-bench-3")], [pod("rfcn-bench-3", phase="Running", scheduled="Scheduled")],
         at(5000), ("Unknown", "Running"), says="job rfcn-bench-3 is running"),
    # -- the Job's deadline
    Case("past activeDeadlineSeconds, the pod deleted: retried", [job("rfcn-bench-3", "Failed", "DeadlineExceeded")],
         [], at(1000), ("Unknown", "Retrying"), says="TimedOut: job rfcn-bench-3 did not finish within its "
         "activeDeadlineSeconds (910s)", started=["rfcn-bench-3-r1"]),
    Case("past activeDeadlineSeconds on the last attempt: reported",
         [job("rfcn-bench-3", "Failed", "DeadlineExceeded"), job("rfcn-bench-3-r1", "Failed", "DeadlineExceeded")],
         [], at(2000), ("False", "TimedOut"), error="TimedOut"),
    # -- a finished Job without a report
    Case("finished, the pod not seen yet: wait for it", [job("rfcn-bench-3", "Failed", "BackoffLimitExceeded")], [],
         at(20), ("Unknown", "Running"), says="finished; reading its report", recheck=40),
    Case("finished, the pod gone past the grace period: retried",
         [job("rfcn-bench-3", "Failed", "BackoffLimitExceeded")], [], at(60), ("Unknown", "Retrying"),
         says="NoReport: job rfcn-bench-3 finished (BackoffLimitExceeded) but its pod is gone: no report after 60s",
         started=["rfcn-bench-3-r1"]),
    Case("complete, its pod never terminated in what we see",
         [job("rfcn-bench-3", "Complete")], [pod("rfcn-bench-3", phase="Running", scheduled="Scheduled")],
         at(61), ("Unknown", "Retrying"), says="its pod never terminated", started=["rfcn-bench-3-r1"]),
    Case("complete, the pod terminated without a message: no grace needed",
         [job("rfcn-bench-3", "Complete")],
         [pod("rfcn-bench-3", phase="Succeeded", terminated={"exitCode": 0})], at(1), ("Unknown", "Retrying"),
         says="NoReport: job rfcn-bench-3 ended without a report", started=["rfcn-bench-3-r1"]),
    Case("the pod gone on the last attempt: reported",
         [job("rfcn-bench-3", "Failed", "BackoffLimitExceeded"), job("rfcn-bench-3-r1", "Failed")], [], at(500),
         ("False", "NoReport"), error="NoReport"),
    Case("complete with a report", [job("rfcn-bench-3", "Complete")],
         [pod("rfcn-bench-3", phase="Succeeded", terminated={"exitCode": 0, "message": json.dumps(
             {"latencyMs": {"p50": 1.0}})})], at(1), ("True", "Measured")),
]


def ms_of(make_ms: Callable[..., dict[str, Any]], generation: int = 3, annotations: dict[str, str] | None = None,
          **spec: Any) -> ModelServer:
    body = make_ms(generation=generation, annotations=annotations)
    body["spec"].update(spec)
    return parse_modelserver(body)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_every_wait_is_bounded(make_ms: Callable[..., dict[str, Any]], case: Case) -> None:
    decision = evaluate(ms_of(make_ms), READY, jobs=case.jobs, current=None, settings=SETTINGS, now=case.now,
                        pods=case.pods)
    assert (decision.condition.status, decision.condition.reason) == case.condition, decision.condition
    assert case.says in decision.condition.message
    assert [j["metadata"]["name"] for j in decision.apply] == case.started
    assert [name for kind, name in decision.delete if kind == "Job"] == case.deleted
    assert decision.recheck_after == case.recheck
    if case.error is None:
        assert decision.status is None or "error" not in decision.status
    else:
        assert decision.status is not None and decision.status["error"]["reason"] == case.error
        assert decision.status["runKey"] == "3" and parse_time(decision.status["completedAt"]) is not None


# -- the retry policy, stated: which reasons start a new Job ------------------------------------------------

POLICY = [
    ("TimedOut", True), ("NoReport", True), ("BenchmarkFailed", True), ("Unavailable", True),
    ("DeadlineExceeded", True), ("ClientUnschedulable", False), ("ModelNotFound", False),
    ("SignatureNotFound", False), ("InvalidArgument", False), ("InvalidInput", False), ("Usage", False),
]


@pytest.mark.parametrize(("reason", "retried"), POLICY)
def test_retry_policy(reason: str, retried: bool) -> None:
    assert (reason not in NOT_RETRIED) is retried
    assert PERMANENT_FAILURES <= NOT_RETRIED


def test_a_result_stands_until_a_new_generation_or_request(make_ms: Callable[..., dict[str, Any]]) -> None:
    """After ClientUnschedulable, nothing runs again for the run; a spec change or the annotation starts over."""
    stuck = [job("rfcn-bench-3")]
    pods = [pod("rfcn-bench-3", scheduled="Unschedulable")]
    final = evaluate(ms_of(make_ms), READY, jobs=stuck, current=None, settings=SETTINGS, now=at(300), pods=pods)
    assert final.status is not None
    # The Job is gone (deleted); later reconciles keep the verdict and start nothing.
    later = evaluate(ms_of(make_ms), READY, jobs=[], current=final.status, settings=SETTINGS, now=at(4000))
    assert (later.condition.status, later.condition.reason) == ("False", "ClientUnschedulable")
    assert later.apply == []
    # replicas alone (an HPA) keeps it too
    scaled = evaluate(ms_of(make_ms, generation=4, replicas=2), READY, jobs=[], current=final.status,
                      settings=SETTINGS, now=at(4000))
    assert scaled.apply == []
    for ms in (ms_of(make_ms, generation=4, benchmark={"physicalCores": 2}),
               ms_of(make_ms, annotations={ANNOTATION_REQUESTED: "again"})):
        again = evaluate(ms, READY, jobs=[], current=final.status, settings=SETTINGS, now=at(4000))
        assert [j["kind"] for j in again.apply] == ["Job"], ms.ref.generation
        assert again.condition.reason == "Running"


def test_parse_time() -> None:
    assert parse_time("2024-01-01T00:00:05Z") is not None
    assert parse_time("2024-01-01T00:00:05.123456+00:00") is not None
    for bad in ("", None, "yesterday", 5):
        assert parse_time(bad) is None


def test_a_retry_says_why_while_it_runs(make_ms: Callable[..., dict[str, Any]]) -> None:
    from pinserve.benchflow import ANNOTATION_PREVIOUS  # noqa: PLC0415

    failed = evaluate(ms_of(make_ms), READY, jobs=[job("rfcn-bench-3", "Failed", "DeadlineExceeded")],
                      current=None, settings=SETTINGS, now=at(1000))
    [retry] = failed.apply
    assert retry["metadata"]["annotations"][ANNOTATION_PREVIOUS].startswith("TimedOut: job rfcn-bench-3 did not")
    running = evaluate(ms_of(make_ms), READY, jobs=[job("rfcn-bench-3", "Failed", "DeadlineExceeded"),
                                                    {**retry, "status": {"active": 1}}],
                       current=None, settings=SETTINGS, now=at(1001))
    assert running.condition.reason == "Running"
    assert running.condition.message == ("job rfcn-bench-3-r1 is running; attempt 2, after TimedOut: job rfcn-bench-3 "
                                         "did not finish within its activeDeadlineSeconds (910s)")
