"""The child caches' event handling, pure: which ModelServers an event concerns, and when to relist."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from pinserve.api import API_VERSION, KIND
from pinserve.childcache import (
    SELECTOR,
    Change,
    Store,
    new_stores,
    own_key,
    owner_key,
    pack,
    plain,
    pod_essentials,
    unpack,
)
from pinserve.planning import node_info
from pinserve.render.common import LABEL_MANAGED_BY, LABEL_MODELSERVER

pytestmark = pytest.mark.unit

OURS = {LABEL_MANAGED_BY: "pinserve", LABEL_MODELSERVER: "rfcn"}


def obj(name: str, rv: str, labels: dict[str, str] | None = None, ns: str = "ml", **extra: Any) -> dict[str, Any]:
    return {"metadata": {"name": name, "namespace": ns, "resourceVersion": rv,
                         "labels": OURS if labels is None else labels,
                         "managedFields": [{"manager": "pinserve.io"}]}, **extra}


def test_the_selector_names_both_labels() -> None:
    assert SELECTOR == "app.kubernetes.io/managed-by=pinserve,pinserve.io/modelserver"


@pytest.mark.parametrize(("labels", "key"), [
    (OURS, ("ml", "rfcn")),
    ({LABEL_MANAGED_BY: "pinserve"}, None),
    ({LABEL_MANAGED_BY: "helm", LABEL_MODELSERVER: "rfcn"}, None),
    ({}, None),
])
def test_owner_key(labels: dict[str, str], key: tuple[str, str] | None) -> None:
    assert owner_key(obj("a", "1", labels)) == key


# (events in order, the keys each one touches, the store's resourceVersion after, names cached after)
CASES: list[tuple[str, list[dict[str, Any]], list[set[tuple[str, str]]], str | None, list[str]]] = [
    ("added", [{"type": "ADDED", "object": obj("d", "5")}], [{("ml", "rfcn")}], "5", ["d"]),
    ("modified", [{"type": "ADDED", "object": obj("d", "5")}, {"type": "MODIFIED", "object": obj("d", "6")}],
     [{("ml", "rfcn")}, {("ml", "rfcn")}], "6", ["d"]),
    ("the same object again touches nothing",
     [{"type": "ADDED", "object": obj("d", "5")}, {"type": "MODIFIED", "object": obj("d", "5")}],
     [{("ml", "rfcn")}, set()], "5", ["d"]),
    ("deleted", [{"type": "ADDED", "object": obj("d", "5")}, {"type": "DELETED", "object": obj("d", "7")}],
     [{("ml", "rfcn")}, {("ml", "rfcn")}], "7", []),
    ("deleting what was never seen", [{"type": "DELETED", "object": obj("x", "7")}], [set()], "7", []),
    ("bookmark moves the resourceVersion only",
     [{"type": "BOOKMARK", "object": {"metadata": {"resourceVersion": "99"}}}], [set()], "99", []),
    ("a label edited away drops it",
     [{"type": "ADDED", "object": obj("d", "5")}, {"type": "MODIFIED", "object": obj("d", "6", {"app": "x"})}],
     [{("ml", "rfcn")}, {("ml", "rfcn")}], "6", []),
    ("moved to another ModelServer: both are told",
     [{"type": "ADDED", "object": obj("d", "5")},
      {"type": "MODIFIED", "object": obj("d", "6", {**OURS, LABEL_MODELSERVER: "other"})}],
     [{("ml", "rfcn")}, {("ml", "rfcn"), ("ml", "other")}], "6", ["d"]),
    ("unknown types are ignored", [{"type": "WHATEVER", "object": obj("d", "5")}], [set()], None, []),
]


@pytest.mark.parametrize(("events", "touched", "rv", "names"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_events(events: list[dict[str, Any]], touched: list[set[tuple[str, str]]], rv: str | None,
                names: list[str]) -> None:
    store = Store("Deployment")
    assert [set(store.handle(e).keys) for e in events] == touched
    assert store.resource_version == rv
    assert sorted(n for _, n in store.objects) == names
    assert sorted(o["metadata"]["name"] for key in store.by_owner for o in store.owned_by(key)) == names


@pytest.mark.parametrize("status", [
    {"kind": "Status", "code": 410, "reason": "Expired", "message": "too old resource version"},
    {"kind": "Status", "code": 500, "reason": "InternalError"},
])
def test_an_error_event_asks_for_a_relist_and_forgets_the_resource_version(status: dict[str, Any]) -> None:
    store = Store("Deployment")
    store.handle({"type": "ADDED", "object": obj("d", "5")})
    change = store.handle({"type": "ERROR", "object": status})
    assert change == Change(relist=True)
    assert store.resource_version is None
    assert store.get("ml", "d") is not None  # kept until the relist replaces it


def test_a_relist_replaces_and_tells_only_what_changed() -> None:
    store = Store("Deployment")
    store.replace([obj("same", "1"), obj("changed", "2"), obj("gone", "3", {**OURS, LABEL_MODELSERVER: "old"})], "10")
    assert store.resource_version == "10"
    change = store.replace([obj("same", "1"), obj("changed", "4", {**OURS, LABEL_MODELSERVER: "b"}),
                            obj("new", "5", {**OURS, LABEL_MODELSERVER: "c"})], "20")
    assert set(change.keys) == {("ml", "rfcn"), ("ml", "b"), ("ml", "c"), ("ml", "old")}
    assert store.resource_version == "20"
    assert sorted(n for _, n in store.objects) == ["changed", "new", "same"]
    assert [o["metadata"]["name"] for o in store.owned_by(("ml", "rfcn"))] == ["same"]
    assert store.owned_by(("ml", "old")) == []
    assert ("ml", "old") not in store.by_owner


def test_list_items_get_their_kind_and_trimmed_forms() -> None:
    stores = new_stores()
    stores["Deployment"].replace([obj("d", "1", spec={"replicas": 1})], "1")
    kept = stores["Deployment"].get("ml", "d")
    assert kept is not None
    assert (kept["kind"], kept["apiVersion"]) == ("Deployment", "apps/v1")
    assert "managedFields" not in kept["metadata"] and kept["spec"] == {"replicas": 1}
    stores["Pod"].replace([obj("p", "1", spec={"nodeName": "n1", "containers": [{"name": "c"}]},
                               status={"phase": "Running", "hostIP": "10.0.0.1"})], "1")
    pod = stores["Pod"].get("ml", "p")
    assert pod is not None
    assert pod["spec"] == {"nodeName": "n1"} and pod["status"]["phase"] == "Running"
    assert "hostIP" not in pod["status"] and pod["kind"] == "Pod"


def test_a_pod_change_nobody_reads_touches_nothing() -> None:
    store = Store("Pod", pod_essentials)
    store.handle({"type": "ADDED", "object": obj("p", "1", status={"phase": "Running", "hostIP": "a"})})
    assert store.handle({"type": "MODIFIED", "object": obj("p", "2", status={"phase": "Running", "hostIP": "b"})}) \
        == Change()
    assert store.resource_version == "2"


def test_packed_objects_read_back_as_fresh_copies() -> None:
    store = Store("Deployment")
    store.handle({"type": "ADDED", "object": obj("d", "5", spec={"replicas": 2})})
    first = store.owned_by(("ml", "rfcn"))[0]
    first["spec"]["replicas"] = 9  # a reader's edit never reaches the cache
    assert store.owned_by(("ml", "rfcn"))[0]["spec"] == {"replicas": 2}
    assert pack(first) != store.objects[("ml", "d")][1] and unpack(pack(first)) == first


def test_plain_drops_managed_fields_only() -> None:
    assert plain(obj("d", "1"))["metadata"] == {"name": "d", "namespace": "ml", "resourceVersion": "1",
                                                "labels": OURS}


def test_a_node_heartbeat_touches_nothing_what_we_plan_with_does() -> None:
    store = new_stores()["Node"]
    node = {"metadata": {"name": "n1", "resourceVersion": "1", "annotations": {"pinserve.io/topology": "{}",
                                                                             "other.io/x": "y"}},
            "spec": {"taints": [{"key": "k", "effect": "NoSchedule"}]},
            "status": {"allocatable": {"cpu": "8"}, "capacity": {"cpu": "8"}, "images": [{"names": ["big"]}],
                       "conditions": [{"type": "Ready", "status": "True", "lastHeartbeatTime": "t0"},
                                      {"type": "MemoryPressure", "status": "False"}]}}
    assert store.handle({"type": "ADDED", "object": node}).keys == {("", "n1")}
    beat = copy.deepcopy(node)
    beat["metadata"]["resourceVersion"] = "2"
    beat["status"]["conditions"][0]["lastHeartbeatTime"] = "t1"
    beat["status"]["images"] = []
    assert store.handle({"type": "MODIFIED", "object": beat}).keys == frozenset()
    assert store.resource_version == "2"
    cordoned = copy.deepcopy(beat)
    cordoned["spec"]["unschedulable"] = True
    assert store.handle({"type": "MODIFIED", "object": cordoned}).keys == {("", "n1")}
    kept = store.get("", "n1")
    assert kept is not None and kept["metadata"]["annotations"] == {"pinserve.io/topology": "{}"}
    assert kept["status"]["conditions"] == [{"type": "Ready", "status": "True"}]
    assert node_info(kept) == node_info(cordoned)  # what planning reads survives the trim


def test_modelservers_are_kept_under_themselves() -> None:
    store = new_stores()[KIND]
    ms = {"metadata": {"name": "rfcn", "namespace": "ml", "resourceVersion": "5", "managedFields": [{}]},
          "spec": {"x": 1}}
    assert store.replace([ms], "5").keys == {("ml", "rfcn")}
    assert store.owners() == [("ml", "rfcn")] and store.foreign == 0
    kept = store.get("ml", "rfcn")
    assert kept == {"apiVersion": API_VERSION, "kind": KIND, "metadata": {"name": "rfcn", "namespace": "ml",
                                                                         "resourceVersion": "5"}, "spec": {"x": 1}}
    assert own_key({"metadata": {}}) is None and own_key({"metadata": {"name": "n"}}) == ("", "n")
