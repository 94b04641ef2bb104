"""The agent's loop against an in-memory API server: what it writes, and that a steady state writes nothing.

Writes are counted the way the real client counts them: ``requests`` is a Counter by HTTP verb, and
``write_count`` sums POST, PUT, PATCH and DELETE.
"""

from __future__ import annotations

import asyncio
import copy
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from fakeapi import FakeApi, make_node, make_pod

from fakekubelet import fake_kubelet
from pinserve.agent import loop
from pinserve.agent.loop import AgentConfig, NodeAgent, write_count
from pinserve.agent.publisher import ANNOTATION_CPU_MANAGER
from pinserve.pinning import ANNOTATION_CPUS, ANNOTATION_CPUS_SOURCE
from pinserve.topology.model import Core, Topology

pytestmark = pytest.mark.unit

TOPO = Topology(tuple(Core(0, c, (c, c + 8), 0) for c in range(8)), isa_flags=("avx2",))


def state_json(default: str = "0-1,8-9,6-7,14-15", **entries: str) -> str:
    return json.dumps(
        {"policyName": "static", "defaultCpuSet": default,
         "entries": {uid: {"server": cpus} for uid, cpus in entries.items()}, "checksum": 1}
    )


@pytest.fixture(autouse=True)
def fixed_topology(monkeypatch: pytest.MonkeyPatch) -> None:
    """The periodic pass re-reads sysfs; here it finds the synthetic machine, not the test host."""
    monkeypatch.setattr(loop, "load_topology", lambda *args: TOPO)


@pytest.fixture
def state_file(tmp_path: Path) -> Path:
    path = tmp_path / "cpu_manager_state"
    path.write_text(state_json(**{"uid-a": "2-3,10-11"}))
    return path


