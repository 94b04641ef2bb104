"""`pinserve bench`: benchmark a TensorFlow Serving model (latency, throughput) and report as JSON.

    pinserve bench --target HOST:8500 --model NAME [--signature serving_default] [--version N]
                   [--mode latency|throughput|both] [--warmup N] [--requests N]
                   [--batch-size B] [--concurrency C] [--duration S] [--protocol grpc|rest]
                   [--deadline SECONDS] [--summary-file PATH] [--shape NAME=D0,D1,...]
                   [--input-file NAME=PATH] [--fill random|zeros] ...

The full report goes to stdout as JSON; progress and failures go to stderr; a compact summary
(<= 4 KiB, for a Kubernetes termination message) goes to --summary-file. A failure writes
{"error": {"reason": ..., "message": ...}} there instead (with the results, if the run got that far).

Exit codes (the reason word is what the summary's error.reason says):
    0  OK                 the run completed without request errors
    1  InternalError      a bug in the client; traceback on stderr
    2  InvalidArgument    bad command line (usage on stderr; the summary is written if --summary-file parsed)
    3  ServerUnreachable  nothing answers at --target (connection refused, DNS, TLS mismatch)
    4  ModelNotFound      the server does not serve --model (or --version), or no version is AVAILABLE
    5  SignatureNotFound  the model has no --signature (the message lists the ones it has)
    6  DeadlineExceeded   a call outlived --deadline (metadata, warm-up or a latency request, or every
                          throughput request)
    7  RequestErrors      the server rejected requests (e.g. INVALID_ARGUMENT for the inputs), or the
                          throughput error rate exceeded --max-error-rate; the report is still complete
    8  InvalidInput       inputs cannot be built: --shape / --input-file do not fit the signature, an
                          unreadable file, an input of unknown rank without --shape, unsupported dtype
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import traceback
from collections.abc import Mapping
from pathlib import Path
from typing import Any, NoReturn, Protocol

from pinserve.argtypes import non_negative_int, positive_float, positive_int
from pinserve.bench.errors import BenchError, ExitCode, RequestFailedError, UsageError, error_for_status
from pinserve.bench.inputs import FILLS, BuiltInput, BuiltInputs, InputOptions, build_inputs
from pinserve.bench.report import (
    compact_summary,
    error_report,
    errors_by_code,
    latency_section,
    now,
    throughput_section,
)
from pinserve.bench.runner import BlockingCall, Call, ThroughputRun, run_latency, run_throughput
from pinserve.bench.signature import PREDICT_METHOD, SignatureSpec

MODES = ("latency", "throughput", "both")
PROTOCOLS = ("grpc", "rest")
_DEFAULT_PORTS = {"grpc": 8500, "rest": 8501}


class Transport(Protocol):
    """What the CLI needs of a client; GrpcClient and RestClient both provide it."""

    protocol: str

    async def wait_ready(self, wait_seconds: float) -> None: ...
    async def fetch_signature(self, signature: str) -> SignatureSpec: ...
    def build_payload(self, signature: str, inputs: Mapping[str, BuiltInput]) -> bytes: ...
    def latency_caller(self) -> BlockingCall: ...
    def caller(self, index: int) -> Call: ...
    def classify(self, exc: BaseException) -> tuple[str, str] | None: ...
    def describe_response(self, raw: Any) -> dict[str, dict[str, Any]]: ...
    async def close(self) -> None: ...


def _fraction(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be within [0, 1], got {text}")
    return value


def _named(text: str) -> tuple[str, str]:
    name, sep, value = text.partition("=")
    if not sep or not name or not value:
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE, got {text!r}")
    return name, value


def _shape(text: str) -> tuple[str, tuple[int, ...]]:
    name, dims = _named(text)
    try:
        shape = tuple(int(d) for d in dims.split(",")) if dims.strip() not in ("", "scalar") else ()
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected NAME=D0,D1,... with integer dims, got {text!r}") from None
    return name, shape


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        # Raised instead of exiting so a bad command line still leaves a summary for the Job's status.
        raise UsageError(message)


def _summary_path(argv: list[str]) -> str | None:
    """--summary-file from a command line argparse rejected, found by hand."""
    for i, arg in enumerate(argv):
        if arg == "--summary-file" and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith("--summary-file="):
            return arg.partition("=")[2]
    return None


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="pinserve bench",
        description="Benchmark a TensorFlow Serving model: batch-1 latency (one request in flight) and "
        "batch-N throughput under concurrency, with inputs generated from the model's signature.",
        epilog="Exit codes: 0 ok, 1 internal error, 2 bad arguments, 3 server unreachable, 4 model not "
        "found, 5 signature not found, 6 deadline exceeded, 7 request errors, 8 invalid input.",
    )
    target = parser.add_argument_group("target")
    target.add_argument("--target", help="HOST:PORT of TF Serving (default localhost:8500 for grpc, :8501 for rest)")
    target.add_argument("--model", required=True, help="model name as TF Serving serves it")
    target.add_argument("--signature", default="serving_default", help="signature name (default: %(default)s)")
    target.add_argument("--version", type=int, help="model version (default: the latest the server has)")
    target.add_argument("--protocol", choices=PROTOCOLS, default="grpc", help="default: %(default)s")
    target.add_argument(
        "--rest-format",
        choices=("inputs", "instances"),
        default="inputs",
        help="REST body: columnar {'inputs': ...} or row {'instances': [...]} (default: %(default)s)",
    )
    target.add_argument(
        "--deadline",
        type=positive_float,
        default=30.0,
        help="per-call deadline in seconds, metadata included (default: %(default)s)",
    )
    target.add_argument(
        "--wait-ready",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="retry an unreachable server or a model still loading for this long (default: 0)",
    )

    run = parser.add_argument_group("measurement")
    run.add_argument("--mode", choices=MODES, default="both", help="default: %(default)s")
    run.add_argument(
        "--warmup",
        type=non_negative_int,
        default=10,
        help="discarded requests before each measurement; throughput also warms every worker once "
        "(default: %(default)s)",
    )
    run.add_argument(
        "--requests",
        type=positive_int,
        default=1000,
        help="latency samples, batch 1; p90 needs >= 64, p99 >= 662 (default: %(default)s)",
    )
    run.add_argument("--batch-size", type=positive_int, default=8, help="throughput batch (default: %(default)s)")
    run.add_argument(
        "--concurrency",
        type=positive_int,
        default=4,
        help="requests in flight during throughput (default: %(default)s)",
    )
    run.add_argument(
        "--duration",
        type=positive_float,
        default=20.0,
        help="throughput run length in seconds (default: %(default)s)",
    )
    run.add_argument(
        "--channels",
        type=positive_int,
        default=1,
        help="gRPC channels (connections) the throughput workers share (default: %(default)s)",
    )
    run.add_argument(
        "--max-error-rate",
        type=_fraction,
        default=0.0,
        help="fraction of failed throughput requests tolerated before exit 7 (default: 0)",
    )

    data = parser.add_argument_group("inputs (see pinserve.bench.inputs for the rules)")
    data.add_argument("--fill", choices=FILLS, default="random", help="generated values (default: %(default)s)")
    data.add_argument(
        "--shape",
        type=_shape,
        action="append",
        default=[],
        metavar="NAME=D0,D1,...",
        help="full shape of an input; dimension 0 is replaced by the batch size (repeatable)",
    )
    data.add_argument(
        "--input-file",
        type=_named,
        action="append",
        default=[],
        metavar="NAME=PATH",
        help=".npy array, raw bytes for a DT_STRING input, or an image file (repeatable)",
    )
    data.add_argument(
        "--default-dim",
        type=positive_int,
        default=1,
        help="size of unknown non-batch dimensions without --shape (default: %(default)s)",
    )
    data.add_argument("--seed", type=int, default=0, help="random fill seed (default: %(default)s)")

    out = parser.add_argument_group("output")
    out.add_argument("--summary-file", help="write the compact JSON summary here (e.g. /dev/termination-log)")
    out.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    return parser


class _Log:
    def __init__(self, quiet: bool) -> None:
        self.quiet = quiet

    def __call__(self, message: str) -> None:
        if not self.quiet:
            print(f"pinserve bench: {message}", file=sys.stderr, flush=True)


def _make_client(args: argparse.Namespace) -> Transport:
    target = args.target or f"localhost:{_DEFAULT_PORTS[args.protocol]}"
    if args.protocol == "grpc":
        # Imported here: the protos pull in TensorFlow, which a REST run does not need.
        from pinserve.bench.grpc_client import GrpcClient  # noqa: PLC0415

        return GrpcClient(target, args.model, args.version, args.deadline, channels=args.channels)
    from pinserve.bench.rest_client import RestClient  # noqa: PLC0415

    return RestClient(
        target, args.model, args.version, args.deadline, connections=args.concurrency, fmt=args.rest_format
    )


def _describe_inputs(built: BuiltInputs) -> dict[str, Any]:
    return {name: b.describe() for name, b in built.tensors.items()}


def _throughput_failure(thr: ThroughputRun, max_error_rate: float) -> BenchError | None:
    """The failure a throughput run amounts to, if any: nothing issued, nothing succeeded, or too many errors."""
    if thr.attempted == 0:
        return RequestFailedError("no throughput request was issued within --duration")
    codes = ", ".join(f"{c}={n}" for c, n in thr.errors.most_common())
    if thr.ok == 0:
        code = thr.errors.most_common(1)[0][0]
        return error_for_status(
            code, f"all {thr.attempted} throughput requests failed ({codes}); first {code}: {thr.first_error[code]}"
        )
    failed = thr.attempted - thr.ok
    rate = failed / thr.attempted
    if rate > max_error_rate:
        return RequestFailedError(
            f"{failed} of {thr.attempted} throughput requests failed "
            f"({rate:.2%} > --max-error-rate {max_error_rate:g}): {codes}"
        )
    return None


async def _benchmark(args: argparse.Namespace, report: dict[str, Any], log: _Log) -> int:
    """Run the measurements, filling `report` as results arrive; returns the exit code."""
    client = _make_client(args)
    report.update(
        target=args.target or f"localhost:{_DEFAULT_PORTS[args.protocol]}",
        protocol=client.protocol,
        model=args.model,
        version=args.version,
        signature=args.signature,
        startedAt=now(),
    )
    notes: list[str] = []
    report["notes"] = notes
    try:
        if args.wait_ready > 0:
            log(f"waiting up to {args.wait_ready:g} s for model '{args.model}' at {report['target']}")
        await client.wait_ready(args.wait_ready)
        sig = await client.fetch_signature(args.signature)
        log(f"signature '{sig.name}': " + ", ".join(s.describe() for s in sig.inputs.values()))
        if sig.method and sig.method != PREDICT_METHOD:
            notes.append(f"signature method is {sig.method}; the benchmark calls Predict, which may reject it")
        options = InputOptions(args.fill, dict(args.shape), dict(args.input_file), args.seed, args.default_dim)
        report["warmupRequests"] = args.warmup
        report["inputs"] = {}
        first: Any = None

        if args.mode in ("latency", "both"):
            built = build_inputs(sig, 1, options)
            notes.extend(f"latency: {n}" for n in built.notes)
            payload = client.build_payload(sig.name, built.tensors)
            report["inputs"]["latency"] = _describe_inputs(built)
            log(f"latency: {args.warmup} warm-up + {args.requests} requests, batch {built.items}, 1 in flight")
            # A thread of its own: the blocking loop must not stall the event loop (see runner.py).
            lat = await asyncio.to_thread(
                run_latency, client.latency_caller(), payload, args.warmup, args.requests, client.classify
            )
            section, lat_notes = latency_section(lat)
            report.update(section)
            notes.extend(lat_notes)
            first = lat.first_response
            log("latency: " + ", ".join(f"{k} {section['latencyMs'][k]} ms" for k in ("p50", "p90", "p99")))

        exit_code = ExitCode.OK
        if args.mode in ("throughput", "both"):
            built = build_inputs(sig, args.batch_size, options)
            notes.extend(f"throughput: {n}" for n in built.notes)
            payload = client.build_payload(sig.name, built.tensors)
            report["inputs"]["throughput"] = _describe_inputs(built)
            log(f"throughput: batch {built.items}, concurrency {args.concurrency}, {args.duration:g} s")
            calls = [client.caller(i) for i in range(args.concurrency)]
            thr, thr_first = await run_throughput(
                calls,
                payload,
                batch_size=built.items,
                duration_s=args.duration,
                warmup=args.warmup,
                classify=client.classify,
            )
            section, thr_notes = throughput_section(thr, built.items)
            report["throughput"] = section
            report["errors"] = section["errors"]
            report["errorsByCode"] = errors_by_code(thr)
            notes.extend(thr_notes)
            first = first if first is not None else thr_first
            log(
                f"throughput: {section['requestsPerSecond']} req/s, {section['itemsPerSecond']} items/s, "
                f"{section['errors']} errors"
            )
            failure = _throughput_failure(thr, args.max_error_rate)
            if failure is not None:
                if thr.ok == 0:
                    raise failure  # nothing was measured: a plain failure
                report["error"] = {"reason": failure.reason, "message": failure.message}
                log(f"{failure.reason}: {failure.message}")
                exit_code = failure.exit_code
        else:
            report["errors"] = 0
        if first is not None:
            try:
                report["outputs"] = client.describe_response(first)
            except Exception as exc:  # describing is a courtesy; an odd response must not fail the run
                notes.append(f"could not describe the response: {exc}")
        report["completedAt"] = now()
        return int(exit_code)
    finally:
        await client.close()


def _write_summary(path: str | None, data: bytes) -> None:
    if not path:
        return
    try:
        Path(path).write_bytes(data)
    except OSError as exc:
        # Standalone runs may point at a path that does not exist; the stdout report still stands.
        print(f"pinserve bench: warning: cannot write summary to {path}: {exc}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else argv
    try:
        args = parser.parse_args(argv)
    except UsageError as err:
        parser.print_usage(sys.stderr)
        print(f"pinserve bench: error: {err.reason}: {err.message}", file=sys.stderr, flush=True)
        _write_summary(_summary_path(argv), compact_summary(error_report(err)))
        return int(err.exit_code)
    log = _Log(args.quiet)
    report: dict[str, Any] = {}
    try:
        exit_code = asyncio.run(_benchmark(args, report, log))
    except BenchError as err:
        print(f"pinserve bench: error: {err.reason}: {err.message}", file=sys.stderr, flush=True)
        report = error_report(err, report)
        exit_code = int(err.exit_code)
    except KeyboardInterrupt:
        print("pinserve bench: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        traceback.print_exc()
        internal = BenchError(f"{type(exc).__name__}: {exc}")
        report = error_report(internal, report)
        exit_code = int(internal.exit_code)
    for key in ("notes", "error"):  # explanations last, after the figures they explain
        if key in report:
            report[key] = report.pop(key)
    print(json.dumps(report, indent=2))
    _write_summary(args.summary_file, compact_summary(report))
    return exit_code


if __name__ == "__main__":
    sys.exit(main())
