"""Rendering: golden files for a handful of specs, and invariants over many specs.

Regenerate the goldens with ``UPDATE_GOLDEN=1 pytest tests/unit/test_render.py`` and review the diff.
The start script (tested on its own in test_start_script.py) and the config hash derived from it are
replaced by placeholders in the goldens, so a change to the script does not churn them.
"""

from __future__ import annotations

import copy
import itertools
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from pinserve.api import ModelServer, parse_modelserver
from pinserve.planning import DEFAULT_INTER_OP, DEFAULT_KMP_BLOCKTIME, Placement, node_info, plan
from pinserve.render import configmap, render_children
from pinserve.render.common import ANNOTATION_CONFIG_HASH, LABEL_MODELSERVER, bench_job_name
from pinserve.render.configmap import START_SCRIPT, start_script
from pinserve.render.deployment import merge_affinity
from pinserve.render.job import LABEL_RUN_KEY, TERMINATION_LOG, render_bench_job
from pinserve.settings import Settings
from pinserve.topology.model import Topology

pytestmark = pytest.mark.unit

GOLDEN = Path(__file__).parent / "golden"
SETTINGS = Settings(operator_image="pinserve/operator:test", bench_image="pinserve/bench:test")
UID = "11111111-2222-3333-4444-555555555555"
THREAD_VARS = {
    "omp": "OMP_NUM_THREADS",
    "intraOp": "TENSORFLOW_INTRA_OP_PARALLELISM",
    "interOp": "TENSORFLOW_INTER_OP_PARALLELISM",
    "kmpAffinity": "KMP_AFFINITY",
    "kmpBlocktime": "KMP_BLOCKTIME",
}


def make(spec: dict[str, Any], name: str = "rfcn", generation: int = 1) -> ModelServer:
    return parse_modelserver({"kind": "ModelServer",
                              "metadata": {"name": name, "namespace": "ml", "uid": UID, "generation": generation},
                              "spec": spec})


def base_spec(**over: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "model": {"uri": "https://models.example/rfcn.tar.gz", "path": "rfcn/saved_model"},
        "resources": {"physicalCores": 4, "memory": "8Gi"},
    }
    spec.update(over)
    return spec


@pytest.fixture
def placed(topo: Callable[..., Topology], make_node: Callable[..., dict[str, Any]]) -> Callable[..., Any]:
    """ms, placement for a spec on one node: SMT (2 x 8 cores x 2 threads), no SMT, or unknown topology."""

    def build(spec: dict[str, Any], machine: str = "smt", name: str = "rfcn") -> tuple[ModelServer, Placement]:
        ms = make(spec, name)
        topology = {"smt": topo(2, 8, 2), "nosmt": topo(2, 8, 1), "capacity": None}[machine]
        labels = dict(ms.spec.placement.node_selector)
        node = node_info(make_node("worker", topology, cpu="64", labels=labels,
                                   taints=[dict(t, effect=t.get("effect", "NoSchedule"))
                                           for t in ms.spec.placement.tolerations if t.get("key")]))
        return ms, plan(ms.spec, [node], SETTINGS)

    return build


def everything(ms: ModelServer, placement: Placement) -> list[dict[str, Any]]:
    return [*render_children(ms, placement, SETTINGS),
            render_bench_job(ms, SETTINGS, bench_job_name(ms, str(ms.ref.generation)), str(ms.ref.generation))]


def by_kind(objects: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    kinds = {o["kind"]: o for o in objects}
    assert len(kinds) == len(objects)
    return kinds


def pod_spec(objects: list[dict[str, Any]]) -> dict[str, Any]:
    return by_kind(objects)["Deployment"]["spec"]["template"]["spec"]  # type: ignore[no-any-return]


def server(objects: list[dict[str, Any]]) -> dict[str, Any]:
    [container] = pod_spec(objects)["containers"]
    return container  # type: ignore[no-any-return]


def env_of(container: dict[str, Any]) -> dict[str, Any]:
    names = [e["name"] for e in container.get("env", [])]
    assert len(names) == len(set(names)), f"duplicate env names: {names}"
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container.get("env", [])}


