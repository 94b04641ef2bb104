"""Two operator replicas against the real API server (issue 11 items 5 and 6).

Each replica is `pinserve run` in a subprocess, as the chart's ServiceAccount (its token), with kopf peering
on a ClusterKopfPeering and its metrics endpoint on a loopback port. One ModelServer: one set of children,
only the leader reconciles and writes; stopping the leader hands over, and the new leader reconciles a change.
Which replica leads and what it did is read from each one's /metrics (pinserve_leader, its own counters).
No wall-clock assertions: every wait has a timeout.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from operator_harness import REPO, condition, eventually, install_crd, install_operator_rbac, modelserver

pytestmark = pytest.mark.integration

PEERING_CRD = REPO / "crds" / "kopf-peering.yaml"
HANDOVER_TIMEOUT = 120  # the peering lifetime (60 s) bounds a killed leader's handover; a stopped one is at once


# The child asks for SIGTERM when pytest goes away (PR_SET_PDEATHSIG, kept across exec), then becomes
# `pinserve run`: no operator outlives a killed test run to reconcile the cluster of the next one.
DIE_WITH_PARENT = ("import ctypes, os, signal, sys; ctypes.CDLL(None).prctl(1, signal.SIGTERM); "
                   "os.execv(sys.executable, [sys.executable, '-m', 'pinserve', *sys.argv[1:]])")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def parse_metrics(text: str) -> dict[str, float]:
    series: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            key, value = line.rsplit(" ", 1)
            series[key] = float(value)
    return series


@dataclass
class Replica:
    name: str
    proc: subprocess.Popen[bytes]
    metrics_port: int
    log: Path

    def metrics(self) -> dict[str, float] | None:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5) as resp:
                return parse_metrics(resp.read().decode())
        except OSError:
            return None

    def leading(self) -> bool:
        return (self.metrics() or {}).get("pinserve_leader") == 1

    def writes(self) -> float:
        """The replica's own writes through pinserve's API client (kopf's peering keep-alives are not)."""
        found = self.metrics() or {}
        return sum(found.get(f'pinserve_api_requests_total{{verb="{verb}"}}', 0) for verb in ("POST", "PATCH",
                                                                                               "PUT", "DELETE"))

    def reconciles(self) -> float:
        found = self.metrics() or {}
        return sum(v for k, v in found.items() if k.startswith("pinserve_reconciles_total"))

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=30)


@dataclass
class Setup:
    cluster: Any
    kubeconfig: Path
    peering: str
    tmp: Path

    def start(self, name: str) -> Replica:
        port = free_port()
        log = self.tmp / f"{name}.log"
        env = {**os.environ, "KUBECONFIG": str(self.kubeconfig), "POD_ID": name, "PINSERVE_PEERING": self.peering,
               "PINSERVE_METRICS_HOST": "127.0.0.1", "PINSERVE_METRICS_PORT": str(port),
               "PINSERVE_RESYNC_SECONDS": "2", "PINSERVE_NAMESPACES": ""}
        with log.open("wb") as out:
            proc = subprocess.Popen(
                [sys.executable, "-c", DIE_WITH_PARENT, "run", f"--liveness=http://127.0.0.1:{free_port()}/healthz"],
                env=env, stdout=out, stderr=subprocess.STDOUT, cwd=REPO)
        replica = Replica(name, proc, port, log)
        eventually(f"{name}'s metrics endpoint", lambda: proc.poll() is None and replica.metrics() is not None,
                   timeout=60)
        return replica

    def peers(self) -> dict[str, Any]:
        body = self.cluster.get_json("clusterkopfpeering", self.peering)
        return dict(body.get("status") or {})


