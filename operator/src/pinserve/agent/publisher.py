"""Pure: what the node agent publishes, and the merge patch that gets a Node or Pod there.

Every function takes the current object as the API server returned it and answers with the smallest
JSON merge patch that makes the agent's keys right, or None when they already are: the agent writes only
when something changed. Keys the agent owns but no longer sets (an ISA label on a node whose CPU changed)
are removed with ``null``; keys it does not own are never touched.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from pinserve.agent.cpumanager import CpuManagerState
from pinserve.pinning import ANNOTATION_CPUS, ANNOTATION_CPUS_SOURCE
from pinserve.render.common import LABEL_MANAGED_BY
from pinserve.topology.cpuset import format_cpulist
from pinserve.topology.model import Topology
from pinserve.topology.publish import PREFIX, TOPOLOGY_ANNOTATIONS, TOPOLOGY_LABELS, node_topology_metadata

__all__ = [
    "ANNOTATION_CPU_MANAGER",
    "NODE_ANNOTATIONS",
    "NODE_LABELS",
    "POD_LABEL_SELECTOR",
    "SERVER_CONTAINER",
    "SOURCE_EXCLUSIVE",
    "SOURCE_SHARED",
    "PodPatch",
    "metadata_patch",
    "node_metadata",
    "node_patch",
    "pod_cpus",
    "pod_patch",
    "pod_patches",
]

#: Node annotation: ``{"policy": "static", "defaultCpuSet": "0-1", "reason": "..."}`` (reason only when
#: something could not be read).
ANNOTATION_CPU_MANAGER = f"{PREFIX}/cpu-manager"
NODE_LABELS: tuple[str, ...] = TOPOLOGY_LABELS
NODE_ANNOTATIONS: tuple[str, ...] = (*TOPOLOGY_ANNOTATIONS, ANNOTATION_CPU_MANAGER)

SERVER_CONTAINER = "server"
SOURCE_EXCLUSIVE = "exclusive"
SOURCE_SHARED = "shared"
POD_LABEL_SELECTOR = f"{LABEL_MANAGED_BY}=pinserve"
_FINISHED_PHASES = frozenset({"Succeeded", "Failed"})


def _compact(data: Any) -> str:
    return json.dumps(data, separators=(",", ":"), sort_keys=True)


def node_metadata(topology: Topology, state: CpuManagerState) -> tuple[dict[str, str], dict[str, str]]:
    """The labels and annotations the agent wants on its Node."""
    labels, annotations = node_topology_metadata(topology, state.policy)
    annotations[ANNOTATION_CPU_MANAGER] = _compact(state.summary())
    return labels, annotations


def _section_patch(
    current: Mapping[str, Any] | None, desired: Mapping[str, str], owned: Iterable[str]
) -> dict[str, str | None]:
    have = current or {}
    patch: dict[str, str | None] = {key: value for key, value in desired.items() if have.get(key) != value}
    for key in owned:
        if key not in desired and key in have:
            patch[key] = None
    return patch


def metadata_patch(
    obj: Mapping[str, Any] | None,
    labels: Mapping[str, str],
    annotations: Mapping[str, str],
    *,
    owned_labels: Iterable[str] = (),
    owned_annotations: Iterable[str] = (),
) -> dict[str, Any] | None:
    """A merge patch setting ``labels``/``annotations`` and dropping owned keys no longer wanted; None if idle."""
    meta = (obj or {}).get("metadata") or {}
    section: dict[str, Any] = {}
    label_patch = _section_patch(meta.get("labels"), labels, owned_labels)
    if label_patch:
        section["labels"] = label_patch
    annotation_patch = _section_patch(meta.get("annotations"), annotations, owned_annotations)
    if annotation_patch:
        section["annotations"] = annotation_patch
    return {"metadata": section} if section else None


def node_patch(node: Mapping[str, Any] | None, topology: Topology, state: CpuManagerState) -> dict[str, Any] | None:
    """The merge patch for the agent's Node (``node`` None: a node with no metadata yet), or None."""
    labels, annotations = node_metadata(topology, state)
    return metadata_patch(node, labels, annotations, owned_labels=NODE_LABELS, owned_annotations=NODE_ANNOTATIONS)


