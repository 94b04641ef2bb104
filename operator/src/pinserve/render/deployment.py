"""The TensorFlow Serving Deployment: Guaranteed QoS in whole CPUs, threads from the start script."""

from __future__ import annotations

import copy
import posixpath
from typing import Any

from pinserve.api import ModelFormat, ModelServer
from pinserve.planning import DEFAULT_INTER_OP, DEFAULT_KMP_BLOCKTIME, Placement
from pinserve.redact import has_secret_part, redact_uri
from pinserve.render.common import (
    ANNOTATION_CONFIG_HASH,
    CONFIG_DIR,
    GRPC_PORT,
    MODELS_DIR,
    REST_PORT,
    config_map_name,
    content_hash,
    labels,
    metadata,
    selector,
)
from pinserve.render.configmap import BATCHING_CONFIG, MONITORING_CONFIG, START_SCRIPT, config_fingerprint
from pinserve.render.security import restrict
from pinserve.settings import Settings

SERVER_CONTAINER = "server"
MODEL_VOLUME = "model"
CONFIG_VOLUME = "config"

# The start script exports these unless already set; we set them only for user-fixed values.
_THREAD_ENV = {
    "omp": "OMP_NUM_THREADS",
    "intra_op": "TENSORFLOW_INTRA_OP_PARALLELISM",
    "inter_op": "TENSORFLOW_INTER_OP_PARALLELISM",
    "kmp_affinity": "KMP_AFFINITY",
    "kmp_blocktime": "KMP_BLOCKTIME",
}


def guaranteed(cpus: int | str, memory: str) -> dict[str, dict[str, str]]:
    """Requests == limits (Guaranteed QoS); whole CPUs are the only shape the static CPU manager pins."""
    amount = {"cpu": str(cpus), "memory": memory}
    return {"requests": dict(amount), "limits": dict(amount)}


def model_base_path(ms: ModelServer) -> str:
    return f"{MODELS_DIR}/{ms.model_name}"


def _env(name: str, value: object) -> dict[str, str]:
    return {"name": name, "value": str(value)}


def _server_env(ms: ModelServer, placement: Placement) -> list[dict[str, Any]]:
    env: list[dict[str, Any]] = [
        _env("PINSERVE_MODEL_NAME", ms.model_name),
        _env("PINSERVE_MODEL_BASE_PATH", model_base_path(ms)),
        _env("PINSERVE_GRPC_PORT", GRPC_PORT),
        _env("PINSERVE_REST_PORT", REST_PORT),
        _env("PINSERVE_THREAD_CONFIG", ms.spec.server.thread_config.value.lower()),
        _env("PINSERVE_PLANNED_CORES", placement.physical_cores),
        _env("PINSERVE_DEFAULT_INTER_OP", DEFAULT_INTER_OP),
        _env("PINSERVE_DEFAULT_KMP_BLOCKTIME", DEFAULT_KMP_BLOCKTIME),
        # In millicores: without exclusive cores the affinity is the whole host, and this (with the
        # CFS quota the kubelet derives from it) is what bounds the threads.
        {"name": "PINSERVE_CPU_LIMIT", "valueFrom": {"resourceFieldRef": {
            "containerName": SERVER_CONTAINER, "resource": "limits.cpu", "divisor": "1m"}}},
        _env("PINSERVE_MONITORING_CONFIG", f"{CONFIG_DIR}/{MONITORING_CONFIG}"),
        _env(
            "PINSERVE_BATCHING_CONFIG",
            f"{CONFIG_DIR}/{BATCHING_CONFIG}" if ms.spec.server.batching else "",
        ),
    ]
    threads = placement.threads
    for field, var in _THREAD_ENV.items():
        if field in threads.user_set:
            env.append(_env(var, getattr(threads, field)))
    # The escape hatch wins by name; duplicate names would break server-side apply.
    user_env = [e.to_wire() for e in ms.spec.server.env]
    overridden = {e["name"] for e in user_env}
    return [e for e in env if e["name"] not in overridden] + user_env


