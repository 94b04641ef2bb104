"""The ModelServer API models: defaults, and every invalid spec naming its camelCase field."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from pinserve import api
from pinserve.api import InvalidSpecError, parse_modelserver, parse_spec

pytestmark = pytest.mark.unit

BASE: dict[str, Any] = {
    "model": {"uri": "https://models.example/rfcn.tar.gz"},
    "resources": {"physicalCores": 4},
}


def spec_with(path: str, value: Any) -> dict[str, Any]:
    """BASE with ``value`` set at a dotted path (``...`` as value deletes the key)."""
    spec = copy.deepcopy(BASE)
    *parents, leaf = path.split(".")
    node = spec
    for part in parents:
        node = node.setdefault(part, {})
    if value is ...:
        node.pop(leaf, None)
    else:
        node[leaf] = value
    return spec


def test_minimal_spec_gets_the_documented_defaults() -> None:
    spec = parse_spec(BASE)
    assert spec.resources.physical_cores == 4
    assert spec.resources.memory == "4Gi"
    assert spec.model.name is None and spec.model.path == "" and spec.model.version == 1
    assert spec.server.image is None and spec.server.batching is None
    assert spec.server.thread_config is api.ThreadConfig.BOTH
    assert spec.server.args == [] and spec.server.env == []
    assert spec.threading == api.Threading()
    assert spec.placement.numa is api.NumaPolicy.PREFER
    assert spec.placement.node_selector == {} and spec.placement.tolerations == []
    assert spec.replicas == 1
    bench = spec.benchmark
    assert bench.enabled and bench.protocol == "grpc" and bench.warmup_requests == 10
    assert bench.latency.requests == 700
    assert (bench.throughput.batch_size, bench.throughput.concurrency, bench.throughput.duration_seconds) == (
        8, 4, 20)
    assert bench.inputs.fill == "random" and bench.inputs.shapes == {}


def test_full_spec_round_trips_through_camel_case() -> None:
    wire = {
        "model": {"name": "rfcn", "pvc": {"claimName": "models", "subPath": "zoo"}, "path": "rfcn/1",
                  "version": 3},
        "server": {"image": "tensorflow/serving:2.14.0", "threadConfig": "Flags",
                   "batching": {"maxBatchSize": 16, "batchTimeoutMicros": 500, "numBatchThreads": 2,
                                "maxEnqueuedBatches": 10},
                   "args": ["--rest_api_timeout_in_ms=0"], "env": [{"name": "TF_CPP_MIN_LOG_LEVEL", "value": "1"}]},
        "resources": {"physicalCores": 8, "memory": "16Gi"},
        "threading": {"intraOp": 8, "interOp": 1, "omp": 8, "kmpAffinity": "granularity=fine,compact",
                      "kmpBlocktime": 0},
        "placement": {"nodeSelector": {"pool": "cpu"}, "numa": "Require",
                      "tolerations": [{"key": "dedicated", "operator": "Exists"}]},
        "replicas": 3,
        "benchmark": {"enabled": False, "protocol": "rest", "warmupRequests": 0, "latency": {"requests": 50},
                      "throughput": {"batchSize": 1, "concurrency": 1, "durationSeconds": 5},
                      "inputs": {"fill": "zeros", "shapes": {"x": [1, 3]}}, "placement": "SameNode",
                      "physicalCores": 2},
    }
    spec = parse_spec(wire)
    assert spec.model.pvc is not None and spec.model.pvc.claim_name == "models"
    assert spec.threading.kmp_blocktime == 0
    assert spec.placement.numa is api.NumaPolicy.REQUIRE
    dumped = spec.to_wire()
    assert subset(wire, dumped)
    assert parse_spec(dumped) == spec


def subset(small: Any, big: Any) -> bool:
    if isinstance(small, dict):
        return isinstance(big, dict) and all(k in big and subset(v, big[k]) for k, v in small.items())
    return bool(small == big)


@pytest.mark.parametrize("source", [
    {"uri": "http://a/b.tgz"}, {"uri": "https://a/b"}, {"uri": "gs://bucket/m"}, {"uri": "s3://bucket/m"},
    {"pvc": {"claimName": "c"}}, {"image": "registry.example/models/rfcn:1"},
])
def test_each_model_source_alone_is_valid(source: dict[str, Any]) -> None:
    assert parse_spec(spec_with("model", source)).model.path == ""


def test_env_names_that_differ_only_in_case_are_distinct() -> None:
    env = [{"name": "path", "value": "a"}, {"name": "PATH", "value": "b"}]
    assert [e.name for e in parse_spec(spec_with("server.env", env)).server.env] == ["path", "PATH"]


@pytest.mark.parametrize("memory", ["8Gi", "512Mi", "1G", "1000M", "1.5Gi", "123456789", "64k"])
def test_memory_quantities(memory: str) -> None:
    assert parse_spec(spec_with("resources.memory", memory)).resources.memory == memory


INVALID = [
    # (path to set, value, field named, words in the message)
    ("resources.physicalCores", 0, "spec.resources.physicalCores", "greater than or equal to 1"),
    ("resources.physicalCores", -2, "spec.resources.physicalCores", ""),
    ("resources.physicalCores", 513, "spec.resources.physicalCores", ""),
    ("resources.physicalCores", 2.5, "spec.resources.physicalCores", ""),
    ("resources.physicalCores", ..., "spec.resources.physicalCores", "required"),
    ("resources", ..., "spec.resources", "required"),
    ("resources.memory", "8 GB", "spec.resources.memory", "quantity"),
    ("resources.memory", "8gb", "spec.resources.memory", "quantity"),
    ("resources.memory", "-1Gi", "spec.resources.memory", "quantity"),
    ("resources.memory", "", "spec.resources.memory", "quantity"),
    ("model", {"uri": "https://a/b", "image": "x"}, "spec.model", "got uri, image"),
    ("model", {"uri": "https://a/b", "pvc": {"claimName": "c"}}, "spec.model", "got uri, pvc"),
    ("model", {"path": "x"}, "spec.model", "got none"),
    ("model", {}, "spec.model", "exactly one"),
    ("model", ..., "spec.model", "required"),
    ("model.uri", "ftp://host/model.tgz", "spec.model.uri", "http://"),
    ("model.uri", "file:///etc/passwd", "spec.model.uri", ""),
    ("model.uri", "models/rfcn", "spec.model.uri", ""),
    ("model.path", "/abs/path", "spec.model.path", "relative"),
    ("model.path", "a/../../etc", "spec.model.path", ".."),
    ("model.path", "..", "spec.model.path", ".."),
    ("model.name", "-lead", "spec.model.name", ""),
    ("model.name", "has space", "spec.model.name", ""),
    ("model.version", 0, "spec.model.version", ""),
    ("model.pvc", {"subPath": "x"}, "spec.model.pvc.claimName", "required"),
    ("threading.intraOp", 17, "spec.threading.intraOp", "4 x"),
    ("threading.interOp", 17, "spec.threading.interOp", "4 x"),
    ("threading.omp", 100, "spec.threading.omp", "4 x"),
    ("threading.intraOp", 0, "spec.threading.intraOp", ""),
    ("threading.kmpBlocktime", -1, "spec.threading.kmpBlocktime", ""),
    ("threading.intra_op_threads", 4, "spec.threading.intra_op_threads", "Extra inputs"),
    ("surprise", True, "spec.surprise", "Extra inputs"),
    ("resources.cpu", "4", "spec.resources.cpu", "Extra inputs"),
    ("placement.numa", "Sometimes", "spec.placement.numa", "Prefer"),
    ("placement.nodeSelector", {"a": 1}, "spec.placement.nodeSelector.a", ""),
    ("server.threadConfig", "Magic", "spec.server.threadConfig", ""),
    ("server.env", [{"value": "1"}], "spec.server.env[0].name", "required"),
    ("server.env", [{"name": "A", "valueFrom": {}}, {"name": "B", "bogus": 1}], "spec.server.env[1].bogus", ""),
    # A map keyed by name, as the CRD's x-kubernetes-list-map-keys says: a duplicate is refused.
    ("server.env", [{"name": "A", "value": "1"}, {"name": "A", "value": "2"}], "spec.server.env",
     "duplicate name 'A' (entries 0 and 1)"),
    ("server.env", [{"name": "A", "value": "1"}, {"name": "B", "value": "2"},
                    {"name": "A", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}}], "spec.server.env",
     "entries 0 and 2"),
    ("server.batching", {"maxBatchSize": 0}, "spec.server.batching.maxBatchSize", ""),
    ("server.args", "--flag", "spec.server.args", "list"),
    ("replicas", -1, "spec.replicas", ""),
    ("replicas", 1001, "spec.replicas", ""),
    ("benchmark.protocol", "http", "spec.benchmark.protocol", ""),
    ("benchmark.latency", {"requests": 0}, "spec.benchmark.latency.requests", ""),
    ("benchmark.throughput", {"durationSeconds": 3601}, "spec.benchmark.throughput.durationSeconds", ""),
    ("benchmark.inputs", {"shapes": {"x": ["a"]}}, "spec.benchmark.inputs.shapes.x[0]", ""),
    ("benchmark.inputs", {"fill": "ones"}, "spec.benchmark.inputs.fill", ""),
    ("benchmark.placement", "Anywhere", "spec.benchmark.placement", ""),
]


@pytest.mark.parametrize(("path", "value", "field", "words"), INVALID,
                         ids=[f"{p}={v!r}" for p, v, _, _ in INVALID])
def test_invalid_spec_names_the_field(path: str, value: Any, field: str, words: str) -> None:
    with pytest.raises(InvalidSpecError) as caught:
        parse_spec(spec_with(path, value))
    assert caught.value.field == field
    assert words.lower() in caught.value.message.lower()
    assert str(caught.value).startswith(f"{field}: ")
    assert "Value error" not in str(caught.value)


def test_thread_bound_is_inclusive() -> None:
    spec = parse_spec(spec_with("threading", {"intraOp": 16, "interOp": 16, "omp": 16}))
    assert spec.threading.intra_op == 16


@pytest.mark.parametrize("spec", [None, {}, "model: x", ["model"], 4])
def test_missing_or_non_object_spec(spec: Any) -> None:
    with pytest.raises(InvalidSpecError) as caught:
        parse_spec(spec)
    assert caught.value.field == "spec"


def test_models_are_frozen() -> None:
    spec = parse_spec(BASE)
    with pytest.raises(ValueError, match="frozen"):
        spec.resources.physical_cores = 9  # type: ignore[misc]


# -- whole objects -----------------------------------------------------------------------------------------


def body(name: str = "rfcn", **meta: Any) -> dict[str, Any]:
    return {"apiVersion": api.API_VERSION, "kind": api.KIND,
            "metadata": {"name": name, "namespace": "ml", "uid": "u-1", "generation": 7, **meta},
            "spec": BASE}


def test_parse_modelserver_identity() -> None:
    ms = parse_modelserver(body(annotations={"a": "b"}))
    assert (ms.ref.namespace, ms.ref.name, ms.ref.uid, ms.ref.generation) == ("ml", "rfcn", "u-1", 7)
    assert ms.annotations == {"a": "b"}
    assert ms.model_name == "rfcn"


def test_model_name_defaults_to_metadata_name_and_can_be_set() -> None:
    doc = body()
    doc["spec"] = spec_with("model.name", "rfcn_resnet101")
    assert parse_modelserver(doc).model_name == "rfcn_resnet101"


def test_namespace_and_generation_default() -> None:
    ms = parse_modelserver({"kind": "ModelServer", "metadata": {"name": "x"}, "spec": BASE})
    assert ms.ref.namespace == "default" and ms.ref.generation == 1


@pytest.mark.parametrize("name", ["a" * 49, "", "Upper", "under_score", "-x", "x-", "dot.ted"])
def test_bad_metadata_name(name: str) -> None:
    with pytest.raises(InvalidSpecError) as caught:
        parse_modelserver(body(name))
    assert caught.value.field == "metadata.name"


@pytest.mark.parametrize("name", ["a" * 48, "a", "rfcn-2"])
def test_good_metadata_name(name: str) -> None:
    assert parse_modelserver(body(name)).ref.name == name


def test_wrong_kind() -> None:
    doc = body()
    doc["kind"] = "Deployment"
    with pytest.raises(InvalidSpecError) as caught:
        parse_modelserver(doc)
    assert caught.value.field == "kind"


def test_spec_error_in_whole_object_names_spec_field() -> None:
    doc = body()
    doc["spec"] = spec_with("resources.physicalCores", 0)
    with pytest.raises(InvalidSpecError) as caught:
        parse_modelserver(doc)
    assert caught.value.field == "spec.resources.physicalCores"
