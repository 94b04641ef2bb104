"""What the agent's integration tests share: a KWOK node for the agent, its pods, its checkpoint and its tokens."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from pinserve.topology.cpuset import format_cpulist, parse_cpulist
from pinserve.topology.model import Topology
from tools import cluster as cluster_tools

# 2 sockets x 8 cores x 2 threads (Xeon Silver 4108, AVX-512): core i of socket 0 is CPUs i and i + 16.
SNAPSHOT = "32intel64-2p8co2t+8ve"
PINNED_CPUS = "2-5,18-21"  # cores 2-5 of socket 0, both threads


def server_pod(name: str, node: str, *, managed: bool = True, account: str | None = None) -> dict[str, Any]:
    """A bare pod with a Guaranteed ``server`` container, bound to ``node``, labelled like pinserve's."""
    labels = {"pinserve.io/modelserver": "agent-test", "app.kubernetes.io/component": "server"}
    if managed:
        labels["app.kubernetes.io/managed-by"] = "pinserve"
    spec: dict[str, Any] = {
        "nodeName": node,
        "containers": [{
            "name": "server",
            "image": "tensorflow/serving:mkl",
            "resources": {"requests": {"cpu": "2", "memory": "1Gi"}, "limits": {"cpu": "2", "memory": "1Gi"}},
        }],
    }
    if account:
        spec["serviceAccountName"] = account
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "labels": labels}, "spec": spec}


def wait_running(cluster: cluster_tools.IntegrationCluster, namespace: str, name: str) -> dict[str, Any]:
    def running() -> dict[str, Any] | None:
        pod: dict[str, Any] = cluster.get_json("pod", name, "-n", namespace)
        statuses = pod.get("status", {}).get("containerStatuses") or []
        return pod if statuses and "running" in statuses[0].get("state", {}) else None

    return cluster.wait_for(f"pod {name} to run", running, timeout=60)


def token_kubeconfig(cluster: cluster_tools.IntegrationCluster, token: str, path: Path) -> Path:
    """The admin's kubeconfig with ``token`` as its only credential."""
    config = yaml.safe_load(cluster.kubeconfig.read_text())
    for user in config["users"]:
        user["user"] = {"token": token}
    path.write_text(yaml.safe_dump(config))
    path.chmod(0o600)
    return path


def service_account_kubeconfig(
    cluster: cluster_tools.IntegrationCluster, namespace: str, name: str, path: Path, *bound_to: str
) -> Path:
    """A kubeconfig with a fresh token of ServiceAccount ``name``; ``bound_to``: ("Pod", name) to bind it."""
    bind = ["--bound-object-kind", bound_to[0], "--bound-object-name", bound_to[1]] if bound_to else []
    token = cluster.kubectl("create", "token", name, "-n", namespace, "--duration=1h", *bind).stdout.strip()
    return token_kubeconfig(cluster, token, path)


@dataclass
class Setup:
    cluster: cluster_tools.IntegrationCluster
    namespace: str
    node: str
    root: Path
    topology: Topology
    kubeconfig: Path  # the agent's ServiceAccount, not the admin
    state: Path
    tmp: Path
    #: The pod-resources socket the agent reads ("": none, the checkpoint's entries).
    socket: str = ""

    def pod(self, name: str, node: str | None = None, *, managed: bool = True) -> dict[str, Any]:
        self.cluster.apply_yaml(json.dumps(server_pod(name, node or self.node, managed=managed)),
                                namespace=self.namespace)
        return wait_running(self.cluster, self.namespace, name)

    def annotations(self, kind: str, name: str) -> dict[str, str]:
        args = [kind, name] if kind == "node" else [kind, name, "-n", self.namespace]
        return dict(self.cluster.get_json(*args)["metadata"].get("annotations") or {})

    def labels(self, name: str) -> dict[str, str]:
        return dict(self.cluster.get_json("node", name)["metadata"].get("labels") or {})

    def write_state(self, entries: dict[str, str]) -> str:
        """Write the checkpoint as the kubelet does (temporary file, rename); returns defaultCpuSet."""
        taken = set().union(*(parse_cpulist(cpus) for cpus in entries.values())) if entries else set()
        default = format_cpulist(self.topology.cpus - taken)
        tmp = self.state.with_name("cpu_manager_state.tmp")
        tmp.write_text(json.dumps({
            "policyName": "static",
            "defaultCpuSet": default,
            "entries": {uid: {"server": cpus} for uid, cpus in entries.items()},
            "checksum": 1234567,
        }))
        tmp.replace(self.state)
        return default

    def agent_argv(self, *extra: str, state: Path | None = None) -> list[str]:
        return [sys.executable, "-m", "pinserve.agent", "--node", self.node, "--sysfs-root", str(self.root),
                "--cpu-manager-state", str(state or self.state), "--pod-resources-socket", self.socket, *extra]

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PINSERVE_", "KUBERNETES_SERVICE"))}
        env["KUBECONFIG"] = str(self.kubeconfig)
        return env

    def run_once(self, *extra: str, state: Path | None = None) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(self.agent_argv("--once", *extra, state=state), env=self.env(),
                              capture_output=True, text=True, timeout=120, check=False)
        assert proc.returncode == 0, proc.stderr
        return proc
