"""Pod Security "restricted", enforced by the real API server: every pod pinserve makes is admitted.

The ``namespace`` fixture labels each test namespace ``pod-security.kubernetes.io/enforce=restricted``; the
PodSecurity admission plugin (on by default in kube-apiserver) refuses a non-conforming pod at creation, so
a ReplicaSet or Job controller that cannot make its pods records a FailedCreate Event instead.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
import yaml
from operator_harness import (
    eventually,
    modelserver,
    operator_fixture,
)

pytestmark = pytest.mark.integration

REPORT = {"latencyMs": {"p50": 1.0, "p90": 1.0, "p99": 1.0, "mean": 1.0, "max": 1.0}, "requests": 10,
          "throughput": {"batchSize": 1, "concurrency": 1, "requestsPerSecond": 1.0, "itemsPerSecond": 1.0},
          "errors": 0}


operator = operator_fixture(PINSERVE_RESYNC_SECONDS="2")


def failed_creates(cluster: Any, namespace: str) -> list[str]:
    events = cluster.get_json("-n", namespace, "events")["items"]
    return [f"{e['involvedObject']['kind']}/{e['involvedObject']['name']}: {e['message']}"
            for e in events if e["reason"] == "FailedCreate"]


def test_the_namespace_enforces_restricted(cluster: Any, namespace: str) -> None:
    """The control: a pod that is not "restricted" is refused here, so admission below means something."""
    labels = cluster.get_json("namespace", namespace)["metadata"]["labels"]
    assert labels["pod-security.kubernetes.io/enforce"] == "restricted"
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "plain"},
           "spec": {"containers": [{"name": "c", "image": "busybox"}]}}
    proc = cluster.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(pod), check=False)
    assert proc.returncode != 0 and "violates PodSecurity" in proc.stderr, proc.stderr


@pytest.mark.parametrize("source", ["uri", "image"])
def test_server_and_benchmark_pods_are_admitted(cluster: Any, operator: Any, namespace: str, source: str) -> None:
    spec: dict[str, Any] = {"benchmark": {"enabled": True, "inputs": {"shapes": {"x": [1, 4]}}}}
    if source == "image":
        spec["model"] = {"image": "registry.example/models/half_plus_two:1", "path": "half_plus_two/1"}
    name = f"psa-{source}"
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=yaml.safe_dump(modelserver(name, cores=1, **spec)))

    selector = f"pinserve.io/modelserver={name},app.kubernetes.io/component=server"
    pods = eventually("the server's pods", lambda: cluster.get_json("-n", namespace, "pods", "-l", selector)["items"],
                      timeout=90)
    assert not failed_creates(cluster, namespace)
    pod = pods[0]["spec"]
    assert pod["automountServiceAccountToken"] is False
    assert pod["securityContext"]["runAsUser"] > 0
    assert not any(v.get("projected") for v in pod.get("volumes", [])), "a ServiceAccount token was mounted"
    assert [c["name"] for c in pod["initContainers"]] == ["fetch-model" if source == "uri" else "copy-model"]

    # Ready (KWOK runs the pods), then the benchmark Job's pod, admitted as well.
    job_pods = eventually("the benchmark Job's pod", lambda: cluster.get_json(
        "-n", namespace, "pods", "-l", f"job-name={name}-bench-1")["items"], timeout=90)
    assert not failed_creates(cluster, namespace)
    assert job_pods[0]["spec"]["automountServiceAccountToken"] is False
    cluster.kubectl("annotate", "-n", namespace, f"pod/{job_pods[0]['metadata']['name']}", "--overwrite",
                    f"pinserve.io/fake-termination-message={json.dumps(REPORT)}", "pinserve.io/fake-exit-code=0")
    eventually("the benchmark in status", lambda: (cluster.get_json("-n", namespace, f"modelserver/{name}")
                                                   .get("status", {}).get("benchmark") or {}).get("requests") == 10,
               timeout=60)
    assert not failed_creates(cluster, namespace)
