"""The pure reconcile core, driven through a ModelServer's life against a simulated API server.

``FakeCluster`` plays the API server's part: it stores what is applied the way the server would return
it (defaults added, empty fields dropped, quantities in canonical form), keeps the status written, and
lets tests move Deployments, pods and benchmark Jobs along.  Nothing here needs a cluster.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest

from pinserve.benchflow import ANNOTATION_REQUESTED
from pinserve.pinning import ANNOTATION_CPUS, ANNOTATION_CPUS_SOURCE
from pinserve.planning import NodeInfo, node_info
from pinserve.quantity import memory_bytes
from pinserve.reconcile import Observed, Outcome, out_of_sync, reconcile, rollout_pending
from pinserve.render.common import ANNOTATION_DESIRED_HASH, LABEL_MODELSERVER
from pinserve.render.job import LABEL_RUN_KEY
from pinserve.settings import Settings
from pinserve.status import status_patch

pytestmark = pytest.mark.unit

SETTINGS = Settings(bench_retries=1, keep_bench_jobs=2)
TIMES = [f"2024-01-01T00:{m:02}:00Z" for m in range(60)]
REPORT = {"latencyMs": {"p50": 10.5, "p90": 12.0, "p99": 15.25, "mean": 10.9, "max": 20.0}, "requests": 200,
          "throughput": {"batchSize": 8, "concurrency": 4, "requestsPerSecond": 50.0, "itemsPerSecond": 400.0},
          "errors": 0}


# -- a simulated API server -------------------------------------------------------------------------------


def _canonical_memory(text: str) -> str:
    size = memory_bytes(text)
    for suffix, unit in (("Ti", 2**40), ("Gi", 2**30), ("Mi", 2**20), ("Ki", 2**10)):
        if size % unit == 0:
            return f"{size // unit}{suffix}"
    return str(size)


def _drop_empty(value: Any) -> Any:
    """Go's omitempty: empty strings and lists vanish from what the server returns."""
    if isinstance(value, dict):
        return {k: _drop_empty(v) for k, v in value.items() if v not in ("", [])}
    if isinstance(value, list):
        return [_drop_empty(v) for v in value]
    return value


def _container_defaults(container: dict[str, Any]) -> None:
    container.setdefault("imagePullPolicy", "IfNotPresent")
    container.setdefault("terminationMessagePath", "/dev/termination-log")
    container.setdefault("terminationMessagePolicy", "File")
    for kind in ("requests", "limits"):
        amounts = container["resources"][kind]
        amounts["memory"] = _canonical_memory(amounts["memory"])
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        if probe in container:
            container[probe].update(timeoutSeconds=1, successThreshold=1)
            if "httpGet" in container[probe]:
                container[probe]["httpGet"]["scheme"] = "HTTP"


def serverize(obj: dict[str, Any], resource_version: int) -> dict[str, Any]:
    live = _drop_empty(copy.deepcopy(obj))
    meta = live["metadata"]
    meta.update(uid=f"uid-{meta['name']}", resourceVersion=str(resource_version), generation=1,
                creationTimestamp=TIMES[resource_version % 60],
                managedFields=[{"manager": "pinserve.io", "operation": "Apply"}])
    kind = live["kind"]
    if kind in ("Deployment", "Job"):
        template = live["spec"]["template"]
        pod = template["spec"]
        pod.setdefault("dnsPolicy", "ClusterFirst")
        pod.setdefault("schedulerName", "default-scheduler")
        pod.setdefault("securityContext", {})
        for container in [*pod.get("initContainers", []), *pod["containers"]]:
            _container_defaults(container)
        if kind == "Deployment":
            pod.setdefault("restartPolicy", "Always")
            live["spec"].update(progressDeadlineSeconds=600, revisionHistoryLimit=10)
            live["status"] = {"observedGeneration": 1, "replicas": 0}
        else:
            template["metadata"]["labels"].update({"job-name": meta["name"], "controller-uid": "x"})
            live["spec"].update(completions=1, parallelism=1, suspend=False)
            live["status"] = {"active": 1}
    if kind == "Service":
        live["spec"].update(clusterIP="10.96.0.10", clusterIPs=["10.96.0.10"], ipFamilies=["IPv4"],
                            ipFamilyPolicy="SingleStack", sessionAffinity="None", internalTrafficPolicy="Cluster")
    return live


def edited_by_hand(live: dict[str, Any]) -> dict[str, Any]:
    """``live``, about to be edited in place, with the new resourceVersion the API server gives every write."""
    meta = live["metadata"]
    meta["resourceVersion"] = f"{meta['resourceVersion']}0"
    return live


