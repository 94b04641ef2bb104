"""Pod failures named in Ready, against the real API server (issue 10 items 8 and 9).

There is no kubelet: a test writes what one would into the pod's status with the admin kubeconfig
(ErrImagePull, CrashLoopBackOff, OOMKilled), and KWOK plays the kubelet's admission rejections for pods
whose node selector carries ``pinserve-test/admission-reject`` (tools/kwok/pod-stages.yaml). A
ResourceQuota makes the Deployment's ReplicaFailure for real.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
import yaml
from operator_harness import (
    condition,
    eventually,
    modelserver,
    operator_fixture,
)

from pinserve.podfailures import KEEP_REJECTED

pytestmark = pytest.mark.integration

REJECT = "pinserve-test/admission-reject"


# The operator's default image stays tensorflow/serving:mkl (no PINSERVE_SERVER_IMAGE here).
operator = operator_fixture(PINSERVE_RESYNC_SECONDS="2")


def get_ms(cluster: Any, namespace: str, name: str) -> dict[str, Any]:
    return dict(cluster.get_json("-n", namespace, f"modelserver/{name}"))


def apply(cluster: Any, namespace: str, body: dict[str, Any]) -> None:
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=yaml.safe_dump(body))


def ready_with(cluster: Any, namespace: str, name: str, reason: str, timeout: float = 60) -> dict[str, Any]:
    seen: list[dict[str, Any]] = []

    def probe() -> dict[str, Any] | None:
        ready = condition(get_ms(cluster, namespace, name), "Ready")
        seen[:] = [ready]
        return ready if ready.get("reason") == reason else None

    try:
        return eventually(f"{name} Ready reason {reason}", probe, timeout=timeout)
    except AssertionError as exc:
        raise AssertionError(f"{exc}; Ready was {seen}") from None


def server_pods(cluster: Any, namespace: str, name: str) -> list[dict[str, Any]]:
    selector = f"pinserve.io/modelserver={name},app.kubernetes.io/component=server"
    return list(cluster.get_json("-n", namespace, "pods", "-l", selector)["items"])


def events(cluster: Any, namespace: str, name: str, reason: str) -> list[dict[str, Any]]:
    items = cluster.get_json("-n", namespace, "events", "--field-selector", f"involvedObject.name={name}")["items"]
    return [e for e in items if e["reason"] == reason]


# -- a running pod goes wrong: what the kubelet would write -----------------------------------------------

PULL = 'Back-off pulling image "tensorflow/serving:mkl": not found'
CRASH = ("2024-01-01 12:00:00 I Loading model\n"
         "E Loading servable: {name: half_plus_two} failed: Not found: no SavedModel")
STATES = [
    ("image-pull", {"waiting": {"reason": "ImagePullBackOff", "message": PULL}}, None, "ImagePullFailed",
     ("cannot pull image tensorflow/serving:mkl (ImagePullBackOff", "not published on Docker Hub", "Dockerfile.mkl",
      "spec.server.image", "server.image", "PINSERVE_SERVER_IMAGE")),
    ("crash-loop", {"waiting": {"reason": "CrashLoopBackOff", "message": "back-off 40s"}},
     {"terminated": {"exitCode": 1, "reason": "Error", "message": CRASH}}, "CrashLooping",
     ("container server keeps crashing (restarted 3 times, last exit code 1)", "failed: Not found: no SavedModel")),
    ("oom", {"waiting": {"reason": "CrashLoopBackOff"}},
     {"terminated": {"exitCode": 137, "reason": "OOMKilled"}}, "OOMKilled",
     ("container server was killed at its memory limit (2Gi, OOMKilled", "raise spec.resources.memory")),
]


@pytest.mark.parametrize(("state", "last", "reason", "says"), [s[1:] for s in STATES], ids=[s[0] for s in STATES])
def test_a_failing_server_container_is_named(cluster: Any, operator: Any, namespace: str, *, state: dict[str, Any],
                                             last: dict[str, Any] | None, reason: str, says: tuple[str, ...]) -> None:
    apply(cluster, namespace, modelserver("hurt", cores=1))
    ready_with(cluster, namespace, "hurt", "Available", timeout=90)
    [pod] = server_pods(cluster, namespace, "hurt")
    status = {"name": "server", "image": "tensorflow/serving:mkl", "imageID": "", "ready": False, "started": False,
              "restartCount": 3, "state": state, **({"lastState": last} if last else {})}
    conditions = [{"type": t, "status": "False" if t in ("Ready", "ContainersReady") else "True"}
                  for t in ("PodScheduled", "Initialized", "ContainersReady", "Ready")]
    cluster.kubectl("patch", "-n", namespace, f"pod/{pod['metadata']['name']}", "--subresource=status",
                    "--type=merge", "-p", json.dumps({"status": {"conditions": conditions,
                                                                 "containerStatuses": [status]}}))
    ready = ready_with(cluster, namespace, "hurt", reason)
    assert ready["status"] == "False"
    assert ready["message"].startswith(f"pod {pod['metadata']['name']}: ")
    for text in says:
        assert text in ready["message"], ready["message"]
    announced = eventually(f"the {reason} Event", lambda: events(cluster, namespace, "hurt", reason), timeout=30)
    assert [e["type"] for e in announced] == ["Warning"], [(e["message"], e["lastTimestamp"]) for e in announced]


# -- the Deployment cannot make pods ----------------------------------------------------------------------


def test_a_quota_that_refuses_the_pods_is_replica_failure(cluster: Any, operator: Any, namespace: str) -> None:
    quota = {"apiVersion": "v1", "kind": "ResourceQuota", "metadata": {"name": "no-pods"},
             "spec": {"hard": {"pods": "0"}}}
    cluster.kubectl("create", "-n", namespace, "-f", "-", input=json.dumps(quota))
    # No quota controller runs here: write the usage it would, so that admission enforces the quota.
    cluster.kubectl("patch", "-n", namespace, "resourcequota/no-pods", "--subresource=status", "--type=merge",
                    "-p", json.dumps({"status": {"hard": {"pods": "0"}, "used": {"pods": "0"}}}))
    apply(cluster, namespace, modelserver("quota", cores=1))
    ready = ready_with(cluster, namespace, "quota", "ReplicaFailure", timeout=90)
    assert ready["message"].startswith("Deployment quota cannot create pods: FailedCreate: ")
    assert "forbidden" in ready["message"]
    cluster.kubectl("delete", "-n", namespace, "resourcequota/no-pods")
    ready_with(cluster, namespace, "quota", "Available", timeout=120)


# -- the kubelet refuses pod after pod ----------------------------------------------------------------------


def test_admission_rejections_are_counted_announced_once_per_cause_and_pruned(cluster: Any, operator: Any,
                                                                               namespace: str) -> None:
    suffix = namespace[-6:]
    nodes = {cause: f"kwok-reject-{cause.lower()[:8]}-{suffix}" for cause in ("SMTAlignmentError",
                                                                             "TopologyAffinityError")}
    for cause, node in nodes.items():
        cluster.add_fake_node(node, "8em64t-2s2ca2c", labels={REJECT: cause})
    try:
        apply(cluster, namespace, modelserver("rejected", cores=1,
                                              placement={"nodeSelector": {REJECT: "SMTAlignmentError"}}))

        def rejected_at_least(count: int, cause: str) -> Any:
            def probe() -> dict[str, Any] | None:
                status = get_ms(cluster, namespace, "rejected").get("status") or {}
                entry = next((r for r in status.get("rejectedPods") or [] if r["reason"] == cause), None)
                return entry if entry and entry["count"] >= count else None
            return probe

        entry = eventually("6 SMTAlignmentError rejections", rejected_at_least(6, "SMTAlignmentError"), timeout=120)
        assert entry["node"] == nodes["SMTAlignmentError"] and "Pod was rejected" in entry["message"]
        ready = condition(get_ms(cluster, namespace, "rejected"), "Ready")
        assert (ready["status"], ready["reason"]) == ("False", "AdmissionRejected")
        assert "the kubelet rejected" in ready["message"] and "SMTAlignmentError" in ready["message"]
        # The Failed pods do not pile up: the newest few are kept, older ones deleted.
        eventually("at most a few rejected pods left", lambda: len(
            [p for p in server_pods(cluster, namespace, "rejected") if p["status"].get("phase") == "Failed"])
            <= KEEP_REJECTED + 2, timeout=30)
        [announced] = events(cluster, namespace, "rejected", "AdmissionRejected")
        assert announced["type"] == "Warning" and announced["message"].startswith("SMTAlignmentError: ")

        # Another cause (a new revision on another node): one more Event, not one per pod.
        apply(cluster, namespace, modelserver("rejected", cores=1,
                                              placement={"nodeSelector": {REJECT: "TopologyAffinityError"}}))
        eventually("3 TopologyAffinityError rejections", rejected_at_least(3, "TopologyAffinityError"), timeout=120)
        causes = sorted(e["message"].split(":")[0] for e in events(cluster, namespace, "rejected", "AdmissionRejected"))
        assert causes == ["SMTAlignmentError", "TopologyAffinityError"]

        # Fixed: the pods run elsewhere, Ready turns True and the rejected pods are history.
        apply(cluster, namespace, modelserver("rejected", cores=1))
        ready_with(cluster, namespace, "rejected", "Available", timeout=120)
        eventually("the rejected pods to be deleted", lambda: not [
            p for p in server_pods(cluster, namespace, "rejected") if p["status"].get("phase") == "Failed"], timeout=60)
        eventually("status.rejectedPods to clear",
                   lambda: "rejectedPods" not in get_ms(cluster, namespace, "rejected")["status"], timeout=30)
    finally:
        cluster.kubectl("delete", "-n", namespace, "modelserver/rejected", "--wait=true", timeout=60, check=False)
        for node in nodes.values():
            cluster.remove_node(node)
