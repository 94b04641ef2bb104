"""The Service in front of the serving pods: gRPC 8500 and REST 8501."""

from __future__ import annotations

from typing import Any

from pinserve.api import ModelServer
from pinserve.render.common import GRPC_PORT, REST_PORT, metadata, selector


def render_service(ms: ModelServer) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": metadata(ms, ms.ref.name, "server"),
        "spec": {
            "type": "ClusterIP",
            "selector": selector(ms, "server"),
            "ports": [
                {"name": "grpc", "port": GRPC_PORT, "targetPort": "grpc", "protocol": "TCP",
                 "appProtocol": "grpc"},
                {"name": "rest", "port": REST_PORT, "targetPort": "rest", "protocol": "TCP",
                 "appProtocol": "http"},
            ],
        },
    }


def endpoints(ms: ModelServer) -> dict[str, str]:
    host = f"{ms.ref.name}.{ms.ref.namespace}.svc"
    return {"grpc": f"{host}:{GRPC_PORT}", "rest": f"http://{host}:{REST_PORT}"}
