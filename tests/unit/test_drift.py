"""drift: is what we rendered still in the live object, whatever the API server added (contains), and is it
still what we render now (the desired hash, which catches removals)?"""

from __future__ import annotations

import copy
from typing import Any

import pytest

from pinserve import drift
from pinserve.drift import contains, desired_hash, in_sync, stamped
from pinserve.render.common import ANNOTATION_DESIRED_HASH

pytestmark = pytest.mark.unit


@pytest.fixture(autouse=True)
def _fresh_memo(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test starts without in_sync's remembered answers (they are keyed by uid and resourceVersion)."""
    monkeypatch.setattr(drift, "_memo", {})

CONTAINER = {
    "name": "server",
    "image": "tensorflow/serving:mkl",
    "args": ["--a", "--b"],
    "env": [{"name": "A", "value": "1"}, {"name": "B", "value": "2"}],
    "ports": [{"name": "grpc", "containerPort": 8500, "protocol": "TCP"}],
    "resources": {"requests": {"cpu": "4", "memory": "8Gi"}, "limits": {"cpu": "4", "memory": "8Gi"}},
    "securityContext": {"allowPrivilegeEscalation": False},
}


def live_container(**changes: Any) -> dict[str, Any]:
    """CONTAINER as the API server returns it: defaults added, named lists reordered."""
    live = copy.deepcopy(CONTAINER)
    live.update(terminationMessagePath="/dev/termination-log", terminationMessagePolicy="File",
                imagePullPolicy="IfNotPresent")
    live["env"] = list(reversed(live["env"]))
    live["ports"][0]["hostPort"] = 0
    live.update(changes)
    return live


CASES = [
    # (live, desired, expected)
    ("same", CONTAINER, CONTAINER, True),
    ("server defaults", live_container(), CONTAINER, True),
    ("changed image", live_container(image="x"), CONTAINER, False),
    ("changed env value", live_container(env=[{"name": "A", "value": "1"}, {"name": "B", "value": "3"}]),
     CONTAINER, False),
    ("missing env var", live_container(env=[{"name": "A", "value": "1"}]), CONTAINER, False),
    ("extra env var from elsewhere", live_container(env=[*CONTAINER["env"], {"name": "C", "value": "x"}]),  # type: ignore[list-item]
     CONTAINER, True),
    ("args reordered", live_container(args=["--b", "--a"]), CONTAINER, False),
    ("args longer", live_container(args=["--a", "--b", "--c"]), CONTAINER, False),
    ("cpu changed", live_container(resources={"requests": {"cpu": "2", "memory": "8Gi"},
                                              "limits": {"cpu": "4", "memory": "8Gi"}}), CONTAINER, False),
    ("missing key", {"name": "server"}, CONTAINER, False),
    ("bool False vs int 0", {"x": 0}, {"x": False}, False),
    ("int 1 vs bool True", {"x": True}, {"x": 1}, False),
    ("bool True", {"x": True}, {"x": True}, True),
    ("bool flipped", {"x": False}, {"x": True}, False),
    ("int vs float", {"x": 1.0}, {"x": 1}, True),
    ("int vs string", {"x": "8500"}, {"x": 8500}, True),  # int-or-string fields come back as written
    ("string differs", {"x": "a"}, {"x": "b"}, False),
    ("None vs missing", {}, {"x": None}, False),
    ("mapping vs scalar", {"x": "a"}, {"x": {"y": 1}}, False),
    ("list vs scalar", {"x": "a"}, {"x": ["a"]}, False),
    ("unnamed list by position", {"x": [{"a": 1}, {"a": 2}]}, {"x": [{"a": 1}, {"a": 2}]}, True),
    ("unnamed list swapped", {"x": [{"a": 2}, {"a": 1}]}, {"x": [{"a": 1}, {"a": 2}]}, False),
    ("named list, live not all named", {"x": [{"name": "a"}, {"b": 1}]}, {"x": [{"name": "a"}]}, False),
    ("defaultMode normalised", {"defaultMode": 420}, {"defaultMode": 0o555}, True),
    ("quantity canonical memory", {"resources": {"limits": {"memory": "1Gi"}}},
     {"resources": {"limits": {"memory": "1024Mi"}}}, True),
    ("quantity canonical cpu", {"resources": {"requests": {"cpu": "1"}}},
     {"resources": {"requests": {"cpu": "1000m"}}}, True),
    ("quantity changed", {"resources": {"requests": {"memory": "1Gi"}}},
     {"resources": {"requests": {"memory": "2Gi"}}}, False),
    ("quantity missing", {"resources": {"requests": {}}}, {"resources": {"requests": {"memory": "1Gi"}}}, False),
    ("quantities only in resources", {"env": [{"name": "A", "value": "1Gi"}]},
     {"env": [{"name": "A", "value": "1024Mi"}]}, False),
    ("omitted empty list", {"name": "server"}, {"name": "server", "args": []}, True),
    ("omitted empty string", {"mountPath": "/m"}, {"mountPath": "/m", "subPath": ""}, True),
    ("omitted empty map", {"a": 1}, {"a": 1, "labels": {}}, True),
    ("present empty map", {"emptyDir": {}}, {"emptyDir": {}}, True),
    ("empty list but live has items", {"args": ["--x"]}, {"args": []}, False),
]


@pytest.mark.parametrize(("live", "desired", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_contains(live: Any, desired: Any, expected: bool) -> None:
    assert contains(live, desired) is expected


def test_a_live_deployment_with_server_fields_contains_what_we_rendered() -> None:
    desired = {"apiVersion": "apps/v1", "kind": "Deployment",
               "metadata": {"name": "m", "labels": {"a": "b"}},
               "spec": {"replicas": 2, "template": {"spec": {"containers": [CONTAINER],
                                                              "volumes": [{"name": "v", "emptyDir": {}}]}}}}
    live = copy.deepcopy(desired)
    live["metadata"].update(uid="u", resourceVersion="7", generation=3, managedFields=[{"manager": "pinserve.io"}],
                            labels={"a": "b", "added-by": "someone"},
                            annotations={"deployment.kubernetes.io/revision": "2"})
    live["spec"]["template"]["spec"]["containers"] = [live_container()]
    live["spec"]["template"]["spec"].update(dnsPolicy="ClusterFirst", restartPolicy="Always", schedulerName="x")
    live["spec"]["template"]["spec"]["volumes"].insert(0, {"name": "kube-api-access", "projected": {}})
    live["status"] = {"readyReplicas": 2}
    assert contains(live, desired)
    live["spec"]["replicas"] = 3
    assert not contains(live, desired)


# -- the desired hash: what leaves the rendering leaves the live object ----------------------------------

DEPLOYMENT = {"apiVersion": "apps/v1", "kind": "Deployment",
              "metadata": {"name": "m", "namespace": "ml", "labels": {"a": "b"}},
              "spec": {"replicas": 1, "template": {"spec": {
                  "nodeSelector": {"pool": "cpu"}, "containers": [CONTAINER]}}}}


def _without(path: str) -> dict[str, Any]:
    """DEPLOYMENT rendered without one field: env var B, the nodeSelector, or an arg."""
    obj = copy.deepcopy(DEPLOYMENT)
    pod = obj["spec"]["template"]["spec"]
    container = pod["containers"][0]
    if path == "env B":
        container["env"] = [e for e in container["env"] if e["name"] != "B"]
    elif path == "nodeSelector":
        del pod["nodeSelector"]
    elif path == "arg":
        container["args"] = ["--a"]
    elif path == "replicas 3":
        obj["spec"]["replicas"] = 3
    return obj


def applied(desired: dict[str, Any], **meta: Any) -> dict[str, Any]:
    """What the API server returns after applying ``desired``: our fields, plus its own."""
    live = copy.deepcopy(desired)
    live["metadata"].update(uid="u", resourceVersion="7", generation=2, **meta)
    live["metadata"]["annotations"] = {**live["metadata"].get("annotations", {}),
                                       "deployment.kubernetes.io/revision": "2"}
    live["spec"]["template"]["spec"]["containers"] = [live_container(**{
        k: v for k, v in desired["spec"]["template"]["spec"]["containers"][0].items() if k in ("env", "args")})]
    live["status"] = {"replicas": 1}
    return live


HASH_CASES = [
    # (id, rendered before, rendered now, in sync)
    ("unchanged", DEPLOYMENT, DEPLOYMENT, True),
    ("env var removed", DEPLOYMENT, _without("env B"), False),
    ("nodeSelector removed", DEPLOYMENT, _without("nodeSelector"), False),
    ("arg removed", DEPLOYMENT, _without("arg"), False),
    ("replicas changed (an HPA through the scale subresource)", DEPLOYMENT, _without("replicas 3"), False),
    ("env var added back", _without("env B"), DEPLOYMENT, False),
]


@pytest.mark.parametrize(("before", "now", "expected"), [c[1:] for c in HASH_CASES], ids=[c[0] for c in HASH_CASES])
def test_in_sync_follows_the_desired_hash(before: dict[str, Any], now: dict[str, Any], expected: bool) -> None:
    live = applied(stamped(before))
    assert in_sync(live, stamped(now)) is expected


def test_a_removal_is_invisible_to_the_subset_comparison_alone() -> None:
    """Why the hash exists: the live object still holds the removed field, and contains() says fine."""
    live = applied(stamped(DEPLOYMENT))
    for path in ("env B", "nodeSelector"):
        assert contains(live, _without(path))
        assert not in_sync(live, stamped(_without(path)))


def test_stamp_is_stable_and_ignores_an_old_stamp() -> None:
    once = stamped(DEPLOYMENT)
    assert stamped(once) == once == stamped(copy.deepcopy(DEPLOYMENT))
    digest = desired_hash(once)
    assert digest is not None and len(digest) == 16
    assert once["metadata"]["annotations"] == {ANNOTATION_DESIRED_HASH: digest}
    assert "annotations" not in DEPLOYMENT["metadata"]  # the input is not touched
    with_annotations = copy.deepcopy(DEPLOYMENT)
    with_annotations["metadata"]["annotations"] = {"x": "y"}
    assert stamped(with_annotations)["metadata"]["annotations"]["x"] == "y"
    assert desired_hash(stamped(with_annotations)) != digest


@pytest.mark.parametrize(("live", "expected"), [
    (None, False),  # missing: create it
    ("no stamp", False),  # applied by an older operator: apply once more, with the stamp
    ("stamp of another rendering", False),
    ("hand edit under the same stamp", False),  # the subset comparison still catches edits by hand
    ("same stamp", True),
])
def test_in_sync_table(live: str | None, expected: bool) -> None:
    desired = stamped(DEPLOYMENT)
    obj: dict[str, Any] | None = None
    if live is not None:
        obj = applied(desired)
        if live == "no stamp":
            del obj["metadata"]["annotations"][ANNOTATION_DESIRED_HASH]
        elif live == "stamp of another rendering":
            obj["metadata"]["annotations"][ANNOTATION_DESIRED_HASH] = "0" * 16
        elif live == "hand edit under the same stamp":
            obj["spec"]["template"]["spec"]["containers"][0]["image"] = "someone/else"
            obj["metadata"]["resourceVersion"] = "8"  # every write makes a new one
    assert in_sync(obj, desired) is expected


def _versioned(obj: dict[str, Any], uid: str, version: str) -> dict[str, Any]:
    obj["metadata"] = {**obj["metadata"], "uid": uid, "resourceVersion": version}
    return obj


def test_in_sync_remembers_an_answer_only_for_the_same_object_version_and_rendering() -> None:
    """The memo never hides a change: a hand edit arrives with a new resourceVersion and is compared again."""
    desired = stamped(DEPLOYMENT)
    live = _versioned(applied(desired), "uid-memo", "41")
    assert in_sync(live, desired)
    edited = _versioned(copy.deepcopy(live), "uid-memo", "42")
    edited["spec"]["template"]["spec"]["containers"][0]["image"] = "someone/else"
    assert not in_sync(edited, desired)
    assert in_sync(live, desired)  # the earlier version's answer still holds for it
    # Another rendering is another question (its hash is in the key): a removal is never answered from the memo.
    assert not in_sync(live, stamped(_without("env B")))
    # A recreated object (another uid) at a reused resourceVersion is compared, not remembered.
    recreated = _versioned(copy.deepcopy(edited), "uid-other", "41")
    assert not in_sync(recreated, desired)


def test_in_sync_memo_stays_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(drift, "MEMO_SIZE", 3)
    desired = stamped(DEPLOYMENT)
    for n in range(10):
        assert in_sync(_versioned(applied(desired), f"uid-{n}", str(n)), desired)
    assert len(drift._memo) == 3
    assert [key[0] for key in drift._memo] == ["uid-7", "uid-8", "uid-9"]  # the oldest answers went first