# -- goldens ----------------------------------------------------------------------------------------------

GOLDEN_CASES: dict[str, tuple[dict[str, Any], str]] = {
    "uri-smt-defaults": (base_spec(), "smt"),
    "uri-credentials-capacity": (base_spec(model={"uri": "s3://bucket/rfcn.tar.gz", "credentialsSecret": "s3-creds",
                                                  "version": 2}), "capacity"),
    # Converted by the fetch init container in the bench image (TensorFlow), with the signature's tensors.
    "uri-frozen-graph": (base_spec(model={
        "name": "deeplabv3", "uri": "http://download.tensorflow.org/models/deeplabv3_pascal_trainval_2018_01_04.tar.gz",
        "path": "deeplabv3_pascal_trainval", "format": "frozenGraph",
        "inputs": {"ImageTensor": "ImageTensor:0"},
        "outputs": {"SemanticPredictions": "SemanticPredictions:0", "Logits": "ResizeBilinear_2:0"}},
        benchmark={"protocol": "rest", "inputs": {"shapes": {"ImageTensor": [1, 513, 513, 3]}}}), "nosmt"),
    "pvc-batching": (base_spec(
        model={"name": "mask_rcnn", "pvc": {"claimName": "models", "subPath": "zoo"}, "path": "mask_rcnn/1"},
        server={"batching": {"maxBatchSize": 16, "batchTimeoutMicros": 2000}},
        resources={"physicalCores": 8, "memory": "16Gi"}, placement={"numa": "Require"}), "nosmt"),
    "image-user-threading-env": (base_spec(
        model={"image": "registry.example/models/unet:1", "path": "models/unet"},
        server={"image": "tensorflow/serving:2.14.0", "threadConfig": "Flags", "args": ["--rest_api_timeout_in_ms=0"],
                "env": [{"name": "OMP_NUM_THREADS", "value": "3"},
                        {"name": "TF_CPP_MIN_LOG_LEVEL", "value": "1"},
                        {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}}]},
        threading={"omp": 2, "interOp": 1, "kmpBlocktime": 0}, replicas=2,
        benchmark={"protocol": "rest", "placement": "OtherNode", "inputs": {"shapes": {"x": [1, 64, 64, 3]}}}),
        "smt"),
    "affinity-merge": (base_spec(placement={
        "numa": "Require",
        "nodeSelector": {"pool": "inference"},
        "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "ml", "effect": "NoSchedule"}],
        "affinity": {
            "nodeAffinity": {
                "requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
                    {"matchExpressions": [{"key": "zone", "operator": "In", "values": ["a"]}]},
                    {"matchExpressions": [{"key": "zone", "operator": "In", "values": ["b"]}]},
                ]},
                "preferredDuringSchedulingIgnoredDuringExecution": [
                    {"weight": 10, "preference": {"matchExpressions": [
                        {"key": "gen", "operator": "In", "values": ["spr"]}]}}],
            },
            "podAntiAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [
                {"weight": 50, "podAffinityTerm": {"topologyKey": "kubernetes.io/hostname",
                                                   "labelSelector": {"matchLabels": {"app": "noisy"}}}}]},
        },
    }), "smt"),
}


class _NoAliases(yaml.SafeDumper):
    def ignore_aliases(self, data: Any) -> bool:
        return True


def golden_text(objects: list[dict[str, Any]]) -> str:
    shown = copy.deepcopy(objects)
    for obj in shown:
        if obj["kind"] == "ConfigMap":
            obj["data"][START_SCRIPT] = "<start.sh: see test_start_script.py>"
        if obj["kind"] == "Deployment":
            obj["spec"]["template"]["metadata"]["annotations"][ANNOTATION_CONFIG_HASH] = "<config hash>"
    return yaml.dump_all(shown, Dumper=_NoAliases, sort_keys=False, width=110)


