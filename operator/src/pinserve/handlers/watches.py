"""Watches: indices over everything a reconcile reads, and events that trigger it."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import kopf

from pinserve.api import GROUP, PLURAL, VERSION
from pinserve.handlers import state
from pinserve.planning import NodeInfo, node_info
from pinserve.render.common import LABEL_MANAGED_BY, LABEL_MODELSERVER

log = logging.getLogger("pinserve")
MANAGED = {LABEL_MANAGED_BY: "pinserve", LABEL_MODELSERVER: kopf.PRESENT}


def _plain(body: Mapping[str, Any]) -> dict[str, Any]:
    """A trimmed copy for the indices: managedFields are large and never read."""
    obj = dict(body)
    meta = dict(obj.get("metadata") or {})
    meta.pop("managedFields", None)
    obj["metadata"] = meta
    return obj


def _owner_key(namespace: str | None, labels: Mapping[str, str]) -> tuple[str, str]:
    return (namespace or "", labels[LABEL_MODELSERVER])


# ---- indices (kopf primes them all before any handler runs) --------------------------------


@kopf.index(GROUP, VERSION, PLURAL)
def pinserve_modelservers(namespace: str, name: str, body: kopf.Body, **_: Any) -> Any:
    return {(namespace, name): _plain(body)}


@kopf.index("nodes")
def pinserve_nodes(name: str, body: kopf.Body, **_: Any) -> Any:
    return {name: node_info(body)}


@kopf.index("v1", "pods", labels=MANAGED)
def pinserve_pods(namespace: str, labels: kopf.Labels, body: kopf.Body, **_: Any) -> Any:
    return {_owner_key(namespace, labels): _plain(body)}


@kopf.index("apps", "v1", "deployments", labels=MANAGED)
def pinserve_deployments(namespace: str, labels: kopf.Labels, body: kopf.Body, **_: Any) -> Any:
    return {_owner_key(namespace, labels): _plain(body)}


@kopf.index("v1", "services", labels=MANAGED)
def pinserve_services(namespace: str, labels: kopf.Labels, body: kopf.Body, **_: Any) -> Any:
    return {_owner_key(namespace, labels): _plain(body)}


@kopf.index("v1", "configmaps", labels=MANAGED)
def pinserve_configmaps(namespace: str, labels: kopf.Labels, body: kopf.Body, **_: Any) -> Any:
    return {_owner_key(namespace, labels): _plain(body)}


@kopf.index("batch", "v1", "jobs", labels=MANAGED)
def pinserve_jobs(namespace: str, labels: kopf.Labels, body: kopf.Body, **_: Any) -> Any:
    return {_owner_key(namespace, labels): _plain(body)}


# ---- triggers --------------------------------------------------------------------------------


@kopf.on.event(GROUP, VERSION, PLURAL)
async def modelserver_changed(
    event: Mapping[str, Any], namespace: str, name: str, body: kopf.Body, **kwargs: Any
) -> None:
    state.remember(kwargs)
    key = (namespace, name)
    if event.get("type") == "DELETED":
        if state.CONTROLLER is not None:
            state.CONTROLLER.forget(key)
        return  # owner references let the garbage collector remove the children
    await state.sync(key, _plain(body))


async def _child_changed(event: Mapping[str, Any], namespace: str, labels: Mapping[str, str],
                         kwargs: Mapping[str, Any]) -> None:
    state.remember(kwargs)
    key = _owner_key(namespace, labels)
    if state.modelserver_body(key) is not None:
        await state.sync(key)


@kopf.on.event("apps", "v1", "deployments", labels=MANAGED)
async def deployment_changed(event: Mapping[str, Any], namespace: str, labels: kopf.Labels,
                             **kwargs: Any) -> None:
    await _child_changed(event, namespace, labels, kwargs)


@kopf.on.event("v1", "services", labels=MANAGED)
async def service_changed(event: Mapping[str, Any], namespace: str, labels: kopf.Labels,
                          **kwargs: Any) -> None:
    await _child_changed(event, namespace, labels, kwargs)


@kopf.on.event("v1", "configmaps", labels=MANAGED)
async def configmap_changed(event: Mapping[str, Any], namespace: str, labels: kopf.Labels,
                            **kwargs: Any) -> None:
    await _child_changed(event, namespace, labels, kwargs)


@kopf.on.event("batch", "v1", "jobs", labels=MANAGED)
async def job_changed(event: Mapping[str, Any], namespace: str, labels: kopf.Labels,
                      **kwargs: Any) -> None:
    await _child_changed(event, namespace, labels, kwargs)


@kopf.on.event("v1", "pods", labels=MANAGED)
async def pod_changed(event: Mapping[str, Any], namespace: str, labels: kopf.Labels,
                      **kwargs: Any) -> None:
    await _child_changed(event, namespace, labels, kwargs)


@kopf.on.event("nodes")
async def node_changed(event: Mapping[str, Any], name: str, body: kopf.Body, **kwargs: Any) -> None:
    """A node that appears, changes topology or policy may place (or re-pin) waiting ModelServers."""
    state.remember(kwargs)
    info: NodeInfo | None = None if event.get("type") == "DELETED" else node_info(body)
    previous = state.LAST_NODES.get(name)
    if info is None:
        state.LAST_NODES.pop(name, None)
    else:
        state.LAST_NODES[name] = info
    if previous == info or (previous is None and event.get("type") is None):
        return  # heartbeats, and the initial listing, change nothing we plan with
    await state.resync_all()