@dataclass
class FakeCluster:
    body: dict[str, Any]
    nodes: list[NodeInfo]
    settings: Settings = SETTINGS
    children: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    pods: list[dict[str, Any]] = field(default_factory=list)
    bench_pods: list[dict[str, Any]] = field(default_factory=list)
    version: int = 1
    tick: int = 0
    applied: list[list[dict[str, Any]]] = field(default_factory=list)
    status_writes: int = 0
    events: list[Any] = field(default_factory=list)

    def observed(self) -> Observed:
        jobs = [o for (kind, _), o in self.children.items() if kind == "Job"]
        others = {k: o for k, o in self.children.items() if k[0] != "Job"}
        return Observed(children=others, pods=list(self.pods), jobs=jobs, bench_pods=list(self.bench_pods))

    def reconcile(self) -> Outcome:
        self.tick += 1
        return reconcile(copy.deepcopy(self.body), self.nodes, self.observed(), self.settings, TIMES[self.tick])

    def step(self) -> Outcome:
        """One reconcile, carried out the way the controller does: apply, delete, write status once."""
        outcome = self.reconcile()
        self.applied.append(outcome.apply)
        for obj in outcome.apply:
            self.version += 1
            self.children[(obj["kind"], obj["metadata"]["name"])] = serverize(obj, self.version)
        for kind, name in outcome.delete:
            self.children.pop((kind, name))
        if status_patch(self.body.get("status"), outcome.status) is not None:
            self.status_writes += 1
            self.body["status"] = copy.deepcopy(outcome.status)
        self.events.extend(outcome.events)
        return outcome

    # -- moving the world along --

    def deployment(self) -> dict[str, Any]:
        return self.children[("Deployment", self.body["metadata"]["name"])]

    def roll_out(self, ready: int, *, cpus: list[str] | None = None, node: str = "smt-1") -> None:
        self.deployment()["status"] = {"observedGeneration": 1, "replicas": ready, "readyReplicas": ready,
                                       "updatedReplicas": ready, "availableReplicas": ready}
        self.pods = [_pod(f"{self.body['metadata']['name']}-abc-{i}", node, c)
                     for i, c in enumerate(cpus or [None] * ready)]

    def job(self, name: str) -> dict[str, Any]:
        return self.children[("Job", name)]

    def finish_job(self, name: str, message: str | None, *, succeeded: bool = True) -> None:
        state = "Complete" if succeeded else "Failed"
        self.job(name)["status"] = {"conditions": [{"type": state, "status": "True",
                                                    "lastTransitionTime": TIMES[50]}],
                                    "succeeded" if succeeded else "failed": 1}
        terminated: dict[str, Any] = {"exitCode": 0 if succeeded else 1}
        if message is not None:
            terminated["message"] = message
        self.bench_pods.append({"metadata": {"name": f"{name}-p0d", "labels": {"job-name": name}},
                                "status": {"containerStatuses": [{"name": "bench",
                                                                  "state": {"terminated": terminated}}]}})


def _pod(name: str, node: str, cpus: str | None) -> dict[str, Any]:
    annotations = {ANNOTATION_CPUS: cpus, ANNOTATION_CPUS_SOURCE: "exclusive"} if cpus else {}
    return {"metadata": {"name": name, "labels": {LABEL_MODELSERVER: "rfcn"}, "annotations": annotations},
            "spec": {"nodeName": node},
            "status": {"qosClass": "Guaranteed", "phase": "Running",
                       "conditions": [{"type": "Ready", "status": "True"}]}}


def conditions(status: dict[str, Any]) -> dict[str, tuple[str, str]]:
    return {c["type"]: (c["status"], c["reason"]) for c in status.get("conditions", [])}


@pytest.fixture
def smt_nodes(topo: Callable[..., Any], make_node: Callable[..., dict[str, Any]]) -> list[NodeInfo]:
    return [node_info(make_node("smt-1", topo(2, 8, 2))), node_info(make_node("smt-2", topo(2, 8, 2)))]


@pytest.fixture
def cluster(make_ms: Callable[..., dict[str, Any]], smt_nodes: list[NodeInfo]) -> FakeCluster:
    body = make_ms()
    body["spec"]["resources"]["memory"] = "8192Mi"  # the server will say 8Gi
    return FakeCluster(body, smt_nodes)


# -- bad input and no room --------------------------------------------------------------------------------


