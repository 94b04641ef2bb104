"""`pinserve tune`'s adapters without a server: CPU counting, the --host probe, the argv of a measurement, and
`pinserve tune-report`'s inputs and table."""

from __future__ import annotations

import io
import json
import stat
from pathlib import Path
from typing import Any

import pytest

from pinserve.tune.cli import cores_of
from pinserve.tune.measure import BenchSettings, bench_argv
from pinserve.tune.server import accepts_host_flag, batching_config
from pinserve.tuning import Cores
from pinserve.tuning_report import main as report_main
from pinserve.tuning_report import render_table, tunings

pytestmark = pytest.mark.unit


def _sysfs(root: Path, cpus: dict[int, tuple[int, int]]) -> Path:
    """cpuN -> (package, core)."""
    for cpu, (package, core) in cpus.items():
        topo = root / "devices/system/cpu" / f"cpu{cpu}" / "topology"
        topo.mkdir(parents=True)
        (topo / "physical_package_id").write_text(f"{package}\n")
        (topo / "core_id").write_text(f"{core}\n")
    return root


@pytest.mark.parametrize(
    ("layout", "cpus", "expected"),
    [
        ({0: (0, 0), 1: (0, 1), 2: (0, 0), 3: (0, 1)}, {0, 1, 2, 3}, Cores(2, 2)),  # SMT siblings
        ({0: (0, 0), 1: (0, 1), 2: (0, 0), 3: (0, 1)}, {0, 1}, Cores(2, 1)),
        ({0: (0, 0), 1: (1, 0)}, {0, 1}, Cores(2, 1)),  # same core id on two sockets
        ({}, {0, 1, 2}, Cores(3, 1)),  # no topology: each CPU a core
    ],
)
def test_cores_of(tmp_path: Path, layout: dict[int, tuple[int, int]], cpus: set[int], expected: Cores) -> None:
    assert cores_of(frozenset(cpus), _sysfs(tmp_path, layout)) == expected


@pytest.mark.parametrize(
    ("help_text", "accepts"),
    [
        ("  --host=0.0.0.0  [stand-in only] address", True),
        ("--port=8500\n--rest_api_port=8501", False),
        ("--host_network_thing=1", False),
    ],
)
def test_accepts_host_flag(tmp_path: Path, help_text: str, accepts: bool) -> None:
    binary = tmp_path / "server"
    binary.write_text(f"#!/bin/sh\ncat <<'END'\n{help_text}\nEND\n")
    binary.chmod(binary.stat().st_mode | stat.S_IXUSR)
    assert accepts_host_flag(str(binary)) is accepts
    assert accepts_host_flag(str(tmp_path / "missing")) is False


def test_bench_argv_is_the_jobs() -> None:
    s = BenchSettings(batch_size=4, concurrency=2, duration_s=3, shapes=(("x", "1,4"),))
    argv = bench_argv("127.0.0.1:9", "m", s)
    assert argv[argv.index("--mode") + 1] == "both"
    assert argv[argv.index("--batch-size") + 1] == "4" and argv[-2:] == ["--shape", "x=1,4"]
    probe = bench_argv("127.0.0.1:9", "m", s, "latency", requests=30)
    assert probe[probe.index("--requests") + 1] == "30" and probe[probe.index("--mode") + 1] == "latency"


def test_batching_config_merges_concurrent_requests() -> None:
    text = batching_config(cores=2, batch_size=8, concurrency=4)
    assert "max_batch_size { value: 32 }" in text and "num_batch_threads { value: 2 }" in text


TUNING: dict[str, Any] = {
    "objective": "latency",
    "trials": [
        {"intraOp": 4, "interOp": 2, "batching": False, "status": "ok", "p50Ms": 10.0, "p99Ms": 20.0,
         "itemsPerSecond": 90.0},
        {"intraOp": 3, "interOp": 2, "batching": False, "status": "stoppedEarly", "p50Ms": 40.0, "p99Ms": None,
         "itemsPerSecond": None, "reason": "probe p50 40 ms > 1.5 x best p99 20 ms"},
        {"intraOp": 2, "interOp": 1, "batching": False, "status": "ok", "p50Ms": 5.0, "p99Ms": 8.0,
         "itemsPerSecond": 180.0},
    ],
    "gainPercent": 60.0,
    "tuningSeconds": 42.0,
}


def test_render_table_best_first() -> None:
    lines = render_table(TUNING).splitlines()
    assert lines[0] == "objective latency; 3 trial(s) in 42 s; gain over Intel's rule: +60%"
    assert [line.split()[:4] for line in lines[2:]] == [["1", "2", "1", "off"], ["2", "4", "2", "off"],
                                                        ["-", "3", "2", "off"]]
    assert "baseline (Intel's rule)" in lines[3] and "probe p50" in lines[4]


@pytest.mark.parametrize(
    ("doc", "names"),
    [
        (TUNING, [None]),
        ({"metadata": {"name": "rfcn"}, "status": {"tuning": TUNING}}, ["rfcn"]),
        ({"items": [{"metadata": {"name": "a"}, "status": {"tuning": TUNING}},
                    {"metadata": {"name": "b"}, "status": {}}]}, ["a"]),
    ],
)
def test_tunings_found(doc: Any, names: list[str | None]) -> None:
    assert [name for name, _ in tunings(doc)] == names


@pytest.mark.parametrize(
    "doc",
    [
        {"metadata": {"name": "rfcn"}, "status": {}},
        {"items": []},
        [1, 2],
    ],
)
def test_tunings_missing(doc: Any) -> None:
    with pytest.raises(ValueError, match=r"tuning|expected"):
        tunings(doc)


def test_tune_report_reads_stdin(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    ms = {"kind": "ModelServer", "metadata": {"name": "rfcn"}, "status": {"tuning": TUNING}}
    monkeypatch.setattr("sys.stdin", io.StringIO(json.dumps(ms)))
    assert report_main([]) == 0
    assert capsys.readouterr().out.startswith("== rfcn\nobjective latency")
    monkeypatch.setattr("sys.stdin", io.StringIO("{not json"))
    assert report_main(["-"]) == 2
    assert "pinserve tune-report: error" in capsys.readouterr().err