@pytest.mark.parametrize("case", sorted(GOLDEN_CASES))
def test_golden(placed: Callable[..., Any], case: str) -> None:
    spec, machine = GOLDEN_CASES[case]
    text = golden_text(everything(*placed(spec, machine)))
    path = GOLDEN / f"{case}.yaml"
    if os.environ.get("UPDATE_GOLDEN") == "1":
        GOLDEN.mkdir(exist_ok=True)
        path.write_text(text)
    assert path.is_file(), f"{path} is missing: run with UPDATE_GOLDEN=1"
    assert text == path.read_text(), f"{path.name} differs: run with UPDATE_GOLDEN=1 and review the diff"


def test_no_stale_goldens() -> None:
    assert {p.stem for p in GOLDEN.glob("*.yaml")} == set(GOLDEN_CASES)


# -- invariants over many specs ---------------------------------------------------------------------------

SOURCES = [
    {"uri": "https://models.example/m.tar.gz", "path": "m"},
    {"uri": "gs://bucket/m", "credentialsSecret": "gcs"},
    {"pvc": {"claimName": "models"}},
    {"pvc": {"claimName": "models", "subPath": "a"}, "path": "b/c", "version": 3},
    {"image": "registry.example/m:1"},
    {"image": "registry.example/m:1", "path": "models/m"},
]
THREADINGS: list[dict[str, Any]] = [{}, {"omp": 1}, {"intraOp": 2, "interOp": 1},
                                    {"kmpAffinity": "granularity=fine,scatter", "kmpBlocktime": 0},
                                    {"omp": 4, "intraOp": 4, "interOp": 4, "kmpAffinity": "x", "kmpBlocktime": 5}]
BATCHINGS: list[dict[str, Any] | None] = [None, {}, {"maxBatchSize": 32, "numBatchThreads": 2}]


def many_specs() -> Iterator[tuple[str, dict[str, Any], str]]:
    combos = itertools.product(SOURCES, THREADINGS, BATCHINGS, (1, 3, 8), ("smt", "nosmt", "capacity"),
                               ("Prefer", "Require", "Ignore"))
    for i, (source, threading, batching, cores, machine, numa) in enumerate(combos):
        if machine == "capacity" and numa == "Require":
            continue
        server: dict[str, Any] = {"batching": batching} if batching is not None else {}
        if i % 7 == 0:
            server["env"] = [{"name": "KMP_SETTINGS", "value": "1"}]
        spec = base_spec(model=dict(source), threading=threading, server=server,
                         resources={"physicalCores": cores, "memory": "2Gi"},
                         placement={"numa": numa}, replicas=i % 3)
        yield f"{i}", spec, machine


SPECS = list(many_specs())


@pytest.fixture(scope="module")
def rendered(
    topo: Callable[..., Topology], make_node: Callable[..., dict[str, Any]]
) -> list[tuple[dict[str, Any], ModelServer, Placement, list[dict[str, Any]]]]:
    nodes = {machine: node_info(make_node("w", topology, cpu="64"))
             for machine, topology in (("smt", topo(2, 8, 2)), ("nosmt", topo(2, 8, 1)), ("capacity", None))}
    out = []
    for _, spec, machine in SPECS:
        ms = make(spec)
        placement = plan(ms.spec, [nodes[machine]], SETTINGS)
        out.append((spec, ms, placement, everything(ms, placement)))
    return out


def test_there_are_many_specs() -> None:
    assert len(SPECS) > 500


def containers_of(obj: dict[str, Any]) -> list[dict[str, Any]]:
    spec = obj["spec"]["template"]["spec"]
    return [*spec.get("initContainers", []), *spec["containers"]]


