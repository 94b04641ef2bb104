"""Why server pods are not ready, named: one Ready=False reason per cause, with the pod and the cause.

Table-driven over ``podfailures.ready_problem``, then through ``reconcile`` for what it does about
admission rejections (status.rejectedPods, one Event per cause, deleting all but the newest few).
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest

from pinserve.planning import NodeInfo, node_info
from pinserve.podfailures import (
    KEEP_REJECTED,
    UNPUBLISHED_DEFAULT_IMAGE,
    image_hint,
    new_causes,
    ready_problem,
    rejected_record,
    rejected_to_delete,
)
from pinserve.reconcile import Observed, reconcile
from pinserve.render.common import LABEL_MODELSERVER
from pinserve.settings import Settings

pytestmark = pytest.mark.unit

TIMES = [f"2024-01-01T00:{m:02}:00Z" for m in range(60)]


def pod(name: str = "rfcn-7d9c-a", *, phase: str = "Running", ready: bool = False, reason: str | None = None,
        message: str | None = None, containers: list[dict[str, Any]] | None = None,
        init: list[dict[str, Any]] | None = None, unschedulable: str | None = None,
        created: str = TIMES[1], owner: str = "rfcn-7d9c", node: str = "n1") -> dict[str, Any]:
    conditions = [{"type": "Ready", "status": "True" if ready else "False"}]
    if unschedulable:
        conditions.append({"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                           "message": unschedulable})
    status: dict[str, Any] = {"phase": phase, "conditions": conditions, "containerStatuses": containers or [],
                              "initContainerStatuses": init or []}
    if reason:
        status.update(reason=reason, message=message)
    return {"metadata": {"name": name, "creationTimestamp": created, "labels": {LABEL_MODELSERVER: "rfcn"},
                         "ownerReferences": [{"kind": "ReplicaSet", "name": owner, "controller": True}]},
            "spec": {"nodeName": node}, "status": status}


def server(**kw: Any) -> dict[str, Any]:
    return {"name": "server", "image": "tensorflow/serving:mkl", "restartCount": 0, **kw}


def waiting(reason: str, message: str = "") -> dict[str, Any]:
    return {"waiting": {"reason": reason, **({"message": message} if message else {})}}


def terminated(reason: str, code: int, message: str = "") -> dict[str, Any]:
    return {"terminated": {"reason": reason, "exitCode": code, **({"message": message} if message else {})}}


PULL = "rpc error: code = NotFound desc = failed to pull and unpack image docker.io/tensorflow/serving:mkl: not found"
CRASH_LOG = ("2024-01-01 00:00:01 I loading model\n2024-01-01 00:00:02 E Loading servable: {name: rfcn version: 1} "
             "failed: Not found: Op type not registered 'Conv3D'\n")
DEPLOYMENT_QUOTA = {"metadata": {"name": "rfcn"}, "status": {"conditions": [
    {"type": "ReplicaFailure", "status": "True", "reason": "FailedCreate",
     "message": 'pods "rfcn-7d9c-x" is forbidden: exceeded quota: compute, requested: cpu=4, limited: cpu=2'}]}}


@dataclass
class Case:
    id: str
    pods: list[dict[str, Any]]
    reason: str | None
    says: tuple[str, ...] = ()
    deployment: dict[str, Any] | None = None
    rejected: bool = False


CASES = [
    Case("all fine", [pod(ready=True, containers=[server(state={"running": {}})])], None),
    Case("image pull of the unpublished default says what to do",
         [pod(containers=[server(state=waiting("ErrImagePull", PULL))])], "ImagePullFailed",
         ("pod rfcn-7d9c-a: container server cannot pull image tensorflow/serving:mkl (ErrImagePull: rpc error",
          "is not published on Docker Hub", "Dockerfile.mkl", "spec.server.image", "server.image",
          "PINSERVE_SERVER_IMAGE", "tensorflow/serving:2.18.0")),
    Case("image pull back-off of another image: no such advice",
         [pod(containers=[server(image="registry.example/serving:2.18.0", state=waiting("ImagePullBackOff"))])],
         "ImagePullFailed", ("cannot pull image registry.example/serving:2.18.0 (ImagePullBackOff)",)),
    Case("an init container's image", [pod(init=[{"name": "fetch-model", "image": "pinserve/operator:9",
                                                  "state": waiting("ErrImagePull", "not found")}])],
         "ImagePullFailed", ("container fetch-model cannot pull image pinserve/operator:9",)),
    Case("crash loop with the log's tail as termination message",
         [pod(containers=[server(restartCount=4, state=waiting("CrashLoopBackOff", "back-off 40s"),
                                 lastState=terminated("Error", 1, CRASH_LOG))])], "CrashLooping",
         ("pod rfcn-7d9c-a: container server keeps crashing (restarted 4 times, last exit code 1)",
          "Op type not registered 'Conv3D'")),
    Case("crash loop without a message: the last state's reason",
         [pod(containers=[server(restartCount=2, state=waiting("CrashLoopBackOff"),
                                 lastState=terminated("Error", 139))])], "CrashLooping",
         ("last exit code 139): Error",)),
    Case("OOMKilled, crash-looping", [pod(containers=[server(restartCount=3, state=waiting("CrashLoopBackOff"),
                                                             lastState=terminated("OOMKilled", 137))])],
         "OOMKilled", ("pod rfcn-7d9c-a: container server was killed at its memory limit (8Gi, OOMKilled; "
                       "restarted 3 times): raise spec.resources.memory",)),
    Case("OOMKilled once, ready again: not a problem of this pod",
         [pod(ready=True, containers=[server(restartCount=1, state={"running": {}},
                                             lastState=terminated("OOMKilled", 137))]),
          pod("rfcn-7d9c-b", unschedulable="0/3 nodes: Insufficient cpu")], "Unschedulable",
         ("pod rfcn-7d9c-b: 0/3 nodes: Insufficient cpu",)),
    Case("a config error", [pod(containers=[server(state=waiting("CreateContainerConfigError",
                                                                 'secret "creds" not found'))])],
         "ContainerCreateFailed", ('container server cannot start: CreateContainerConfigError: secret "creds"',)),
    Case("model fetch failure", [pod(init=[{"name": "fetch-model", "state": waiting("CrashLoopBackOff"),
                                            "lastState": terminated("Error", 3, "404 Not Found")}])],
         "ModelFetchFailed", ("init container fetch-model failed: 404 Not Found",)),
    Case("model fetch OOMKilled", [pod(init=[{"name": "fetch-model", "state": terminated("OOMKilled", 137)}])],
         "ModelFetchFailed", ("PINSERVE_FETCH_MEMORY",)),
    Case("the Deployment's ReplicaFailure", [], "ReplicaFailure",
         ("Deployment rfcn cannot create pods: FailedCreate: pods \"rfcn-7d9c-x\" is forbidden: exceeded quota",),
         deployment=DEPLOYMENT_QUOTA),
    Case("admission rejections", [pod(phase="Failed", reason="SMTAlignmentError",
                                      message="SMT Alignment Error: requested 3 cpus not multiple of 2")],
         "AdmissionRejected", ("the kubelet rejected 1 pod(s) at admission (SMTAlignmentError x1 on node n1)",
                               "requested 3 cpus not multiple of 2", "whole physical cores",
                               f"keeps the newest {KEEP_REJECTED}"), rejected=True),
    Case("an evicted pod", [pod(phase="Failed", reason="Evicted", message="low on memory")], "PodFailed",
         ("pod rfcn-7d9c-a failed: Evicted: low on memory",)),
    Case("unschedulable", [pod(phase="Pending", unschedulable="0/3 nodes are available")], "Unschedulable",
         ("pod rfcn-7d9c-a: 0/3 nodes are available",)),
    # Order: a live pod's image pull before old rejections; the quota before rejections.
    Case("image pull before admission rejections",
         [pod("a", phase="Failed", reason="OutOfcpu", message="Node didn't have enough resource: cpu"),
          pod("b", containers=[server(state=waiting("ImagePullBackOff"))])], "ImagePullFailed", ("pod b",),
         rejected=True),
    Case("quota before admission rejections", [pod(phase="Failed", reason="OutOfcpu")], "ReplicaFailure",
         deployment=DEPLOYMENT_QUOTA, rejected=True),
    Case("a pod being deleted is not judged",
         [{**pod(containers=[server(state=waiting("ErrImagePull"))]),
           "metadata": {"name": "gone", "deletionTimestamp": TIMES[2]}}], None),
]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_ready_problem(case: Case) -> None:
    rejected = rejected_record(case.pods, None) if case.rejected else []
    problem = ready_problem(case.pods, case.deployment, "8Gi", rejected)
    assert (problem.reason if problem else None) == case.reason, problem
    for text in case.says:
        assert problem is not None and text in problem.message, problem.message
    if problem is not None:
        assert problem.type == "Ready" and problem.status == "False"


@pytest.mark.parametrize(("image", "advised"), [
    ("tensorflow/serving:mkl", True), ("docker.io/tensorflow/serving:mkl", True),
    ("tensorflow/serving:2.18.0", False), ("registry.example/tensorflow/serving:mkl", False),
])
def test_image_hint_only_for_the_unpublished_default(image: str, advised: bool) -> None:
    assert bool(image_hint(image)) is advised
    assert Settings().server_image == UNPUBLISHED_DEFAULT_IMAGE  # the operator's default stays mkl


# -- admission rejections: counted, announced once per cause, kept to a few ---------------------------------


def rejected(name: str, minute: int, reason: str = "SMTAlignmentError", owner: str = "rfcn-7d9c") -> dict[str, Any]:
    return pod(name, phase="Failed", reason=reason, message=f"{reason}: no", created=TIMES[minute], owner=owner)


def test_the_record_counts_each_pod_once_across_reconciles() -> None:
    first = rejected_record([rejected("a", 1), rejected("b", 2)], None)
    assert first == [{"reason": "SMTAlignmentError", "count": 2, "pods": ["b", "a"], "node": "n1",
                      "message": "SMTAlignmentError: no"}]
    # a and b deleted meanwhile (still seen while the deletion is in flight), c and d new
    second = rejected_record([rejected("b", 2), rejected("c", 3), rejected("d", 4)], first)
    assert second[0]["count"] == 4 and second[0]["pods"] == ["d", "c", "b"]
    third = rejected_record([rejected("d", 4), rejected("e", 5, "OutOfcpu")], second)
    assert [(r["reason"], r["count"]) for r in third] == [("OutOfcpu", 1), ("SMTAlignmentError", 4)]
    assert rejected_record([], third) == []


def test_one_event_per_cause_not_per_pod() -> None:
    first = rejected_record([rejected("a", 1), rejected("b", 2)], None)
    [event] = new_causes(None, first)
    assert event.reason == "AdmissionRejected"
    assert event.message.startswith("SMTAlignmentError: the kubelet on node n1 rejected pod b")
    more = rejected_record([rejected("b", 2), rejected("c", 3)], first)
    assert new_causes(first, more) == []
    other = rejected_record([rejected("c", 3), rejected("d", 4, "TopologyAffinityError")], more)
    assert [e.message.split(":")[0] for e in new_causes(more, other)] == ["TopologyAffinityError"]


def test_only_the_deployments_own_rejected_pods_beyond_the_newest_are_deleted() -> None:
    pods = [rejected(f"p{m}", m) for m in range(1, 7)]
    pods.append(rejected("foreign", 9, owner="other-1234"))
    pods.append(pod("running", ready=True))
    assert rejected_to_delete(pods, "rfcn", keep=3) == [("Pod", "p3"), ("Pod", "p2"), ("Pod", "p1")]
    assert {n for _, n in rejected_to_delete(pods, "rfcn", keep=0)} == {f"p{m}" for m in range(1, 7)}


# -- through reconcile -------------------------------------------------------------------------------------


@pytest.fixture
def nodes(topo: Callable[..., Any], make_node: Callable[..., dict[str, Any]]) -> list[NodeInfo]:
    return [node_info(make_node("n1", topo(1, 8, 2)))]


def _deployment(rendered: dict[str, Any], ready: int) -> dict[str, Any]:
    """The Deployment as applied (stamped, so in sync), with a status."""
    live = copy.deepcopy(rendered)
    live["metadata"]["generation"] = 1
    live["status"] = {"observedGeneration": 1, "replicas": 1, "updatedReplicas": 1, "readyReplicas": ready,
                      "availableReplicas": ready}
    return live


def test_reconcile_reports_counts_announces_and_prunes(make_ms: Callable[..., dict[str, Any]],
                                                       nodes: list[NodeInfo]) -> None:
    body = make_ms()
    settings = Settings()
    first = reconcile(copy.deepcopy(body), nodes, Observed(), settings, TIMES[9])
    rendered = next(o for o in first.apply if o["kind"] == "Deployment")
    body["status"] = first.status

    def children(ready: int) -> dict[tuple[str, str], Any]:
        return {("Deployment", "rfcn"): _deployment(rendered, ready)}

    pods = [rejected(f"rfcn-7d9c-{i}", i) for i in range(1, 6)]
    observed = Observed(children=children(0), pods=pods)
    outcome = reconcile(copy.deepcopy(body), nodes, observed, settings, TIMES[10])
    ready = next(c for c in outcome.status["conditions"] if c["type"] == "Ready")
    assert (ready["status"], ready["reason"]) == ("False", "AdmissionRejected")
    assert "rejected 5 pod(s)" in ready["message"]
    assert outcome.status["rejectedPods"][0]["count"] == 5
    assert [e.reason for e in outcome.events] == ["AdmissionRejected"]  # one, not five; no Ready transition Event
    assert [n for k, n in outcome.delete if k == "Pod"] == ["rfcn-7d9c-2", "rfcn-7d9c-1"]
    assert outcome.status["pods"] == []  # Failed pods hold no CPUs

    # Next reconcile: two deleted, three more rejected. The count goes on, no new Event.
    body["status"] = outcome.status
    pods = pods[2:] + [rejected(f"rfcn-7d9c-{i}", i) for i in range(6, 9)]
    again = reconcile(copy.deepcopy(body), nodes, Observed(children=children(0), pods=pods), settings, TIMES[11])
    assert again.status["rejectedPods"][0]["count"] == 8
    assert "rejected 8 pod(s)" in next(c for c in again.status["conditions"] if c["type"] == "Ready")["message"]
    assert again.events == []

    # Fixed elsewhere: a pod runs and the Deployment is ready. The rejected pods left are history: deleted.
    body["status"] = again.status
    live = pod("rfcn-9f00-a", ready=True, containers=[server(state={"running": {}})], owner="rfcn-9f00")
    done = reconcile(copy.deepcopy(body), nodes, Observed(children=children(1),
                                                         pods=[*pods[-KEEP_REJECTED:], live]), settings, TIMES[12])
    assert next(c for c in done.status["conditions"] if c["type"] == "Ready")["status"] == "True"
    assert sorted(n for k, n in done.delete if k == "Pod") == sorted(p["metadata"]["name"]
                                                                     for p in pods[-KEEP_REJECTED:])
    body["status"] = done.status
    clean = reconcile(copy.deepcopy(body), nodes, Observed(children=children(1), pods=[live]), settings, TIMES[13])
    assert "rejectedPods" not in clean.status


def test_the_pod_index_keeps_what_failures_are_read_from() -> None:
    from pinserve.childcache import pod_essentials as _pod_essentials  # noqa: PLC0415

    body = pod(phase="Failed", reason="SMTAlignmentError", message="SMT Alignment Error",
               containers=[server(ready=False, state=waiting("ErrImagePull", "not found"), env=[{"name": "X"}])])
    body["metadata"]["managedFields"] = [{"manager": "kubelet"}]
    body["status"]["conditions"].append({"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                                         "lastTransitionTime": TIMES[3], "lastProbeTime": None})
    kept = _pod_essentials(body)
    assert kept["status"]["reason"] == "SMTAlignmentError" and kept["status"]["message"] == "SMT Alignment Error"
    assert kept["metadata"]["creationTimestamp"] == TIMES[1]
    assert kept["metadata"]["ownerReferences"] == [{"kind": "ReplicaSet", "name": "rfcn-7d9c", "controller": True}]
    [container] = kept["status"]["containerStatuses"]
    assert container == {"name": "server", "image": "tensorflow/serving:mkl", "ready": False, "restartCount": 0,
                         "state": {"waiting": {"reason": "ErrImagePull", "message": "not found"}}}
    assert kept["status"]["conditions"][-1]["lastTransitionTime"] == TIMES[3]
    assert "managedFields" not in kept["metadata"]
    # The same decisions from the trimmed pod as from the whole one.
    assert ready_problem([kept], None, "8Gi") == ready_problem([body], None, "8Gi")
