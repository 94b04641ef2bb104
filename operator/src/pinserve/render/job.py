"""The benchmark Job: a pinned `pinserve bench` client against the ModelServer's Service."""

from __future__ import annotations

from typing import Any

from pinserve.api import BenchmarkPlacement, ModelServer
from pinserve.render.common import GRPC_PORT, REST_PORT, labels, metadata, selector
from pinserve.render.deployment import guaranteed
from pinserve.render.security import restrict
from pinserve.settings import Settings

LABEL_RUN_KEY = "pinserve.io/benchmark-run"
TERMINATION_LOG = "/dev/termination-log"
BENCH_MEMORY = "1Gi"


def bench_args(ms: ModelServer, target_host: str | None = None) -> list[str]:
    """The client's arguments; ``target_host`` (a server pod's IP) replaces the Service's DNS name."""
    bench = ms.spec.benchmark
    port = GRPC_PORT if bench.protocol == "grpc" else REST_PORT
    host = target_host or f"{ms.ref.name}.{ms.ref.namespace}.svc"
    if ":" in host:  # an IPv6 pod IP
        host = f"[{host}]"
    args = [
        "--target", f"{host}:{port}",
        "--protocol", bench.protocol,
        "--model", ms.model_name,
        "--signature", bench.signature,
        "--mode", "both",
        "--warmup", str(bench.warmup_requests),
        "--requests", str(bench.latency.requests),
        "--batch-size", str(bench.throughput.batch_size),
        "--concurrency", str(bench.throughput.concurrency),
        "--duration", str(bench.throughput.duration_seconds),
        "--fill", bench.inputs.fill,
        "--summary-file", TERMINATION_LOG,
        # The Job can start while a replica is still loading the model.
        "--wait-ready", "120",
    ]
    for name, dims in sorted(bench.inputs.shapes.items()):
        args += ["--shape", f"{name}={','.join(str(d) for d in dims)}"]
    return args


def _affinity(ms: ModelServer) -> dict[str, Any] | None:
    where = ms.spec.benchmark.placement
    if where is BenchmarkPlacement.ANY:
        return None
    term = [{"labelSelector": {"matchLabels": selector(ms, "server")},
             "topologyKey": "kubernetes.io/hostname"}]
    key = "podAffinity" if where is BenchmarkPlacement.SAME_NODE else "podAntiAffinity"
    return {key: {"requiredDuringSchedulingIgnoredDuringExecution": term}}


def bench_resources(ms: ModelServer, settings: Settings, threads_per_core: int = 1) -> dict[str, dict[str, str]]:
    """Whole physical cores (pinned like the server: on SMT nodes N cores are N x threads-per-core CPUs,
    or the kubelet's full-pcpus-only rejects the pod) unless the operator sets a fixed client CPU."""
    if settings.bench_cpu:
        amount = {"cpu": settings.bench_cpu, "memory": BENCH_MEMORY}
        return {"requests": dict(amount), "limits": dict(amount)}
    return guaranteed(ms.spec.benchmark.physical_cores * max(threads_per_core, 1), BENCH_MEMORY)


def render_bench_job(ms: ModelServer, settings: Settings, job_name: str, run_key: str,
                     target_host: str | None = None, *, threads_per_core: int = 1) -> dict[str, Any]:
    bench = ms.spec.benchmark
    pod_labels = {**labels(ms, "benchmark"), LABEL_RUN_KEY: run_key}
    # Warm-up and latency requests are bounded by the client's deadline; leave ample slack.
    deadline = bench.throughput.duration_seconds + 900
    pod_spec: dict[str, Any] = {
        "restartPolicy": "Never",
        "enableServiceLinks": False,
        "containers": [{
            "name": "bench",
            "image": settings.bench_image,
            "command": ["pinserve", "bench"],
            "args": bench_args(ms, target_host),
            "resources": bench_resources(ms, settings, threads_per_core),
            "terminationMessagePath": TERMINATION_LOG,
            "terminationMessagePolicy": "File",
        }],
    }
    if ms.spec.placement.tolerations:
        pod_spec["tolerations"] = [dict(t) for t in ms.spec.placement.tolerations]
    affinity = _affinity(ms)
    if affinity:
        pod_spec["affinity"] = affinity
    restrict(pod_spec, settings)
    meta = metadata(ms, job_name, "benchmark")
    meta["labels"][LABEL_RUN_KEY] = run_key
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": meta,
        "spec": {
            # Retries are new Jobs made by the operator, so each attempt keeps its own report.
            "backoffLimit": 0,
            "activeDeadlineSeconds": deadline,
            "template": {"metadata": {"labels": pod_labels}, "spec": pod_spec},
        },
    }
