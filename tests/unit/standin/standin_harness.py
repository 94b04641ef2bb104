"""Helpers for the TF Serving stand-in's tests: the model it serves, and starting and stopping it as a real
subprocess on 127.0.0.1. (A module of its own: several directories have a conftest.py.)"""

from __future__ import annotations

import os
import shlex
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar, cast

import numpy as np
import pytest
import tensorflow as tf

REPO = Path(__file__).resolve().parents[3]
PROGRAM = REPO / "tools" / "standin" / "tensorflow_model_server.py"
START_LINE = "(this is not TensorFlow Serving) serving:"
START_TIMEOUT_S = 180.0


F = TypeVar("F", bound=Callable[..., Any])


def _signature(*specs: Any) -> Callable[[F], F]:
    """tf.function with an input signature, typed for mypy."""
    return cast(Callable[[F], F], tf.function(input_signature=list(specs)))


class Linear(tf.Module):  # type: ignore[misc]
    """serving_default: y = x @ W + b (float32 [-1, 4] -> [-1, 3]); describe: strings and sums."""

    def __init__(self, seed: int, bias: float) -> None:
        rng = np.random.default_rng(seed)
        self.w = tf.Variable(rng.normal(size=(4, 3)).astype(np.float32))
        self.b = tf.Variable(np.full(3, bias, np.float32))

    @_signature(tf.TensorSpec([None, 4], tf.float32, name="x"))
    def serve(self, x: tf.Tensor) -> dict[str, tf.Tensor]:
        return {"y": tf.matmul(x, self.w) + self.b}

    @_signature(tf.TensorSpec([None, 4], tf.float32, name="x"), tf.TensorSpec([None], tf.string, name="s"))
    def describe(self, x: tf.Tensor, s: tf.Tensor) -> dict[str, tf.Tensor]:
        return {"total": tf.reduce_sum(x, axis=1), "length": tf.strings.length(s), "echo_bytes": s}


@dataclass
class Models:
    base: Path  # base path: versions 1 and 2, and a non-numeric directory the stand-in must ignore
    latest: Any  # version 2, loaded in this process: the reference results

    def expected(self, signature: str, **inputs: Any) -> dict[str, np.ndarray[Any, Any]]:
        outputs = self.latest.signatures[signature](**{k: tf.constant(v) for k, v in inputs.items()})
        return {k: v.numpy() for k, v in outputs.items()}


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class Standin:
    process: subprocess.Popen[bytes]
    argv: list[str]
    grpc: str
    rest: str
    log_path: Path

    @property
    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=60)


def _env() -> dict[str, str]:
    return {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "1", "PYTHONUNBUFFERED": "1"}


def start_standin(tmp: Path, base: Path, *extra: str) -> Standin:
    """Start the stand-in as `tensorflow_model_server` would be started, and wait for its start line."""
    grpc_port, rest_port = free_port(), free_port()
    argv = [
        f"--port={grpc_port}",
        "--rest_api_port",  # the "--flag value" form
        str(rest_port),
        "--host=127.0.0.1",
        "--model_name=m",
        f"--model_base_path={base}",
        "--tensorflow_intra_op_parallelism=1",
        "--tensorflow_inter_op_parallelism=2",
        *extra,
    ]
    log_path = tmp / f"standin-{grpc_port}.log"
    with log_path.open("wb") as log, (tmp / f"standin-{grpc_port}.out").open("wb") as out:
        process = subprocess.Popen([sys.executable, str(PROGRAM), *argv], stdout=out, stderr=log, cwd=REPO, env=_env())
    standin = Standin(process, argv, f"127.0.0.1:{grpc_port}", f"127.0.0.1:{rest_port}", log_path)
    deadline = time.monotonic() + START_TIMEOUT_S
    while START_LINE not in standin.log:
        if process.poll() is not None or time.monotonic() > deadline:
            standin.stop()
            pytest.fail(f"the stand-in did not start ({shlex.join(argv)}):\n{standin.log[-3000:]}")
        time.sleep(0.2)
    return standin


def stop_cleanly(standin: Standin) -> None:
    code = standin.stop()
    assert code == 0, f"SIGTERM must stop the stand-in with exit code 0, got {code}:\n{standin.log[-2000:]}"
    assert "stopped" in standin.log.splitlines()[-1]


@dataclass
class Finished:
    code: int
    stdout: str
    stderr: str


def save_models(base: Path) -> Models:
    """Versions 1 and 2 of Linear under `base` (the stand-in must serve 2), and a directory it must ignore."""
    for version, bias in ((1, 100.0), (2, 0.5)):
        module = Linear(seed=version, bias=bias)
        signatures = {"serving_default": module.serve, "describe": module.describe}
        tf.saved_model.save(module, str(base / str(version)), signatures=signatures)
    (base / "not-a-version").mkdir()
    return Models(base, tf.saved_model.load(str(base / "2")))


def run_to_completion(*argv: str) -> Finished:
    """Run the stand-in to the end (bad command lines: they fail before TensorFlow is imported)."""
    command = [sys.executable, str(PROGRAM), *argv]
    done = subprocess.run(command, check=False, capture_output=True, text=True, cwd=REPO, env=_env(), timeout=120)
    return Finished(done.returncode, done.stdout, done.stderr)