def _server_status(pod: Mapping[str, Any]) -> Mapping[str, Any] | None:
    for status in (pod.get("status") or {}).get("containerStatuses") or []:
        if isinstance(status, Mapping) and status.get("name") == SERVER_CONTAINER:
            return status
    return None


def pod_cpus(pod: Mapping[str, Any], state: CpuManagerState, topology: Topology) -> tuple[str, str] | None:
    """``(cpulist, "exclusive" | "shared")`` for the pod's ``server`` container, or None to say nothing.

    Nothing is said for a pod that is finishing or finished, has no ``server`` container, whose server
    container was never created (the kubelet assigns CPUs at admission and records them before the
    container starts, so a created container's entry is final), when the policy is unknown, or when the
    kubelet's pod-resources API does not list the pod. A container without exclusive CPUs runs in the
    shared pool: ``defaultCpuSet``, or every online CPU under the ``none`` policy, whose checkpoint leaves
    the default set empty.
    """
    meta = pod.get("metadata") or {}
    if meta.get("deletionTimestamp") or (pod.get("status") or {}).get("phase") in _FINISHED_PHASES:
        return None
    containers = (pod.get("spec") or {}).get("containers") or []
    if not any(isinstance(c, Mapping) and c.get("name") == SERVER_CONTAINER for c in containers):
        return None
    status = _server_status(pod)
    if status is None or not ("running" in (status.get("state") or {}) or status.get("containerID")):
        return None
    if not state.known:
        return None
    exclusive = state.exclusive_cpus(str(meta.get("uid") or ""), SERVER_CONTAINER, status.get("containerID"),
                                     namespace=str(meta.get("namespace") or ""), pod=str(meta.get("name") or ""))
    if exclusive is None:
        return None
    if exclusive:
        return format_cpulist(exclusive), SOURCE_EXCLUSIVE
    if state.default_cpus is None:
        return None
    # Under ``none`` the checkpoint's default set is empty: every online CPU is shared.
    shared = state.default_cpus or topology.cpus
    return format_cpulist(shared), SOURCE_SHARED


def pod_patch(pod: Mapping[str, Any], state: CpuManagerState, topology: Topology) -> dict[str, Any] | None:
    """The merge patch that puts ``pinserve.io/cpus`` and ``pinserve.io/cpus-source`` right, or None.

    The patch carries the pod's UID: the API server rejects it (UID is immutable) if the name now
    belongs to a new pod, so a stale view never writes one pod's CPUs onto another.
    """
    found = pod_cpus(pod, state, topology)
    if found is None:
        return None
    cpus, source = found
    patch = metadata_patch(pod, {}, {ANNOTATION_CPUS: cpus, ANNOTATION_CPUS_SOURCE: source})
    if patch is None:
        return None
    uid = (pod.get("metadata") or {}).get("uid")
    if uid:
        patch["metadata"]["uid"] = uid
    return patch


@dataclass(frozen=True)
class PodPatch:
    namespace: str
    name: str
    patch: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return {"namespace": self.namespace, "name": self.name, "patch": self.patch}


def on_node(pod: Mapping[str, Any], node: str) -> bool:
    """Whether the pod is bound to ``node`` and carries the pinserve managed-by label."""
    meta = pod.get("metadata") or {}
    return (
        (pod.get("spec") or {}).get("nodeName") == node
        and (meta.get("labels") or {}).get(LABEL_MANAGED_BY) == "pinserve"
    )


def pod_patches(
    pods: Iterable[Mapping[str, Any]], node: str, state: CpuManagerState, topology: Topology
) -> list[PodPatch]:
    """Patches for the pinserve pods on ``node`` among ``pods`` (others are ignored), sorted by name."""
    out = []
    for pod in pods:
        if not on_node(pod, node):
            continue
        patch = pod_patch(pod, state, topology)
        if patch is not None:
            meta = pod.get("metadata") or {}
            out.append(PodPatch(str(meta.get("namespace") or ""), str(meta.get("name") or ""), patch))
    return sorted(out, key=lambda p: (p.namespace, p.name))
