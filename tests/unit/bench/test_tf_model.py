"""Against real SavedModels: signature discovery, generated inputs, correct results, the CLI end to end."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tensorflow as tf
from tensorflow_serving.apis import predict_pb2

from pinserve.bench.grpc_client import GrpcClient
from pinserve.bench.inputs import InputOptions, build_inputs

pytestmark = pytest.mark.unit


async def _predict(target: str, model: str, signature: str, batch: int, options: InputOptions) -> tuple[Any, Any]:
    """Discover, build, send once; returns (built inputs, decoded outputs)."""
    client = GrpcClient(target, model, None, 30.0)
    try:
        await client.wait_ready(0)
        sig = await client.fetch_signature(signature)
        built = build_inputs(sig, batch, options)
        raw = await client.caller(0)(client.build_payload(sig.name, built.tensors))
    finally:
        await client.close()
    response = predict_pb2.PredictResponse.FromString(raw)
    return built, {name: tf.make_ndarray(t) for name, t in response.outputs.items()}


async def test_metadata_discovery_matches_the_saved_model(tf_serving: Any) -> None:
    client = GrpcClient(tf_serving.target, "adder", None, 30.0)
    try:
        default = await client.fetch_signature("serving_default")
        double = await client.fetch_signature("double")
        mixed = await GrpcClient(tf_serving.target, "mixed", None, 30.0).fetch_signature("serving_default")
    finally:
        await client.close()
    assert {n: (s.dtype, s.shape) for n, s in default.inputs.items()} == {
        "x": ("DT_FLOAT", (-1, 4)),
        "k": ("DT_INT64", (-1,)),
    }
    assert set(default.outputs) == {"y", "z"}
    assert default.method == "tensorflow/serving/predict"
    assert set(double.inputs) == {"x"}
    assert {n: (s.dtype, s.shape) for n, s in mixed.inputs.items()} == {
        "s": ("DT_STRING", (-1,)),
        "img": ("DT_UINT8", (-1, -1, -1, 3)),
        "flag": ("DT_BOOL", (-1,)),
        "h": ("DT_HALF", (-1, 2)),
    }


@pytest.mark.parametrize("batch", [1, 5])
async def test_results_match_the_model_run_directly(tf_serving: Any, saved_models: dict[str, Any], batch: int) -> None:
    built, outputs = await _predict(tf_serving.target, "adder", "serving_default", batch, InputOptions(seed=11))
    x, k = built.tensors["x"].array, built.tensors["k"].array
    assert x.shape == (batch, 4) and k.shape == (batch,)
    expected = saved_models["adder"].loaded.signatures["serving_default"](x=tf.constant(x), k=tf.constant(k))
    np.testing.assert_allclose(outputs["y"], expected["y"].numpy(), rtol=1e-6)
    np.testing.assert_allclose(outputs["z"], x * 2.0, rtol=1e-6)
    np.testing.assert_allclose(outputs["y"], x.sum(axis=1) * k + 1.0, rtol=1e-5)


async def test_string_image_bool_half_inputs(tf_serving: Any, tmp_path: Path) -> None:
    payload = tmp_path / "payload.bin"
    payload.write_bytes(b"seventeen bytes!!")
    options = InputOptions(shapes={"img": (1, 6, 5, 3)}, files={"s": str(payload)}, seed=2)
    built, outputs = await _predict(tf_serving.target, "mixed", "serving_default", 3, options)
    img, flag, h = (built.tensors[n].array for n in ("img", "flag", "h"))
    assert img.shape == (3, 6, 5, 3) and img.dtype == np.uint8
    np.testing.assert_array_equal(outputs["length"], [17, 17, 17])
    np.testing.assert_allclose(outputs["img_mean"], img.astype(np.float32).mean(axis=(1, 2, 3)), rtol=1e-5)
    np.testing.assert_array_equal(outputs["img_hw"], [6, 5])
    assert outputs["flags"] == flag.sum()
    np.testing.assert_allclose(outputs["h2"], h.astype(np.float32) * 2.0, rtol=1e-3)


async def test_image_file_reaches_the_model(tf_serving: Any, tmp_path: Path) -> None:
    pixels = np.random.default_rng(0).integers(0, 256, size=(9, 7, 3), dtype=np.uint8)
    png = tmp_path / "img.png"
    png.write_bytes(tf.io.encode_png(pixels).numpy())
    _, outputs = await _predict(tf_serving.target, "mixed", "serving_default", 2, InputOptions(files={"img": str(png)}))
    np.testing.assert_array_equal(outputs["img_hw"], [9, 7])
    np.testing.assert_allclose(outputs["img_mean"], [pixels.mean()] * 2, rtol=1e-5)


def test_cli_both_modes(tf_serving: Any, run_bench: Any) -> None:
    peers_before = len(tf_serving.servicer.peers)
    run = run_bench(
        "--target", tf_serving.target, "--model", "adder", "--mode", "both", "--warmup", "3",
        "--requests", "70", "--batch-size", "3", "--concurrency", "2", "--duration", "0.5", "--quiet",
    )  # fmt: skip
    assert run.code == 0, run.stderr
    report = run.report
    assert report["requests"] == 70
    latency = report["latencyMs"]
    assert latency["p50"] is not None and latency["p90"] is not None
    assert latency["p99"] is None
    assert any("p99 not reported: 70 samples" in n and ">= 662" in n for n in report["notes"])
    assert latency["min"] <= latency["p50"] <= latency["p90"] <= latency["max"]
    assert report["inputs"]["latency"]["x"] == {"dtype": "DT_FLOAT", "shape": [1, 4], "source": "random"}
    assert report["inputs"]["throughput"]["k"]["shape"] == [3]
    assert report["outputs"]["y"] == {"dtype": "DT_FLOAT", "shape": [1]}
    thr = report["throughput"]
    assert thr["batchSize"] == 3 and thr["concurrency"] == 2
    assert thr["requests"] > 0 and thr["errors"] == 0 and report["errors"] == 0
    assert thr["itemsPerSecond"] == pytest.approx(3 * thr["requestsPerSecond"], rel=1e-3)
    # The latency run held one connection: every latency request came from the same peer.
    latency_peers = tf_serving.servicer.peers[peers_before : peers_before + 73]
    assert len(set(latency_peers)) == 1
    summary = run.summary
    assert summary["latencyMs"]["p50"] == latency["p50"]
    assert summary["throughput"]["batchSize"] == 3
    assert "error" not in summary


def test_cli_throughput_only_and_other_signature(tf_serving: Any, run_bench: Any) -> None:
    run = run_bench(
        "--target", tf_serving.target, "--model", "adder", "--signature", "double", "--mode", "throughput",
        "--warmup", "0", "--batch-size", "2", "--concurrency", "3", "--duration", "0.3", "--fill", "zeros",
        "--quiet",
    )  # fmt: skip
    assert run.code == 0, run.stderr
    assert "latencyMs" not in run.report and "requests" not in run.report
    assert run.report["throughput"]["concurrency"] == 3
    assert run.report["outputs"]["y"]["shape"] == [2, 4]
    assert "latencyMs" not in run.summary
