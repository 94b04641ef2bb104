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
from pinserve.topology.model import ANNOTATION_KEY, Topology
from pinserve.topology.sysfs import read_topology

# Room for anything: render must show what a spec asks for, not what this laptop holds.
_UNBOUNDED_CPUS = 1 << 16
_UNBOUNDED_MEMORY = 1 << 60


def load_topology(source: str) -> Topology:
    """A sysfs root, or a JSON file that :func:`topology_from_json` reads."""
    path = Path(source)
    if path.is_dir():
        return read_topology(path)
    return topology_from_json(path.read_text(), source)


def topology_from_json(text: str, where: str) -> Topology:
    """The CPU topology in one of three JSON documents: the ``pinserve.io/cpu-topology`` annotation's value
    (as the agent publishes it), a whole Node object carrying that annotation (``kubectl get node -o json``),
    or the report of ``pinserve topology --json`` (its ``cpuTopology``). ValueError names ``where``."""
    data = json.loads(text)
    if isinstance(data, Mapping) and "metadata" in data:  # a whole Node object
        annotations = (data.get("metadata") or {}).get("annotations") or {}
        if ANNOTATION_KEY not in annotations:
            raise ValueError(f"{where}: the Node has no {ANNOTATION_KEY} annotation (is the agent running there?)")
        data = json.loads(annotations[ANNOTATION_KEY])
    elif isinstance(data, Mapping) and "cpuTopology" in data:  # `pinserve topology --json`
        data = data["cpuTopology"]
    elif isinstance(data, Mapping) and "v" not in data:
        raise ValueError(f"{where}: not a CPU topology: expected the {ANNOTATION_KEY} annotation's JSON, a Node "
                         "carrying it, or the output of `pinserve topology --json`")
    return Topology.from_dict(data)


def offline_node(topology: Topology | None) -> NodeInfo:
    labels = {"kubernetes.io/hostname": "render"}
    if topology is None:
        return NodeInfo(name="render", allocatable_cpus=_UNBOUNDED_CPUS,
                        allocatable_memory=_UNBOUNDED_MEMORY, labels=labels)
    return NodeInfo(name="render", allocatable_cpus=topology.logical_cpus,
                    allocatable_memory=_UNBOUNDED_MEMORY, labels=labels, topology=topology)


def render_documents(
    docs: Sequence[Mapping[str, Any]], topology_source: str | Topology | None, settings: Settings | None = None
) -> tuple[list[dict[str, Any]], list[str]]:
    """``topology_source``: a Topology, what :func:`load_topology` reads, or None for a node of unknown topology."""
    settings = settings or Settings.from_env()
    if isinstance(topology_source, str):
        topology_source = load_topology(topology_source) if topology_source else None
    node = offline_node(topology_source)
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
