"""The node labels and annotations that describe a node's CPU topology.

One function builds them, :func:`node_topology_metadata`; the node agent publishes its result on its own
Node and the integration tier's simulated nodes carry exactly the same metadata, so the operator cannot tell
a simulated node from a real one.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, Protocol

from pinserve.topology.cpuinfo import ONEDNN_ISA_FLAGS

PREFIX = "pinserve.io"

#: The annotation holding the full topology as compact JSON (``Topology.to_dict()``).
ANNOTATION_CPU_TOPOLOGY = f"{PREFIX}/cpu-topology"

LABEL_CPU_MANAGER_POLICY = f"{PREFIX}/cpu-manager-policy"
LABEL_SMT = f"{PREFIX}/smt"
LABEL_THREADS_PER_CORE = f"{PREFIX}/threads-per-core"
LABEL_PHYSICAL_CORES = f"{PREFIX}/physical-cores"
LABEL_NUMA_NODES = f"{PREFIX}/numa-nodes"
LABEL_CORES_PER_NUMA = f"{PREFIX}/cores-per-numa"
LABEL_TOPOLOGY_SOURCE = f"{PREFIX}/topology-source"


def isa_label(flag: str) -> str:
    """The label saying the node's CPUs have instruction-set ``flag`` (a /proc/cpuinfo flag name)."""
    return f"{PREFIX}/isa-{flag}"


#: ``pinserve.io/isa-<flag>=true`` for each of oneDNN's ISA flags the CPU has (``isa-avx512f``,
#: ``isa-avx512_vnni``, ``isa-amx_tile`` ...); absent flags get no label (Node Feature Discovery's habit).
ISA_LABELS: tuple[str, ...] = tuple(isa_label(flag) for flag in ONEDNN_ISA_FLAGS)

#: Every label this module may set; a publisher removes the ones it no longer sets.
TOPOLOGY_LABELS: tuple[str, ...] = (
    LABEL_CPU_MANAGER_POLICY,
    LABEL_SMT,
    LABEL_THREADS_PER_CORE,
    LABEL_PHYSICAL_CORES,
    LABEL_NUMA_NODES,
    LABEL_CORES_PER_NUMA,
    LABEL_TOPOLOGY_SOURCE,
    *ISA_LABELS,
)
TOPOLOGY_ANNOTATIONS: tuple[str, ...] = (ANNOTATION_CPU_TOPOLOGY,)

SOURCE_AGENT = "agent"


class TopologyLike(Protocol):
    """What this module reads from ``pinserve.topology``'s ``Topology``."""

    @property
    def physical_cores(self) -> int: ...

    @property
    def threads_per_core(self) -> int: ...

    @property
    def smt(self) -> bool: ...

    @property
    def numa_count(self) -> int: ...

    @property
    def max_cores_in_one_numa(self) -> int: ...

    @property
    def isa_flags(self) -> tuple[str, ...]: ...

    def to_dict(self) -> Mapping[str, Any]: ...


def topology_annotation_value(topology: TopologyLike) -> str:
    """The annotation's value: compact, key-sorted JSON, so equal topologies give equal strings."""
    return json.dumps(topology.to_dict(), separators=(",", ":"), sort_keys=True)


def node_topology_metadata(
    topology: TopologyLike, policy: str | None, *, source: str = SOURCE_AGENT
) -> tuple[dict[str, str], dict[str, str]]:
    """Labels and annotations publishing ``topology`` on a Node.

    ``policy`` is the kubelet's CPU manager policy (``static``, ``none``) or ``None`` when unknown, in which
    case the policy label is left out. Returns ``(labels, annotations)``; all values are strings valid as
    label values.
    """
    labels = {
        LABEL_SMT: "true" if topology.smt else "false",
        LABEL_THREADS_PER_CORE: str(topology.threads_per_core),
        LABEL_PHYSICAL_CORES: str(topology.physical_cores),
        LABEL_NUMA_NODES: str(topology.numa_count),
        LABEL_CORES_PER_NUMA: str(topology.max_cores_in_one_numa),
        LABEL_TOPOLOGY_SOURCE: source,
    }
    if policy:
        labels[LABEL_CPU_MANAGER_POLICY] = policy
    for flag in topology.isa_flags:
        if flag in ONEDNN_ISA_FLAGS:
            labels[isa_label(flag)] = "true"
    annotations = {ANNOTATION_CPU_TOPOLOGY: topology_annotation_value(topology)}
    return labels, annotations
