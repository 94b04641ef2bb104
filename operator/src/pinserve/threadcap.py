"""Pure: the threads a pod really runs where it gets no exclusive cores.

On a node whose kubelet runs the ``none`` CPU manager policy a Guaranteed pod shares every CPU of the
host: its affinity is the whole machine, and only its CPU limit (the CFS quota the kubelet derives
from it) bounds it. The start script then caps the threads at that limit instead of sizing them to
the cores it sees; planning says so in ``status.placement.threads`` (``capped``/``bound``) and in an
assumption, so the status tells the same story as the pod's log line.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from pinserve.planning import NodeInfo, Threads

ThreadBound = Literal["cores", "cpuLimit"]

# Policies under which a pod's CPUs are its own; "unknown" (the agent cannot tell) claims nothing.
_EXCLUSIVE_OR_UNKNOWN = frozenset({"static", "unknown"})
# What the start script sets when the threads are capped: the host's CPUs are not the pod's to pin.
KMP_AFFINITY_UNPINNED = "none"


def shared_cpu_nodes(nodes: Sequence[NodeInfo]) -> list[NodeInfo]:
    """Nodes whose published CPU manager policy gives pods no exclusive cores."""
    return [n for n in nodes if n.cpu_manager_policy is not None and n.cpu_manager_policy not in _EXCLUSIVE_OR_UNKNOWN]


def bound_threads(threads: Threads, nodes: Sequence[NodeInfo], cpus: int) -> tuple[Threads, str | None]:
    """``threads`` as the start script will run them on ``nodes``, and a note when any shares its CPUs.

    ``cpus`` is the container's CPU limit. On a shared node the script counts the host's physical
    cores and caps them at the limit: the defaults become min(host cores, limit), user values stay.
    """
    shared = shared_cpu_nodes(nodes)
    if not shared:
        return threads, None
    known = [n.topology.physical_cores for n in shared if n.topology is not None]
    seen = min(known) if known else None
    capped = seen is None or seen > cpus
    default = cpus if seen is None else min(seen, cpus)
    names = ", ".join(n.name for n in shared[:3]) + ("..." if len(shared) > 3 else "")
    policies = ", ".join(sorted({str(n.cpu_manager_policy) for n in shared}))
    if capped:
        sees = f"the {seen} physical cores it sees" if seen is not None else "the cores it sees"
        note = (f"node(s) {names} run the kubelet's CPU manager policy {policies}: pods there get no exclusive "
                f"cores, so the start script caps threads at the CPU limit ({cpus} CPUs) instead of {sees}")
    else:
        note = (f"node(s) {names} run the kubelet's CPU manager policy {policies}: pods there get no exclusive "
                f"cores and size threads to the host's {seen} physical cores (within the {cpus}-CPU limit)")
    user = threads.user_set
    return dataclasses.replace(
        threads,
        omp=threads.omp if "omp" in user else default,
        intra_op=threads.intra_op if "intra_op" in user else default,
        kmp_affinity=threads.kmp_affinity if not capped or "kmp_affinity" in user else KMP_AFFINITY_UNPINNED,
        bound="cpuLimit" if capped else "cores",
        capped=capped,
    ), note
