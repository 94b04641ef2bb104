"""`pinserve render`: plan and render ModelServers without a cluster."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from pinserve.api import parse_modelserver
from pinserve.planning import NodeInfo, plan
from pinserve.render import render_children
from pinserve.settings import Settings
from pinserve.topology.model import Topology
from pinserve.topology.sysfs import read_topology

# Room for anything: render must show what a spec asks for, not what this laptop holds.
_UNBOUNDED_CPUS = 1 << 16
_UNBOUNDED_MEMORY = 1 << 60


def load_topology(source: str) -> Topology:
    """A pinserve.io/cpu-topology JSON file (as the agent publishes it) or a sysfs root."""
    path = Path(source)
    if path.is_dir():
        return read_topology(path)
    data = json.loads(path.read_text())
    if isinstance(data, Mapping) and "metadata" in data:  # a whole Node object
        data = json.loads(data["metadata"]["annotations"]["pinserve.io/cpu-topology"])
    return Topology.from_dict(data)


def offline_node(topology: Topology | None) -> NodeInfo:
    labels = {"kubernetes.io/hostname": "render"}
    if topology is None:
        return NodeInfo(name="render", allocatable_cpus=_UNBOUNDED_CPUS,
                        allocatable_memory=_UNBOUNDED_MEMORY, labels=labels)
    return NodeInfo(name="render", allocatable_cpus=topology.logical_cpus,
                    allocatable_memory=_UNBOUNDED_MEMORY, labels=labels, topology=topology)


def render_documents(
    docs: Sequence[Mapping[str, Any]], topology_source: str | None, settings: Settings | None = None
) -> tuple[list[dict[str, Any]], list[str]]:
    settings = settings or Settings.from_env()
    node = offline_node(load_topology(topology_source) if topology_source else None)
    objects: list[dict[str, Any]] = []
    notes: list[str] = []
    for doc in docs:
        if not isinstance(doc, Mapping):
            raise ValueError(f"expected a ModelServer object, got a YAML {type(doc).__name__}")
        body = {**doc, "metadata": {"uid": "00000000-0000-0000-0000-000000000000", **(doc.get("metadata") or {})}}
        ms = parse_modelserver(body)
        # The imaginary node carries whatever labels the spec selects on.
        labelled = replace(node, labels={**node.labels, **ms.spec.placement.node_selector})
        placement = plan(ms.spec, [labelled], settings)
        notes.append(
            f"{ms.ref.name}: {placement.physical_cores} physical cores x {placement.threads_per_core} "
            f"thread(s) = {placement.cpu_request} CPUs; OMP/intra-op {placement.threads.intra_op}, "
            f"inter-op {placement.threads.inter_op}, KMP_AFFINITY={placement.threads.kmp_affinity}"
        )
        notes.extend(f"{ms.ref.name}: {a}" for a in placement.assumptions)
        objects.extend(render_children(ms, placement, settings))
    return objects, notes
