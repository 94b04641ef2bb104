"""spec.model.format on the operator's side: the API and the CRD's CEL rules refuse the same specs, the
fetch init container of a frozenGraph/keras model runs in the bench image with the signature's tensors,
and a failed conversion becomes Ready=False ModelConvertFailed. (The conversions: test_convert.py.)
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from pinserve import api
from pinserve.fetch.errors import ModelConvertError
from pinserve.planning import node_info, plan
from pinserve.reconcile import Observed, reconcile
from pinserve.render import render_children
from pinserve.settings import Settings

pytestmark = pytest.mark.unit

CRD = Path(__file__).resolve().parents[2] / "crds" / "modelservers.pinserve.io.yaml"
SETTINGS = Settings(operator_image="pinserve/operator:t", bench_image="pinserve/bench:t")
URI = "http://download.tensorflow.org/models/deeplabv3_pascal_trainval_2018_01_04.tar.gz"
FROZEN = {"uri": URI, "format": "frozenGraph", "inputs": {"ImageTensor": "ImageTensor:0"},
          "outputs": {"SemanticPredictions": "SemanticPredictions:0"}}


def spec(**model: Any) -> dict[str, Any]:
    return {"model": model, "resources": {"physicalCores": 2, "memory": "4Gi"}}


def parses(model: dict[str, Any]) -> api.InvalidSpecError | None:
    try:
        api.parse_spec(spec(**model))
    except api.InvalidSpecError as err:
        return err
    return None


# -- the API ----------------------------------------------------------------------------------------------


def test_format_defaults_to_saved_model() -> None:
    model = api.parse_spec(spec(uri=URI)).model
    assert (model.format, model.inputs, model.outputs) == (api.ModelFormat.SAVED_MODEL, {}, {})
    frozen = api.parse_spec(spec(**FROZEN)).model
    assert frozen.format is api.ModelFormat.FROZEN_GRAPH and frozen.inputs == {"ImageTensor": "ImageTensor:0"}
    assert api.parse_spec(spec(uri="https://x/m.h5", format="keras")).model.format is api.ModelFormat.KERAS


# (model, field, message, refused by a CEL rule: the rest is the schema's enum, pattern or maxProperties,
# or, for signature keys, the operator's alone: a CRD cannot constrain a map's keys without CEL on each).
BAD: list[tuple[dict[str, Any], str, str, bool]] = [
    ({**FROZEN, "inputs": {}}, "spec.model.inputs", "format frozenGraph needs at least one entry", True),
    ({k: v for k, v in FROZEN.items() if k != "outputs"}, "spec.model.outputs",
     "format frozenGraph needs at least one entry", True),
    ({"uri": URI, "format": "keras", "inputs": {"x": "x:0"}}, "spec.model.inputs", "only format frozenGraph", True),
    ({"uri": URI, "outputs": {"y": "y:0"}}, "spec.model.outputs", "a savedModel model brings its own signature",
     True),
    ({"pvc": {"claimName": "m"}, "format": "keras"}, "spec.model.format", "reads spec.model.uri", True),
    ({"image": "m:1", **{k: v for k, v in FROZEN.items() if k != "uri"}}, "spec.model.format", "pvc or image", True),
    ({**FROZEN, "inputs": {"a=b": "x:0"}}, "spec.model.inputs", "signature key 'a=b'", False),
    ({**FROZEN, "outputs": {"y": "not a tensor"}}, "spec.model.outputs", "is not a tensor name", False),
    ({**FROZEN, "inputs": {f"k{i}": "x:0" for i in range(17)}}, "spec.model.inputs", "at most 16", False),
    ({"uri": URI, "format": "onnx"}, "spec.model.format", "'savedModel', 'frozenGraph' or 'keras'", False),
]


@pytest.mark.parametrize(("model", "field", "says"), [b[:3] for b in BAD], ids=[f"{b[1]}:{b[2][:24]}" for b in BAD])
def test_the_api_names_the_field(model: dict[str, Any], field: str, says: str) -> None:
    err = parses(model)
    assert err is not None and err.field == field and says in err.message, err


# -- the CRD's CEL rules agree where they can see it -------------------------------------------------------


def _model_node() -> dict[str, Any]:
    crd = yaml.safe_load(CRD.read_text())
    node = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]["model"]
    assert isinstance(node, dict)
    return node


def _defaulted(model: dict[str, Any], node: dict[str, Any]) -> dict[str, Any]:
    """What the API server's CEL sees: the schema's defaults applied."""
    out = copy.deepcopy(model)
    for name, child in node["properties"].items():
        if name not in out and "default" in child:
            out[name] = copy.deepcopy(child["default"])
    return out


CEL_MODELS: list[dict[str, Any]] = [
    {"uri": URI},
    {"uri": URI, "format": "savedModel"},
    FROZEN,
    {"uri": "https://x/m.h5", "format": "keras"},
    {"pvc": {"claimName": "m"}},
    *[model for model, _, _, cel in BAD if cel],
]


@pytest.mark.parametrize("model", CEL_MODELS, ids=range(len(CEL_MODELS)))
def test_cel_rules_refuse_what_the_api_refuses(model: dict[str, Any]) -> None:
    celpy = pytest.importorskip("celpy", reason="cel-python is not installed (add it to the dev extra)")
    node = _model_node()
    env = celpy.Environment()
    value = celpy.json_to_cel(_defaulted(model, node))
    failed = [rule["message"] for rule in node["x-kubernetes-validations"]
              if not bool(env.program(env.compile(rule["rule"])).evaluate({"self": value}))]
    err = parses(model)
    assert bool(failed) == (err is not None), (failed, err)
    if err is not None:
        assert any(err.field in message for message in failed), (failed, err.field)


def test_the_schema_bounds_the_signature_maps() -> None:
    props = _model_node()["properties"]
    assert props["format"]["enum"] == [f.value for f in api.ModelFormat]
    assert props["format"]["default"] == "savedModel"
    for name in ("inputs", "outputs"):
        assert props[name]["maxProperties"] == 16
        assert props[name]["additionalProperties"]["pattern"] == api._TENSOR_NAME.pattern


# -- rendering --------------------------------------------------------------------------------------------


@pytest.fixture
def render(topo: Callable[..., Any], make_node: Callable[..., dict[str, Any]],
           make_ms: Callable[..., dict[str, Any]]) -> Callable[..., dict[str, Any]]:
    def fetch_container(model: dict[str, Any], settings: Settings = SETTINGS) -> dict[str, Any]:
        ms = api.parse_modelserver(make_ms(spec(**model), name="deeplabv3"))
        placement = plan(ms.spec, [node_info(make_node("n1", topo(1, 8, 2)))], settings)
        [deployment] = [o for o in render_children(ms, placement, settings) if o["kind"] == "Deployment"]
        [init] = deployment["spec"]["template"]["spec"]["initContainers"]
        assert isinstance(init, dict)
        return init

    return fetch_container


def test_frozen_graph_is_fetched_and_converted_in_the_bench_image(render: Callable[..., dict[str, Any]]) -> None:
    init = render({**FROZEN, "path": "deeplabv3_pascal_trainval",
                   "outputs": {"SemanticPredictions": "SemanticPredictions:0", "A": "a/b:1"}})
    assert init["image"] == "pinserve/bench:t" and init["command"] == ["pinserve", "fetch-model"]
    assert init["args"] == ["--uri", URI, "--max-download-bytes", str(32 << 30), "--max-unpacked-bytes",
                            str(64 << 30), "--deadline-seconds", "3600", "--path", "deeplabv3_pascal_trainval",
                            "--dest", "/models/deeplabv3/1",
                            "--format", "frozenGraph", "--input", "ImageTensor=ImageTensor:0",
                            "--output", "A=a/b:1", "--output", "SemanticPredictions=SemanticPredictions:0"]
    # Guaranteed in whole CPUs like every init container, with the conversion's memory.
    assert init["resources"]["requests"] == init["resources"]["limits"] == {"cpu": "500m", "memory": "2Gi"}


def test_keras_and_saved_model_args(render: Callable[..., dict[str, Any]]) -> None:
    keras = render({"uri": "https://x/tumor_segmentation_model.h5?dl=1", "format": "keras"},
                   Settings(bench_image="b:1", fetch_cpu=2, convert_memory="3Gi"))
    assert keras["image"] == "b:1" and keras["args"][-2:] == ["--format", "keras"]
    assert keras["resources"]["limits"] == {"cpu": "2", "memory": "3Gi"}
    saved = render({"uri": URI, "format": "savedModel"})
    assert saved["image"] == "pinserve/operator:t" and "--format" not in saved["args"]
    assert saved["resources"]["limits"] == {"cpu": "500m", "memory": "512Mi"}


def test_convert_memory_setting() -> None:
    assert Settings.from_env({}).convert_memory == "2Gi"
    assert Settings.from_env({"PINSERVE_CONVERT_MEMORY": "6Gi"}).convert_memory == "6Gi"


# -- a failed conversion is a condition --------------------------------------------------------------------


def _failed_fetch(terminated: dict[str, Any], name: str = "fetch-model") -> dict[str, Any]:
    return {"metadata": {"name": "deeplabv3-abc-0"}, "spec": {"nodeName": "n1"},
            "status": {"qosClass": "Guaranteed", "initContainerStatuses": [
                {"name": name, "state": {"waiting": {"reason": "CrashLoopBackOff"}},
                 "lastState": {"terminated": terminated}}]}}


@pytest.fixture
def ready_after(topo: Callable[..., Any], make_node: Callable[..., dict[str, Any]],
                make_ms: Callable[..., dict[str, Any]]) -> Callable[[dict[str, Any]], tuple[dict[str, Any], list[Any]]]:
    """The Ready condition and the events once the fetch init container of a frozenGraph model ended so."""

    def run(terminated: dict[str, Any]) -> tuple[dict[str, Any], list[Any]]:
        body = make_ms(spec(**FROZEN), name="deeplabv3")
        nodes = [node_info(make_node("n1", topo(1, 8, 2)))]
        first = reconcile(copy.deepcopy(body), nodes, Observed(), SETTINGS, "2024-01-01T00:00:00Z")
        children = {(o["kind"], o["metadata"]["name"]): o for o in first.apply}
        children[("Deployment", "deeplabv3")]["status"] = {"observedGeneration": 1, "replicas": 1,
                                                           "updatedReplicas": 1}
        body["status"] = first.status
        outcome = reconcile(body, nodes, Observed(children=children, pods=[_failed_fetch(terminated)]), SETTINGS,
                            "2024-01-01T00:01:00Z")
        [ready] = [c for c in outcome.status["conditions"] if c["type"] == "Ready"]
        return ready, outcome.events

    return run


@pytest.mark.parametrize(("terminated", "reason", "says"), [
    ({"exitCode": ModelConvertError.exit_code,
      "message": "ModelConvertFailed: input ImageTensor: tensor 'Image:0' is not in the graph"},
     "ModelConvertFailed", "could not convert the model: input ImageTensor: tensor 'Image:0' is not in the graph"),
    ({"exitCode": ModelConvertError.exit_code, "reason": "Error"}, "ModelConvertFailed", "could not convert"),
    ({"exitCode": 10, "message": "NotFound: 404"}, "ModelFetchFailed", "NotFound: 404"),
])
def test_init_container_failures_become_conditions(
    ready_after: Callable[[dict[str, Any]], tuple[dict[str, Any], list[Any]]], terminated: dict[str, Any],
    reason: str, says: str,
) -> None:
    ready, events = ready_after(terminated)
    assert (ready["status"], ready["reason"]) == ("False", reason)
    assert says in ready["message"] and "pod deeplabv3-abc-0" in ready["message"]
    assert any(e.reason == reason and e.type == "Warning" for e in events)
