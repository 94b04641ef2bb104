"""The operator's view of the cluster: a store per kind it reads, filled by a list+watch (pinserve.informer).

Pure logic, no I/O: :class:`Store` takes a List answer (:meth:`Store.replace`) or one watch event
(:meth:`Store.handle`) and says which keys the change concerns, so that the informer can trigger their
reconciles. Objects are kept trimmed (``managedFields`` dropped; pods and nodes cut to what status,
pinning, pod failures, planning and the benchmark read) and packed (compressed JSON, unpacked per read).
Children are keyed by the ModelServer named in their ``pinserve.io/modelserver`` label; ModelServers and
nodes by themselves.

Of the children, only objects carrying both labels of :data:`SELECTOR` ever reach the operator: the API
server filters, so unrelated pods in a busy cluster cost neither memory nor CPU here.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import msgspec

from pinserve.api import API_VERSION, KIND
from pinserve.render.common import LABEL_MANAGED_BY, LABEL_MODELSERVER

Key = tuple[str, str]  # (namespace, ModelServer name); ("", name) for a node
Trim = Callable[[Mapping[str, Any]], dict[str, Any]]
KeyOf = Callable[[Mapping[str, Any]], "Key | None"]

#: Server-side filter: managed by pinserve and naming its ModelServer.
SELECTOR = f"{LABEL_MANAGED_BY}=pinserve,{LABEL_MODELSERVER}"

#: kind -> apiVersion (List items come without kind and apiVersion; the controller reads ``kind``).
CHILD_KINDS: dict[str, str] = {
    "Deployment": "apps/v1",
    "Service": "v1",
    "ConfigMap": "v1",
    "Job": "batch/v1",
    "Pod": "v1",
}


def plain(body: Mapping[str, Any]) -> dict[str, Any]:
    """A trimmed copy: managedFields are large and never read."""
    obj = dict(body)
    meta = dict(obj.get("metadata") or {})
    meta.pop("managedFields", None)
    obj["metadata"] = meta
    return obj


def pod_essentials(body: Mapping[str, Any]) -> dict[str, Any]:
    """Only what status, pinning, pod failures and the benchmark read of a pod: pods are the largest store."""
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


# msgspec (lightkube's JSON codec): the same compact JSON as json.dumps(separators=(",", ":")), in less than
# half the time both ways; every watch event is packed and every reconcile unpacks its children.
_ENCODE = msgspec.json.Encoder().encode
_DECODE = msgspec.json.Decoder().decode


def node_essentials(body: Mapping[str, Any]) -> dict[str, Any]:
    """What planning.node_info reads of a Node, and no more: a heartbeat (condition times, images, resource
    version) leaves this the same, so it triggers nothing."""
    meta = body.get("metadata") or {}
    spec = body.get("spec") or {}
    status = body.get("status") or {}
    return {
        "metadata": {
            "name": meta.get("name"),
            "labels": dict(meta.get("labels") or {}),
            "annotations": {k: v for k, v in (meta.get("annotations") or {}).items() if k.startswith("pinserve.io/")},
        },
        "spec": {"taints": list(spec.get("taints") or []), "unschedulable": bool(spec.get("unschedulable"))},
        "status": {
            "allocatable": dict(status.get("allocatable") or {}),
            "capacity": dict(status.get("capacity") or {}),
            "conditions": [{"type": c.get("type"), "status": c.get("status")}
                           for c in status.get("conditions") or [] if c.get("type") == "Ready"],
        },
    }


def pack(obj: Mapping[str, Any]) -> bytes:
    """An object as compact, compressed JSON: a Python dict of a Deployment and its serving ConfigMap (model
    config, start script) takes several times its JSON size; the same object twice packs to the same bytes."""
    return zlib.compress(_ENCODE(obj), 1)


def unpack(packed: bytes) -> dict[str, Any]:
    obj: dict[str, Any] = _DECODE(zlib.decompress(packed))
    return obj


def own_key(obj: Mapping[str, Any]) -> Key | None:
    """An object keyed by itself: a ModelServer by (namespace, name), a node by ("", name)."""
    meta = obj.get("metadata") or {}
    name = meta.get("name")
    return (meta.get("namespace") or "", str(name)) if name else None


def owner_key(obj: Mapping[str, Any]) -> Key | None:
    """The ModelServer an object belongs to, by its labels; None when it is not pinserve's."""
    meta = obj.get("metadata") or {}
    labels = meta.get("labels") or {}
    if labels.get(LABEL_MANAGED_BY) != "pinserve" or LABEL_MODELSERVER not in labels:
        return None  # the server filters these out; a label edited away arrives as DELETED
    return (meta.get("namespace") or "", labels[LABEL_MODELSERVER])


@dataclass(frozen=True)
class Change:
    """What one event did: the ModelServers to reconcile, or that the store must be listed again."""

    keys: frozenset[Key] = frozenset()
    relist: bool = False


