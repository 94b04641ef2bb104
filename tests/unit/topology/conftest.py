"""Fixtures for the topology tests: a builder of small synthetic sysfs trees."""

from __future__ import annotations

import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pytest

# tests/ holds helpers shared across tiers (snapshots.py); the test directories are not packages, so
# make it importable here for runs that do not configure pytest's pythonpath.
_TESTS_DIR = str(Path(__file__).resolve().parents[2])
if _TESTS_DIR not in sys.path:
    sys.path.insert(0, _TESTS_DIR)


def _ranges(cpus: list[int]) -> str:
    # Written independently of pinserve's formatter so the tests do not check the code with itself.
    out: list[str] = []
    for cpu in sorted(cpus):
        if out and out[-1].rpartition("-")[2] == str(cpu - 1):
            head = out[-1].partition("-")[0]
            out[-1] = f"{head}-{cpu}"
        else:
            out.append(str(cpu))
    return ",".join(out)


def hex_mask(cpus: list[int], words: int = 2) -> str:
    """A kernel-style mask: 32-bit words, most significant first, each eight hex digits."""
    value = sum(1 << cpu for cpu in cpus)
    words = max(words, (max(cpus, default=0) // 32) + 1)
    return ",".join(f"{(value >> (32 * i)) & 0xFFFFFFFF:08x}" for i in reversed(range(words)))


SysfsBuilder = Callable[..., Path]


@pytest.fixture
def make_sysfs(tmp_path: Path) -> SysfsBuilder:
    """Return ``build(cpus, **options) -> root`` writing a sysfs tree under ``tmp_path``.

    ``cpus`` maps a CPU number to a dict with ``package``, ``core`` and optionally ``die``, ``cluster``,
    ``siblings`` (a list; default: online CPUs with the same package/die/core) and ``online`` (False:
    hot-unplugged, its ``online`` file says 0 and it has no ``topology/``). Options: ``style`` picks the
    sibling files ("core_cpus" 5.x, "list" older, "mask" oldest, "none"), ``nodes`` maps NUMA node ids to
    CPU lists (None: no node/ directory), ``node_files`` "cpulist" or "cpumap", ``mem_kb`` per node,
    ``online_file``/``offline_file`` the global files' text, ``nul`` pads every file with NUL bytes,
    ``layout`` "fs" (root holds sys/) or "sysfs" (root is sys/ itself), ``cpuinfo`` the proc/cpuinfo text.
    """
    counter = iter(range(1_000_000))

    def build(
        cpus: Mapping[int, Mapping[str, Any]],
        *,
        style: str = "core_cpus",
        nodes: Mapping[int, list[int]] | None = None,
        node_files: str = "cpulist",
        mem_kb: Mapping[int, int] | None = None,
        online_file: str | None = None,
        offline_file: str | None = None,
        nul: bool = False,
        layout: str = "fs",
        cpuinfo: str | None = None,
    ) -> Path:
        base = tmp_path / f"tree{next(counter)}"
        sysfs = base / "sys"
        cpu_root = sysfs / "devices" / "system" / "cpu"
        cpu_root.mkdir(parents=True)
        end = "\n\x00\x00" if nul else "\n"

        def write(path: Path, text: str) -> None:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text + end)

        online = [cpu for cpu, spec in cpus.items() if spec.get("online", True)]

        def key(cpu: int) -> tuple[Any, ...]:
            spec = cpus[cpu]
            return (spec["package"], spec.get("die", 0), spec.get("cluster"), spec["core"])

        for cpu, spec in cpus.items():
            cpu_dir = cpu_root / f"cpu{cpu}"
            cpu_dir.mkdir()
            if not spec.get("online", True):
                write(cpu_dir / "online", "0")
                continue
            if cpu != 0:
                write(cpu_dir / "online", "1")
            topo = cpu_dir / "topology"
            topo.mkdir()
            write(topo / "physical_package_id", str(spec["package"]))
            write(topo / "core_id", str(spec["core"]))
            if "die" in spec:
                write(topo / "die_id", str(spec["die"]))
            if "cluster" in spec:
                write(topo / "cluster_id", str(spec["cluster"]))
            siblings = spec.get("siblings") or [c for c in online if key(c) == key(cpu)]
            package_cpus = [c for c in online if cpus[c]["package"] == spec["package"]]
            if style == "core_cpus":
                write(topo / "core_cpus_list", _ranges(siblings))
                write(topo / "core_cpus", hex_mask(siblings))
                write(topo / "thread_siblings_list", _ranges(siblings))
            elif style == "list":
                write(topo / "thread_siblings_list", _ranges(siblings))
                write(topo / "thread_siblings", hex_mask(siblings))
                write(topo / "core_siblings_list", _ranges(package_cpus))
            elif style == "mask":
                write(topo / "thread_siblings", hex_mask(siblings))
                write(topo / "core_siblings", hex_mask(package_cpus))
            else:
                assert style == "none", style
        if online_file is not None:
            write(cpu_root / "online", online_file)
        if offline_file is not None:
            write(cpu_root / "offline", offline_file)
        if nodes is not None:
            node_root = sysfs / "devices" / "system" / "node"
            node_root.mkdir(parents=True)
            for node_id, node_cpus in nodes.items():
                node_dir = node_root / f"node{node_id}"
                node_dir.mkdir()
                if node_files == "cpulist":
                    write(node_dir / "cpulist", _ranges(node_cpus))
                else:
                    write(node_dir / "cpumap", hex_mask(node_cpus))
                if mem_kb and node_id in mem_kb:
                    write(
                        node_dir / "meminfo",
                        f"Node {node_id} MemTotal:  {mem_kb[node_id]} kB\nNode {node_id} MemFree:   1024 kB",
                    )
        if cpuinfo is not None:
            write(base / "proc" / "cpuinfo", cpuinfo)
        return base if layout == "fs" else sysfs

    return build


@pytest.fixture
def smt_box() -> dict[int, dict[str, Any]]:
    """Two packages of two 2-thread cores, numbered the way Intel BIOSes do (siblings N and N+4)."""
    return {cpu: {"package": (cpu % 4) // 2, "core": cpu % 2} for cpu in range(8)}
