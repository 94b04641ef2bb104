"""read_topology on real machines' sysfs snapshots, checked against hwloc's own reading of each."""

from __future__ import annotations

import json
from functools import cache

import pytest

from pinserve.topology import Topology, read_topology
from snapshots import SNAPSHOT_NAMES, HwlocReading, console_path, parse_console, snapshot_root

pytestmark = pytest.mark.unit


@cache
def reading(name: str) -> HwlocReading:
    return parse_console(console_path(name))


@cache
def topology(name: str) -> Topology:
    return read_topology(snapshot_root(name))


def test_every_snapshot_is_here() -> None:
    # The parametrized tests below are only as good as the list they run over.
    assert len(SNAPSHOT_NAMES) >= 6
    for name in SNAPSHOT_NAMES:
        assert console_path(name).is_file(), f"{name} has no hwloc console reading"


@pytest.mark.parametrize("name", SNAPSHOT_NAMES)
def test_packages_and_cores_match_hwloc(name: str) -> None:
    hwloc, topo = reading(name), topology(name)
    ours: dict[int, set[tuple[int, frozenset[int]]]] = {}
    for core in topo.cores:
        ours.setdefault(core.socket, set()).add((core.core_id, frozenset(core.cpus)))
    assert ours == hwloc.packages
    assert topo.socket_ids == tuple(sorted(hwloc.packages))
    assert topo.physical_cores == sum(len(cores) for cores in hwloc.packages.values())


@pytest.mark.parametrize("name", SNAPSHOT_NAMES)
def test_cpus_and_threads_match_hwloc(name: str) -> None:
    hwloc, topo = reading(name), topology(name)
    assert topo.cpus == hwloc.pus
    assert topo.logical_cpus == len(hwloc.pus)
    thread_counts = {len(cpus) for cores in hwloc.packages.values() for _, cpus in cores}
    assert topo.threads_per_core == max(thread_counts)
    assert topo.uniform_smt == (len(thread_counts) == 1)
    assert set(topo.offline) == hwloc.offline


@pytest.mark.parametrize("name", SNAPSHOT_NAMES)
def test_numa_nodes_match_hwloc(name: str) -> None:
    hwloc, topo = reading(name), topology(name)
    assert hwloc.numa, f"{name}: hwloc shows no NUMA node, the console parser is broken"
    assert {n.id: frozenset(n.cpus) for n in topo.numa_nodes} == hwloc.numa
    for node in topo.numa_nodes:
        assert node.memory_bytes is not None
        # hwloc rounds sizes for display ("46GiB"); the kernel's MemTotal is exact.
        assert node.memory_bytes == pytest.approx(hwloc.numa_local_bytes[node.id], rel=0.03)
    for core in topo.cores:
        assert set(core.cpus) <= hwloc.numa[core.numa]


@pytest.mark.parametrize("name", SNAPSHOT_NAMES)
def test_model_name_matches_hwloc(name: str) -> None:
    assert {topology(name).model_name} == reading(name).models


@pytest.mark.parametrize("name", SNAPSHOT_NAMES)
def test_annotation_round_trips(name: str) -> None:
    topo = topology(name)
    text = json.dumps(topo.to_dict(), separators=(",", ":"))
    assert Topology.from_dict(json.loads(text)) == topo
    assert len(text) < 16 * 1024


@pytest.mark.parametrize("name", SNAPSHOT_NAMES)
def test_sysfs_root_reads_the_same(name: str) -> None:
    assert read_topology(snapshot_root(name) / "sys") == topology(name)


def test_offline_snapshot() -> None:
    topo = topology("16em64t-4s2c2t-offlines")
    assert topo.offline == (2, 5, 13, 14)
    assert (topo.logical_cpus, topo.physical_cores, topo.sockets) == (12, 7, 4)
    # Package 1 lost a whole core (5, 13); package 2 lost one thread of each core (2, 14).
    assert [(c.core_id, c.cpus) for c in topo.cores_in_socket(1)] == [(0, (1, 9))]
    assert [(c.core_id, c.cpus) for c in topo.cores_in_socket(2)] == [(0, (10,)), (1, (6,))]
    assert topo.threads_per_core == 2
    assert not topo.uniform_smt
    # The node's cpumap still names the offline CPUs; the topology must not.
    assert topo.numa_nodes[0].cpus == tuple(sorted(set(range(16)) - {2, 5, 13, 14}))
    assert topo.report()["offline"] == "2,5,13-14"


def test_snapshot_with_isa_flags() -> None:
    topo = topology("32intel64-2p8co2t+8ve")
    assert topo.isa_flags == ("avx2", "avx512f")
    # Skylake-SP numbering: core c of socket s is CPUs 8s+c and 16+8s+c.
    assert topo.core_of(3) is not None and topo.core_of(3).cpus == (3, 19)  # type: ignore[union-attr]
    assert topo.cores_per_numa() == {0: 8, 1: 8}


def test_restrict_a_snapshot_to_a_cgroup_cpuset() -> None:
    topo = topology("32intel64-2p8co2t+8ve")
    pod = topo.restrict({4, 5, 20, 21})  # two whole cores on socket 0, as the static CPU manager hands out
    assert pod.physical_cores == 2
    assert pod.cpu_numa_ids == (0,)
    assert topo.whole_cores({4, 5, 20, 21})
    assert not topo.whole_cores({4, 5})
    assert topo.physical_cores_of({4, 5}) == 2
    assert read_topology(snapshot_root("32intel64-2p8co2t+8ve"), restrict_to={4, 5, 20, 21}) == pod


def test_bulldozer_modules_are_separate_cores() -> None:
    # Opteron 6276: thread_siblings pairs CPUs 0-1, but they are two cores with their own core_id.
    topo = topology("64amd64-4s2n4ca2co")
    assert (topo.physical_cores, topo.threads_per_core, topo.smt) == (64, 1, False)


def test_sockets_out_of_cpu_order() -> None:
    # CPU 0 sits in package 1 on this machine; numbering must follow the kernel's package ids.
    topo = topology("96em64t-4no4pa3ca2co")
    assert topo.core_of(0) is not None and topo.core_of(0).socket == 1  # type: ignore[union-attr]
    assert (topo.sockets, topo.numa_count, topo.max_cores_in_one_numa) == (16, 4, 24)
