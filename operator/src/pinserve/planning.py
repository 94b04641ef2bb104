"""Pure planning: a ModelServer spec plus what we know of the nodes -> a Placement.

A Placement fixes what every replica asks for (whole CPUs covering whole physical
cores), the thread settings that match those cores, and the node affinity that keeps
replicas on nodes whose topology can hold them.  Nothing here talks to the API server.

A placement is sticky: status.placement records the node class it chose (threads per core and
the match expressions that select such nodes) with a key of the spec fields planning reads.
While that key is unchanged and some eligible node of the class remains, ``plan`` keeps the
class, so nodes of another class joining or leaving re-render (and roll) nothing.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from pinserve.api import ModelServerSpec, NumaPolicy
from pinserve.nodeclass import LABEL_THREADS_PER_CORE as LABEL_THREADS_PER_CORE  # noqa: PLC0414 (re-export)
from pinserve.nodeclass import PlacementRecord, class_expressions, matches, plan_key
from pinserve.quantity import memory_bytes, whole_cpus
from pinserve.settings import Settings
from pinserve.threadcap import ThreadBound, bound_threads
from pinserve.topology.model import Topology

TOPOLOGY_ANNOTATION = "pinserve.io/cpu-topology"
LABEL_POLICY = "pinserve.io/cpu-manager-policy"
LABEL_CORES_PER_NUMA = "pinserve.io/cores-per-numa"

KMP_AFFINITY_SMT = "granularity=fine,compact,1,0"
KMP_AFFINITY_NO_SMT = "granularity=fine,compact"
DEFAULT_INTER_OP = 2
DEFAULT_KMP_BLOCKTIME = 1
MAX_LISTED_NODES = 10

TopologySource = Literal["agent", "capacity"]


@dataclass(frozen=True)
class NodeInfo:
    """What planning needs of a Node; built from the Node object by ``node_info``."""

    name: str
    allocatable_cpus: int
    allocatable_memory: int
    labels: Mapping[str, str] = field(default_factory=dict)
    taints: tuple[Mapping[str, Any], ...] = ()
    topology: Topology | None = None
    topology_error: str | None = None
    ready: bool = True
    unschedulable: bool = False

    @property
    def cpu_manager_policy(self) -> str | None:
        return self.labels.get(LABEL_POLICY)


@functools.lru_cache(maxsize=256)
def _topology(annotation: str) -> Topology:
    """Nodes of one machine type publish the same annotation: they share one (immutable) Topology, so its
    counts are computed once and a node's heartbeat does not parse it again. A bad one raises every time."""
    return Topology.from_dict(json.loads(annotation))


def node_info(node: Mapping[str, Any]) -> NodeInfo:
    """Read a Node object (dict) into NodeInfo; a bad topology annotation is kept as an error."""
    meta = node.get("metadata") or {}
    spec = node.get("spec") or {}
    status = node.get("status") or {}
    alloc = status.get("allocatable") or status.get("capacity") or {}
    topology: Topology | None = None
    error: str | None = None
    raw = (meta.get("annotations") or {}).get(TOPOLOGY_ANNOTATION)
    if raw:
        try:
            topology = _topology(raw)
        except (ValueError, TypeError, KeyError) as exc:
            error = f"annotation {TOPOLOGY_ANNOTATION} is unreadable: {exc}"
    ready = any(
        c.get("type") == "Ready" and c.get("status") == "True" for c in status.get("conditions") or []
    )
    return NodeInfo(
        name=meta.get("name", ""),
        allocatable_cpus=whole_cpus(alloc.get("cpu", "0")),
        allocatable_memory=memory_bytes(alloc.get("memory", "0")),
        labels=dict(meta.get("labels") or {}),
        taints=tuple(spec.get("taints") or ()),
        topology=topology,
        topology_error=error,
        ready=ready,
        unschedulable=bool(spec.get("unschedulable")),
    )


