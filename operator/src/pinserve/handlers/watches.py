"""What the informer's changes set off: ModelServers, nodes and children, each a trigger of the work queue.

Every kind comes from pinserve's own list+watch (pinserve.informer), so an event costs a decode and a trimmed,
packed copy, then one call here; kopf runs the operator (login, start-up, peering, liveness) and watches
nothing of its own.
"""

from __future__ import annotations

from collections.abc import Iterable

from pinserve.api import KIND
from pinserve.childcache import Key
from pinserve.handlers import state
from pinserve.planning import NodeInfo, node_info


def changed(kind: str, keys: Iterable[Key]) -> None:
    """The informer's ``on_change``: the objects of ``kind`` under ``keys`` changed, appeared or went."""
    if kind == KIND:
        modelservers_changed(keys)
    elif kind == "Node":
        nodes_changed(name for _, name in keys)
    else:
        state.children_changed(kind, keys)


def modelservers_changed(keys: Iterable[Key]) -> None:
    for key in keys:
        body = state.modelserver_body(key)
        if body is None:
            state.forget(key)  # deleted: owner references let the garbage collector remove the children
        elif not state.own_status_echo(key, body):
            # Our own status write coming back (exactly the object it made) changes nothing a reconcile reads:
            # the write was judged from the same children, and whatever changed since triggers on its own.
            state.modelserver_event(key, body)


def nodes_changed(names: Iterable[str]) -> None:
    """Nodes that appear, leave, or change topology or policy may place (or re-pin) waiting ModelServers."""
    moved = False
    for name in names:
        body = state.INFORMER.get("Node", "", name) if state.INFORMER is not None else None
        info: NodeInfo | None = None if body is None else node_info(body)
        previous = state.LAST_NODES.get(name)
        if info is None:
            state.LAST_NODES.pop(name, None)
        else:
            state.LAST_NODES[name] = info
        moved = moved or previous != info  # a heartbeat never gets here: the store keeps what we plan with
    if not moved:
        return
    state.nodes_changed()
    if state.INFORMER is not None and state.INFORMER.primed.is_set():
        state.resync_all("Node")
    # Before that, the first listing: every ModelServer is reconciled as it is listed, once all is listed.