def model_volume_size_limit(settings: Settings) -> str:
    """The model emptyDir's sizeLimit: the setting, or room for the archive and its unpacked tree (they
    coexist while unpacking) plus 1Gi; past it the kubelet evicts the pod."""
    if settings.model_volume_size_limit:
        return settings.model_volume_size_limit
    total = settings.fetch_max_download + settings.fetch_max_unpacked + (1 << 30)
    return f"{total >> 30}Gi" if total % (1 << 30) == 0 else str(total)


def _fetch_args(uri: str, settings: Settings) -> tuple[list[str], list[dict[str, Any]]]:
    """The fetcher's arguments, and its env. A URI with a query string or userinfo (a presigned URL) goes to
    the env, never to the args (which ps, logs and describe show): --uri carries it redacted."""
    args = ["--uri", redact_uri(uri) if has_secret_part(uri) else uri,
            "--max-download-bytes", str(settings.fetch_max_download),
            "--max-unpacked-bytes", str(settings.fetch_max_unpacked),
            "--deadline-seconds", str(settings.fetch_deadline_seconds)]
    env = [_env("PINSERVE_MODEL_URI", uri)] if has_secret_part(uri) else []
    return args, env


def _model_source(ms: ModelServer, settings: Settings) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Init containers that put the SavedModel under /models/<name>/<version>, and the volume."""
    model = ms.spec.model
    version_dir = f"{model_base_path(ms)}/{model.version}"
    mount = {"name": MODEL_VOLUME, "mountPath": MODELS_DIR}
    fetch_resources = guaranteed(settings.fetch_cpu, settings.fetch_memory)
    if model.pvc is not None:
        sub_path = posixpath.join(model.pvc.sub_path, model.path).strip("/")
        volume = {
            "name": MODEL_VOLUME,
            "persistentVolumeClaim": {"claimName": model.pvc.claim_name, "readOnly": True},
        }
        # The PVC's SavedModel directory is mounted straight at its version directory: no copy.
        return [], {"volume": volume, "mount": {**mount, "mountPath": version_dir,
                                                  "readOnly": True, "subPath": sub_path}}
    volume = {"name": MODEL_VOLUME, "emptyDir": {"sizeLimit": model_volume_size_limit(settings)}}
    if model.uri is not None:
        fetch_args, fetch_env = _fetch_args(model.uri, settings)
        init: dict[str, Any] = {
            "name": "fetch-model",
            "image": settings.operator_image,
            "command": ["pinserve", "fetch-model"],
            "args": [*fetch_args, "--path", model.path, "--dest", version_dir],
            "resources": fetch_resources,
            "volumeMounts": [dict(mount)],
        }
        if fetch_env:  # explicit env wins over envFrom: a PINSERVE_MODEL_URI in the Secret applies otherwise
            init["env"] = fetch_env
        if model.format is not ModelFormat.SAVED_MODEL:
            # Conversion needs TensorFlow, which the bench image carries (the operator image does not),
            # and memory for the whole model. Keys sorted: the API server does not keep a map's order.
            init["image"] = settings.bench_image
            init["resources"] = guaranteed(settings.fetch_cpu, settings.convert_memory)
            init["args"] += ["--format", model.format.value]
            init["args"] += [a for k in sorted(model.inputs) for a in ("--input", f"{k}={model.inputs[k]}")]
            init["args"] += [a for k in sorted(model.outputs) for a in ("--output", f"{k}={model.outputs[k]}")]
        if model.credentials_secret:
            init["envFrom"] = [{"secretRef": {"name": model.credentials_secret}}]
    else:
        src = "/" + model.path.strip("/") if model.path else "/model"
        init = {
            "name": "copy-model",
            "image": model.image,
            "command": ["/bin/sh", "-c", 'set -eu; mkdir -p "$DEST"; cp -R "$SRC"/. "$DEST"/'],
            "env": [_env("SRC", src), _env("DEST", version_dir)],
            "resources": fetch_resources,
            "volumeMounts": [dict(mount)],
        }
    return [init], {"volume": volume, "mount": mount}


def merge_affinity(user: dict[str, Any] | None, planned: Any) -> dict[str, Any] | None:
    """AND the planned node affinity into the user's: required terms are ORed by Kubernetes,
    so our expressions are added to every user term."""
    if not planned:
        return copy.deepcopy(user) if user else None
    merged = copy.deepcopy(user) if user else {}
    node = merged.setdefault("nodeAffinity", {})
    planned_required = planned.get("requiredDuringSchedulingIgnoredDuringExecution")
    if planned_required:
        ours = planned_required["nodeSelectorTerms"][0]["matchExpressions"]
        existing = node.get("requiredDuringSchedulingIgnoredDuringExecution")
        if existing and existing.get("nodeSelectorTerms"):
            for term in existing["nodeSelectorTerms"]:
                term["matchExpressions"] = list(term.get("matchExpressions", [])) + copy.deepcopy(ours)
        else:
            node["requiredDuringSchedulingIgnoredDuringExecution"] = copy.deepcopy(planned_required)
    preferred = planned.get("preferredDuringSchedulingIgnoredDuringExecution")
    if preferred:
        node["preferredDuringSchedulingIgnoredDuringExecution"] = list(
            node.get("preferredDuringSchedulingIgnoredDuringExecution", [])
        ) + copy.deepcopy(preferred)
    return merged


def render_deployment(ms: ModelServer, placement: Placement, settings: Settings) -> dict[str, Any]:
    spec = ms.spec
    init_containers, model = _model_source(ms, settings)
    model_path = f"/v1/models/{ms.model_name}"
    server: dict[str, Any] = {
        "name": SERVER_CONTAINER,
        "image": spec.server.image or settings.server_image,
        "command": ["/bin/sh", f"{CONFIG_DIR}/{START_SCRIPT}"],
        "args": list(spec.server.args),
        "env": _server_env(ms, placement),
        "ports": [
            {"name": "grpc", "containerPort": GRPC_PORT, "protocol": "TCP"},
            {"name": "rest", "containerPort": REST_PORT, "protocol": "TCP"},
        ],
        "resources": guaranteed(placement.cpu_request, placement.memory),
        # Model loading can take minutes for large graphs: the startup probe covers it.
        "startupProbe": {
            "httpGet": {"path": model_path, "port": "rest"},
            "periodSeconds": 5,
            "failureThreshold": 120,
        },
        "readinessProbe": {
            "httpGet": {"path": model_path, "port": "rest"},
            "periodSeconds": 5,
            "failureThreshold": 3,
        },
        "livenessProbe": {"tcpSocket": {"port": "grpc"}, "periodSeconds": 10, "failureThreshold": 6},
        "volumeMounts": [
            {"name": CONFIG_VOLUME, "mountPath": CONFIG_DIR, "readOnly": True},
            model["mount"],
        ],
        # A crash says why in the pod's status (and so in Ready=False CrashLooping): the log's tail
        # when the server wrote no termination message.
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }
    pod_spec: dict[str, Any] = {
        "enableServiceLinks": False,
        "terminationGracePeriodSeconds": 30,
        "containers": [server],
        "volumes": [
            {"name": CONFIG_VOLUME, "configMap": {"name": config_map_name(ms), "defaultMode": 0o555}},
            model["volume"],
        ],
    }
    if init_containers:
        pod_spec["initContainers"] = init_containers
    if spec.placement.node_selector:
        pod_spec["nodeSelector"] = dict(spec.placement.node_selector)
    if spec.placement.tolerations:
        pod_spec["tolerations"] = [dict(t) for t in spec.placement.tolerations]
    affinity = merge_affinity(spec.placement.affinity, placement.node_affinity)
    if affinity:
        pod_spec["affinity"] = affinity
    restrict(pod_spec, settings)
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": metadata(ms, ms.ref.name, "server"),
        "spec": {
            "replicas": spec.replicas,
            "selector": {"matchLabels": selector(ms, "server")},
            # Keep serving during a roll; the surge pod needs spare whole cores on some node.
            "strategy": {"type": "RollingUpdate",
                         "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}},
            "template": {
                "metadata": {
                    "labels": labels(ms, "server"),
                    "annotations": {ANNOTATION_CONFIG_HASH: content_hash(config_fingerprint(ms, placement))},
                },
                "spec": pod_spec,
            },
        },
    }

