"""Read the kubelet's CPU manager checkpoint (``/var/lib/kubelet/cpu_manager_state``).

The kubelet writes it as JSON (``pkg/kubelet/cm/cpumanager/state/checkpoint.go``)::

    {"policyName": "static", "defaultCpuSet": "0-1,34-35",
     "entries": {"<pod UID>": {"<container name>": "2-5,36-39"}}, "checksum": 1552716370}

``none`` writes ``{"policyName": "none", "defaultCpuSet": "", "checksum": ...}``. Kubelets before 1.18
wrote checkpoint v1, whose ``entries`` map a container ID to its cpuset; both are read.

Nothing here raises for a bad file: a missing, unreadable, empty or garbage file yields a state whose
``policy`` is ``unknown`` and whose ``reason`` says why, because a node agent must keep running (and say
what it cannot see) when the kubelet has no static policy or its directory is not mounted.

The kubelet replaces the file by rename. Mounted alone into a container, the file stays the inode that was
there when the container started: ``replaced`` is then set (the inode has no link left), and only the
policy, which the kubelet cannot change without a restart and a deleted checkpoint, is still worth reading.
:class:`CpuManagerState` is also the merged view of :mod:`pinserve.agent.podresources`, where the
assignments come from the kubelet's pod-resources API instead (``source``).
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pinserve.topology.cpuset import format_cpulist, parse_cpulist

__all__ = [
    "DEFAULT_STATE_PATH",
    "KNOWN_POLICIES",
    "POLICY_NONE",
    "POLICY_STATIC",
    "POLICY_UNKNOWN",
    "SOURCE_CHECKPOINT",
    "SOURCE_POD_RESOURCES",
    "CpuManagerState",
    "FileSignature",
    "file_signature",
    "parse_state",
    "read_state",
]

DEFAULT_STATE_PATH = "/var/lib/kubelet/cpu_manager_state"
POLICY_STATIC = "static"
POLICY_NONE = "none"
POLICY_UNKNOWN = "unknown"
KNOWN_POLICIES = (POLICY_STATIC, POLICY_NONE)
#: Where the CPU assignments of a state come from.
SOURCE_CHECKPOINT = "checkpoint"
SOURCE_POD_RESOURCES = "pod-resources"

# A real checkpoint is a few KiB (one line per pinned container); anything far larger is not one.
MAX_STATE_BYTES = 4 << 20

#: What identifies one version of the file: inode, size, mtime. The kubelet replaces it by rename.
FileSignature = tuple[int, int, int]


@dataclass(frozen=True)
class CpuManagerState:
    """What the CPU manager says; ``policy`` is ``static``, ``none`` or ``unknown`` (with ``reason``)."""

    policy: str
    #: The shared pool (``defaultCpuSet``); None when unknown. Empty under the ``none`` policy.
    default_cpus: frozenset[int] | None = None
    #: pod UID -> container name -> exclusive CPUs (checkpoint v2).
    entries: Mapping[str, Mapping[str, frozenset[int]]] = field(default_factory=dict)
    #: container ID -> exclusive CPUs (checkpoint v1, kubelets before 1.18).
    legacy_entries: Mapping[str, frozenset[int]] = field(default_factory=dict)
    checksum: int | None = None
    #: Why the policy is unknown, or what in the file was skipped; None for a clean read.
    reason: str | None = None
    path: str = ""
    #: The file read had been replaced (its inode has no link left): a single-file mount of an old version.
    replaced: bool = False
    #: Where the assignments come from: this checkpoint, or the kubelet's pod-resources API.
    source: str = SOURCE_CHECKPOINT
    #: pod-resources: (namespace, pod name) -> container name -> exclusive CPUs (empty: the shared pool).
    pod_cpus: Mapping[tuple[str, str], Mapping[str, frozenset[int]]] = field(default_factory=dict)
    #: pod-resources: the CPUs the CPU manager may assign exclusively (None: not known).
    allocatable: frozenset[int] | None = None
    #: Why the pod-resources API was not used, when one was configured.
    pod_resources_error: str | None = None

    @property
    def known(self) -> bool:
        return self.policy in KNOWN_POLICIES

    def container_cpus(self, pod_uid: str, container: str, container_id: str | None = None) -> frozenset[int] | None:
        """The exclusive CPUs of one container, or None when it has none (it runs in the shared pool)."""
        cpus = (self.entries.get(pod_uid) or {}).get(container)
        if cpus is None and container_id:
            cpus = self.legacy_entries.get(container_id.rpartition("://")[2])
        return cpus

    def exclusive_cpus(
        self, pod_uid: str, container: str, container_id: str | None = None, *, namespace: str = "", pod: str = ""
    ) -> frozenset[int] | None:
        """The container's exclusive CPUs; empty when it runs in the shared pool; None when unknown.

        From pod-resources a pod the kubelet does not list (yet) is unknown; the checkpoint lists only
        exclusive assignments, so there a container without an entry is in the shared pool.
        """
        if self.source == SOURCE_POD_RESOURCES:
            return (self.pod_cpus.get((namespace, pod)) or {}).get(container)
        return self.container_cpus(pod_uid, container, container_id) or frozenset()

    def summary(self) -> dict[str, Any]:
        """The small JSON published as the node annotation ``pinserve.io/cpu-manager``."""
        out: dict[str, Any] = {"policy": self.policy}
        if self.default_cpus is not None:
            out["defaultCpuSet"] = format_cpulist(self.default_cpus)
        if self.allocatable is not None:
            out["allocatableCpuSet"] = format_cpulist(self.allocatable)
        out["source"] = self.source
        if self.pod_resources_error:
            out["podResourcesError"] = self.pod_resources_error
        if self.reason:
            out["reason"] = self.reason
        return out


def _unknown(path: str, reason: str) -> CpuManagerState:
    return CpuManagerState(POLICY_UNKNOWN, reason=reason, path=path)


def _cpus(value: Any, what: str, problems: list[str]) -> frozenset[int] | None:
    if not isinstance(value, str):
        problems.append(f"{what} is not a CPU list string ({type(value).__name__})")
        return None
    try:
        return parse_cpulist(value)
    except ValueError as exc:
        problems.append(f"{what}: {exc}")
        return None


def parse_state(text: str, path: str = "") -> CpuManagerState:
    """Parse the checkpoint's text; never raises."""
    where = path or "cpu_manager_state"
    if not text.strip(" \t\r\n\x00"):
        return _unknown(path, f"{where} is empty")
    try:
        data = json.loads(text)
    except ValueError as exc:
        return _unknown(path, f"{where} is not JSON: {exc}")
    if not isinstance(data, dict):
        return _unknown(path, f"{where} is not a JSON object but a {type(data).__name__}")
    name = data.get("policyName")
    if not isinstance(name, str) or not name:
        return _unknown(path, f"{where} has no policyName")
    policy = name.strip().lower()
    if policy not in KNOWN_POLICIES:
        return _unknown(path, f"{where} names an unrecognised CPU manager policy {name!r}")

    problems: list[str] = []
    default = _cpus(data.get("defaultCpuSet", ""), "defaultCpuSet", problems)
    entries: dict[str, dict[str, frozenset[int]]] = {}
    legacy: dict[str, frozenset[int]] = {}
    raw_entries = data.get("entries") or {}
    if not isinstance(raw_entries, dict):
        problems.append(f"entries is not an object ({type(raw_entries).__name__})")
        raw_entries = {}
    for key, value in raw_entries.items():
        if isinstance(value, dict):  # v2: pod UID -> {container name: cpuset}
            containers: dict[str, frozenset[int]] = {}
            for container, cpuset in value.items():
                cpus = _cpus(cpuset, f"entries[{key}][{container}]", problems)
                if cpus is not None:
                    containers[str(container)] = cpus
            entries[str(key)] = containers
        else:  # v1: container ID -> cpuset
            cpus = _cpus(value, f"entries[{key}]", problems)
            if cpus is not None:
                legacy[str(key)] = cpus
    checksum = data.get("checksum")
    if not isinstance(checksum, int) or isinstance(checksum, bool):
        checksum = None
    reason = f"{where}: skipped " + "; ".join(problems) if problems else None
    return CpuManagerState(policy, default, entries, legacy, checksum, reason, path)


