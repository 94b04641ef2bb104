"""`pinserve agent`: publish this node's CPU topology and its pinserve pods' cpusets.

Runs in the DaemonSet with the host's /sys at /host/sys and, of the kubelet's directory, only the
pod-resources socket's directory and the cpu_manager_state file (all read-only): each container's CPUs
come from the kubelet's pod-resources API, the CPU manager policy from the checkpoint, and without the
socket the checkpoint's own entries are used. ``--once`` makes one pass and exits; ``--dry-run`` prints
what would be published as JSON and makes no API call at all (the node patch is the one a node without
pinserve metadata would get; pods come from ``--pods-file``, since they cannot be listed).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import socket
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from pinserve.agent.cpumanager import DEFAULT_STATE_PATH
from pinserve.agent.loop import AgentConfig, NodeAgent, load_topology, write_count
from pinserve.agent.podresources import DEFAULT_SOCKET, CpuReader
from pinserve.agent.publisher import node_patch, pod_patches
from pinserve.kube import Credentials, KubeApi
from pinserve.topology.model import Topology

__all__ = ["build_parser", "main"]

log = logging.getLogger("pinserve.agent")

ENV_NODE = "PINSERVE_NODE_NAME"
ENV_SYSFS_ROOT = "PINSERVE_SYSFS_ROOT"
ENV_PROC_ROOT = "PINSERVE_PROC_ROOT"
ENV_STATE = "PINSERVE_CPU_MANAGER_STATE"
ENV_SOCKET = "PINSERVE_POD_RESOURCES_SOCKET"
ENV_INTERVAL = "PINSERVE_AGENT_INTERVAL_SECONDS"
ENV_STATE_INTERVAL = "PINSERVE_AGENT_STATE_INTERVAL_SECONDS"


def _env_float(name: str, default: float) -> float:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if value <= 0:
        raise SystemExit(f"pinserve agent: {name}={raw!r} is not a positive number of seconds")
    return value


def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if value <= 0:
        raise argparse.ArgumentTypeError("must be greater than 0")
    return value


def build_parser(prog: str = "pinserve agent") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--node", default=os.environ.get(ENV_NODE) or None,
                        help=f"the Node to publish on (default: ${ENV_NODE}; with --dry-run: the hostname)")
    parser.add_argument("--sysfs-root", default=os.environ.get(ENV_SYSFS_ROOT) or "/",
                        help=f"a filesystem root holding sys/, or a sysfs root (default: ${ENV_SYSFS_ROOT} or /)")
    parser.add_argument("--proc-root", default=os.environ.get(ENV_PROC_ROOT) or None,
                        help="filesystem root whose proc/cpuinfo gives the CPU model and ISA flags (default: "
                        f"${ENV_PROC_ROOT}, else beside --sysfs-root when it has proc/cpuinfo, else /)")
    parser.add_argument("--cpu-manager-state", default=os.environ.get(ENV_STATE) or DEFAULT_STATE_PATH,
                        help=f"the kubelet's CPU manager checkpoint (default: ${ENV_STATE} or {DEFAULT_STATE_PATH})")
    parser.add_argument("--pod-resources-socket", default=os.environ.get(ENV_SOCKET, DEFAULT_SOCKET),
                        help="the kubelet's pod-resources socket, where each container's CPUs are read; empty: "
                        f"use the checkpoint's entries (default: ${ENV_SOCKET} or {DEFAULT_SOCKET})")
    parser.add_argument("--once", action="store_true", help="one pass, then exit (non-zero on any failure)")
    parser.add_argument("--dry-run", action="store_true",
                        help="print the node patch and pod patches as JSON; no API calls (implies --once)")
    parser.add_argument("--pods-file",
                        help="with --dry-run: pods (JSON or YAML: a PodList, a list or documents; '-' for stdin)")
    parser.add_argument("--interval", type=_positive, default=None,
                        help=f"seconds between full republishing passes (default: ${ENV_INTERVAL} or 300)")
    parser.add_argument("--state-interval", type=_positive, default=None,
                        help=f"seconds between checks of the checkpoint file (default: ${ENV_STATE_INTERVAL} or 5)")
    parser.add_argument("--log-level", default=os.environ.get("PINSERVE_LOG_LEVEL", "INFO"),
                        choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    return parser


def _load_pods(path: str) -> list[dict[str, Any]]:
    text = sys.stdin.read() if path == "-" else Path(path).read_text(encoding="utf-8")
    pods: list[dict[str, Any]] = []
    for doc in yaml.safe_load_all(text):  # JSON is YAML
        if doc is None:
            continue
        if isinstance(doc, list):
            items = doc
        elif isinstance(doc, dict) and isinstance(doc.get("items"), list):
            items = doc["items"]
        else:
            items = [doc]
        for item in items:
            if not isinstance(item, dict) or item.get("kind", "Pod") != "Pod":
                raise ValueError(f"{path}: expected Pods, found {str(item)[:80]!r}")
            pods.append(item)
    return pods


def _dry_run(args: argparse.Namespace, node: str, topology: Topology) -> int:
    reader = CpuReader(args.cpu_manager_state, args.pod_resources_socket or None)
    try:
        state = reader.read(topology.cpus, force=True)
    finally:
        reader.close()
    out: dict[str, Any] = {
        "node": {"name": node, "patch": node_patch(None, topology, state)},
        "cpuManager": state.summary(),
    }
    if args.pods_file:
        try:
            pods = _load_pods(args.pods_file)
        except (OSError, ValueError, yaml.YAMLError) as exc:
            print(f"pinserve agent: cannot read --pods-file: {exc}", file=sys.stderr)
            return 2
        out["pods"] = [p.to_dict() for p in pod_patches(pods, node, state, topology)]
    else:
        print("pinserve agent: --dry-run without --pods-file: pods cannot be listed without the API, "
              "so only the node is shown", file=sys.stderr)
    json.dump(out, sys.stdout, indent=2)
    sys.stdout.write("\n")
    return 0


async def _run(config: AgentConfig, topology: Topology, once: bool) -> int:
    try:
        credentials = Credentials.from_environment()
    except Exception as exc:  # lightkube raises ConfigError (no file, no context), OSError, YAML errors
        print(f"pinserve agent: no API credentials (in-cluster service account or KUBECONFIG): {exc}",
              file=sys.stderr)
        return 1
    api = KubeApi(credentials)
    agent: NodeAgent | None = None
    try:
        agent = NodeAgent(api, config, topology=topology)
        log.info(
            "node %s: %d physical cores, %d threads/core, %d NUMA node(s), %s; cpu manager %s",
            config.node, topology.physical_cores, topology.threads_per_core, topology.numa_count,
            topology.model_name or "unknown model", agent.state.summary(),
        )
        if once:
            result = await agent.run_once()
            log.info("pass done: %s (requests %s)", result.summary(), dict(sorted(api.requests.items())))
            return 0 if result.ok else 1
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        try:
            await agent.run(stop)
        except Exception:
            log.exception("the agent failed; exiting so that it is restarted")
            return 1
        log.info("stopped; api-writes=%d over the run (requests %s)", write_count(api.requests),
                 dict(sorted(api.requests.items())))
        return 0
    finally:
        if agent is not None:
            agent.close()
        await api.close()


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    logging.basicConfig(level=args.log_level, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.pods_file and not args.dry_run:
        print("pinserve agent: --pods-file only goes with --dry-run", file=sys.stderr)
        return 2
    node = args.node or (socket.gethostname() if args.dry_run else None)
    if not node:
        print(f"pinserve agent: no node name: pass --node or set ${ENV_NODE} "
              "(the DaemonSet sets it from spec.nodeName)", file=sys.stderr)
        return 2
    try:
        topology = load_topology(args.sysfs_root, args.proc_root)
    except (OSError, ValueError) as exc:  # TopologyError is a ValueError
        print(f"pinserve agent: cannot read the CPU topology under {args.sysfs_root}: {exc}", file=sys.stderr)
        return 1
    if args.dry_run:
        return _dry_run(args, node, topology)
    config = AgentConfig(
        node=node,
        sysfs_root=args.sysfs_root,
        state_path=args.cpu_manager_state,
        pod_resources_socket=args.pod_resources_socket or None,
        proc_root=args.proc_root,
        interval=args.interval or _env_float(ENV_INTERVAL, 300.0),
        state_interval=args.state_interval or _env_float(ENV_STATE_INTERVAL, 5.0),
    )
    return asyncio.run(_run(config, topology, args.once))


if __name__ == "__main__":
    raise SystemExit(main())
