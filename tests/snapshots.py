"""The hwloc sysfs snapshots (``tests/data/hwloc-sysfs``, from hwloc's test suite) as test data.

``SNAPSHOT_NAMES`` lists them; ``snapshot_root(name)`` unpacks one (once per session) and returns the
directory holding its ``sys/`` and ``proc/``; ``console_path(name)`` is hwloc's own reading of it and
``parse_console`` turns that reading into packages, cores, NUMA nodes and offline CPUs.
A missing snapshot directory is a failure, never a skip. Set ``PINSERVE_SNAPSHOTS`` to read another directory.
"""

from __future__ import annotations

import atexit
import os
import posixpath
import re
import shutil
import tarfile
import tempfile
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import pytest

__all__ = ["SNAPSHOT_DIR", "SNAPSHOT_NAMES", "HwlocReading", "console_path", "parse_console", "snapshot_root"]

REPO_ROOT = Path(__file__).resolve().parents[1]
SNAPSHOT_DIR = Path(os.environ.get("PINSERVE_SNAPSHOTS") or REPO_ROOT / "tests" / "data" / "hwloc-sysfs")
_SUFFIX = ".tar.bz2"


def _discover() -> tuple[str, ...]:
    names = tuple(sorted(p.name[: -len(_SUFFIX)] for p in SNAPSHOT_DIR.glob(f"*{_SUFFIX}")))
    if not names:
        # pytest.fail at import time turns into a collection error that names the cause, where an empty
        # parametrize list would silently skip every snapshot test.
        pytest.fail(
            f"no hwloc sysfs snapshots (*{_SUFFIX}) in {SNAPSHOT_DIR}: they ship in tests/data/hwloc-sysfs; "
            "is PINSERVE_SNAPSHOTS pointing elsewhere?",
            pytrace=False,
        )
    return names


SNAPSHOT_NAMES: tuple[str, ...] = _discover()

_unpacked: dict[str, Path] = {}
_workdirs: list[Path] = []  # at most one: this session's scratch directory


def _wanted(members: list[tarfile.TarInfo]) -> list[tarfile.TarInfo]:
    """The members worth unpacking, checked to stay inside the destination.

    CPU cache descriptions (``cpuN/cache/``) are three quarters of every archive and nothing here reads
    them; skipping them keeps a session's unpacking under a second. Symlinks that leave the archive
    (sysfs is full of them) are dropped rather than followed.
    """
    keep = []
    for member in members:
        parts = PurePosixPath(member.name).parts
        if member.name.startswith("/") or ".." in parts or "cache" in parts:
            continue
        if member.issym():
            target = posixpath.normpath(posixpath.join(posixpath.dirname(member.name), member.linkname))
            if member.linkname.startswith("/") or target.startswith(".."):
                continue
        elif not (member.isfile() or member.isdir()):
            continue
        keep.append(member)
    return keep


def snapshot_root(name: str) -> Path:
    """Unpack snapshot ``name`` into the session's scratch directory (once) and return its root."""
    if name in _unpacked:
        return _unpacked[name]
    archive = SNAPSHOT_DIR / f"{name}{_SUFFIX}"
    if not archive.is_file():
        pytest.fail(f"hwloc snapshot {archive} does not exist", pytrace=False)
    if not _workdirs:
        # Thousands of tiny files: tmpfs unpacks them in milliseconds where a busy disk takes seconds.
        shm = Path("/dev/shm")
        scratch = str(shm) if shm.is_dir() and os.access(shm, os.W_OK) else None
        _workdirs.append(Path(tempfile.mkdtemp(prefix="pinserve-snapshots-", dir=scratch)))
        atexit.register(shutil.rmtree, _workdirs[0], True)
    dest = _workdirs[0] / name
    with tarfile.open(archive, "r:bz2") as tar:
        # _wanted has vetted every path; the "data" filter's per-member realpath() calls cost seconds.
        tar.extractall(dest, members=_wanted(tar.getmembers()), filter="fully_trusted")
    # The archive's top directory is not always named like the archive (96em64t-4no4pa3ca2co holds
    # 96em64t-4n4d3ca2co/), so take whatever single directory it unpacked to.
    tops = [p for p in dest.iterdir() if p.is_dir()]
    if len(tops) != 1 or not (tops[0] / "sys").is_dir():
        pytest.fail(f"{archive} should unpack to one directory holding sys/, got {tops}", pytrace=False)
    _unpacked[name] = tops[0]
    return tops[0]


