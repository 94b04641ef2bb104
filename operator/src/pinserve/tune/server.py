"""One trial's model server: started through pinserve's start script on the given CPUs, stopped after.

The server is the binary the user names (``PINSERVE_SERVER_BINARY``), started by the shipped start script
with the candidate's thread settings as the user-set variables the script honours
(``TENSORFLOW_INTRA_OP_PARALLELISM``, ``TENSORFLOW_INTER_OP_PARALLELISM``, and ``OMP_NUM_THREADS`` = intra-op
for Intel's OpenMP runtime), batching through ``PINSERVE_BATCHING_CONFIG``, the gRPC port a free loopback
port and REST off (``--rest_api_port=0``). It is pinned to the CPUs by the affinity it inherits: the calling
thread sets it just around the fork, so no other thread of this process is moved.

TensorFlow Serving binds every interface and has no flag to choose one; the stand-in (tools/standin) has
``--host``. ``host_flag="auto"`` passes ``--host=127.0.0.1`` only when the binary's ``--help`` lists ``--host``.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from pinserve.render.configmap import start_script
from pinserve.render.text import render_text
from pinserve.tuning import Candidate

LOOPBACK = "127.0.0.1"
_THREAD_VARS = ("TENSORFLOW_INTRA_OP_PARALLELISM", "TENSORFLOW_INTER_OP_PARALLELISM", "OMP_NUM_THREADS",
                "PINSERVE_BATCHING_CONFIG", "PINSERVE_THREAD_CONFIG")
_LOG_TAIL = 1500


@dataclass(frozen=True)
class ServerConfig:
    binary: str
    model: str
    model_base_path: str
    cpus: frozenset[int]
    workdir: Path
    extra_args: tuple[str, ...] = ()
    batch_size: int = 8
    concurrency: int = 4


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        port: int = sock.getsockname()[1]
        return port


def accepts_host_flag(binary: str, timeout_s: float = 60.0) -> bool:
    """Whether ``binary --help`` lists a ``--host`` flag (the stand-in does; TF Serving does not)."""
    try:
        done = subprocess.run([binary, "--help"], capture_output=True, timeout=timeout_s, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return False
    text = (done.stdout + done.stderr).decode(errors="replace")
    return re.search(r"--host(?![\w-])", text) is not None


def batching_config(cores: int, batch_size: int, concurrency: int) -> str:
    """TF Serving's batching parameters for a batching trial: the concurrent requests merged into one batch,
    one batch thread per physical core (TF Serving's advice for CPUs), 1 ms of waiting at most."""
    return render_text("batching.pbtxt.j2", max_batch_size=batch_size * concurrency, batch_timeout_micros=1000,
                       max_enqueued_batches=100, num_batch_threads=cores)


@dataclass
class RunningServer:
    process: subprocess.Popen[bytes]
    target: str
    log_path: Path

    def alive(self) -> bool:
        return self.process.poll() is None

    def log_tail(self) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return text[-_LOG_TAIL:].strip()

    def stop(self, grace_s: float = 30.0) -> int:
        """SIGTERM to the server's own process group, SIGKILL after ``grace_s``; its exit code."""
        if self.process.poll() is None:
            self._signal(signal.SIGTERM)
            try:
                return self.process.wait(timeout=grace_s)
            except subprocess.TimeoutExpired:
                self._signal(signal.SIGKILL)
        return self.process.wait(timeout=grace_s)

    def _signal(self, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, sig)  # its own session: only what this module started


def start(config: ServerConfig, candidate: Candidate, physical_cores: int, index: int) -> RunningServer:
    script = config.workdir / "start.sh"
    if not script.exists():
        script.write_text(start_script(), encoding="utf-8")
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in _THREAD_VARS}
    env |= {
        "PINSERVE_SERVER_BINARY": config.binary,
        "PINSERVE_MODEL_NAME": config.model,
        "PINSERVE_MODEL_BASE_PATH": config.model_base_path,
        "PINSERVE_GRPC_PORT": str(port),
        "PINSERVE_REST_PORT": "0",
        "TENSORFLOW_INTRA_OP_PARALLELISM": str(candidate.intra_op),
        "TENSORFLOW_INTER_OP_PARALLELISM": str(candidate.inter_op),
        "OMP_NUM_THREADS": str(candidate.intra_op),
    }
    if candidate.batching:
        path = config.workdir / f"batching-{index}.pbtxt"
        path.write_text(batching_config(physical_cores, config.batch_size, config.concurrency), encoding="utf-8")
        env["PINSERVE_BATCHING_CONFIG"] = str(path)
    log_path = config.workdir / f"trial-{index}.log"
    process = _spawn_pinned(["sh", str(script), *config.extra_args], env, log_path, config.cpus)
    return RunningServer(process, f"{LOOPBACK}:{port}", log_path)


def _spawn_pinned(argv: Sequence[str], env: dict[str, str], log_path: Path,
                  cpus: frozenset[int]) -> subprocess.Popen[bytes]:
    # sched_setaffinity(0) moves the calling thread only; the child inherits it at fork.
    saved = os.sched_getaffinity(0)
    os.sched_setaffinity(0, cpus)
    try:
        with log_path.open("wb") as log:
            return subprocess.Popen(list(argv), stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                    env=env, start_new_session=True)
    finally:
        os.sched_setaffinity(0, saved)


def wait_listening(server: RunningServer, timeout_s: float) -> str | None:
    """Wait until the gRPC port accepts connections; ``None`` when it does, else why not."""
    host, _, port = server.target.rpartition(":")
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not server.alive():
            return f"the server exited with code {server.process.returncode} before listening: {server.log_tail()}"
        try:
            with socket.create_connection((host, int(port)), timeout=1.0):
                return None
        except OSError:
            time.sleep(0.2)
    return f"the server did not listen on {server.target} within {timeout_s:g} s: {server.log_tail()}"
