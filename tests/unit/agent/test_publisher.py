"""What the agent publishes for a node and its pods, and the patches that get them there (None when idle)."""

from __future__ import annotations

import json
from functools import cache
from typing import Any

import pytest
from fakeapi import make_node, make_pod, merge

from pinserve.agent.cpumanager import CpuManagerState, parse_state, read_state
from pinserve.agent.loop import load_topology
from pinserve.agent.publisher import (
    ANNOTATION_CPU_MANAGER,
    node_metadata,
    node_patch,
    pod_cpus,
    pod_patch,
    pod_patches,
)
from pinserve.pinning import ANNOTATION_CPUS, ANNOTATION_CPUS_SOURCE, pod_view
from pinserve.topology.model import Core, Topology
from snapshots import SNAPSHOT_NAMES, HwlocReading, console_path, parse_console, snapshot_root

pytestmark = pytest.mark.unit

# Two sockets, four cores each, two threads: CPU n and n + 8 are siblings.
TOPO = Topology(tuple(Core(s, c, (s * 4 + c, s * 4 + c + 8), s) for s in range(2) for c in range(4)),
                model_name="Intel(R) Xeon(R) Platinum 8480+", isa_flags=("avx2", "avx512f", "avx512_vnni", "amx_tile"))
STATIC = parse_state(
    '{"policyName":"static","defaultCpuSet":"0,3-4,7-8,11-12,15","entries":'
    '{"uid-a":{"server":"1-2,9-10"},"uid-b":{"server":"5-6,13-14"}},"checksum":1}'
)
NONE = parse_state('{"policyName":"none","defaultCpuSet":"","checksum":2}')
UNKNOWN = read_state("/nonexistent/cpu_manager_state")


def published(node: dict[str, Any], topology: Topology = TOPO, state: CpuManagerState = STATIC) -> dict[str, Any]:
    patch = node_patch(node, topology, state)
    return merge(node, patch) if patch else node


# -- node ----------------------------------------------------------------------------------------------


def test_node_metadata() -> None:
    labels, annotations = node_metadata(TOPO, STATIC)
    assert labels == {
        "pinserve.io/cpu-manager-policy": "static",
        "pinserve.io/smt": "true",
        "pinserve.io/threads-per-core": "2",
        "pinserve.io/physical-cores": "8",
        "pinserve.io/numa-nodes": "2",
        "pinserve.io/cores-per-numa": "4",
        "pinserve.io/topology-source": "agent",
        "pinserve.io/isa-avx2": "true",
        "pinserve.io/isa-avx512f": "true",
        "pinserve.io/isa-avx512_vnni": "true",
        "pinserve.io/isa-amx_tile": "true",
    }
    assert Topology.from_dict(json.loads(annotations["pinserve.io/cpu-topology"])) == TOPO
    assert json.loads(annotations[ANNOTATION_CPU_MANAGER]) == {
        "policy": "static",
        "defaultCpuSet": "0,3-4,7-8,11-12,15",
        "source": "checkpoint",
    }


def test_unknown_and_none_policies_are_published_with_the_reason() -> None:
    labels, annotations = node_metadata(TOPO, UNKNOWN)
    assert labels["pinserve.io/cpu-manager-policy"] == "unknown"
    summary = json.loads(annotations[ANNOTATION_CPU_MANAGER])
    assert summary["policy"] == "unknown" and "does not exist" in summary["reason"]
    labels, annotations = node_metadata(TOPO, NONE)
    assert labels["pinserve.io/cpu-manager-policy"] == "none"
    assert json.loads(annotations[ANNOTATION_CPU_MANAGER]) == {
        "policy": "none", "defaultCpuSet": "", "source": "checkpoint"
    }


def test_fresh_node_gets_everything_and_then_nothing() -> None:
    node = make_node()
    patch = node_patch(node, TOPO, STATIC)
    assert patch is not None
    labels, annotations = node_metadata(TOPO, STATIC)
    assert patch == {"metadata": {"labels": labels, "annotations": annotations}}
    assert node_patch(merge(node, patch), TOPO, STATIC) is None
    assert node_patch(None, TOPO, STATIC) == patch


