"""`pinserve tune-trial`: the measuring container of an in-cluster tuning trial pod (see pinserve.tuneflow).

It runs beside the trial's server container, on the pod's loopback, with the benchmark Job's own arguments
(pinserve.render.job.bench_args): the measurement is the benchmark Job's. Before the full run, when the best
trial so far is given, a short probe runs first; a candidate clearly worse than the best (pinserve.tuning's
early_stop) ends there and writes ``{"stoppedEarly": reason, "probe": {...}}`` to the summary file instead of
the benchmark's summary. Everything after ``--`` is the ``pinserve bench`` command line.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from pinserve.argtypes import positive_float, positive_int
from pinserve.bench import cli as bench_cli
from pinserve.tune.measure import MeasureError, run_bench
from pinserve.tuning import Candidate, Measurement, Objective, Trial, TrialStatus, early_stop, measurement_from_report


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="pinserve tune-trial", description=__doc__.split("\n\n")[0])
    p.add_argument("--objective", choices=[str(o) for o in Objective], default="latency")
    p.add_argument("--best-p99-ms", type=positive_float, help="latency: the best p99 so far (enables the probe)")
    p.add_argument("--best-items-per-second", type=positive_float,
                   help="throughput: the best items/s so far (enables the probe)")
    p.add_argument("--probe-requests", type=positive_int, default=30, help="latency probe requests (default: 30)")
    p.add_argument("--probe-seconds", type=positive_float, default=1.0, help="throughput probe (default: 1)")
    p.add_argument("bench", nargs=argparse.REMAINDER, help="-- then the `pinserve bench` arguments")
    return p


def _option(argv: list[str], name: str) -> str | None:
    for i, arg in enumerate(argv):
        if arg == name and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith(name + "="):
            return arg.split("=", 1)[1]
    return None


def probe_argv(bench: list[str], objective: Objective, requests: int, seconds: float) -> list[str]:
    """The bench command line of the probe: the same target and inputs, a short run, no summary file."""
    out: list[str] = []
    skip = False
    for arg in bench:
        if skip:
            skip = False
            continue
        if arg == "--summary-file":
            skip = True
            continue
        if arg.startswith("--summary-file="):
            continue
        out.append(arg)
    if objective is Objective.LATENCY:
        return [*out, "--mode", "latency", "--requests", str(requests), "--quiet"]
    return [*out, "--mode", "throughput", "--duration", f"{seconds:g}", "--quiet"]


def _best(objective: Objective, p99: float | None, ips: float | None) -> Trial | None:
    if objective is Objective.LATENCY and p99 is not None:
        return Trial(Candidate(1, 1), TrialStatus.OK, Measurement(p99_ms=p99))
    if objective is Objective.THROUGHPUT and ips is not None:
        return Trial(Candidate(1, 1), TrialStatus.OK, Measurement(items_per_second=ips))
    return None


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    bench = [a for a in args.bench if a != "--"] if args.bench[:1] == ["--"] else list(args.bench)
    objective = Objective(args.objective)
    best = _best(objective, args.best_p99_ms, args.best_items_per_second)
    if best is not None:
        try:
            probe = measurement_from_report(run_bench(probe_argv(bench, objective, args.probe_requests,
                                                                 args.probe_seconds)))
        except MeasureError as exc:
            print(f"pinserve tune-trial: the probe failed ({exc}); measuring in full", file=sys.stderr)
        else:
            why = early_stop(objective, probe, best)
            print(f"pinserve tune-trial: probe p50 {probe.p50_ms} ms, {probe.items_per_second} items/s: "
                  + (f"stopping ({why})" if why else "measuring in full"), file=sys.stderr, flush=True)
            if why is not None:
                report = {"stoppedEarly": why, "probe": {"p50Ms": probe.p50_ms, "p99Ms": probe.p99_ms,
                                                         "itemsPerSecond": probe.items_per_second}}
                print(json.dumps(report))
                summary = _option(bench, "--summary-file")
                if summary:
                    Path(summary).write_text(json.dumps(report, separators=(",", ":")))
                return 0
    return bench_cli.main(bench)
