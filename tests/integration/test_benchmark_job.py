"""The benchmark Job path end to end: Job created once Ready, report copied into status.

KWOK plays the bench container: a benchmark pod finishes when the test gives it a
termination message (annotation pinserve.io/fake-termination-message) or an exit code.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
import yaml
from operator_harness import (
    condition,
    eventually,
    modelserver,
    operator_fixture,
)

pytestmark = pytest.mark.integration

REPORT = {
    "latencyMs": {"p50": 12.5, "p90": 14.0, "p99": 19.75, "mean": 12.9, "max": 25.0},
    "requests": 700,
    "throughput": {"batchSize": 8, "concurrency": 4, "requestsPerSecond": 150.5, "itemsPerSecond": 1204.0},
    "errors": 0,
}


operator = operator_fixture(PINSERVE_RESYNC_SECONDS="2", PINSERVE_BENCH_RETRIES="1",
                          PINSERVE_KEEP_BENCH_JOBS="2", PINSERVE_BENCH_UNSCHEDULABLE_SECONDS="3",
                          PINSERVE_BENCH_REPORT_GRACE_SECONDS="3")


def bench_spec() -> dict[str, Any]:
    return {"enabled": True, "warmupRequests": 5, "latency": {"requests": 700},
            "throughput": {"batchSize": 8, "concurrency": 4, "durationSeconds": 10},
            "inputs": {"shapes": {"x": [1, 4]}}}


def bench_pod(cluster: Any, namespace: str, job: str) -> dict[str, Any]:
    def probe() -> dict[str, Any] | None:
        pods = cluster.get_json("-n", namespace, "pods", "-l", f"job-name={job}")["items"]
        return pods[0] if pods else None

    return eventually(f"a pod of job {job}", probe, timeout=60)


def finish(cluster: Any, namespace: str, pod: str, *, message: str, exit_code: int = 0) -> None:
    cluster.kubectl("annotate", "-n", namespace, f"pod/{pod}", "--overwrite",
                    f"pinserve.io/fake-termination-message={message}", f"pinserve.io/fake-exit-code={exit_code}")


def get_ms(cluster: Any, namespace: str, name: str) -> dict[str, Any]:
    return dict(cluster.get_json("-n", namespace, f"modelserver/{name}"))


def test_benchmark_runs_once_ready_and_lands_in_status(cluster: Any, operator: Any, namespace: str) -> None:
    body = modelserver("bm", cores=2, benchmark=bench_spec())
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=yaml.safe_dump(body))
    job = eventually("the benchmark Job", lambda: cluster.get_json("-n", namespace, "jobs")["items"], timeout=90)[0]
    assert job["metadata"]["name"] == "bm-bench-1"
    container = job["spec"]["template"]["spec"]["containers"][0]
    assert container["resources"]["requests"] == container["resources"]["limits"]
    assert container["resources"]["limits"]["cpu"] == "1"
    args = container["args"]
    assert args[args.index("--summary-file") + 1] == "/dev/termination-log"
    assert args[args.index("--target") + 1] == f"bm.{namespace}.svc:8500"
    assert "x=1,4" in args

    pod = bench_pod(cluster, namespace, "bm-bench-1")
    finish(cluster, namespace, pod["metadata"]["name"], message=json.dumps(REPORT))

    def measured() -> dict[str, Any] | None:
        ms = get_ms(cluster, namespace, "bm")
        return ms if condition(ms, "Benchmarked").get("status") == "True" else None

    ms = eventually("Benchmarked=True", measured, timeout=60)
    bench = ms["status"]["benchmark"]
    assert bench["generation"] == 1
    assert bench["jobName"] == "bm-bench-1"
    assert bench["latencyMs"]["p50"] == 12.5 and bench["latencyMs"]["p99"] == 19.75
    assert bench["throughput"]["itemsPerSecond"] == 1204.0
    assert bench["completedAt"]
    assert "p50 12.5 ms" in condition(ms, "Benchmarked")["message"]
    # kubectl's printer columns read status.benchmark
    table = cluster.kubectl("get", "-n", namespace, "modelserver/bm").stdout
    assert "12.5" in table and "19.75" in table
    # The Event is posted after the status it follows.
    headline = eventually("the BenchmarkCompleted Event", lambda: [
        e for e in cluster.get_json("-n", namespace, "events", "--field-selector", "involvedObject.name=bm")["items"]
        if e["reason"] == "BenchmarkCompleted"], timeout=30)
    assert len(headline) == 1 and "p99 19.75 ms" in headline[0]["message"]

    # On-demand re-run via the annotation: a new Job, new figures.
    cluster.kubectl("annotate", "-n", namespace, "modelserver/bm", "pinserve.io/benchmark-requested=again")
    rerun = eventually("the on-demand Job", lambda: [j for j in cluster.get_json("-n", namespace, "jobs")["items"]
                                                      if j["metadata"]["name"] != "bm-bench-1"], timeout=60)[0]
    pod = bench_pod(cluster, namespace, rerun["metadata"]["name"])
    faster = {**REPORT, "latencyMs": {**REPORT["latencyMs"], "p50": 10.0}}
    finish(cluster, namespace, pod["metadata"]["name"], message=json.dumps(faster))
    eventually("the new p50", lambda: get_ms(cluster, namespace, "bm")["status"]["benchmark"]["latencyMs"]["p50"]
               == 10.0, timeout=60)


@pytest.mark.parametrize(
    ("message", "exit_code", "reason", "attempts"),
    [
        # A report that cannot be read is not retried: the client would write the same again.
        ("this is not json {", 0, "BadReport", ("bx-bench-1",)),
        (json.dumps({**REPORT, "notes": ["x" * 5000]}), 0, "BadReport", ("bx-bench-1",)),
        # A transient failure is retried (PINSERVE_BENCH_RETRIES=1), then reported with the client's reason.
        (json.dumps({"error": {"reason": "Unavailable", "message": "connection refused"}}), 4, "Unavailable",
         ("bx-bench-1", "bx-bench-1-r1")),
        # A permanent one is not.
        (json.dumps({"error": {"reason": "ModelNotFound", "message": "model bx is not served"}}), 3, "ModelNotFound",
         ("bx-bench-1",)),
    ],
)
def test_bad_or_failed_benchmarks_become_conditions(cluster: Any, operator: Any, namespace: str, *, message: str,
                                                     exit_code: int, reason: str, attempts: tuple[str, ...]) -> None:
    body = modelserver("bx", cores=1, benchmark=bench_spec())
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=yaml.safe_dump(body))
    for job_name in attempts:
        eventually(f"job {job_name}", lambda job_name=job_name: cluster.exists("-n", namespace, "job", job_name),
                   timeout=90)
        pod = bench_pod(cluster, namespace, job_name)
        finish(cluster, namespace, pod["metadata"]["name"], message=message, exit_code=exit_code)

    def failed() -> dict[str, Any] | None:
        cond = condition(get_ms(cluster, namespace, "bx"), "Benchmarked")
        return cond if cond.get("status") == "False" else None

    cond = eventually("Benchmarked=False", failed, timeout=60)
    assert cond["reason"] == reason
    ms = get_ms(cluster, namespace, "bx")
    assert condition(ms, "Ready")["status"] == "True"  # the server stays Ready
    assert ms["status"]["benchmark"]["error"]["reason"] == reason
    # (the module fixture checks at teardown that the operator never raised)


# -- issue 10 item 6: every wait is bounded ---------------------------------------------------------------


def benchmarked(cluster: Any, namespace: str, name: str, status: str, timeout: float = 60) -> dict[str, Any]:
    def probe() -> dict[str, Any] | None:
        cond = condition(get_ms(cluster, namespace, name), "Benchmarked")
        return cond if cond.get("status") == status else None

    return eventually(f"Benchmarked={status}", probe, timeout=timeout)


def test_a_client_that_cannot_be_scheduled_ends_in_client_unschedulable(cluster: Any, operator: Any,
                                                                        namespace: str) -> None:
    # 64 whole CPUs beside the server on its own node: no node has that many left.
    spec = {**bench_spec(), "physicalCores": 64, "placement": "SameNode"}
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=yaml.safe_dump(modelserver("bu", cores=1,
                                                                                           benchmark=spec)))
    eventually("job bu-bench-1", lambda: cluster.exists("-n", namespace, "job", "bu-bench-1"), timeout=90)
    cond = benchmarked(cluster, namespace, "bu", "False")
    assert cond["reason"] == "ClientUnschedulable", cond
    assert "could not be scheduled for 3s" in cond["message"] and "Insufficient cpu" in cond["message"]
    ms = get_ms(cluster, namespace, "bu")
    assert ms["status"]["benchmark"]["error"]["reason"] == "ClientUnschedulable"
    # The Job is deleted and no other attempt is started: it would wait for the same CPUs.
    eventually("the Job to be deleted", lambda: not cluster.exists("-n", namespace, "job", "bu-bench-1"))
    assert [j["metadata"]["name"] for j in cluster.get_json("-n", namespace, "jobs")["items"]] == []


def test_a_job_past_its_deadline_is_timed_out_retried_then_reported(cluster: Any, operator: Any,
                                                                     namespace: str) -> None:
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=yaml.safe_dump(modelserver("bt", cores=1,
                                                                                           benchmark=bench_spec())))
    for job_name in ("bt-bench-1", "bt-bench-1-r1"):
        eventually(f"job {job_name}", lambda job_name=job_name: cluster.exists("-n", namespace, "job", job_name),
                   timeout=90)
        bench_pod(cluster, namespace, job_name)  # running, never finishing (no fake exit code)
        if job_name.endswith("-r1"):
            cond = benchmarked_says(cluster, namespace, "bt", "attempt 2, after TimedOut: job bt-bench-1 did not "
                                    "finish within its activeDeadlineSeconds (1s)")
            assert (cond["status"], cond["reason"]) == ("Unknown", "Running")
        # What a hung client meets after duration + 900 s: the Job controller's deadline.
        cluster.kubectl("patch", "-n", namespace, f"job/{job_name}", "--type=merge",
                        "-p", json.dumps({"spec": {"activeDeadlineSeconds": 1}}))
    cond = benchmarked(cluster, namespace, "bt", "False")
    assert cond["reason"] == "TimedOut", cond
    assert get_ms(cluster, namespace, "bt")["status"]["benchmark"]["jobName"] == "bt-bench-1-r1"


def benchmarked_says(cluster: Any, namespace: str, name: str, text: str) -> dict[str, Any]:
    def probe() -> dict[str, Any] | None:
        cond = condition(get_ms(cluster, namespace, name), "Benchmarked")
        return cond if text in cond.get("message", "") else None

    return eventually(f"Benchmarked saying {text!r}", probe, timeout=60)


def test_a_deleted_client_pod_ends_in_no_report_and_a_retry(cluster: Any, operator: Any, namespace: str) -> None:
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=yaml.safe_dump(modelserver("bd", cores=1,
                                                                                           benchmark=bench_spec())))
    eventually("job bd-bench-1", lambda: cluster.exists("-n", namespace, "job", "bd-bench-1"), timeout=90)
    pod = bench_pod(cluster, namespace, "bd-bench-1")
    cluster.kubectl("delete", "-n", namespace, f"pod/{pod['metadata']['name']}", "--wait=false")

    cond = benchmarked_says(cluster, namespace, "bd", "attempt 2, after NoReport: job bd-bench-1 finished")
    assert "no report after 3s" in cond["message"], cond
    retry = bench_pod(cluster, namespace, "bd-bench-1-r1")
    finish(cluster, namespace, retry["metadata"]["name"], message=json.dumps(REPORT))
    cond = benchmarked(cluster, namespace, "bd", "True")
    assert get_ms(cluster, namespace, "bd")["status"]["benchmark"]["jobName"] == "bd-bench-1-r1"