def console_path(name: str) -> Path:
    """hwloc's reading of snapshot ``name`` (``lstopo`` console output)."""
    return SNAPSHOT_DIR / f"{name}.console"


# -- hwloc's reading ---------------------------------------------------------------------------------------

_UNITS = {"KiB": 1 << 10, "MiB": 1 << 20, "GiB": 1 << 30, "TiB": 1 << 40}


@dataclass
class _Obj:
    kind: str
    os_index: int | None
    line: str
    children: list[_Obj] = field(default_factory=list)

    def pus(self) -> frozenset[int]:
        if self.kind == "PU":
            assert self.os_index is not None
            return frozenset([self.os_index])
        return frozenset().union(*(child.pus() for child in self.children))

    def walk(self) -> list[_Obj]:
        return [self, *(obj for child in self.children for obj in child.walk())]


@dataclass
class HwlocReading:
    """What ``lstopo`` saw: packages with their cores, NUMA nodes, PUs, offline CPUs and the model."""

    # package OS index -> {(core OS index, the core's PUs by OS index)}
    packages: dict[int, set[tuple[int, frozenset[int]]]]
    numa: dict[int, frozenset[int]]
    numa_local_bytes: dict[int, int]
    pus: frozenset[int]
    offline: frozenset[int]
    models: set[str]


def parse_console(path: Path) -> HwlocReading:
    """Parse an ``lstopo`` console dump: the object tree (indented) and its trailing summary lines."""
    lines = path.read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("Machine"))
    stack: list[tuple[int, _Obj]] = []
    machine: _Obj | None = None
    end = len(lines)
    for i in range(start, len(lines)):
        line = lines[i]
        if line.strip().startswith("depth "):
            end = i
            break
        indent = len(line) - len(line.lstrip(" "))
        kind = re.match(r"[A-Za-z0-9]+", line.strip())
        os_index = re.search(r"\(P#(\d+)", line)
        obj = _Obj(kind.group(0) if kind else "?", int(os_index.group(1)) if os_index else None, line)
        while stack and stack[-1][0] >= indent:
            stack.pop()
        if stack:
            stack[-1][1].children.append(obj)
        else:
            machine = obj
        stack.append((indent, obj))
    assert machine is not None, f"{path}: no Machine line"

    packages: dict[int, set[tuple[int, frozenset[int]]]] = {}
    numa: dict[int, frozenset[int]] = {}
    numa_bytes: dict[int, int] = {}
    models: set[str] = set()
    # hwloc attaches a NUMA node to the object whose CPUs it serves, so its CPUs are its parent's.
    for parent in machine.walk():
        for child in parent.children:
            if child.kind == "NUMANode":
                assert child.os_index is not None
                numa[child.os_index] = parent.pus()
                local = re.search(r"local=(\d+)([KMGT]iB)", child.line)
                if local:
                    numa_bytes[child.os_index] = int(local.group(1)) * _UNITS[local.group(2)]
    for obj in machine.walk():
        if obj.kind == "Package":
            assert obj.os_index is not None
            cores = {
                (core.os_index, core.pus()) for core in obj.walk() if core.kind == "Core" and core.os_index is not None
            }
            packages.setdefault(obj.os_index, set()).update(cores)
            model = re.search(r'CPUModel="([^"]*)"', obj.line)
            if model:
                models.add(" ".join(model.group(1).split()))
    offline: frozenset[int] = frozenset()
    for line in lines[end:]:
        hidden = re.match(r"\d+ processors not represented in topology: (\S+)", line)
        if hidden:
            value = int("".join(word.removeprefix("0x") for word in hidden.group(1).split(",")), 16)
            offline = frozenset(i for i in range(value.bit_length()) if value >> i & 1)
    return HwlocReading(packages, numa, numa_bytes, machine.pus(), offline, models)
