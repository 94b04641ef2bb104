"""Operator benchmark against the local control plane: prints figures, asserts nothing.

In one run, on one cluster of M simulated nodes, N ModelServers are created at a steady rate, once per column
(in the order of --variants), each time in a fresh namespace, deleted before the next column starts, and with
the operator as its own process:

* ``pinserve``: pinserve alone;
* ``kopf floor``: a minimal kopf operator making the same three children (tools/bench_floor.py), on the same
  quiet cluster;
* ``+unrelated``: pinserve again, after U bare pods that are not pinserve's were created in a namespace
  it watches (only the label selector keeps them out); the pods stay for the columns after it;

Printed side by side: time from create to Deployment present (p50/p99, measured with a watch from this
process), the operator's API requests by verb per create (from its stats file), convergence (the last
operator write after the last create), the operator's CPU (``/proc``), reconciles per create and what set them
off (by source), how long a triggered ModelServer waited for its reconcile and how long that took, the event
loop's lag and the garbage collector's pauses, RSS, and the requests per idle minute. Each column starts once
the control plane's processes use less than a quarter of a core (at most 240 s later); how busy they still
were is printed too.

Usage: python -m tools.bench_operator [--modelservers 1000] [--nodes 200] [--rate 10] [--unrelated-pods 5000]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import fcntl
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pinserve.kube import Credentials, KubeApi
from tools import cluster as cluster_tools
from tools import fakenodes
from tools.operator_report import Result, percentile, report, verbs
from tools.procstats import cpu_seconds, loop_delta, recorded_pids, rss_mb, wait_quiet

REPO = Path(__file__).resolve().parent.parent

SNAPSHOTS = ("32intel64-2p8co2t+8ve", "8em64t-2s2ca2c", "64amd64-4s2n4ca2co")
NOISE_NAMESPACE = "bench-noise"
WRITE_VERBS = ("POST", "PUT", "PATCH", "DELETE")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def read_stats(path: Path) -> dict[str, Any]:
    try:
        data: dict[str, Any] = json.loads(path.read_text())
        return data
    except (OSError, ValueError):
        return {"requests": {}, "reconciles": 0}


def writes(stats: dict[str, Any]) -> int:
    return sum(stats.get("requests", {}).get(v, 0) for v in WRITE_VERBS)


async def watch_deployments(api: KubeApi, namespace: str, seen: dict[str, float]) -> None:
    async for event in api.watch("Deployment", namespace, label_selector="app.kubernetes.io/managed-by=pinserve",
                                 timeout_seconds=3600):
        if event.get("type") == "ADDED":
            seen.setdefault(event["object"]["metadata"]["name"], time.monotonic())


def modelserver(name: str, namespace: str) -> dict[str, Any]:
    return {
        "apiVersion": "pinserve.io/v1alpha1", "kind": "ModelServer",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"model": {"uri": "https://models.example.com/m.tar.gz"},
                 "resources": {"physicalCores": 1, "memory": "1Gi"},
                 "benchmark": {"enabled": False}},
    }


async def create_all(api: KubeApi, namespace: str, count: int, rate: float, created: dict[str, float]) -> None:
    interval = 1.0 / rate
    start = time.monotonic()
    tasks = []
    for i in range(count):
        name = f"ms-{i:05d}"
        delay = start + i * interval - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        created[name] = time.monotonic()
        tasks.append(asyncio.create_task(api.create(modelserver(name, namespace))))
    await asyncio.gather(*tasks)


async def create_unrelated_pods(api: KubeApi, count: int, nodes: int) -> None:
    """Bare pods that are not pinserve's (no pinserve labels), bound to simulated nodes (KWOK runs them)."""
    path = f"/api/v1/namespaces/{NOISE_NAMESPACE}/pods"
    limit = asyncio.Semaphore(32)

    async def one(i: int) -> None:
        pod = {"apiVersion": "v1", "kind": "Pod",
               "metadata": {"name": f"noise-{i:05d}",
                            "labels": {"app": "noise", "app.kubernetes.io/managed-by": "helm"}},
               "spec": {"nodeName": f"bench-{i % max(nodes, 1):04d}",
                        "containers": [{"name": "c", "image": "registry.example.com/noise:1"}]}}
        async with limit:
            await api.request("POST", path, body=pod)

    await asyncio.gather(*(one(i) for i in range(count)))


