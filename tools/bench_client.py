"""What the benchmark client itself costs: throughput mode against a no-op TF Serving on loopback.

    .venv/bin/python -m tools.bench_client [--duration 5] [--concurrency 16] [--channels 1,2]

The no-op server runs in a child process (so the client's CPU time is its own) and answers Predict with
a fixed pre-serialized response. For each channel count the script runs `pinserve bench --mode
throughput` in-process and prints requests/s, the client's CPU microseconds per request (process time
over the timed phase) and the server's. Figures only; nothing is asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import json
import os
import resource
import subprocess
import sys
import time
from typing import Any

_SERVE_FLAG = "--serve"


def _serve() -> None:
    """Child process: a grpc.aio server that skips (de)serialization and answers every call at once."""
    import grpc  # noqa: PLC0415
    from tensorflow.core.framework import tensor_pb2, types_pb2  # noqa: PLC0415
    from tensorflow.core.protobuf import meta_graph_pb2  # noqa: PLC0415
    from tensorflow_serving.apis import get_model_metadata_pb2, predict_pb2  # noqa: PLC0415

    signature = meta_graph_pb2.SignatureDef(method_name="tensorflow/serving/predict")
    x = signature.inputs["x"]
    x.dtype = types_pb2.DT_FLOAT
    x.tensor_shape.dim.add(size=-1)
    x.tensor_shape.dim.add(size=4)
    y = signature.outputs["y"]
    y.dtype = types_pb2.DT_FLOAT
    y.tensor_shape.dim.add(size=-1)
    metadata = get_model_metadata_pb2.GetModelMetadataResponse()
    metadata.model_spec.name = "noop"
    metadata.metadata["signature_def"].Pack(
        get_model_metadata_pb2.SignatureDefMap(signature_def={"serving_default": signature})
    )
    answer = predict_pb2.PredictResponse()
    answer.model_spec.name = "noop"
    answer.outputs["y"].CopyFrom(
        tensor_pb2.TensorProto(dtype=types_pb2.DT_FLOAT, float_val=[0.0], tensor_shape={"dim": [{"size": 1}]})
    )
    answer_bytes: bytes = answer.SerializeToString()
    metadata_bytes: bytes = metadata.SerializeToString()

    async def predict(request: bytes, context: Any) -> bytes:
        return answer_bytes

    async def get_metadata(request: bytes, context: Any) -> bytes:
        return metadata_bytes

    handlers = grpc.method_handlers_generic_handler(
        "tensorflow.serving.PredictionService",
        {
            "Predict": grpc.unary_unary_rpc_method_handler(predict),
            "GetModelMetadata": grpc.unary_unary_rpc_method_handler(get_metadata),
        },
    )

    async def run() -> None:
        server = grpc.aio.server()
        server.add_generic_rpc_handlers((handlers,))
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        print(port, flush=True)
        # Serve until the parent closes our stdin.
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
        await server.stop(None)

    asyncio.run(run())


def _measure(port: int, args: argparse.Namespace, channels: int) -> dict[str, Any]:
    from pinserve.bench.cli import main  # noqa: PLC0415

    argv = [
        "--target", f"127.0.0.1:{port}", "--model", "noop", "--mode", "throughput", "--quiet",
        "--batch-size", "1", "--concurrency", str(args.concurrency), "--duration", str(args.duration),
        "--warmup", "100", "--channels", str(channels),
    ]  # fmt: skip
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main(argv)
    if code != 0:
        raise SystemExit(f"pinserve bench exited {code}: {out.getvalue()}")
    report: dict[str, Any] = json.loads(out.getvalue())
    return report


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == _SERVE_FLAG:
        _serve()
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--channels", default="1,2", help="comma-separated channel counts to try")
    args = parser.parse_args()

    server = subprocess.Popen(
        [sys.executable, os.path.abspath(__file__), _SERVE_FLAG],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert server.stdout is not None
        port = int(server.stdout.readline())
        print(f"no-op PredictionService (pid {server.pid}) on 127.0.0.1:{port}; {os.cpu_count()} CPUs")
        print(f"{'channels':>8} {'req/s':>9} {'client CPU us/req':>18} {'server CPU us/req':>18}")
        for channels in (int(c) for c in args.channels.split(",")):
            before = _server_cpu(server.pid)
            report = _measure(port, args, channels)
            thr = report["throughput"]
            total = thr["requests"] + thr["errors"]
            server_us = (_server_cpu(server.pid) - before) * 1e6 / max(1, total)
            print(
                f"{channels:>8} {thr['requestsPerSecond']:>9.0f} {thr['clientCpuMicrosPerRequest']:>18.1f} "
                f"{server_us:>18.1f}   (p50 {thr['latencyMs']['p50']} ms, p99 {thr['latencyMs']['p99']} ms, "
                f"errors {thr['errors']})"
            )
    finally:
        if server.stdin is not None:
            server.stdin.close()
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
    usage = resource.getrusage(resource.RUSAGE_SELF)
    print(f"client process total CPU {usage.ru_utime + usage.ru_stime:.1f} s (includes imports and warm-up)")


def _server_cpu(pid: int) -> float:
    """CPU seconds the child has used so far, from /proc (getrusage only reports children once reaped)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks


if __name__ == "__main__":
    start = time.monotonic()
    main()
    print(f"done in {time.monotonic() - start:.1f} s")