@dataclass
class Store:
    """One kind's objects, as the last list and the watch events since have them.

    Children are kept under the ModelServer their labels name (``key_of`` = owner_key) and listed with
    :data:`SELECTOR`; ModelServers and nodes under themselves (own_key), unfiltered.
    """

    kind: str
    trim: Trim = plain
    key_of: KeyOf = owner_key
    selector: str | None = SELECTOR
    api_version: str | None = None  # None: CHILD_KINDS says
    cluster_scoped: bool = False
    # (namespace, name) -> (owner, trimmed object, packed): objects are kept as compressed JSON (see pack)
    objects: dict[Key, tuple[Key, bytes]] = field(default_factory=dict)
    by_owner: dict[Key, dict[str, bytes]] = field(default_factory=dict)
    #: Where the next watch starts; None: list first.
    resource_version: str | None = None
    #: Objects that arrived without the selector's labels (the server filters: only a label edited away).
    foreign: int = 0

    def _trimmed(self, raw: Mapping[str, Any]) -> dict[str, Any]:
        obj = self.trim(raw)
        obj.setdefault("kind", self.kind)
        obj.setdefault("apiVersion", self.api_version or CHILD_KINDS.get(self.kind, "v1"))
        return obj

    def _put(self, raw: Mapping[str, Any]) -> set[Key]:
        """Store an object; the owners whose view changed (none when the trimmed form is the same)."""
        meta = raw.get("metadata") or {}
        ident = (meta.get("namespace") or "", meta.get("name") or "")
        owner = self.key_of(raw)
        if owner is None:
            self.foreign += 1
            return self._drop(ident)
        packed = pack(self._trimmed(raw))
        previous = self.objects.get(ident)
        if previous is not None and previous == (owner, packed):
            return set()
        touched = self._drop(ident)
        self.objects[ident] = (owner, packed)
        self.by_owner.setdefault(owner, {})[ident[1]] = packed
        return touched | {owner}

    def _drop(self, ident: Key) -> set[Key]:
        previous = self.objects.pop(ident, None)
        if previous is None:
            return set()
        owner = previous[0]
        children = self.by_owner.get(owner, {})
        children.pop(ident[1], None)
        if not children:
            self.by_owner.pop(owner, None)
        return {owner}

    def replace(self, items: Iterable[Mapping[str, Any]], resource_version: str | None) -> Change:
        """A fresh List: the store becomes exactly it; the owners whose view changed are returned."""
        touched: set[Key] = set()
        listed: set[Key] = set()
        for raw in items:
            meta = raw.get("metadata") or {}
            listed.add((meta.get("namespace") or "", meta.get("name") or ""))
            touched |= self._put(raw)
        for ident in [i for i in self.objects if i not in listed]:
            touched |= self._drop(ident)
        self.resource_version = resource_version or None
        return Change(frozenset(touched))

    def handle(self, event: Mapping[str, Any]) -> Change:
        """One watch event: ADDED/MODIFIED/DELETED change the store, BOOKMARK moves the resourceVersion,
        ERROR (410 Gone: the resourceVersion expired; anything else alike) asks for a relist."""
        kind = event.get("type")
        obj = event.get("object") or {}
        if kind == "ERROR":
            self.resource_version = None
            return Change(relist=True)
        rv = (obj.get("metadata") or {}).get("resourceVersion")
        touched: set[Key] = set()
        if kind in ("ADDED", "MODIFIED"):
            touched = self._put(obj)
        elif kind == "DELETED":
            meta = obj.get("metadata") or {}
            touched = self._drop((meta.get("namespace") or "", meta.get("name") or ""))
        elif kind != "BOOKMARK":
            return Change()  # unknown event types are ignored, as client-go does
        if rv:
            self.resource_version = str(rv)
        return Change(frozenset(touched))

    def owned_by(self, key: Key) -> list[dict[str, Any]]:
        """Fresh copies (unpacked per read: a reconcile reads a handful)."""
        return [unpack(packed) for packed in self.by_owner.get(key, {}).values()]

    def get(self, namespace: str, name: str) -> dict[str, Any] | None:
        found = self.objects.get((namespace, name))
        return unpack(found[1]) if found else None

    def owners(self) -> list[Key]:
        """The keys objects are kept under (for a store of ModelServers or nodes: the objects themselves)."""
        return list(self.by_owner)

    def empty(self) -> Store:
        """A store like this one, holding nothing (one per watched namespace)."""
        return Store(self.kind, self.trim, self.key_of, self.selector, self.api_version, self.cluster_scoped)

    def __len__(self) -> int:
        return len(self.objects)


def new_stores() -> dict[str, Store]:
    """One store per child kind (pods keep only their essentials), one of ModelServers and one of nodes."""
    return {
        **{kind: Store(kind, pod_essentials if kind == "Pod" else plain) for kind in CHILD_KINDS},
        KIND: Store(KIND, plain, own_key, selector=None, api_version=API_VERSION),
        "Node": Store("Node", node_essentials, own_key, selector=None, api_version="v1", cluster_scoped=True),
    }
