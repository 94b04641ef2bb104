#!/usr/bin/env python3
"""The integration tier's local control plane: a module and a CLI.

    python tools/cluster.py up     [--state-dir DIR] [--bin-dir DIR] [--no-build] [--timeout S]
    python tools/cluster.py down   [--state-dir DIR]
    python tools/cluster.py status [--state-dir DIR]
    python tools/cluster.py env    [--state-dir DIR]      # eval "$(python tools/cluster.py env)"

``up`` starts etcd, kube-apiserver, kube-controller-manager, kube-scheduler and the ``kwok`` controller as
child processes (binaries from tools/testbin.sh), all on 127.0.0.1 with ports picked at runtime, then creates
the simulated nodes of tools/fakenodes.py and waits until they are Ready. It reuses a healthy cluster already
running from the same state directory. ``down`` stops exactly the processes recorded in the state directory
(SIGTERM, then SIGKILL) and deletes the etcd data. Nothing is installed outside the state directory, which
defaults to ``~/.cache/pinserve/cluster`` (``$PINSERVE_CACHE/cluster``).
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import fcntl
import json
import os
import secrets
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import yaml

TOOLS_DIR = Path(__file__).resolve().parent
REPO_ROOT = TOOLS_DIR.parent
KWOK_CONFIG_DIR = TOOLS_DIR / "kwok"

#: Start order; ``down`` stops in reverse.
COMPONENTS: tuple[str, ...] = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kwok")
CLUSTER_BINARIES: tuple[str, ...] = (*COMPONENTS, "kubectl")
SERVICE_CIDR = "10.96.0.0/16"
SA_ISSUER = "https://kubernetes.default.svc.cluster.local"
#: What the controller manager runs: enough for Deployments, Jobs, DaemonSets, StatefulSets, Services,
#: garbage collection, namespaces, service accounts and node health.
CONTROLLERS: tuple[str, ...] = (
    "serviceaccount-token-controller",
    "serviceaccount-controller",
    "namespace-controller",
    "garbage-collector-controller",
    "deployment-controller",
    "replicaset-controller",
    "job-controller",
    "cronjob-controller",
    "ttl-after-finished-controller",
    "daemonset-controller",
    "statefulset-controller",
    "disruption-controller",
    "endpoints-controller",
    "endpointslice-controller",
    "node-lifecycle-controller",
    "pod-garbage-collector-controller",
    "root-ca-certificate-publisher-controller",
    "clusterrole-aggregation-controller",
    "service-cidr-controller",
)
FIELD_MANAGER = "pinserve-tests"
SIMULATED_NODE_SELECTOR = "pinserve.io/simulated-node=true"

T = TypeVar("T")


class ClusterError(RuntimeError):
    """The control plane could not be started, reached or stopped; the message says why."""


def log(message: str) -> None:
    print(f"[cluster {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def cache_root() -> Path:
    return Path(os.environ.get("PINSERVE_CACHE", Path.home() / ".cache" / "pinserve"))


def default_state_dir() -> Path:
    return cache_root() / "cluster"


# -- binaries ----------------------------------------------------------------------------------------------


def read_versions() -> dict[str, str]:
    versions: dict[str, str] = {}
    for raw in (TOOLS_DIR / "versions.env").read_text().splitlines():
        line = raw.strip()
        if line and not line.startswith("#") and "=" in line:
            key, _, value = line.partition("=")
            versions[key.strip()] = value.strip().strip("'\"")
    return versions


def expected_bin_dir() -> Path:
    """Where tools/testbin.sh links the binaries of the versions pinned in tools/versions.env."""
    v = read_versions()
    name = f"current-{v['KUBERNETES_VERSION']}-{v['ETCD_VERSION']}-{v['KWOK_VERSION']}-{v['HELM_VERSION']}"
    return cache_root() / "bin" / name


def missing_binaries(bin_dir: Path, names: Iterable[str] = CLUSTER_BINARIES) -> list[str]:
    return [n for n in names if not os.access(bin_dir / n, os.X_OK)]


def cached_bin_dir() -> Path | None:
    """The binaries' directory if every cluster binary is there (``$PINSERVE_BIN_DIR`` wins), else None."""
    env = os.environ.get("PINSERVE_BIN_DIR")
    candidate = Path(env) if env else expected_bin_dir()
    return candidate if not missing_binaries(candidate) else None


