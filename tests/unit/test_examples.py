"""Every example ModelServer parses with the API models and validates against the CRD's schema.

The CRD's OpenAPI schema is turned into JSON Schema the way the API server reads it (nullable,
int-or-string, unknown fields rejected as `kubectl apply` does with strict field validation).
"""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from pinserve import api

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
CRD_PATH = ROOT / "crds" / "modelservers.pinserve.io.yaml"
EXAMPLES = ROOT / "manifests" / "examples"
EXPECTED = {"rfcn", "mask-rcnn", "unet-3d", "deeplabv3", "demo", "demo-tuned"}

Schema = dict[str, Any]


def to_json_schema(node: Schema) -> Schema:
    """A Kubernetes structural schema as JSON Schema (draft 2020-12)."""
    out: Schema = {}
    for key, value in node.items():
        if key.startswith("x-kubernetes-") or key in {"nullable", "description", "default"}:
            continue
        if key == "properties":
            out[key] = {name: to_json_schema(child) for name, child in value.items()}
        elif key in {"items", "additionalProperties"} and isinstance(value, dict):
            out[key] = to_json_schema(value)
        else:
            out[key] = value
    if node.get("nullable") and "type" in out:
        out["type"] = [out["type"], "null"]
    if node.get("x-kubernetes-int-or-string"):
        out["type"] = ["integer", "string"]
    if "properties" in node and not node.get("x-kubernetes-preserve-unknown-fields"):
        out.setdefault("additionalProperties", False)
    return out


def _crd_root() -> Schema:
    crd = yaml.safe_load(CRD_PATH.read_text())
    root = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    assert isinstance(root, dict)
    return root


@pytest.fixture(scope="module")
def validator() -> jsonschema.protocols.Validator:
    schema = to_json_schema(_crd_root())
    cls = jsonschema.validators.validator_for({"$schema": "https://json-schema.org/draft/2020-12/schema"})
    cls.check_schema(schema)
    return cls(schema, format_checker=cls.FORMAT_CHECKER)


def _example_paths() -> list[Path]:
    return sorted(EXAMPLES.glob("*.yaml"))


def _load(path: Path) -> dict[str, Any]:
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
    assert len(docs) == 1, f"{path.name}: one ModelServer per file"
    doc = docs[0]
    assert isinstance(doc, dict)
    return doc


def test_one_example_per_seed_model_and_a_demo() -> None:
    assert {p.stem for p in _example_paths()} == EXPECTED


@pytest.mark.parametrize("path", _example_paths(), ids=lambda p: p.stem)
def test_example_parses(path: Path) -> None:
    doc = _load(path)
    assert doc["apiVersion"] == api.API_VERSION
    assert doc["kind"] == api.KIND
    assert doc["metadata"]["name"] == path.stem
    assert "namespace" not in doc["metadata"], "examples apply to the current namespace"
    server = api.parse_modelserver(doc)
    assert server.spec.resources.physical_cores >= 1
    assert server.spec.benchmark.inputs.shapes, "examples state the benchmark input shapes"


