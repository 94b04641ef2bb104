"""Pure rendering of a ModelServer's children as dicts, ready for server-side apply."""

from __future__ import annotations

from typing import Any

from pinserve.api import ModelServer
from pinserve.planning import Placement
from pinserve.render.configmap import render_config_map
from pinserve.render.deployment import render_deployment
from pinserve.render.service import render_service
from pinserve.settings import Settings


def render_children(ms: ModelServer, placement: Placement, settings: Settings) -> list[dict[str, Any]]:
    """The serving objects of one ModelServer, in apply order (config before its readers)."""
    return [
        render_config_map(ms, placement),
        render_service(ms),
        render_deployment(ms, placement, settings),
    ]


__all__ = ["render_children"]