@pytest.mark.parametrize(("change", "field"), [
    (lambda s: s["resources"].update(physicalCores=0), "spec.resources.physicalCores"),
    (lambda s: s["resources"].update(memory="8 GB"), "spec.resources.memory"),
    (lambda s: s["model"].update(image="x"), "spec.model"),
    (lambda s: s["model"].update(uri="ftp://x"), "spec.model.uri"),
    (lambda s: s.update(threading={"intraOp": 99}), "spec.threading.intraOp"),
    (lambda s: s.update(colour="blue"), "spec.colour"),
])
def test_invalid_spec_is_a_condition_and_applies_nothing(
    make_ms: Callable[..., dict[str, Any]], smt_nodes: list[NodeInfo], change: Callable[[dict[str, Any]], None],
    field: str,
) -> None:
    body = make_ms()
    change(body["spec"])
    outcome = reconcile(body, smt_nodes, Observed(), SETTINGS, TIMES[0])
    assert outcome.apply == [] and outcome.delete == [] and outcome.modelserver is None
    conds = conditions(outcome.status)
    assert conds["Ready"] == ("False", "InvalidSpec") and conds["Placed"] == ("False", "InvalidSpec")
    [ready] = [c for c in outcome.status["conditions"] if c["type"] == "Ready"]
    assert ready["message"].startswith(f"{field}: ")
    assert outcome.status["observedGeneration"] == 1
    assert [(e.type, e.reason) for e in outcome.events] == [("Warning", "InvalidSpec"), ("Warning", "InvalidSpec")]


def test_invalid_metadata_name(make_ms: Callable[..., dict[str, Any]], smt_nodes: list[NodeInfo]) -> None:
    outcome = reconcile(make_ms(name="x" * 60), smt_nodes, Observed(), SETTINGS, TIMES[0])
    assert outcome.apply == []
    assert "metadata.name" in outcome.status["conditions"][0]["message"]


def test_no_nodes(make_ms: Callable[..., dict[str, Any]]) -> None:
    outcome = reconcile(make_ms(), [], Observed(), SETTINGS, TIMES[0])
    assert outcome.apply == []
    conds = conditions(outcome.status)
    assert conds["Placed"] == ("False", "NoNodes") and conds["Ready"] == ("False", "NotPlaced")


def test_no_fitting_node(make_ms: Callable[..., dict[str, Any]], topo: Callable[..., Any],
                         make_node: Callable[..., dict[str, Any]]) -> None:
    nodes = [node_info(make_node("tiny", topo(1, 2, 2)))]
    outcome = reconcile(make_ms(), nodes, Observed(), SETTINGS, TIMES[0])
    assert outcome.apply == []
    assert conditions(outcome.status)["Placed"] == ("False", "Unschedulable")
    [placed] = [c for c in outcome.status["conditions"] if c["type"] == "Placed"]
    assert "tiny: has 2 physical cores, 4 requested" in placed["message"]


def test_losing_all_nodes_keeps_the_running_deployment(cluster: FakeCluster) -> None:
    cluster.step()
    cluster.roll_out(1)
    cluster.nodes = []
    outcome = cluster.step()
    assert outcome.apply == [] and outcome.delete == []
    conds = conditions(outcome.status)
    assert conds["Placed"] == ("False", "NoNodes")
    assert conds["Ready"] == ("True", "Available")  # from the Deployment, not "NotPlaced"
    assert ("Warning", "NoNodes") in [(e.type, e.reason) for e in outcome.events]


def test_placed_again_after_losing_its_nodes_is_announced(cluster: FakeCluster) -> None:
    nodes = cluster.nodes
    assert cluster.step().events == []  # the first plan: no Event
    cluster.nodes = []
    assert "NoNodes" in [e.reason for e in cluster.step().events]
    cluster.nodes = nodes
    again = cluster.step()
    assert conditions(again.status)["Placed"] == ("True", "Planned")
    assert [(e.type, e.reason) for e in again.events] == [("Normal", "Planned")]


# -- the happy path, step by step -------------------------------------------------------------------------


