"""The TF Serving stand-in against real TensorFlow, over real gRPC and HTTP on 127.0.0.1: results equal the
model run in-process, TF Serving's metadata, status and error codes, the start log, bad command lines, and
pinserve's own benchmark client over both protocols."""

from __future__ import annotations

import base64
import json
import re
import shlex
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
import tensorflow as tf
from standin_harness import Models, Standin, run_to_completion, start_standin, stop_cleanly
from tensorflow.core.protobuf import saved_model_pb2
from tensorflow_serving.apis import (
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
)

from pinserve.bench.cli import main as bench_main

pytestmark = pytest.mark.unit

X = np.array([[1.0, 2.0, 3.0, 4.0], [-1.0, 0.5, 0.0, 2.0]], np.float32)


@pytest.fixture(scope="module")
def channel(standin: Standin) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(standin.grpc) as ch:
        yield ch


def _predict(
    channel: grpc.Channel, model: str = "m", signature: str = "", version: int | None = None, **inputs: Any
) -> Any:
    request = predict_pb2.PredictRequest()
    request.model_spec.name = model
    request.model_spec.signature_name = signature
    if version is not None:
        request.model_spec.version.value = version
    for name, value in inputs.items():
        request.inputs[name].CopyFrom(tf.make_tensor_proto(value))
    return prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(request, timeout=30)


def _rpc_error(call: Callable[[], Any]) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as caught:
        call()
    return caught.value


def _http(target: str, path: str, body: Any = None) -> tuple[int, Any]:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(f"http://{target}{path}", data=data, method="GET" if body is None else "POST")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


# --- gRPC ---------------------------------------------------------------------------------------------------


def test_predict_returns_what_the_model_computes_in_process(channel: grpc.Channel, models: Models) -> None:
    response = _predict(channel, x=X)
    assert (response.model_spec.name, response.model_spec.version.value) == ("m", 2)  # the highest version
    assert response.model_spec.signature_name == "serving_default"
    y = tf.make_ndarray(response.outputs["y"])
    np.testing.assert_allclose(y, models.expected("serving_default", x=X)["y"], rtol=1e-6)
    assert y.shape == (2, 3)
    assert list(response.outputs["y"].float_val) and not response.outputs["y"].tensor_content  # AsProtoField


def test_second_signature_with_strings_and_output_filter(channel: grpc.Channel, models: Models) -> None:
    s = np.array([b"ab", b"\x00\xff\x01"], dtype=object)
    response = _predict(channel, signature="describe", x=X, s=s)
    expected = models.expected("describe", x=X, s=s)
    assert sorted(response.outputs) == ["echo_bytes", "length", "total"]
    np.testing.assert_allclose(tf.make_ndarray(response.outputs["total"]), expected["total"], rtol=1e-6)
    assert tf.make_ndarray(response.outputs["length"]).tolist() == [2, 3]
    assert tf.make_ndarray(response.outputs["echo_bytes"]).tolist() == [b"ab", b"\x00\xff\x01"]

    request = predict_pb2.PredictRequest(output_filter=["length"])
    request.model_spec.name, request.model_spec.signature_name = "m", "describe"
    request.inputs["x"].CopyFrom(tf.make_tensor_proto(X))
    request.inputs["s"].CopyFrom(tf.make_tensor_proto(s))
    filtered = prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(request, timeout=30)
    assert list(filtered.outputs) == ["length"]


def test_metadata_is_the_saved_models_signature_def_map(channel: grpc.Channel, models: Models) -> None:
    request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
    request.model_spec.name = "m"
    response = prediction_service_pb2_grpc.PredictionServiceStub(channel).GetModelMetadata(request, timeout=30)
    assert (response.model_spec.name, response.model_spec.version.value) == ("m", 2)
    sig_map = get_model_metadata_pb2.SignatureDefMap()
    assert response.metadata["signature_def"].Unpack(sig_map)
    saved = saved_model_pb2.SavedModel.FromString((models.base / "2" / "saved_model.pb").read_bytes())
    assert dict(sig_map.signature_def) == dict(saved.meta_graphs[0].signature_def)
    x = sig_map.signature_def["serving_default"].inputs["x"]
    assert x.dtype == tf.float32.as_datatype_enum
    assert [d.size for d in x.tensor_shape.dim] == [-1, 4]

    bad = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["graph"])
    bad.model_spec.name = "m"
    error = _rpc_error(lambda: prediction_service_pb2_grpc.PredictionServiceStub(channel).GetModelMetadata(bad))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_model_status_is_available(channel: grpc.Channel) -> None:
    request = get_model_status_pb2.GetModelStatusRequest()
    request.model_spec.name = "m"
    response = model_service_pb2_grpc.ModelServiceStub(channel).GetModelStatus(request, timeout=30)
    [status] = response.model_version_status
    assert (status.version, status.state) == (2, get_model_status_pb2.ModelVersionStatus.AVAILABLE)
    assert status.status.error_code == 0


