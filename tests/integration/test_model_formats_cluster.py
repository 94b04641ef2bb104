"""spec.model.format against the real API server: the CRD's CEL rules refuse at `kubectl apply` what the
operator would refuse, naming the field; the seed examples' formats are accepted."""

from __future__ import annotations

import json
import subprocess
from typing import Any

import pytest
from operator_harness import REPO, install_crd

pytestmark = pytest.mark.integration

URI = "http://download.tensorflow.org/models/deeplabv3_pascal_trainval_2018_01_04.tar.gz"
FROZEN = {"uri": URI, "format": "frozenGraph", "inputs": {"ImageTensor": "ImageTensor:0"},
          "outputs": {"SemanticPredictions": "SemanticPredictions:0"}}


def dry_run(cluster: Any, model: dict[str, Any]) -> subprocess.CompletedProcess[str]:
    doc = {"apiVersion": "pinserve.io/v1alpha1", "kind": "ModelServer",
           "metadata": {"name": "formats", "namespace": "default"},
           "spec": {"model": model, "resources": {"physicalCores": 1}}}
    return cluster.kubectl("apply", "--dry-run=server", "-o", "json", "-f", "-", input=json.dumps(doc), check=False)


@pytest.mark.parametrize(("model", "says"), [
    ({**FROZEN, "inputs": {}}, "spec.model.inputs: format frozenGraph needs at least one input"),
    ({k: v for k, v in FROZEN.items() if k != "outputs"}, "spec.model.outputs: format frozenGraph needs"),
    ({"uri": URI, "format": "keras", "inputs": {"x": "x:0"}}, "are for format frozenGraph only"),
    ({"pvc": {"claimName": "m"}, "format": "keras"}, "reads spec.model.uri"),
    ({"uri": URI, "format": "onnx"}, "Unsupported value: \"onnx\""),
    ({**FROZEN, "outputs": {"y": "not a tensor"}}, "spec.model.outputs.y"),
])
def test_the_api_server_refuses_what_cannot_be_converted(cluster: Any, model: dict[str, Any], says: str) -> None:
    install_crd(cluster)
    proc = dry_run(cluster, model)
    assert proc.returncode != 0, f"accepted: {proc.stdout[:500]}"
    assert says in proc.stderr, proc.stderr


def test_formats_are_accepted_and_defaulted(cluster: Any) -> None:
    install_crd(cluster)
    for model, fmt in ((FROZEN, "frozenGraph"), ({"uri": "https://x/m.h5?dl=1", "format": "keras"}, "keras"),
                       ({"uri": URI}, "savedModel")):
        proc = dry_run(cluster, model)
        assert proc.returncode == 0, proc.stderr
        assert json.loads(proc.stdout)["spec"]["model"]["format"] == fmt
    for name in ("deeplabv3", "unet-3d", "mask-rcnn"):
        proc = cluster.kubectl("apply", "-n", "default", "--dry-run=server", "-f",
                               str(REPO / "manifests" / "examples" / f"{name}.yaml"), check=False)
        assert proc.returncode == 0, proc.stderr
