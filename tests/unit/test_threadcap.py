"""Planning tells in status what the start script does where pods get no exclusive cores."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from pinserve.api import parse_spec
from pinserve.planning import KMP_AFFINITY_SMT, node_info, plan
from pinserve.settings import Settings
from pinserve.threadcap import KMP_AFFINITY_UNPINNED, shared_cpu_nodes
from pinserve.topology.model import Topology

pytestmark = pytest.mark.unit

SETTINGS = Settings()


def _spec(cores: int = 4, threading: dict[str, Any] | None = None) -> Any:
    return parse_spec({
        "model": {"uri": "https://models.example/m.tar.gz"},
        "resources": {"physicalCores": cores, "memory": "1Gi"},
        "threading": threading or {},
    })


@pytest.fixture
def nodes(topo: Callable[..., Topology], make_node: Callable[..., dict[str, Any]]) -> Callable[..., Any]:
    def build(*policies: str | None, machine: tuple[int, int, int] = (2, 8, 2)) -> list[Any]:
        return [node_info(make_node(f"n{i}", topo(*machine), policy=policy)) for i, policy in enumerate(policies)]

    return build


@pytest.mark.parametrize(("policy", "shared"), [("static", False), ("unknown", False), (None, False), ("none", True)])
def test_which_policies_share_cpus(nodes: Callable[..., Any], policy: str | None, shared: bool) -> None:
    assert bool(shared_cpu_nodes(nodes(policy))) is shared


def test_static_nodes_keep_cores(nodes: Callable[..., Any]) -> None:
    placement = plan(_spec(4), nodes("static", "static"), SETTINGS)
    threads = placement.threads.to_status()
    assert (threads["bound"], threads["capped"]) == ("cores", False)
    assert (threads["omp"], threads["intraOp"], threads["kmpAffinity"]) == (4, 4, KMP_AFFINITY_SMT)
    assert not any("CPU manager policy" in note for note in placement.assumptions)


def test_shared_smt_node_caps_at_the_cpu_limit(nodes: Callable[..., Any]) -> None:
    # 4 physical cores on a 2 x 8 x 2 host = an 8-CPU limit; without exclusive cores the script sees
    # the host's 16 cores and caps them at 8.
    placement = plan(_spec(4), nodes("none"), SETTINGS)
    assert placement.cpu_request == 8
    threads = placement.threads.to_status()
    assert (threads["bound"], threads["capped"]) == ("cpuLimit", True)
    assert (threads["omp"], threads["intraOp"], threads["interOp"]) == (8, 8, 2)
    assert threads["kmpAffinity"] == KMP_AFFINITY_UNPINNED
    [note] = [n for n in placement.assumptions if "CPU manager policy" in n]
    assert "n0" in note and "'none'" not in note and "none" in note
    assert "caps threads at the CPU limit (8 CPUs)" in note and "16 physical cores" in note


def test_shared_node_smaller_than_the_limit_is_not_capped(nodes: Callable[..., Any]) -> None:
    # 4 cores x 2 threads: an 8-CPU limit over a host whose 4 physical cores are all the script sees.
    placement = plan(_spec(4), nodes("none", machine=(1, 4, 2)), SETTINGS)
    threads = placement.threads
    assert (threads.bound, threads.capped, threads.omp, threads.intra_op) == ("cores", False, 4, 4)
    assert threads.kmp_affinity == KMP_AFFINITY_SMT
    assert any("size threads to the host's 4 physical cores" in n for n in placement.assumptions)


def test_user_values_stay_on_shared_nodes(nodes: Callable[..., Any]) -> None:
    placement = plan(_spec(4, {"omp": 3, "intraOp": 5, "kmpAffinity": "compact"}), nodes("none"), SETTINGS)
    threads = placement.threads
    assert (threads.omp, threads.intra_op, threads.kmp_affinity) == (3, 5, "compact")
    assert threads.capped is True


def test_mixed_nodes_name_the_shared_ones(nodes: Callable[..., Any]) -> None:
    placement = plan(_spec(2), nodes("static", "none", "static"), SETTINGS)
    assert placement.threads.capped is True
    [note] = [n for n in placement.assumptions if "CPU manager policy" in n]
    assert note.startswith("node(s) n1 run")
