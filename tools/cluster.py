#!/usr/bin/env python3
"""The integration tier's local control plane: a module and a CLI.

    python -m tools.cluster up     [--state-dir DIR] [--bin-dir DIR] [--no-build] [--timeout S]
    python -m tools.cluster down   [--state-dir DIR]
    python -m tools.cluster status [--state-dir DIR]
    python -m tools.cluster env    [--state-dir DIR]      # eval "$(python -m tools.cluster env)"

``up`` starts etcd, kube-apiserver, kube-controller-manager, kube-scheduler and the ``kwok`` controller as
child processes (binaries from tools/testbin.sh), all on 127.0.0.1 with ports picked at runtime, then creates
the simulated nodes of tools/fakenodes.py and waits until they are Ready. It reuses a healthy cluster already
running from the same state directory. ``down`` stops exactly the processes recorded in the state directory
(SIGTERM, then SIGKILL) and deletes the etcd data. Nothing is installed outside the state directory, which
defaults to ``~/.cache/pinserve/cluster`` (``$PINSERVE_CACHE/cluster``).
"""

from __future__ import annotations

import argparse
import json
import secrets
import shutil
import ssl
import sys
import time
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from tools import components
from tools.binaries import (
    CLUSTER_BINARIES,
    COMPONENTS,
    REPO_ROOT,
    TOOLS_DIR,
    build_binaries,
    cache_root,
    cached_bin_dir,
    expected_bin_dir,
    missing_binaries,
    read_versions,
    resolve_bin_dir,
)
from tools.components import CONTROLLERS, KWOK_CONFIG_DIR, REAL_NODE_NAME, SA_ISSUER, SERVICE_CIDR
from tools.kubeutil import (
    FIELD_MANAGER,
    SIMULATED_NODE_SELECTOR,
    ClusterError,
    IntegrationCluster,
    Kube,
    ProcessRecord,
    free_ports,
    log,
    node_blocking_taints,
    node_ready,
    proc_start_time,
    tail,
    wait_until,
)
from tools.pki import generate_rsa_key_pair, last_pem_certificate, make_kubelet_client_pki, write_kubeconfig
from tools.statedir import ClusterState, StateDir, default_state_dir

__all__ = [
    "CLUSTER_BINARIES", "COMPONENTS", "CONTROLLERS", "FIELD_MANAGER", "KWOK_CONFIG_DIR", "REAL_NODE_NAME", "REPO_ROOT",
    "SA_ISSUER", "SERVICE_CIDR", "SIMULATED_NODE_SELECTOR", "TOOLS_DIR", "ClusterError", "ClusterState",
    "IntegrationCluster", "Kube", "LocalCluster", "ProcessRecord", "StateDir", "build_binaries", "cache_root",
    "cached_bin_dir", "default_state_dir", "expected_bin_dir", "free_ports", "generate_rsa_key_pair",
    "last_pem_certificate", "log", "main", "missing_binaries", "node_blocking_taints", "node_ready",
    "proc_start_time", "read_versions", "resolve_bin_dir", "tail", "wait_until", "write_kubeconfig",
]

class LocalCluster(StateDir):
    """One control plane living in ``state_dir``: ``up`` starts (or reuses) it, ``down`` stops it."""

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
        tokens = {user: secrets.token_urlsafe(32) for user in components.TOKEN_USERS}
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
        token_file.write_text(components.token_file(tokens))
        _, kubelet_client_crt, kubelet_client_key = make_kubelet_client_pki(pki)
        token_file.chmod(0o600)
        self._timed("keys", started)

        # etcd
        started = time.monotonic()
        etcd_url = f"http://127.0.0.1:{ports['etcd']}"
        peer_url = f"http://127.0.0.1:{ports['etcd-peer']}"
        self._spawn(
            state,
            "etcd",
            components.etcd(self.etcd_dir, etcd_url, peer_url),
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
            components.apiserver(pki, etcd_url=etcd_url, port=api_port, token_file=token_file,
                                 kubelet_client_crt=kubelet_client_crt, kubelet_client_key=kubelet_client_key),
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
            components.controller_manager(pki, kcm_config, ports['controller-manager']),
        )
        sched_config = kubeconfigs / "scheduler.kubeconfig"
        self._spawn(
            state,
            "kube-scheduler",
            components.scheduler(pki, sched_config, ports['scheduler']),
        )
        self._spawn(
            state,
            "kwok",
            components.kwok(kubeconfigs / 'kwok.kubeconfig'),
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
            from tools import fakenodes  # noqa: PLC0415  (imports pinserve.topology; only needed here)

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


# -- CLI ---------------------------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tools.cluster", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
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
                f'# cluster ready; use it with:\n#   eval "$(cd {REPO_ROOT} && python -m tools.cluster env'
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
                raise ClusterError(f"no cluster in {cluster.state_dir}; run `python -m tools.cluster up` first")
            print(cluster.env_text(), end="")
    except ClusterError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
