"""`pinserve agent --once --dry-run` on every snapshot, and the command line's errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from fakeapi import make_pod

from fakekubelet import fake_kubelet
from pinserve.agent import cli
from pinserve.agent.cpumanager import read_state
from pinserve.agent.loop import load_topology
from pinserve.agent.publisher import ANNOTATION_CPU_MANAGER, node_metadata
from pinserve.pinning import ANNOTATION_CPUS, ANNOTATION_CPUS_SOURCE
from pinserve.topology.cpuset import format_cpulist, parse_cpulist
from pinserve.topology.model import Topology
from snapshots import SNAPSHOT_NAMES, snapshot_root

pytestmark = pytest.mark.unit


@pytest.fixture(autouse=True)
def no_cluster(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any attempt to reach an API server fails the test: --dry-run must not make one."""
    for name in ("PINSERVE_NODE_NAME", "PINSERVE_SYSFS_ROOT", "PINSERVE_CPU_MANAGER_STATE", "PINSERVE_PROC_ROOT",
                 "PINSERVE_AGENT_INTERVAL_SECONDS", "KUBERNETES_SERVICE_HOST"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("KUBECONFIG", "/nonexistent/kubeconfig")
    # Not the host's kubelet (a machine running one has the default socket): the checkpoint alone.
    monkeypatch.setenv("PINSERVE_POD_RESOURCES_SOCKET", "")

    class NoApi:
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            raise AssertionError("--dry-run created an API client")

    monkeypatch.setattr(cli, "KubeApi", NoApi)


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, Any, str]:
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, (json.loads(out) if out.strip() else None), err


def static_state(tmp_path: Path, topology: Topology, pinned_uid: str) -> Path:
    """A checkpoint giving the pod ``pinned_uid`` the first core, the rest shared."""
    first = topology.cores[0].cpus
    rest = sorted(topology.cpus - set(first))
    path = tmp_path / "cpu_manager_state"
    path.write_text(json.dumps({
        "policyName": "static",
        "defaultCpuSet": ",".join(map(str, rest)),
        "entries": {pinned_uid: {"server": ",".join(map(str, first))}},
        "checksum": 42,
    }))
    return path


