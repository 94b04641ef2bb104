"""`pinserve tune-trial`, the measuring container of an in-cluster trial pod, against a real gRPC server on
loopback whose latency the test dictates: a clearly worse candidate stops after its probe, any other is
measured in full with the benchmark Job's own summary, and the operator reads both back (pinserve.tuneflow)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from test_tune_run import FAKE, REPO, _canned

from pinserve.trialpods import read_report
from pinserve.tuning import Candidate, Objective, TrialStatus

pytestmark = pytest.mark.unit


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def server(tmp_path: Path) -> Iterator[str]:
    """The fake server at 20 ms per Predict (its 'default' entry), on loopback."""
    port = _free_port()
    canned = _canned(tmp_path, {"default": 20.0})
    proc = subprocess.Popen([sys.executable, str(FAKE), f"--port={port}", "--host=127.0.0.1", f"--canned={canned}"],
                            stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            time.sleep(0.1)
        yield f"127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def _trial(target: str, summary: Path, *extra: str) -> dict[str, Any]:
    bench = ["--target", target, "--model", "m", "--mode", "both", "--warmup", "2", "--requests", "40",
             "--batch-size", "2", "--concurrency", "2", "--duration", "1", "--summary-file", str(summary),
             "--wait-ready", "30"]
    done = subprocess.run([sys.executable, "-m", "pinserve", "tune-trial", *extra, "--", *bench],
                          capture_output=True, text=True, cwd=REPO, timeout=120, check=False,
                          env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    assert done.returncode == 0, done.stderr[-3000:]
    message: dict[str, Any] = json.loads(summary.read_text())
    return message


def test_a_clearly_worse_candidate_stops_after_its_probe(server: str, tmp_path: Path) -> None:
    message = _trial(server, tmp_path / "summary", "--objective", "latency", "--best-p99-ms", "2")
    assert "stoppedEarly" in message and message["probe"]["p50Ms"] >= 20.0
    trial = read_report(Candidate(1, 2), json.dumps(message), Objective.LATENCY, None, 3.0)
    assert trial.status is TrialStatus.STOPPED_EARLY and trial.measurement.p50_ms == message["probe"]["p50Ms"]


def test_a_close_candidate_is_measured_as_the_benchmark_job_measures(server: str, tmp_path: Path) -> None:
    message = _trial(server, tmp_path / "summary", "--objective", "throughput", "--best-items-per-second", "40")
    assert "stoppedEarly" not in message
    assert message["latencyMs"]["p50"] >= 20.0 and message["throughput"]["itemsPerSecond"] > 0
    trial = read_report(Candidate(2, 2), json.dumps(message), Objective.THROUGHPUT, None, 3.0)
    assert trial.status is TrialStatus.OK
    assert trial.measurement.items_per_second == message["throughput"]["itemsPerSecond"]
    # 40 latency requests support no p99 (MLPerf's rule): the latency objective cannot rank it.
    assert read_report(Candidate(2, 2), json.dumps(message), Objective.LATENCY, None, 3.0).status is \
        TrialStatus.FAILED


def test_the_baseline_has_no_probe(server: str, tmp_path: Path) -> None:
    message = _trial(server, tmp_path / "summary", "--objective", "throughput")
    assert "stoppedEarly" not in message and message["requests"] == 40