def test_unknown_model_or_version_is_not_found(channel: grpc.Channel) -> None:
    error = _rpc_error(lambda: _predict(channel, model="nope", x=X))
    assert error.code() == grpc.StatusCode.NOT_FOUND
    assert "Latest(nope)" in str(error.details())
    error = _rpc_error(lambda: _predict(channel, version=1, x=X))  # on disk, but the policy serves only 2
    assert error.code() == grpc.StatusCode.NOT_FOUND
    status = get_model_status_pb2.GetModelStatusRequest()
    status.model_spec.name = "nope"
    error = _rpc_error(lambda: model_service_pb2_grpc.ModelServiceStub(channel).GetModelStatus(status, timeout=30))
    assert error.code() == grpc.StatusCode.NOT_FOUND


@pytest.mark.parametrize(
    ("inputs", "signature", "code", "words"),
    [
        ({"x": np.ones((2, 3), np.float32)}, "", "INVALID_ARGUMENT", "[-1,4]"),
        ({"x": np.ones((2, 4), np.float64)}, "", "INVALID_ARGUMENT", "to be float but double"),
        ({"z": np.ones((2, 4), np.float32)}, "", "INVALID_ARGUMENT", "Missing but required: {x}"),
        ({"x": X}, "describe", "INVALID_ARGUMENT", "Missing but required: {s}"),
        ({"x": X}, "nope", "FAILED_PRECONDITION", 'Serving signature key "nope" not found'),
    ],
)
def test_bad_requests_get_tf_servings_codes(
    channel: grpc.Channel, inputs: dict[str, Any], signature: str, code: str, words: str
) -> None:
    error = _rpc_error(lambda: _predict(channel, signature=signature, **inputs))
    assert error.code() == grpc.StatusCode[code]
    assert words in str(error.details())


# --- REST ---------------------------------------------------------------------------------------------------