def test_only_what_changed_is_patched() -> None:
    node = published(make_node())
    node["metadata"]["labels"]["pinserve.io/smt"] = "false"  # edited by hand
    assert node_patch(node, TOPO, STATIC) == {"metadata": {"labels": {"pinserve.io/smt": "true"}}}

    node = published(make_node())
    moved = parse_state('{"policyName":"static","defaultCpuSet":"0-15","checksum":3}')
    patch = node_patch(node, TOPO, moved)
    summary = '{"defaultCpuSet":"0-15","policy":"static","source":"checkpoint"}'
    assert patch == {"metadata": {"annotations": {ANNOTATION_CPU_MANAGER: summary}}}


def test_labels_no_longer_true_are_removed_and_foreign_ones_kept() -> None:
    node = published(make_node(labels={"team": "ml", "pinserve.io/simulated-node": "true"}))
    older = Topology(TOPO.cores, isa_flags=("avx2",))
    patch = node_patch(node, older, STATIC)
    assert patch is not None
    assert patch["metadata"]["labels"] == {
        "pinserve.io/isa-avx512f": None,
        "pinserve.io/isa-avx512_vnni": None,
        "pinserve.io/isa-amx_tile": None,
    }
    after = merge(node, patch)
    assert after["metadata"]["labels"]["team"] == "ml"
    assert after["metadata"]["labels"]["pinserve.io/simulated-node"] == "true"
    assert node_patch(after, older, STATIC) is None


# -- label values from real machines ---------------------------------------------------------------------


@cache
def hwloc(name: str) -> HwlocReading:
    return parse_console(console_path(name))


@pytest.mark.parametrize("name", SNAPSHOT_NAMES)
def test_label_values_from_snapshots_match_hwloc(name: str) -> None:
    reading = hwloc(name)
    topology = load_topology(snapshot_root(name))
    labels, annotations = node_metadata(topology, STATIC)
    cores = [pus for package in reading.packages.values() for _, pus in package]
    tpc = max(len(pus) for pus in cores)
    per_numa = max(sum(1 for pus in cores if pus <= node_pus) for node_pus in reading.numa.values())
    assert labels["pinserve.io/physical-cores"] == str(len(cores))
    assert labels["pinserve.io/threads-per-core"] == str(tpc)
    assert labels["pinserve.io/smt"] == ("true" if tpc > 1 else "false")
    assert labels["pinserve.io/numa-nodes"] == str(len(reading.numa))
    assert labels["pinserve.io/cores-per-numa"] == str(per_numa)
    assert labels["pinserve.io/topology-source"] == "agent"
    # Every label value is a valid Kubernetes label value.
    for value in labels.values():
        assert len(value) <= 63 and value.replace("-", "").replace("_", "").replace(".", "").isalnum()
    decoded = Topology.from_dict(json.loads(annotations["pinserve.io/cpu-topology"]))
    assert decoded == topology
    assert {decoded.model_name} == reading.models


def test_isa_labels_of_the_skylake_snapshot() -> None:
    labels, _ = node_metadata(load_topology(snapshot_root("32intel64-2p8co2t+8ve")), STATIC)
    assert {k: v for k, v in labels.items() if "/isa-" in k} == {
        "pinserve.io/isa-avx2": "true",
        "pinserve.io/isa-avx512f": "true",
    }
    labels, _ = node_metadata(load_topology(snapshot_root("8em64t-2s2ca2c")), STATIC)
    assert not [k for k in labels if "/isa-" in k]


def test_cpuinfo_comes_from_proc_root_when_the_sysfs_root_has_none(tmp_path: Any) -> None:
    root = snapshot_root("32intel64-2p8co2t+8ve")
    # /host/sys in the DaemonSet: no proc/ beside it, so / is read; an explicit proc root wins.
    proc = tmp_path / "proc"
    proc.mkdir()
    (proc / "cpuinfo").write_text("processor\t: 0\nmodel name\t: Test CPU\nflags\t\t: fpu avx2 amx_tile\n\n")
    topology = load_topology(root / "sys", tmp_path)
    assert topology.model_name == "Test CPU" and topology.isa_flags == ("avx2", "amx_tile")
    assert load_topology(root / "sys").model_name == "Intel(R) Xeon(R) Silver 4108 CPU @ 1.80GHz"


# -- pods ------------------------------------------------------------------------------------------------