@pytest.mark.parametrize("name", SNAPSHOT_NAMES)
def test_once_dry_run_prints_the_node_patch(name: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = snapshot_root(name)
    topology = load_topology(root)
    state_path = static_state(tmp_path, topology, "uid-pinned")
    code, out, err = run(capsys, "--node", f"kwok-{name}", "--sysfs-root", str(root),
                         "--cpu-manager-state", str(state_path), "--once", "--dry-run")
    assert code == 0, err
    assert set(out) == {"node", "cpuManager"}  # no pods: they cannot be listed without the API
    assert "only the node" in err
    assert out["node"]["name"] == f"kwok-{name}"
    labels, annotations = node_metadata(topology, read_state(state_path))
    assert out["node"]["patch"] == {"metadata": {"labels": labels, "annotations": annotations}}
    assert labels["pinserve.io/cpu-manager-policy"] == "static"
    assert labels["pinserve.io/physical-cores"] == str(topology.physical_cores)
    published = out["node"]["patch"]["metadata"]["annotations"]
    assert Topology.from_dict(json.loads(published["pinserve.io/cpu-topology"])) == topology
    assert json.loads(published[ANNOTATION_CPU_MANAGER])["policy"] == "static"
    assert out["cpuManager"]["defaultCpuSet"]


@pytest.mark.parametrize("name", SNAPSHOT_NAMES)
def test_once_dry_run_with_pods_file(name: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = snapshot_root(name)
    topology = load_topology(root)
    state_path = static_state(tmp_path, topology, "uid-pinned")
    node = f"kwok-{name}"
    pods_file = tmp_path / "pods.json"
    pods_file.write_text(json.dumps({"kind": "PodList", "items": [
        make_pod("pinned", "uid-pinned", node), make_pod("shared", "uid-shared", node),
        make_pod("elsewhere", "uid-x", "other-node"),
    ]}))
    code, out, err = run(capsys, "--node", node, "--sysfs-root", str(root / "sys"),
                         "--cpu-manager-state", str(state_path), "--once", "--dry-run", "--pods-file", str(pods_file))
    assert code == 0, err
    pods = {p["name"]: p["patch"]["metadata"]["annotations"] for p in out["pods"]}
    assert set(pods) == {"pinned", "shared"}
    assert pods["pinned"][ANNOTATION_CPUS_SOURCE] == "exclusive"
    assert parse_cpulist(pods["pinned"][ANNOTATION_CPUS]) == set(topology.cores[0].cpus)
    assert pods["shared"] == {ANNOTATION_CPUS: out["cpuManager"]["defaultCpuSet"], ANNOTATION_CPUS_SOURCE: "shared"}


def test_dry_run_reads_the_pod_resources_socket(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    root = snapshot_root("16em64t-4s2c2t")
    topology = load_topology(root)
    state_path = static_state(tmp_path, topology, "uid-pinned")  # says the first core; the kubelet knows better
    pods_file = tmp_path / "pods.json"
    pods_file.write_text(json.dumps([make_pod("pinned", "uid-pinned", "n"), make_pod("shared", "uid-shared", "n")]))
    with fake_kubelet(tmp_path / "kubelet.sock") as kubelet:
        kubelet.set_pod("ml", "pinned", {"server": "2,3"})
        kubelet.set_pod("ml", "shared", {"server": ""})
        monkeypatch.setenv("PINSERVE_POD_RESOURCES_SOCKET", str(kubelet.socket))
        code, out, err = run(capsys, "--node", "n", "--sysfs-root", str(root), "--cpu-manager-state",
                             str(state_path), "--dry-run", "--pods-file", str(pods_file))
    assert code == 0, err
    assert out["cpuManager"]["source"] == "pod-resources"
    pods = {p["name"]: p["patch"]["metadata"]["annotations"] for p in out["pods"]}
    assert pods["pinned"] == {ANNOTATION_CPUS: "2-3", ANNOTATION_CPUS_SOURCE: "exclusive"}
    assert pods["shared"] == {ANNOTATION_CPUS: format_cpulist(topology.cpus - {2, 3}), ANNOTATION_CPUS_SOURCE: "shared"}


def test_dry_run_without_state_file_says_why(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = snapshot_root("16em64t-4s2c2t")
    code, out, err = run(capsys, "--node", "n", "--sysfs-root", str(root),
                         "--cpu-manager-state", str(tmp_path / "none"), "--dry-run")
    assert code == 0, err
    labels = out["node"]["patch"]["metadata"]["labels"]
    assert labels["pinserve.io/cpu-manager-policy"] == "unknown"
    assert "does not exist" in out["cpuManager"]["reason"]


def test_environment_defaults(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PINSERVE_NODE_NAME", "from-env")
    monkeypatch.setenv("PINSERVE_SYSFS_ROOT", str(snapshot_root("8em64t-2s2ca2c")))
    monkeypatch.setenv("PINSERVE_CPU_MANAGER_STATE", str(tmp_path / "x"))
    code, out, _ = run(capsys, "--dry-run")
    assert code == 0
    assert out["node"]["name"] == "from-env"
    assert out["node"]["patch"]["metadata"]["labels"]["pinserve.io/physical-cores"] == "8"


def test_dry_run_pods_from_yaml_documents_on_stdin(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    import io  # noqa: PLC0415

    import yaml  # noqa: PLC0415

    monkeypatch.setattr(sys, "stdin", io.StringIO(yaml.safe_dump_all([make_pod("p", "u", "n")])))
    code, out, _ = run(capsys, "--node", "n", "--sysfs-root", str(snapshot_root("8em64t-2s2ca2c")),
                       "--cpu-manager-state", str(tmp_path / "absent"), "--dry-run", "--pods-file", "-")
    assert code == 0
    assert out["pods"] == []  # unknown policy: pods are left alone


@pytest.mark.parametrize(
    ("argv", "code", "says"),
    [
        (["--once"], 2, "no node name"),
        (["--node", "n", "--pods-file", "x"], 2, "only goes with --dry-run"),
        (["--node", "n", "--dry-run", "--sysfs-root", "/nonexistent"], 1, "cannot read the CPU topology"),
        (["--node", "n", "--dry-run", "--pods-file", "/nonexistent.json"], 2, "cannot read --pods-file"),
    ],
)
def test_usage_errors(argv: list[str], code: int, says: str, capsys: pytest.CaptureFixture[str]) -> None:
    if "--sysfs-root" not in argv:
        argv = [*argv, "--sysfs-root", str(snapshot_root("8em64t-2s2ca2c"))]
    got, _, err = run(capsys, *argv)
    assert got == code
    assert says in err


def test_no_credentials_is_an_error_not_a_crash(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "--node", "n", "--once", "--sysfs-root", str(snapshot_root("8em64t-2s2ca2c")))
    assert code == 1
    assert "no API credentials" in err


def test_interval_must_be_positive(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        cli.main(["--node", "n", "--interval", "0"])


def test_module_entry_point(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "pinserve.agent", "--node", "n", "--sysfs-root", str(snapshot_root("8em64t-2s2ca2c")),
         "--cpu-manager-state", str(tmp_path / "absent"), "--once", "--dry-run"],
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["node"]["name"] == "n"
