"""Pure: which CPUs each serving pod really got, and whether that is real pinning."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pinserve.planning import NodeInfo
from pinserve.status import Condition
from pinserve.topology.cpuset import parse_cpulist

ANNOTATION_CPUS = "pinserve.io/cpus"
# "exclusive": the CPU manager assigned the container its own CPUs; "shared": it runs in the shared pool.
ANNOTATION_CPUS_SOURCE = "pinserve.io/cpus-source"


@dataclass(frozen=True)
class PodView:
    name: str
    node: str
    qos_class: str
    ready: bool
    cpus: str | None
    cpus_source: str | None
    deleting: bool = False

    def to_status(self, nodes: Mapping[str, NodeInfo]) -> dict[str, Any]:
        entry: dict[str, Any] = {"name": self.name, "node": self.node, "qosClass": self.qos_class,
                                 "ready": self.ready}
        if self.cpus is not None:
            entry["cpus"] = self.cpus
            node = nodes.get(self.node)
            if node is not None and node.topology is not None:
                entry["physicalCores"] = node.topology.physical_cores_of(_cpus(self.cpus))
        return entry


def _cpus(text: str) -> frozenset[int]:
    try:
        return parse_cpulist(text)
    except ValueError:
        return frozenset()


def pod_view(pod: Mapping[str, Any]) -> PodView:
    meta = pod.get("metadata") or {}
    status = pod.get("status") or {}
    annotations = meta.get("annotations") or {}
    ready = any(
        c.get("type") == "Ready" and c.get("status") == "True" for c in status.get("conditions") or []
    )
    return PodView(
        name=meta.get("name", ""),
        node=(pod.get("spec") or {}).get("nodeName") or "",
        qos_class=status.get("qosClass") or "",
        ready=ready,
        cpus=annotations.get(ANNOTATION_CPUS),
        cpus_source=annotations.get(ANNOTATION_CPUS_SOURCE),
        deleting=bool(meta.get("deletionTimestamp")),
    )


def pinned_condition(
    pods: Sequence[PodView], nodes: Mapping[str, NodeInfo], cpu_request: int
) -> Condition:
    """Pinned=True only when every ready pod is Guaranteed on exclusive whole cores of a static node."""
    ready = [p for p in pods if p.ready and not p.deleting]
    if not ready:
        return Condition("Pinned", "Unknown", "NoReadyPods", "no serving pod is ready yet")
    for pod in ready:
        where = f"pod {pod.name} on node {pod.node}"
        if pod.qos_class != "Guaranteed":
            return Condition("Pinned", "False", "NotGuaranteed",
                             f"{where} has QoS class {pod.qos_class or 'unknown'}; every container needs "
                             "requests == limits in whole CPUs")
        node = nodes.get(pod.node)
        policy = node.cpu_manager_policy if node else None
        if node is None or node.topology is None or policy is None:
            return Condition("Pinned", "Unknown", "TopologyUnknown",
                             f"{where}: the node has no CPU topology from the pinserve agent; "
                             "is the agent DaemonSet running there?")
        if policy == "unknown":
            return Condition("Pinned", "Unknown", "CpuManagerUnknown",
                             f"{where}: the agent cannot read the kubelet's CPU manager state; see the node's "
                             "pinserve.io/cpu-manager annotation")
        if policy != "static":
            return Condition("Pinned", "False", "CpuManagerNotStatic",
                             f"{where}: the kubelet's CPU manager policy is {policy!r}; set "
                             "--cpu-manager-policy=static (and full-pcpus-only) to pin cores")
        if pod.cpus is None:
            return Condition("Pinned", "Unknown", "CpusUnknown",
                             f"{where}: the agent has not reported the pod's CPUs yet")
        if pod.cpus_source != "exclusive":
            return Condition("Pinned", "False", "SharedCpus",
                             f"{where} runs on the shared CPU pool {pod.cpus}, not on exclusive CPUs")
        cpus = _cpus(pod.cpus)
        if len(cpus) != cpu_request or not node.topology.whole_cores(cpus):
            return Condition("Pinned", "False", "PartialCores",
                             f"{where} got CPUs {pod.cpus}, which are not {cpu_request} CPUs forming whole "
                             "physical cores; enable the CPU manager option full-pcpus-only")
    return Condition("Pinned", "True", "ExclusiveCores",
                     f"{len(ready)} ready pod(s) on exclusive whole physical cores")