def test_life_of_a_modelserver(cluster: FakeCluster) -> None:
    # 1. Planned: ConfigMap, Service, Deployment applied, in that order.
    first = cluster.step()
    assert [(o["kind"], o["metadata"]["name"]) for o in first.apply] == [
        ("ConfigMap", "rfcn-serving"), ("Service", "rfcn"), ("Deployment", "rfcn")]
    conds = conditions(first.status)
    assert conds["Placed"] == ("True", "Planned")
    assert conds["Ready"] == ("False", "Deploying")
    assert conds["Pinned"] == ("Unknown", "NoReadyPods")
    assert conds["Benchmarked"] == ("Unknown", "WaitingForReady")
    assert first.status["placement"]["cpuRequest"] == 8 and first.status["placement"]["physicalCores"] == 4
    assert first.status["endpoints"] == {"grpc": "rfcn.ml.svc:8500", "rest": "http://rfcn.ml.svc:8501"}
    assert first.events == []  # the first plan is what the create asked for: status, not an Event

    # 2. The server's version of what we applied is in sync: nothing to apply.
    second = cluster.step()
    assert second.apply == []
    assert conditions(second.status)["Ready"] == ("False", "PodsNotReady")
    assert second.events == []

    # 3. Pods become ready on exclusive whole cores: Ready, Pinned, and the benchmark starts.
    cluster.roll_out(1, cpus=["0-3,16-19"])
    third = cluster.step()
    conds = conditions(third.status)
    assert conds["Ready"] == ("True", "Available")
    assert conds["Pinned"] == ("True", "ExclusiveCores")
    assert conds["Benchmarked"] == ("Unknown", "Running")
    [bench] = third.apply
    assert bench["kind"] == "Job" and bench["metadata"]["name"] == "rfcn-bench-1"
    container = bench["spec"]["template"]["spec"]["containers"][0]
    assert container["resources"]["requests"] == container["resources"]["limits"]
    assert "/dev/termination-log" in container["args"]
    assert third.status["pods"] == [{"name": "rfcn-abc-0", "node": "smt-1", "qosClass": "Guaranteed",
                                     "ready": True, "cpus": "0-3,16-19", "physicalCores": 4}]
    assert third.status["readyReplicas"] == 1
    assert {(e.type, e.reason) for e in third.events} == {("Normal", "Available"), ("Normal", "ExclusiveCores")}

    # 4. The Job shows up as running; after that, a resync writes nothing and keeps transition times.
    assert cluster.step().apply == []
    writes = cluster.status_writes
    before = copy.deepcopy(cluster.body["status"])
    fourth = cluster.step()
    assert fourth.apply == [] and fourth.events == []
    assert status_patch(before, fourth.status) is None
    assert cluster.status_writes == writes

    # 5. The Job completes with its report: status.benchmark, Benchmarked=True and one Event.
    cluster.finish_job("rfcn-bench-1", json.dumps(REPORT, separators=(",", ":")))
    fifth = cluster.step()
    assert conditions(fifth.status)["Benchmarked"] == ("True", "Measured")
    benchmark = fifth.status["benchmark"]
    assert benchmark["generation"] == 1 and benchmark["latencyMs"] == REPORT["latencyMs"]
    assert benchmark["throughput"] == REPORT["throughput"] and benchmark["requests"] == 200
    assert [(e.type, e.reason) for e in fifth.events] == [("Normal", "BenchmarkCompleted")]
    assert fifth.apply == []

    # 6. Steady state: nothing applied, nothing written, no events, times kept.
    writes = cluster.status_writes
    for _ in range(3):
        again = cluster.step()
        assert again.apply == [] and again.delete == [] and again.events == []
    assert cluster.status_writes == writes
    ready = next(c for c in cluster.body["status"]["conditions"] if c["type"] == "Ready")
    assert ready["lastTransitionTime"] == TIMES[3]
    placed = next(c for c in cluster.body["status"]["conditions"] if c["type"] == "Placed")
    assert placed["lastTransitionTime"] == TIMES[1]


def test_no_op_resync_writes_nothing_at_every_stage(cluster: FakeCluster) -> None:
    stages: list[Callable[[], None]] = [
        lambda: None,
        lambda: cluster.roll_out(1, cpus=["0-3,16-19"]),
        lambda: cluster.finish_job("rfcn-bench-1", json.dumps(REPORT)),
    ]
    for stage in stages:
        stage()
        cluster.step()
        cluster.step()  # settles what the first step applied
        current = copy.deepcopy(cluster.body["status"])
        outcome = cluster.reconcile()
        assert outcome.apply == []
        assert status_patch(current, outcome.status) is None
        assert outcome.events == []