def test_every_container_is_guaranteed_server_and_client_in_whole_cpus(rendered: list[Any]) -> None:
    """Requests == limits everywhere (Guaranteed QoS); whole CPUs for the server and the benchmark client
    (pinned), a fraction for init containers (the shared pool: a whole-CPU init container is rejected by
    the kubelet with full-pcpus-only on SMT nodes, and takes the server's cores while it runs)."""
    for _, _, placement, objects in rendered:
        for obj in objects:
            if obj["kind"] not in ("Deployment", "Job"):
                continue
            spec = obj["spec"]["template"]["spec"]
            for container in containers_of(obj):
                res = container["resources"]
                assert res["requests"] == res["limits"], container["name"]
                assert set(res["requests"]) == {"cpu", "memory"}
                cpu = res["requests"]["cpu"]
                init = any(c is container for c in spec.get("initContainers", []))
                if init:
                    assert isinstance(cpu, str) and cpu.endswith("m") and 0 < int(cpu[:-1]) < 1000, cpu
                else:
                    assert isinstance(cpu, str) and cpu.isdigit() and int(cpu) >= 1, cpu
        assert server(objects)["resources"]["requests"]["cpu"] == str(placement.cpu_request)
        assert server(objects)["resources"]["limits"]["memory"] == "2Gi"


def test_children_are_owned_and_labelled(rendered: list[Any]) -> None:
    for _, ms, _, objects in rendered:
        for obj in objects:
            meta = obj["metadata"]
            assert meta["namespace"] == "ml"
            assert meta["ownerReferences"] == [{"apiVersion": "pinserve.io/v1alpha1", "kind": "ModelServer",
                                                "name": ms.ref.name, "uid": UID, "controller": True,
                                                "blockOwnerDeletion": True}]
            labels = meta["labels"]
            for key in ("app.kubernetes.io/name", "app.kubernetes.io/instance", "app.kubernetes.io/component",
                        "app.kubernetes.io/managed-by", "app.kubernetes.io/part-of"):
                assert labels.get(key), (obj["kind"], key)
            assert labels["app.kubernetes.io/managed-by"] == "pinserve"
            assert labels[LABEL_MODELSERVER] == ms.ref.name


def test_service_ports_and_selector(rendered: list[Any]) -> None:
    for _, _, _, objects in rendered:
        kinds = by_kind(objects)
        service, deployment = kinds["Service"], kinds["Deployment"]
        assert [(p["name"], p["port"], p["targetPort"]) for p in service["spec"]["ports"]] == [
            ("grpc", 8500, "grpc"), ("rest", 8501, "rest")]
        template_labels = deployment["spec"]["template"]["metadata"]["labels"]
        assert service["spec"]["selector"].items() <= template_labels.items()
        assert deployment["spec"]["selector"]["matchLabels"].items() <= template_labels.items()
        # The benchmark pods must not join the Service.
        job_labels = kinds["Job"]["spec"]["template"]["metadata"]["labels"]
        assert not service["spec"]["selector"].items() <= job_labels.items()
        ports = {p["name"]: p["containerPort"] for p in server(objects)["ports"]}
        assert ports == {"grpc": 8500, "rest": 8501}


def test_planned_cores_and_user_threads_in_env(rendered: list[Any]) -> None:
    for spec, ms, placement, objects in rendered:
        env = env_of(server(objects))
        assert env["PINSERVE_PLANNED_CORES"] == str(ms.spec.resources.physical_cores)
        user_env = {e["name"] for e in spec["server"].get("env", [])}
        for field, var in THREAD_VARS.items():
            if var in user_env:
                continue
            if field in spec["threading"]:
                wire = placement.threads.to_status()[field]
                assert env.get(var) == str(wire), (field, env.get(var))
            else:
                assert var not in env, f"{var} set although the user did not fix {field}"
        assert env["PINSERVE_MODEL_NAME"] == ms.model_name


