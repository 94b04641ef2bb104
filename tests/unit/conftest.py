"""Shared builders for the unit tests of the operator core: synthetic machines, nodes, ModelServers.

Test directories are not packages; ``tests/`` is put on ``sys.path`` so ``from snapshots import ...``
works for every unit test (tests/unit/topology/conftest.py does the same for its own directory).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pytest

from pinserve.planning import LABEL_CORES_PER_NUMA, LABEL_POLICY, LABEL_THREADS_PER_CORE, TOPOLOGY_ANNOTATION
from pinserve.topology.model import Core, Topology

_TESTS_DIR = str(Path(__file__).resolve().parents[1])
if _TESTS_DIR not in sys.path:
    sys.path.insert(0, _TESTS_DIR)


def build_topology(sockets: int = 1, cores_per_socket: int = 4, threads: int = 1, numa_per_socket: int = 1) -> Topology:
    """A uniform machine, numbered the way Intel BIOSes do: the siblings of CPU n are n + k * cores."""
    assert cores_per_socket % numa_per_socket == 0
    total = sockets * cores_per_socket
    per_numa = cores_per_socket // numa_per_socket
    cores = []
    for socket in range(sockets):
        for core_id in range(cores_per_socket):
            index = socket * cores_per_socket + core_id
            numa = socket * numa_per_socket + core_id // per_numa
            cores.append(Core(socket, core_id, tuple(index + t * total for t in range(threads)), numa))
    return Topology(tuple(cores))


def node_object(
    name: str,
    topology: Topology | None = None,
    *,
    cpu: str | None = None,
    memory: str = "256Gi",
    labels: Mapping[str, str] | None = None,
    taints: list[dict[str, Any]] | None = None,
    ready: bool = True,
    unschedulable: bool = False,
    policy: str | None = "static",
    annotation: str | None = None,
) -> dict[str, Any]:
    """A Node as the API server returns it, with the labels and annotation the agent publishes."""
    all_labels = {"kubernetes.io/hostname": name, **(labels or {})}
    annotations: dict[str, str] = {}
    if topology is not None:
        annotations[TOPOLOGY_ANNOTATION] = json.dumps(topology.to_dict())
        all_labels[LABEL_THREADS_PER_CORE] = str(topology.threads_per_core)
        all_labels[LABEL_CORES_PER_NUMA] = str(topology.max_cores_in_one_numa)
        if policy is not None:
            all_labels[LABEL_POLICY] = policy
    if annotation is not None:
        annotations[TOPOLOGY_ANNOTATION] = annotation
    cpus = cpu if cpu is not None else str(topology.logical_cpus if topology else 8)
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": name, "labels": all_labels, "annotations": annotations},
        "spec": {"taints": taints or [], **({"unschedulable": True} if unschedulable else {})},
        "status": {
            "capacity": {"cpu": cpus, "memory": memory},
            "allocatable": {"cpu": cpus, "memory": memory},
            "conditions": [{"type": "Ready", "status": "True" if ready else "False"}],
        },
    }


def modelserver(
    spec: Mapping[str, Any] | None = None,
    *,
    name: str = "rfcn",
    namespace: str = "ml",
    generation: int = 1,
    annotations: Mapping[str, str] | None = None,
    status: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """A ModelServer body as kopf hands it over; ``spec`` defaults to a 4-core https model."""
    body: dict[str, Any] = {
        "apiVersion": "pinserve.io/v1alpha1",
        "kind": "ModelServer",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "uid": "11111111-2222-3333-4444-555555555555",
            "generation": generation,
            "annotations": dict(annotations or {}),
        },
        "spec": dict(spec) if spec is not None else {
            "model": {"uri": "https://models.example/rfcn.tar.gz", "path": "rfcn/saved_model"},
            "resources": {"physicalCores": 4, "memory": "8Gi"},
        },
    }
    if status is not None:
        body["status"] = dict(status)
    return body


@pytest.fixture(scope="session")
def topo() -> Callable[..., Topology]:
    return build_topology


@pytest.fixture(scope="session")
def make_node() -> Callable[..., dict[str, Any]]:
    return node_object


@pytest.fixture(scope="session")
def make_ms() -> Callable[..., dict[str, Any]]:
    return modelserver