async def wait_running(api: KubeApi, namespace: str, timeout: float = 600) -> str:
    """Wait until every pod of ``namespace`` runs (KWOK's status writes for them over): the next column
    starts on a quiet control plane, as the others do. Says how long it took, or that it gave up."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        pending = await api.request("GET", f"/api/v1/namespaces/{namespace}/pods",
                                    params={"fieldSelector": "status.phase!=Running", "limit": "1"})
        if not pending.get("items"):
            return f"all running {time.monotonic() - start:.0f} s later"
        await asyncio.sleep(2)
    return f"NOT all running after {timeout:.0f} s: the next column runs beside their start-up"


async def measure(api: KubeApi, label: str, namespace: str, *, command: list[str], env: dict[str, str],
                  scope: str, args: argparse.Namespace, logs: Path, cluster_pids: list[int]) -> Result:
    """One operator process, one batch of creates in ``namespace``: the figures of one column."""
    result = Result(label, scope)
    # Each column starts on a quiet control plane: the first one used to start while it still settled its nodes.
    waited, result.cluster_cores = await asyncio.to_thread(wait_quiet, cluster_pids)
    print(f"-- control plane at {result.cluster_cores:.2f} cores after {waited:.0f} s", flush=True)
    stats = Path(tempfile.mkdtemp()) / "stats.json"
    env = {**env, "PINSERVE_STATS_FILE": str(stats)}
    print(f"-- {label}: {' '.join(command[1:])} ({scope})", flush=True)
    with open(logs / f"bench-{label.replace(' ', '-').replace('+', '')}.log", "w") as log:
        operator = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 120
            while not stats.exists() and time.monotonic() < deadline:  # primed and running
                if operator.poll() is not None:
                    raise RuntimeError(f"{label}: the operator exited ({operator.returncode}); see {log.name}")
                await asyncio.sleep(0.5)
            await asyncio.sleep(3)
            result.rss_start = rss_mb(operator.pid)
            seen: dict[str, float] = {}
            created: dict[str, float] = {}
            watcher = asyncio.create_task(watch_deployments(api, namespace, seen))
            await asyncio.sleep(1)
            before = read_stats(stats)
            cpu_start = cpu_seconds(operator.pid)
            await create_all(api, namespace, args.modelservers, args.rate, created)
            last_create = time.monotonic()
            deadline = last_create + 300
            while len(seen) < len(created) and time.monotonic() < deadline:
                await asyncio.sleep(0.5)
            result.latencies = [(seen[n] - created[n]) * 1000 for n in created if n in seen]
            result.missing = len(created) - len(result.latencies)
            # Pods keep starting (and statuses changing) well after the last Deployment appears: converged
            # once the operator has written nothing for --settle seconds.
            quiet_since, last_writes = time.monotonic(), -1
            while time.monotonic() - quiet_since < args.settle and time.monotonic() - last_create < 900:
                current = writes(read_stats(stats))
                if current != last_writes:
                    quiet_since, last_writes = time.monotonic(), current
                await asyncio.sleep(1)
            result.converged_s = max(0.0, quiet_since - last_create)
            after = read_stats(stats)
            result.rss_end = rss_mb(operator.pid)
            result.cpu_s = cpu_seconds(operator.pid) - cpu_start
            result.reconciles = int(after.get("reconciles") or 0) - int(before.get("reconciles") or 0)
            result.triggers = Counter(after.get("triggers") or {}) - Counter(before.get("triggers") or {})
            result.cached = after.get("cached") or {}
            result.loop = loop_delta(before.get("loop") or {}, after.get("loop") or {})
            result.timings = after.get("timings") or {}
            result.per_create = Counter(after["requests"]) - Counter(before["requests"])
            if "own" in after:
                result.per_create_own = Counter(after["own"]) - Counter(before.get("own") or {})
            await asyncio.sleep(args.idle)
            result.idle = Counter(read_stats(stats)["requests"]) - Counter(after["requests"])
            result.rss_idle = rss_mb(operator.pid)
            watcher.cancel()
        finally:
            operator.send_signal(signal.SIGTERM)
            try:
                operator.wait(timeout=30)
            except subprocess.TimeoutExpired:
                operator.kill()
                operator.wait()
    own = result.per_create if result.per_create_own is None else result.per_create_own
    print(f"   done: p50 {percentile(result.latencies, 0.5):.0f} ms, p99 {percentile(result.latencies, 0.99):.0f} ms, "
          f"converged {result.converged_s:.0f} s after the last create, requests per create "
          f"{verbs(own, max(args.modelservers, 1))}, RSS {result.rss_start:.0f} -> {result.rss_end:.0f} MB",
          flush=True)
    return result


@contextlib.contextmanager
def _only_run(state_dir: Path) -> Iterator[None]:
    """One benchmark per cluster: a second one would reuse the first's cluster and delete its namespaces."""
    state_dir.mkdir(parents=True, exist_ok=True)
    with open(state_dir / ".bench.lock", "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise SystemExit(f"another operator benchmark is running on {state_dir}: wait for it to end, "
                             "or give this one its own --state-dir") from None
        yield


async def run(args: argparse.Namespace) -> None:
    state_dir = Path(args.state_dir) if args.state_dir else cluster_tools.cache_root() / "cluster-bench"
    with _only_run(state_dir):
        await _run(args, state_dir)


