"""A frozen GraphDef (DeepLab's format) fetched over HTTP, converted by the model init container, served
on an exclusive core and benchmarked. Runs after test_serving.py (which frees the node's pinnable CPU).

The archive is served from a pod (the node's pods reach each other over its bridge; nothing leaves the
machine), because the real node's pods cannot reach the host's loopback.
"""

from __future__ import annotations

import base64
import io
import json
import tarfile
import time
from typing import Any

import numpy as np
import pytest
from e2e_support import Backend, free_the_pinnable_cpu, modelserver

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(1800)]

NAME = "frozen"


def _frozen_graph_archive() -> tuple[bytes, np.ndarray, np.ndarray]:
    """y = x @ W + 1 as a frozen graph with tensors images:0 (float32 [1,4]) -> scores:0 (float32 [1,3])."""
    import tensorflow as tf  # noqa: PLC0415
    from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2  # noqa: PLC0415

    weights = tf.Variable(tf.reshape(tf.range(12, dtype=tf.float32), [4, 3]) / 10.0)

    @tf.function(input_signature=[tf.TensorSpec([1, 4], tf.float32, name="images")])
    def score(x: Any) -> Any:
        return tf.identity(tf.matmul(x, weights) + 1.0, name="scores")

    x = np.array([[1.0, 2.0, 3.0, 4.0]], dtype=np.float32)
    want = score(x).numpy()
    graph = convert_variables_to_constants_v2(score.get_concrete_function()).graph.as_graph_def()
    data = graph.SerializeToString()
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        info = tarfile.TarInfo("frozen_model/frozen_inference_graph.pb")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue(), x, want


def _apply(backend: Backend, obj: dict[str, Any]) -> None:
    backend.kubectl("apply", "-n", backend.namespace, "-f", "-", input_text=json.dumps(obj))


def _model_server_pod(backend: Backend, archive: bytes) -> str:
    """An HTTP server pod holding the archive; returns its IP."""
    image = json.loads(backend.kubectl("get", "pods", "-n", "pinserve-system", "-l",
                                       "app.kubernetes.io/component=operator", "-o", "json"))["items"][0]
    _apply(backend, {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "e2e-models"},
                     "binaryData": {"frozen.tar.gz": base64.b64encode(archive).decode()}})
    _apply(backend, {
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "e2e-models", "labels": {"app": "e2e-models"}},
        "spec": {
            "automountServiceAccountToken": False,
            "containers": [{
                "name": "http", "image": image["spec"]["containers"][0]["image"],
                "command": ["python", "-m", "http.server", "8000", "--directory", "/models"],
                "ports": [{"containerPort": 8000}],
                "readinessProbe": {"tcpSocket": {"port": 8000}, "periodSeconds": 1},
                "resources": {"requests": {"cpu": "100m", "memory": "64Mi"},
                              "limits": {"cpu": "100m", "memory": "64Mi"}},
                "volumeMounts": [{"name": "m", "mountPath": "/models"}],
            }],
            "volumes": [{"name": "m", "configMap": {"name": "e2e-models"}}],
        },
    })
    backend.kubectl("wait", "-n", backend.namespace, "pod/e2e-models", "--for=condition=Ready", "--timeout=180s")
    return backend.kubectl("get", "pod", "-n", backend.namespace, "e2e-models", "-o", "jsonpath={.status.podIP}")


def test_a_frozen_graph_is_converted_served_on_exclusive_cores_and_benchmarked(backend: Backend) -> None:
    archive, x, want = _frozen_graph_archive()
    ns = backend.namespace
    free_the_pinnable_cpu(backend)
    try:
        ip = _model_server_pod(backend, archive)
        _apply(backend, {
            "apiVersion": "pinserve.io/v1alpha1", "kind": "ModelServer", "metadata": {"name": NAME},
            "spec": {
                "model": {"name": "scores", "uri": f"http://{ip}:8000/frozen.tar.gz", "path": "frozen_model",
                          "format": "frozenGraph", "inputs": {"x": "images:0"}, "outputs": {"y": "scores:0"}},
                "resources": {"physicalCores": 1, "memory": "1Gi"},
                "benchmark": {"warmupRequests": 10, "latency": {"requests": 700},
                              "throughput": {"batchSize": 1, "concurrency": 2, "durationSeconds": 5}},
            },
        })
        backend.wait_for("Ready", name=NAME, timeout=900)
        backend.wait_for("Benchmarked", name=NAME, timeout=900)
        status = modelserver(backend, NAME)["status"]
        conditions = {c["type"]: c for c in status["conditions"]}
        assert (conditions["Pinned"]["status"], conditions["Pinned"]["reason"]) == ("True", "ExclusiveCores")
        bench = status["benchmark"]
        assert bench["errors"] == 0 and bench["latencyMs"]["p50"] > 0, bench
        if backend.name != "realnode":
            return  # TF Serving's image has no python3 to call it with from inside
        # The converted model answers with the original's numbers (REST predict from inside the server pod).
        pod = status["pods"][0]["name"]
        body = json.dumps({"signature_name": "serving_default", "inputs": {"x": x.tolist()}})
        script = ("import json,sys,urllib.request; r=urllib.request.urlopen(urllib.request.Request("
                  "'http://127.0.0.1:8501/v1/models/scores:predict', data=sys.argv[1].encode())); "
                  "print(json.dumps(json.load(r)))")
        out = json.loads(backend.kubectl("exec", "-n", ns, pod, "-c", "server", "--", "python3", "-c", script, body))
        got = np.array(out["outputs"], dtype=np.float32).reshape(want.shape)
        np.testing.assert_allclose(got, want, rtol=1e-6)
    finally:
        backend.kubectl("delete", "-n", ns, f"modelserver/{NAME}", "pod/e2e-models", "configmap/e2e-models",
                        "--ignore-not-found", "--wait=false", check=False)
        time.sleep(1)
