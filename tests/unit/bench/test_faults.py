"""Failures are reported, not hidden: each has its message, summary entry and exit code."""

from __future__ import annotations

import json
import socket
import threading
import time
from pathlib import Path
from typing import Any

import grpc
import pytest

from pinserve.bench.cli import main
from pinserve.bench.errors import ExitCode

pytestmark = pytest.mark.unit


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


def _assert_failure(run: Any, code: ExitCode, reason: str, *needles: str) -> dict[str, Any]:
    assert run.code == code, run.stderr
    assert f"error: {reason}:" in run.stderr
    summary: dict[str, Any] = run.summary
    assert summary["error"]["reason"] == reason
    assert run.report["error"]["reason"] == reason
    for needle in needles:
        assert needle in summary["error"]["message"]
        assert needle in run.stderr
    return summary


def test_server_down(run_bench: Any) -> None:
    target = f"127.0.0.1:{_free_port()}"
    run = run_bench("--target", target, "--model", "m", "--quiet")
    _assert_failure(run, ExitCode.UNREACHABLE, "ServerUnreachable", "cannot reach TF Serving", target)


def test_server_down_rest(run_bench: Any) -> None:
    target = f"127.0.0.1:{_free_port()}"
    run = run_bench("--protocol", "rest", "--target", target, "--model", "m", "--quiet")
    _assert_failure(run, ExitCode.UNREACHABLE, "ServerUnreachable", target)


def test_wrong_model(tf_serving: Any, run_bench: Any) -> None:
    run = run_bench("--target", tf_serving.target, "--model", "nope", "--quiet")
    summary = _assert_failure(run, ExitCode.MODEL_NOT_FOUND, "ModelNotFound", "'nope'")
    assert summary["model"] == "nope"


def test_wrong_version(tf_serving: Any, run_bench: Any) -> None:
    run = run_bench("--target", tf_serving.target, "--model", "adder", "--version", "7", "--quiet")
    _assert_failure(run, ExitCode.MODEL_NOT_FOUND, "ModelNotFound", "adder version 7")


def test_wrong_model_without_model_service(fake_serving: Any, run_bench: Any) -> None:
    # No ModelService: the status check is skipped and GetModelMetadata's NOT_FOUND decides.
    server = fake_serving(lambda request, context: None)
    run = run_bench("--target", server.target, "--model", "nope", "--quiet")
    _assert_failure(run, ExitCode.MODEL_NOT_FOUND, "ModelNotFound", "'nope'")


def test_wrong_signature(tf_serving: Any, run_bench: Any) -> None:
    run = run_bench("--target", tf_serving.target, "--model", "adder", "--signature", "predict_images", "--quiet")
    _assert_failure(
        run, ExitCode.SIGNATURE_NOT_FOUND, "SignatureNotFound", "'predict_images'", "double", "serving_default"
    )


def test_slow_beyond_the_deadline(fake_serving: Any, run_bench: Any) -> None:
    server = fake_serving(lambda request, context: time.sleep(2.0))
    # The deadline also covers the first calls on a new channel (status, metadata): 0.5 s leaves them room.
    run = run_bench(
        "--target", server.target, "--model", "fake", "--deadline", "0.5", "--mode", "latency",
        "--warmup", "1", "--requests", "5", "--quiet",
    )  # fmt: skip
    _assert_failure(run, ExitCode.DEADLINE_EXCEEDED, "DeadlineExceeded", "warm-up request 1 of 1")


def test_slow_beyond_the_deadline_in_throughput(fake_serving: Any, run_bench: Any) -> None:
    calls = iter(range(10**6))
    lock = threading.Lock()

    def slow_after_warmup(request: Any, context: Any) -> None:
        with lock:
            n = next(calls)
        if n >= 2:
            time.sleep(2.0)

    server = fake_serving(slow_after_warmup)
    run = run_bench(
        "--target", server.target, "--model", "fake", "--deadline", "0.5", "--mode", "throughput",
        "--warmup", "0", "--concurrency", "2", "--duration", "0.3", "--quiet",
    )  # fmt: skip
    summary = _assert_failure(run, ExitCode.DEADLINE_EXCEEDED, "DeadlineExceeded", "throughput requests failed")
    assert summary["errorsByCode"] == {"DEADLINE_EXCEEDED": summary["errors"]}
    assert summary["errors"] >= 2


