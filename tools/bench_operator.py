"""Operator benchmark against the local control plane: prints figures, asserts nothing.

N ModelServers are created at a steady rate on M simulated nodes while the operator runs as
its own process. Printed: time from create to Deployment present (p50/p99, measured with a
watch from this process), the operator's API requests by verb per create and per idle
minute (from its stats file), and the operator's RSS.

Usage: python -m tools.bench_operator [--modelservers 1000] [--nodes 200] [--rate 10] [--idle 60]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

from pinserve.kube import Credentials, KubeApi
from tools import cluster as cluster_tools
from tools import fakenodes

REPO = Path(__file__).resolve().parent.parent

NAMESPACE = "bench"
SNAPSHOTS = ("32intel64-2p8co2t+8ve", "8em64t-2s2ca2c", "64amd64-4s2n4ca2co")


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def read_stats(path: Path) -> dict[str, Any]:
    try:
        data: dict[str, Any] = json.loads(path.read_text())
        return data
    except (OSError, ValueError):
        return {"requests": {}, "reconciles": 0}


async def watch_deployments(api: KubeApi, seen: dict[str, float], stop: asyncio.Event) -> None:
    async for event in api.watch("Deployment", NAMESPACE, label_selector="app.kubernetes.io/managed-by=pinserve",
                                 timeout_seconds=3600):
        if stop.is_set():
            return
        if event.get("type") == "ADDED":
            seen.setdefault(event["object"]["metadata"]["name"], time.monotonic())


def modelserver(name: str) -> dict[str, Any]:
    return {
        "apiVersion": "pinserve.io/v1alpha1", "kind": "ModelServer",
        "metadata": {"name": name, "namespace": NAMESPACE},
        "spec": {"model": {"uri": "https://models.example.com/m.tar.gz"},
                 "resources": {"physicalCores": 1, "memory": "1Gi"},
                 "benchmark": {"enabled": False}},
    }


async def create_all(api: KubeApi, count: int, rate: float, created: dict[str, float]) -> None:
    interval = 1.0 / rate
    start = time.monotonic()
    tasks = []
    for i in range(count):
        name = f"ms-{i:05d}"
        delay = start + i * interval - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        created[name] = time.monotonic()
        tasks.append(asyncio.create_task(api.create(modelserver(name))))
    await asyncio.gather(*tasks)


async def run(args: argparse.Namespace) -> None:
    local = cluster_tools.LocalCluster(cluster_tools.cache_root() / "cluster-bench")
    nodes = [fakenodes.make_fake_node(f"bench-{i:04d}", SNAPSHOTS[i % len(SNAPSHOTS)]) for i in range(args.nodes)]
    t0 = time.monotonic()
    local.up(nodes=nodes, build=False)
    print(f"cluster with {args.nodes} simulated nodes up in {time.monotonic() - t0:.1f}s", flush=True)
    kube = local.kube()
    kube.install_crd(REPO / "crds/modelservers.pinserve.io.yaml", "modelservers.pinserve.io")
    kube.kubectl("delete", "namespace", NAMESPACE, "--ignore-not-found", "--wait=true", timeout=600)
    kube.kubectl("create", "namespace", NAMESPACE)

    stats = Path(tempfile.mkdtemp()) / "stats.json"
    env = {**os.environ, "KUBECONFIG": str(local.kubeconfig), "PINSERVE_STATS_FILE": str(stats),
           "PINSERVE_RESYNC_SECONDS": "60"}
    log = open(local.logs_dir / "bench-operator.log", "w")  # noqa: SIM115  (closed below)
    operator = subprocess.Popen([sys.executable, "-m", "pinserve", "run", "--liveness", "http://127.0.0.1:0/healthz"],
                                env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        api = KubeApi(Credentials.from_kubeconfig(str(local.kubeconfig)))
        await asyncio.sleep(5)  # let kopf prime its indices before the clock starts
        idle_rss = rss_mb(operator.pid)
        seen: dict[str, float] = {}
        created: dict[str, float] = {}
        stop = asyncio.Event()
        watcher = asyncio.create_task(watch_deployments(api, seen, stop))
        before = read_stats(stats)
        await create_all(api, args.modelservers, args.rate, created)
        deadline = time.monotonic() + 300
        while len(seen) < len(created) and time.monotonic() < deadline:
            await asyncio.sleep(0.5)
        latencies = [(seen[n] - created[n]) * 1000 for n in created if n in seen]
        # Pods keep starting (and statuses changing) well after the last Deployment appears: the idle
        # window starts only once the operator has written nothing for --settle seconds.
        converged_at = time.monotonic()
        quiet_since, last_writes = time.monotonic(), -1
        while time.monotonic() - quiet_since < args.settle and time.monotonic() - converged_at < 600:
            current = read_stats(stats)["requests"]
            writes = sum(current.get(v, 0) for v in ("POST", "PUT", "PATCH", "DELETE"))
            if writes != last_writes:
                quiet_since, last_writes = time.monotonic(), writes
            await asyncio.sleep(1)
        print(f"  converged (no operator writes for {args.settle:.0f} s) "
              f"{time.monotonic() - converged_at:.0f} s after the last create", flush=True)
        after_create = read_stats(stats)
        peak_rss = rss_mb(operator.pid)
        await asyncio.sleep(args.idle)
        after_idle = read_stats(stats)
        stop.set()
        watcher.cancel()
        await api.close()

        per_create = Counter(after_create["requests"]) - Counter(before["requests"])
        idle = Counter(after_idle["requests"]) - Counter(after_create["requests"])
        print(f"\noperator benchmark: {args.modelservers} ModelServers at {args.rate}/s on {args.nodes} nodes")
        print(f"  create -> Deployment present: n={len(latencies)}  p50 {percentile(latencies, 0.5):.0f} ms  "
              f"p99 {percentile(latencies, 0.99):.0f} ms  max {max(latencies):.0f} ms  "
              f"mean {statistics.fmean(latencies):.0f} ms")
        missing = len(created) - len(latencies)
        if missing:
            print(f"  {missing} Deployments did not appear within 300 s")
        print("  operator API requests per create (until converged): " + ", ".join(
            f"{verb} {count / args.modelservers:.2f}" for verb, count in sorted(per_create.items())))
        idle_minutes = args.idle / 60
        print("  operator API requests per idle minute (resync every 60 s): " + (", ".join(
            f"{verb} {count / idle_minutes:.1f}" for verb, count in sorted(idle.items())) or "none"))
        print(f"  operator RSS: {idle_rss:.0f} MB idle before creates, {peak_rss:.0f} MB with "
              f"{args.modelservers} ModelServers on {args.nodes} nodes, {rss_mb(operator.pid):.0f} MB after idling")
    finally:
        operator.send_signal(signal.SIGTERM)
        try:
            operator.wait(timeout=30)
        except subprocess.TimeoutExpired:
            operator.kill()
        log.close()
        if not args.keep:
            local.down()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--modelservers", type=int, default=1000)
    parser.add_argument("--nodes", type=int, default=200)
    parser.add_argument("--rate", type=float, default=10.0, help="creates per second")
    parser.add_argument("--settle", type=float, default=15.0,
                        help="seconds without operator writes that count as converged")
    parser.add_argument("--idle", type=float, default=60.0, help="seconds of idling to count no-op requests")
    parser.add_argument("--keep", action="store_true", help="leave the cluster running")
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