@dataclass(frozen=True)
class Threads:
    omp: int
    intra_op: int
    inter_op: int
    kmp_affinity: str
    kmp_blocktime: int
    # Fields the user fixed in spec.threading: the start script keeps these as they are.
    user_set: frozenset[str] = frozenset()
    # "cpuLimit" (capped) where pods get no exclusive cores and the CPU limit bounds them (threadcap.py).
    bound: ThreadBound = "cores"
    capped: bool = False

    def to_status(self) -> dict[str, Any]:
        return {
            "omp": self.omp,
            "intraOp": self.intra_op,
            "interOp": self.inter_op,
            "kmpAffinity": self.kmp_affinity,
            "kmpBlocktime": self.kmp_blocktime,
            "bound": self.bound,
            "capped": self.capped,
        }


@dataclass(frozen=True)
class Placement:
    physical_cores: int
    threads_per_core: int
    cpu_request: int
    memory: str
    threads: Threads
    numa: NumaPolicy
    topology_source: TopologySource
    candidate_nodes: tuple[str, ...]
    node_affinity: Mapping[str, Any] | None
    representative: Mapping[str, Any]
    assumptions: tuple[str, ...] = ()
    # The node class (threads-per-core match expressions) the pod template selects; recorded in status.
    node_class: tuple[Mapping[str, Any], ...] = ()
    plan_key: str = ""
    # Why a recorded placement was given up (no eligible node of its class left); empty otherwise.
    replanned: str = ""

    def to_status(self) -> dict[str, Any]:
        return {
            "planKey": self.plan_key,
            "nodeClass": {"matchExpressions": [dict(e) for e in self.node_class]},
            "physicalCores": self.physical_cores,
            "cpuRequest": self.cpu_request,
            "threadsPerCore": self.threads_per_core,
            "memory": self.memory,
            "numa": self.numa.value,
            "candidateNodes": len(self.candidate_nodes),
            "nodes": list(self.candidate_nodes[:MAX_LISTED_NODES]),
            "topology": dict(self.representative),
            "threads": self.threads.to_status(),
            "assumptions": list(self.assumptions),
        }


class PlanError(Exception):
    """No placement is possible; ``reason`` is a CamelCase condition reason."""

    def __init__(self, reason: str, message: str, field: str = "spec") -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message
        self.field = field


def _tolerates(tolerations: Sequence[Mapping[str, Any]], taint: Mapping[str, Any]) -> bool:
    for tol in tolerations:
        if tol.get("effect") and tol.get("effect") != taint.get("effect"):
            continue
        if tol.get("operator") == "Exists":
            if not tol.get("key") or tol.get("key") == taint.get("key"):
                return True
        elif tol.get("key") == taint.get("key") and tol.get("value", "") == taint.get("value", ""):
            return True
    return False


def _schedulable_reason(node: NodeInfo, spec: ModelServerSpec) -> str | None:
    """Why a pod of this spec could never be scheduled on the node, or None."""
    if not node.ready:
        return "not Ready"
    if node.unschedulable:
        return "cordoned"
    for key, value in spec.placement.node_selector.items():
        if node.labels.get(key) != value:
            return f"nodeSelector {key}={value} does not match"
    for taint in node.taints:
        if taint.get("effect") in ("NoSchedule", "NoExecute") and not _tolerates(
            spec.placement.tolerations, taint
        ):
            return f"taint {taint.get('key')}:{taint.get('effect')} not tolerated"
    return None


@dataclass(frozen=True)
class _Fit:
    node: NodeInfo
    threads_per_core: int
    source: TopologySource


def _fit(node: NodeInfo, spec: ModelServerSpec, settings: Settings, memory: int) -> _Fit | str:
    """A node that can hold one replica (``memory``: the spec's memory in bytes), or the reason it cannot."""
    reason = _schedulable_reason(node, spec)
    if reason:
        return reason
    cores = spec.resources.physical_cores
    topo = node.topology
    if topo is not None:
        tpc = topo.threads_per_core
        if topo.physical_cores < cores:
            return f"has {topo.physical_cores} physical cores, {cores} requested"
        if spec.placement.numa is NumaPolicy.REQUIRE and topo.max_cores_in_one_numa < cores:
            return (
                f"its largest NUMA node has {topo.max_cores_in_one_numa} physical cores, "
                f"{cores} requested with placement.numa=Require"
            )
    else:
        if spec.placement.numa is NumaPolicy.REQUIRE:
            return "its CPU topology is unknown and placement.numa=Require"
        tpc = settings.assumed_threads_per_core
    if node.allocatable_cpus < cores * tpc:
        return f"allocatable CPUs {node.allocatable_cpus} < {cores * tpc} requested"
    if node.allocatable_memory < memory:
        return f"allocatable memory is below {spec.resources.memory}"
    return _Fit(node, tpc, "agent" if topo is not None else "capacity")