@pytest.mark.parametrize("path", _example_paths(), ids=lambda p: p.stem)
def test_example_validates_against_crd(path: Path, validator: jsonschema.protocols.Validator) -> None:
    errors = sorted(validator.iter_errors(_load(path)), key=lambda e: list(e.absolute_path))
    assert not errors, "\n".join(f"{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in errors)


def test_seed_facts_carried_over() -> None:
    rfcn = _load(EXAMPLES / "rfcn.yaml")["spec"]
    assert rfcn["model"]["uri"] == (
        "https://storage.googleapis.com/intel-optimized-tensorflow/models/"
        "rfcn_resnet101_fp32_coco_pretrained_model.tar.gz"
    )
    assert rfcn["model"]["path"] == "rfcn_resnet101_fp32_coco/saved_model"
    deeplab = _load(EXAMPLES / "deeplabv3.yaml")["spec"]
    assert deeplab["benchmark"]["protocol"] == "rest"
    assert deeplab["benchmark"]["inputs"]["shapes"]["ImageTensor"] == [1, 513, 513, 3]
    demo = _load(EXAMPLES / "demo.yaml")["spec"]
    assert demo["resources"]["physicalCores"] == 1
    assert demo["model"]["uri"] == "http://pinserve-demo-models.pinserve-system.svc:8000/half_plus_two.tar.gz"


# The seed examples: the public artifact each guide publishes (never a PVC the user fills by hand), its
# format, and the inputs its serving_default signature takes (batch 1, dynamic dimensions filled).
ARTIFACTS: dict[str, tuple[str, str, dict[str, list[int]]]] = {
    "rfcn": ("https://storage.googleapis.com/intel-optimized-tensorflow/models/"
             "rfcn_resnet101_fp32_coco_pretrained_model.tar.gz", "savedModel", {"inputs": [1, 480, 640, 3]}),
    "deeplabv3": ("http://download.tensorflow.org/models/deeplabv3_pascal_trainval_2018_01_04.tar.gz",
                  "frozenGraph", {"ImageTensor": [1, 513, 513, 3]}),
    "mask-rcnn": ("http://download.tensorflow.org/models/object_detection/tf2/20200711/"
                  "mask_rcnn_inception_resnet_v2_1024x1024_coco17_gpu-8.tar.gz", "savedModel",
                  {"input_tensor": [1, 480, 640, 3]}),
    "unet-3d": ("https://www.dropbox.com/s/m99rqxunx0kmzn7/tumor_segmentation_model.h5?dl=1", "keras",
                {"input_1": [1, 4, 144, 144, 144]}),
}


@pytest.mark.parametrize("name", sorted(ARTIFACTS))
def test_seed_examples_serve_the_public_artifact_with_its_signature(name: str) -> None:
    url, fmt, shapes = ARTIFACTS[name]
    path = EXAMPLES / f"{name}.yaml"
    doc = _load(path)
    model = doc["spec"]["model"]
    assert model.get("uri") == url and "pvc" not in model and "image" not in model
    assert model.get("format", "savedModel") == fmt
    assert doc["spec"]["benchmark"]["inputs"]["shapes"] == shapes
    parsed = api.parse_modelserver(doc).spec
    if fmt == "frozenGraph":  # the signature the conversion builds is keyed by the benchmark's input names
        assert set(parsed.model.inputs) == set(shapes) and parsed.model.outputs
        assert parsed.benchmark.throughput.batch_size == 1  # the graph's batch dimension is 1
    # The header comment says what the signature takes, in the example itself.
    header = "\n".join(line for line in path.read_text().splitlines() if line.startswith("#"))
    for key in shapes:
        assert key in header, f"{name}: the comment does not name input {key}"


def test_deeplab_is_measured_over_rest_at_max_s_size() -> None:
    spec = _load(EXAMPLES / "deeplabv3.yaml")["spec"]
    assert spec["benchmark"]["protocol"] == "rest"
    assert spec["model"]["inputs"] == {"ImageTensor": "ImageTensor:0"}
    assert spec["model"]["outputs"] == {"SemanticPredictions": "SemanticPredictions:0"}


# Mutations of a valid example that both the CRD schema and the API models must refuse.
BAD: list[tuple[str, Any]] = [
    ("resources.memory", "8GB"),
    ("resources.physicalCores", 0),
    ("resources.physicalCores", 513),
    ("model.uri", "ftp://models/rfcn.tar.gz"),
    ("model.name", "-bad"),
    ("placement.numa", "Maybe"),
    ("server.threadConfig", "Sometimes"),
    ("benchmark.protocol", "http"),
    ("benchmark.throughput.durationSeconds", 3601),
    ("threading.intraOp", 0),
    ("replicas", -1),
    ("resources.cores", 4),
]


@pytest.mark.parametrize(("field", "value"), BAD, ids=[f for f, _ in BAD])
def test_bad_values_are_rejected_by_both(field: str, value: Any, validator: jsonschema.protocols.Validator) -> None:
    doc = copy.deepcopy(_load(EXAMPLES / "rfcn.yaml"))
    target = doc["spec"]
    *parents, leaf = field.split(".")
    for part in parents:
        target = target.setdefault(part, {})
    target[leaf] = value
    assert list(validator.iter_errors(doc)), f"CRD schema accepted spec.{field}={value!r}"
    with pytest.raises(api.InvalidSpecError) as err:
        api.parse_modelserver(doc)
    assert err.value.field.startswith(f"spec.{parents[0] if parents else leaf}")


# pinserve's default image, tensorflow/serving:mkl, is not published: the examples name one that is.
PUBLISHED_SERVING = re.compile(r"^tensorflow/serving:\d+\.\d+\.\d+$")


@pytest.mark.parametrize("path", _example_paths(), ids=lambda p: p.stem)
def test_examples_serve_a_published_image(path: Path) -> None:
    image = _load(path)["spec"].get("server", {}).get("image", "")
    assert PUBLISHED_SERVING.match(image), f"{path.name}: spec.server.image {image!r} is not a published stock tag"


def test_the_kind_demo_uses_the_examples_image() -> None:
    from tools import demo_kind  # noqa: PLC0415

    assert _load(EXAMPLES / "demo.yaml")["spec"]["server"]["image"] == demo_kind.SERVER_IMAGE