def test_volumes_mounts_and_config_map_agree(rendered: list[Any]) -> None:
    for _, ms, _, objects in rendered:
        kinds = by_kind(objects)
        spec = pod_spec(objects)
        volumes = {v["name"]: v for v in spec["volumes"]}
        assert len(volumes) == len(spec["volumes"])
        for container in containers_of(kinds["Deployment"]):
            for mount in container.get("volumeMounts", []):
                assert mount["name"] in volumes
        config = [v for v in volumes.values() if "configMap" in v]
        assert [v["configMap"]["name"] for v in config] == [kinds["ConfigMap"]["metadata"]["name"]]
        script = f"/etc/pinserve/{START_SCRIPT}"
        assert server(objects)["command"][-1] == script
        assert START_SCRIPT in kinds["ConfigMap"]["data"]
        base = f"/models/{ms.model_name}"
        assert env_of(server(objects))["PINSERVE_MODEL_BASE_PATH"] == base


def test_model_lands_in_its_version_directory(rendered: list[Any]) -> None:
    # TensorFlow Serving looks for <base>/<version>/saved_model.pb, whatever the source.
    for _, ms, _, objects in rendered:
        model = ms.spec.model
        version_dir = f"/models/{ms.model_name}/{model.version}"
        [mount] = [m for m in server(objects)["volumeMounts"] if m["name"] == "model"]
        init = pod_spec(objects).get("initContainers", [])
        if model.pvc is not None:
            assert init == []
            assert mount["mountPath"] == version_dir and mount["readOnly"] is True
            assert mount["subPath"] == "/".join(p for p in (model.pvc.sub_path, model.path) if p)
        elif model.uri is not None:
            [fetch] = init
            args = fetch["args"]
            assert args[args.index("--dest") + 1] == version_dir
            assert args[args.index("--uri") + 1] == model.uri
            assert ("envFrom" in fetch) == bool(model.credentials_secret)
        else:
            [copy_init] = init
            assert copy_init["image"] == model.image
            assert env_of(copy_init)["DEST"] == version_dir
            assert env_of(copy_init)["SRC"] == ("/" + model.path if model.path else "/model")


def test_batching_config_follows_the_spec(rendered: list[Any]) -> None:
    for _, ms, placement, objects in rendered:
        data = by_kind(objects)["ConfigMap"]["data"]
        env = env_of(server(objects))
        batching = ms.spec.server.batching
        if batching is None:
            assert "batching.pbtxt" not in data and env["PINSERVE_BATCHING_CONFIG"] == ""
            continue
        assert env["PINSERVE_BATCHING_CONFIG"] == "/etc/pinserve/batching.pbtxt"
        lines = set(data["batching.pbtxt"].splitlines())
        threads = batching.num_batch_threads or placement.physical_cores
        assert {f"max_batch_size {{ value: {batching.max_batch_size} }}",
                f"batch_timeout_micros {{ value: {batching.batch_timeout_micros} }}",
                f"max_enqueued_batches {{ value: {batching.max_enqueued_batches} }}",
                f"num_batch_threads {{ value: {threads} }}"} <= lines


def test_rendering_is_deterministic_and_leaves_the_spec_alone(placed: Callable[..., Any]) -> None:
    spec, machine = GOLDEN_CASES["affinity-merge"]
    ms, placement = placed(spec, machine)
    before = copy.deepcopy(ms.spec.placement.affinity)
    first = everything(ms, placement)
    second = everything(ms, placement)
    assert first == second
    assert ms.spec.placement.affinity == before


# -- config hash ------------------------------------------------------------------------------------------


def config_hash(placed: Callable[..., Any], spec: dict[str, Any], machine: str = "smt") -> str:
    objects = render_children(*placed(spec, machine), SETTINGS)
    return by_kind(objects)["Deployment"]["spec"]["template"]["metadata"]["annotations"][  # type: ignore[no-any-return]
        ANNOTATION_CONFIG_HASH]