def _choose_group(fits: Sequence[_Fit]) -> tuple[int, list[_Fit]]:
    """All replicas share one pod template, so pick one threads-per-core value."""
    groups: dict[int, list[_Fit]] = {}
    for f in fits:
        groups.setdefault(f.threads_per_core, []).append(f)
    # Most nodes wins; on a tie the SMT group, whose cores give hyper-threads for free.
    tpc = max(groups, key=lambda t: (len(groups[t]), t))
    return tpc, groups[tpc]


def _node_affinity(class_expressions: Sequence[Mapping[str, Any]], spec: ModelServerSpec) -> dict[str, Any] | None:
    required: list[dict[str, Any]] = [dict(e) for e in class_expressions]
    cores = spec.resources.physical_cores
    numa_expr = {"key": LABEL_CORES_PER_NUMA, "operator": "Gt", "values": [str(cores - 1)]}
    affinity: dict[str, Any] = {}
    if spec.placement.numa is NumaPolicy.REQUIRE:
        required.append(numa_expr)
    elif spec.placement.numa is NumaPolicy.PREFER and cores > 1:
        affinity["preferredDuringSchedulingIgnoredDuringExecution"] = [
            {"weight": 100, "preference": {"matchExpressions": [numa_expr]}}
        ]
    if required:
        affinity["requiredDuringSchedulingIgnoredDuringExecution"] = {
            "nodeSelectorTerms": [{"matchExpressions": required}]
        }
    return affinity or None


def plan_threads(spec: ModelServerSpec, threads_per_core: int) -> tuple[Threads, tuple[str, ...]]:
    """Intel's rules: OMP = intra-op = physical cores, inter-op = 2, compact affinity.

    User values win, but no pool gets more threads than the CPUs the pod is given.
    """
    cores = spec.resources.physical_cores
    cpus = cores * threads_per_core
    user = spec.threading
    notes: list[str] = []
    user_set = frozenset(
        name for name in ("omp", "intra_op", "inter_op", "kmp_affinity", "kmp_blocktime")
        if getattr(user, name) is not None
    )

    def bounded(name: str, value: int | None, default: int) -> int:
        chosen = default if value is None else value
        if chosen > cpus:
            if value is not None:  # a default bounded by a small pod is no assumption worth a note
                notes.append(f"threading.{name}={chosen} exceeds the {cpus} CPUs allocated; using {cpus}")
            return cpus
        return chosen

    threads = Threads(
        omp=bounded("omp", user.omp, cores),
        intra_op=bounded("intraOp", user.intra_op, cores),
        inter_op=bounded("interOp", user.inter_op, DEFAULT_INTER_OP),
        kmp_affinity=user.kmp_affinity
        or (KMP_AFFINITY_SMT if threads_per_core > 1 else KMP_AFFINITY_NO_SMT),
        kmp_blocktime=DEFAULT_KMP_BLOCKTIME if user.kmp_blocktime is None else user.kmp_blocktime,
        user_set=user_set,
    )
    return threads, tuple(notes)


def _representative(fit: _Fit) -> dict[str, Any]:
    topo = fit.node.topology
    summary: dict[str, Any] = {"source": fit.source, "node": fit.node.name}
    if topo is not None:
        summary.update(
            sockets=topo.sockets,
            numaNodes=topo.numa_count,
            physicalCores=topo.physical_cores,
            logicalCpus=topo.logical_cpus,
            threadsPerCore=topo.threads_per_core,
            smt=topo.smt,
        )
    else:
        summary.update(logicalCpus=fit.node.allocatable_cpus, threadsPerCore=fit.threads_per_core)
    return summary