def build_binaries() -> Path:
    """Run tools/testbin.sh (builds on first use, cached afterwards); returns the bin directory."""
    log("running tools/testbin.sh (reuses its cache; a cold build takes tens of minutes)")
    started = time.monotonic()
    proc = subprocess.run(["bash", str(TOOLS_DIR / "testbin.sh")], stdout=subprocess.PIPE, text=True, check=False)
    if proc.returncode != 0:
        raise ClusterError(f"tools/testbin.sh failed with exit code {proc.returncode} (see its output above)")
    lines = proc.stdout.strip().splitlines()
    if not lines:
        raise ClusterError("tools/testbin.sh printed no bin directory")
    bin_dir = Path(lines[-1])
    log(f"binaries ready in {time.monotonic() - started:.1f}s: {bin_dir}")
    return bin_dir


def resolve_bin_dir(bin_dir: Path | None = None, *, build: bool = True) -> Path:
    if bin_dir is None:
        bin_dir = cached_bin_dir()
    if bin_dir is None:
        if not build:
            raise ClusterError(
                f"control plane binaries not found in {expected_bin_dir()}; build them with tools/testbin.sh"
            )
        bin_dir = build_binaries()
    missing = missing_binaries(bin_dir)
    if missing:
        raise ClusterError(f"{bin_dir} lacks {', '.join(missing)}; rebuild with tools/testbin.sh")
    return bin_dir


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
        import fakenodes  # noqa: PLC0415  (imports pinserve.topology)

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


# -- certificates and keys ---------------------------------------------------------------------------------


def generate_rsa_key_pair(private_path: Path, public_path: Path) -> None:
    """The service-account signing key pair (PEM); the `cryptography` package if present, else openssl."""
    try:
        from cryptography.hazmat.primitives import (  # type: ignore[import-not-found,unused-ignore]  # noqa: PLC0415
            serialization,
        )
        from cryptography.hazmat.primitives.asymmetric import (  # type: ignore[import-not-found,unused-ignore]  # noqa: PLC0415
            rsa,
        )
    except ImportError:
        openssl = shutil.which("openssl")
        if openssl is None:
            raise ClusterError(
                "need openssl or the Python `cryptography` package to make the service-account key"
            ) from None
        subprocess.run([openssl, "genrsa", "-out", str(private_path), "2048"], check=True, capture_output=True)
        subprocess.run(
            [openssl, "rsa", "-in", str(private_path), "-pubout", "-out", str(public_path)],
            check=True,
            capture_output=True,
        )
    else:
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        private_path.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.TraditionalOpenSSL,
                serialization.NoEncryption(),
            )
        )
        public_path.write_bytes(
            key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        )
    private_path.chmod(0o600)


def last_pem_certificate(bundle: str) -> str:
    """The last certificate of a PEM bundle: the CA that kube-apiserver appends to its self-signed cert."""
    marker = "-----BEGIN CERTIFICATE-----"
    parts = [marker + p for p in bundle.split(marker)[1:]]
    if not parts:
        raise ClusterError("the API server's certificate file holds no PEM certificate")
    return parts[-1].strip() + "\n"


def write_kubeconfig(path: Path, *, server: str, ca_pem: str, user: str, token: str) -> None:
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": "pinserve-local",
                "cluster": {
                    "server": server,
                    "certificate-authority-data": base64.b64encode(ca_pem.encode()).decode(),
                },
            }
        ],
        "users": [{"name": user, "user": {"token": token}}],
        "contexts": [{"name": "pinserve-local", "context": {"cluster": "pinserve-local", "user": user}}],
        "current-context": "pinserve-local",
    }
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    path.chmod(0o600)


# -- the cluster -------------------------------------------------------------------------------------------