def test_rest_status_and_metadata(standin: Standin) -> None:
    assert _http(standin.rest, "/v1/models/m") == (
        200,
        {
            "model_version_status": [
                {"version": "2", "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}}
            ]
        },
    )
    code, meta = _http(standin.rest, "/v1/models/m/metadata")
    assert code == 200
    assert meta["model_spec"] == {"name": "m", "signature_name": "", "version": "2"}
    x = meta["metadata"]["signature_def"]["signature_def"]["serving_default"]["inputs"]["x"]
    assert x["dtype"] == "DT_FLOAT"
    assert x["tensor_shape"] == {"dim": [{"size": "-1", "name": ""}, {"size": "4", "name": ""}], "unknown_rank": False}


def test_rest_row_and_columnar_predict(standin: Standin, models: Models) -> None:
    expected = models.expected("serving_default", x=X)["y"]
    code, rows = _http(standin.rest, "/v1/models/m:predict", {"instances": X.tolist()})
    assert code == 200
    np.testing.assert_allclose(np.array(rows["predictions"]), expected, rtol=1e-6)
    code, columns = _http(standin.rest, "/v1/models/m/versions/2:predict", {"inputs": {"x": X.tolist()}})
    assert code == 200
    np.testing.assert_allclose(np.array(columns["outputs"]), expected, rtol=1e-6)

    raw = b"\x00\xff"
    instances = [{"x": X[0].tolist(), "s": {"b64": base64.b64encode(raw).decode()}}, {"x": X[1].tolist(), "s": "héllo"}]
    code, named = _http(standin.rest, "/v1/models/m:predict", {"signature_name": "describe", "instances": instances})
    assert code == 200
    assert [p["length"] for p in named["predictions"]] == [2, len("héllo".encode())]
    assert named["predictions"][0]["echo_bytes"] == {"b64": base64.b64encode(raw).decode()}  # alias ends in _bytes
    np.testing.assert_allclose([p["total"] for p in named["predictions"]], X.sum(axis=1), rtol=1e-6)


@pytest.mark.parametrize(
    ("path", "body", "status", "words"),
    [
        ("/v1/models/nope:predict", {"instances": [[1, 2, 3, 4]]}, 404, "Latest(nope)"),
        ("/v1/models/m/versions/7:predict", {"instances": [[1, 2, 3, 4]]}, 404, "Specific(m, 7)"),
        ("/v1/models/m:predict", {"instances": [[1, 2, 3]]}, 400, "[-1,4]"),
        ("/v1/models/m:predict", {"instances": [[1, 2], [1, 2, 3, 4]]}, 400, "ragged"),
        ("/v1/models/m:predict", {"inputs": {"x": [["a", "b", "c", "d"]]}}, 400, "not of expected type"),
        ("/v1/models/m:predict", {"nothing": 1}, 400, "'instances'"),
        ("/v1/models/m:predict", {"signature_name": "nope", "inputs": [[1, 2, 3, 4]]}, 400, "nope"),
    ],
)
def test_rest_errors(standin: Standin, path: str, body: Any, status: int, words: str) -> None:
    code, answer = _http(standin.rest, path, body)
    assert code == status
    assert words in answer["error"]
    assert _http(standin.rest, "/v1/models/nope")[0] == 404


# --- the process: start line, command line ------------------------------------------------------------------


def test_start_log_shows_the_thread_settings_tensorflow_applied(standin: Standin, models: Models) -> None:
    log = standin.log
    assert f"started with argv: {shlex.join(standin.argv)}" in log  # exactly what the start script passed
    [line] = [ln for ln in log.splitlines() if "(this is not TensorFlow Serving) serving:" in ln]
    assert "pinserve TF Serving stand-in" in line
    assert re.search(r"\bintra_op_parallelism=1\b", line)
    assert re.search(r"\binter_op_parallelism=2\b", line)
    assert f"models=m:2:{models.base / '2'}" in line
    assert "batching=off" in line


def test_unknown_flag_fails_naming_it() -> None:
    done = run_to_completion("--port=1", "--no_such_flag=3", "--model_base_path=/x")
    assert done.code != 0
    assert "unknown argument: --no_such_flag=3" in done.stdout
    assert "stand-in" in done.stderr


@pytest.mark.parametrize(
    ("argv", "words"),
    [
        (["--port=abc", "--model_base_path=/x"], "Illegal value for flag --port"),
        (["--model_name=m"], "model_base_path and server_options.model_config_file are empty"),
        (["--model_base_path=/x", "--batching_parameters_file=/b"], "without setting server_options.enable_batching"),
        (["--model_base_path=/x", "--port=9000", "--rest_api_port=9000"], "cannot be the same"),
    ],
)
def test_bad_command_lines_fail_like_tf_serving(argv: list[str], words: str) -> None:
    done = run_to_completion(*argv)
    assert done.code == 255
    assert words in done.stdout


def test_bad_batching_file_fails(tmp_path: Path) -> None:
    params = tmp_path / "batching.pbtxt"
    params.write_text("max_batch_size { value: 8 }\nallowed_batch_sizes: 4\n")
    done = run_to_completion("--model_base_path=/x", "--enable_batching", f"--batching_parameters_file={params}")
    assert done.code == 255
    assert "must match max_batch_size" in done.stdout
    params.write_text("max_batch_size { value: 8 }\nno_such_field: 1\n")
    done = run_to_completion("--model_base_path=/x", "--enable_batching=true", f"--batching_parameters_file={params}")
    assert done.code == 255
    assert "no_such_field" in done.stdout


def test_help_names_the_stand_in() -> None:
    done = run_to_completion("--help")
    assert done.code == 0
    assert "pinserve TF Serving stand-in" in done.stdout
    assert "It is not TensorFlow Serving" in done.stdout


# --- pinserve's benchmark client, unchanged -----------------------------------------------------------------


@pytest.mark.parametrize("protocol", ["grpc", "rest"])
def test_pinserve_bench_runs_against_the_stand_in(
    standin: Standin, protocol: str, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    target = standin.grpc if protocol == "grpc" else standin.rest
    summary = tmp_path / "summary.json"
    code = bench_main(
        ["--target", target, "--protocol", protocol, "--model", "m", "--mode", "both", "--requests", "20",
         "--warmup", "2", "--duration", "1", "--batch-size", "4", "--concurrency", "2",
         "--summary-file", str(summary)]
    )  # fmt: skip
    out, err = capsys.readouterr()
    assert code == 0, err
    report = json.loads(out)
    assert report["protocol"] == protocol
    assert report["requests"] == 20
    assert report["latencyMs"]["p50"] > 0
    assert report["throughput"]["requests"] > 0
    assert report["throughput"]["errors"] == 0
    assert summary.exists()


# --- batching and monitoring ----------------------------------------------------------------------------------

BATCHING = """# as pinserve renders it, plus allowed sizes
max_batch_size { value: 8 }
batch_timeout_micros { value: 20000 }
max_enqueued_batches { value: 16 }
num_batch_threads { value: 2 }
allowed_batch_sizes: 4
allowed_batch_sizes: 8
"""


@pytest.fixture(scope="module")
def batching_standin(models: Models, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Standin]:
    tmp = tmp_path_factory.mktemp("standin-batching")
    (tmp / "batching.pbtxt").write_text(BATCHING)
    (tmp / "monitoring.pbtxt").write_text('prometheus_config {\n  enable: true\n  path: "/metrics/here"\n}\n')
    server = start_standin(
        tmp,
        models.base,
        "--enable_batching=true",
        f"--batching_parameters_file={tmp / 'batching.pbtxt'}",
        f"--monitoring_config_file={tmp / 'monitoring.pbtxt'}",
    )
    yield server
    stop_cleanly(server)


def _metrics(target: str) -> dict[str, float]:
    with urllib.request.urlopen(f"http://{target}/metrics/here", timeout=30) as response:
        text = response.read().decode()
    return {k: float(v) for k, _, v in (ln.rpartition(" ") for ln in text.splitlines() if not ln.startswith("#"))}


def test_batching_pads_merges_and_splits(batching_standin: Standin, models: Models) -> None:
    [line] = [ln for ln in batching_standin.log.splitlines() if "(this is not TensorFlow Serving) serving:" in ln]
    assert "batching=on max_batch_size=8 batch_timeout_micros=20000 num_batch_threads=2 max_enqueued_batches=16" in line
    batch_size = ":tensorflow:serving:batching_session:processed_batch_size"

    with grpc.insecure_channel(batching_standin.grpc) as ch:
        one = _predict(ch, x=X[:1])  # one row, padded to the allowed size 4, and split back to one
        np.testing.assert_allclose(tf.make_ndarray(one.outputs["y"]), models.expected("serving_default", x=X[:1])["y"])
        metrics = _metrics(batching_standin.rest)
        assert (metrics[f"{batch_size}_count"], metrics[f"{batch_size}_sum"]) == (1, 4)

        rng = np.random.default_rng(7)
        requests = [rng.normal(size=(1 + i % 3, 4)).astype(np.float32) for i in range(12)]
        with ThreadPoolExecutor(max_workers=6) as pool:
            answers = list(pool.map(lambda x: _predict(ch, x=x), requests))
        for x, answer in zip(requests, answers, strict=True):
            y = tf.make_ndarray(answer.outputs["y"])
            np.testing.assert_allclose(y, models.expected("serving_default", x=x)["y"], rtol=1e-5)

        error = _rpc_error(lambda: _predict(ch, x=np.ones((9, 4), np.float32)))
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "larger than maximum" in str(error.details())

    code, rows = _http(batching_standin.rest, "/v1/models/m:predict", {"instances": X.tolist()})
    assert code == 200
    np.testing.assert_allclose(np.array(rows["predictions"]), models.expected("serving_default", x=X)["y"], rtol=1e-6)
    counted = _metrics(batching_standin.rest)
    count = ':tensorflow:serving:request_count{{model_name="m",api="predict",status="{}"}}'
    assert (counted[count.format("OK")], counted[count.format("INVALID_ARGUMENT")]) == (14, 1)
