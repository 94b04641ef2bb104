"""In-cluster tuning against the real API server: the operator runs trial pods one at a time and the test plays
each trial's measuring container (KWOK has no containers): it reads the candidate from the pod the operator
made (its server container's thread variables) and reports the latency of a known table whose best is not
Intel's rule. The run must find that best, confirm it, apply it to the Deployment, clean up, and say so in
status.tuning, the Tuned condition, an Event and `kubectl get -o wide`."""

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

# p50 in ms by (intra-op, inter-op); Intel's rule on 2 cores is (2, 2).
LATENCY = {(2, 2): 4.0, (1, 1): 2.0, (1, 2): 3.0, (2, 1): 3.5}
TUNING_LABEL = "app.kubernetes.io/component=tuning"


operator = operator_fixture(PINSERVE_RESYNC_SECONDS="2")


def candidate(pod: dict[str, Any]) -> tuple[int, int]:
    env = {e["name"]: e.get("value") for e in pod["spec"]["containers"][0]["env"]}
    return int(env["TENSORFLOW_INTRA_OP_PARALLELISM"]), int(env["TENSORFLOW_INTER_OP_PARALLELISM"])


def play_trial(cluster: Any, namespace: str, pod: dict[str, Any]) -> tuple[int, int]:
    """The measuring container finishes with the benchmark summary of the table's latency."""
    cand = candidate(pod)
    p50 = LATENCY[cand]
    report = {"latencyMs": {"p50": p50, "p99": p50 * 1.25}, "requests": 700,
              "throughput": {"batchSize": 8, "itemsPerSecond": 8000.0 / p50, "latencyMs": {"p99": p50 * 4}}}
    statuses = [
        {"name": "server", "ready": True, "restartCount": 0, "image": "x", "imageID": "", "containerID": "kwok://s",
         "state": {"running": {"startedAt": "2026-12-01T00:00:00Z"}}},
        {"name": "trial", "ready": False, "restartCount": 0, "image": "x", "imageID": "", "containerID": "kwok://t",
         "state": {"terminated": {"exitCode": 0, "reason": "Completed", "message": json.dumps(report),
                                  "startedAt": "2026-12-01T00:00:00Z", "finishedAt": "2026-12-01T00:00:01Z"}}},
    ]
    cluster.kubectl("patch", "-n", namespace, f"pod/{pod['metadata']['name']}", "--subresource=status",
                    "--type=merge", "-p", json.dumps({"status": {"containerStatuses": statuses}}))
    return cand


def test_tuning_finds_confirms_and_applies_the_known_best(cluster: Any, operator: Any, namespace: str) -> None:
    body = modelserver("tuned", cores=2, tuning={
        "enabled": True, "objective": "latency", "search": {"intraOp": [1, 2], "interOp": [1, 2]}, "maxTrials": 4})
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=yaml.safe_dump(body))
    played: list[tuple[int, int]] = []
    most_at_once = 0

    def trials_done() -> dict[str, Any] | None:
        nonlocal most_at_once
        ms = cluster.get_json("-n", namespace, "modelserver/tuned")
        if condition(ms, "Tuned").get("status") in ("True", "False"):
            return dict(ms)
        pods = cluster.get_json("-n", namespace, "pods", "-l", TUNING_LABEL)["items"]
        most_at_once = max(most_at_once, len(pods))
        for pod in pods:
            running = (pod.get("status") or {}).get("podIP") and not pod["metadata"].get("deletionTimestamp")
            states = [c.get("state", {}) for c in (pod.get("status") or {}).get("containerStatuses") or []]
            if running and not any("terminated" in s for s in states):
                played.append(play_trial(cluster, namespace, pod))
        return None

    ms = eventually("the tuning run to finish", trials_done, timeout=240, interval=0.5)
    tuned = condition(ms, "Tuned")
    assert tuned["status"] == "True" and tuned["reason"] == "Tuned", tuned
    tuning = ms["status"]["tuning"]
    assert (tuning["best"]["intraOp"], tuning["best"]["interOp"]) == (1, 1)
    assert (tuning["trials"][0]["intraOp"], tuning["trials"][0]["interOp"]) == (2, 2)  # Intel's rule first
    assert len(tuning["trials"]) == 4 and len(tuning["confirmation"]) == 2
    assert tuning["gainPercent"] == 50.0 and tuning["applied"] is True
    assert played[0] == (2, 2) and len(played) == 6 and most_at_once == 1
    # The winner is what the Deployment runs; the trials and their ConfigMap are gone.
    deployment = eventually("the tuned Deployment", lambda: (
        d := cluster.get_json("-n", namespace, "deployment/tuned"),
        d if candidate(d["spec"]["template"]) == (1, 1) else None)[1], timeout=30)
    assert deployment["spec"]["replicas"] == 1
    eventually("trial pods gone", lambda: not cluster.get_json("-n", namespace, "pods", "-l", TUNING_LABEL)["items"],
               timeout=30)
    eventually("the trials' ConfigMap gone", lambda: cluster.kubectl(
        "get", "-n", namespace, "configmap/tuned-tuning", check=False).returncode != 0, timeout=30)
    events = cluster.get_json("-n", namespace, "events", "--field-selector", "reason=TuningCompleted")["items"]
    assert events and "intra-op 1, inter-op 1" in events[0]["message"]
    wide = cluster.kubectl("get", "-n", namespace, "modelservers", "-o", "wide").stdout
    assert "GAIN" in wide.upper() and "50" in wide.splitlines()[1]