@dataclass
class ClusterState:
    """What ``state.json`` in the state directory records."""

    bin_dir: str
    ports: dict[str, int]
    processes: list[ProcessRecord] = field(default_factory=list)
    admin_token: str = ""

    def to_json(self) -> str:
        return json.dumps(
            {
                "bin_dir": self.bin_dir,
                "ports": self.ports,
                "admin_token": self.admin_token,
                "processes": [vars(p) for p in self.processes],
            },
            indent=2,
        )

    @classmethod
    def from_json(cls, text: str) -> ClusterState:
        data = json.loads(text)
        return cls(
            bin_dir=data["bin_dir"],
            ports={k: int(v) for k, v in data["ports"].items()},
            admin_token=data.get("admin_token", ""),
            processes=[ProcessRecord(**p) for p in data.get("processes", [])],
        )


class LocalCluster:
    """One control plane living in ``state_dir``."""

    def __init__(self, state_dir: Path | None = None, bin_dir: Path | None = None) -> None:
        self.state_dir = Path(state_dir or default_state_dir()).expanduser().resolve()
        self._bin_dir = bin_dir
        self._children: dict[int, subprocess.Popen[bytes]] = {}
        self.timings: dict[str, float] = {}
        #: True when the last ``up`` reused a cluster that was already running.
        self.reused = False

    # paths
    @property
    def kubeconfig(self) -> Path:
        return self.state_dir / "kubeconfig"

    @property
    def state_file(self) -> Path:
        return self.state_dir / "state.json"

    @property
    def logs_dir(self) -> Path:
        return self.state_dir / "logs"

    @property
    def pki_dir(self) -> Path:
        return self.state_dir / "pki"

    @property
    def etcd_dir(self) -> Path:
        return self.state_dir / "etcd"

    @property
    def bin_dir(self) -> Path:
        state = self.load_state()
        if state is not None:
            return Path(state.bin_dir)
        return resolve_bin_dir(self._bin_dir, build=False)

    def kube(self) -> Kube:
        return Kube(self.kubeconfig, self.bin_dir)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        with open(self.state_dir / ".lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def load_state(self) -> ClusterState | None:
        try:
            return ClusterState.from_json(self.state_file.read_text())
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def _save_state(self, state: ClusterState) -> None:
        tmp = self.state_file.with_suffix(".tmp")
        tmp.write_text(state.to_json())
        tmp.chmod(0o600)
        tmp.replace(self.state_file)
        (self.state_dir / "pids").write_text("".join(f"{p.name} {p.pid}\n" for p in state.processes))

    def env_text(self, bin_dir: Path | None = None) -> str:
        bin_dir = bin_dir or self.bin_dir
        return f"export KUBECONFIG={self.kubeconfig}\nexport PATH={bin_dir}:$PATH\n"

    # health

    def _ssl_context(self) -> ssl.SSLContext:
        ca = self.pki_dir / "ca.crt"
        if ca.is_file():
            return ssl.create_default_context(cafile=str(ca))
        bundle = self.pki_dir / "apiserver" / "apiserver.crt"
        return ssl.create_default_context(cafile=str(bundle))

    def _apiserver_get(self, state: ClusterState, path: str, timeout: float = 5) -> tuple[int, str]:
        url = f"https://127.0.0.1:{state.ports['apiserver']}{path}"
        request = urllib.request.Request(url, headers={"Authorization": f"Bearer {state.admin_token}"})
        try:
            with urllib.request.urlopen(request, timeout=timeout, context=self._ssl_context()) as resp:
                return int(resp.status), resp.read().decode(errors="replace")
        except urllib.error.HTTPError as exc:
            return int(exc.code), exc.read().decode(errors="replace")

    def healthy(self) -> bool:
        """Every recorded process alive (same PID and start time) and /readyz answering ok."""
        state = self.load_state()
        if state is None or {p.name for p in state.processes} != set(COMPONENTS):
            return False
        if not all(p.alive() for p in state.processes):
            return False
        try:
            status, _ = self._apiserver_get(state, "/readyz")
        except (OSError, ssl.SSLError):
            return False
        return status == 200

    # up

    def up(
        self,
        *,
        nodes: Sequence[dict[str, Any]] | None = None,
        build: bool = True,
        timeout: float = 180,
    ) -> Kube:
        """Start the control plane (or reuse a healthy one) and make sure ``nodes`` exist and are Ready.

        ``nodes`` defaults to tools/fakenodes.py's default nodes.
        """
        with self._locked():
            t0 = time.monotonic()
            self.timings = {}
            if self.healthy():
                self.reused = True
                state = self.load_state()
                assert state is not None
                log(f"reusing the healthy cluster in {self.state_dir}")
            else:
                self.reused = False
                if self.load_state() is not None:
                    log(f"{self.state_dir} holds a cluster that is not healthy; stopping what is left of it")
                    self._stop()
                    self.timings["stop-stale"] = time.monotonic() - t0
                bin_dir = resolve_bin_dir(self._bin_dir, build=build)
                self.timings["binaries"] = time.monotonic() - t0 - self.timings.get("stop-stale", 0)
                state = self._start(bin_dir, timeout=timeout)
            kube = Kube(self.kubeconfig, Path(state.bin_dir))
            self._ensure_nodes(kube, state, nodes, timeout=timeout)
            (self.state_dir / "env").write_text(self.env_text(Path(state.bin_dir)))
            self.timings["total"] = time.monotonic() - t0
            log(
                "cluster up in {:.1f}s ({})".format(
                    self.timings["total"],
                    ", ".join(f"{k} {v:.1f}s" for k, v in self.timings.items() if k != "total"),
                )
            )
            return kube

    def _spawn(
        self,
        state: ClusterState,
        name: str,
        args: list[str],
        *,
        env: dict[str, str] | None = None,
    ) -> ProcessRecord:
        binary = Path(state.bin_dir) / name
        log_path = self.logs_dir / f"{name}.log"
        with open(log_path, "wb") as out:
            out.write(f"# {binary} {' '.join(args)}\n".encode())
            out.flush()
            proc = subprocess.Popen(
                [str(binary), *args],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=self.state_dir,
                env={**os.environ, **(env or {})},
                start_new_session=True,  # survives the `up` CLI; Ctrl-C in a terminal does not reach it
            )
        start = proc_start_time(proc.pid)
        record = ProcessRecord(name=name, pid=proc.pid, start_time=start or 0, log=str(log_path))
        self._children[proc.pid] = proc
        state.processes.append(record)
        self._save_state(state)  # recorded at once, so `down` can stop a half-started cluster
        return record

    def _check_alive(self, state: ClusterState) -> Callable[[], None]:
        def check() -> None:
            for p in state.processes:
                child = self._children.get(p.pid)
                code = child.poll() if child is not None else None
                if (child is not None and code is not None) or not p.alive():
                    raise ClusterError(
                        f"{p.name} (pid {p.pid}) exited"
                        + (f" with code {code}" if code is not None else "")
                        + f"; last lines of {p.log}:\n{tail(Path(p.log))}"
                    )

        return check

    def _timed(self, key: str, started: float) -> None:
        self.timings[key] = time.monotonic() - started
        log(f"{key} ready in {self.timings[key]:.1f}s")

    def _start(self, bin_dir: Path, *, timeout: float) -> ClusterState:
        for sub in ("etcd", "pki", "kwok", "kubeconfigs"):
            shutil.rmtree(self.state_dir / sub, ignore_errors=True)
        for sub in ("etcd", "pki/apiserver", "pki/kube-controller-manager", "pki/kube-scheduler", "kwok"):
            (self.state_dir / sub).mkdir(parents=True, exist_ok=True)
        (self.state_dir / "kubeconfigs").mkdir(mode=0o700, exist_ok=True)
        self.etcd_dir.chmod(0o700)
        self.logs_dir.mkdir(exist_ok=True)
        for stale in ("kubeconfig", "env"):
            (self.state_dir / stale).unlink(missing_ok=True)

        names = ("etcd", "etcd-peer", "apiserver", "controller-manager", "scheduler")
        ports = dict(zip(names, free_ports(len(names)), strict=True))
        state = ClusterState(bin_dir=str(bin_dir), ports=ports)
        tokens = {user: secrets.token_urlsafe(32) for user in ("admin", "kcm", "scheduler", "kwok")}
        state.admin_token = tokens["admin"]
        self._save_state(state)
        check = self._check_alive(state)
        try:
            self._start_components(state, tokens, check, timeout=timeout)
        except BaseException:
            log("start failed; stopping the components started so far")
            self._stop()
            raise
        return state

    def _start_components(
        self, state: ClusterState, tokens: dict[str, str], check: Callable[[], None], *, timeout: float
    ) -> None:
        pki, ports = self.pki_dir, state.ports
        started = time.monotonic()
        generate_rsa_key_pair(pki / "sa.key", pki / "sa.pub")
        token_file = pki / "tokens.csv"
        token_file.write_text(
            f'{tokens["admin"]},pinserve-admin,pinserve-admin,"system:masters"\n'
            f"{tokens['kcm']},system:kube-controller-manager,system:kube-controller-manager\n"
            f"{tokens['scheduler']},system:kube-scheduler,system:kube-scheduler\n"
            f'{tokens["kwok"]},kwok-controller,kwok-controller,"system:masters"\n'
        )
        token_file.chmod(0o600)
        self._timed("keys", started)

        # etcd
        started = time.monotonic()
        etcd_url = f"http://127.0.0.1:{ports['etcd']}"
        peer_url = f"http://127.0.0.1:{ports['etcd-peer']}"
        self._spawn(
            state,
            "etcd",
            [
                "--name=pinserve",
                f"--data-dir={self.etcd_dir}",
                f"--listen-client-urls={etcd_url}",
                f"--advertise-client-urls={etcd_url}",
                f"--listen-peer-urls={peer_url}",
                f"--initial-advertise-peer-urls={peer_url}",
                f"--initial-cluster=pinserve={peer_url}",
                "--initial-cluster-state=new",
                "--unsafe-no-fsync=true",  # a throw-away test store: speed over durability
                "--quota-backend-bytes=2147483648",
                "--log-level=warn",
            ],
        )

        def etcd_healthy() -> bool | None:
            with urllib.request.urlopen(f"{etcd_url}/health", timeout=2) as resp:
                return True if json.loads(resp.read()).get("health") == "true" else None

        wait_until("etcd /health", etcd_healthy, timeout=timeout, check=check)
        self._timed("etcd", started)

        # kube-apiserver
        started = time.monotonic()
        api_port = ports["apiserver"]
        self._spawn(
            state,
            "kube-apiserver",
            [
                f"--etcd-servers={etcd_url}",
                "--bind-address=127.0.0.1",
                "--advertise-address=127.0.0.1",
                f"--secure-port={api_port}",
                f"--cert-dir={pki / 'apiserver'}",
                f"--token-auth-file={token_file}",
                "--authorization-mode=Node,RBAC",
                f"--service-account-issuer={SA_ISSUER}",
                f"--service-account-key-file={pki / 'sa.pub'}",
                f"--service-account-signing-key-file={pki / 'sa.key'}",
                f"--service-cluster-ip-range={SERVICE_CIDR}",
                # The advertise address is loopback, which an Endpoints object may not hold.
                "--endpoint-reconciler-type=none",
                "--allow-privileged=true",
                "--profiling=false",
                "--v=1",
            ],
        )
        bundle = pki / "apiserver" / "apiserver.crt"
        wait_until(
            "kube-apiserver's self-signed certificate",
            lambda: True if bundle.is_file() else None,
            timeout=timeout,
            check=check,
        )
        # The CA that signed the serving cert is the last certificate of the bundle the API server wrote.
        wait_until(
            "the certificate bundle",
            lambda: True if "END CERTIFICATE" in bundle.read_text() else None,
            timeout=10,
            check=check,
        )
        ca_pem = last_pem_certificate(bundle.read_text())
        (pki / "ca.crt").write_text(ca_pem)
        server = f"https://127.0.0.1:{api_port}"
        kubeconfigs = self.state_dir / "kubeconfigs"
        for user, token in tokens.items():
            write_kubeconfig(kubeconfigs / f"{user}.kubeconfig", server=server, ca_pem=ca_pem, user=user, token=token)
        write_kubeconfig(self.kubeconfig, server=server, ca_pem=ca_pem, user="pinserve-admin", token=tokens["admin"])

        def apiserver_ready() -> bool | None:
            status, _ = self._apiserver_get(state, "/readyz", timeout=3)
            return True if status == 200 else None

        wait_until("kube-apiserver /readyz", apiserver_ready, timeout=timeout, check=check, interval=0.3)
        self._timed("kube-apiserver", started)

        # controller manager, scheduler and kwok start together
        started = time.monotonic()
        kcm_config = kubeconfigs / "kcm.kubeconfig"
        self._spawn(
            state,
            "kube-controller-manager",
            [
                f"--kubeconfig={kcm_config}",
                "--bind-address=127.0.0.1",
                f"--secure-port={ports['controller-manager']}",
                f"--cert-dir={pki / 'kube-controller-manager'}",
                "--leader-elect=false",
                "--use-service-account-credentials=true",
                f"--service-account-private-key-file={pki / 'sa.key'}",
                f"--root-ca-file={pki / 'ca.crt'}",
                f"--service-cluster-ip-range={SERVICE_CIDR}",
                "--cluster-name=pinserve",
                f"--controllers={','.join(CONTROLLERS)}",
                "--concurrent-gc-syncs=5",
                "--profiling=false",
                "--v=1",
            ],
        )
        sched_config = kubeconfigs / "scheduler.kubeconfig"
        self._spawn(
            state,
            "kube-scheduler",
            [
                f"--kubeconfig={sched_config}",
                "--bind-address=127.0.0.1",
                f"--secure-port={ports['scheduler']}",
                f"--cert-dir={pki / 'kube-scheduler'}",
                "--leader-elect=false",
                "--profiling=false",
                "--v=1",
            ],
        )
        self._spawn(
            state,
            "kwok",
            [
                f"--kubeconfig={kubeconfigs / 'kwok.kubeconfig'}",
                f"--config={KWOK_CONFIG_DIR / 'kwok.yaml'}",
                f"--config={KWOK_CONFIG_DIR / 'node-stages.yaml'}",
                f"--config={KWOK_CONFIG_DIR / 'pod-stages.yaml'}",
                "--manage-nodes-with-annotation-selector=kwok.x-k8s.io/node=fake",
                "--node-lease-duration-seconds=40",
            ],
            # kwok also reads ~/.kwok/kwok.yaml when it exists; keep its work dir in the state directory.
            env={"KWOK_WORKDIR": str(self.state_dir / "kwok")},
        )
        insecure = ssl.create_default_context()
        insecure.check_hostname = False
        insecure.verify_mode = ssl.CERT_NONE  # their serving certs are in-process self-signed; loopback only

        def healthz(port: int) -> Callable[[], bool | None]:
            def probe() -> bool | None:
                url = f"https://127.0.0.1:{port}/healthz"
                with urllib.request.urlopen(url, timeout=2, context=insecure) as resp:
                    return True if resp.status == 200 else None

            return probe

        wait_until(
            "kube-controller-manager /healthz",
            healthz(ports["controller-manager"]),
            timeout=timeout,
            check=check,
            interval=0.3,
        )
        wait_until("kube-scheduler /healthz", healthz(ports["scheduler"]), timeout=timeout, check=check, interval=0.3)
        self._timed("controllers", started)

    def _ensure_nodes(
        self,
        kube: Kube,
        state: ClusterState,
        nodes: Sequence[dict[str, Any]] | None,
        *,
        timeout: float,
    ) -> None:
        if nodes is None:
            import fakenodes  # noqa: PLC0415  (imports pinserve.topology; only needed here)

            nodes = fakenodes.default_nodes()
        check = self._check_alive(state)
        started = time.monotonic()
        # The default ServiceAccount is what lets the ServiceAccount admission plugin accept pods.
        wait_until(
            "the default ServiceAccount",
            lambda: True if kube.exists("serviceaccount", "default", "-n", "default") else None,
            timeout=timeout,
            check=check,
            interval=0.3,
        )
        self._timed("default-serviceaccount", started)
        started = time.monotonic()
        existing = {n["metadata"]["name"] for n in kube.get_json("nodes")["items"]}
        missing = [n for n in nodes if n["metadata"]["name"] not in existing]
        if missing:  # one kubectl call, however many nodes (tools/bench_operator.py makes hundreds)
            kube.kubectl("create", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List", "items": missing}))
        present = [n for n in nodes if n["metadata"]["name"] in existing]
        if present:  # refresh labels and annotations (a Node's status is only taken at creation)
            kube.apply_objects(
                [
                    {"apiVersion": "v1", "kind": "Node", "metadata": n["metadata"], "spec": n.get("spec", {})}
                    for n in present
                ]
            )
        kube.wait_nodes_ready([n["metadata"]["name"] for n in nodes], timeout=timeout, check=check)
        self._timed("nodes", started)

    # down

    def down(self) -> None:
        with self._locked():
            self._stop()

    def _stop(self, grace: float = 10) -> None:
        state = self.load_state()
        if state is not None:
            running = [p for p in reversed(state.processes) if p.alive()]
            for p in running:
                log(f"stopping {p.name} (pid {p.pid})")
                with contextlib.suppress(ProcessLookupError):
                    os.kill(p.pid, signal.SIGTERM)
            deadline = time.monotonic() + grace
            for p in running:
                child = self._children.get(p.pid)
                while p.alive() and time.monotonic() < deadline:
                    if child is not None:
                        with contextlib.suppress(subprocess.TimeoutExpired):
                            child.wait(timeout=0.1)
                    else:
                        time.sleep(0.1)
                if p.alive():
                    log(f"{p.name} (pid {p.pid}) ignored SIGTERM for {grace:.0f}s; sending SIGKILL")
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(p.pid, signal.SIGKILL)
                if child is not None:
                    with contextlib.suppress(subprocess.TimeoutExpired):
                        child.wait(timeout=5)
                    self._children.pop(p.pid, None)
        for sub in ("etcd", "pki", "kwok", "kubeconfigs"):
            shutil.rmtree(self.state_dir / sub, ignore_errors=True)
        for name in ("state.json", "pids", "kubeconfig", "env"):
            (self.state_dir / name).unlink(missing_ok=True)

    # status

    def status(self) -> dict[str, Any]:
        state = self.load_state()
        if state is None:
            return {"stateDir": str(self.state_dir), "running": False, "components": {}}
        components = {p.name: {"pid": p.pid, "alive": p.alive(), "log": p.log} for p in state.processes}
        result: dict[str, Any] = {
            "stateDir": str(self.state_dir),
            "kubeconfig": str(self.kubeconfig),
            "binDir": state.bin_dir,
            "ports": state.ports,
            "components": components,
            "healthy": self.healthy(),
        }
        if result["healthy"]:
            nodes = Kube(self.kubeconfig, Path(state.bin_dir)).get_json("nodes")["items"]
            result["nodes"] = {n["metadata"]["name"]: node_ready(n) for n in nodes}
        result["running"] = any(c["alive"] for c in components.values())
        return result


# -- CLI ---------------------------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="cluster.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)
    for name in ("up", "down", "status", "env"):
        p = sub.add_parser(name)
        p.add_argument("--state-dir", type=Path, default=None, help="default: ~/.cache/pinserve/cluster")
        if name == "up":
            p.add_argument("--bin-dir", type=Path, default=None, help="default: what tools/testbin.sh built")
            p.add_argument("--no-build", action="store_true", help="fail instead of running tools/testbin.sh")
            p.add_argument("--timeout", type=float, default=180, help="seconds per wait (default 180)")
    args = parser.parse_args(argv)
    cluster = LocalCluster(args.state_dir, getattr(args, "bin_dir", None))
    try:
        if args.command == "up":
            cluster.up(build=not args.no_build, timeout=args.timeout)
            print(
                f'# cluster ready; use it with:\n#   eval "$(python {TOOLS_DIR / "cluster.py"} env'
                + (f" --state-dir {cluster.state_dir}" if args.state_dir else "")
                + ')"'
            )
            print(cluster.env_text(), end="")
        elif args.command == "down":
            cluster.down()
            log(f"stopped; {cluster.state_dir} cleaned (logs kept in {cluster.logs_dir})")
        elif args.command == "status":
            status = cluster.status()
            print(json.dumps(status, indent=2))
            return 0 if status.get("healthy") else 1
        elif args.command == "env":
            if cluster.load_state() is None:
                raise ClusterError(f"no cluster in {cluster.state_dir}; run `tools/cluster.py up` first")
            print(cluster.env_text(), end="")
    except ClusterError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
