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
MANAGED: Mapping[str, Any] = {LABEL_MANAGED_BY: "pinserve", LABEL_MODELSERVER: kopf.PRESENT}


def _plain(body: Mapping[str, Any]) -> dict[str, Any]:
    """A trimmed copy for the indices: managedFields are large and never read."""
    obj = dict(body)
    meta = dict(obj.get("metadata") or {})
    meta.pop("managedFields", None)
    obj["metadata"] = meta
    return obj


def _pod_essentials(body: Mapping[str, Any]) -> dict[str, Any]:
    """Only what status, pinning, pod failures and the benchmark read of a pod: pods are the largest index."""
    meta = body.get("metadata") or {}
    status = body.get("status") or {}

    def containers(key: str) -> list[dict[str, Any]]:
        keep = ("name", "image", "ready", "restartCount", "state", "lastState")
        return [{k: c[k] for k in keep if k in c} for c in status.get(key) or []]

    return {
        "metadata": {
            "name": meta.get("name"),
            "namespace": meta.get("namespace"),
            "creationTimestamp": meta.get("creationTimestamp"),
            "labels": dict(meta.get("labels") or {}),
            "annotations": {k: v for k, v in (meta.get("annotations") or {}).items() if k.startswith("pinserve.io/")},
            # Which ReplicaSet made it: only the Deployment's own rejected pods are ever deleted.
            "ownerReferences": [{k: r.get(k) for k in ("kind", "name", "controller")}
                                for r in meta.get("ownerReferences") or []],
            **({"deletionTimestamp": meta["deletionTimestamp"]} if meta.get("deletionTimestamp") else {}),
        },
        "spec": {"nodeName": (body.get("spec") or {}).get("nodeName")},
        "status": {
            "phase": status.get("phase"),
            # Set on a pod the kubelet rejected at admission (SMTAlignmentError, OutOfcpu, ...) or evicted.
            "reason": status.get("reason"),
            "message": status.get("message"),
            "qosClass": status.get("qosClass"),
            "podIP": status.get("podIP"),
            "conditions": [{k: c.get(k) for k in ("type", "status", "reason", "message", "lastTransitionTime")}
                           for c in status.get("conditions") or []],
            "initContainerStatuses": containers("initContainerStatuses"),
            "containerStatuses": containers("containerStatuses"),
        },
    }


def _owner_key(namespace: str | None, labels: Mapping[str, str]) -> tuple[str, str]:
    return (namespace or "", labels[LABEL_MODELSERVER])


# ---- indices (kopf primes them all before any handler runs) --------------------------------


@kopf.index(GROUP, VERSION, PLURAL)
def pinserve_modelservers(**kw: Any) -> Any:
    return {(kw["namespace"], kw["name"]): _plain(kw["body"])}


@kopf.index("nodes")
def pinserve_nodes(**kw: Any) -> Any:
    return {kw["name"]: node_info(kw["body"])}


@kopf.index("v1", "pods", labels=MANAGED)
def pinserve_pods(**kw: Any) -> Any:
    return {_owner_key(kw["namespace"], kw["labels"]): _pod_essentials(kw["body"])}


@kopf.index("apps", "v1", "deployments", labels=MANAGED)
def pinserve_deployments(**kw: Any) -> Any:
    return {_owner_key(kw["namespace"], kw["labels"]): _plain(kw["body"])}


@kopf.index("v1", "services", labels=MANAGED)
def pinserve_services(**kw: Any) -> Any:
    return {_owner_key(kw["namespace"], kw["labels"]): _plain(kw["body"])}


@kopf.index("v1", "configmaps", labels=MANAGED)
def pinserve_configmaps(**kw: Any) -> Any:
    return {_owner_key(kw["namespace"], kw["labels"]): _plain(kw["body"])}


@kopf.index("batch", "v1", "jobs", labels=MANAGED)
def pinserve_jobs(**kw: Any) -> Any:
    return {_owner_key(kw["namespace"], kw["labels"]): _plain(kw["body"])}


# ---- triggers --------------------------------------------------------------------------------


@kopf.on.event(GROUP, VERSION, PLURAL)
async def modelserver_changed(**kwargs: Any) -> None:
    state.remember(kwargs)
    key = (kwargs["namespace"], kwargs["name"])
    if kwargs["event"].get("type") == "DELETED":
        state.forget(key)
        return  # owner references let the garbage collector remove the children
    state.trigger(key)


async def _child_changed(kwargs: Mapping[str, Any]) -> None:
    state.remember(kwargs)
    key = _owner_key(kwargs["namespace"], kwargs["labels"])
    if state.modelserver_body(key) is not None:
        state.trigger(key)


@kopf.on.event("apps", "v1", "deployments", labels=MANAGED)
async def deployment_changed(**kwargs: Any) -> None:
    await _child_changed(kwargs)


@kopf.on.event("v1", "services", labels=MANAGED)
async def service_changed(**kwargs: Any) -> None:
    await _child_changed(kwargs)


@kopf.on.event("v1", "configmaps", labels=MANAGED)
async def configmap_changed(**kwargs: Any) -> None:
    await _child_changed(kwargs)


@kopf.on.event("batch", "v1", "jobs", labels=MANAGED)
async def job_changed(**kwargs: Any) -> None:
    await _child_changed(kwargs)


@kopf.on.event("v1", "pods", labels=MANAGED)
async def pod_changed(**kwargs: Any) -> None:
    await _child_changed(kwargs)


@kopf.on.event("nodes")
async def node_changed(**kwargs: Any) -> None:
    """A node that appears, changes topology or policy may place (or re-pin) waiting ModelServers."""
    state.remember(kwargs)
    event, name, body = kwargs["event"], kwargs["name"], kwargs["body"]
    info: NodeInfo | None = None if event.get("type") == "DELETED" else node_info(body)
    previous = state.LAST_NODES.get(name)
    if info is None:
        state.LAST_NODES.pop(name, None)
    else:
        state.LAST_NODES[name] = info
    if previous == info or (previous is None and event.get("type") is None):
        return  # heartbeats, and the initial listing, change nothing we plan with
    state.resync_all()
