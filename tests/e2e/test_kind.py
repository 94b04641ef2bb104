"""End to end on kind: static CPU manager, real TensorFlow Serving, real benchmark.

Needs a Docker engine (and builds kind from the Go module proxy); skipped with the reason
where Docker is missing. It drives the same steps as `make demo` (tools/demo_kind.py).
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]


def _docker_reason() -> str | None:
    if shutil.which("docker") is None:
        return "the docker client is not installed"
    probe = subprocess.run(["docker", "info"], capture_output=True, text=True, check=False)
    if probe.returncode != 0:
        return "no Docker engine answers `docker info` (kind needs one)"
    return None


_REASON = _docker_reason()


@pytest.fixture(scope="module")
def demo() -> Any:
    if _REASON:
        pytest.skip(f"e2e needs Docker: {_REASON}")
    from tools import demo_kind  # noqa: PLC0415  (only imported when Docker is there)

    demo_kind.create_cluster()
    demo_kind.build_images()
    demo_kind.install_chart()
    demo_kind.serve_demo_model()
    demo_kind.apply_demo()
    demo_kind.wait_for("Ready")
    demo_kind.wait_for("Benchmarked")
    yield demo_kind
    demo_kind.down()


def _modelserver(demo: Any) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(demo.kubectl("get", "-n", demo.DEMO_NAMESPACE, "modelserver/demo", "-o", "json"))
    return data


def test_server_pods_are_guaranteed_and_pinned(demo: Any) -> None:
    status = _modelserver(demo)["status"]
    conditions = {c["type"]: c for c in status["conditions"]}
    assert conditions["Pinned"]["status"] == "True", conditions["Pinned"]
    for pod in status["pods"]:
        assert pod["qosClass"] == "Guaranteed"
        # The cpuset the kernel enforces inside the container is what status reports.
        allowed = demo.kubectl("exec", "-n", demo.DEMO_NAMESPACE, pod["name"], "-c", "server", "--",
                               "grep", "Cpus_allowed_list", "/proc/1/status")
        assert allowed.split(":", 1)[1].strip() == pod["cpus"]


def test_start_script_threads_match_cores(demo: Any) -> None:
    status = _modelserver(demo)["status"]
    cores = status["placement"]["physicalCores"]
    for pod in status["pods"]:
        log = demo.kubectl("logs", "-n", demo.DEMO_NAMESPACE, pod["name"], "-c", "server")
        line = next(row for row in log.splitlines() if row.startswith("pinserve:"))
        fields = dict(kv.split("=", 1) for kv in line.removeprefix("pinserve:").split() if "=" in kv)
        assert int(fields["physical_cores"]) == cores
        assert int(fields["OMP_NUM_THREADS"]) == cores
        assert int(fields["TENSORFLOW_INTRA_OP_PARALLELISM"]) == cores


def test_benchmark_figures_in_status(demo: Any) -> None:
    bench = _modelserver(demo)["status"]["benchmark"]
    assert bench["latencyMs"]["p50"] > 0
    assert bench["throughput"]["itemsPerSecond"] > 0
    assert bench["errors"] == 0
