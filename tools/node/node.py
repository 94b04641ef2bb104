"""The local real node: containerd and a kubelet with the static CPU manager, joined to a LocalCluster.

``LocalNode(cluster).up()`` installs what is missing (Debian packages; root needed), builds or reuses
the images (tools/node/images.py), records the host (tools/node/host.py), starts containerd and the
kubelet as child processes recorded by PID in ``<cluster state>/node/node.json``, imports the images
and waits until the node is Ready. ``down()`` deletes the pods on the node through the API (so the
kubelet tears their sandboxes down), stops the kubelet, kills whatever containers are left through
containerd, stops containerd, unmounts what is below the state directory and restores the host.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import platform
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

from tools.cluster import REAL_NODE_NAME, ClusterError, LocalCluster, log
from tools.kubeutil import Kube, ProcessRecord, free_ports, node_ready, proc_start_time, tail, wait_until
from tools.node import config
from tools.node.host import HostLedger, mounts_below
from tools.node.images import Image, ImageBuilder, build_node_images

#: Held while a real node starts or stops: one real node per host, whatever its state directory.
HOST_LOCK = Path("/run/lock/pinserve-realnode.lock")

#: Debian package -> a file it installs that we need.
PACKAGES = {
    "containerd": "/usr/bin/containerd",
    "runc": "/usr/sbin/runc",
    "containernetworking-plugins": "/usr/lib/cni/bridge",
    "buildah": "/usr/bin/buildah",
    "busybox-static": "/bin/busybox",
    "debootstrap": "/usr/sbin/debootstrap",
    "iptables": "/usr/sbin/iptables",
}


def unsupported_reason() -> str | None:
    """Why the real node cannot run here, or None."""
    if platform.system() != "Linux":
        return f"the real node needs Linux (this is {platform.system()})"
    if os.geteuid() != 0:
        return "the real node needs root (containerd, runc and the kubelet manage cgroups, mounts and netns)"
    if not Path("/sys/fs/cgroup").is_dir():
        return "no cgroup filesystem at /sys/fs/cgroup"
    return None


def missing_packages() -> list[str]:
    missing = [pkg for pkg, path in PACKAGES.items() if not Path(path).exists()]
    if "runc" in missing and shutil.which("runc"):
        missing.remove("runc")
    return missing


def install_packages() -> None:
    missing = missing_packages()
    if not missing:
        return
    reason = unsupported_reason()
    if reason:
        raise ClusterError(f"{reason}; install {' '.join(missing)} yourself")
    log(f"node: apt-get install {' '.join(missing)}")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for args in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", *missing]):
        proc = subprocess.run(args, capture_output=True, text=True, env=env, check=False)
        if proc.returncode != 0:
            raise ClusterError(f"{' '.join(args)} failed:\n{proc.stderr[-2000:]}")


class LocalNode:
    def __init__(self, cluster: LocalCluster) -> None:
        self.cluster = cluster
        self.layout = config.NodeLayout(cluster.state_dir / "node")
        self.ledger = HostLedger(self.layout.state_dir, config.BRIDGE)
        self.images: dict[str, Image] = {}
        self._children: dict[int, subprocess.Popen[bytes]] = {}

    @property
    def state_file(self) -> Path:
        return self.layout.state_dir / "node.json"

    def load(self) -> dict[str, Any]:
        if not self.state_file.is_file():
            return {"processes": [], "images": {}}
        data: dict[str, Any] = json.loads(self.state_file.read_text())
        return data

    def _save(self, data: dict[str, Any]) -> None:
        self.state_file.write_text(json.dumps(data, indent=1))

    def processes(self) -> list[ProcessRecord]:
        return [ProcessRecord(**p) for p in self.load()["processes"]]

    def running(self) -> bool:
        procs = self.processes()
        return bool(procs) and all(p.alive() for p in procs)

    def kube(self) -> Kube:
        return self.cluster.kube()

    # -- up -----------------------------------------------------------------------------------------

    @contextlib.contextmanager
    def _host_lock(self) -> Iterator[None]:
        """One real node per host: up and down of any state directory take this lock."""
        HOST_LOCK.parent.mkdir(parents=True, exist_ok=True)
        with open(HOST_LOCK, "w") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise ClusterError(f"another real node is starting or stopping on this host ({HOST_LOCK})") from None
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def foreign_node(self) -> str | None:
        """Why another kubelet (not this node's) seems to own the host, or None."""
        if self.ledger.load() is not None:
            return None  # ours, from this state directory
        taken = [str(p) for p in (Path("/sys/class/net") / config.BRIDGE, Path("/sys/fs/cgroup/cpu/kubepods"),
                                  Path("/sys/fs/cgroup/kubepods"), Path("/sys/fs/cgroup/kubepods.slice"))
                 if p.exists()]
        if taken:
            return (f"{', '.join(taken)} exist{'s' if len(taken) == 1 else ''} but this node did not create "
                    "them: another kubelet (or a real node from another state directory) runs here")
        return None

    def up(self, *, timeout: float = 240) -> dict[str, Image]:
        reason = unsupported_reason()
        if reason:
            raise ClusterError(reason)
        with self._host_lock():
            return self._up(timeout)

    def _token_current(self) -> bool:
        """The running kubelet holds this control plane's node token (a restarted control plane has new ones)."""
        ours = self.cluster.state_dir / "kubeconfigs" / "node.kubeconfig"
        try:
            return self.layout.kubelet_kubeconfig.read_text() == ours.read_text()
        except OSError:
            return False

    def _up(self, timeout: float) -> dict[str, Image]:
        foreign = self.foreign_node()
        if foreign:
            raise ClusterError(foreign)
        install_packages()
        state = self.cluster.load_state()
        if state is None:
            raise ClusterError(f"no control plane in {self.cluster.state_dir}: start it first")
        bin_dir = Path(state.bin_dir)
        if not (bin_dir / "kubelet").is_file():
            raise ClusterError(f"no kubelet in {bin_dir}: run tools/testbin.sh (it builds the kubelet)")
        started = time.monotonic()
        self.images = build_node_images(ImageBuilder())
        log(f"node: images ready in {time.monotonic() - started:.0f}s")
        if self.running() and not self._token_current():
            log("node: the control plane was restarted since the kubelet started; restarting the node")
            self._down(grace=30)
        if self.running():
            log("node: containerd and the kubelet are running; reusing them")
            self._import_images()
            self._wait_ready(timeout)
            return self.images
        self._stop_processes()
        self.layout.state_dir.mkdir(parents=True, exist_ok=True)
        self.ledger.record()
        self._save({"processes": [], "images": {k: asdict(v) | {"archive": str(v.archive)}
                                                for k, v in self.images.items()}})
        try:
            self._start_containerd()
            self._import_images()
            self._start_kubelet(bin_dir)
            self._wait_ready(timeout)
        except BaseException:
            log("node: start failed; tearing down what was started")
            self._down()
            raise
        log(f"node: {REAL_NODE_NAME} Ready in {time.monotonic() - started:.0f}s")
        return self.images

    def _spawn(self, name: str, args: list[str]) -> ProcessRecord:
        self.layout.logs_dir.mkdir(parents=True, exist_ok=True)
        log_path = self.layout.logs_dir / f"{name}.log"
        with open(log_path, "ab") as out:
            out.write(f"# {' '.join(args)}\n".encode())
            out.flush()
            proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                    cwd=self.layout.state_dir, start_new_session=True)
        record = ProcessRecord(name=name, pid=proc.pid, start_time=proc_start_time(proc.pid) or 0,
                               log=str(log_path))
        self._children[proc.pid] = proc
        data = self.load()
        data["processes"].append(asdict(record))
        self._save(data)
        return record

    def _alive_check(self, record: ProcessRecord) -> Any:
        def check() -> None:
            if not record.alive():
                raise ClusterError(f"{record.name} exited; last lines of {record.log}:\n{tail(Path(record.log))}")
        return check

    def _start_containerd(self) -> None:
        layout = self.layout
        for directory in (layout.containerd_dir, layout.cni_conf_dir, layout.cni_data_dir):
            directory.mkdir(parents=True, exist_ok=True)
        layout.containerd_config.write_text(config.containerd_toml(
            layout, sandbox_image=self.images["pause"].ref, cni_bin=config.cni_bin_dir()))
        (layout.cni_conf_dir / "10-pinserve.conflist").write_text(config.cni_conflist(layout))
        record = self._spawn("containerd", ["containerd", "--config", str(layout.containerd_config)])
        wait_until("containerd's socket", lambda: True if layout.containerd_socket.exists() else None,
                   timeout=60, check=self._alive_check(record))
        wait_until("containerd answers", lambda: True if self._ctr_ok("version") else None, timeout=60,
                   check=self._alive_check(record))

    def ctr(self, *args: str, check: bool = True) -> str:
        proc = subprocess.run(["ctr", "--address", str(self.layout.containerd_socket), "--namespace", "k8s.io",
                               *args], capture_output=True, text=True, check=False)
        if check and proc.returncode != 0:
            raise ClusterError(f"ctr {' '.join(args)} failed: {proc.stderr.strip()[-1500:]}")
        return proc.stdout

    def _ctr_ok(self, *args: str) -> bool:
        return subprocess.run(["ctr", "--address", str(self.layout.containerd_socket), *args],
                              capture_output=True, check=False).returncode == 0

    def _import_images(self) -> None:
        present = set(self.ctr("images", "ls", "-q").split())
        current = {image.ref for image in self.images.values()}
        repositories = {ref.rsplit(":", 1)[0] for ref in current}
        for ref in present - current:  # older builds of our images: the node keeps one of each
            # ... except the sandbox image containerd was started with: it stays until the next start.
            if ref.rsplit(":", 1)[0] in repositories and not ref.startswith("localhost/pinserve/pause:"):
                self.ctr("images", "rm", ref, check=False)
        for image in self.images.values():
            if image.ref in present:
                continue
            started = time.monotonic()
            self.ctr("images", "import", "--snapshotter", "overlayfs", str(image.archive))
            log(f"node: imported {image.ref} in {time.monotonic() - started:.0f}s")

    def import_image(self, image: Image) -> None:
        if image.ref not in set(self.ctr("images", "ls", "-q").split()):
            self.ctr("images", "import", "--snapshotter", "overlayfs", str(image.archive))

    def _start_kubelet(self, bin_dir: Path) -> None:
        layout = self.layout
        layout.kubelet_dir.mkdir(parents=True, exist_ok=True)
        layout.pod_logs_dir.mkdir(parents=True, exist_ok=True)
        layout.resolv_conf.write_text("# pods on the local real node get no DNS servers\n")
        kubeconfigs = self.cluster.state_dir / "kubeconfigs"
        shutil.copy(kubeconfigs / "node.kubeconfig", layout.kubelet_kubeconfig)
        layout.kubelet_kubeconfig.chmod(0o600)
        port, healthz = free_ports(2)
        settings = config.kubelet_config(layout, port=port, healthz_port=healthz,
                                         client_ca=self.cluster.pki_dir / "kubelet-ca.crt")
        layout.kubelet_config.write_text(config.kubelet_config_yaml(settings))
        record = self._spawn("kubelet", config.kubelet_args(layout, kubeconfig=layout.kubelet_kubeconfig,
                                                            bin_dir=bin_dir))
        self._kubelet_check = self._alive_check(record)

    def _wait_ready(self, timeout: float) -> None:
        kube = self.kube()
        check = self._kubelet_check if hasattr(self, "_kubelet_check") else None

        def ready() -> bool | None:
            proc = kube.kubectl("get", "node", REAL_NODE_NAME, "-o", "json", check=False)
            return True if proc.returncode == 0 and node_ready(json.loads(proc.stdout)) else None

        wait_until(f"node {REAL_NODE_NAME} Ready", ready, timeout=timeout, check=check)

    # -- down ---------------------------------------------------------------------------------------

    def down(self, *, grace: float = 60) -> None:
        """Stop everything the node started and give the host back as it was. Safe to call twice."""
        with self._host_lock():
            self._down(grace=grace)

    def _down(self, *, grace: float = 60) -> None:
        procs = self.processes()
        kubelet_alive = any(p.name == "kubelet" and p.alive() for p in procs)
        if kubelet_alive and self.cluster.healthy():
            self._drain(grace)
        for name in ("kubelet",):
            self._stop_processes(only=name)
        if self.layout.containerd_socket.exists() and any(p.name == "containerd" and p.alive() for p in procs):
            self._kill_containers()
        self._stop_processes()
        self._kill_orphan_shims()
        for point in mounts_below(self.layout.state_dir):
            subprocess.run(["umount", "-l", point], check=False, capture_output=True)
        self.ledger.restore()
        if self.cluster.healthy():
            self.kube().kubectl("delete", "node", REAL_NODE_NAME, "--ignore-not-found", "--wait=false",
                                check=False)
        for sub in ("containerd", "kubelet", "cni", "pod-logs"):
            shutil.rmtree(self.layout.state_dir / sub, ignore_errors=True)
        self.state_file.unlink(missing_ok=True)

    def _drain(self, grace: float) -> None:
        kube = self.kube()
        selector = f"spec.nodeName={REAL_NODE_NAME}"
        kube.kubectl("delete", "pods", "-A", "--field-selector", selector, "--wait=false", check=False)

        def gone() -> bool | None:
            proc = kube.kubectl("get", "pods", "-A", "--field-selector", selector, "-o", "name", check=False)
            return True if proc.returncode == 0 and not proc.stdout.strip() else None

        try:
            wait_until("pods on the real node to go", gone, timeout=grace)
        except ClusterError as exc:
            log(f"node: {exc}; killing what is left through containerd")

    def _kill_containers(self) -> None:
        for task in self.ctr("tasks", "ls", "-q", check=False).split():
            self.ctr("tasks", "kill", "--all", "--signal", "SIGKILL", task, check=False)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and self.ctr("tasks", "ls", "-q", check=False).split():
            for task in self.ctr("tasks", "ls", "-q", check=False).split():
                self.ctr("tasks", "delete", "--force", task, check=False)
            time.sleep(0.5)
        for container in self.ctr("containers", "ls", "-q", check=False).split():
            self.ctr("containers", "delete", container, check=False)

    def _kill_orphan_shims(self) -> None:
        """containerd-shim processes started for our containerd (its socket in their command line)."""
        marker = str(self.layout.containerd_socket).encode()
        for proc_dir in Path("/proc").iterdir():
            if not proc_dir.name.isdigit():
                continue
            try:
                cmdline = (proc_dir / "cmdline").read_bytes()
            except OSError:
                continue
            if b"containerd-shim" in cmdline and marker in cmdline:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(int(proc_dir.name), signal.SIGKILL)

    def _stop_processes(self, *, only: str | None = None, grace: float = 20) -> None:
        data = self.load()
        for record in reversed(self.processes()):
            if only is not None and record.name != only:
                continue
            if record.alive():
                log(f"node: stopping {record.name} (pid {record.pid})")
                with contextlib.suppress(ProcessLookupError):
                    os.kill(record.pid, signal.SIGTERM)
                deadline = time.monotonic() + grace
                while record.alive() and time.monotonic() < deadline:
                    child = self._children.get(record.pid)
                    if child is not None:
                        with contextlib.suppress(subprocess.TimeoutExpired):
                            child.wait(timeout=0.2)
                    else:
                        time.sleep(0.2)
                if record.alive():
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(record.pid, signal.SIGKILL)
            data["processes"] = [p for p in data["processes"] if p["pid"] != record.pid]
        if self.state_file.is_file():
            self._save(data)

    def status(self) -> dict[str, Any]:
        return {"state_dir": str(self.layout.state_dir), "running": self.running(),
                "processes": [asdict(p) | {"alive": p.alive()} for p in self.processes()],
                "images": self.load().get("images", {})}