def test_config_hash_changes_with_batching_only(placed: Callable[..., Any]) -> None:
    plain = config_hash(placed, base_spec())
    unrelated = [
        base_spec(replicas=3),
        base_spec(threading={"omp": 2}),
        base_spec(resources={"physicalCores": 2, "memory": "1Gi"}),
        base_spec(server={"image": "tensorflow/serving:2.14.0", "args": ["--x"]}),
        base_spec(placement={"numa": "Require"}),
        base_spec(benchmark={"enabled": False}),
    ]
    for spec in unrelated:
        assert config_hash(placed, spec) == plain, spec
    assert config_hash(placed, base_spec(), "nosmt") == plain
    batching = [
        base_spec(server={"batching": {}}),
        base_spec(server={"batching": {"maxBatchSize": 32}}),
        base_spec(server={"batching": {"batchTimeoutMicros": 0}}),
        base_spec(server={"batching": {"numBatchThreads": 1}}),
        base_spec(server={"batching": {"maxEnqueuedBatches": 7}}),
    ]
    hashes = {config_hash(placed, spec) for spec in batching}
    assert plain not in hashes and len(hashes) == len(batching)
    # The default batch thread count follows the cores, so the cores change the batching config.
    assert config_hash(placed, base_spec(server={"batching": {}})) != config_hash(
        placed, base_spec(server={"batching": {}}, resources={"physicalCores": 2}))



def test_config_hash_follows_the_start_script(placed: Callable[..., Any], monkeypatch: pytest.MonkeyPatch) -> None:
    # The hash covers the script through its digest (cached), so a new script still rolls the pods.
    plain = config_hash(placed, base_spec())
    monkeypatch.setattr(configmap, "start_script", lambda: "#!/bin/sh\nexec true\n")
    configmap._start_script_digest.cache_clear()
    try:
        assert config_hash(placed, base_spec()) != plain
    finally:
        monkeypatch.undo()
        configmap._start_script_digest.cache_clear()
    assert config_hash(placed, base_spec()) == plain


# -- threads in env ---------------------------------------------------------------------------------------


def test_user_env_overrides_planned_thread_env(placed: Callable[..., Any]) -> None:
    spec = base_spec(threading={"omp": 2}, server={"env": [{"name": "OMP_NUM_THREADS", "value": "3"},
                                                          {"name": "PINSERVE_THREAD_CONFIG", "value": "env"}]})
    env = env_of(server(render_children(*placed(spec), SETTINGS)))
    assert env["OMP_NUM_THREADS"] == "3" and env["PINSERVE_THREAD_CONFIG"] == "env"


def test_clamped_user_threads_reach_the_env_clamped(placed: Callable[..., Any]) -> None:
    spec = base_spec(threading={"intraOp": 16}, resources={"physicalCores": 4})
    ms, placement = placed(spec, "nosmt")
    assert env_of(server(render_children(ms, placement, SETTINGS)))["TENSORFLOW_INTRA_OP_PARALLELISM"] == "4"


def test_script_inputs_come_by_environment(placed: Callable[..., Any]) -> None:
    # The start script is a plain file: its defaults and the CPU limit that bounds the threads are env.
    ms, placement = placed(base_spec(), "smt")
    objects = render_children(ms, placement, SETTINGS)
    container = server(objects)
    env = env_of(container)
    assert (env["PINSERVE_DEFAULT_INTER_OP"], env["PINSERVE_DEFAULT_KMP_BLOCKTIME"]) == (
        str(DEFAULT_INTER_OP), str(DEFAULT_KMP_BLOCKTIME))
    # Millicores of this very container's limit (1500m would be 2 CPUs for the script).
    assert env["PINSERVE_CPU_LIMIT"] == {"resourceFieldRef": {
        "containerName": container["name"], "resource": "limits.cpu", "divisor": "1m"}}
    assert container["resources"]["limits"]["cpu"] == str(placement.cpu_request)
    assert by_kind(objects)["ConfigMap"]["data"][START_SCRIPT] == start_script()


