"""read_topology on small synthetic sysfs trees, one kernel quirk each."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from pinserve.topology import Core, TopologyError, read_cpuinfo, read_topology

pytestmark = pytest.mark.unit

CPUINFO = """processor\t: 0
vendor_id\t: GenuineIntel
model name\t: Intel(R) Xeon(R) Platinum   8480+
flags\t\t: fpu sse avx2 avx512f avx512bw amx_int8 avx512_vnni amx_tile avx512_bf16 amx_bf16

processor\t: 1
model name\t: something else
flags\t\t: fpu
"""


def core_sets(root: Path, **kwargs: Any) -> list[tuple[int, int, tuple[int, ...]]]:
    return [(c.socket, c.core_id, c.cpus) for c in read_topology(root, **kwargs).cores]


SMT_CORES = [(0, 0, (0, 4)), (0, 1, (1, 5)), (1, 0, (2, 6)), (1, 1, (3, 7))]


@pytest.mark.parametrize("style", ["core_cpus", "list", "mask", "none"])
def test_every_sibling_file_style_gives_the_same_cores(
    make_sysfs: Any, smt_box: dict[int, dict[str, Any]], style: str
) -> None:
    # core_id repeats across packages: grouping by core_id alone would merge 0,4 with 2,6.
    assert core_sets(make_sysfs(smt_box, style=style)) == SMT_CORES


def test_hex_only_tree_with_nul_padding(make_sysfs: Any, smt_box: dict[int, dict[str, Any]]) -> None:
    root = make_sysfs(
        smt_box,
        style="mask",
        nodes={0: [0, 1, 4, 5], 1: [2, 3, 6, 7]},
        node_files="cpumap",
        nul=True,
        online_file="0-7",
    )
    topo = read_topology(root)
    assert [(c.socket, c.core_id, c.cpus, c.numa) for c in topo.cores] == [(s, c, cpus, s) for s, c, cpus in SMT_CORES]
    assert [(n.id, n.cpus) for n in topo.numa_nodes] == [(0, (0, 1, 4, 5)), (1, (2, 3, 6, 7))]


def test_siblings_split_a_repeated_core_id(make_sysfs: Any) -> None:
    # Firmware that numbers every core 0: only the sibling lists tell the cores apart.
    cpus = {cpu: {"package": 0, "core": 0, "siblings": [cpu % 2, cpu % 2 + 2]} for cpu in range(4)}
    assert core_sets(make_sysfs(cpus, style="list")) == [(0, 0, (0, 2)), (0, 0, (1, 3))]


def test_siblings_with_different_core_ids_stay_separate(make_sysfs: Any) -> None:
    # AMD Bulldozer modules: thread_siblings pairs two cores whose core_ids differ; hwloc and the kubelet
    # count two cores.
    cpus = {cpu: {"package": 0, "core": cpu, "siblings": [cpu - cpu % 2, cpu - cpu % 2 + 1]} for cpu in range(4)}
    topo = read_topology(make_sysfs(cpus, style="list"))
    assert (topo.physical_cores, topo.threads_per_core) == (4, 1)


def test_hybrid_cores(make_sysfs: Any) -> None:
    # Alder Lake style: P-cores with two threads (0-7), E-cores with one (8-15) in clusters of four.
    cpus: dict[int, dict[str, Any]] = {
        cpu: {"package": 0, "core": cpu // 2 * 4, "cluster": cpu // 2} for cpu in range(8)
    }
    cpus |= {cpu: {"package": 0, "core": 32 + cpu, "cluster": 8 + (cpu - 8) // 4} for cpu in range(8, 16)}
    topo = read_topology(make_sysfs(cpus))
    assert topo.physical_cores == 12
    assert topo.logical_cpus == 16
    assert topo.threads_per_core == 2
    assert not topo.uniform_smt
    assert topo.smt
    assert [c.cpus for c in topo.cores if c.threads == 2] == [(0, 1), (2, 3), (4, 5), (6, 7)]
    assert {c.cluster for c in topo.cores if c.threads == 1} == {8, 9}
    assert topo.whole_cores([0, 1, 8]) and not topo.whole_cores([0, 8])


def test_cpu0_offline(make_sysfs: Any, smt_box: dict[int, dict[str, Any]]) -> None:
    smt_box[0]["online"] = False
    smt_box[4]["online"] = False
    root = make_sysfs(smt_box, nodes={0: list(range(8))}, online_file="1-3,5-7", offline_file="0,4")
    topo = read_topology(root)
    assert topo.offline == (0, 4)
    assert topo.cpus == frozenset({1, 2, 3, 5, 6, 7})
    assert [c.cpus for c in topo.cores] == [(1, 5), (2, 6), (3, 7)]
    assert topo.numa_nodes[0].cpus == (1, 2, 3, 5, 6, 7)


@pytest.mark.parametrize("signal", ["online_file", "offline_file", "per_cpu_file"])
def test_each_offline_signal_alone_is_enough(make_sysfs: Any, smt_box: dict[int, dict[str, Any]], signal: str) -> None:
    kwargs: dict[str, Any] = {}
    if signal == "online_file":
        kwargs["online_file"] = "0-5,7"
    elif signal == "offline_file":
        kwargs["offline_file"] = "6"
    root = make_sysfs(smt_box, **kwargs)
    if signal == "per_cpu_file":
        (root / "sys/devices/system/cpu/cpu6/online").write_text("0\n")
    topo = read_topology(root)
    assert topo.offline == (6,)
    assert topo.core_of(2) == Core(1, 0, (2,), 0)


def test_missing_topology_dir_without_online_file_means_offline(
    make_sysfs: Any, smt_box: dict[int, dict[str, Any]]
) -> None:
    smt_box[5]["online"] = False
    root = make_sysfs(smt_box)
    (root / "sys/devices/system/cpu/cpu5/online").unlink()
    assert read_topology(root).offline == (5,)


def test_online_cpu_without_topology_dir_stands_alone(make_sysfs: Any) -> None:
    # gVisor-like trees: the kernel says the CPUs are online but shows no topology/.
    root = make_sysfs({0: {"package": 0, "core": 0}, 1: {"package": 0, "core": 0, "online": False}}, online_file="0-1")
    (root / "sys/devices/system/cpu/cpu1/online").write_text("1\n")
    topo = read_topology(root)
    assert [c.cpus for c in topo.cores] == [(0,), (1,)]
    assert topo.offline == ()


def test_memory_only_numa_node(make_sysfs: Any, smt_box: dict[int, dict[str, Any]]) -> None:
    root = make_sysfs(smt_box, nodes={0: [0, 1, 4, 5], 1: [2, 3, 6, 7], 2: []}, mem_kb={0: 1024, 1: 2048, 2: 64 << 20})
    topo = read_topology(root)
    assert [(n.id, n.cpus, n.memory_bytes) for n in topo.numa_nodes] == [
        (0, (0, 1, 4, 5), 1 << 20),
        (1, (2, 3, 6, 7), 2 << 20),
        (2, (), 64 << 30),
    ]
    assert topo.numa_count == 3
    assert topo.cpu_numa_ids == (0, 1)
    assert topo.cores_per_numa() == {0: 2, 1: 2, 2: 0}
    assert topo.max_cores_in_one_numa == 2


def test_no_node_directory_is_one_node(make_sysfs: Any, smt_box: dict[int, dict[str, Any]]) -> None:
    root = make_sysfs(smt_box, nodes=None)
    (root / "proc").mkdir()
    (root / "proc/meminfo").write_text("MemTotal:       16384 kB\nMemFree:  1 kB\n")
    topo = read_topology(root)
    assert [(n.id, n.cpus, n.memory_bytes) for n in topo.numa_nodes] == [(0, tuple(range(8)), 16 << 20)]
    assert {c.numa for c in topo.cores} == {0}


def test_cpu_missing_from_node_lists_follows_its_node_link(make_sysfs: Any, smt_box: dict[int, dict[str, Any]]) -> None:
    root = make_sysfs(smt_box, nodes={0: [0, 1, 4, 5], 1: [2, 3, 6]})
    (root / "sys/devices/system/cpu/cpu7/node1").mkdir()
    assert read_topology(root).numa_of(7) == 1


def test_die_and_cluster_ids(make_sysfs: Any) -> None:
    # One package, two dies; core_id restarts on each die, so die_id is part of a core's identity.
    cpus = {cpu: {"package": 0, "die": cpu // 4, "cluster": cpu // 2, "core": (cpu % 4) // 2} for cpu in range(8)}
    topo = read_topology(make_sysfs(cpus, style="list"))
    assert [(c.die, c.cluster, c.core_id, c.cpus) for c in topo.cores] == [
        (0, 0, 0, (0, 1)),
        (0, 1, 1, (2, 3)),
        (1, 2, 0, (4, 5)),
        (1, 3, 1, (6, 7)),
    ]
    assert topo.sockets == 1
    # Without die_id the two dies' cores would have collapsed into two 4-thread cores.
    assert topo.threads_per_core == 2


def test_sparse_interleaved_numbering(make_sysfs: Any) -> None:
    cpus = {cpu: {"package": cpu % 2, "core": cpu // 8} for cpu in (0, 1, 8, 9, 64, 65, 72, 73)}
    topo = read_topology(make_sysfs(cpus, style="mask"))
    assert [(c.socket, c.cpus) for c in topo.cores] == [
        (0, (0,)),
        (0, (8,)),
        (0, (64,)),
        (0, (72,)),
        (1, (1,)),
        (1, (9,)),
        (1, (65,)),
        (1, (73,)),
    ]


def test_sysfs_root_layout_and_cpuinfo(make_sysfs: Any, smt_box: dict[int, dict[str, Any]]) -> None:
    fs_root = make_sysfs(smt_box, cpuinfo=CPUINFO)
    from_fs = read_topology(fs_root)
    from_sys = read_topology(fs_root / "sys")
    assert from_fs == from_sys
    assert from_fs.model_name == "Intel(R) Xeon(R) Platinum 8480+"
    assert from_fs.isa_flags == ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_bf16", "amx_int8")
    sys_only = make_sysfs(smt_box, layout="sysfs")
    assert sys_only.name == "sys"
    assert core_sets(sys_only) == SMT_CORES


def test_read_cpuinfo_without_proc(tmp_path: Path) -> None:
    assert read_cpuinfo(tmp_path) == ("", ())


def test_read_cpuinfo_other_architectures(tmp_path: Path) -> None:
    (tmp_path / "proc").mkdir()
    (tmp_path / "proc/cpuinfo").write_text("processor\t: 0\ncpu\t\t: POWER9 (raw), altivec supported\n")
    assert read_cpuinfo(tmp_path) == ("POWER9 (raw), altivec supported", ())
    (tmp_path / "proc/cpuinfo").write_text("processor\t: 0\nFeatures\t: fp asimd\nCPU part\t: 0xd0c\n")
    assert read_cpuinfo(tmp_path) == ("", ())


def test_restrict_to(make_sysfs: Any, smt_box: dict[int, dict[str, Any]]) -> None:
    root = make_sysfs(smt_box)
    topo = read_topology(root, restrict_to={1, 5, 2})
    assert [c.cpus for c in topo.cores] == [(1, 5), (2,)]
    assert topo == read_topology(root).restrict([1, 2, 5])


def test_not_a_sysfs_tree(tmp_path: Path) -> None:
    with pytest.raises(TopologyError, match="neither a filesystem root"):
        read_topology(tmp_path)
    with pytest.raises(ValueError):  # TopologyError is a ValueError for callers that catch broadly
        read_topology(tmp_path / "does-not-exist")


@pytest.mark.parametrize(
    ("relative", "text", "fragment"),
    [
        ("sys/devices/system/cpu/cpu1/topology/core_id", "one\n", "expected an integer"),
        ("sys/devices/system/cpu/cpu1/topology/core_cpus_list", "1,5,x\n", "invalid CPU list"),
        ("sys/devices/system/cpu/online", "0-7-9\n", "invalid CPU list"),
    ],
)
def test_garbage_files_name_the_file(
    make_sysfs: Any, smt_box: dict[int, dict[str, Any]], relative: str, text: str, fragment: str
) -> None:
    root = make_sysfs(smt_box)
    (root / relative).write_text(text)
    with pytest.raises(TopologyError, match=fragment) as info:
        read_topology(root)
    assert relative.rpartition("/")[2] in str(info.value)


def test_no_online_cpu(make_sysfs: Any, smt_box: dict[int, dict[str, Any]]) -> None:
    with pytest.raises(TopologyError, match="no online CPU"):
        read_topology(make_sysfs(smt_box, online_file=""))
