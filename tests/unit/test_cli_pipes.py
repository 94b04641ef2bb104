"""The CLI in pipelines: `pinserve topology --json` feeds `pinserve render --topology`, and a reader that goes
away early (`| head -1`) ends pinserve quietly with exit status 141."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from pinserve.cli import EXIT_BROKEN_PIPE, main
from pinserve.topology import read_topology
from snapshots import snapshot_root

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[2]
RFCN = REPO / "manifests" / "examples" / "rfcn.yaml"
PINSERVE = [sys.executable, "-m", "pinserve"]
# Snapshots with and without SMT, one NUMA node and several, offline CPUs.
SNAPSHOTS = ("16em64t-4s2c2t", "16em64t-4s2c2t-offlines", "32intel64-2p8co2t+8ve", "64amd64-4s2n4ca2co",
             "8em64t-2s2ca2c")


def server_cpu(out: str) -> str:
    [deployment] = [d for d in yaml.safe_load_all(out) if d and d["kind"] == "Deployment"]
    cpu: str = deployment["spec"]["template"]["spec"]["containers"][0]["resources"]["requests"]["cpu"]
    return cpu


def topology_json(capsys: pytest.CaptureFixture[str], snapshot: str) -> str:
    assert main(["topology", "--json", "--sysfs-root", str(snapshot_root(snapshot))]) == 0
    return capsys.readouterr().out


# -- topology --json into render --topology -----------------------------------------------------------------


@pytest.mark.parametrize("snapshot", SNAPSHOTS)
def test_topology_json_is_what_render_reads(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                            snapshot: str) -> None:
    report = topology_json(capsys, snapshot)
    assert json.loads(report)["cpuTopology"] == read_topology(snapshot_root(snapshot)).to_dict()
    path = tmp_path / "topology.json"
    path.write_text(report)

    assert main(["render", "-f", str(RFCN), "--topology", str(path)]) == 0
    from_report = capsys.readouterr()
    assert main(["render", "-f", str(RFCN), "--topology", str(snapshot_root(snapshot))]) == 0
    from_sysfs = capsys.readouterr()
    assert from_report.out == from_sysfs.out
    assert "no CPU topology" not in from_report.err


def test_render_reads_the_topology_from_stdin(capsys: pytest.CaptureFixture[str],
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    report = topology_json(capsys, "32intel64-2p8co2t+8ve")
    monkeypatch.setattr(sys, "stdin", io.StringIO(report))
    assert main(["render", "-f", str(RFCN), "--topology", "-"]) == 0
    assert server_cpu(capsys.readouterr().out) == "8"  # 4 physical cores x 2 threads


def test_only_one_of_spec_and_topology_reads_stdin(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["render", "-f", "-", "--topology", "-"]) == 2
    assert "cannot both read stdin" in capsys.readouterr().err


@pytest.mark.parametrize(("document", "message"), [
    ({"sockets": 2, "cores": []}, "not a CPU topology"),
    ({"kind": "Node", "metadata": {"name": "n"}}, "has no pinserve.io/cpu-topology annotation"),
    ({"v": 99, "cores": []}, "unsupported cpu topology format version 99"),
    ({"recommended": {}, "cpuTopology": {"v": 1, "cores": "x"}}, "malformed cpu topology"),
])
def test_wrong_topology_documents_exit_2(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                         document: dict[str, Any], message: str) -> None:
    path = tmp_path / "topology.json"
    path.write_text(json.dumps(document))
    assert main(["render", "-f", str(RFCN), "--topology", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and "Traceback" not in err


def test_a_real_pipe_from_topology_to_render() -> None:
    root = str(snapshot_root("64amd64-4s2n4ca2co"))
    with subprocess.Popen([*PINSERVE, "topology", "--json", "--sysfs-root", root], stdout=subprocess.PIPE) as topo:
        assert topo.stdout is not None
        render = subprocess.run([*PINSERVE, "render", "-f", str(RFCN), "--topology", "-"], stdin=topo.stdout,
                                capture_output=True, text=True, timeout=120, check=False)
        topo.stdout.close()
    assert topo.returncode == 0
    assert render.returncode == 0, render.stderr
    assert server_cpu(render.stdout) == "4"  # no SMT: 4 physical cores = 4 CPUs


# -- a reader that goes away --------------------------------------------------------------------------------


def run_into_closed_pipe(args: list[str]) -> subprocess.CompletedProcess[str]:
    """Run pinserve with a stdout pipe whose reader has already gone: its first write fails, every time."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        return subprocess.run([*PINSERVE, *args], stdout=write_end, stderr=subprocess.PIPE, text=True,
                              timeout=120, check=False)
    finally:
        os.close(write_end)


def assert_quiet(stderr: str) -> None:
    for noise in ("Traceback", "BrokenPipeError", "Exception ignored", "Broken pipe"):
        assert noise not in stderr, stderr


@pytest.mark.parametrize("args", [
    ["render", "-f", str(RFCN)],
    ["topology", "--sysfs-root", "SNAPSHOT"],
    ["topology", "--json", "--sysfs-root", "SNAPSHOT"],
], ids=["render", "topology", "topology-json"])
def test_closed_stdout_exits_141_quietly(args: list[str]) -> None:
    args = [str(snapshot_root("16em64t-4s2c2t")) if a == "SNAPSHOT" else a for a in args]
    result = run_into_closed_pipe(args)
    assert result.returncode == EXIT_BROKEN_PIPE == 141
    assert_quiet(result.stderr)


def test_help_into_a_closed_pipe_is_quiet() -> None:
    result = run_into_closed_pipe(["--help"])
    assert result.returncode in (0, EXIT_BROKEN_PIPE)  # argparse swallows the failed write itself
    assert_quiet(result.stderr)


def test_head_of_a_long_render(tmp_path: Path) -> None:
    """`pinserve render -f many.yaml | head -1` in a shell: far more output than a pipe holds."""
    base = yaml.safe_load(RFCN.read_text())
    docs = [{**base, "metadata": {**base["metadata"], "name": f"rfcn-{i}"}} for i in range(40)]
    many = tmp_path / "many.yaml"
    many.write_text(yaml.safe_dump_all(docs))
    command = " ".join([*PINSERVE, "render", "-f", str(many)])
    result = subprocess.run(["bash", "-c", f"set -o pipefail; {command} | head -1"], capture_output=True,
                            text=True, timeout=120, check=False)
    assert result.stdout == "apiVersion: v1\n"
    assert result.returncode == EXIT_BROKEN_PIPE
    assert_quiet(result.stderr)
