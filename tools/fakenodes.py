"""Simulated Nodes for the integration tier, built from real machines' sysfs snapshots.

Each node is what a real worker running pinserve's node agent would look like to the API server: capacity
and allocatable from the machine (logical CPUs, MemTotal), the usual well-known labels, and the CPU topology
labels/annotation that :func:`pinserve.topology.publish.node_topology_metadata` builds, i.e. exactly what the
agent publishes. The annotation ``kwok.x-k8s.io/node: fake`` hands the node to KWOK, which plays its kubelet.

The snapshots are hwloc's test data in ``<repo>/tests/data/hwloc-sysfs`` (override with
``PINSERVE_HWLOC_SNAPSHOTS``); each ``NAME.tar.bz2`` is unpacked once into the cache.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import tarfile
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pinserve.topology.publish import node_topology_metadata
from pinserve.topology.sysfs import read_topology

REPO_ROOT = Path(__file__).resolve().parent.parent
KWOK_ANNOTATION = "kwok.x-k8s.io/node"
KWOK_ANNOTATION_VALUE = "fake"
#: Label on every node made here, so tests can select (and clean up) simulated nodes.
FAKE_NODE_LABEL = "pinserve.io/simulated-node"


def snapshot_dir() -> Path:
    env = os.environ.get("PINSERVE_HWLOC_SNAPSHOTS")
    if env:
        return Path(env)
    return REPO_ROOT / "tests" / "data" / "hwloc-sysfs"


def cache_dir() -> Path:
    return Path(os.environ.get("PINSERVE_CACHE", Path.home() / ".cache" / "pinserve"))


def available_snapshots() -> list[str]:
    return sorted(p.name.removesuffix(".tar.bz2") for p in snapshot_dir().glob("*.tar.bz2"))


def unpack_snapshot(name: str) -> Path:
    """The unpacked root (holding ``sys/`` and ``proc/``) of snapshot ``name``; unpacks it once."""
    archive = snapshot_dir() / f"{name}.tar.bz2"
    if not archive.is_file():
        raise FileNotFoundError(f"no hwloc snapshot {archive}; available: {', '.join(available_snapshots()) or 'none'}")
    digest = hashlib.sha256(archive.read_bytes()).hexdigest()[:12]
    target = cache_dir() / "hwloc-sysfs" / f"{name}-{digest}"
    if not target.is_dir():
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=target.parent))
        try:
            with tarfile.open(archive, "r:bz2") as tar:
                tar.extractall(tmp, filter="data")
            try:
                tmp.rename(target)
            except OSError:  # another process won the race
                if not target.is_dir():
                    raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    # The archive's top directory is not always NAME (96em64t-4no4pa3ca2co holds 96em64t-4n4d3ca2co/).
    tops = [p for p in target.iterdir() if (p / "sys").is_dir()]
    if len(tops) != 1:
        raise ValueError(f"{archive}: expected one top directory holding sys/, found {tops}")
    return tops[0]


def mem_total_bytes(root: Path, numa_memory: Iterable[int | None] = ()) -> int:
    """MemTotal from the snapshot's /proc/meminfo, else the sum of its NUMA nodes' memory."""
    meminfo = root / "proc" / "meminfo"
    if meminfo.is_file():
        for line in meminfo.read_text().splitlines():
            if line.startswith("MemTotal:"):
                value, unit = line.split()[1:3]
                if unit.lower() != "kb":
                    raise ValueError(f"unexpected MemTotal unit {unit!r}")
                return int(value) * 1024
    total = sum(m for m in numa_memory if m)
    if total:
        return total
    raise ValueError(f"{root}: neither proc/meminfo nor NUMA node memory tells the memory size")


def _label_value(text: str) -> str:
    value = re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-._")[:63].rstrip("-._")
    return value or "unknown"


@dataclass(frozen=True)
class NodeSpec:
    """A simulated node: a name and the machine (snapshot) behind it."""

    name: str
    snapshot: str
    #: Publish the agent's topology labels/annotation (False: a node as it looks without the agent).
    topology: bool = True
    cpu_manager_policy: str | None = "static"
    #: CPUs held back by the kubelet (kube/system-reserved); default: one physical core.
    reserved_cpus: int | None = None
    reserved_memory_mib: int = 1024
    pods: int = 110
    instance_type: str | None = None
    labels: dict[str, str] = field(default_factory=dict)
    annotations: dict[str, str] = field(default_factory=dict)
    taints: list[dict[str, str]] = field(default_factory=list)


#: The nodes `python -m tools.cluster up` creates. There is no 1-socket non-SMT machine among the snapshots;
#: 8em64t-2s2ca2c (2 sockets, 8 cores, no SMT, one NUMA node) is the closest.
DEFAULT_NODES: tuple[NodeSpec, ...] = (
    NodeSpec("kwok-intel-2s-smt", "32intel64-2p8co2t+8ve", instance_type="xeon-silver-4108-2s"),
    NodeSpec("kwok-intel-8c-nosmt", "8em64t-2s2ca2c", instance_type="xeon-e5345-2s"),
    NodeSpec("kwok-amd-8numa", "64amd64-4s2n4ca2co", instance_type="opteron-6276-4s"),
)


def _node_index(name: str) -> int:
    return int(hashlib.sha256(name.encode()).hexdigest(), 16) % 250 + 1


def make_fake_node(
    name: str,
    snapshot_name: str,
    *,
    topology: bool = True,
    cpu_manager_policy: str | None = "static",
    reserved_cpus: int | None = None,
    reserved_memory_mib: int = 1024,
    pods: int = 110,
    instance_type: str | None = None,
    labels: dict[str, str] | None = None,
    annotations: dict[str, str] | None = None,
    taints: list[dict[str, str]] | None = None,
) -> dict[str, Any]:
    """A Node manifest (with status) for the machine in hwloc snapshot ``snapshot_name``.

    ``topology=False`` leaves out pinserve's topology labels and annotation (a node without the agent).
    Capacity is the snapshot's logical CPUs and MemTotal; allocatable holds back ``reserved_cpus``
    (default: one physical core, as a static-policy kubelet must reserve some) and ``reserved_memory_mib``.
    """
    root = unpack_snapshot(snapshot_name)
    topo = read_topology(root)
    memory = mem_total_bytes(root, (n.memory_bytes for n in topo.numa_nodes))
    reserved = topo.threads_per_core if reserved_cpus is None else reserved_cpus
    memory_mib = memory // (1024 * 1024)
    index = _node_index(name)

    node_labels = {
        "kubernetes.io/hostname": name,
        "kubernetes.io/os": "linux",
        "kubernetes.io/arch": "amd64",
        "node.kubernetes.io/instance-type": _label_value(instance_type or f"hwloc-{snapshot_name}"),
        "type": "kwok",
        FAKE_NODE_LABEL: "true",
    }
    node_annotations = {
        KWOK_ANNOTATION: KWOK_ANNOTATION_VALUE,
        "node.alpha.kubernetes.io/ttl": "0",
        "pinserve.io/hwloc-snapshot": snapshot_name,
    }
    if topology:
        topo_labels, topo_annotations = node_topology_metadata(topo, cpu_manager_policy)
        node_labels.update(topo_labels)
        node_annotations.update(topo_annotations)
    node_labels.update(labels or {})
    node_annotations.update(annotations or {})

    spec: dict[str, Any] = {"podCIDR": f"10.244.{index}.0/24", "podCIDRs": [f"10.244.{index}.0/24"]}
    if taints:
        spec["taints"] = taints
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": name, "labels": node_labels, "annotations": node_annotations},
        "spec": spec,
        "status": {
            "capacity": {"cpu": str(topo.logical_cpus), "memory": f"{memory_mib}Mi", "pods": str(pods)},
            "allocatable": {
                "cpu": str(topo.logical_cpus - reserved),
                "memory": f"{memory_mib - reserved_memory_mib}Mi",
                "pods": str(pods),
            },
            "addresses": [
                {"type": "InternalIP", "address": f"10.0.0.{index}"},
                {"type": "Hostname", "address": name},
            ],
            "nodeInfo": {
                "architecture": "amd64",
                "operatingSystem": "linux",
                "osImage": "kwok (hwloc snapshot " + snapshot_name + ")",
                "kernelVersion": "kwok",
                "containerRuntimeVersion": "kwok://v0.7.0",
                "kubeletVersion": "v1.34.4",
                "kubeProxyVersion": "v1.34.4",
                "machineID": "",
                "systemUUID": "",
                "bootID": "",
            },
        },
    }


def node_from_spec(spec: NodeSpec) -> dict[str, Any]:
    return make_fake_node(
        spec.name,
        spec.snapshot,
        topology=spec.topology,
        cpu_manager_policy=spec.cpu_manager_policy,
        reserved_cpus=spec.reserved_cpus,
        reserved_memory_mib=spec.reserved_memory_mib,
        pods=spec.pods,
        instance_type=spec.instance_type,
        labels=spec.labels,
        annotations=spec.annotations,
        taints=spec.taints,
    )


def default_nodes() -> list[dict[str, Any]]:
    return [node_from_spec(spec) for spec in DEFAULT_NODES]
