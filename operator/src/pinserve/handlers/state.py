"""Process-wide operator state shared by the kopf adapters (set at start-up, reset at cleanup)."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

from pinserve.controller import Controller, Key, Snapshot, observed_for
from pinserve.planning import NodeInfo

CONTROLLER: Controller | None = None
RESYNC_TASK: asyncio.Task[None] | None = None
STATS_TASK: asyncio.Task[None] | None = None
# kopf hands indices to handlers only; the resync loop borrows them from the last handler call.
INDICES: dict[str, Any] = {}
LAST_NODES: dict[str, NodeInfo] = {}

MODELSERVER_INDEX = "pinserve_modelservers"
NODE_INDEX = "pinserve_nodes"
POD_INDEX = "pinserve_pods"
CHILD_INDEXES = ("pinserve_deployments", "pinserve_services", "pinserve_configmaps", "pinserve_jobs")
ALL_INDEXES = (MODELSERVER_INDEX, NODE_INDEX, POD_INDEX, *CHILD_INDEXES)


def reset() -> None:
    global CONTROLLER, RESYNC_TASK, STATS_TASK  # noqa: PLW0603  (module state by design)
    CONTROLLER = None
    RESYNC_TASK = None
    STATS_TASK = None
    INDICES.clear()
    LAST_NODES.clear()


def remember(kwargs: Mapping[str, Any]) -> None:
    for name in ALL_INDEXES:
        if name in kwargs:
            INDICES[name] = kwargs[name]


def _values(index: Any, key: Any) -> list[Any]:
    if index is None or key not in index:
        return []
    return list(index[key])


def nodes() -> list[NodeInfo]:
    index = INDICES.get(NODE_INDEX)
    return [info for store in (index or {}).values() for info in store]


def modelserver_keys() -> list[Key]:
    return sorted((INDICES.get(MODELSERVER_INDEX) or {}).keys())


def modelserver_body(key: Key) -> Mapping[str, Any] | None:
    found = _values(INDICES.get(MODELSERVER_INDEX), key)
    return found[0] if found else None


def snapshot(key: Key, body: Mapping[str, Any] | None = None) -> Snapshot:
    children = [obj for name in CHILD_INDEXES for obj in _values(INDICES.get(name), key)]
    pods = _values(INDICES.get(POD_INDEX), key)
    return Snapshot(
        body=body if body is not None else modelserver_body(key),
        nodes=nodes(),
        observed=observed_for(key, children, pods),
    )


async def sync(key: Key, body: Mapping[str, Any] | None = None) -> None:
    if CONTROLLER is None:
        return
    await CONTROLLER.sync(key, snapshot(key, body))


async def resync_all(only_unplaced: bool = False) -> None:
    for key in modelserver_keys():
        body = modelserver_body(key)
        if body is None:
            continue
        if only_unplaced and _placed(body):
            continue
        await sync(key)


def _placed(body: Mapping[str, Any]) -> bool:
    for cond in (body.get("status") or {}).get("conditions") or []:
        if cond.get("type") == "Placed":
            return bool(cond.get("status") == "True")
    return False
