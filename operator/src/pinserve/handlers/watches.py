"""Watches: kopf indices over ModelServers and nodes, and the events that trigger a reconcile."""

from __future__ import annotations

import logging
from typing import Any

import kopf

from pinserve.api import GROUP, PLURAL, VERSION
from pinserve.childcache import pack, plain
from pinserve.handlers import state
from pinserve.planning import NodeInfo, node_info

log = logging.getLogger("pinserve")


# ---- indices (kopf primes them before any handler runs) -----------------------------------------
# ModelServers and nodes are kopf's; the children pinserve owns come from label-filtered list+watch caches
# (pinserve.informer, started at start-up): kopf would watch every pod of the cluster and filter here.


# Both are async, though they never await: kopf runs a sync handler in a thread pool, and the hop there and back
# cost more than packing a ModelServer.
@kopf.index(GROUP, VERSION, PLURAL)
async def pinserve_modelservers(**kw: Any) -> Any:
    # Packed (compressed JSON): a ModelServer with its status is ~15 KB of Python objects, ~1 KB packed.
    return {(kw["namespace"], kw["name"]): pack(plain(kw["body"]))}


@kopf.index("nodes")
async def pinserve_nodes(**kw: Any) -> Any:
    return {kw["name"]: node_info(kw["body"])}


# ---- triggers --------------------------------------------------------------------------------


@kopf.on.event(GROUP, VERSION, PLURAL)
async def modelserver_changed(**kwargs: Any) -> None:
    state.remember(kwargs)
    key = (kwargs["namespace"], kwargs["name"])
    if kwargs["event"].get("type") == "DELETED":
        state.forget(key)
        return  # owner references let the garbage collector remove the children
    # Our own status write coming back (exactly the object it made) changes nothing a reconcile reads: the write
    # was judged from the same children, and whatever changed since has triggered a reconcile of its own.
    if state.own_status_echo(key, kwargs["body"]):
        return
    state.modelserver_event(key, kwargs["body"])


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
    if previous == info:
        return  # heartbeats change nothing we plan with
    state.nodes_changed()
    if previous is None and event.get("type") is None:
        return  # the initial listing: the ModelServers are reconciled as they are listed
    state.resync_all("Node")
