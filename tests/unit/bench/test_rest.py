"""REST mode against a loopback TF Serving REST stand-in (http.server, keep-alive)."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from pinserve.bench.errors import ExitCode, InvalidInputError
from pinserve.bench.inputs import BuiltInput, InputOptions, build_inputs
from pinserve.bench.rest_client import RestClient, encode_body
from pinserve.bench.signature import TensorSpec

pytestmark = pytest.mark.unit


def test_cli_rest_both_modes(rest_serving: Any, run_bench: Any, tmp_path: Path) -> None:
    x = tmp_path / "x.npy"
    np.save(x, np.array([1.0, 2.0, 3.5], dtype=np.float32))
    run = run_bench(
        "--protocol", "rest", "--target", rest_serving.target, "--model", "rest", "--warmup", "2",
        "--requests", "20", "--batch-size", "4", "--concurrency", "2", "--duration", "0.3",
        "--input-file", f"x={x}", "--quiet",
    )  # fmt: skip
    assert run.code == 0, run.stderr
    assert run.report["protocol"] == "rest"
    assert run.report["requests"] == 20
    assert run.report["latencyMs"]["p50"] is not None  # 20 samples support p50 (>= 11), not p90 (>= 64)
    assert run.report["latencyMs"]["p90"] is None
    assert run.report["throughput"]["batchSize"] == 4 and run.report["throughput"]["requests"] > 0
    assert run.report["outputs"] == {"length": {"shape": [1]}, "total": {"shape": [1]}}
    # Latency requests: batch 1 over one persistent connection.
    latency_bodies = rest_serving.bodies[:22]
    assert all(len(b["inputs"]["x"]) == 1 for b in latency_bodies)
    assert len({peer for peer in rest_serving.peers[:22]}) == 1
    assert latency_bodies[0]["inputs"]["x"] == [[1.0, 2.0, 3.5]]
    assert latency_bodies[0]["signature_name"] == "serving_default"
    # Throughput requests: batch 4, at most one connection per worker.
    thr_bodies = rest_serving.bodies[22:]
    assert thr_bodies and all(len(b["inputs"]["x"]) == 4 for b in thr_bodies)
    assert len(set(rest_serving.peers[22:])) <= 2


def test_latency_median_reported_with_enough_samples(rest_serving: Any, run_bench: Any) -> None:
    run = run_bench(
        "--protocol", "rest", "--target", rest_serving.target, "--model", "rest", "--mode", "latency",
        "--warmup", "0", "--requests", "11", "--quiet",
    )  # fmt: skip
    assert run.code == 0, run.stderr
    assert run.report["latencyMs"]["p50"] is not None
    assert run.report["latencyMs"]["p90"] is None


@pytest.mark.parametrize("fmt", ["inputs", "instances"])
async def test_rest_results_are_correct(rest_serving: Any, fmt: str) -> None:
    client = RestClient(rest_serving.target, "rest", None, 10.0, fmt=fmt)
    try:
        await client.wait_ready(0)
        sig = await client.fetch_signature("serving_default")
        built = build_inputs(sig, 3, InputOptions(seed=5))
        raw = await client.caller(0)(client.build_payload(sig.name, built.tensors))
    finally:
        await client.close()
    x = built.tensors["x"].array
    s = list(built.tensors["s"].array)
    body = json.loads(raw)
    if fmt == "inputs":
        total, length = body["outputs"]["total"], body["outputs"]["length"]
    else:
        total = [row["total"] for row in body["predictions"]]
        length = [row["length"] for row in body["predictions"]]
    np.testing.assert_allclose(total, x.sum(axis=1) * 2, rtol=1e-5)
    assert length == [len(v) for v in s] == [16, 16, 16]
    sent = rest_serving.bodies[-1]
    strings = sent["inputs"]["s"] if fmt == "inputs" else [row["s"] for row in sent["instances"]]
    assert [base64.b64decode(v["b64"]) for v in strings] == s


def test_rest_wrong_model_and_signature(rest_serving: Any, run_bench: Any) -> None:
    run = run_bench("--protocol", "rest", "--target", rest_serving.target, "--model", "nope", "--quiet")
    assert run.code == ExitCode.MODEL_NOT_FOUND, run.stderr
    assert run.summary["error"]["reason"] == "ModelNotFound"
    run = run_bench(
        "--protocol", "rest", "--target", rest_serving.target, "--model", "rest", "--signature", "x", "--quiet"
    )
    assert run.code == ExitCode.SIGNATURE_NOT_FOUND, run.stderr
    assert "available: serving_default" in run.summary["error"]["message"]


def test_rest_deadline(rest_serving: Any, run_bench: Any) -> None:
    rest_serving.delay_s = 0.5
    run = run_bench(
        "--protocol", "rest", "--target", rest_serving.target, "--model", "rest", "--deadline", "0.1",
        "--mode", "latency", "--warmup", "1", "--requests", "3", "--quiet",
    )  # fmt: skip
    assert run.code == ExitCode.DEADLINE_EXCEEDED, run.stderr
    assert run.summary["error"]["reason"] == "DeadlineExceeded"


def test_row_format_needs_batched_inputs() -> None:
    scalar = BuiltInput(TensorSpec("t", "DT_FLOAT", ()), np.array(1.0, np.float32), "random")
    with pytest.raises(InvalidInputError, match="row format"):
        encode_body("serving_default", {"t": scalar}, "instances")
    assert encode_body("serving_default", {"t": scalar}, "inputs") == (
        b'{"signature_name":"serving_default","inputs":{"t":1.0}}'
    )
