"""The ConfigMap the server container reads: start script and TF Serving text configs."""

from __future__ import annotations

import hashlib
from functools import cache
from importlib import resources
from typing import Any

from pinserve.api import ModelServer
from pinserve.planning import Placement
from pinserve.render.common import METRICS_PATH, config_map_name, metadata
from pinserve.render.text import render_text

START_SCRIPT = "start.sh"
BATCHING_CONFIG = "batching.pbtxt"
MONITORING_CONFIG = "monitoring.pbtxt"


@cache  # read on every reconcile (ConfigMap and the Deployment's config hash); the file never changes
def start_script() -> str:
    """The server container's start script, shipped as is (see start.sh for its environment contract).

    The counting happens in the pod, not in the operator, because only the pod knows which CPUs the
    kubelet handed it and what CPU quota bounds it.
    """
    return resources.files("pinserve.render").joinpath(START_SCRIPT).read_text(encoding="utf-8")


@cache
def _start_script_digest() -> str:
    return "sha256:" + hashlib.sha256(start_script().encode()).hexdigest()


def config_fingerprint(ms: ModelServer, placement: Placement) -> dict[str, str]:
    """What the pod template's config hash covers: ``config_data`` with the start script (20 KB, the same
    for every ModelServer) stood in for by its digest, so that hashing it is not paid on every render."""
    return {**config_data(ms, placement), START_SCRIPT: _start_script_digest()}


def config_data(ms: ModelServer, placement: Placement) -> dict[str, str]:
    data = {
        START_SCRIPT: start_script(),
        MONITORING_CONFIG: render_text("monitoring.pbtxt.j2", metrics_path=METRICS_PATH),
    }
    batching = ms.spec.server.batching
    if batching is not None:
        data[BATCHING_CONFIG] = render_text(
            "batching.pbtxt.j2",
            max_batch_size=batching.max_batch_size,
            batch_timeout_micros=batching.batch_timeout_micros,
            max_enqueued_batches=batching.max_enqueued_batches,
            # One batch thread per physical core is TF Serving's own advice for CPUs.
            num_batch_threads=batching.num_batch_threads or placement.physical_cores,
        )
    return data


def render_config_map(ms: ModelServer, placement: Placement) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": metadata(ms, config_map_name(ms), "server"),
        "data": config_data(ms, placement),
    }
