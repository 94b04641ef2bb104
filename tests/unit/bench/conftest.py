"""Loopback servers for the benchmark client's tests.

- `tf_serving`: a miniature TF Serving (PredictionService + ModelService) running real SavedModels that
  the fixture builds and saves; GetModelMetadata returns the SignatureDefMap read from saved_model.pb.
- `fake_serving`: a factory for PredictionService stubs whose Predict behaviour a test injects (latency
  distributions, errors, slowness), with a fixed signature.
- `rest_serving`: a small http.server speaking TF Serving's REST API (keep-alive, HTTP/1.1).
All bind 127.0.0.1 on ephemeral ports and stop at teardown.
"""

from __future__ import annotations

import base64
import contextlib
import json
import threading
import time
from collections.abc import Callable, Iterator
from concurrent import futures
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
import tensorflow as tf
from tensorflow.core.framework import types_pb2
from tensorflow.core.protobuf import meta_graph_pb2, saved_model_pb2
from tensorflow_serving.apis import (
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
)

from pinserve.bench.cli import main

PREDICT_METHOD = "tensorflow/serving/predict"


# --- real SavedModels ---------------------------------------------------------------------------------


class Adder(tf.Module):
    """float32 [None,4] and int64 [None] in; two signatures."""

    @tf.function(
        input_signature=[tf.TensorSpec([None, 4], tf.float32, name="x"), tf.TensorSpec([None], tf.int64, name="k")]
    )
    def serve(self, x: tf.Tensor, k: tf.Tensor) -> dict[str, tf.Tensor]:
        return {"y": tf.reduce_sum(x, axis=1) * tf.cast(k, tf.float32) + 1.0, "z": x * 2.0}

    @tf.function(input_signature=[tf.TensorSpec([None, 4], tf.float32, name="x")])
    def double(self, x: tf.Tensor) -> dict[str, tf.Tensor]:
        return {"y": x * 2.0}


class Mixed(tf.Module):
    """A string, a uint8 image with unknown height and width, a bool and a half input."""

    @tf.function(
        input_signature=[
            tf.TensorSpec([None], tf.string, name="s"),
            tf.TensorSpec([None, None, None, 3], tf.uint8, name="img"),
            tf.TensorSpec([None], tf.bool, name="flag"),
            tf.TensorSpec([None, 2], tf.float16, name="h"),
        ]
    )
    def serve(self, s: tf.Tensor, img: tf.Tensor, flag: tf.Tensor, h: tf.Tensor) -> dict[str, tf.Tensor]:
        return {
            "length": tf.strings.length(s),
            "img_mean": tf.reduce_mean(tf.cast(img, tf.float32), axis=[1, 2, 3]),
            "img_hw": tf.shape(img)[1:3],
            "flags": tf.reduce_sum(tf.cast(flag, tf.int32)),
            "h2": tf.cast(h, tf.float32) * 2.0,
        }


@dataclass
class ServedModel:
    name: str
    path: Path
    loaded: Any
    signature_defs: Any  # the proto map from saved_model.pb, exactly what TF Serving reports


def _save(module: tf.Module, path: Path, signatures: dict[str, Any], name: str) -> ServedModel:
    tf.saved_model.save(module, str(path), signatures=signatures)
    proto = saved_model_pb2.SavedModel.FromString((path / "saved_model.pb").read_bytes())
    return ServedModel(name, path, tf.saved_model.load(str(path)), proto.meta_graphs[0].signature_def)


@pytest.fixture(scope="session")
def saved_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, ServedModel]:
    root = tmp_path_factory.mktemp("models")
    adder, mixed = Adder(), Mixed()
    return {
        "adder": _save(adder, root / "adder" / "1", {"serving_default": adder.serve, "double": adder.double}, "adder"),
        "mixed": _save(mixed, root / "mixed" / "1", {"serving_default": mixed.serve}, "mixed"),
    }


# --- a miniature TF Serving over gRPC --------------------------------------------------------------------