@pytest.fixture
def setup(cluster: Any, tmp_path: Path) -> Iterator[Setup]:
    install_crd(cluster)
    cluster.install_crd(PEERING_CRD, "clusterkopfpeerings.kopf.dev")
    cluster.install_crd(PEERING_CRD, "kopfpeerings.kopf.dev")
    kubeconfig = tmp_path / "kubeconfig"
    install_operator_rbac(cluster, kubeconfig)
    # The operator creates its peering object (kopf does not, and would wait for it forever).
    name = f"pinserve-it-{uuid.uuid4().hex[:6]}"
    yield Setup(cluster, kubeconfig, name, tmp_path)
    cluster.kubectl("delete", "clusterkopfpeering", name, "--ignore-not-found", check=False)


def deployments(cluster: Any, namespace: str, name: str) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = cluster.get_json("-n", namespace, "deployments", "-l",
                                                   f"pinserve.io/modelserver={name}")["items"]
    return items


@pytest.mark.parametrize("how", ["stopped", "killed"])
def test_two_replicas_one_leader_and_a_handover(setup: Setup, namespace: str, how: str) -> None:
    cluster = setup.cluster
    first = setup.start("op-a")
    second: Replica | None = None
    try:
        eventually("op-a to lead", first.leading, timeout=60)
        second = setup.start("op-b")
        # op-b has announced itself (so it knows about op-a) and waits.
        eventually("op-b's keep-alive", lambda: "op-b" in setup.peers(), timeout=60)
        assert first.leading() and not second.leading()

        cluster.kubectl("apply", "-n", namespace, "-f", "-", input=yaml.safe_dump(modelserver("duo", cores=1)))

        def ready() -> dict[str, Any] | None:
            body = cluster.get_json("-n", namespace, "modelserver/duo")
            return body if condition(body, "Ready").get("status") == "True" else None

        eventually("duo Ready", ready, timeout=90)
        assert len(deployments(cluster, namespace, "duo")) == 1
        # The leader did the work and says so on /metrics (the metrics test: scraped after a reconcile).
        leader = first.metrics() or {}
        assert leader["pinserve_leader"] == 1
        assert leader['pinserve_reconciles_total{result="ok"}'] >= 1
        assert leader['pinserve_api_requests_total{verb="PATCH"}'] >= 1  # applies and the status
        assert leader["pinserve_modelservers"] >= 1
        assert leader['pinserve_reconcile_duration_seconds_bucket{le="+Inf"}'] >= 1
        assert "pinserve_workqueue_depth" in leader
        # The follower reconciled nothing and wrote nothing: no children, no status, no events.
        assert second.reconciles() == 0 and second.writes() == 0 and not second.leading()

        # Stop the leader: it leaves the peering and op-b takes over at once. Killed, it leaves nothing: op-b
        # takes over when op-a's keep-alive runs out (the peering lifetime, 60 s).
        if how == "killed":
            first.proc.kill()
        first.stop()
        assert first.proc.returncode is not None
        if how == "stopped":
            assert "op-a" not in setup.peers() or setup.peers()["op-a"].get("lifetime") == 0
        else:
            assert not second.leading()
        eventually("op-b to lead", second.leading, timeout=HANDOVER_TIMEOUT, interval=0.5)

        body = modelserver("duo", cores=1)
        body["spec"]["resources"]["memory"] = "3Gi"
        cluster.kubectl("apply", "-n", namespace, "-f", "-", input=yaml.safe_dump(body))

        def rolled() -> bool:
            (deploy,) = deployments(cluster, namespace, "duo")
            server = next(c for c in deploy["spec"]["template"]["spec"]["containers"] if c["name"] == "server")
            ms = cluster.get_json("-n", namespace, "modelserver/duo")
            return (server["resources"]["limits"]["memory"] == "3Gi"
                    and (ms.get("status") or {}).get("observedGeneration") == 2)

        eventually("op-b to reconcile the change", rolled, timeout=90)
        assert second.reconciles() >= 1 and second.writes() >= 1
        assert len(deployments(cluster, namespace, "duo")) == 1
    except BaseException:
        for replica in (first, second):
            if replica is not None:
                sys.stderr.write(f"--- {replica.name} log:\n{replica.log.read_text(errors='replace')[-6000:]}\n")
        raise
    finally:
        for replica in (first, second):
            if replica is not None:
                replica.stop()
