"""spec.tuning (pydantic and CRD agree) and status.tuning (the CRD keeps every field `pinserve tune` prints and
every field of an in-cluster run)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from pinserve import api
from pinserve.tuning import Candidate, Measurement, Objective, Trial, TrialStatus, result

pytestmark = pytest.mark.unit

CRD = Path(__file__).resolve().parents[2] / "crds" / "modelservers.pinserve.io.yaml"
BASE = {"model": {"uri": "http://x/m.tar.gz"}, "resources": {"physicalCores": 2, "memory": "1Gi"}}


def _schema() -> dict[str, Any]:
    crd = yaml.safe_load(CRD.read_text())
    schema: dict[str, Any] = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    return schema


@pytest.mark.parametrize(
    ("tuning", "error"),
    [
        ({}, None),
        ({"objective": "throughput", "p99BudgetMs": 50, "maxTrials": 4,
          "search": {"intraOp": [1, 2], "interOp": [1], "batching": [False, True]}}, None),
        ({"enabled": True, "beforeServing": True, "timeoutMinutes": 30}, None),
        ({"timeoutMinutes": 0}, "timeoutMinutes"),
        ({"objective": "latency", "p99BudgetMs": 50}, "throughput only"),
        ({"maxTrials": 0}, "maxTrials"),
        ({"search": {"intraOp": []}}, "intraOp"),
        ({"search": {"interOp": [0]}}, "interOp"),
        ({"objective": "fastest"}, "objective"),
    ],
)
def test_spec_tuning(tuning: dict[str, Any], error: str | None) -> None:
    if error is None:
        spec = api.parse_spec({**BASE, "tuning": tuning})
        assert spec.tuning.enabled is bool(tuning.get("enabled"))
        return
    with pytest.raises(api.InvalidSpecError, match=error) as info:
        api.parse_spec({**BASE, "tuning": tuning})
    assert info.value.field.startswith("spec.tuning")


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ({}, [True]),  # the CRD's default: the API server checks the rules against it
        ({"enabled": True, "objective": "latency"}, [True]),
        ({"enabled": True, "objective": "latency", "p99BudgetMs": 5.0}, [False]),
        ({"enabled": False, "objective": "throughput", "p99BudgetMs": 5.0}, [True]),
    ],
)
def test_spec_tuning_cel_rules(value: dict[str, Any], expected: list[bool]) -> None:
    celpy = pytest.importorskip("celpy", reason="cel-python is not installed")
    rules = _schema()["properties"]["spec"]["properties"]["tuning"]["x-kubernetes-validations"]
    env = celpy.Environment()
    got = [bool(env.program(env.compile(r["rule"])).evaluate({"self": celpy.json_to_cel(value)})) for r in rules]
    assert got == expected


def _kept(value: Any, node: dict[str, Any]) -> Any:
    """What the API server keeps of ``value`` under ``node`` (unknown fields dropped)."""
    if isinstance(value, dict):
        props = node.get("properties", {})
        return {k: _kept(v, props[k]) for k, v in value.items() if k in props}
    if isinstance(value, list):
        return [_kept(v, node["items"]) for v in value]
    return value


def test_status_tuning_keeps_the_tune_json() -> None:
    trials = [
        Trial(Candidate(2, 2), TrialStatus.OK, Measurement(1.0, 2.0, 100.0, 3.0), seconds=5.0),
        Trial(Candidate(1, 2), TrialStatus.STOPPED_EARLY, Measurement(p50_ms=9.0), "probe", 1.0),
        Trial(Candidate(1, 1), TrialStatus.OK, Measurement(0.5, 1.0, 120.0, 2.0), seconds=4.0),
        Trial(Candidate(2, 1), TrialStatus.FAILED, reason="crashed"),
    ]
    out = result(Objective.LATENCY, trials, confirmation=trials[:2]) | {"tuningSeconds": 10.0}
    # What an in-cluster run adds (pinserve.tuneflow).
    out |= {"runKey": "0123456789abcdef", "generation": 3, "phase": "Completed", "startedAt": "2026-12-01T00:00:00Z",
            "completedAt": "2026-12-01T00:05:00Z", "planned": 4, "applied": True, "summary": "best of 4",
            "serving": {"intraOp": 1, "interOp": 1, "batching": False, "cpus": 2},
            "error": {"reason": "NoWinner", "message": "m"}}
    status = _schema()["properties"]["status"]["properties"]["tuning"]
    assert _kept(out, status) == out

