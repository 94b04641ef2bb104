"""A trial's measurement: the benchmark client's own code path (``pinserve bench``'s parser and run), with the
arguments the benchmark Job passes (see pinserve.render.job.bench_args), against the trial's server."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from pinserve.bench import cli as bench_cli
from pinserve.bench.errors import BenchError
from pinserve.tune.server import RunningServer


@dataclass(frozen=True)
class BenchSettings:
    """What the benchmark Job's spec.benchmark holds, for the full measurement and the probe."""

    signature: str = "serving_default"
    warmup: int = 10
    requests: int = 700
    batch_size: int = 8
    concurrency: int = 4
    duration_s: float = 5.0
    fill: str = "random"
    shapes: tuple[tuple[str, str], ...] = ()  # (name, "d0,d1,...")
    deadline_s: float = 30.0


def bench_argv(target: str, model: str, s: BenchSettings, mode: str = "both", *, requests: int | None = None,
               duration_s: float | None = None) -> list[str]:
    argv = [
        "--target", target, "--protocol", "grpc", "--model", model, "--signature", s.signature,
        "--mode", mode, "--warmup", str(s.warmup), "--requests", str(requests or s.requests),
        "--batch-size", str(s.batch_size), "--concurrency", str(s.concurrency),
        "--duration", f"{duration_s or s.duration_s:g}", "--fill", s.fill, "--deadline", f"{s.deadline_s:g}",
        "--quiet",
    ]
    for name, dims in s.shapes:
        argv += ["--shape", f"{name}={dims}"]
    return argv


class MeasureError(Exception):
    """The benchmark failed; the message is its reason and explanation."""


def run_bench(argv: Sequence[str]) -> dict[str, Any]:
    """One ``pinserve bench`` run in this process; its JSON report, or MeasureError with the bench's reason."""
    args = bench_cli.build_parser().parse_args(list(argv))
    report: dict[str, Any] = {}
    log = bench_cli._Log(quiet=True)  # the same run as `pinserve bench`, not a copy
    try:
        code = asyncio.run(bench_cli._benchmark(args, report, log))
    except BenchError as err:
        raise MeasureError(f"{err.reason}: {err.message}") from err
    if code != 0:
        error = report.get("error") or {}
        raise MeasureError(f"{error.get('reason', f'exit {code}')}: {error.get('message', '')}".rstrip(": "))
    return report


def wait_model_ready(server: RunningServer, model: str, timeout_s: float) -> str | None:
    """Wait until the server reports the model AVAILABLE (or has no ModelService); ``None``, or why not."""
    from pinserve.bench.grpc_client import GrpcClient  # noqa: PLC0415  (TensorFlow's protos: imported late)

    async def poll() -> str | None:
        client = GrpcClient(server.target, model, None, 5.0)
        deadline = time.monotonic() + timeout_s
        last = "not ready"
        try:
            while time.monotonic() < deadline:
                if not server.alive():
                    return f"the server exited with code {server.process.returncode}: {server.log_tail()}"
                try:
                    await client.wait_ready(0)
                    return None
                except BenchError as err:
                    last = f"{err.reason}: {err.message}"
                await asyncio.sleep(0.5)
            return f"the model was not ready within {timeout_s:g} s ({last}): {server.log_tail()}"
        finally:
            await client.close()

    return asyncio.run(poll())