@pytest.mark.parametrize(("config", "value"), [("Env", "env"), ("Flags", "flags"), ("Both", "both")])
def test_thread_config_reaches_the_script(placed: Callable[..., Any], config: str, value: str) -> None:
    spec = base_spec(server={"threadConfig": config})
    assert env_of(server(render_children(*placed(spec), SETTINGS)))["PINSERVE_THREAD_CONFIG"] == value


def test_server_image_default_and_override(placed: Callable[..., Any]) -> None:
    assert server(render_children(*placed(base_spec()), SETTINGS))["image"] == SETTINGS.server_image
    spec = base_spec(server={"image": "intel/serving:mkl"})
    assert server(render_children(*placed(spec), SETTINGS))["image"] == "intel/serving:mkl"


# -- affinity ---------------------------------------------------------------------------------------------

EXPR = {"key": "pinserve.io/cores-per-numa", "operator": "Gt", "values": ["3"]}
PLANNED_REQUIRED = {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
    {"matchExpressions": [EXPR]}]}}
PLANNED_PREFERRED = {"preferredDuringSchedulingIgnoredDuringExecution": [
    {"weight": 100, "preference": {"matchExpressions": [EXPR]}}]}


def test_merge_affinity_without_either() -> None:
    assert merge_affinity(None, None) is None
    user = {"podAffinity": {"x": 1}}
    merged = merge_affinity(user, None)
    assert merged == user and merged is not user


def test_merge_affinity_ands_into_every_user_term() -> None:
    user = {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
        {"matchExpressions": [{"key": "zone", "operator": "In", "values": ["a"]}]},
        {"matchFields": [{"key": "metadata.name", "operator": "In", "values": ["n1"]}]},
    ]}}}
    before = copy.deepcopy(user)
    merged = merge_affinity(user, PLANNED_REQUIRED)
    assert user == before
    assert merged is not None
    terms = merged["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
    assert terms == [
        {"matchExpressions": [{"key": "zone", "operator": "In", "values": ["a"]}, EXPR]},
        {"matchFields": [{"key": "metadata.name", "operator": "In", "values": ["n1"]}], "matchExpressions": [EXPR]},
    ]


def test_merge_affinity_appends_preferences_and_keeps_pod_affinity() -> None:
    mine = {"weight": 5, "preference": {"matchExpressions": [{"key": "a", "operator": "Exists"}]}}
    user = {"nodeAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [mine]},
            "podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": []}}
    merged = merge_affinity(user, {**PLANNED_PREFERRED, **PLANNED_REQUIRED})
    assert merged is not None
    node = merged["nodeAffinity"]
    assert node["preferredDuringSchedulingIgnoredDuringExecution"] == [
        mine, *PLANNED_PREFERRED["preferredDuringSchedulingIgnoredDuringExecution"]]
    assert node["requiredDuringSchedulingIgnoredDuringExecution"] == PLANNED_REQUIRED[
        "requiredDuringSchedulingIgnoredDuringExecution"]
    assert merged["podAntiAffinity"] == user["podAntiAffinity"]


def test_merge_affinity_without_user() -> None:
    assert merge_affinity(None, PLANNED_REQUIRED) == {"nodeAffinity": PLANNED_REQUIRED}


# -- benchmark Job ----------------------------------------------------------------------------------------


