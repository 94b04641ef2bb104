"""The CPU topology of one machine: physical cores, their logical CPUs, packages and NUMA nodes.

Everything here is pure and immutable. Constructors normalise their input (sorted tuples, canonical core
order) so that two equal machines compare equal and the annotation written for a node round-trips exactly.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import cached_property
from typing import Any

from pinserve.topology.cpuset import format_cpulist, parse_cpulist

__all__ = ["ANNOTATION_FORMAT_VERSION", "ANNOTATION_KEY", "Core", "NumaNode", "Topology"]

ANNOTATION_KEY = "pinserve.io/cpu-topology"
ANNOTATION_FORMAT_VERSION = 1


def _cpu_tuple(cpus: Iterable[int], what: str) -> tuple[int, ...]:
    ordered = tuple(sorted(set(cpus)))
    if ordered and ordered[0] < 0:
        raise ValueError(f"{what}: CPU numbers cannot be negative ({ordered[0]})")
    return ordered


@dataclass(frozen=True)
class Core:
    """One physical core; ``cpus`` are its online logical CPUs (hardware threads) by OS index."""

    socket: int
    core_id: int
    cpus: tuple[int, ...]
    numa: int
    die: int = 0
    # -1: the kernel exposes no cluster (cluster_id is new, and only some CPUs group cores that way).
    cluster: int = -1

    def __post_init__(self) -> None:
        cpus = _cpu_tuple(self.cpus, f"core {self.socket}/{self.core_id}")
        if not cpus:
            raise ValueError(f"core {self.socket}/{self.core_id} has no CPUs")
        object.__setattr__(self, "cpus", cpus)

    @property
    def threads(self) -> int:
        return len(self.cpus)

    def _order(self) -> tuple[int, int, int, int, int]:
        return (self.socket, self.die, self.cluster, self.core_id, self.cpus[0])


@dataclass(frozen=True)
class NumaNode:
    """A NUMA node; ``cpus`` are its online CPUs (empty for a memory-only node)."""

    id: int
    cpus: tuple[int, ...] = ()
    memory_bytes: int | None = None

    def __post_init__(self) -> None:
        if self.id < 0:
            raise ValueError(f"NUMA node id cannot be negative ({self.id})")
        object.__setattr__(self, "cpus", _cpu_tuple(self.cpus, f"NUMA node {self.id}"))
        if self.memory_bytes is not None and self.memory_bytes < 0:
            raise ValueError(f"NUMA node {self.id}: negative memory size")


@dataclass(frozen=True)
class Topology:
    """A machine's online CPUs grouped into physical cores, packages (sockets) and NUMA nodes.

    Cores are kept in a canonical order: socket, die, cluster, core id, first CPU. When ``numa_nodes`` is
    empty it is derived from the cores' ``numa`` fields, which keeps hand-built topologies in tests short.
    Every online CPU belongs to exactly one core and exactly one NUMA node; memory-only nodes (no CPUs)
    are kept because they are part of the machine.
    """

    cores: tuple[Core, ...]
    numa_nodes: tuple[NumaNode, ...] = ()
    offline: tuple[int, ...] = ()
    model_name: str = ""
    isa_flags: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        cores = tuple(sorted(self.cores, key=Core._order))
        owner: dict[int, Core] = {}
        for core in cores:
            for cpu in core.cpus:
                if cpu in owner:
                    raise ValueError(f"CPU {cpu} belongs to two cores")
                owner[cpu] = core
        nodes = tuple(self.numa_nodes)
        if not nodes and cores:
            by_node: dict[int, list[int]] = {}
            for core in cores:
                by_node.setdefault(core.numa, []).extend(core.cpus)
            nodes = tuple(NumaNode(node_id, tuple(cpus)) for node_id, cpus in by_node.items())
        nodes = tuple(sorted(nodes, key=lambda n: n.id))
        node_of: dict[int, int] = {}
        seen_ids: set[int] = set()
        for node in nodes:
            if node.id in seen_ids:
                raise ValueError(f"NUMA node {node.id} is listed twice")
            seen_ids.add(node.id)
            for cpu in node.cpus:
                if cpu in node_of:
                    raise ValueError(f"CPU {cpu} belongs to NUMA nodes {node_of[cpu]} and {node.id}")
                if cpu not in owner:
                    raise ValueError(f"NUMA node {node.id} lists CPU {cpu}, which is in no core")
                node_of[cpu] = node.id
        for core in cores:
            home = node_of.get(core.cpus[0])
            if home is None:
                raise ValueError(f"CPU {core.cpus[0]} is in no NUMA node")
            if core.numa != home:
                raise ValueError(f"core {core.socket}/{core.core_id} says NUMA {core.numa}, its CPUs say {home}")
        offline = _cpu_tuple(self.offline, "offline CPUs")
        both = set(offline) & owner.keys()
        if both:
            raise ValueError(f"CPUs {format_cpulist(both)} are both online and offline")
        object.__setattr__(self, "cores", cores)
        object.__setattr__(self, "numa_nodes", nodes)
        object.__setattr__(self, "offline", offline)
        object.__setattr__(self, "isa_flags", tuple(self.isa_flags))

    # -- counts ------------------------------------------------------------------------------------------
    # A Topology never changes after __post_init__: the counts planning reads for every node on every reconcile
    # are computed once per Topology (cached_property), not once per call.

    @cached_property
    def _core_of_cpu(self) -> dict[int, Core]:
        return {cpu: core for core in self.cores for cpu in core.cpus}

    @property
    def cpus(self) -> frozenset[int]:
        """The online CPUs."""
        return frozenset(self._core_of_cpu)

    @property
    def logical_cpus(self) -> int:
        return len(self._core_of_cpu)

    @property
    def physical_cores(self) -> int:
        return len(self.cores)

    @cached_property
    def socket_ids(self) -> tuple[int, ...]:
        return tuple(sorted({core.socket for core in self.cores}))

    @property
    def sockets(self) -> int:
        return len(self.socket_ids)

    @cached_property
    def threads_per_core(self) -> int:
        """The most threads any core has (hybrid CPUs mix 2-thread and 1-thread cores)."""
        return max((core.threads for core in self.cores), default=0)

    @cached_property
    def uniform_smt(self) -> bool:
        """Whether every core has the same number of threads."""
        return len({core.threads for core in self.cores}) <= 1

    @property
    def smt(self) -> bool:
        return self.threads_per_core > 1

    @property
    def numa_count(self) -> int:
        """All NUMA nodes, memory-only ones included; see ``cpu_numa_ids`` for those with CPUs."""
        return len(self.numa_nodes)

    @property
    def numa_ids(self) -> tuple[int, ...]:
        return tuple(node.id for node in self.numa_nodes)

    @property
    def cpu_numa_ids(self) -> tuple[int, ...]:
        """The NUMA nodes that hold at least one online CPU."""
        return tuple(node.id for node in self.numa_nodes if node.cpus)

    def cores_per_numa(self) -> dict[int, int]:
        """Physical cores per NUMA node id; memory-only nodes map to 0."""
        counts = {node.id: 0 for node in self.numa_nodes}
        for core in self.cores:
            counts[core.numa] += 1
        return counts

    @cached_property
    def max_cores_in_one_numa(self) -> int:
        return max(self.cores_per_numa().values(), default=0)

    # -- lookups -----------------------------------------------------------------------------------------

    def core_of(self, cpu: int) -> Core | None:
        return self._core_of_cpu.get(cpu)

    def numa_of(self, cpu: int) -> int | None:
        core = self._core_of_cpu.get(cpu)
        return None if core is None else core.numa

    def cores_in_numa(self, node_id: int) -> tuple[Core, ...]:
        return tuple(core for core in self.cores if core.numa == node_id)

    def cores_in_socket(self, socket: int) -> tuple[Core, ...]:
        return tuple(core for core in self.cores if core.socket == socket)

    def physical_cores_of(self, cpus: Iterable[int]) -> int:
        """How many distinct physical cores the given CPUs touch; CPUs this machine lacks count for none."""
        touched = {core for cpu in cpus if (core := self._core_of_cpu.get(cpu)) is not None}
        return len(touched)

    def whole_cores(self, cpus: Iterable[int]) -> bool:
        """Whether the CPUs are made of whole cores: every core touched lies fully inside the set.

        A CPU this topology does not know (offline, or another machine's) makes the answer False, since
        nothing can vouch for it. The empty set is trivially whole.
        """
        wanted = set(cpus)
        for cpu in wanted:
            core = self._core_of_cpu.get(cpu)
            if core is None or not wanted.issuperset(core.cpus):
                return False
        return True

    def restrict(self, cpus: Iterable[int]) -> Topology:
        """The part of this machine a process limited to ``cpus`` (cgroup cpuset, affinity) can use.

        CPUs outside the machine are ignored. Cores and NUMA nodes left without CPUs are dropped, but NUMA
        nodes that never had CPUs (memory-only) stay: a CPU restriction does not take memory away.
        ``offline`` is unchanged: it describes the hardware, not the restriction.
        """
        keep = frozenset(cpus)
        cores = []
        for core in self.cores:
            left = tuple(cpu for cpu in core.cpus if cpu in keep)
            if left:
                cores.append(Core(core.socket, core.core_id, left, core.numa, core.die, core.cluster))
        nodes = []
        for node in self.numa_nodes:
            left = tuple(cpu for cpu in node.cpus if cpu in keep)
            if left or not node.cpus:
                nodes.append(NumaNode(node.id, left, node.memory_bytes))
        return Topology(tuple(cores), tuple(nodes), self.offline, self.model_name, self.isa_flags)

    # -- serialisation -----------------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """The compact, versioned form published as the node annotation ``pinserve.io/cpu-topology``.

        Cores are ``[socket, core_id, numa, "cpulist"]``, with ``die, cluster`` appended only when either
        differs from its default (0, -1), so a 224-CPU two-socket machine stays near 3 KiB of JSON.
        """
        cores: list[list[int | str]] = []
        for core in self.cores:
            row: list[int | str] = [core.socket, core.core_id, core.numa, format_cpulist(core.cpus)]
            if core.die != 0 or core.cluster != -1:
                row += [core.die, core.cluster]
            cores.append(row)
        numa: list[dict[str, Any]] = []
        for node in self.numa_nodes:
            entry: dict[str, Any] = {"id": node.id, "cpus": format_cpulist(node.cpus)}
            if node.memory_bytes is not None:
                entry["mem"] = node.memory_bytes
            numa.append(entry)
        return {
            "v": ANNOTATION_FORMAT_VERSION,
            "model": self.model_name,
            "isa": list(self.isa_flags),
            "sockets": self.sockets,
            "numa": numa,
            "cores": cores,
            "offline": format_cpulist(self.offline),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Topology:
        """Read what ``to_dict`` wrote; raises ValueError on another version or malformed data."""
        if not isinstance(data, Mapping):
            raise ValueError(f"cpu topology must be a JSON object, not {type(data).__name__}")
        version = data.get("v")
        if version != ANNOTATION_FORMAT_VERSION or isinstance(version, bool):
            raise ValueError(
                f"unsupported cpu topology format version {version!r} (this build reads {ANNOTATION_FORMAT_VERSION})"
            )
        try:
            cores = tuple(_core_from_row(row) for row in _list(data, "cores"))
            nodes = tuple(_node_from_entry(entry) for entry in _list(data, "numa"))
            offline = parse_cpulist(_str(data.get("offline", ""), "offline"))
            model = _str(data.get("model", ""), "model")
            isa = tuple(_str(flag, "isa flag") for flag in _list(data, "isa", required=False))
            if cores and not nodes:
                raise ValueError("malformed cpu topology: cores but no NUMA nodes")
            topology = cls(cores, nodes, tuple(offline), model, isa)
        except (TypeError, KeyError, ValueError) as exc:
            message = str(exc)
            if not message.startswith("malformed"):
                message = f"malformed cpu topology: {message}"
            raise ValueError(message) from exc
        if "sockets" in data and _int(data["sockets"], "sockets") != topology.sockets:
            raise ValueError(
                f"malformed cpu topology: says {data['sockets']} sockets, its cores span {topology.sockets}"
            )
        return topology

    def report(self) -> dict[str, Any]:
        """The human-facing summary (camelCase) that ``pinserve topology --json`` prints."""
        return {
            "modelName": self.model_name,
            "isaFlags": list(self.isa_flags),
            "sockets": self.sockets,
            "numaNodes": self.numa_count,
            "physicalCores": self.physical_cores,
            "logicalCpus": self.logical_cpus,
            "threadsPerCore": self.threads_per_core,
            "uniformSmt": self.uniform_smt,
            "smt": self.smt,
            "maxCoresInOneNuma": self.max_cores_in_one_numa,
            "offline": format_cpulist(self.offline),
            "numa": [
                {
                    "id": node.id,
                    "cpus": format_cpulist(node.cpus),
                    "physicalCores": len(self.cores_in_numa(node.id)),
                    "memoryBytes": node.memory_bytes,
                }
                for node in self.numa_nodes
            ],
            "cores": [
                {
                    "socket": core.socket,
                    "die": core.die,
                    "cluster": core.cluster,
                    "coreId": core.core_id,
                    "numa": core.numa,
                    "cpus": list(core.cpus),
                }
                for core in self.cores
            ],
        }


def _int(value: Any, what: str) -> int:
    # bool is an int subclass; true/false in the JSON is a mistake, not a number.
    if not isinstance(value, int) or isinstance(value, bool):
        raise ValueError(f"malformed cpu topology: {what} must be an integer, not {value!r}")
    return value


def _str(value: Any, what: str) -> str:
    if not isinstance(value, str):
        raise ValueError(f"malformed cpu topology: {what} must be a string, not {value!r}")
    return value


def _list(data: Mapping[str, Any], key: str, *, required: bool = True) -> list[Any]:
    if key not in data and not required:
        return []
    value = data.get(key)
    if not isinstance(value, list):
        raise ValueError(f"malformed cpu topology: {key!r} must be a list, not {value!r}")
    return value


def _core_from_row(row: Any) -> Core:
    if not isinstance(row, list) or len(row) not in (4, 6):
        raise ValueError(f"malformed cpu topology: core {row!r} is not [socket, core, numa, cpus(, die, cluster)]")
    socket, core_id, numa = (_int(v, "core field") for v in row[:3])
    cpus = parse_cpulist(_str(row[3], "core cpus"))
    die, cluster = (_int(v, "core field") for v in row[4:]) if len(row) == 6 else (0, -1)
    return Core(socket, core_id, tuple(cpus), numa, die, cluster)


def _node_from_entry(entry: Any) -> NumaNode:
    if not isinstance(entry, Mapping):
        raise ValueError(f"malformed cpu topology: NUMA node {entry!r} is not an object")
    memory = entry.get("mem")
    return NumaNode(
        _int(entry.get("id"), "NUMA node id"),
        tuple(parse_cpulist(_str(entry.get("cpus", ""), "NUMA node cpus"))),
        None if memory is None else _int(memory, "NUMA node memory"),
    )