def read_state(path: str | os.PathLike[str]) -> CpuManagerState:
    """Read and parse the checkpoint at ``path``; a missing or unreadable file is an ``unknown`` state."""
    where = str(path)
    try:
        with open(path, "rb") as handle:
            raw = handle.read(MAX_STATE_BYTES + 1)
            replaced = os.fstat(handle.fileno()).st_nlink == 0
    except FileNotFoundError:
        return _unknown(
            where,
            f"{where} does not exist: the kubelet's CPU manager checkpoint is not visible here "
            "(kubelet root directory not mounted, or another kubelet root)",
        )
    except IsADirectoryError:
        return _unknown(where, f"{where} is a directory, not the CPU manager checkpoint")
    except OSError as exc:
        return _unknown(where, f"cannot read {where}: {exc.strerror or exc}")
    if len(raw) > MAX_STATE_BYTES:
        return _unknown(where, f"{where} is larger than {MAX_STATE_BYTES} bytes; not a CPU manager checkpoint")
    state = parse_state(raw.decode("utf-8", errors="replace"), where)
    return dataclasses.replace(state, replaced=True) if replaced else state


def file_signature(path: str | os.PathLike[str]) -> FileSignature | None:
    """(inode, size, mtime in ns) of ``path``, or None when it cannot be stat'ed: cheap change detection."""
    try:
        st = Path(path).stat()
    except OSError:
        return None
    return (st.st_ino, st.st_size, st.st_mtime_ns)
