"""kubectl against one cluster, polling, and the process bookkeeping the local control plane relies on."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import yaml

if TYPE_CHECKING:
    from tools.cluster import LocalCluster

FIELD_MANAGER = "pinserve-tests"
SIMULATED_NODE_SELECTOR = "pinserve.io/simulated-node=true"

T = TypeVar("T")


class ClusterError(RuntimeError):
    """The control plane could not be started, reached or stopped; the message says why."""


def log(message: str) -> None:
    print(f"[cluster {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)



# -- processes ---------------------------------------------------------------------------------------------


def proc_start_time(pid: int) -> int | None:
    """The kernel's start time of ``pid`` (clock ticks since boot), None if there is no live process.

    Recorded next to every PID so that ``down`` never signals a recycled PID.
    """
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2 :].split()
    if fields[0] in ("Z", "X"):  # zombie or dead: exited
        return None
    return int(fields[19])


@dataclass
class ProcessRecord:
    name: str
    pid: int
    start_time: int
    log: str

    def alive(self) -> bool:
        return proc_start_time(self.pid) == self.start_time


def tail(path: Path, lines: int = 40) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError as exc:
        return f"(cannot read {path}: {exc})"
    return "\n".join(text.splitlines()[-lines:])


def free_ports(count: int) -> list[int]:
    """``count`` distinct free TCP ports on 127.0.0.1 (all held open until every one is chosen)."""
    socks: list[socket.socket] = []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def wait_until(
    what: str,
    probe: Callable[[], T | None],
    *,
    timeout: float,
    interval: float = 0.2,
    check: Callable[[], None] | None = None,
) -> T:
    """Poll ``probe`` until it returns something other than None; ``check`` raises when waiting is futile."""
    deadline = time.monotonic() + timeout
    last_error = ""
    while True:
        if check is not None:
            check()
        try:
            result = probe()
        except Exception as exc:  # a probe failing is the same as "not yet"
            result = None
            last_error = f"{type(exc).__name__}: {exc}"
        if result is not None:
            return result
        if time.monotonic() >= deadline:
            raise ClusterError(f"timed out after {timeout:.0f}s waiting for {what}. Last error: {last_error}")
        time.sleep(interval)


# -- kubectl helper ----------------------------------------------------------------------------------------


class Kube:
    """kubectl against one cluster, plus the waits and node helpers the tests need."""

    def __init__(self, kubeconfig: Path, bin_dir: Path) -> None:
        self.kubeconfig = Path(kubeconfig)
        self.bin_dir = Path(bin_dir)

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env["KUBECONFIG"] = str(self.kubeconfig)
        env["PATH"] = f"{self.bin_dir}{os.pathsep}{env.get('PATH', '')}"
        return env

    def kubectl(
        self, *args: str, input: str | None = None, check: bool = True, timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        cmd = [str(self.bin_dir / "kubectl"), "--kubeconfig", str(self.kubeconfig), *args]
        proc = subprocess.run(
            cmd, input=input, capture_output=True, text=True, timeout=timeout, check=False, env=self.env()
        )
        if check and proc.returncode != 0:
            raise ClusterError(
                f"kubectl {' '.join(args)} failed ({proc.returncode}): {proc.stderr.strip() or proc.stdout}"
            )
        return proc

    def get_json(self, *args: str) -> Any:
        return json.loads(self.kubectl("get", *args, "-o", "json").stdout)

    def apply_yaml(self, text: str, *, namespace: str | None = None) -> subprocess.CompletedProcess[str]:
        """Server-side apply of one or more YAML documents."""
        args = ["apply", "--server-side", "--force-conflicts", f"--field-manager={FIELD_MANAGER}", "-f", "-"]
        if namespace:
            args[1:1] = ["-n", namespace]
        return self.kubectl(*args, input=text)

    def apply_objects(self, objects: Sequence[dict[str, Any]]) -> subprocess.CompletedProcess[str]:
        return self.apply_yaml(yaml.safe_dump_all(list(objects), sort_keys=False))

    def install_crd(self, path: Path, name: str, *, timeout: float = 60) -> None:
        """Apply a CRD and wait until it is Established (polling: right after the apply there is no status
        yet, and `kubectl wait` fails on that instead of waiting)."""
        self.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(path))

        def established() -> bool | None:
            proc = self.kubectl("get", "crd", name, "-o",
                                'jsonpath={.status.conditions[?(@.type=="Established")].status}', check=False)
            return True if proc.stdout.strip() == "True" else None

        wait_until(f"CRD {name} to be Established", established, timeout=timeout)

    def exists(self, *args: str) -> bool:
        proc = self.kubectl("get", *args, "--ignore-not-found", "-o", "name", check=False)
        return proc.returncode == 0 and bool(proc.stdout.strip())

    # nodes

    def add_node(self, node: dict[str, Any], *, wait: bool = True, timeout: float = 60) -> None:
        """Create a simulated node (see tools/fakenodes.py), or update the metadata of an existing one.

        A Node's status (capacity, allocatable, addresses) is only taken at creation; KWOK keeps it.
        """
        name = node["metadata"]["name"]
        if self.exists("node", name):
            meta = {"apiVersion": "v1", "kind": "Node", "metadata": node["metadata"]}
            self.apply_objects([{**meta, "spec": node.get("spec", {})}])
        else:
            self.kubectl("create", "-f", "-", input=json.dumps(node))
        if wait:
            self.wait_nodes_ready([name], timeout=timeout)

    def remove_node(self, name: str, *, wait: bool = True, timeout: float = 60) -> None:
        self.kubectl("delete", "node", name, "--ignore-not-found", "--wait=false")
        if wait:
            wait_until(
                f"node {name} to be gone",
                lambda: True if not self.exists("node", name) else None,
                timeout=timeout,
            )

    def wait_nodes_ready(
        self, names: Iterable[str], *, timeout: float = 60, check: Callable[[], None] | None = None
    ) -> None:
        wanted = set(names)

        def probe() -> bool | None:
            items = self.get_json("nodes")["items"]
            ready = {n["metadata"]["name"] for n in items if node_ready(n) and not node_blocking_taints(n)}
            return True if wanted <= ready else None

        wait_until(f"nodes {', '.join(sorted(wanted))} to be Ready", probe, timeout=timeout, check=check)

    def wait_for(self, what: str, probe: Callable[[], T | None], *, timeout: float = 60, interval: float = 0.25) -> T:
        return wait_until(what, probe, timeout=timeout, interval=interval)


class IntegrationCluster(Kube):
    """What the integration tier's ``cluster`` fixture yields: kubectl plus simulated-node helpers."""

    def __init__(self, kubeconfig: Path, bin_dir: Path, local: LocalCluster | None = None) -> None:
        super().__init__(kubeconfig, bin_dir)
        #: The cluster this session started or reused; None for a cluster given by PINSERVE_KUBECONFIG.
        self.local = local

    def add_fake_node(
        self, name: str, snapshot: str, *, wait: bool = True, timeout: float = 60, **options: Any
    ) -> dict[str, Any]:
        """Create a simulated node from hwloc snapshot ``snapshot`` and (by default) wait until it is Ready.

        ``options`` go to ``fakenodes.make_fake_node``: ``topology=False`` for a node without the agent's
        labels and annotation, ``labels=``, ``annotations=``, ``taints=``, ``cpu_manager_policy=``, ...
        """
        from tools import fakenodes  # noqa: PLC0415  (imports pinserve.topology)

        node = fakenodes.make_fake_node(name, snapshot, **options)
        self.add_node(node, wait=wait, timeout=timeout)
        return node


def node_ready(node: dict[str, Any]) -> bool:
    for cond in node.get("status", {}).get("conditions", []) or []:
        if cond.get("type") == "Ready":
            return bool(cond.get("status") == "True")
    return False


def node_blocking_taints(node: dict[str, Any]) -> list[str]:
    """Taints the node lifecycle controller puts on nodes that are not (yet) healthy."""
    return [
        t["key"]
        for t in node.get("spec", {}).get("taints", []) or []
        if t.get("key", "").startswith("node.kubernetes.io/")
    ]