class MiniServing(prediction_service_pb2_grpc.PredictionServiceServicer, model_service_pb2_grpc.ModelServiceServicer):
    def __init__(self, models: dict[str, ServedModel]) -> None:
        self.models = models
        self.peers: list[str] = []

    def _model(self, spec: Any, context: grpc.ServicerContext) -> ServedModel:
        model = self.models.get(spec.name)
        if model is None or (spec.HasField("version") and spec.version.value != 1):
            context.abort(grpc.StatusCode.NOT_FOUND, f"Servable not found for request: Latest({spec.name})")
        assert model is not None
        return model

    def GetModelStatus(self, request: Any, context: grpc.ServicerContext) -> Any:  # noqa: N802
        self._model(request.model_spec, context)
        response = get_model_status_pb2.GetModelStatusResponse()
        status = response.model_version_status.add(version=1, state=get_model_status_pb2.ModelVersionStatus.AVAILABLE)
        status.status.error_message = ""
        return response

    def GetModelMetadata(self, request: Any, context: grpc.ServicerContext) -> Any:  # noqa: N802
        model = self._model(request.model_spec, context)
        response = get_model_metadata_pb2.GetModelMetadataResponse()
        response.model_spec.name = model.name
        response.model_spec.version.value = 1
        sig_map = get_model_metadata_pb2.SignatureDefMap()
        for key, sig in model.signature_defs.items():
            sig_map.signature_def[key].CopyFrom(sig)
        response.metadata["signature_def"].Pack(sig_map)
        return response

    def Predict(self, request: Any, context: grpc.ServicerContext) -> Any:  # noqa: N802
        self.peers.append(context.peer())
        model = self._model(request.model_spec, context)
        key = request.model_spec.signature_name or "serving_default"
        if key not in model.loaded.signatures:
            context.abort(grpc.StatusCode.FAILED_PRECONDITION, f'Serving signature key "{key}" not found.')
        fn = model.loaded.signatures[key]
        args = {name: tf.constant(tf.make_ndarray(proto)) for name, proto in request.inputs.items()}
        try:
            outputs = fn(**args)
        except (TypeError, ValueError, tf.errors.InvalidArgumentError) as exc:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc)[:500])
        response = predict_pb2.PredictResponse()
        response.model_spec.name = model.name
        response.model_spec.version.value = 1
        response.model_spec.signature_name = key
        for name, value in outputs.items():
            response.outputs[name].CopyFrom(tf.make_tensor_proto(value.numpy()))
        return response