def replace_file(path: Path, text: str) -> None:
    """As the kubelet does: write a temporary file, rename it over the checkpoint."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)


def annotations(api: FakeApi, name: str) -> dict[str, str]:
    return dict(api.pods[("ml", name)]["metadata"].get("annotations") or {})


def agent_for(api: FakeApi, state_file: Path, **config: Any) -> NodeAgent:
    return NodeAgent(api, AgentConfig(node="node-a", state_path=str(state_file), **config), topology=TOPO)


async def test_once_publishes_then_a_second_pass_writes_nothing(state_file: Path) -> None:
    api = FakeApi(
        nodes=[make_node("node-a"), make_node("node-b")],
        pods=[make_pod("a", "uid-a"), make_pod("c", "uid-c"), make_pod("other", "uid-o", node="node-b"),
              make_pod("unmanaged", "uid-u", managed=False)],
    )
    agent = agent_for(api, state_file)
    first = await agent.run_once()
    assert first.ok and first.node_patched
    assert (first.pods_seen, first.pods_patched) == (2, 2)
    assert first.writes == 3 == api.requests["PATCH"]
    node = api.nodes["node-a"]["metadata"]
    assert node["labels"]["pinserve.io/cpu-manager-policy"] == "static"
    assert node["labels"]["pinserve.io/isa-avx2"] == "true"
    assert json.loads(node["annotations"][ANNOTATION_CPU_MANAGER])["policy"] == "static"
    assert "pinserve.io/smt" not in api.nodes["node-b"]["metadata"]["labels"]
    assert annotations(api, "a") == {ANNOTATION_CPUS: "2-3,10-11", ANNOTATION_CPUS_SOURCE: "exclusive"}
    assert annotations(api, "c") == {ANNOTATION_CPUS: "0-1,6-9,14-15", ANNOTATION_CPUS_SOURCE: "shared"}
    assert annotations(api, "other") == annotations(api, "unmanaged") == {}

    # Steady state: reads, no writes, however many passes.
    writes_before = write_count(api.requests)
    for _ in range(5):
        again = await agent.run_once()
        assert again.ok and not again.node_patched and again.pods_patched == 0 and again.writes == 0
    assert write_count(api.requests) == writes_before == 3


async def test_missing_node_is_reported_not_fatal(state_file: Path) -> None:
    api = FakeApi(nodes=[], pods=[make_pod("a", "uid-a")])
    result = await agent_for(api, state_file).run_once()
    assert not result.node_found and not result.ok
    assert result.pods_patched == 1  # pods are still annotated
    assert "NOT FOUND" in result.summary()


async def test_missing_state_file_publishes_unknown_and_leaves_pods(tmp_path: Path) -> None:
    done = {ANNOTATION_CPUS: "2-3,10-11", ANNOTATION_CPUS_SOURCE: "exclusive"}
    api = FakeApi(nodes=[make_node()], pods=[make_pod("a", "uid-a", annotations=done)])
    result = await agent_for(api, tmp_path / "absent").run_once()
    assert result.ok and result.node_patched and result.pods_patched == 0
    meta = api.nodes["node-a"]["metadata"]
    assert meta["labels"]["pinserve.io/cpu-manager-policy"] == "unknown"
    assert "does not exist" in json.loads(meta["annotations"][ANNOTATION_CPU_MANAGER])["reason"]
    assert annotations(api, "a") == done


async def test_pod_recreated_under_the_same_name_is_not_patched_with_stale_cpus(state_file: Path) -> None:
    api = FakeApi(nodes=[make_node()], pods=[make_pod("a", "uid-a")])
    agent = agent_for(api, state_file)
    await agent.list_pods()
    api.add_pod(make_pod("a", "uid-new"), notify=False)  # same name, new UID
    (cached,) = agent.pods.values()
    assert await agent.sync_pod(cached) is False  # 422 from the UID guard, swallowed
    assert annotations(api, "a") == {}
    assert agent.pods == {}


async def wait_for(what: str, probe: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not probe():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


async def wait_quiet(api: FakeApi, quiet: float, timeout: float) -> None:
    loop = asyncio.get_running_loop()
    deadline, writes, since = loop.time() + timeout, api.writes, loop.time()
    while loop.time() - since < quiet:
        if loop.time() > deadline:
            raise AssertionError(f"the agent kept writing: {api.patches[-3:]}")
        await asyncio.sleep(0.01)
        if api.writes != writes:
            writes, since = api.writes, loop.time()


async def test_run_loop_follows_pods_and_the_state_file_and_idles_without_writes(state_file: Path) -> None:
    api = FakeApi(nodes=[make_node()], pods=[make_pod("a", "uid-a")])
    agent = agent_for(api, state_file, interval=0.2, state_interval=0.02)
    stop = asyncio.Event()
    task = asyncio.create_task(agent.run(stop))
    try:
        await wait_for("the node and pod a", lambda: bool(annotations(api, "a"))
                       and "pinserve.io/smt" in api.nodes["node-a"]["metadata"]["labels"])
        assert annotations(api, "a")[ANNOTATION_CPUS_SOURCE] == "exclusive"

        # A new pod appears on the node; the checkpoint already has its entry (the kubelet writes it
        # before starting the container), though the agent's last look at the file predates it.
        replace_file(state_file, state_json(**{"uid-a": "2-3,10-11", "uid-b": "4-5,12-13"}))
        api.add_pod(make_pod("b", "uid-b"))
        await wait_for("pod b", lambda: annotations(api, "b").get(ANNOTATION_CPUS) == "4-5,12-13")

        # A pod without an entry: shared pool. Then the kubelet pins it (entry appears): republished.
        api.add_pod(make_pod("c", "uid-c"))
        await wait_for("pod c shared", lambda: annotations(api, "c").get(ANNOTATION_CPUS_SOURCE) == "shared")
        replace_file(state_file, state_json("0-1,8-9", **{"uid-a": "2-3,10-11", "uid-b": "4-5,12-13",
                                                          "uid-c": "6-7,14-15"}))
        await wait_for("pod c exclusive", lambda: annotations(api, "c").get(ANNOTATION_CPUS) == "6-7,14-15")
        await wait_for("node default set", lambda: '"0-1,8-9"' in api.nodes["node-a"]["metadata"]["annotations"]
                       [ANNOTATION_CPU_MANAGER])

        # The watch expires (410): the agent relists and carries on.
        # The fake API server does not replay what a new watch missed: add pod d once the watch is open again.
        watches = api.requests["WATCH"]
        api.expire_watches()
        await wait_for("the watch reopened", lambda: api.requests["WATCH"] > watches)
        api.add_pod(make_pod("d", "uid-d"))
        await wait_for("pod d after relist", lambda: ANNOTATION_CPUS in annotations(api, "d"))

        # A hand edit of a node label is repaired by the periodic pass.
        api.nodes["node-a"]["metadata"]["labels"]["pinserve.io/smt"] = "false"
        await wait_for("node repaired", lambda: api.nodes["node-a"]["metadata"]["labels"]["pinserve.io/smt"] == "true")

        # Steady state: once the last repair's echoes are through (writes stop for 0.3 s, within 5 s even on
        # a busy machine), several state checks, watch events and periodic passes (interval 0.2 s) go by;
        # reads happen, writes do not.
        await wait_quiet(api, quiet=0.3, timeout=5.0)
        writes, gets = api.writes, api.requests["GET"]
        await asyncio.sleep(1.0)
        assert api.writes == writes, api.patches[-3:]
        assert api.requests["GET"] > gets  # the periodic passes did run
    finally:
        stop.set()
        await asyncio.wait_for(task, 5)


async def test_run_loop_survives_a_broken_watch(state_file: Path) -> None:
    api = FakeApi(nodes=[make_node()], pods=[make_pod("a", "uid-a")])
    api.fail_next_watch_with = 500
    agent = agent_for(api, state_file, interval=60, state_interval=0.02)
    stop = asyncio.Event()
    task = asyncio.create_task(agent.run(stop))
    try:
        await wait_for("pod a", lambda: bool(annotations(api, "a")))
        await wait_for("a second watch", lambda: api.requests["WATCH"] >= 2, timeout=5)
        api.add_pod(make_pod("b", "uid-b"))
        await wait_for("pod b", lambda: bool(annotations(api, "b")))
    finally:
        stop.set()
        await asyncio.wait_for(task, 5)


async def test_deleted_pods_leave_the_cache(state_file: Path) -> None:
    api = FakeApi(nodes=[make_node()], pods=[make_pod("a", "uid-a")])
    agent = agent_for(api, state_file, interval=60, state_interval=0.02)
    stop = asyncio.Event()
    task = asyncio.create_task(agent.run(stop))
    try:
        await wait_for("pod a", lambda: bool(annotations(api, "a")))
        api.delete_pod("ml", "a")
        await wait_for("cache empty", lambda: not agent.pods)
    finally:
        stop.set()
        await asyncio.wait_for(task, 5)


async def test_an_event_older_than_our_own_patch_causes_no_write(state_file: Path) -> None:
    api = FakeApi(nodes=[make_node()], pods=[make_pod("a", "uid-a")])
    agent = agent_for(api, state_file)
    await agent.list_pods()
    stale = copy.deepcopy(api.pods[("ml", "a")])  # e.g. a status update queued before our patch
    await agent.sync_pods()
    assert api.writes == 1
    assert await agent._handle_event({"type": "MODIFIED", "object": stale}, "1") is not None
    assert api.writes == 1
    # A newer event is taken in (and needs no write either).
    newer = copy.deepcopy(api.pods[("ml", "a")])
    newer["metadata"]["resourceVersion"] = "100000"
    await agent._handle_event({"type": "MODIFIED", "object": newer}, "1")
    assert agent.pods["uid-a"]["metadata"]["resourceVersion"] == "100000"
    assert api.writes == 1


async def test_a_loop_dying_of_a_bug_ends_the_run(state_file: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    api = FakeApi(nodes=[make_node()], pods=[])
    agent = agent_for(api, state_file, interval=60, state_interval=0.01)

    def broken(**kwargs: Any) -> bool:
        raise KeyError("bug")

    monkeypatch.setattr(agent, "refresh_state", broken)
    with pytest.raises(KeyError):
        await asyncio.wait_for(agent.run(asyncio.Event()), 5)


async def test_run_loop_reads_the_kubelets_pod_resources_socket(state_file: Path, tmp_path: Path) -> None:
    """With the socket the assignments are the kubelet's live ones; the checkpoint's entries are not read."""
    api = FakeApi(nodes=[make_node()], pods=[make_pod("a", "uid-a"), make_pod("b", "uid-b")])
    with fake_kubelet(tmp_path / "kubelet.sock", allocatable="1-7,9-15") as kubelet:
        kubelet.set_pod("ml", "a", {"server": "4-5,12-13"})  # not what the checkpoint says (2-3,10-11)
        kubelet.set_pod("ml", "b", {"server": ""})
        agent = agent_for(api, state_file, interval=60, state_interval=0.02,
                          pod_resources_socket=str(kubelet.socket))
        stop = asyncio.Event()
        task = asyncio.create_task(agent.run(stop))
        try:
            # The pods (the watch loop) and the node (the resync loop, after its own socket reads) are two
            # writers: wait for both.
            await wait_for("pods a and b, and the node", lambda: bool(annotations(api, "a")) and bool(
                annotations(api, "b")) and ANNOTATION_CPU_MANAGER in api.nodes["node-a"]["metadata"]["annotations"])
            assert annotations(api, "a") == {ANNOTATION_CPUS: "4-5,12-13", ANNOTATION_CPUS_SOURCE: "exclusive"}
            assert annotations(api, "b") == {ANNOTATION_CPUS: "0-3,6-11,14-15", ANNOTATION_CPUS_SOURCE: "shared"}
            summary = json.loads(api.nodes["node-a"]["metadata"]["annotations"][ANNOTATION_CPU_MANAGER])
            assert summary == {"policy": "static", "defaultCpuSet": "0-3,6-11,14-15",
                               "allocatableCpuSet": "1-7,9-15", "source": "pod-resources"}

            # The kubelet pins b: both the pod and the node's shared pool follow, from the socket alone.
            kubelet.set_pod("ml", "b", {"server": "6-7,14-15"})
            await wait_for("pod b pinned", lambda: annotations(api, "b").get(ANNOTATION_CPUS) == "6-7,14-15")
            await wait_for("node default set", lambda: '"0-3,8-11"' in api.nodes["node-a"]["metadata"]
                           ["annotations"][ANNOTATION_CPU_MANAGER])

            # A pod of another owner comes and goes on the node: the shared pool is unchanged (it has no
            # exclusive CPUs), so neither the node (not even fetched) nor any pod is written.
            await asyncio.sleep(0.2)
            writes, gets = api.writes, api.requests["GET"]
            kubelet.set_pod("other", "web", {"nginx": ""})
            await wait_for("web seen", lambda: ("other", "web") in agent.state.pod_cpus)
            kubelet.remove_pod("other", "web")
            await wait_for("web gone", lambda: ("other", "web") not in agent.state.pod_cpus)
            assert (api.writes, api.requests["GET"]) == (writes, gets)

            # The kubelet goes away: back to the checkpoint's entries, and the node says why.
            kubelet.stop()
            await wait_for("pod a from the checkpoint",
                           lambda: annotations(api, "a").get(ANNOTATION_CPUS) == "2-3,10-11")
            summary = json.loads(api.nodes["node-a"]["metadata"]["annotations"][ANNOTATION_CPU_MANAGER])
            assert summary["source"] == "checkpoint" and "kubelet.sock" in summary["podResourcesError"]
        finally:
            stop.set()
            await asyncio.wait_for(task, 5)
            agent.close()