def test_applied_objects_fed_back_are_in_sync(cluster: FakeCluster) -> None:
    outcome = cluster.step()
    observed = cluster.observed()
    assert out_of_sync(outcome.apply, observed) == []
    # ... and a real change shows up.
    live = edited_by_hand(observed.children[("Deployment", "rfcn")])
    live["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]["cpu"] = "6"
    assert [o["kind"] for o in out_of_sync(outcome.apply, observed)] == ["Deployment"]


def test_spec_change_rolls_the_deployment(cluster: FakeCluster) -> None:
    cluster.step()
    cluster.roll_out(1)
    cluster.body["spec"]["resources"]["physicalCores"] = 2
    cluster.body["metadata"]["generation"] = 2
    outcome = cluster.step()
    assert [o["kind"] for o in outcome.apply] == ["Deployment"]
    assert conditions(outcome.status)["Ready"] == ("False", "RollingOut")
    assert outcome.status["placement"]["cpuRequest"] == 4
    assert outcome.status["observedGeneration"] == 2


def test_external_edit_of_the_deployment_is_reverted(cluster: FakeCluster) -> None:
    cluster.step()
    edited_by_hand(cluster.deployment())["spec"]["template"]["spec"]["containers"][0]["env"][0]["value"] = "tampered"
    assert [o["kind"] for o in cluster.step().apply] == ["Deployment"]


def test_deleted_child_is_recreated(cluster: FakeCluster) -> None:
    cluster.step()
    del cluster.children[("Service", "rfcn")]
    assert [o["kind"] for o in cluster.step().apply] == ["Service"]


def test_scaled_to_zero(cluster: FakeCluster) -> None:
    cluster.body["spec"]["replicas"] = 0
    cluster.step()
    outcome = cluster.step()
    assert conditions(outcome.status)["Ready"] == ("True", "ScaledToZero")
    assert outcome.apply == []  # no benchmark against nothing
    assert conditions(outcome.status)["Benchmarked"][0] != "True"


def test_fetch_failure_is_reported(cluster: FakeCluster) -> None:
    cluster.step()
    cluster.pods = [{"metadata": {"name": "rfcn-abc-0"}, "spec": {"nodeName": "smt-1"},
                     "status": {"qosClass": "Guaranteed", "initContainerStatuses": [
                         {"name": "fetch-model", "state": {"waiting": {"reason": "CrashLoopBackOff"}},
                          "lastState": {"terminated": {"exitCode": 3, "message": "404 Not Found"}}}]}}]
    outcome = cluster.step()
    assert conditions(outcome.status)["Ready"] == ("False", "ModelFetchFailed")
    assert "404 Not Found" in next(c for c in outcome.status["conditions"] if c["type"] == "Ready")["message"]


def test_unschedulable_pod_is_reported(cluster: FakeCluster) -> None:
    cluster.step()
    cluster.pods = [{"metadata": {"name": "rfcn-abc-0"}, "status": {"conditions": [
        {"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
         "message": "0/2 nodes: Insufficient cpu"}]}}]
    outcome = cluster.step()
    assert conditions(outcome.status)["Ready"] == ("False", "Unschedulable")


# -- benchmark outcomes through reconcile ------------------------------------------------------------------


def _ready_and_benchmarking(cluster: FakeCluster) -> None:
    cluster.step()
    cluster.roll_out(1, cpus=["0-3,16-19"])
    cluster.step()
    assert ("Job", "rfcn-bench-1") in cluster.children


@pytest.mark.parametrize("message", ["not json", json.dumps({"requests": 1}),
                                     json.dumps({**REPORT, "pad": "x" * 5000})])
def test_bad_report_ends_in_benchmarked_false(cluster: FakeCluster, message: str) -> None:
    _ready_and_benchmarking(cluster)
    cluster.finish_job("rfcn-bench-1", message)
    outcome = cluster.step()
    assert conditions(outcome.status)["Benchmarked"] == ("False", "BadReport")
    assert outcome.status["benchmark"]["error"]["reason"] == "BadReport"
    assert conditions(outcome.status)["Ready"] == ("True", "Available")
    assert [e.reason for e in outcome.events] == ["BadReport"]
    assert cluster.step().events == []


def test_failed_job_is_retried_then_reported(cluster: FakeCluster) -> None:
    _ready_and_benchmarking(cluster)
    cluster.finish_job("rfcn-bench-1", None, succeeded=False)
    retry = cluster.step()
    assert [o["metadata"]["name"] for o in retry.apply] == ["rfcn-bench-1-r1"]
    assert conditions(retry.status)["Benchmarked"] == ("Unknown", "Retrying")
    cluster.finish_job("rfcn-bench-1-r1", None, succeeded=False)
    final = cluster.step()
    assert final.apply == []
    assert conditions(final.status)["Benchmarked"] == ("False", "NoReport")
    assert final.status["benchmark"]["jobName"] == "rfcn-bench-1-r1"


def test_benchmark_on_demand_and_clean_up(cluster: FakeCluster) -> None:
    _ready_and_benchmarking(cluster)
    cluster.finish_job("rfcn-bench-1", json.dumps(REPORT))
    cluster.step()
    for i, when in enumerate(["2024-06-01", "2024-06-02", "2024-06-03"]):
        cluster.body["metadata"]["annotations"][ANNOTATION_REQUESTED] = when
        outcome = cluster.step()
        [job] = outcome.apply
        name = job["metadata"]["name"]
        assert name.startswith("rfcn-bench-1-") and job["metadata"]["labels"][LABEL_RUN_KEY] != "1"
        assert conditions(outcome.status)["Benchmarked"] == ("Unknown", "Running")
        cluster.job(name)["metadata"]["creationTimestamp"] = f"2024-06-0{i + 1}T00:00:00Z"
        cluster.finish_job(name, json.dumps(REPORT))
        done = cluster.step()
        assert conditions(done.status)["Benchmarked"] == ("True", "Measured")
        assert done.status["benchmark"]["runKey"] == job["metadata"]["labels"][LABEL_RUN_KEY]
    cluster.step()
    jobs = [name for kind, name in cluster.children if kind == "Job"]
    # keep_bench_jobs=2: the current run's Job and the newest one before it.
    assert len(jobs) == SETTINGS.keep_bench_jobs


# -- what leaves the spec leaves the children (issue 10, item 3) -------------------------------------------


def _live_server(cluster: FakeCluster) -> dict[str, Any]:
    return cluster.deployment()["spec"]["template"]["spec"]["containers"][0]  # type: ignore[no-any-return]


REMOVALS = [
    # (id, field added to the spec, then removed; where it shows in the live children)
    ("env var", lambda s: s.update(server={"env": [{"name": "A", "value": "1"}, {"name": "B", "value": "2"}]}),
     lambda s: s.update(server={"env": [{"name": "A", "value": "1"}]}),
     lambda c: [e["name"] for e in _live_server(c)["env"] if e["name"] in ("A", "B")], ["A", "B"], ["A"]),
    ("nodeSelector", lambda s: s.update(placement={"nodeSelector": {"pool": "cpu"}}),
     lambda s: s.update(placement={}),
     lambda c: c.deployment()["spec"]["template"]["spec"].get("nodeSelector"), {"pool": "cpu"}, None),
    ("server arg", lambda s: s.update(server={"args": ["--a", "--b"]}), lambda s: s.update(server={"args": ["--a"]}),
     lambda c: _live_server(c).get("args"), ["--a", "--b"], ["--a"]),
    ("toleration", lambda s: s.update(placement={"tolerations": [{"key": "k", "operator": "Exists"}]}),
     lambda s: s.update(placement={}),
     lambda c: c.deployment()["spec"]["template"]["spec"].get("tolerations"), [{"key": "k", "operator": "Exists"}],
     None),
    ("batching", lambda s: s.update(server={"batching": {"maxBatchSize": 4}}), lambda s: s.update(server={}),
     lambda c: "batching.pbtxt" in c.children[("ConfigMap", "rfcn-serving")]["data"], True, False),
    ("credentials secret", lambda s: s["model"].update(credentialsSecret="s3"), lambda s: s["model"].pop(
        "credentialsSecret"), lambda c: c.deployment()["spec"]["template"]["spec"]["initContainers"][0].get("envFrom"),
     [{"secretRef": {"name": "s3"}}], None),
]


@pytest.mark.parametrize(("add", "remove", "seen", "before", "after"), [r[1:] for r in REMOVALS],
                         ids=[r[0] for r in REMOVALS])
def test_a_field_removed_from_the_spec_leaves_the_children(
    make_ms: Callable[..., dict[str, Any]], topo: Callable[..., Any], make_node: Callable[..., dict[str, Any]], *,
    add: Callable[[dict[str, Any]], None], remove: Callable[[dict[str, Any]], None],
    seen: Callable[[FakeCluster], Any], before: Any, after: Any,
) -> None:
    body = make_ms()
    add(body["spec"])
    nodes = [node_info(make_node("smt-1", topo(2, 8, 2), labels={"pool": "cpu"}))]
    cluster = FakeCluster(body, nodes)
    cluster.step()
    cluster.roll_out(1)
    cluster.step()
    assert seen(cluster) == before
    remove(cluster.body["spec"])
    cluster.body["metadata"]["generation"] = 2
    outcome = cluster.step()
    assert "Deployment" in {o["kind"] for o in outcome.apply}
    # FakeCluster keeps what was applied, as server-side apply does with the fields its manager stops sending.
    assert seen(cluster) == after
    assert cluster.step().apply == []  # and then it is steady: no write per resync


def test_children_applied_by_an_older_operator_are_stamped_once(cluster: FakeCluster) -> None:
    cluster.step()
    cluster.roll_out(1)
    for child in cluster.children.values():
        child["metadata"].pop("annotations", None)  # no desired-hash annotation yet
    restamp = cluster.step()
    assert sorted(o["kind"] for o in restamp.apply) == ["ConfigMap", "Deployment", "Service"]
    assert all(ANNOTATION_DESIRED_HASH in o["metadata"]["annotations"] for o in restamp.apply)
    cluster.roll_out(1)
    cluster.step()
    assert cluster.step().apply == []


# -- node churn rolls nothing (item 4) -------------------------------------------------------------------


def test_node_churn_rolls_nothing_until_no_node_of_the_class_is_left(
    cluster: FakeCluster, topo: Callable[..., Any], make_node: Callable[..., dict[str, Any]],
) -> None:
    cluster.step()
    cluster.roll_out(1, cpus=["0-3,16-19"])
    cluster.step()
    applied_template = copy.deepcopy(cluster.deployment()["spec"]["template"])
    assert cluster.body["status"]["placement"]["threadsPerCore"] == 2
    plain = [node_info(make_node(f"plain-{i}", topo(2, 8, 1))) for i in range(3)]
    # Three non-SMT nodes join and outnumber the SMT ones: by majority the plan would flip to them.
    cluster.nodes = [*cluster.nodes, *plain]
    joined = cluster.step()
    assert [o["kind"] for o in joined.apply] == []
    assert cluster.deployment()["spec"]["template"] == applied_template
    assert cluster.body["status"]["placement"]["threadsPerCore"] == 2
    assert conditions(joined.status)["Ready"] == ("True", "Available")
    # One SMT node leaves: one is left, still nothing rolls.
    cluster.nodes = [n for n in cluster.nodes if n.name != "smt-2"]
    assert cluster.step().apply == []
    # The last one leaves: re-planned for the nodes that are left, said in the Placed message and an Event.
    cluster.nodes = plain
    replanned = cluster.step()
    assert [o["kind"] for o in replanned.apply] == ["Deployment"]
    assert cluster.body["status"]["placement"]["threadsPerCore"] == 1
    assert _live_server(cluster)["resources"]["limits"]["cpu"] == "4"
    placed = next(c for c in replanned.status["conditions"] if c["type"] == "Placed")
    assert "re-planned: no eligible node of the recorded class (2 thread(s) per core" in placed["message"]
    assert [(e.type, e.reason) for e in replanned.events if e.reason == "Replanned"] == [("Warning", "Replanned")]
    # ... once: the new record sticks.
    cluster.roll_out(1)
    again = cluster.step()
    assert again.apply == [] and not [e for e in again.events if e.reason == "Replanned"]


def test_a_spec_change_re_plans_the_class(cluster: FakeCluster, topo: Callable[..., Any],
                                          make_node: Callable[..., dict[str, Any]]) -> None:
    cluster.step()
    cluster.roll_out(1)
    cluster.step()  # Ready: the benchmark Job starts
    cluster.nodes = [*cluster.nodes, *[node_info(make_node(f"plain-{i}", topo(2, 8, 1))) for i in range(3)]]
    assert cluster.step().apply == []
    cluster.body["spec"]["resources"]["physicalCores"] = 2
    cluster.body["metadata"]["generation"] = 2
    changed = cluster.step()
    assert "Deployment" in [o["kind"] for o in changed.apply]
    assert changed.status["placement"]["threadsPerCore"] == 1  # the majority of the moment, for the new spec
    assert not [e for e in changed.events if e.reason == "Replanned"]


# -- Ready only once the current revision is fully rolled out (item 5) -------------------------------------


def _deployment_with(status: dict[str, Any], *, generation: int = 2, replicas: int = 2) -> dict[str, Any]:
    return {"metadata": {"name": "rfcn", "generation": generation}, "spec": {"replicas": replicas},
            "status": status}


ROLLOUTS = [
    # (id, deployment status, expected (reason, message) or None when fully rolled out)
    ("complete", {"observedGeneration": 2, "replicas": 2, "updatedReplicas": 2, "readyReplicas": 2,
                  "availableReplicas": 2}, None),
    ("controller behind", {"observedGeneration": 1, "replicas": 2, "updatedReplicas": 2, "readyReplicas": 2,
                           "availableReplicas": 2}, ("RollingOut", "has not observed generation 2")),
    ("old and new both ready", {"observedGeneration": 2, "replicas": 3, "updatedReplicas": 1, "readyReplicas": 3,
                                "availableReplicas": 3}, ("RollingOut", "1/2 replicas run the current revision, "
                                                                        "2 old replica(s) still running")),
    ("new all up, one old terminating", {"observedGeneration": 2, "replicas": 3, "updatedReplicas": 2,
                                         "readyReplicas": 2, "availableReplicas": 2},
     ("RollingOut", "1 old replica(s) still running")),
    ("not all updated yet", {"observedGeneration": 2, "replicas": 1, "updatedReplicas": 1, "readyReplicas": 1,
                             "availableReplicas": 1}, ("PodsNotReady", "1/2 replicas ready")),
    ("updated but not available", {"observedGeneration": 2, "replicas": 2, "updatedReplicas": 2,
                                   "readyReplicas": 1, "availableReplicas": 1}, ("PodsNotReady", "1/2 replicas ready")),
    ("scaling down (kubectl's rule: complete)", {"observedGeneration": 2, "replicas": 3, "updatedReplicas": 3,
                                                 "readyReplicas": 3, "availableReplicas": 3}, None),
    ("empty status", {}, ("RollingOut", "has not observed generation 2")),
]


@pytest.mark.parametrize(("status", "expected"), [r[1:] for r in ROLLOUTS], ids=[r[0] for r in ROLLOUTS])
def test_rollout_pending(status: dict[str, Any], expected: tuple[str, str] | None) -> None:
    got = rollout_pending(_deployment_with(status), 2)
    if expected is None:
        assert got is None
    else:
        assert got is not None and got[0] == expected[0] and expected[1] in got[1]


def test_mid_rollout_is_not_ready_and_starts_no_benchmark(cluster: FakeCluster) -> None:
    cluster.step()
    # A new revision is rolling: the old pod and the surge pod are both ready.
    cluster.deployment()["metadata"]["generation"] = 2
    cluster.deployment()["status"] = {"observedGeneration": 2, "replicas": 2, "updatedReplicas": 1,
                                      "readyReplicas": 2, "availableReplicas": 2}
    cluster.pods = [_pod("rfcn-old-0", "smt-1", "0-3,16-19"), _pod("rfcn-new-0", "smt-2", "0-3,16-19")]
    mid = cluster.step()
    assert conditions(mid.status)["Ready"] == ("False", "RollingOut")
    assert conditions(mid.status)["Benchmarked"] == ("Unknown", "WaitingForReady")
    assert not [o for o in mid.apply if o["kind"] == "Job"]
    # The old pod is gone: fully rolled out, Ready, and only now the benchmark starts.
    cluster.deployment()["status"] = {"observedGeneration": 2, "replicas": 1, "updatedReplicas": 1,
                                      "readyReplicas": 1, "availableReplicas": 1}
    cluster.pods = cluster.pods[1:]
    done = cluster.step()
    assert conditions(done.status)["Ready"] == ("True", "Available")
    assert [o["kind"] for o in done.apply] == ["Job"]


# -- autoscaling: the scale subresource and an HPA (item 10) -----------------------------------------------


def test_status_selector_finds_the_server_pods(cluster: FakeCluster) -> None:
    outcome = cluster.step()
    selector = dict(term.split("=") for term in outcome.status["selector"].split(","))
    assert selector == cluster.deployment()["spec"]["selector"]["matchLabels"]
    assert selector == {LABEL_MODELSERVER: "rfcn", "app.kubernetes.io/component": "server"}


def test_an_hpa_scaling_spec_replicas_drives_the_deployment_and_nothing_resets_it(cluster: FakeCluster) -> None:
    cluster.step()
    cluster.roll_out(1, cpus=["0-3,16-19"])
    cluster.step()
    cluster.finish_job("rfcn-bench-1", json.dumps(REPORT))
    cluster.step()
    placement = copy.deepcopy(cluster.body["status"]["placement"])
    # The HPA writes spec.replicas through the scale subresource: a new generation.
    cluster.body["spec"]["replicas"] = 3
    cluster.body["metadata"]["generation"] = 2
    scaled = cluster.step()
    assert [o["kind"] for o in scaled.apply] == ["Deployment"]
    assert cluster.deployment()["spec"]["replicas"] == 3
    assert cluster.body["status"]["placement"] == placement
    cluster.roll_out(3)
    settled = cluster.step()
    assert conditions(settled.status)["Ready"] == ("True", "Available")
    # The figures measured the same spec: no benchmark per scaling step.
    assert settled.apply == [] and conditions(settled.status)["Benchmarked"] == ("True", "Measured")
    for _ in range(3):  # resyncs keep the HPA's count
        assert cluster.step().apply == []
    assert cluster.deployment()["spec"]["replicas"] == 3
