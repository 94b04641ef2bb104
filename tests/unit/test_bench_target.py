"""The benchmark client's CPU and target: operator settings for small nodes and clusters without DNS."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from pinserve.api import parse_modelserver
from pinserve.benchflow import evaluate, target_pod_ip
from pinserve.render.job import render_bench_job
from pinserve.settings import Settings
from pinserve.status import Condition

pytestmark = pytest.mark.unit

READY = Condition("Ready", "True", "Available", "1/1 replicas ready")
NOW = "2024-01-01T00:00:00Z"


def pod(name: str, ip: str | None = "10.1.0.7", phase: str = "Running", ready: str = "True",
        deleting: bool = False) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "labels": {}}
    if deleting:
        meta["deletionTimestamp"] = "2024-01-01T00:00:00Z"
    return {"metadata": meta, "status": {"phase": phase, "podIP": ip,
                                         "conditions": [{"type": "Ready", "status": ready}]}}


@pytest.mark.parametrize(("pods", "want"), [
    ([], None),
    ([pod("a", ip=None)], None),
    ([pod("a", ready="False")], None),
    ([pod("a", phase="Pending")], None),
    ([pod("a", deleting=True)], None),
    ([pod("b", ip="10.1.0.8"), pod("a", ip="10.1.0.7")], "10.1.0.7"),
    ([pod("a", ready="False"), pod("b", ip="10.1.0.8")], "10.1.0.8"),
])
def test_the_target_pod_is_a_ready_running_one(pods: list[dict[str, Any]], want: str | None) -> None:
    assert target_pod_ip(pods) == want


def test_service_target_and_whole_cpus_by_default(make_ms: Callable[..., dict[str, Any]]) -> None:
    ms = parse_modelserver(make_ms())
    job = render_bench_job(ms, Settings(), "j", "k")
    container = job["spec"]["template"]["spec"]["containers"][0]
    args = container["args"]
    assert args[args.index("--target") + 1] == f"{ms.ref.name}.{ms.ref.namespace}.svc:8500"
    assert container["resources"]["requests"]["cpu"] == container["resources"]["limits"]["cpu"]
    assert float(container["resources"]["limits"]["cpu"]).is_integer()


def test_pod_target_and_a_fractional_client_cpu(make_ms: Callable[..., dict[str, Any]]) -> None:
    ms = parse_modelserver(make_ms())
    settings = Settings(bench_target="pod", bench_cpu="500m")
    decision = evaluate(ms, READY, jobs=[], current=None, settings=settings, server_pods=[pod("a")], now=NOW)
    container = decision.apply[0]["spec"]["template"]["spec"]["containers"][0]
    args = container["args"]
    assert args[args.index("--target") + 1] == "10.1.0.7:8500"
    assert container["resources"]["requests"] == container["resources"]["limits"]
    assert container["resources"]["limits"]["cpu"] == "500m"


def test_pod_target_waits_for_a_ready_pod(make_ms: Callable[..., dict[str, Any]]) -> None:
    ms = parse_modelserver(make_ms())
    decision = evaluate(ms, READY, jobs=[], current=None, settings=Settings(bench_target="pod"),
                        server_pods=[pod("a", ready="False")], now=NOW)
    assert decision.apply == []
    assert (decision.condition.status, decision.condition.reason) == ("Unknown", "WaitingForServerPod")


def test_ipv6_pod_ips_are_bracketed(make_ms: Callable[..., dict[str, Any]]) -> None:
    ms = parse_modelserver(make_ms())
    job = render_bench_job(ms, Settings(bench_target="pod"), "j", "k", "fd00::7")
    args = job["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[args.index("--target") + 1] == "[fd00::7]:8500"


@pytest.mark.parametrize(("env", "error"), [
    ({"PINSERVE_BENCH_TARGET": "dns"}, "must be one of service, pod"),
    ({"PINSERVE_BENCH_CPU": "half"}, "is not a CPU quantity"),
])
def test_bad_settings_name_the_variable(env: dict[str, str], error: str) -> None:
    with pytest.raises(ValueError, match=error):
        Settings.from_env(env)


def test_settings_from_env() -> None:
    settings = Settings.from_env({"PINSERVE_BENCH_TARGET": "pod", "PINSERVE_BENCH_CPU": "500m"})
    assert (settings.bench_target, settings.bench_cpu) == ("pod", "500m")


@pytest.mark.parametrize(("cores", "threads_per_core", "cpus"), [(1, 1, "1"), (1, 2, "2"), (3, 2, "6"), (2, 4, "8")])
def test_the_client_takes_whole_physical_cores_on_smt_nodes(make_ms: Callable[..., dict[str, Any]], cores: int,
                                                            threads_per_core: int, cpus: str) -> None:
    """1 CPU on a 2-thread core is half a core: full-pcpus-only would reject the client (SMTAlignmentError)."""
    body = make_ms()
    body["spec"].setdefault("benchmark", {})["physicalCores"] = cores
    ms = parse_modelserver(body)
    decision = evaluate(ms, READY, jobs=[], current=None, settings=Settings(), now=NOW,
                        threads_per_core=threads_per_core)
    container = decision.apply[0]["spec"]["template"]["spec"]["containers"][0]
    assert container["resources"]["requests"]["cpu"] == container["resources"]["limits"]["cpu"] == cpus
