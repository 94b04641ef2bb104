"""An in-memory API server for the agent's loop: nodes and pods, merge patches, list and watch, counted by verb.

Like the real one it bumps resourceVersion on every write, rejects a patch whose metadata.uid differs from
the object's (UID is immutable), filters lists and watches by ``spec.nodeName`` and a ``key=value`` label
selector, and sends a MODIFIED event for every patched pod to open watches.
"""

from __future__ import annotations

import asyncio
import copy
import itertools
from collections import Counter
from collections.abc import AsyncIterator, Mapping
from typing import Any

from pinserve.kube import ApiError


def merge(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch."""
    if not isinstance(patch, Mapping):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, Mapping) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge(result.get(key), value)
    return result


def make_pod(
    name: str,
    uid: str,
    node: str = "node-a",
    *,
    namespace: str = "ml",
    running: bool = True,
    container: str = "server",
    managed: bool = True,
    annotations: Mapping[str, str] | None = None,
    phase: str | None = None,
    container_id: str | None = None,
) -> dict[str, Any]:
    labels = {"pinserve.io/modelserver": "m", "app.kubernetes.io/component": "server"}
    if managed:
        labels["app.kubernetes.io/managed-by"] = "pinserve"
    status: dict[str, Any] = {"phase": phase or ("Running" if running else "Pending")}
    if running:
        cs: dict[str, Any] = {"name": container, "state": {"running": {"startedAt": "2024-01-01T00:00:00Z"}}}
        if container_id:
            cs["containerID"] = container_id
        status["containerStatuses"] = [cs]
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "uid": uid,
            "labels": labels,
            "annotations": dict(annotations or {}),
        },
        "spec": {"nodeName": node, "containers": [{"name": container, "image": "tensorflow/serving:mkl"}]},
        "status": status,
    }


def make_node(name: str = "node-a", labels: Mapping[str, str] | None = None) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name, **(labels or {})}, "annotations": {}},
    }


class FakeApi:
    def __init__(self, nodes: list[dict[str, Any]] | None = None, pods: list[dict[str, Any]] | None = None) -> None:
        self.requests: Counter[str] = Counter()
        self._rv = itertools.count(100)
        self.nodes: dict[str, dict[str, Any]] = {}
        self.pods: dict[tuple[str, str], dict[str, Any]] = {}
        self.patches: list[tuple[str, str | None, str, dict[str, Any]]] = []
        self._watchers: list[asyncio.Queue[dict[str, Any] | None]] = []
        self.fail_next_watch_with: int | None = None
        for node in nodes or []:
            self.add_node(node)
        for pod in pods or []:
            self.add_pod(pod, notify=False)

    # -- test controls --------------------------------------------------------------------------------

    def _stamp(self, obj: dict[str, Any]) -> dict[str, Any]:
        obj["metadata"]["resourceVersion"] = str(next(self._rv))
        return obj

    def add_node(self, node: dict[str, Any]) -> None:
        self.nodes[node["metadata"]["name"]] = self._stamp(copy.deepcopy(node))

    def add_pod(self, pod: dict[str, Any], *, notify: bool = True) -> None:
        meta = pod["metadata"]
        key = (meta["namespace"], meta["name"])
        event = "MODIFIED" if key in self.pods else "ADDED"
        self.pods[key] = self._stamp(copy.deepcopy(pod))
        if notify:
            self._notify(event, self.pods[key])

    def delete_pod(self, namespace: str, name: str) -> None:
        pod = self.pods.pop((namespace, name))
        self._notify("DELETED", self._stamp(pod))

    def expire_watches(self) -> None:
        """What the API server does when a watch's resourceVersion is too old: an ERROR event (410)."""
        for queue in self._watchers:
            queue.put_nowait({"type": "ERROR", "object": {"kind": "Status", "code": 410, "reason": "Expired",
                                                          "message": "too old resource version"}})

    def _notify(self, kind: str, pod: dict[str, Any]) -> None:
        for queue in self._watchers:
            queue.put_nowait({"type": kind, "object": copy.deepcopy(pod)})

    @property
    def writes(self) -> int:
        return sum(self.requests[v] for v in ("POST", "PUT", "PATCH", "DELETE"))

    # -- the AgentApi protocol ------------------------------------------------------------------------

    def _store(self, kind: str) -> dict[Any, dict[str, Any]]:
        if kind == "Node":
            return self.nodes
        if kind == "Pod":
            return self.pods
        raise AssertionError(f"unexpected kind {kind}")

    @staticmethod
    def _key(kind: str, namespace: str | None, name: str) -> Any:
        return name if kind == "Node" else (namespace, name)

    async def get(self, kind: str, namespace: str | None, name: str) -> dict[str, Any] | None:
        self.requests["GET"] += 1
        obj = self._store(kind).get(self._key(kind, namespace, name))
        return copy.deepcopy(obj) if obj is not None else None

    async def merge_patch(
        self, kind: str, namespace: str | None, name: str, patch: Mapping[str, Any], sub: str = ""
    ) -> dict[str, Any]:
        self.requests["PATCH"] += 1
        self.patches.append((kind, namespace, name, copy.deepcopy(dict(patch))))
        store, key = self._store(kind), self._key(kind, namespace, name)
        if key not in store:
            raise ApiError(404, "NotFound", f"{kind} {name} not found")
        current = store[key]
        uid = (patch.get("metadata") or {}).get("uid")
        if uid is not None and uid != current["metadata"].get("uid"):
            raise ApiError(422, "Invalid", "metadata.uid: field is immutable")
        store[key] = self._stamp(merge(current, patch))
        if kind == "Pod":
            self._notify("MODIFIED", store[key])
        return copy.deepcopy(store[key])

    def _matches(self, pod: Mapping[str, Any], label_selector: str | None, field_selector: str | None) -> bool:
        if field_selector:
            key, _, value = field_selector.partition("=")
            assert key == "spec.nodeName", field_selector
            if pod["spec"].get("nodeName") != value:
                return False
        if label_selector:
            key, _, value = label_selector.partition("=")
            if (pod["metadata"].get("labels") or {}).get(key) != value:
                return False
        return True

    async def list_object(
        self, kind: str, namespace: str | None = None, *, label_selector: str | None = None,
        field_selector: str | None = None,
    ) -> dict[str, Any]:
        self.requests["GET"] += 1
        assert kind == "Pod"
        items = [copy.deepcopy(p) for p in self.pods.values() if self._matches(p, label_selector, field_selector)]
        return {"kind": "PodList", "metadata": {"resourceVersion": str(next(self._rv))}, "items": items}

    async def watch(
        self, kind: str, namespace: str | None = None, *, label_selector: str | None = None,
        field_selector: str | None = None, resource_version: str | None = None, timeout_seconds: int = 300,
    ) -> AsyncIterator[dict[str, Any]]:
        self.requests["WATCH"] += 1
        if self.fail_next_watch_with is not None:
            status, self.fail_next_watch_with = self.fail_next_watch_with, None
            raise ApiError(status, "InternalError", "watch failed")
        queue: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()
        self._watchers.append(queue)
        try:
            while True:
                event = await queue.get()
                if event is None:
                    return
                obj = event["object"]
                if event["type"] in ("ERROR", "BOOKMARK") or self._matches(obj, label_selector, field_selector):
                    yield event
                if event["type"] == "ERROR":
                    return
        finally:
            self._watchers.remove(queue)