def _start(servicers: Callable[[grpc.Server], None], workers: int = 16) -> tuple[grpc.Server, str]:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=workers))
    servicers(server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    return server, f"127.0.0.1:{port}"


@dataclass
class Serving:
    target: str
    servicer: Any


@pytest.fixture(scope="session")
def tf_serving(saved_models: dict[str, ServedModel]) -> Iterator[Serving]:
    servicer = MiniServing(saved_models)

    def add(server: grpc.Server) -> None:
        prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(servicer, server)
        model_service_pb2_grpc.add_ModelServiceServicer_to_server(servicer, server)

    server, target = _start(add)
    yield Serving(target, servicer)
    server.stop(grace=None)


# --- injectable fakes --------------------------------------------------------------------------------------


def simple_signature_map() -> Any:
    """serving_default: x DT_FLOAT [-1, 4] -> y DT_FLOAT [-1]."""
    sig = meta_graph_pb2.SignatureDef(method_name=PREDICT_METHOD)
    sig.inputs["x"].dtype = types_pb2.DT_FLOAT
    sig.inputs["x"].tensor_shape.dim.add(size=-1)
    sig.inputs["x"].tensor_shape.dim.add(size=4)
    sig.outputs["y"].dtype = types_pb2.DT_FLOAT
    sig.outputs["y"].tensor_shape.dim.add(size=-1)
    return get_model_metadata_pb2.SignatureDefMap(signature_def={"serving_default": sig})


Behaviour = Callable[[Any, grpc.ServicerContext], None]


class FakeServing(prediction_service_pb2_grpc.PredictionServiceServicer):
    """Model "fake" with one signature; Predict runs `behaviour` (sleep, abort...) then answers y=[0]."""

    def __init__(self, behaviour: Behaviour) -> None:
        self.behaviour = behaviour
        self.calls = 0
        self.handled_s: list[float] = []  # how long `behaviour` really took, per call, in completion order
        self.lock = threading.Lock()

    def GetModelMetadata(self, request: Any, context: grpc.ServicerContext) -> Any:  # noqa: N802
        if request.model_spec.name != "fake":
            context.abort(
                grpc.StatusCode.NOT_FOUND, f"Servable not found for request: Latest({request.model_spec.name})"
            )
        response = get_model_metadata_pb2.GetModelMetadataResponse()
        response.model_spec.name = "fake"
        response.metadata["signature_def"].Pack(simple_signature_map())
        return response

    def Predict(self, request: Any, context: grpc.ServicerContext) -> Any:  # noqa: N802
        with self.lock:
            self.calls += 1
        start = time.perf_counter()
        try:
            self.behaviour(request, context)
        finally:
            with self.lock:
                self.handled_s.append(time.perf_counter() - start)
        response = predict_pb2.PredictResponse()
        response.outputs["y"].CopyFrom(tf.make_tensor_proto(np.zeros(1, np.float32)))
        return response


@pytest.fixture
def fake_serving() -> Iterator[Callable[[Behaviour], Serving]]:
    started: list[grpc.Server] = []

    def start(behaviour: Behaviour) -> Serving:
        servicer = FakeServing(behaviour)
        server, target = _start(
            lambda s: prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(servicer, s), workers=32
        )
        started.append(server)
        return Serving(target, servicer)

    yield start
    for server in started:
        server.stop(grace=None)


# --- REST --------------------------------------------------------------------------------------------------

REST_METADATA = {
    "model_spec": {"name": "rest", "signature_name": "", "version": "1"},
    "metadata": {
        "signature_def": {
            "signature_def": {
                "serving_default": {
                    "inputs": {
                        "x": {
                            "dtype": "DT_FLOAT",
                            "tensor_shape": {
                                "dim": [{"size": "-1", "name": ""}, {"size": "3", "name": ""}],
                                "unknown_rank": False,
                            },
                            "name": "serving_default_x:0",
                        },
                        "s": {
                            "dtype": "DT_STRING",
                            "tensor_shape": {"dim": [{"size": "-1", "name": ""}], "unknown_rank": False},
                            "name": "serving_default_s:0",
                        },
                    },
                    "outputs": {
                        "total": {"dtype": "DT_FLOAT", "tensor_shape": {"dim": [{"size": "-1"}]}, "name": "o:0"},
                        "length": {"dtype": "DT_INT32", "tensor_shape": {"dim": [{"size": "-1"}]}, "name": "o:1"},
                    },
                    "method_name": "tensorflow/serving/predict",
                }
            },
            "@type": "type.googleapis.com/tensorflow.serving.SignatureDefMap",
        }
    },
}


def rest_compute(x: np.ndarray[Any, Any], s: list[bytes]) -> dict[str, Any]:
    """The REST fake's model: total = 2 * sum(x, axis=1), length = len(s)."""
    return {"total": (x.sum(axis=1) * 2).tolist(), "length": [len(v) for v in s]}


@dataclass
class RestServing:
    target: str
    bodies: list[dict[str, Any]] = field(default_factory=list)
    peers: list[tuple[str, int]] = field(default_factory=list)
    delay_s: float = 0.0


class _RestHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as TF Serving's REST server does
    disable_nagle_algorithm = True  # headers and body go out in two writes; no 40 ms delayed-ACK stall
    state: RestServing

    def log_message(self, format: str, *args: Any) -> None:  # quiet test output
        pass

    def _send(self, status: int, body: Any) -> None:
        data = json.dumps(body).encode()
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):  # client gave up (deadline tests)
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    def do_GET(self) -> None:
        if self.path == "/v1/models/rest":
            self._send(
                200,
                {
                    "model_version_status": [
                        {"version": "1", "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}}
                    ]
                },
            )
        elif self.path == "/v1/models/rest/metadata":
            self._send(200, REST_METADATA)
        else:
            self._send(404, {"error": f"Servable not found for request: {self.path}"})

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        if self.path != "/v1/models/rest:predict":
            self._send(404, {"error": "Servable not found"})
            return
        self.state.bodies.append(body)
        self.state.peers.append(self.client_address)
        if self.state.delay_s:
            time.sleep(self.state.delay_s)
        if "inputs" in body:
            x = np.asarray(body["inputs"]["x"], dtype=np.float32)
            s = [base64.b64decode(v["b64"]) for v in body["inputs"]["s"]]
            self._send(200, {"outputs": rest_compute(x, s)})
        else:
            x = np.asarray([row["x"] for row in body["instances"]], dtype=np.float32)
            s = [base64.b64decode(row["s"]["b64"]) for row in body["instances"]]
            out = rest_compute(x, s)
            self._send(
                200,
                {"predictions": [{"total": t, "length": n} for t, n in zip(out["total"], out["length"], strict=True)]},
            )


@pytest.fixture
def rest_serving() -> Iterator[RestServing]:
    state = RestServing("")
    handler = type("Handler", (_RestHandler,), {"state": state})
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    httpd.daemon_threads = True
    state.target = f"127.0.0.1:{httpd.server_address[1]}"
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield state
    httpd.shutdown()
    httpd.server_close()


# --- running the CLI ---------------------------------------------------------------------------------------


@dataclass
class BenchRun:
    code: int
    report: dict[str, Any]
    stderr: str
    summary_bytes: bytes

    @property
    def summary(self) -> dict[str, Any]:
        loaded: dict[str, Any] = json.loads(self.summary_bytes)
        return loaded


@pytest.fixture
def run_bench(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> Callable[..., BenchRun]:
    """Run `pinserve bench` in-process with a summary file; returns exit code, report, stderr, summary."""
    counter = iter(range(1000))

    def run(*argv: str) -> BenchRun:
        summary = tmp_path / f"summary-{next(counter)}.json"
        code = main([*argv, "--summary-file", str(summary)])
        out, err = capsys.readouterr()
        return BenchRun(code, json.loads(out), err, summary.read_bytes() if summary.exists() else b"")

    return run
