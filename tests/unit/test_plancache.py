"""plan(), remembered per list of nodes: the same answers as plan(), computed once per (spec, record)."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from pinserve.api import parse_spec
from pinserve.nodeclass import PlacementRecord
from pinserve.plancache import PlanCache
from pinserve.planning import NodeInfo, PlanError, node_info, plan
from pinserve.settings import Settings

pytestmark = pytest.mark.unit


def spec(cores: int, memory: str = "1Gi") -> Any:
    return parse_spec({"model": {"uri": "https://models.example/m.tgz"},
                       "resources": {"physicalCores": cores, "memory": memory}})


def node(name: str, cpu: int) -> NodeInfo:
    return node_info({"metadata": {"name": name}, "status": {
        "allocatable": {"cpu": str(cpu), "memory": "64Gi"}, "conditions": [{"type": "Ready", "status": "True"}]}})


NODES = [node("a", 4), node("b", 16)]


def test_answers_as_plan_does_and_plans_once_per_spec_and_record() -> None:
    cache = PlanCache()
    for cores in (2, 8, 2, 8, 2):
        assert cache.plan(spec(cores), NODES, Settings()) == plan(spec(cores), NODES, Settings())
    assert (cache.misses, cache.hits) == (2, 3)
    record = PlacementRecord("other-key", 1)
    assert cache.plan(spec(2), list(NODES), Settings(), record) == plan(spec(2), NODES, Settings(), record)
    assert cache.plan(spec(2), NODES, Settings(assumed_threads_per_core=2)).cpu_request == 4
    assert (cache.misses, cache.hits) == (4, 3)  # another record, other settings: planned; a copied list: kept


def test_a_refusal_is_remembered_and_raised_afresh() -> None:
    cache = PlanCache()
    for _ in range(2):
        with pytest.raises(PlanError) as refused:
            cache.plan(spec(64), NODES, Settings())
        assert refused.value.reason == "Unschedulable" and "64 physical cores" in refused.value.message
    assert (cache.misses, cache.hits) == (1, 1)


def test_another_node_starts_over() -> None:
    cache = PlanCache()
    assert cache.plan(spec(8), NODES, Settings()).candidate_nodes == ("b",)
    grown = [node("a", 16), NODES[1]]  # a equal in name, not in what it holds
    assert cache.plan(spec(8), grown, Settings()).candidate_nodes == ("a", "b")
    cordoned = [NODES[0], dataclasses.replace(NODES[1], unschedulable=True)]
    with pytest.raises(PlanError):
        cache.plan(spec(8), cordoned, Settings())
    assert (cache.misses, cache.hits) == (3, 0)


def test_it_keeps_at_most_max_entries() -> None:
    cache = PlanCache(max_entries=2)
    for cores in (1, 2, 3, 1):
        cache.plan(spec(cores), NODES, Settings())
    assert (cache.misses, cache.hits) == (4, 0)  # 1 was the oldest when 3 came
    cache.plan(spec(1), NODES, Settings())
    assert (cache.misses, cache.hits) == (4, 1)
