"""Operator settings, read once from the environment (the Helm chart sets them)."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass

from pinserve import __version__
from pinserve.quantity import memory_bytes


def _int(env: Mapping[str, str], name: str, default: int) -> int:
    raw = env.get(name, "")
    if not raw:
        return default
    try:
        return int(raw)
    except ValueError:
        raise ValueError(f"environment variable {name}={raw!r} is not an integer") from None


def _nonroot(env: Mapping[str, str], name: str, default: int) -> int:
    value = _int(env, name, default)
    if value <= 0:
        raise ValueError(f"environment variable {name}={value} must be a non-zero id (pods run as non-root)")
    return value


def _positive(env: Mapping[str, str], name: str, default: int) -> int:
    value = _int(env, name, default)
    if value <= 0:
        raise ValueError(f"environment variable {name}={value} must be positive")
    return value


def _bytes(env: Mapping[str, str], name: str, default: int) -> int:
    """A size in bytes: 34359738368 or a quantity such as 32Gi."""
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = memory_bytes(raw)
    except ValueError:
        raise ValueError(f"environment variable {name}={raw!r} is not a size such as 32Gi") from None
    if value <= 0:
        raise ValueError(f"environment variable {name}={raw!r} must be positive")
    return value


def _quantity(env: Mapping[str, str], name: str) -> str:
    raw = env.get(name, "").strip()
    if raw:
        _bytes(env, name, 0)
    return raw


BENCH_TARGETS = ("service", "pod")
_CPU = re.compile(r"^([0-9]+m|[0-9]+(\.[0-9]+)?)$")


def _cpu(env: Mapping[str, str], name: str) -> str:
    raw = env.get(name, "").strip()
    if raw and not _CPU.match(raw):
        raise ValueError(f"environment variable {name}={raw!r} is not a CPU quantity such as 500m or 2")
    return raw


def _choice(env: Mapping[str, str], name: str, choices: tuple[str, ...], default: str) -> str:
    raw = env.get(name, "").strip() or default
    if raw not in choices:
        raise ValueError(f"environment variable {name}={raw!r} must be one of {', '.join(choices)}")
    return raw


@dataclass(frozen=True)
class Settings:
    server_image: str = "tensorflow/serving:mkl"
    operator_image: str = f"pinserve/operator:{__version__}"
    bench_image: str = f"pinserve/bench:{__version__}"
    # Empty means every namespace.
    namespaces: tuple[str, ...] = ()
    # The periodic safety net (watches and timed requeues carry the rest): every ModelServer it re-checks is a
    # reconcile, so 60 s meant 17 reconciles a second for 1,000 idle ModelServers. controller-runtime's is 10 h.
    resync_seconds: int = 600
    keep_bench_jobs: int = 3
    bench_retries: int = 2
    # Bounds on the benchmark's waits (seconds): its pod Pending as Unschedulable, and a finished Job's
    # report (termination message) that has not arrived, e.g. because its pod was deleted.
    bench_unschedulable_seconds: int = 300
    bench_report_grace_seconds: int = 60
    # One tuning trial pod (model load, probe, full measurement) is bounded by this (activeDeadlineSeconds).
    tune_trial_seconds: int = 900
    # Without the node agent we cannot see SMT; one thread per core is the assumption
    # that never asks the kubelet for half a core.
    assumed_threads_per_core: int = 1
    # The model init container (fetch, copy, convert): requests == limits, so the pod stays Guaranteed,
    # but a fraction of a CPU, so it runs in the shared pool and takes no exclusive CPU. A whole-CPU init
    # container is rejected by the kubelet's static policy with full-pcpus-only on SMT nodes (1 CPU is
    # half a core) and, on a node with exactly the server's cores free, because the kubelet does not
    # count an init container's CPUs as reusable there (SMTAlignmentError, seen on v1.34).
    fetch_cpu: str = "500m"
    fetch_memory: str = "512Mi"
    # The same init container converting a frozenGraph or keras model (bench image, TensorFlow loads the
    # whole model): its memory limit.
    convert_memory: str = "2Gi"
    # The fetcher's hard limits (passed as its flags): the archive's bytes, the unpacked tree's bytes and the
    # seconds for the whole fetch. The model emptyDir's sizeLimit (the kubelet evicts a pod past it) is
    # model_volume_size_limit, or else both sizes (the archive and its tree coexist while unpacking) plus 1Gi.
    fetch_max_download: int = 32 << 30
    fetch_max_unpacked: int = 64 << 30
    fetch_deadline_seconds: int = 3600
    model_volume_size_limit: str = ""
    # The benchmark client's CPU (requests == limits); empty means whole CPUs, spec.benchmark.physicalCores.
    bench_cpu: str = ""
    # "service": the ModelServer's Service by DNS name; "pod": a ready server pod of the current revision
    # by IP, for clusters without cluster DNS or kube-proxy (the local real node).
    bench_target: str = "service"
    # The user and group of every pod pinserve makes (Pod Security "restricted": non-root, non-zero). 65532
    # is the user of the operator and bench images; any uid reads the TF Serving image and the model.
    pod_uid: int = 65532
    pod_gid: int = 65532
    # Prometheus metrics at http://<metrics_host>:<metrics_port>/metrics; port 0 turns the endpoint off.
    metrics_host: str = "0.0.0.0"  # scraped from outside the pod; the chart binds 127.0.0.1 on hostNetwork
    metrics_port: int = 0
    # Leader election (kopf peering) through the ClusterKopfPeering (or, with namespaces, KopfPeering) of this
    # name; empty: standalone, one replica. The priority: empty is by start time, the oldest replica leads.
    peering: str = ""
    peering_priority: int | None = None

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env
        default = cls()
        namespaces = tuple(n.strip() for n in env.get("PINSERVE_NAMESPACES", "").split(",") if n.strip())
        return cls(
            server_image=env.get("PINSERVE_SERVER_IMAGE") or default.server_image,
            operator_image=env.get("PINSERVE_OPERATOR_IMAGE") or default.operator_image,
            bench_image=env.get("PINSERVE_BENCH_IMAGE") or default.bench_image,
            namespaces=namespaces,
            resync_seconds=_int(env, "PINSERVE_RESYNC_SECONDS", default.resync_seconds),
            keep_bench_jobs=_int(env, "PINSERVE_KEEP_BENCH_JOBS", default.keep_bench_jobs),
            bench_retries=_int(env, "PINSERVE_BENCH_RETRIES", default.bench_retries),
            bench_unschedulable_seconds=_int(env, "PINSERVE_BENCH_UNSCHEDULABLE_SECONDS",
                                             default.bench_unschedulable_seconds),
            bench_report_grace_seconds=_int(env, "PINSERVE_BENCH_REPORT_GRACE_SECONDS",
                                            default.bench_report_grace_seconds),
            tune_trial_seconds=_int(env, "PINSERVE_TUNE_TRIAL_SECONDS", default.tune_trial_seconds),
            assumed_threads_per_core=_int(
                env, "PINSERVE_ASSUMED_THREADS_PER_CORE", default.assumed_threads_per_core
            ),
            fetch_cpu=_cpu(env, "PINSERVE_FETCH_CPU") or default.fetch_cpu,
            fetch_memory=env.get("PINSERVE_FETCH_MEMORY") or default.fetch_memory,
            convert_memory=env.get("PINSERVE_CONVERT_MEMORY") or default.convert_memory,
            fetch_max_download=_bytes(env, "PINSERVE_FETCH_MAX_DOWNLOAD", default.fetch_max_download),
            fetch_max_unpacked=_bytes(env, "PINSERVE_FETCH_MAX_UNPACKED", default.fetch_max_unpacked),
            fetch_deadline_seconds=_positive(env, "PINSERVE_FETCH_DEADLINE_SECONDS", default.fetch_deadline_seconds),
            model_volume_size_limit=_quantity(env, "PINSERVE_MODEL_VOLUME_SIZE_LIMIT"),
            bench_cpu=_cpu(env, "PINSERVE_BENCH_CPU"),
            bench_target=_choice(env, "PINSERVE_BENCH_TARGET", BENCH_TARGETS, default.bench_target),
            pod_uid=_nonroot(env, "PINSERVE_POD_UID", default.pod_uid),
            pod_gid=_nonroot(env, "PINSERVE_POD_GID", default.pod_gid),
            metrics_host=env.get("PINSERVE_METRICS_HOST", "").strip() or default.metrics_host,
            metrics_port=_int(env, "PINSERVE_METRICS_PORT", default.metrics_port),
            peering=env.get("PINSERVE_PEERING", "").strip(),
            peering_priority=_int(env, "PINSERVE_PEERING_PRIORITY", 0) if env.get("PINSERVE_PEERING_PRIORITY",
                                                                                  "").strip() else None,
        )
