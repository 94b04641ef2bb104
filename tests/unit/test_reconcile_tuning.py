"""Tuning seen from the reconcile core: a run holds the benchmark (and, with beforeServing, the Deployment at
0 replicas) and starts one trial pod; a finished run's winner reaches the Deployment and is benchmarked anew."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from pinserve import tuneflow
from pinserve.api import parse_modelserver
from pinserve.planning import node_info, plan
from pinserve.reconcile import Observed, reconcile
from pinserve.settings import Settings

pytestmark = pytest.mark.unit

SETTINGS = Settings()
NOW = "2026-12-01T00:00:00Z"


def conditions(outcome: Any) -> dict[str, tuple[str, str]]:
    return {c["type"]: (c["status"], c["reason"]) for c in outcome.status["conditions"]}


def server_env(outcome: Any) -> dict[str, str]:
    deployment = next(o for o in outcome.apply if o["kind"] == "Deployment")
    return {e["name"]: e.get("value", "") for e in deployment["spec"]["template"]["spec"]["containers"][0]["env"]}


@pytest.fixture
def body(make_ms: Callable[..., dict[str, Any]]) -> dict[str, Any]:
    ms = make_ms(generation=2)
    ms["spec"]["resources"]["physicalCores"] = 4
    ms["spec"]["tuning"] = {"enabled": True, "beforeServing": True, "search": {"intraOp": [2, 4], "interOp": [2]}}
    return ms


@pytest.fixture
def nodes(topo: Callable[..., Any], make_node: Callable[..., dict[str, Any]]) -> list[Any]:
    return [node_info(make_node("n", topo(1, 8, 2)))]


def test_a_run_in_progress_holds_serving_and_the_benchmark(body: dict[str, Any], nodes: list[Any]) -> None:
    out = reconcile(body, nodes, Observed(), SETTINGS, NOW)
    kinds = [o["kind"] for o in out.apply]
    assert kinds.count("Pod") == 1 and "Job" not in kinds
    deployment = next(o for o in out.apply if o["kind"] == "Deployment")
    assert deployment["spec"]["replicas"] == 0
    cond = conditions(out)
    assert cond["Ready"] == ("False", "Tuning") and cond["Tuned"] == ("Unknown", "Running")
    assert cond["Benchmarked"] == ("Unknown", "WaitingForTuning")
    assert out.status["tuning"]["phase"] == "Running" and out.requeue_after is not None
    assert "TENSORFLOW_INTRA_OP_PARALLELISM" not in server_env(out)  # Intel's rule until a winner


def test_the_winner_reaches_the_deployment_and_is_benchmarked(body: dict[str, Any], nodes: list[Any]) -> None:
    ms = parse_modelserver(body)
    trial = {"intraOp": 2, "interOp": 2, "batching": False, "status": "ok", "p50Ms": 1.0, "p99Ms": 1.5}
    base = {"intraOp": 4, "interOp": 2, "batching": False, "status": "ok", "p50Ms": 2.0, "p99Ms": 3.0}
    placement = plan(ms.spec, nodes, SETTINGS)
    body["status"] = {"tuning": {
        "runKey": tuneflow.run_key(ms, placement), "phase": "Completed", "applied": True, "best": trial,
        "baseline": base, "serving": {**trial, "cpus": placement.cpu_request},
        "trials": [base, trial], "gainPercent": 50.0, "summary": "best of 2 trial(s)"}}
    out = reconcile(body, nodes, Observed(children={}), SETTINGS, NOW)
    env = server_env(out)
    assert env["TENSORFLOW_INTRA_OP_PARALLELISM"] == "2" and env["TENSORFLOW_INTER_OP_PARALLELISM"] == "2"
    deployment = next(o for o in out.apply if o["kind"] == "Deployment")
    assert deployment["spec"]["replicas"] == 1
    assert conditions(out)["Tuned"] == ("True", "Tuned")
    assert out.status["placement"]["threads"]["intraOp"] == 2
    assert not [o for o in out.apply if o["kind"] == "Pod"]


def test_without_before_serving_trials_wait_for_the_rollout(body: dict[str, Any], nodes: list[Any]) -> None:
    body["spec"]["tuning"]["beforeServing"] = False
    out = reconcile(body, nodes, Observed(), SETTINGS, NOW)
    assert [o["kind"] for o in out.apply].count("Pod") == 0
    assert next(o for o in out.apply if o["kind"] == "Deployment")["spec"]["replicas"] == 1
    cond = conditions(out)
    assert cond["Tuned"] == ("Unknown", "Running") and cond["Benchmarked"] == ("Unknown", "WaitingForTuning")
    assert "rolled out" in next(c for c in out.status["conditions"] if c["type"] == "Tuned")["message"]
