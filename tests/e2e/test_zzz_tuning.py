"""A tuned ModelServer (manifests/examples/demo-tuned.yaml): trial pods one at a time on the server's shape,
each measured by the benchmark client, then the winner served and benchmarked. Runs last (after the frozen
graph test): on the real node the trials need the one pinnable CPU, so the run holds serving until it ends
(spec.tuning.beforeServing), and every trial's server must be given that CPU exclusively."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from e2e_support import Backend, free_the_pinnable_cpu, modelserver

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(2400)]

NAME = "demo-tuned"
REPO = Path(__file__).resolve().parents[2]
TRIALS = "app.kubernetes.io/component=tuning"


def _tuned(backend: Backend) -> dict[str, Any]:
    if backend.name == "realnode":
        ms: dict[str, Any] = backend.stack.demo_modelserver(  # type: ignore[attr-defined]
            backend.extra["model"], tuned=True, name=NAME)  # type: ignore[attr-defined]
        return ms
    doc: dict[str, Any] = yaml.safe_load((REPO / "manifests/examples/demo-tuned.yaml").read_text())
    return doc


def _exclusive_trial_cpus(backend: Backend, pods: list[dict[str, Any]]) -> set[str]:
    """The CPUs the kubelet's checkpoint gives the server container of a running trial pod (real node only)."""
    if backend.name != "realnode":
        return set()
    state = json.loads(backend.stack.node.layout.cpu_manager_state.read_text())  # type: ignore[attr-defined]
    entries = state.get("entries") or {}
    return {entries[p["metadata"]["uid"]]["server"] for p in pods
            if "server" in (entries.get(p["metadata"]["uid"]) or {})}


def test_a_tuned_modelserver_runs_its_trials_then_serves_the_winner(backend: Backend) -> None:
    ns = backend.namespace
    free_the_pinnable_cpu(backend)
    started = time.monotonic()
    try:
        backend.kubectl("apply", "-n", ns, "-f", "-", input_text=json.dumps(_tuned(backend)))
        seen: set[str] = set()
        most_at_once = 0
        trial_cpus: set[str] = set()
        deadline = time.monotonic() + 1500
        while time.monotonic() < deadline:
            ms = modelserver(backend, NAME)
            tuned = {c["type"]: c for c in (ms.get("status") or {}).get("conditions") or []}.get("Tuned", {})
            if tuned.get("status") in ("True", "False"):
                break
            pods = json.loads(backend.kubectl("get", "pods", "-n", ns, "-l", TRIALS, "-o", "json"))["items"]
            alive = [p for p in pods if not p["metadata"].get("deletionTimestamp")]
            most_at_once = max(most_at_once, len(pods))
            seen.update(p["metadata"]["name"] for p in alive)
            trial_cpus |= _exclusive_trial_cpus(backend, [p for p in alive
                                                          if (p.get("status") or {}).get("phase") == "Running"])
            time.sleep(1)
        tuning_seconds = time.monotonic() - started
        ms = modelserver(backend, NAME)
        conditions = {c["type"]: c for c in ms["status"]["conditions"]}
        assert conditions["Tuned"]["status"] == "True", conditions["Tuned"]
        tuning = ms["status"]["tuning"]
        ok = [t for t in tuning["trials"] if t["status"] == "ok"]
        assert len(tuning["trials"]) >= 2 and ok, tuning
        assert all(t["itemsPerSecond"] > 0 and t["p50Ms"] > 0 for t in ok), tuning
        assert tuning["best"] is not None and tuning["gainPercent"] is not None
        assert len(seen) == len(tuning["trials"]) + len(tuning.get("confirmation") or [])
        assert most_at_once == 1, f"{most_at_once} trial pods at once"
        if backend.name == "realnode":
            assert trial_cpus == {"1"}, f"trial servers were given {trial_cpus} (the pinnable CPU is 1)"
        # The winner serves, and the benchmark measures what it serves.
        backend.wait_for("Ready", name=NAME, timeout=600)
        backend.wait_for("Benchmarked", name=NAME, timeout=900)
        ms = modelserver(backend, NAME)
        assert ms["status"]["benchmark"]["errors"] == 0
        deployment = json.loads(backend.kubectl("get", "-n", ns, f"deployment/{NAME}", "-o", "json"))
        env = {e["name"]: e.get("value", "") for e in deployment["spec"]["template"]["spec"]["containers"][0]["env"]}
        best = tuning["best"]
        if tuning["applied"]:
            assert env["TENSORFLOW_INTRA_OP_PARALLELISM"] == str(best["intraOp"])
            assert bool(env["PINSERVE_BATCHING_CONFIG"]) is best["batching"]
        assert not json.loads(backend.kubectl("get", "pods", "-n", ns, "-l", TRIALS, "-o", "json"))["items"]
        report = subprocess.run([sys.executable, "-m", "pinserve", "tune-report"], input=json.dumps(ms),
                                capture_output=True, text=True, check=True, cwd=REPO).stdout
        wide = backend.kubectl("get", "-n", ns, "modelservers", NAME, "-o", "wide")
        print(f"\n{wide}\n{report}tuning took {tuning_seconds:.0f}s (the run's own figure: "
              f"{tuning.get('tuningSeconds')}s)")
        assert "baseline (Intel's rule)" in report and "GAIN" in wide.upper()
    finally:
        backend.kubectl("delete", "-n", ns, f"modelserver/{NAME}", "--ignore-not-found", "--wait=false", check=False)
