"""The agent's reading of the kubelet's pod-resources API, against a real gRPC server on a unix socket.

The server (tests/fakekubelet.py) speaks the kubelet's complete messages, built from the kubelet's own
descriptor; the agent's client uses pinserve's minimal one. Nothing on the client side is mocked.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from fakekubelet import FakeKubelet, fake_kubelet, kubelet_file_proto
from pinserve.agent import podresources_pb as pb
from pinserve.agent.cpumanager import SOURCE_CHECKPOINT, SOURCE_POD_RESOURCES, parse_state, read_state
from pinserve.agent.podresources import (
    CpuReader,
    PodResourcesClient,
    PodResourcesError,
    PodResourcesMissingError,
    PodResourcesSnapshot,
    combine,
)
from pinserve.agent.publisher import pod_cpus
from pinserve.topology.model import Core, Topology

pytestmark = pytest.mark.unit

# 8 cores x 2 threads: core c is CPUs c and c + 8.
TOPO = Topology(tuple(Core(0, c, (c, c + 8), 0) for c in range(8)))
CHECKPOINT = json.dumps({
    "policyName": "static", "defaultCpuSet": "0-1,4-9,12-15",
    "entries": {"uid-a": {"server": "2-3,10-11"}}, "checksum": 1,
})  # fmt: skip


@pytest.fixture
def kubelet(tmp_path: Path) -> Iterator[FakeKubelet]:
    with fake_kubelet(tmp_path / "kubelet.sock", allocatable="1-7,9-15") as server:
        server.set_pod("ml", "a", {"server": "2-3,10-11", "sidecar": ""})
        server.set_pod("ml", "b", {"server": ""})
        server.set_pod("kube-system", "dns", {"coredns": "4,12"})
        yield server


@pytest.fixture
def checkpoint(tmp_path: Path) -> Path:
    path = tmp_path / "cpu_manager_state"
    path.write_text(CHECKPOINT)
    return path


def running_pod(name: str, uid: str = "", namespace: str = "ml") -> dict[str, object]:
    return {
        "metadata": {"name": name, "namespace": namespace, "uid": uid or f"uid-{name}"},
        "spec": {"nodeName": "node-a", "containers": [{"name": "server"}]},
        "status": {"phase": "Running", "containerStatuses": [{"name": "server", "state": {"running": {}}}]},
    }


# ---------------------------------------------------------------- the messages


def test_minimal_descriptor_matches_the_kubelets() -> None:
    kubelet = kubelet_file_proto()
    assert pb.FILE_PROTO.package == kubelet.package == pb.PACKAGE
    theirs = {m.name: {f.name: f for f in m.field} for m in kubelet.message_type}
    for message in pb.FILE_PROTO.message_type:
        assert message.name in theirs, message.name
        for field in message.field:
            upstream = theirs[message.name][field.name]
            mine = (field.number, field.label, field.type, field.type_name, field.json_name)
            assert mine == (upstream.number, upstream.label, upstream.type, upstream.type_name, upstream.json_name), (
                f"{message.name}.{field.name}"
            )
    (service,) = kubelet.service
    methods = {m.name: (m.input_type, m.output_type) for m in service.method}
    (ours,) = pb.FILE_PROTO.service
    assert f"{pb.PACKAGE}.{ours.name}" == pb.SERVICE
    for method in ours.method:
        assert methods[method.name] == (method.input_type, method.output_type)


# ---------------------------------------------------------------- the client


def test_lists_exclusive_cpus_per_container_and_the_allocatable_set(kubelet: FakeKubelet) -> None:
    client = PodResourcesClient(str(kubelet.socket))
    try:
        snap = client.snapshot()
    finally:
        client.close()
    assert snap.pods == {
        ("ml", "a"): {"server": frozenset({2, 3, 10, 11}), "sidecar": frozenset()},
        ("ml", "b"): {"server": frozenset()},  # the shared pool: no CPUs listed
        ("kube-system", "dns"): {"coredns": frozenset({4, 12})},
    }
    assert snap.allocatable == frozenset(range(16)) - {0, 8}
    assert snap.exclusive == frozenset({2, 3, 10, 11, 4, 12})
    assert kubelet.calls == {"List": 1, "GetAllocatableResources": 1}


def test_a_kubelet_without_get_allocatable_still_lists(tmp_path: Path) -> None:
    with fake_kubelet(tmp_path / "kubelet.sock", serve_allocatable=False) as server:
        server.set_pod("ml", "a", {"server": "2-3"})
        client = PodResourcesClient(str(server.socket))
        snap = client.snapshot()
        client.close()
    assert snap.allocatable is None and snap.pods == {("ml", "a"): {"server": frozenset({2, 3})}}


def test_answers_are_reused_for_a_short_window_unless_forced(kubelet: FakeKubelet) -> None:
    client = PodResourcesClient(str(kubelet.socket), min_interval=60)
    first = client.snapshot()
    kubelet.set_pod("ml", "c", {"server": "5,13"})
    assert client.snapshot() is first and kubelet.calls["List"] == 1
    assert ("ml", "c") in client.snapshot(force=True).pods and kubelet.calls["List"] == 2
    client.close()


def test_missing_socket(tmp_path: Path) -> None:
    path = tmp_path / "pod-resources" / "kubelet.sock"
    with pytest.raises(PodResourcesMissingError, match=r"kubelet\.sock does not exist.*not mounted here"):
        PodResourcesClient(str(path)).snapshot()


def test_a_path_that_is_not_a_socket(tmp_path: Path) -> None:
    path = tmp_path / "kubelet.sock"
    path.write_text("")
    with pytest.raises(PodResourcesError, match="is not a socket"):
        PodResourcesClient(str(path)).snapshot()


def test_a_socket_nobody_listens_on(tmp_path: Path) -> None:
    path = tmp_path / "kubelet.sock"
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dead.bind(str(path))  # bound, never listening: what a crashed kubelet leaves behind
    try:
        with pytest.raises(PodResourcesError, match=r"connection refused.*kubelet is not running"):
            PodResourcesClient(str(path), timeout=2).snapshot()
    finally:
        dead.close()


@pytest.mark.parametrize(("status", "message"), [
    (grpc.StatusCode.INTERNAL, r"failed: INTERNAL: fake kubelet: List fails"),
    (grpc.StatusCode.RESOURCE_EXHAUSTED, r"refused the call \(rate limit"),
    (grpc.StatusCode.UNIMPLEMENTED, r"does not serve v1\.PodResourcesLister/List"),
])  # fmt: skip
def test_errors_of_the_kubelet_are_named(kubelet: FakeKubelet, status: grpc.StatusCode, message: str) -> None:
    kubelet.fail_with = status
    client = PodResourcesClient(str(kubelet.socket))
    with pytest.raises(PodResourcesError, match=message) as caught:
        client.snapshot()
    assert str(kubelet.socket) in str(caught.value)
    kubelet.fail_with = None  # the kubelet is back: the next call answers
    assert ("ml", "a") in client.snapshot().pods
    client.close()


def test_a_kubelet_that_does_not_answer_in_time(kubelet: FakeKubelet) -> None:
    kubelet.delay = 1.0
    with pytest.raises(PodResourcesError, match=r"did not answer within 0\.2s"):
        PodResourcesClient(str(kubelet.socket), timeout=0.2).snapshot()


@pytest.fixture
def world_readable_dir() -> Iterator[Path]:
    """A directory outside pytest's root-only tree, so another uid can reach what is in it."""
    path = Path(tempfile.mkdtemp(prefix="pinserve-sock-", dir="/tmp"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to create the socket as root and switch to another uid")
def test_a_non_root_agent_cannot_connect_to_the_kubelets_socket(world_readable_dir: Path) -> None:
    """Why the agent runs as uid 0: the kubelet's socket is root-owned 0755 (connect needs write) in a 0750
    directory. The agent is run here as uid 65534 against such a socket and says what is wrong."""
    directory = world_readable_dir / "pod-resources"
    directory.mkdir(mode=0o755)
    path = directory / "kubelet.sock"
    with fake_kubelet(path) as server:
        path.chmod(0o755)  # what the kubelet's umask 022 makes of net.Listen's 0777
        server.set_pod("ml", "a", {"server": "2-3"})
        assert PodResourcesClient(str(path)).snapshot().pods  # root: fine
        errors = []
        groups = os.getgroups()
        for mode in (0o755, 0o750):  # the socket's write bit; then also the kubelet's own directory mode
            directory.chmod(mode)
            os.setgroups([])
            os.setegid(65534)
            os.seteuid(65534)
            try:
                with pytest.raises(PodResourcesError) as caught:
                    PodResourcesClient(str(path), timeout=2).snapshot()
            finally:
                os.seteuid(0)
                os.setegid(0)
                os.setgroups(groups)
            errors.append(str(caught.value))
    assert errors[0].startswith("cannot connect to the kubelet's pod-resources API")  # the socket refuses
    assert errors[1].startswith("cannot reach")  # the directory refuses
    for error in errors:
        assert "Permission denied" in error and "only uid 0 may connect" in error, error


# ---------------------------------------------------------------- merging with the checkpoint


def test_combine_takes_the_policy_from_the_checkpoint_and_the_cpus_from_the_socket(
    kubelet: FakeKubelet, checkpoint: Path
) -> None:
    reader = CpuReader(str(checkpoint), str(kubelet.socket))
    state = reader.read(TOPO.cpus)
    reader.close()
    assert (state.policy, state.source) == ("static", SOURCE_POD_RESOURCES)
    assert state.default_cpus == TOPO.cpus - {2, 3, 10, 11, 4, 12}  # from the socket, not the file's
    assert state.summary() == {"policy": "static", "defaultCpuSet": "0-1,5-9,13-15",
                               "allocatableCpuSet": "1-7,9-15", "source": "pod-resources"}
    assert pod_cpus(running_pod("a"), state, TOPO) == ("2-3,10-11", "exclusive")
    assert pod_cpus(running_pod("b"), state, TOPO) == ("0-1,5-9,13-15", "shared")
    # The kubelet does not list it (yet): nothing is said, though the checkpoint has an entry for its UID.
    assert pod_cpus(running_pod("x", uid="uid-a"), state, TOPO) is None


def test_none_policy_from_the_socket_shares_every_cpu(tmp_path: Path) -> None:
    path = tmp_path / "cpu_manager_state"
    path.write_text('{"policyName":"none","defaultCpuSet":"","checksum":1}')
    with fake_kubelet(tmp_path / "kubelet.sock", allocatable="") as server:
        server.set_pod("ml", "b", {"server": ""})
        reader = CpuReader(str(path), str(server.socket))
        state = reader.read(TOPO.cpus)
        reader.close()
    assert (state.policy, state.default_cpus, state.allocatable) == ("none", frozenset(), frozenset())
    assert pod_cpus(running_pod("b"), state, TOPO) == ("0-15", "shared")


def test_a_checkpoint_contradicting_the_socket_is_called_stale(kubelet: FakeKubelet, tmp_path: Path) -> None:
    path = tmp_path / "cpu_manager_state"
    path.write_text('{"policyName":"none","defaultCpuSet":"","checksum":1}')
    reader = CpuReader(str(path), str(kubelet.socket))
    state = reader.read(TOPO.cpus)
    reader.close()
    assert state.policy == "unknown" and state.reason is not None
    assert "says 'none'" in state.reason and "allocatable CPUs 1-7,9-15" in state.reason
    assert "restart the agent's pod" in state.reason
    assert pod_cpus(running_pod("a"), state, TOPO) is None


def test_without_the_socket_the_checkpoint_entries_are_used_and_the_reason_published(
    tmp_path: Path, checkpoint: Path, caplog: pytest.LogCaptureFixture
) -> None:
    reader = CpuReader(str(checkpoint), str(tmp_path / "absent" / "kubelet.sock"))
    state = reader.read(TOPO.cpus)
    reader.read(TOPO.cpus)
    assert state.source == SOURCE_CHECKPOINT
    summary = state.summary()
    assert summary["source"] == "checkpoint" and summary["defaultCpuSet"] == "0-1,4-9,12-15"
    assert "does not exist" in summary["podResourcesError"]
    assert pod_cpus(running_pod("a"), state, TOPO) == ("2-3,10-11", "exclusive")
    assert pod_cpus(running_pod("b"), state, TOPO) == ("0-1,4-9,12-15", "shared")
    said = [r.getMessage() for r in caplog.records if "instead of the pod-resources API" in r.getMessage()]
    assert len(said) == 1, said  # said once, not at every look
    # No socket configured at all: the checkpoint, and no error to report.
    plain = CpuReader(str(checkpoint), None).read(TOPO.cpus)
    assert plain.summary() == {"policy": "static", "defaultCpuSet": "0-1,4-9,12-15", "source": "checkpoint"}


def test_the_reader_switches_to_the_socket_when_it_appears(tmp_path: Path, checkpoint: Path) -> None:
    sock = tmp_path / "kubelet.sock"
    reader = CpuReader(str(checkpoint), str(sock))
    assert reader.read(TOPO.cpus).source == SOURCE_CHECKPOINT
    with fake_kubelet(sock) as server:
        server.set_pod("ml", "a", {"server": "6-7,14-15"})
        state = reader.read(TOPO.cpus, force=True)
        assert state.source == SOURCE_POD_RESOURCES
        assert pod_cpus(running_pod("a"), state, TOPO) == ("6-7,14-15", "exclusive")
    reader.close()


def test_a_replaced_checkpoint_keeps_its_policy_but_not_its_assignments(tmp_path: Path, checkpoint: Path) -> None:
    """A single-file mount shows the inode of the agent's start; after the kubelet's rename it has no link.
    /proc/self/fd of an open, replaced file is the same thing without a mount."""
    with checkpoint.open("rb") as old:
        fresh = checkpoint.with_name("cpu_manager_state.tmp")
        fresh.write_text(CHECKPOINT.replace("2-3,10-11", "4-5,12-13"))
        fresh.replace(checkpoint)  # what the kubelet does
        seen = read_state(f"/proc/self/fd/{old.fileno()}")
    assert seen.replaced and seen.policy == "static"
    assert not read_state(checkpoint).replaced
    alone = combine(seen, None, "no socket", TOPO.cpus)
    assert alone.policy == "static" and alone.default_cpus is None and not alone.entries
    assert alone.reason is not None and "replaced by the kubelet since the agent started" in alone.reason
    assert pod_cpus(running_pod("a"), alone, TOPO) is None  # stale entries are not published
    # With the socket, the replaced file is expected and harmless: its policy is all that is read.
    snapshot = PodResourcesSnapshot({("ml", "a"): {"server": frozenset({2, 3, 10, 11})}}, TOPO.cpus - {0, 8})
    live = combine(seen, snapshot, None, TOPO.cpus)
    assert (live.policy, live.reason, live.source) == ("static", None, SOURCE_POD_RESOURCES)
    assert pod_cpus(running_pod("a"), live, TOPO) == ("2-3,10-11", "exclusive")


def test_parse_state_defaults_to_the_checkpoint_source() -> None:
    state = parse_state(CHECKPOINT)
    assert state.source == SOURCE_CHECKPOINT and state.exclusive_cpus("uid-b", "server") == frozenset()
    assert state.exclusive_cpus("uid-a", "server") == frozenset({2, 3, 10, 11})
