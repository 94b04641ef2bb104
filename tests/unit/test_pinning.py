"""pinning: is each ready serving pod really on exclusive whole cores? (real snapshot topology)"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from pinserve.pinning import ANNOTATION_CPUS, ANNOTATION_CPUS_SOURCE, PodView, pinned_condition, pod_view
from pinserve.planning import NodeInfo, node_info
from pinserve.topology import read_topology
from pinserve.topology.model import Topology
from snapshots import snapshot_root

pytestmark = pytest.mark.unit

# hwloc's 16em64t-4s2c2t: 4 packages x 2 cores x 2 threads; core siblings are (0,8) (4,12) (1,9) (5,13) ...
SNAPSHOT = "16em64t-4s2c2t"


@pytest.fixture(scope="module")
def machine() -> Topology:
    return read_topology(snapshot_root(SNAPSHOT))


@pytest.fixture(scope="module")
def nodes(machine: Topology, make_node: Callable[..., dict[str, Any]]) -> dict[str, NodeInfo]:
    infos = [
        node_info(make_node("static", machine)),
        node_info(make_node("none-policy", machine, policy="none")),
        node_info(make_node("no-agent", cpu="16")),
        node_info(make_node("no-policy-label", machine, policy=None)),
    ]
    return {n.name: n for n in infos}


def pod(name: str = "rfcn-abc", node: str = "static", *, qos: str = "Guaranteed", ready: bool = True,
        cpus: str | None = "0,4,8,12", source: str | None = "exclusive", deleting: bool = False) -> PodView:
    return PodView(name, node, qos, ready, cpus, source, deleting)


def test_the_snapshot_is_what_the_cases_assume(machine: Topology) -> None:
    assert machine.whole_cores({0, 8, 4, 12}) and not machine.whole_cores({0, 4})
    assert machine.physical_cores_of({0, 8, 4, 12}) == 2


CASES = [
    # pods, cpu request, (status, reason), words in the message
    ("no pods", [], 4, ("Unknown", "NoReadyPods"), "no serving pod"),
    ("only unready", [pod(ready=False)], 4, ("Unknown", "NoReadyPods"), ""),
    ("only terminating", [pod(deleting=True)], 4, ("Unknown", "NoReadyPods"), ""),
    ("burstable", [pod(qos="Burstable")], 4, ("False", "NotGuaranteed"), "QoS class Burstable"),
    ("qos unknown", [pod(qos="")], 4, ("False", "NotGuaranteed"), "QoS class unknown"),
    ("node without agent", [pod(node="no-agent")], 4, ("Unknown", "TopologyUnknown"), "agent"),
    ("node not in the cache", [pod(node="gone")], 4, ("Unknown", "TopologyUnknown"), "node gone"),
    ("no policy label", [pod(node="no-policy-label")], 4, ("Unknown", "TopologyUnknown"), ""),
    ("policy none", [pod(node="none-policy")], 4, ("False", "CpuManagerNotStatic"), "'none'"),
    ("cpus not reported", [pod(cpus=None, source=None)], 4, ("Unknown", "CpusUnknown"), "not reported"),
    ("shared pool", [pod(cpus="0-15", source="shared")], 4, ("False", "SharedCpus"), "shared CPU pool 0-15"),
    ("no source", [pod(source=None)], 4, ("False", "SharedCpus"), ""),
    ("half cores", [pod(cpus="0,4,1,5")], 4, ("False", "PartialCores"), "not 4 CPUs forming whole"),
    ("too few cpus", [pod(cpus="0,8")], 4, ("False", "PartialCores"), ""),
    ("too many cpus", [pod(cpus="0,8,4,12,1,9")], 4, ("False", "PartialCores"), ""),
    ("garbage cpus", [pod(cpus="zero-ish")], 4, ("False", "PartialCores"), ""),
    ("cpus of another machine", [pod(cpus="100-103")], 4, ("False", "PartialCores"), ""),
    ("exclusive whole cores", [pod()], 4, ("True", "ExclusiveCores"), "1 ready pod"),
    ("two good pods", [pod("a"), pod("b", cpus="1,9,5,13")], 4, ("True", "ExclusiveCores"), "2 ready pod"),
    ("good pod and unready bad pod", [pod("a"), pod("b", qos="BestEffort", ready=False)], 4, ("True",
     "ExclusiveCores"), "1 ready pod"),
    ("good pod and terminating bad pod", [pod("a"), pod("b", qos="Burstable", deleting=True)], 4, ("True",
     "ExclusiveCores"), ""),
    ("one bad pod spoils it", [pod("a"), pod("b", cpus="2,3")], 4, ("False", "PartialCores"), "pod b"),
]


@pytest.mark.parametrize(("pods", "request_", "expect", "words"), [c[1:] for c in CASES],
                         ids=[c[0] for c in CASES])
def test_pinned_condition(nodes: dict[str, NodeInfo], pods: list[PodView], request_: int,
                          expect: tuple[str, str], words: str) -> None:
    cond = pinned_condition(pods, nodes, request_)
    assert cond.type == "Pinned"
    assert (cond.status, cond.reason) == expect
    assert words in cond.message


def test_pod_view_reads_a_pod() -> None:
    raw = {
        "metadata": {"name": "rfcn-7d9-x", "annotations": {ANNOTATION_CPUS: "2-3,10-11",
                                                           ANNOTATION_CPUS_SOURCE: "exclusive"}},
        "spec": {"nodeName": "static"},
        "status": {"qosClass": "Guaranteed", "conditions": [{"type": "Ready", "status": "True"}]},
    }
    view = pod_view(raw)
    assert view == PodView("rfcn-7d9-x", "static", "Guaranteed", True, "2-3,10-11", "exclusive", False)
    raw["metadata"]["deletionTimestamp"] = "2024-01-01T00:00:00Z"
    raw["status"]["conditions"][0]["status"] = "False"
    assert pod_view(raw).deleting and not pod_view(raw).ready


def test_pod_view_of_a_pending_pod() -> None:
    view = pod_view({"metadata": {"name": "p"}, "status": {"phase": "Pending"}})
    assert view == PodView("p", "", "", False, None, None, False)


def test_pod_status_entry(nodes: dict[str, NodeInfo]) -> None:
    assert pod(cpus="0,4,8,12").to_status(nodes) == {"name": "rfcn-abc", "node": "static", "qosClass": "Guaranteed",
                                                     "ready": True, "cpus": "0,4,8,12", "physicalCores": 2}
    assert pod(cpus=None).to_status(nodes) == {"name": "rfcn-abc", "node": "static", "qosClass": "Guaranteed",
                                               "ready": True}
    entry = pod(node="no-agent", cpus="0-3").to_status(nodes)
    assert entry["cpus"] == "0-3" and "physicalCores" not in entry
