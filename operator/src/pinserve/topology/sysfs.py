"""Read a machine's CPU topology from sysfs (a live ``/sys`` or a snapshot of one).

Kernels of many ages are handled: ``core_cpus_list`` (5.x) or the older ``thread_siblings_list``, trees
that only carry hex masks, files padded with NUL bytes, offline CPUs in any of the three ways the kernel
shows them, ``die_id`` and ``cluster_id`` where present, and machines without ``devices/system/node``.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from pinserve.topology.cpuinfo import read_cpuinfo
from pinserve.topology.cpuset import parse_cpulist, parse_cpumask
from pinserve.topology.model import Core, NumaNode, Topology

__all__ = ["TopologyError", "allowed_cpus_of_self", "read_topology"]

_CPU_DIR = re.compile(r"cpu(\d+)")
_NODE_DIR = re.compile(r"node(\d+)")
_MEMTOTAL = re.compile(r"MemTotal:\s*(\d+)\s*kB")


class TopologyError(ValueError):
    """The tree is not a sysfs tree, or one of its files cannot be made sense of."""


@dataclass(frozen=True)
class _Cpu:
    number: int
    package: int
    die: int
    cluster: int
    core_id: int
    siblings: frozenset[int] | None


def _locate(root: Path) -> tuple[Path, Path]:
    """Return (sysfs root, filesystem root) for either kind of ``root``."""
    if (root / "sys" / "devices" / "system" / "cpu").is_dir():
        return root / "sys", root
    if (root / "devices" / "system" / "cpu").is_dir():
        # /sys itself: its parent is the filesystem holding proc/ (true on hosts and in snapshots).
        return root, root.parent
    raise TopologyError(
        f"{root} is neither a filesystem root (with sys/devices/system/cpu) nor a sysfs root (with devices/system/cpu)"
    )


def _read(path: Path) -> str | None:
    try:
        return path.read_text(encoding="ascii", errors="replace")
    except OSError:
        # Absent, unreadable or a directory: every caller has a fallback for a missing file.
        return None


def _read_int(path: Path) -> int | None:
    text = _read(path)
    if text is None:
        return None
    try:
        return int(text.strip(" \t\r\n\x00"))
    except ValueError:
        raise TopologyError(f"{path}: expected an integer, found {text[:40]!r}") from None


def _read_cpus(lists: Iterable[Path] = (), masks: Iterable[Path] = ()) -> frozenset[int] | None:
    """Parse the first file that exists, trying the CPU-list files before the hex-mask ones."""
    candidates = [(path, parse_cpulist) for path in lists] + [(path, parse_cpumask) for path in masks]
    for path, parse in candidates:
        text = _read(path)
        if text is None:
            continue
        try:
            return parse(text)
        except ValueError as exc:
            raise TopologyError(f"{path}: {exc}") from None
    return None


def _online_cpus(cpu_root: Path, present: Iterable[int]) -> frozenset[int]:
    online_list = _read_cpus(lists=[cpu_root / "online"])
    offline_list = _read_cpus(lists=[cpu_root / "offline"]) or frozenset()
    online: set[int] = set()
    for cpu in present:
        cpu_dir = cpu_root / f"cpu{cpu}"
        if online_list is not None and cpu not in online_list:
            continue
        if cpu in offline_list or _read_int(cpu_dir / "online") == 0:
            continue
        # Old kernels drop topology/ for a hot-unplugged CPU and may have no global online file; then
        # the missing directory is the only sign. With an online list that names the CPU, trust the list.
        if online_list is None and not (cpu_dir / "topology").is_dir():
            continue
        online.add(cpu)
    return frozenset(online)


def _read_cpu(cpu_root: Path, cpu: int) -> _Cpu:
    topo = cpu_root / f"cpu{cpu}" / "topology"
    package = _read_int(topo / "physical_package_id")
    die = _read_int(topo / "die_id")
    cluster = _read_int(topo / "cluster_id")
    core_id = _read_int(topo / "core_id")
    siblings = _read_cpus(
        lists=[topo / "core_cpus_list", topo / "thread_siblings_list"],
        masks=[topo / "core_cpus", topo / "thread_siblings"],
    )
    return _Cpu(
        number=cpu,
        # Some architectures report -1 for "unknown"; one package/die is the only sensible reading.
        package=package if package is not None and package >= 0 else 0,
        die=die if die is not None and die >= 0 else 0,
        cluster=cluster if cluster is not None and cluster >= 0 else -1,
        # Without core_id nothing says CPUs share a core, so each one stands alone.
        core_id=core_id if core_id is not None else cpu,
        siblings=siblings,
    )


def _group_cores(cpus: list[_Cpu]) -> list[list[_Cpu]]:
    """Group CPUs into physical cores.

    Identity is (package, die, cluster, core_id): core_id alone repeats across packages. Thread-sibling
    sets then split a group whose members the kernel does not call siblings (firmware that repeats
    core_id inside a package). Siblings with different core_ids stay apart: AMD's Bulldozer modules list
    two cores as siblings, and hwloc and the kubelet both count them as two cores.
    """
    by_key: dict[tuple[int, int, int, int], list[_Cpu]] = {}
    for cpu in cpus:
        by_key.setdefault((cpu.package, cpu.die, cpu.cluster, cpu.core_id), []).append(cpu)
    cores: list[list[_Cpu]] = []
    for members in by_key.values():
        if any(cpu.siblings is None for cpu in members):
            cores.append(members)
            continue
        # Union-find over "a lists b as a sibling", restricted to this key's CPUs.
        parent = {cpu.number: cpu.number for cpu in members}

        def find(n: int, parent: dict[int, int] = parent) -> int:
            while parent[n] != n:
                parent[n] = parent[parent[n]]
                n = parent[n]
            return n

        for cpu in members:
            for other in cpu.siblings or ():
                if other in parent:
                    parent[find(other)] = find(cpu.number)
        groups: dict[int, list[_Cpu]] = {}
        for cpu in members:
            groups.setdefault(find(cpu.number), []).append(cpu)
        cores.extend(groups.values())
    return cores


def _node_memory(meminfo: Path) -> int | None:
    text = _read(meminfo)
    match = _MEMTOTAL.search(text) if text else None
    return int(match.group(1)) * 1024 if match else None


def _numa_layout(
    sysfs: Path, fsroot: Path, cpu_root: Path, online: frozenset[int]
) -> tuple[dict[int, int], list[NumaNode]]:
    """Map each online CPU to its NUMA node and list the nodes (memory-only ones included)."""
    node_root = sysfs / "devices" / "system" / "node"
    node_dirs: dict[int, Path] = {}
    if node_root.is_dir():
        for entry in node_root.iterdir():
            match = _NODE_DIR.fullmatch(entry.name)
            if match and entry.is_dir():
                node_dirs[int(match.group(1))] = entry
    if not node_dirs:
        # No NUMA support in the kernel: the whole machine is one node, with all of its memory.
        memory = _node_memory(fsroot / "proc" / "meminfo")
        return dict.fromkeys(online, 0), [NumaNode(0, tuple(online), memory)]

    node_of: dict[int, int] = {}
    for node_id in sorted(node_dirs):
        node_dir = node_dirs[node_id]
        listed = _read_cpus(lists=[node_dir / "cpulist"], masks=[node_dir / "cpumap"]) or frozenset()
        for cpu in sorted(listed & online):
            node_of.setdefault(cpu, node_id)
    for cpu in sorted(online - node_of.keys()):
        # The node files missed this CPU; its own nodeN link is the next witness, then the first node.
        linked = [
            int(m.group(1))
            for entry in (cpu_root / f"cpu{cpu}").iterdir()
            if (m := _NODE_DIR.fullmatch(entry.name)) and int(m.group(1)) in node_dirs
        ]
        node_of[cpu] = min(linked) if linked else min(node_dirs)
    nodes = [
        NumaNode(
            node_id,
            tuple(cpu for cpu, home in node_of.items() if home == node_id),
            _node_memory(node_dirs[node_id] / "meminfo"),
        )
        for node_id in sorted(node_dirs)
    ]
    return node_of, nodes


def read_topology(root: str | Path = "/", *, restrict_to: Iterable[int] | None = None) -> Topology:
    """Read the CPU topology under ``root``: a filesystem root (``/``, a snapshot) or a sysfs root (``/sys``).

    ``restrict_to`` limits the result to a process's allowed CPUs, as ``Topology.restrict`` does.
    """
    sysfs, fsroot = _locate(Path(root))
    cpu_root = sysfs / "devices" / "system" / "cpu"
    present = sorted(
        int(match.group(1))
        for entry in cpu_root.iterdir()
        if (match := _CPU_DIR.fullmatch(entry.name)) and entry.is_dir()
    )
    online = _online_cpus(cpu_root, present)
    if not online:
        raise TopologyError(f"{cpu_root}: no online CPU found")
    node_of, nodes = _numa_layout(sysfs, fsroot, cpu_root, online)
    cores = []
    for members in _group_cores([_read_cpu(cpu_root, cpu) for cpu in sorted(online)]):
        first = members[0]
        numbers = tuple(sorted(cpu.number for cpu in members))
        cores.append(Core(first.package, first.core_id, numbers, node_of[numbers[0]], first.die, first.cluster))
    model_name, isa_flags = read_cpuinfo(fsroot)
    topology = Topology(
        cores=tuple(cores),
        numa_nodes=tuple(nodes),
        offline=tuple(sorted(set(present) - online)),
        model_name=model_name,
        isa_flags=isa_flags,
    )
    return topology if restrict_to is None else topology.restrict(restrict_to)


def allowed_cpus_of_self() -> frozenset[int]:
    """The CPUs this process may run on (its affinity, which the cgroup cpuset bounds)."""
    if hasattr(os, "sched_getaffinity"):
        return frozenset(os.sched_getaffinity(0))
    # Platforms without affinity (macOS) have no pinning either: every CPU is allowed.
    return frozenset(range(os.cpu_count() or 1))
