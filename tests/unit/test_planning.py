"""Planning: spec + node topologies -> CPUs, threads and node affinity (synthetic and real machines)."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any, NamedTuple

import pytest

from pinserve.api import parse_spec
from pinserve.nodeclass import PlacementRecord, matches, plan_key
from pinserve.planning import (
    KMP_AFFINITY_NO_SMT,
    KMP_AFFINITY_SMT,
    LABEL_CORES_PER_NUMA,
    LABEL_THREADS_PER_CORE,
    TOPOLOGY_ANNOTATION,
    NodeInfo,
    PlanError,
    node_info,
    plan,
    plan_threads,
)
from pinserve.settings import Settings
from pinserve.topology import read_topology
from pinserve.topology.model import Topology
from snapshots import snapshot_root

pytestmark = pytest.mark.unit

SETTINGS = Settings()
TopoFactory = Callable[..., Topology]
NodeFactory = Callable[..., dict[str, Any]]


def spec(cores: int = 4, *, memory: str = "1Gi", numa: str = "Prefer", threading: dict[str, Any] | None = None,
         placement: dict[str, Any] | None = None) -> Any:
    return parse_spec({
        "model": {"uri": "https://models.example/m.tgz"},
        "resources": {"physicalCores": cores, "memory": memory},
        "threading": threading or {},
        "placement": {"numa": numa, **(placement or {})},
    })


# (sockets, cores per socket, threads per core, NUMA nodes per socket): 1 CPU up to 224 CPUs, 1-8 NUMA nodes.
MACHINES = {
    "1cpu": (1, 1, 1, 1),
    "2cpu-smt": (1, 1, 2, 1),
    "laptop-4c8t": (1, 4, 2, 1),
    "8c-nosmt": (1, 8, 1, 1),
    "2s16c-smt": (2, 8, 2, 1),
    "amd-4s-8numa": (4, 16, 1, 2),
    "spr-2s-224": (2, 56, 2, 2),
    "snc4-2s-8numa-smt": (2, 32, 2, 4),
}

class Case(NamedTuple):
    machine: str
    cores: int
    numa: str
    threading: dict[str, Any]
    cpus: int
    omp: int
    intra: int
    inter: int
    kmp: str
    blocktime: int


PLANS = [
    Case("1cpu", 1, "Prefer", {}, 1, 1, 1, 1, KMP_AFFINITY_NO_SMT, 1),
    Case("2cpu-smt", 1, "Prefer", {}, 2, 1, 1, 2, KMP_AFFINITY_SMT, 1),
    Case("laptop-4c8t", 4, "Prefer", {}, 8, 4, 4, 2, KMP_AFFINITY_SMT, 1),
    Case("laptop-4c8t", 2, "Require", {}, 4, 2, 2, 2, KMP_AFFINITY_SMT, 1),
    Case("8c-nosmt", 8, "Ignore", {}, 8, 8, 8, 2, KMP_AFFINITY_NO_SMT, 1),
    Case("8c-nosmt", 2, "Prefer", {}, 2, 2, 2, 2, KMP_AFFINITY_NO_SMT, 1),
    Case("2s16c-smt", 16, "Prefer", {}, 32, 16, 16, 2, KMP_AFFINITY_SMT, 1),
    Case("2s16c-smt", 8, "Require", {}, 16, 8, 8, 2, KMP_AFFINITY_SMT, 1),
    Case("amd-4s-8numa", 8, "Require", {}, 8, 8, 8, 2, KMP_AFFINITY_NO_SMT, 1),
    Case("amd-4s-8numa", 64, "Prefer", {}, 64, 64, 64, 2, KMP_AFFINITY_NO_SMT, 1),
    Case("spr-2s-224", 112, "Ignore", {}, 224, 112, 112, 2, KMP_AFFINITY_SMT, 1),
    Case("spr-2s-224", 28, "Require", {}, 56, 28, 28, 2, KMP_AFFINITY_SMT, 1),
    Case("snc4-2s-8numa-smt", 8, "Require", {}, 16, 8, 8, 2, KMP_AFFINITY_SMT, 1),
    # user values win ...
    Case("laptop-4c8t", 4, "Prefer", {"intraOp": 3, "interOp": 1, "omp": 2}, 8, 2, 3, 1, KMP_AFFINITY_SMT, 1),
    Case("laptop-4c8t", 4, "Prefer", {"intraOp": 8}, 8, 4, 8, 2, KMP_AFFINITY_SMT, 1),
    Case("8c-nosmt", 4, "Prefer", {"kmpAffinity": "granularity=fine,scatter", "kmpBlocktime": 0},
         4, 4, 4, 2, "granularity=fine,scatter", 0),
    Case("8c-nosmt", 2, "Prefer", {"kmpBlocktime": 200}, 2, 2, 2, 2, KMP_AFFINITY_NO_SMT, 200),
    # ... but are clamped to the CPUs the pod gets.
    Case("8c-nosmt", 4, "Prefer", {"intraOp": 16, "omp": 9, "interOp": 5}, 4, 4, 4, 4, KMP_AFFINITY_NO_SMT, 1),
    Case("laptop-4c8t", 2, "Prefer", {"intraOp": 8}, 4, 2, 4, 2, KMP_AFFINITY_SMT, 1),
]


@pytest.mark.parametrize(
    "case", PLANS, ids=[f"{c.machine}-{c.cores}c-{c.numa}-{'user' if c.threading else 'default'}" for c in PLANS]
)
def test_plan_table(topo: TopoFactory, make_node: NodeFactory, case: Case) -> None:
    machine, cores, numa, threading, cpus, omp, intra, inter, kmp, blocktime = case
    sockets, per_socket, threads, numa_per_socket = MACHINES[machine]
    machine_topo = topo(sockets, per_socket, threads, numa_per_socket)
    assert machine_topo.logical_cpus == sockets * per_socket * threads
    placement = plan(spec(cores, numa=numa, threading=threading), [node_info(make_node("n1", machine_topo))],
                     SETTINGS)
    assert placement.physical_cores == cores
    assert placement.threads_per_core == threads
    assert placement.cpu_request == cpus == cores * threads
    got = placement.threads
    assert (got.omp, got.intra_op, got.inter_op, got.kmp_affinity, got.kmp_blocktime) == (
        omp, intra, inter, kmp, blocktime)
    assert max(got.omp, got.intra_op, got.inter_op) <= cpus
    assert placement.topology_source == "agent"
    assert placement.candidate_nodes == ("n1",)
    user_fields = {"intraOp": "intra_op", "interOp": "inter_op", "omp": "omp", "kmpAffinity": "kmp_affinity",
                   "kmpBlocktime": "kmp_blocktime"}
    assert got.user_set == {user_fields[k] for k in threading}
    # A note for each user value that had to be clamped, and for nothing else.
    clamped = sorted(k for k in ("intraOp", "interOp", "omp") if k in threading and threading[k] > cpus)
    notes = [a for a in placement.assumptions if a.startswith("threading.")]
    assert sorted(n.split("=")[0].removeprefix("threading.") for n in notes) == clamped
    for note in notes:
        assert f"{cpus} CPUs" in note


@pytest.mark.parametrize(("cores", "numa", "expect"), [
    (4, "Require", "required"),
    (1, "Require", "required"),
    (4, "Prefer", "preferred"),
    (1, "Prefer", None),  # one core always sits in one NUMA node
    (4, "Ignore", None),
])
def test_numa_affinity(topo: TopoFactory, make_node: NodeFactory, cores: int, numa: str, expect: str | None) -> None:
    required, preferred = expect == "required", expect == "preferred"
    placement = plan(spec(cores, numa=numa), [node_info(make_node("n1", topo(2, 8, 2)))], SETTINGS)
    affinity = placement.node_affinity or {}
    expr = {"key": LABEL_CORES_PER_NUMA, "operator": "Gt", "values": [str(cores - 1)]}
    req = affinity.get("requiredDuringSchedulingIgnoredDuringExecution")
    pref = affinity.get("preferredDuringSchedulingIgnoredDuringExecution")
    if required:
        assert req == {"nodeSelectorTerms": [{"matchExpressions": [expr]}]}
    else:
        assert req is None
    if preferred:
        assert pref == [{"weight": 100, "preference": {"matchExpressions": [expr]}}]
    else:
        assert pref is None
    if not required and not preferred:
        assert placement.node_affinity is None


def test_numa_affinity_label_matches_what_the_agent_publishes(topo: TopoFactory, make_node: NodeFactory) -> None:
    # Gt (cores - 1) on the largest NUMA node's core count == "at least `cores` cores in one NUMA node".
    machine = topo(2, 16, 1, 2)  # 8 cores per NUMA node
    node = make_node("n1", machine)
    per_numa = int(node["metadata"]["labels"][LABEL_CORES_PER_NUMA])
    for cores in (7, 8):
        placement = plan(spec(cores, numa="Require"), [node_info(node)], SETTINGS)
        expr = placement.node_affinity["requiredDuringSchedulingIgnoredDuringExecution"][  # type: ignore[index]
            "nodeSelectorTerms"][0]["matchExpressions"][0]
        assert per_numa > int(expr["values"][0])
    with pytest.raises(PlanError) as caught:
        plan(spec(9, numa="Require"), [node_info(node)], SETTINGS)
    assert "largest NUMA node has 8 physical cores" in caught.value.message


def test_require_spanning_numa_fails_but_prefer_spans(topo: TopoFactory, make_node: NodeFactory) -> None:
    nodes = [node_info(make_node("n1", topo(2, 56, 2, 2)))]
    with pytest.raises(PlanError) as caught:
        plan(spec(56, numa="Require"), nodes, SETTINGS)
    assert caught.value.reason == "Unschedulable"
    assert "n1: its largest NUMA node has 28 physical cores, 56 requested" in caught.value.message
    assert plan(spec(56, numa="Prefer"), nodes, SETTINGS).cpu_request == 112


# -- mixed clusters -------------------------------------------------------------------------------------


def test_mixed_smt_cluster_prefers_the_larger_group_and_pins_it(topo: TopoFactory, make_node: NodeFactory) -> None:
    nodes = [node_info(make_node(n, topo(1, 8, 2))) for n in ("smt-a", "smt-b")]
    nodes.append(node_info(make_node("plain", topo(1, 8, 1))))
    placement = plan(spec(4, numa="Ignore"), nodes, SETTINGS)
    assert placement.threads_per_core == 2 and placement.cpu_request == 8
    assert placement.candidate_nodes == ("smt-a", "smt-b")
    assert placement.node_affinity == {"requiredDuringSchedulingIgnoredDuringExecution": {
        "nodeSelectorTerms": [{"matchExpressions": [
            {"key": LABEL_THREADS_PER_CORE, "operator": "In", "values": ["2"]}]}]}}
    assert any("nodes with 1 threads per core are excluded" in a for a in placement.assumptions)


def test_mixed_smt_tie_goes_to_smt(topo: TopoFactory, make_node: NodeFactory) -> None:
    nodes = [node_info(make_node("a", topo(1, 8, 1))), node_info(make_node("b", topo(1, 8, 2)))]
    assert plan(spec(2), nodes, SETTINGS).threads_per_core == 2


def test_mixed_smt_majority_without_smt(topo: TopoFactory, make_node: NodeFactory) -> None:
    nodes = [node_info(make_node(n, topo(1, 8, 1))) for n in ("a", "b")] + [node_info(make_node("c", topo(1, 8, 2)))]
    placement = plan(spec(2, numa="Require"), nodes, SETTINGS)
    assert placement.cpu_request == 2 and placement.threads.kmp_affinity == KMP_AFFINITY_NO_SMT
    exprs = placement.node_affinity["requiredDuringSchedulingIgnoredDuringExecution"][  # type: ignore[index]
        "nodeSelectorTerms"][0]["matchExpressions"]
    assert exprs == [
        {"key": LABEL_THREADS_PER_CORE, "operator": "In", "values": ["1"]},
        {"key": LABEL_CORES_PER_NUMA, "operator": "Gt", "values": ["1"]},
    ]


def test_capacity_nodes_mixed_with_smt_agent_nodes_use_not_in(topo: TopoFactory, make_node: NodeFactory) -> None:
    nodes = [node_info(make_node(n, cpu="16")) for n in ("cap-a", "cap-b")]
    nodes.append(node_info(make_node("smt", topo(1, 8, 2))))
    placement = plan(spec(4, numa="Ignore"), nodes, SETTINGS)
    assert placement.threads_per_core == 1 and placement.topology_source == "capacity"
    # NotIn also matches the capacity nodes, which carry no threads-per-core label.
    assert placement.node_affinity == {"requiredDuringSchedulingIgnoredDuringExecution": {
        "nodeSelectorTerms": [{"matchExpressions": [
            {"key": LABEL_THREADS_PER_CORE, "operator": "NotIn", "values": ["2"]}]}]}}


def test_uniform_cluster_has_no_threads_per_core_term(topo: TopoFactory, make_node: NodeFactory) -> None:
    nodes = [node_info(make_node(f"n{i}", topo(1, 8, 2))) for i in range(5)]
    assert plan(spec(2, numa="Ignore"), nodes, SETTINGS).node_affinity is None


def test_node_order_does_not_matter(topo: TopoFactory, make_node: NodeFactory) -> None:
    nodes = [node_info(make_node(n, topo(1, 8, t))) for n, t in (("c", 1), ("a", 2), ("b", 1), ("d", 2))]
    assert plan(spec(2), nodes, SETTINGS) == plan(spec(2), list(reversed(nodes)), SETTINGS)


# -- nodes without topology -------------------------------------------------------------------------------


def test_capacity_fallback_names_the_node(make_node: NodeFactory) -> None:
    placement = plan(spec(4), [node_info(make_node("bare-1", cpu="16"))], SETTINGS)
    assert placement.topology_source == "capacity"
    assert placement.threads_per_core == SETTINGS.assumed_threads_per_core == 1
    assert placement.cpu_request == 4
    assert placement.threads.kmp_affinity == KMP_AFFINITY_NO_SMT
    [note] = [a for a in placement.assumptions if "no CPU topology" in a]
    assert "bare-1" in note and "agent" in note
    assert placement.representative == {"source": "capacity", "node": "bare-1", "logicalCpus": 16,
                                        "threadsPerCore": 1}


def test_capacity_fallback_follows_assumed_threads_per_core(make_node: NodeFactory) -> None:
    placement = plan(spec(4), [node_info(make_node("bare", cpu="16"))], Settings(assumed_threads_per_core=2))
    assert placement.cpu_request == 8 and placement.threads.kmp_affinity == KMP_AFFINITY_SMT


def test_capacity_fallback_lists_at_most_three_nodes(make_node: NodeFactory) -> None:
    nodes = [node_info(make_node(f"bare-{i}", cpu="16")) for i in range(5)]
    [note] = [a for a in plan(spec(1), nodes, SETTINGS).assumptions if "no CPU topology" in a]
    assert "bare-0, bare-1, bare-2..." in note and "bare-3" not in note


def test_corrupt_annotation_falls_back_to_capacity_and_says_why(make_node: NodeFactory) -> None:
    node = node_info(make_node("broken", cpu="16", annotation="{not json"))
    assert node.topology is None and node.topology_error is not None
    [note] = [a for a in plan(spec(2), [node], SETTINGS).assumptions if "no CPU topology" in a]
    assert "broken" in note and "unreadable" in note


def test_require_on_unknown_topology_is_refused(make_node: NodeFactory) -> None:
    with pytest.raises(PlanError) as caught:
        plan(spec(2, numa="Require"), [node_info(make_node("bare", cpu="64"))], SETTINGS)
    assert caught.value.reason == "Unschedulable"
    assert "bare: its CPU topology is unknown and placement.numa=Require" in caught.value.message


# -- refusals ---------------------------------------------------------------------------------------------


def test_no_nodes() -> None:
    with pytest.raises(PlanError) as caught:
        plan(spec(1), [], SETTINGS)
    assert caught.value.reason == "NoNodes"
    assert caught.value.field == "spec.placement"


REFUSALS = [
    # node keyword args, spec args, words of the per-node reason
    ({"machine": (1, 2, 2)}, {"cores": 4}, "has 2 physical cores, 4 requested"),
    ({"machine": (1, 8, 2), "cpu": "14"}, {"cores": 8}, "allocatable CPUs 14 < 16 requested"),
    ({"cpu": "3500m"}, {"cores": 4}, "allocatable CPUs 3 < 4 requested"),
    ({"machine": (1, 8, 1), "memory": "1Gi"}, {"cores": 1, "memory": "2Gi"}, "allocatable memory is below 2Gi"),
    ({"machine": (1, 8, 1), "ready": False}, {"cores": 1}, "not Ready"),
    ({"machine": (1, 8, 1), "unschedulable": True}, {"cores": 1}, "cordoned"),
    ({"machine": (1, 8, 1)}, {"cores": 1, "placement": {"nodeSelector": {"pool": "gpu"}}},
     "nodeSelector pool=gpu does not match"),
    ({"machine": (1, 8, 1), "taints": [{"key": "dedicated", "value": "db", "effect": "NoSchedule"}]},
     {"cores": 1}, "taint dedicated:NoSchedule not tolerated"),
    ({"machine": (1, 8, 1), "taints": [{"key": "dedicated", "effect": "NoExecute"}]},
     {"cores": 1, "placement": {"tolerations": [{"key": "dedicated", "operator": "Exists", "effect": "NoSchedule"}]}},
     "taint dedicated:NoExecute not tolerated"),
    ({"machine": (1, 8, 1), "taints": [{"key": "dedicated", "value": "db", "effect": "NoSchedule"}]},
     {"cores": 1, "placement": {"tolerations": [{"key": "dedicated", "value": "ml", "effect": "NoSchedule"}]}},
     "taint dedicated:NoSchedule not tolerated"),
]


def _node(topo: TopoFactory, make_node: NodeFactory, name: str, machine: tuple[int, ...] | None = None,
          **kw: Any) -> NodeInfo:
    return node_info(make_node(name, topo(*machine) if machine else None, **kw))


@pytest.mark.parametrize(("node_kw", "spec_kw", "reason"), REFUSALS, ids=[r[2] for r in REFUSALS])
def test_unschedulable_names_each_node_and_reason(
    topo: TopoFactory, make_node: NodeFactory, node_kw: dict[str, Any], spec_kw: dict[str, Any], reason: str
) -> None:
    with pytest.raises(PlanError) as caught:
        plan(spec(**spec_kw), [_node(topo, make_node, "worker-1", **node_kw)], SETTINGS)
    assert caught.value.reason == "Unschedulable"
    assert caught.value.field == "spec.resources.physicalCores"
    assert f"worker-1: {reason}" in caught.value.message
    assert f"{spec_kw['cores']} physical cores" in caught.value.message


def test_unschedulable_lists_five_nodes_and_counts_the_rest(topo: TopoFactory, make_node: NodeFactory) -> None:
    nodes = [_node(topo, make_node, f"small-{i}", (1, 2, 1)) for i in range(8)]
    with pytest.raises(PlanError) as caught:
        plan(spec(4), nodes, SETTINGS)
    message = caught.value.message
    assert all(f"small-{i}: has 2 physical cores" in message for i in range(5))
    assert "small-5" not in message and "and 3 more" in message


@pytest.mark.parametrize("taint", [
    {"key": "dedicated", "value": "ml", "effect": "NoSchedule"},
    {"key": "dedicated", "value": "ml", "effect": "NoExecute"},
    {"key": "flaky", "effect": "PreferNoSchedule"},  # only a preference: not a refusal
])
@pytest.mark.parametrize("toleration", [
    {"key": "dedicated", "operator": "Equal", "value": "ml"},
    {"key": "dedicated", "value": "ml"},
    {"key": "dedicated", "operator": "Exists"},
    {"operator": "Exists"},
])
def test_tolerated_taints(topo: TopoFactory, make_node: NodeFactory, taint: dict[str, Any],
                          toleration: dict[str, Any]) -> None:
    node = _node(topo, make_node, "tainted", (1, 8, 1), taints=[taint])
    placement = plan(spec(1, placement={"tolerations": [toleration]}), [node], SETTINGS)
    assert placement.candidate_nodes == ("tainted",)


def test_node_selector_picks_matching_nodes(topo: TopoFactory, make_node: NodeFactory) -> None:
    nodes = [_node(topo, make_node, "cpu-a", (1, 8, 2), labels={"pool": "cpu"}),
             _node(topo, make_node, "other", (1, 8, 1), labels={"pool": "web"})]
    placement = plan(spec(2, placement={"nodeSelector": {"pool": "cpu"}}), nodes, SETTINGS)
    assert placement.candidate_nodes == ("cpu-a",)
    # The refused node's SMT does not count: no threads-per-core term is needed.
    assert placement.node_affinity is not None
    assert "requiredDuringSchedulingIgnoredDuringExecution" not in placement.node_affinity


def test_refused_nodes_are_skipped_when_others_fit(topo: TopoFactory, make_node: NodeFactory) -> None:
    nodes = [_node(topo, make_node, "down", (2, 8, 2), ready=False), _node(topo, make_node, "up", (1, 4, 2))]
    assert plan(spec(4), nodes, SETTINGS).candidate_nodes == ("up",)


# -- node_info --------------------------------------------------------------------------------------------


def test_node_info_reads_the_published_topology(topo: TopoFactory, make_node: NodeFactory) -> None:
    machine = topo(2, 8, 2, 2)
    info = node_info(make_node("n1", machine, cpu="31", memory="64Gi", labels={"pool": "cpu"},
                               taints=[{"key": "k", "effect": "NoSchedule"}]))
    assert info.topology == machine
    assert info.topology_error is None
    assert info.allocatable_cpus == 31 and info.allocatable_memory == 64 * 2**30
    assert info.labels["pool"] == "cpu" and info.cpu_manager_policy == "static"
    assert info.taints == ({"key": "k", "effect": "NoSchedule"},)
    assert info.ready and not info.unschedulable


def test_node_info_without_annotation(make_node: NodeFactory) -> None:
    info = node_info(make_node("bare", cpu="4"))
    assert info.topology is None and info.topology_error is None and info.cpu_manager_policy is None


@pytest.mark.parametrize("annotation", [
    "{not json",
    "[]",
    json.dumps({"v": 99, "cores": [], "numa": []}),
    json.dumps({"v": 1, "cores": [[0, 0, 1, "0-1"]], "numa": [{"id": 0, "cpus": "0-1"}]}),  # wrong NUMA id
    json.dumps({"v": 1, "cores": "0-3", "numa": []}),
    json.dumps({"v": 1, "cores": [[0, 0, 0, "x"]], "numa": [{"id": 0, "cpus": "0"}]}),
])
def test_node_info_keeps_a_corrupt_annotation_as_an_error(make_node: NodeFactory, annotation: str) -> None:
    info = node_info(make_node("n", cpu="8", annotation=annotation))
    assert info.topology is None
    assert info.topology_error is not None and TOPOLOGY_ANNOTATION in info.topology_error


def test_node_info_defaults_for_sparse_nodes() -> None:
    info = node_info({"metadata": {"name": "n"}, "status": {"capacity": {"cpu": "2", "memory": "1Gi"}}})
    assert info.allocatable_cpus == 2 and info.allocatable_memory == 2**30
    assert not info.ready  # no Ready condition: not ready
    assert node_info({}).name == "" and node_info({}).allocatable_cpus == 0


# -- real machines ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(("snapshot", "cores", "cpus", "kmp"), [
    ("16em64t-4s2c2t", 2, 4, KMP_AFFINITY_SMT),
    ("32intel64-2p8co2t+8ve", 8, 16, KMP_AFFINITY_SMT),
    ("64amd64-4s2n4ca2co", 8, 8, KMP_AFFINITY_NO_SMT),
    ("96em64t-4no4pa3ca2co", 24, 24, KMP_AFFINITY_NO_SMT),
])
def test_plans_on_real_snapshots(make_node: NodeFactory, snapshot: str, cores: int, cpus: int, kmp: str) -> None:
    machine = read_topology(snapshot_root(snapshot))
    placement = plan(spec(cores, numa="Require"), [node_info(make_node("real", machine))], SETTINGS)
    assert placement.cpu_request == cpus and placement.threads.kmp_affinity == kmp
    assert placement.representative["physicalCores"] == machine.physical_cores


def test_offline_cpus_leave_too_few_cpus_for_whole_cores(make_node: NodeFactory) -> None:
    # Four CPUs are offline, so one core has a single thread left: 7 cores x 2 threads do not fit in 12.
    machine = read_topology(snapshot_root("16em64t-4s2c2t-offlines"))
    assert (machine.physical_cores, machine.logical_cpus) == (7, 12)
    with pytest.raises(PlanError) as caught:
        plan(spec(7), [node_info(make_node("real", machine))], SETTINGS)
    assert "allocatable CPUs 12 < 14" in caught.value.message


# -- to_status --------------------------------------------------------------------------------------------


def test_placement_status(topo: TopoFactory, make_node: NodeFactory) -> None:
    nodes = [node_info(make_node(f"n{i:02}", topo(2, 8, 2, 2))) for i in range(12)]
    status = plan(spec(4, numa="Require", memory="8Gi"), nodes, SETTINGS).to_status()
    assert status["physicalCores"] == 4 and status["cpuRequest"] == 8 and status["threadsPerCore"] == 2
    assert status["memory"] == "8Gi" and status["numa"] == "Require"
    assert status["candidateNodes"] == 12 and status["nodes"] == [f"n{i:02}" for i in range(10)]
    assert status["threads"] == {"omp": 4, "intraOp": 4, "interOp": 2, "kmpAffinity": KMP_AFFINITY_SMT,
                                 "kmpBlocktime": 1, "bound": "cores", "capped": False}
    assert status["topology"] == {"source": "agent", "node": "n00", "sockets": 2, "numaNodes": 4,
                                  "physicalCores": 16, "logicalCpus": 32, "threadsPerCore": 2, "smt": True}
    assert status["assumptions"] == []
    json.dumps(status)  # JSON-able, for the status patch


def test_plan_threads_alone() -> None:
    threads, notes = plan_threads(spec(6), 2)
    assert (threads.omp, threads.intra_op, threads.inter_op) == (6, 6, 2)
    assert notes == ()


# -- sticky placement: node churn re-plans nothing ------------------------------------------------------

SMT, PLAIN = (1, 8, 2), (1, 8, 1)


def _nodes(topo: TopoFactory, make_node: NodeFactory, *shapes: tuple[str, tuple[int, int, int] | None],
           **labels: str) -> list[NodeInfo]:
    """(name, (sockets, cores, threads)) nodes; None for a node without the agent (planned from capacity)."""
    return [node_info(make_node(name, topo(*shape) if shape else None, cpu=None if shape else "16",
                                labels=labels or None))
            for name, shape in shapes]


# (id, nodes when first planned, nodes now, threads per core now, roll expected, re-planned)
CHURN = [
    ("uniform: nodes of another class join and outnumber",
     [("smt-a", SMT)], [("smt-a", SMT), ("plain-a", PLAIN), ("plain-b", PLAIN)], 2, False, False),
    ("mixed: the minority class grows into the majority",
     [("plain-a", PLAIN), ("plain-b", PLAIN), ("smt-a", SMT)],
     [("plain-a", PLAIN), ("plain-b", PLAIN), ("smt-a", SMT), ("smt-b", SMT), ("smt-c", SMT)], 1, False, False),
    ("mixed: the other class leaves",
     [("plain-a", PLAIN), ("plain-b", PLAIN), ("smt-a", SMT)], [("plain-a", PLAIN), ("plain-b", PLAIN)],
     1, False, False),
    ("one node of the class is left",
     [("smt-a", SMT), ("smt-b", SMT)], [("smt-b", SMT), ("plain-a", PLAIN), ("plain-b", PLAIN)], 2, False, False),
    ("no node of the class is left: re-planned",
     [("smt-a", SMT), ("smt-b", SMT), ("plain-a", PLAIN)], [("plain-a", PLAIN)], 1, True, True),
    ("capacity nodes (no agent) beside the recorded class",
     [("plain-a", PLAIN), ("plain-b", PLAIN), ("cap", None)],
     [("plain-a", PLAIN), ("cap", None), ("cap-2", None), ("cap-3", None)], 1, False, False),
]


@pytest.mark.parametrize(("before", "after", "tpc", "rolls", "replanned"), [c[1:] for c in CHURN],
                         ids=[c[0] for c in CHURN])
def test_placement_sticks_through_node_churn(
    topo: TopoFactory, make_node: NodeFactory, *, before: list[Any], after: list[Any], tpc: int, rolls: bool,
    replanned: bool,
) -> None:
    wanted = spec(4, numa="Ignore")
    first = plan(wanted, _nodes(topo, make_node, *before), SETTINGS)
    record = PlacementRecord.from_status(first.to_status())
    assert record is not None and record.threads_per_core == first.threads_per_core
    again = plan(wanted, _nodes(topo, make_node, *after), SETTINGS, record)
    assert again.threads_per_core == tpc
    # What the pod template is made of: CPUs, threads and node affinity.
    same_template = (again.cpu_request, again.threads, again.node_affinity) == (
        first.cpu_request, first.threads, first.node_affinity)
    assert same_template is not rolls
    assert bool(again.replanned) is replanned
    if replanned:
        assert "no eligible node of the recorded class (2 thread(s) per core" in again.replanned
    # Without the record the majority of the moment would decide (the old behaviour), except for a re-plan.
    fresh = plan(wanted, _nodes(topo, make_node, *after), SETTINGS)
    assert fresh.replanned == ""


def test_a_spec_change_re_plans_by_majority(topo: TopoFactory, make_node: NodeFactory) -> None:
    nodes = _nodes(topo, make_node, ("smt-a", SMT))
    record = PlacementRecord.from_status(plan(spec(4), nodes, SETTINGS).to_status())
    nodes += _nodes(topo, make_node, ("plain-a", PLAIN), ("plain-b", PLAIN))
    assert plan(spec(4), nodes, SETTINGS, record).threads_per_core == 2  # same spec: sticks
    changed = plan(spec(2), nodes, SETTINGS, record)  # spec.resources changed: the record's key differs
    assert changed.threads_per_core == 1 and changed.replanned == ""
    # Fields planning does not read keep the key: a change of replicas (an HPA) or env keeps the class.
    assert plan_key(spec(4)) == plan_key(parse_spec({**spec(4).to_wire(), "replicas": 7,
                                                     "server": {"env": [{"name": "A", "value": "1"}]}}))
    assert plan_key(spec(4)) != plan_key(spec(4, numa="Require"))
    assert plan_key(spec(4)) != plan_key(spec(4, placement={"nodeSelector": {"pool": "x"}}))


def test_recorded_match_expressions_are_kept_and_honoured(topo: TopoFactory, make_node: NodeFactory) -> None:
    mixed = _nodes(topo, make_node, ("smt-a", SMT), ("smt-b", SMT), ("plain-a", PLAIN))
    first = plan(spec(4, numa="Ignore"), mixed, SETTINGS)
    assert first.node_class == ({"key": LABEL_THREADS_PER_CORE, "operator": "In", "values": ["2"]},)
    record = PlacementRecord.from_status(first.to_status())
    assert record is not None
    # The other class leaves: a fresh plan would drop the term (and roll); the record keeps it.
    alone = _nodes(topo, make_node, ("smt-a", SMT))
    assert plan(spec(4, numa="Ignore"), alone, SETTINGS).node_affinity is None
    kept = plan(spec(4, numa="Ignore"), alone, SETTINGS, record)
    assert kept.node_affinity == first.node_affinity and kept.node_class == first.node_class
    # A node with the right threads per core but outside the recorded expressions does not count.
    unlabelled = _nodes(topo, make_node, ("cap", None))
    assert unlabelled[0].labels.get(LABEL_THREADS_PER_CORE) is None
    record_2 = PlacementRecord(record.plan_key, 1, record.match_expressions)
    replanned = plan(spec(4, numa="Ignore"), unlabelled, SETTINGS, record_2)
    assert replanned.replanned and replanned.node_class == ()


@pytest.mark.parametrize(("status", "expected"), [
    (None, None),
    ({}, None),
    ({"threadsPerCore": 2}, None),  # written by an operator without sticky placement
    ({"planKey": "k", "threadsPerCore": 2}, None),
    ({"planKey": "k", "threadsPerCore": "2", "nodeClass": {}}, None),
    ({"planKey": "k", "threadsPerCore": True, "nodeClass": {}}, None),
    ({"planKey": "k", "threadsPerCore": 0, "nodeClass": {}}, None),
    ({"planKey": "", "threadsPerCore": 2, "nodeClass": {}}, None),
    ({"planKey": "k", "threadsPerCore": 2, "nodeClass": {"matchExpressions": "x"}}, None),
    ({"planKey": "k", "threadsPerCore": 2, "nodeClass": {"matchExpressions": [{"operator": "In"}]}}, None),
    ({"planKey": "k", "threadsPerCore": 2, "nodeClass": {}}, PlacementRecord("k", 2, ())),
    ({"planKey": "k", "threadsPerCore": 1, "nodeClass": {"matchExpressions": [
        {"key": LABEL_THREADS_PER_CORE, "operator": "NotIn", "values": ["2"]}]}},
     PlacementRecord("k", 1, ({"key": LABEL_THREADS_PER_CORE, "operator": "NotIn", "values": ["2"]},))),
])
def test_placement_record_from_status(status: Any, expected: PlacementRecord | None) -> None:
    assert PlacementRecord.from_status(status) == expected


@pytest.mark.parametrize(("labels", "expressions", "expected"), [
    ({}, [], True),
    ({"t": "2"}, [{"key": "t", "operator": "In", "values": ["2"]}], True),
    ({"t": "1"}, [{"key": "t", "operator": "In", "values": ["2"]}], False),
    ({}, [{"key": "t", "operator": "In", "values": ["2"]}], False),
    ({}, [{"key": "t", "operator": "NotIn", "values": ["2"]}], True),  # NotIn matches unlabelled nodes
    ({"t": "2"}, [{"key": "t", "operator": "NotIn", "values": ["2", "4"]}], False),
    ({"t": "1"}, [{"key": "t", "operator": "Exists"}], True),
    ({}, [{"key": "t", "operator": "Exists"}], False),
    ({"t": "1"}, [{"key": "t", "operator": "DoesNotExist"}], False),
    ({"t": "1", "u": "x"}, [{"key": "t", "operator": "In", "values": ["1"]},
                            {"key": "u", "operator": "In", "values": ["y"]}], False),  # expressions are ANDed
])
def test_matches(labels: dict[str, str], expressions: list[dict[str, Any]], expected: bool) -> None:
    assert matches(labels, expressions) is expected