def test_server_rejects_the_inputs(fake_serving: Any, run_bench: Any) -> None:
    def reject(request: Any, context: Any) -> None:
        context.abort(grpc.StatusCode.INVALID_ARGUMENT, "input size mismatch")

    server = fake_serving(reject)
    run = run_bench("--target", server.target, "--model", "fake", "--quiet")
    _assert_failure(run, ExitCode.REQUEST_ERRORS, "RequestErrors", "INVALID_ARGUMENT", "input size mismatch")


def _flaky(every: int) -> Any:
    calls = iter(range(10**6))
    lock = threading.Lock()

    def behaviour(request: Any, context: Any) -> None:
        with lock:
            n = next(calls)
        # The first 8 calls (warm-up) succeed so the run gets going.
        if n >= 8 and n % every == 0:
            code = grpc.StatusCode.RESOURCE_EXHAUSTED if n % (2 * every) else grpc.StatusCode.UNAVAILABLE
            context.abort(code, f"injected failure {n}")

    return behaviour


def test_throughput_errors_are_counted_by_code(fake_serving: Any, run_bench: Any) -> None:
    server = fake_serving(_flaky(3))
    args = ("--target", server.target, "--model", "fake", "--mode", "throughput", "--warmup", "0",
            "--concurrency", "4", "--duration", "0.5", "--quiet")  # fmt: skip
    run = run_bench(*args)
    assert run.code == ExitCode.REQUEST_ERRORS, run.stderr
    codes = run.report["errorsByCode"]
    assert set(codes) == {"RESOURCE_EXHAUSTED", "UNAVAILABLE"}
    assert run.report["errors"] == sum(codes.values()) == run.report["throughput"]["errors"]
    assert server.servicer.calls == run.report["throughput"]["requests"] + run.report["errors"] + 4
    # Results are still there next to the error.
    assert run.summary["throughput"]["requestsPerSecond"] > 0
    assert run.summary["error"]["reason"] == "RequestErrors"
    assert "RESOURCE_EXHAUSTED=" in run.summary["error"]["message"]
    assert any("failed with UNAVAILABLE, first: injected failure" in n for n in run.report["notes"])

    fresh = fake_serving(_flaky(3))  # its warm-up calls succeed again
    tolerant = run_bench(*args, "--max-error-rate", "0.5", "--target", fresh.target)
    assert tolerant.code == ExitCode.OK, tolerant.stderr
    assert "error" not in tolerant.summary
    assert tolerant.summary["errors"] > 0


def test_invalid_input_options(tf_serving: Any, run_bench: Any) -> None:
    run = run_bench("--target", tf_serving.target, "--model", "adder", "--shape", "nope=1,2", "--quiet")
    _assert_failure(run, ExitCode.INVALID_INPUT, "InvalidInput", "--shape names nope", "x:DT_FLOAT[?,4]")
    run = run_bench("--target", tf_serving.target, "--model", "adder", "--shape", "x=1,5", "--quiet")
    _assert_failure(run, ExitCode.INVALID_INPUT, "InvalidInput", "fixes it at 4")


def test_usage_errors_exit_2(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert main(["--model", "m", "--shape", "x=1,a"]) == ExitCode.USAGE
    assert main(["--model", "m", "--requests", "0"]) == ExitCode.USAGE
    summary = tmp_path / "summary.json"
    assert main(["--target", "x:1", "--summary-file", str(summary)]) == ExitCode.USAGE  # --model is required
    assert "usage:" in capsys.readouterr().err
    # Even a rejected command line leaves its reason where the Job's status will look.
    error = json.loads(summary.read_text())["error"]
    assert error["reason"] == "InvalidArgument" and "--model" in error["message"]


def test_unwritable_summary_file_is_a_warning(tf_serving: Any, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["--target", tf_serving.target, "--model", "nope", "--quiet", "--summary-file", "/no/such/dir/x"])
    assert code == ExitCode.MODEL_NOT_FOUND
    captured = capsys.readouterr()
    assert "cannot write summary" in captured.err
    assert json.loads(captured.out)["error"]["reason"] == "ModelNotFound"
