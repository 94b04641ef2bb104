"""Names, labels, owner references and hashes shared by every rendered child."""

from __future__ import annotations

import hashlib
import json
from typing import Any

from pinserve.api import API_VERSION, KIND, ModelServer

MANAGER = "pinserve.io"
LABEL_MODELSERVER = "pinserve.io/modelserver"
LABEL_COMPONENT = "app.kubernetes.io/component"
LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"
ANNOTATION_CONFIG_HASH = "pinserve.io/config-hash"
# On every serving child: the hash of the object pinserve last applied (what it wants, not what is live).
ANNOTATION_DESIRED_HASH = "pinserve.io/desired-hash"

GRPC_PORT = 8500
REST_PORT = 8501
CONFIG_DIR = "/etc/pinserve"
MODELS_DIR = "/models"
METRICS_PATH = "/monitoring/prometheus/metrics"


def config_map_name(ms: ModelServer) -> str:
    return f"{ms.ref.name}-serving"


def bench_job_name(ms: ModelServer, run_key: str, attempt: int = 0) -> str:
    """<name>-bench-<run key>[-r<attempt>], shortened (with a hash) to fit a 63-character label."""
    tail = f"-bench-{run_key}" + (f"-r{attempt}" if attempt else "")
    name = ms.ref.name
    if len(name) + len(tail) > 63:
        digest = hashlib.sha256(name.encode()).hexdigest()[:5]
        name = f"{name[: 63 - len(tail) - 6].rstrip('-')}-{digest}"
    return name + tail


def labels(ms: ModelServer, component: str) -> dict[str, str]:
    return {
        "app.kubernetes.io/name": "tensorflow-serving",
        "app.kubernetes.io/instance": ms.ref.name,
        LABEL_COMPONENT: component,
        LABEL_MANAGED_BY: "pinserve",
        "app.kubernetes.io/part-of": "pinserve",
        LABEL_MODELSERVER: ms.ref.name,
    }


def selector(ms: ModelServer, component: str) -> dict[str, str]:
    # Immutable on Deployments: keep it to labels that never change for a ModelServer.
    return {LABEL_MODELSERVER: ms.ref.name, LABEL_COMPONENT: component}


def selector_string(ms: ModelServer, component: str = "server") -> str:
    """The label selector in its string form: status.selector, which the scale subresource hands to an HPA."""
    return ",".join(f"{key}={value}" for key, value in sorted(selector(ms, component).items()))


def owner_reference(ms: ModelServer) -> dict[str, Any]:
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "name": ms.ref.name,
        "uid": ms.ref.uid,
        "controller": True,
        "blockOwnerDeletion": True,
    }


def metadata(ms: ModelServer, name: str, component: str, **extra: Any) -> dict[str, Any]:
    meta: dict[str, Any] = {
        "name": name,
        "namespace": ms.ref.namespace,
        "labels": labels(ms, component),
        "ownerReferences": [owner_reference(ms)],
    }
    meta.update(extra)
    return meta


def content_hash(data: Any) -> str:
    """A short, stable hash of JSON-able data (rolls pods when their config changes)."""
    blob = json.dumps(data, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(blob).hexdigest()[:16]
