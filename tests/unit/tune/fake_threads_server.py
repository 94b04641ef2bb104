"""A model server whose Predict latency depends on its thread flags in a way the tuning test knows.

Started by `pinserve tune` through the start script, like tensorflow_model_server: it reads
--port, --tensorflow_intra_op_parallelism, --tensorflow_inter_op_parallelism and --host (listed in --help, so
`pinserve tune` passes --host=127.0.0.1); every other flag is accepted and ignored. It serves
PredictionService.GetModelMetadata and Predict with canned responses (serialized by the test, so this process
imports grpc only, not TensorFlow) and sleeps the latency the test's table gives its (intra, inter) per
Predict, optionally with periodic spikes.
Its argv goes to stderr first, so the test can see what the start script passed.
"""

from __future__ import annotations

import json
import signal
import sys
import threading
import time
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc

USAGE = """usage: fake_threads_server --port=P [--host=ADDR] [--tensorflow_intra_op_parallelism=N]
    [--tensorflow_inter_op_parallelism=N] --canned=DIR ... (other TF Serving flags are ignored)"""


def _flags(argv: list[str]) -> dict[str, str]:
    flags = {}
    for arg in argv:
        name, _, value = arg.lstrip("-").partition("=")
        flags[name] = value
    return flags


def main(argv: list[str]) -> int:
    if "--help" in argv:
        print(USAGE)
        return 0
    print("fake_threads_server argv: " + " ".join(argv), file=sys.stderr, flush=True)
    flags = _flags(argv)
    canned = Path(flags["canned"])
    table: dict[str, Any] = json.loads((canned / "latency.json").read_text())
    intra = flags.get("tensorflow_intra_op_parallelism", "?")
    inter = flags.get("tensorflow_inter_op_parallelism", "?")
    entry = table.get(f"{intra},{inter}", table["default"])
    # A number (ms), or {"ms": base, "spikeMs": slow, "spikeEvery": n}: every n-th Predict takes spikeMs.
    spec = entry if isinstance(entry, dict) else {"ms": entry}
    delay_s = spec["ms"] / 1000.0
    spike_s = spec.get("spikeMs", spec["ms"]) / 1000.0
    every = int(spec.get("spikeEvery", 0))
    count = [0]
    lock = threading.Lock()
    metadata = (canned / "metadata.bin").read_bytes()
    predict = (canned / "predict.bin").read_bytes()

    def get_metadata(request: bytes, context: Any) -> bytes:
        return metadata

    def do_predict(request: bytes, context: Any) -> bytes:
        with lock:
            count[0] += 1
            spike = every > 0 and count[0] % every == 0
        time.sleep(spike_s if spike else delay_s)
        return predict

    handler = grpc.method_handlers_generic_handler("tensorflow.serving.PredictionService", {
        "GetModelMetadata": grpc.unary_unary_rpc_method_handler(get_metadata),
        "Predict": grpc.unary_unary_rpc_method_handler(do_predict),
    })
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=16))
    server.add_generic_rpc_handlers((handler,))
    host = flags.get("host", "127.0.0.1")
    server.add_insecure_port(f"{host}:{flags['port']}")
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    server.start()
    print(f"fake_threads_server: intra={intra} inter={inter} delay_ms={delay_s * 1000:g} on {host}",
          file=sys.stderr, flush=True)
    stop.wait()
    server.stop(grace=None)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