async def _run(args: argparse.Namespace, state_dir: Path) -> None:
    local = cluster_tools.LocalCluster(state_dir)
    nodes = [fakenodes.make_fake_node(f"bench-{i:04d}", SNAPSHOTS[i % len(SNAPSHOTS)]) for i in range(args.nodes)]
    t0 = time.monotonic()
    local.up(nodes=nodes, build=False)
    print(f"cluster with {args.nodes} simulated nodes up in {time.monotonic() - t0:.1f}s", flush=True)
    kube = local.kube()
    kube.install_crd(REPO / "crds/modelservers.pinserve.io.yaml", "modelservers.pinserve.io")
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    if args.baseline_src:  # another source tree of pinserve (e.g. `git archive` of an older commit)
        variants = ["baseline", *variants, "baseline-unrelated"]
    namespaces = {v: f"bench-{v}" for v in variants}
    for ns in [*namespaces.values(), NOISE_NAMESPACE]:
        kube.kubectl("delete", "namespace", ns, "--ignore-not-found", "--wait=true", timeout=900)
        kube.kubectl("create", "namespace", ns)
    env = {**os.environ, "KUBECONFIG": str(local.kubeconfig), "PINSERVE_RESYNC_SECONDS": "60"}
    api = KubeApi(Credentials.from_kubeconfig(str(local.kubeconfig)))
    results: list[Result] = []
    noisy = False
    try:
        for variant in variants:
            ns = namespaces[variant]
            if variant in ("unrelated", "baseline-unrelated") and not noisy:
                t1 = time.monotonic()
                await create_unrelated_pods(api, args.unrelated_pods, args.nodes)
                created_s = time.monotonic() - t1
                running = await wait_running(api, NOISE_NAMESPACE)
                print(f"{args.unrelated_pods} unrelated pods created in {NOISE_NAMESPACE} in {created_s:.0f} s, "
                      f"{running}", flush=True)
                noisy = True
            # pinserve watches the noise namespace in every run: the only difference is the pods in it.
            scoped = {**env, "PINSERVE_NAMESPACES": f"{ns},{NOISE_NAMESPACE}"}
            scope = f"namespaces {ns},{NOISE_NAMESPACE}"
            # Each tree with its own CRD: a newer one's defaults are fields an older operator refuses.
            tree = Path(args.baseline_src).resolve() if variant.startswith("baseline") else REPO
            kube.install_crd(tree / "crds/modelservers.pinserve.io.yaml", "modelservers.pinserve.io")
            if variant.startswith("baseline"):
                src = str(tree / "operator" / "src")
                scoped["PYTHONPATH"] = os.pathsep.join([src, *filter(None, [env.get("PYTHONPATH")])])
            label = {"pinserve": "pinserve", "unrelated": f"+{args.unrelated_pods} pods", "floor": "kopf floor",

                     "baseline": "baseline", "baseline-unrelated": f"baseline +{args.unrelated_pods}"}[variant]
            if variant == "floor":
                command, scoped, scope = [sys.executable, "-m", "tools.bench_floor", "--namespace", ns], env, \
                    f"namespace {ns}"
            else:  # kopf reads port 0 as 80: a free port of its own
                command = [sys.executable, "-m", "pinserve", "run", "--liveness", f"http://127.0.0.1:{free_port()}/healthz"]
            results.append(await measure(api, label, ns, command=command, env=scoped, scope=scope, args=args,
                                         logs=local.logs_dir, cluster_pids=recorded_pids(state_dir)))
            # The next column starts on the same cluster: without its 1,000 Deployments and pods, which kept the
            # controller manager and kwok busy (the floor measured 332 ms after pinserve's column, 55 ms first).
            t2 = time.monotonic()
            kube.kubectl("delete", "namespace", ns, "--wait=true", timeout=900)
            print(f"-- {ns} deleted in {time.monotonic() - t2:.0f} s", flush=True)
    finally:
        await api.close()
        if not args.keep:
            local.down()
    print(f"\noperator benchmark: {args.modelservers} ModelServers at {args.rate:g}/s on {args.nodes} nodes "
          f"({args.unrelated_pods} unrelated pods from the +unrelated column on)")
    print(report(results, args))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--modelservers", type=int, default=1000)
    parser.add_argument("--nodes", type=int, default=200)
    parser.add_argument("--rate", type=float, default=10.0, help="creates per second")
    parser.add_argument("--unrelated-pods", type=int, default=5000,
                        help="bare pods not pinserve's, created before the second run")
    # The floor runs before the unrelated pods exist, on the same quiet cluster as the pinserve column it is
    # compared with: after them the control plane is busier for a while, and the floor measured 4x slower there.
    parser.add_argument("--variants", default="pinserve,floor,unrelated",
                        help="which columns to run, in this order (comma-separated: pinserve, floor, unrelated)")
    parser.add_argument("--baseline-src", help="also run the operator from this source tree (without and with "
                        "the unrelated pods), e.g. an older commit's `git archive`")
    parser.add_argument("--settle", type=float, default=15.0,
                        help="seconds without operator writes that count as converged")
    parser.add_argument("--idle", type=float, default=30.0, help="seconds of idling to count no-op requests")
    parser.add_argument("--state-dir", help="the cluster's state directory (default: <cache>/cluster-bench)")
    parser.add_argument("--keep", action="store_true", help="leave the cluster running")
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