def test_bench_job(placed: Callable[..., Any]) -> None:
    spec = base_spec(benchmark={"protocol": "rest", "warmupRequests": 3, "latency": {"requests": 50},
                                "throughput": {"batchSize": 4, "concurrency": 2, "durationSeconds": 9},
                                "inputs": {"fill": "zeros", "shapes": {"b": [1, 2], "a": [3]}},
                                "placement": "SameNode", "physicalCores": 2},
                     model={"name": "unet", "uri": "https://x/y"},
                     placement={"tolerations": [{"key": "dedicated", "operator": "Exists"}]})
    ms, _ = placed(spec)
    job = render_bench_job(ms, SETTINGS, "rfcn-bench-1", "1")
    assert job["metadata"]["name"] == "rfcn-bench-1"
    assert job["metadata"]["labels"][LABEL_RUN_KEY] == "1"
    assert job["spec"]["backoffLimit"] == 0
    pod = job["spec"]["template"]
    assert pod["metadata"]["labels"][LABEL_RUN_KEY] == "1"
    assert pod["spec"]["restartPolicy"] == "Never"
    assert pod["spec"]["tolerations"] == [{"key": "dedicated", "operator": "Exists"}]
    assert pod["spec"]["affinity"]["podAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"][0][
        "labelSelector"]["matchLabels"] == {LABEL_MODELSERVER: "rfcn", "app.kubernetes.io/component": "server"}
    [container] = pod["spec"]["containers"]
    assert container["image"] == "pinserve/bench:test"
    assert container["resources"] == {"requests": {"cpu": "2", "memory": "1Gi"},
                                      "limits": {"cpu": "2", "memory": "1Gi"}}
    assert container["terminationMessagePath"] == TERMINATION_LOG
    args = container["args"]
    assert args[args.index("--summary-file") + 1] == TERMINATION_LOG
    assert args[args.index("--target") + 1] == "rfcn.ml.svc:8501"
    assert args[args.index("--model") + 1] == "unet"
    assert args[args.index("--requests") + 1] == "50"
    assert args[args.index("--duration") + 1] == "9"
    assert [args[i + 1] for i, a in enumerate(args) if a == "--shape"] == ["a=3", "b=1,2"]


@pytest.mark.parametrize(("where", "key"), [("Any", None), ("SameNode", "podAffinity"),
                                            ("OtherNode", "podAntiAffinity")])
def test_bench_job_placement(placed: Callable[..., Any], where: str, key: str | None) -> None:
    ms, _ = placed(base_spec(benchmark={"placement": where}))
    affinity = render_bench_job(ms, SETTINGS, "j", "1")["spec"]["template"]["spec"].get("affinity")
    assert (list(affinity) if affinity else None) == ([key] if key else None)


def test_bench_job_args_parse_with_the_bench_client(placed: Callable[..., Any]) -> None:
    from pinserve.bench.cli import build_parser  # noqa: PLC0415

    ms, _ = placed(base_spec(benchmark={"inputs": {"shapes": {"x": [1, 3]}}}))
    args = render_bench_job(ms, SETTINGS, "j", "1")["spec"]["template"]["spec"]["containers"][0]["args"]
    parsed = build_parser().parse_args(args)
    assert parsed.summary_file == TERMINATION_LOG and parsed.model == "rfcn"


# -- names ------------------------------------------------------------------------------------------------


def test_names_fit_in_dns_labels_for_the_longest_name(placed: Callable[..., Any]) -> None:
    name = "m" * 48
    ms, placement = placed(base_spec(), name=name)
    names = [o["metadata"]["name"] for o in everything(ms, placement)]
    names += [bench_job_name(ms, "999", 2), bench_job_name(ms, "999-abcdef", 2)]
    assert all(len(n) <= 63 for n in names), names


def test_long_names_get_distinct_shortened_job_names(placed: Callable[..., Any]) -> None:
    first, _ = placed(base_spec(), name="m" * 47 + "a")
    second, _ = placed(base_spec(), name="m" * 47 + "b")
    a, b = bench_job_name(first, "12-abcdef", 2), bench_job_name(second, "12-abcdef", 2)
    assert len(a) <= 63 and len(b) <= 63 and a != b
    assert a.endswith("-bench-12-abcdef-r2")
