"""A local control plane's state directory: what it records, the processes it started, their health.

:class:`StateDir` is the bookkeeping half of :class:`tools.cluster.LocalCluster`; starting the components is
the other half, in tools/cluster.py.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import signal
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tools.binaries import COMPONENTS, cache_root, resolve_bin_dir
from tools.kubeutil import ClusterError, Kube, ProcessRecord, log, node_ready, proc_start_time, tail


def default_state_dir() -> Path:
    return cache_root() / "cluster"


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


class StateDir:
    """The state directory of one control plane (``state.json``, logs, keys, etcd data) and its processes."""

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

