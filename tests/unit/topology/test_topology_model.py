"""The Topology model: counts, restriction, core arithmetic and the node annotation format."""

from __future__ import annotations

import json
from typing import Any

import pytest

from pinserve.topology import ANNOTATION_KEY, Core, NumaNode, Topology, parse_cpulist

pytestmark = pytest.mark.unit


def two_socket_smt(cores_per_socket: int) -> Topology:
    """An Intel-style 2-socket SMT box: core c of socket s is CPUs s*n+c and 2n+s*n+c."""
    n = cores_per_socket
    cores = tuple(
        Core(socket=s, core_id=c, cpus=(s * n + c, 2 * n + s * n + c), numa=s) for s in range(2) for c in range(n)
    )
    nodes = tuple(
        NumaNode(s, tuple(cpu for core in cores if core.socket == s for cpu in core.cpus), 192 << 30) for s in range(2)
    )
    return Topology(cores, nodes, model_name="Intel(R) Xeon(R) Platinum 8480+", isa_flags=("avx2", "amx_tile"))


def hybrid() -> Topology:
    """Four 2-thread P-cores (0-7) and eight 1-thread E-cores (8-15) in clusters of four."""
    p_cores = [Core(0, c, (2 * c, 2 * c + 1), 0) for c in range(4)]
    e_cores = [Core(0, 8 + c, (8 + c,), 0, cluster=1 + c // 4) for c in range(8)]
    return Topology(tuple(p_cores + e_cores))


# -- counts --------------------------------------------------------------------------------------------


def test_counts_of_an_smt_machine() -> None:
    topo = two_socket_smt(4)
    assert topo.logical_cpus == 16
    assert topo.cpus == frozenset(range(16))
    assert topo.physical_cores == 8
    assert topo.sockets == 2
    assert topo.socket_ids == (0, 1)
    assert topo.threads_per_core == 2
    assert topo.uniform_smt
    assert topo.smt
    assert topo.numa_count == 2
    assert topo.cores_per_numa() == {0: 4, 1: 4}
    assert topo.max_cores_in_one_numa == 4
    assert topo.core_of(9) == Core(0, 1, (1, 9), 0)
    assert topo.numa_of(12) == 1
    assert topo.numa_of(99) is None
    assert [c.core_id for c in topo.cores_in_socket(1)] == [0, 1, 2, 3]


def test_hybrid_cores_have_different_thread_counts() -> None:
    topo = hybrid()
    assert topo.physical_cores == 12
    assert topo.logical_cpus == 16
    assert topo.threads_per_core == 2
    assert not topo.uniform_smt
    assert topo.smt
    assert sorted({c.threads for c in topo.cores}) == [1, 2]


def test_no_smt() -> None:
    topo = Topology(tuple(Core(0, c, (c,), 0) for c in range(4)))
    assert (topo.threads_per_core, topo.smt, topo.uniform_smt) == (1, False, True)


def test_constructor_normalises_order() -> None:
    a = Topology((Core(1, 0, (3, 1), 0), Core(0, 0, (2, 0), 0)), offline=(9, 8))
    b = Topology((Core(0, 0, (0, 2), 0), Core(1, 0, (1, 3), 0)), (NumaNode(0, (3, 2, 1, 0)),), (8, 9))
    assert a == b
    assert a.cores[0].cpus == (0, 2)
    assert a.offline == (8, 9)


@pytest.mark.parametrize(
    ("build", "fragment"),
    [
        (lambda: Core(0, 0, (), 0), "no CPUs"),
        (lambda: Core(0, 0, (-1,), 0), "negative"),
        (lambda: Topology((Core(0, 0, (0, 1), 0), Core(0, 1, (1,), 0))), "two cores"),
        (lambda: Topology((Core(0, 0, (0,), 0),), (NumaNode(1, (0,)),)), "says NUMA 0"),
        (lambda: Topology((Core(0, 0, (0,), 0),), (NumaNode(0, ()),)), "in no NUMA node"),
        (lambda: Topology((Core(0, 0, (0,), 0),), (NumaNode(0, (0, 1)),)), "in no core"),
        (lambda: Topology((Core(0, 0, (0,), 0),), (NumaNode(0, (0,)), NumaNode(0, ()))), "listed twice"),
        (lambda: Topology((Core(0, 0, (0,), 0),), offline=(0,)), "online and offline"),
    ],
)
def test_inconsistent_topologies_are_refused(build: Any, fragment: str) -> None:
    with pytest.raises(ValueError, match=fragment):
        build()


# -- restriction and core arithmetic --------------------------------------------------------------------


def test_restrict_to_a_cgroup_cpuset() -> None:
    topo = two_socket_smt(4)
    # A Guaranteed pod given cores 1 and 2 of socket 0 (both threads) and one stray thread of socket 1.
    allowed = parse_cpulist("1-2,9-10,12")
    sub = topo.restrict(allowed)
    assert sub.cpus == allowed
    assert sub.physical_cores == 3
    assert [c.cpus for c in sub.cores] == [(1, 9), (2, 10), (12,)]
    assert sub.sockets == 2
    assert not sub.uniform_smt
    assert [(n.id, n.cpus) for n in sub.numa_nodes] == [(0, (1, 2, 9, 10)), (1, (12,))]
    assert sub.numa_nodes[0].memory_bytes == 192 << 30
    assert sub.model_name == topo.model_name
    assert sub.isa_flags == topo.isa_flags


def test_restrict_drops_emptied_nodes_but_keeps_memory_only_ones() -> None:
    cores = (Core(0, 0, (0, 1), 0), Core(1, 0, (2, 3), 1))
    nodes = (NumaNode(0, (0, 1), 1 << 30), NumaNode(1, (2, 3), 1 << 30), NumaNode(2, (), 64 << 30))
    topo = Topology(cores, nodes, offline=(4,))
    sub = topo.restrict([2, 3, 77])  # 77 is not on this machine: ignored
    assert [n.id for n in sub.numa_nodes] == [1, 2]
    assert sub.numa_count == 2
    assert sub.cpu_numa_ids == (1,)
    assert sub.cores_per_numa() == {1: 1, 2: 0}
    assert sub.offline == (4,)
    assert topo.restrict([]).physical_cores == 0
    assert topo.restrict(topo.cpus) == topo


@pytest.mark.parametrize(
    ("cpus", "touched", "whole"),
    [
        ("", 0, True),
        ("0", 1, False),
        ("0,8", 1, True),
        ("0-1,8-9", 2, True),
        ("0-3", 4, False),
        ("0-3,8-11", 4, True),
        ("0-15", 8, True),
        ("0,8,99", 1, False),  # 99 is unknown: whole_cores cannot vouch for it
        ("99", 0, False),
    ],
)
def test_physical_cores_of_and_whole_cores(cpus: str, touched: int, whole: bool) -> None:
    topo = two_socket_smt(4)
    assert topo.physical_cores_of(parse_cpulist(cpus)) == touched
    assert topo.whole_cores(parse_cpulist(cpus)) is whole


def test_whole_cores_on_a_hybrid_machine() -> None:
    topo = hybrid()
    assert topo.whole_cores([0, 1, 8])
    assert not topo.whole_cores([0, 8])
    assert topo.physical_cores_of(range(16)) == 12


# -- annotation --------------------------------------------------------------------------------------


def test_annotation_round_trip_and_format() -> None:
    topo = Topology(
        (Core(0, 0, (0, 4), 0), Core(0, 1, (1, 5), 0, die=1, cluster=3)),
        (NumaNode(0, (0, 1, 4, 5), 1024), NumaNode(1, ())),
        offline=(2, 3, 6, 7),
        model_name="Xeon",
        isa_flags=("avx2",),
    )
    data = topo.to_dict()
    assert data == {
        "v": 1,
        "model": "Xeon",
        "isa": ["avx2"],
        "sockets": 1,
        "numa": [{"id": 0, "cpus": "0-1,4-5", "mem": 1024}, {"id": 1, "cpus": ""}],
        "cores": [[0, 0, 0, "0,4"], [0, 1, 0, "1,5", 1, 3]],
        "offline": "2-3,6-7",
    }
    assert Topology.from_dict(json.loads(json.dumps(data))) == topo
    assert ANNOTATION_KEY == "pinserve.io/cpu-topology"


def test_annotation_of_a_224_cpu_two_socket_machine_is_small() -> None:
    topo = two_socket_smt(56)
    assert (topo.logical_cpus, topo.physical_cores, topo.sockets) == (224, 112, 2)
    text = json.dumps(topo.to_dict(), separators=(",", ":"))
    assert len(text.encode()) < 4096, len(text)
    assert Topology.from_dict(json.loads(text)) == topo


def good_dict() -> dict[str, Any]:
    return two_socket_smt(2).to_dict()


def _with(**changes: Any) -> dict[str, Any]:
    data = good_dict()
    data.update(changes)
    return data


@pytest.mark.parametrize(
    ("data", "fragment"),
    [
        ([], "JSON object"),
        ("{}", "JSON object"),
        (_with(v=2), "version 2"),
        (_with(v=None), "version None"),
        (_with(v=True), "version True"),
        ({k: v for k, v in good_dict().items() if k != "v"}, "version None"),
        (_with(cores="0-3"), "'cores' must be a list"),
        ({k: v for k, v in good_dict().items() if k != "cores"}, "'cores' must be a list"),
        (_with(numa={"id": 0}), "'numa' must be a list"),
        (_with(numa=[]), "no NUMA nodes"),
        (_with(numa=[[0, "0-7"]]), "not an object"),
        (_with(numa=[{"id": "0", "cpus": "0-7"}]), "NUMA node id must be an integer"),
        (_with(numa=[{"id": 0, "cpus": "0-7", "mem": 1.5}]), "NUMA node memory"),
        (_with(cores=[[0, 0, 0]]), "is not \\[socket"),
        (_with(cores=[[0, 0, 0, "0,4", 1]]), "is not \\[socket"),
        (_with(cores=[[0, True, 0, "0"]]), "must be an integer"),
        (_with(cores=[[0, 0, 0, 5]]), "core cpus must be a string"),
        (_with(cores=[[0, 0, 0, "zero"]]), "invalid CPU list"),
        (_with(cores=[[0, 0, 0, ""]]), "no CPUs"),
        (_with(cores=[[0, 0, 0, "0"], [0, 1, 0, "0"]]), "two cores"),
        (_with(offline="0"), "online and offline"),
        (_with(offline=[1]), "offline must be a string"),
        (_with(isa="avx2"), "'isa' must be a list"),
        (_with(model=None), "model must be a string"),
        (_with(sockets=3), "says 3 sockets"),
        (_with(numa=[{"id": 0, "cpus": "0-8"}]), "CPU 8, which is in no core"),
        (_with(numa=[{"id": 0, "cpus": "0-7"}]), "says NUMA 1, its CPUs say 0"),
    ],
)
def test_from_dict_rejects_malformed_data(data: Any, fragment: str) -> None:
    with pytest.raises(ValueError, match=fragment) as info:
        Topology.from_dict(data)
    if isinstance(data, dict) and data.get("v") == 1 and data.get("v") is not True:
        assert str(info.value).startswith("malformed cpu topology")


# -- report ------------------------------------------------------------------------------------------


def test_report_is_camel_case_and_json_ready() -> None:
    report = hybrid().restrict(range(10)).report()
    json.dumps(report)  # must serialise as is
    assert report["sockets"] == 1
    assert report["numaNodes"] == 1
    assert report["physicalCores"] == 6
    assert report["logicalCpus"] == 10
    assert report["threadsPerCore"] == 2
    assert report["uniformSmt"] is False
    assert report["smt"] is True
    assert report["offline"] == ""
    assert report["modelName"] == ""
    assert report["isaFlags"] == []
    assert report["numa"] == [{"id": 0, "cpus": "0-9", "physicalCores": 6, "memoryBytes": None}]
    assert report["cores"][0] == {"socket": 0, "die": 0, "cluster": -1, "coreId": 0, "numa": 0, "cpus": [0, 1]}
    assert report["cores"][-1] == {"socket": 0, "die": 0, "cluster": 1, "coreId": 9, "numa": 0, "cpus": [9]}