def test_exclusive_cpus_from_the_entries() -> None:
    pod = make_pod("a", "uid-a")
    assert pod_cpus(pod, STATIC, TOPO) == ("1-2,9-10", "exclusive")
    patch = pod_patch(pod, STATIC, TOPO)
    assert patch == {
        "metadata": {"uid": "uid-a", "annotations": {ANNOTATION_CPUS: "1-2,9-10", ANNOTATION_CPUS_SOURCE: "exclusive"}}
    }
    view = pod_view(merge(pod, patch))
    assert (view.cpus, view.cpus_source) == ("1-2,9-10", "exclusive")


def test_container_absent_from_the_entries_is_in_the_shared_pool() -> None:
    assert pod_cpus(make_pod("c", "uid-c"), STATIC, TOPO) == ("0,3-4,7-8,11-12,15", "shared")


def test_none_policy_shares_every_cpu() -> None:
    assert pod_cpus(make_pod("a", "uid-a"), NONE, TOPO) == ("0-15", "shared")


def test_legacy_checkpoint_matches_by_container_id() -> None:
    state = parse_state('{"policyName":"static","defaultCpuSet":"0,3-15","entries":{"c0ffee":"1-2"}}')
    pod = make_pod("a", "uid-a", container_id="containerd://c0ffee")
    assert pod_cpus(pod, state, TOPO) == ("1-2", "exclusive")


@pytest.mark.parametrize(
    "pod",
    [
        make_pod("p", "uid-a", running=False),
        make_pod("p", "uid-a", container="bench"),
        make_pod("p", "uid-a", phase="Succeeded"),
        merge(make_pod("p", "uid-a"), {"metadata": {"deletionTimestamp": "2024-01-01T00:00:00Z"}}),
    ],
    ids=["not-started", "no-server-container", "finished", "deleting"],
)
def test_nothing_is_said_for_pods_not_running_a_server(pod: dict[str, Any]) -> None:
    assert pod_cpus(pod, STATIC, TOPO) is None
    assert pod_patch(pod, STATIC, TOPO) is None


def test_created_but_not_running_container_counts() -> None:
    pod = make_pod("a", "uid-a", container_id="containerd://abc")
    pod["status"]["containerStatuses"][0]["state"] = {"waiting": {"reason": "CrashLoopBackOff"}}
    assert pod_cpus(pod, STATIC, TOPO) == ("1-2,9-10", "exclusive")


def test_unreadable_state_leaves_pods_alone() -> None:
    pod = make_pod("a", "uid-a", annotations={ANNOTATION_CPUS: "1-2,9-10", ANNOTATION_CPUS_SOURCE: "exclusive"})
    assert pod_patch(pod, UNKNOWN, TOPO) is None
    garbled = parse_state('{"policyName":"static","defaultCpuSet":"x"}')
    assert pod_patch(make_pod("c", "uid-c"), garbled, TOPO) is None  # shared pool unknown


def test_pod_patch_is_none_when_annotations_agree_and_small_when_not() -> None:
    done = make_pod("a", "uid-a", annotations={ANNOTATION_CPUS: "1-2,9-10", ANNOTATION_CPUS_SOURCE: "exclusive"})
    assert pod_patch(done, STATIC, TOPO) is None
    half = make_pod("a", "uid-a", annotations={ANNOTATION_CPUS: "1-2,9-10", ANNOTATION_CPUS_SOURCE: "shared"})
    assert pod_patch(half, STATIC, TOPO) == {
        "metadata": {"uid": "uid-a", "annotations": {ANNOTATION_CPUS_SOURCE: "exclusive"}}
    }


def test_pod_patches_pick_pinserve_pods_on_this_node() -> None:
    pods = [
        make_pod("b", "uid-b"),
        make_pod("a", "uid-a"),
        make_pod("elsewhere", "uid-x", node="node-b"),
        make_pod("unmanaged", "uid-y", managed=False),
        make_pod("done", "uid-a", annotations={ANNOTATION_CPUS: "1-2,9-10", ANNOTATION_CPUS_SOURCE: "exclusive"}),
    ]
    patches = pod_patches(pods, "node-a", STATIC, TOPO)
    assert [(p.name, p.patch["metadata"]["annotations"][ANNOTATION_CPUS]) for p in patches] == [
        ("a", "1-2,9-10"),
        ("b", "5-6,13-14"),
    ]
    assert patches[0].to_dict()["namespace"] == "ml"