def plan(
    spec: ModelServerSpec, nodes: Iterable[NodeInfo], settings: Settings, previous: PlacementRecord | None = None
) -> Placement:
    """Plan one replica's resources and threads; raise PlanError when no node can hold it.

    ``previous`` (from status) is kept while the spec's plan key is unchanged and some eligible
    node of its class remains; otherwise the class is chosen afresh by majority.
    """
    nodes = sorted(nodes, key=lambda n: n.name)
    if not nodes:
        raise PlanError("NoNodes", "the cluster has no nodes to place replicas on", "spec.placement")
    fits: list[_Fit] = []
    refusals: list[str] = []
    memory = memory_bytes(spec.resources.memory)
    for node in nodes:
        outcome = _fit(node, spec, settings, memory)
        if isinstance(outcome, _Fit):
            fits.append(outcome)
        else:
            refusals.append(f"{node.name}: {outcome}")
    cores = spec.resources.physical_cores
    if not fits:
        shown = "; ".join(refusals[:5]) + (f"; and {len(refusals) - 5} more" if len(refusals) > 5 else "")
        raise PlanError(
            "Unschedulable",
            f"no node can hold {cores} physical cores and {spec.resources.memory} "
            f"(spec.resources): {shown}",
            "spec.resources.physicalCores",
        )
    key = plan_key(spec)
    replanned = ""
    kept: list[_Fit] = []
    if previous is not None and previous.plan_key == key:
        kept = [f for f in fits if f.threads_per_core == previous.threads_per_core
                and matches(f.node.labels, previous.match_expressions)]
        if not kept:
            replanned = f"no eligible node of the recorded class ({previous.describe()}) is left"
    if previous is not None and kept:
        tpc, chosen = previous.threads_per_core, kept
        node_class = [dict(e) for e in previous.match_expressions]
    else:
        tpc, chosen = _choose_group(fits)
        node_class = class_expressions(tpc, all(f.source == "agent" for f in chosen),
                                       {f.threads_per_core for f in fits} - {tpc})
    other_tpcs = {f.threads_per_core for f in fits} - {tpc}
    threads, notes = plan_threads(spec, tpc)
    threads, shared = bound_threads(threads, [f.node for f in chosen], cores * tpc)
    assumptions = [*notes, *([shared] if shared else [])]
    capacity_nodes = [f.node.name for f in chosen if f.source == "capacity"]
    if capacity_nodes:
        listed = ", ".join(capacity_nodes[:3]) + ("..." if len(capacity_nodes) > 3 else "")
        why = {f.node.topology_error for f in chosen if f.node.topology_error}
        assumptions.append(
            f"no CPU topology published for {listed} (is the pinserve agent running?"
            f"{' ' + '; '.join(sorted(why)) if why else ''}); assumed {tpc} thread(s) per core"
        )
    if other_tpcs and node_class:
        assumptions.append(
            f"nodes with {', '.join(map(str, sorted(other_tpcs)))} threads per core are excluded so that "
            f"every replica gets whole cores with {cores * tpc} CPUs"
        )
    elif other_tpcs:
        assumptions.append(
            f"nodes with {', '.join(map(str, sorted(other_tpcs)))} threads per core joined after this spec was "
            f"planned for {tpc}; the pod template keeps its placement until the spec changes"
        )
    source: TopologySource = "agent" if not capacity_nodes else "capacity"
    return Placement(
        physical_cores=cores,
        threads_per_core=tpc,
        cpu_request=cores * tpc,
        memory=spec.resources.memory,
        threads=threads,
        numa=spec.placement.numa,
        topology_source=source,
        candidate_nodes=tuple(f.node.name for f in chosen),
        node_affinity=_node_affinity(node_class, spec),
        representative=_representative(chosen[0]),
        assumptions=tuple(assumptions),
        node_class=tuple(node_class),
        plan_key=key,
        replanned=replanned,
    )
