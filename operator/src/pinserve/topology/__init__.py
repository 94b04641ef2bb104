"""Pure CPU topology: CPU set notation, cores/packages/NUMA nodes, and reading them from sysfs."""

from pinserve.topology.cpuinfo import ONEDNN_ISA_FLAGS, read_cpuinfo
from pinserve.topology.cpuset import format_cpulist, parse_cpulist, parse_cpumask
from pinserve.topology.model import ANNOTATION_FORMAT_VERSION, ANNOTATION_KEY, Core, NumaNode, Topology
from pinserve.topology.sysfs import TopologyError, allowed_cpus_of_self, read_topology

__all__ = [
    "ANNOTATION_FORMAT_VERSION",
    "ANNOTATION_KEY",
    "ONEDNN_ISA_FLAGS",
    "Core",
    "NumaNode",
    "Topology",
    "TopologyError",
    "allowed_cpus_of_self",
    "format_cpulist",
    "parse_cpulist",
    "parse_cpumask",
    "read_cpuinfo",
    "read_topology",
]
