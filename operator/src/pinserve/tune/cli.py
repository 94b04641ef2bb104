"""`pinserve tune`: find the fastest thread and batching settings for a model on the given CPUs.

    pinserve tune --server-binary PATH --model NAME --model-base-path DIR --cpus LIST
                  [--objective latency|throughput] [--p99-budget-ms X] [--max-trials N] [--batch-size B]
                  [--shape NAME=D0,D1,...] [--requests N] [--duration S] [--intra-op 2,3,4] [--inter-op 1,2]
                  [--batching off,on] [--host-flag auto|yes|no] [--server-arg ARG] ...

One trial per candidate (see pinserve.tuning), one at a time: the server started through pinserve's start
script pinned to --cpus (pinserve.tune.server), the model awaited, a short probe (skipped for the baseline)
that stops a clearly worse trial, the full measurement by the benchmark client as the benchmark Job runs it,
the server stopped. A winner other than Intel's rule is confirmed: both are measured once more, and those
figures decide (one p99 is noisy). JSON on stdout; progress on stderr. Exit 0 when a winner was found, 1 when no trial
qualified, 2 for a bad command line.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from pinserve.argtypes import positive_float, positive_int
from pinserve.topology.cpuset import format_cpulist, parse_cpulist
from pinserve.tune import measure, server
from pinserve.tuning import (
    Candidate,
    Cores,
    Measurement,
    Objective,
    SearchSpace,
    Trial,
    TrialStatus,
    best_trial,
    candidates,
    early_stop,
    judge,
    measurement_from_report,
    needs_confirmation,
    result,
)


def _int_list(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected whole numbers like 1,2,4, got {text!r}") from None
    if min(values) < 1:
        raise argparse.ArgumentTypeError(f"thread counts must be >= 1, got {text!r}")
    return values


def _switches(text: str) -> tuple[bool, ...]:
    words = {"on": True, "true": True, "off": False, "false": False}
    try:
        return tuple(words[w.strip().lower()] for w in text.split(","))
    except KeyError:
        raise argparse.ArgumentTypeError(f"expected on/off values like off,on, got {text!r}") from None


def _cpus(text: str) -> frozenset[int]:
    try:
        cpus = parse_cpulist(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    if not cpus:
        raise argparse.ArgumentTypeError("no CPUs in the list")
    return cpus


def _shape(text: str) -> tuple[str, str]:
    name, sep, dims = text.partition("=")
    if not sep or not name or not dims:
        raise argparse.ArgumentTypeError(f"expected NAME=D0,D1,..., got {text!r}")
    return name, dims


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="pinserve tune", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--server-binary", required=True, help="tensorflow_model_server (or a stand-in) to start")
    p.add_argument("--model", required=True, help="--model_name for the server and the benchmark")
    p.add_argument("--model-base-path", required=True, help="--model_base_path: the SavedModel's versions")
    p.add_argument("--cpus", required=True, type=_cpus, help="CPUs to pin the server to, e.g. 2-5 or 2,3")
    p.add_argument("--client-cpus", type=_cpus, help="CPUs for the benchmark client (default: where pinserve runs)")
    p.add_argument("--objective", choices=[str(o) for o in Objective], default="latency",
                   help="latency: lowest batch-1 p99; throughput: most items/s at --batch-size (default: latency)")
    p.add_argument("--p99-budget-ms", type=positive_float, help="throughput: the throughput run's p99 must be "
                   "within this")
    p.add_argument("--max-trials", type=positive_int, default=8, help="trials at most, baseline included "
                   "(default: %(default)s)")
    p.add_argument("--intra-op", type=_int_list, help="intra-op candidates (default: auto)")
    p.add_argument("--inter-op", type=_int_list, help="inter-op candidates (default: auto: 1,2,4)")
    p.add_argument("--batching", type=_switches, help="batching candidates, e.g. off,on (default: auto: on and off "
                   "for throughput, off for latency)")
    bench = p.add_argument_group("measurement (as the benchmark Job)")
    bench.add_argument("--signature", default="serving_default")
    bench.add_argument("--batch-size", type=positive_int, default=8, help="throughput batch (default: 8)")
    bench.add_argument("--concurrency", type=positive_int, default=4, help="(default: %(default)s)")
    bench.add_argument("--requests", type=positive_int, default=700, help="batch-1 latency requests; a p99 "
                       "needs >= 662 (default: %(default)s)")
    bench.add_argument("--duration", type=positive_float, default=5.0, help="throughput seconds (default: 5)")
    bench.add_argument("--warmup", type=int, default=10, help="(default: %(default)s)")
    bench.add_argument("--shape", type=_shape, action="append", default=[], metavar="NAME=D0,D1,...")
    bench.add_argument("--probe-requests", type=positive_int, default=30, help="latency probe (default: 30)")
    bench.add_argument("--probe-seconds", type=positive_float, default=1.0, help="throughput probe (default: 1)")
    p.add_argument("--no-confirm", dest="confirm", action="store_false", help="do not measure the baseline and "
                   "a different winner once more (the second figures give the winner and the gain)")
    srv = p.add_argument_group("server")
    srv.add_argument("--start-timeout", type=positive_float, default=180.0, help="seconds for the server to "
                     "listen and load the model (default: %(default)s)")
    srv.add_argument("--host-flag", choices=("auto", "yes", "no"), default="auto", help="pass --host=127.0.0.1 "
                     "(auto: when the binary's --help lists --host, as the stand-in's does; TF Serving has no "
                     "such flag and binds every interface)")
    srv.add_argument("--server-arg", action="append", default=[],
                     help="extra server argument, as --server-arg=--flag=value (repeatable)")
    return p


def cores_of(cpus: frozenset[int], sysfs_root: Path = Path("/sys")) -> Cores:
    """Physical cores and threads per core of ``cpus``, counted as the start script counts them."""
    keys: set[tuple[str, ...]] = set()
    for cpu in sorted(cpus):
        topo = sysfs_root / "devices/system/cpu" / f"cpu{cpu}" / "topology"
        parts = []
        for name in ("physical_package_id", "die_id", "core_id"):
            try:
                parts.append((topo / name).read_text().strip())
            except OSError:
                parts.append("")
        keys.add(tuple(parts) if parts[2] else (f"cpu{cpu}",))
    physical = max(1, len(keys))
    return Cores(physical, max(1, -(-len(cpus) // physical)))


def _log(message: str) -> None:
    print(f"pinserve tune: {message}", file=sys.stderr, flush=True)


def _run_trial(args: argparse.Namespace, config: server.ServerConfig, settings: measure.BenchSettings,
               cand: Candidate, *, objective: Objective, cores: Cores, index: int, best: Trial | None) -> Trial:
    started = time.monotonic()
    running = server.start(config, cand, cores.physical_cores, index)
    try:
        problem = server.wait_listening(running, args.start_timeout)
        problem = problem or measure.wait_model_ready(running, args.model, args.start_timeout)
        if problem:
            return Trial(cand, TrialStatus.FAILED, reason=problem, seconds=time.monotonic() - started)
        if best is not None:
            if objective is Objective.LATENCY:
                probe_argv = measure.bench_argv(running.target, args.model, settings, "latency",
                                                requests=args.probe_requests)
            else:
                probe_argv = measure.bench_argv(running.target, args.model, settings, "throughput",
                                                duration_s=args.probe_seconds)
            probe = measurement_from_report(measure.run_bench(probe_argv))
            why = early_stop(objective, probe, best)
            if why:
                return Trial(cand, TrialStatus.STOPPED_EARLY, probe, why, time.monotonic() - started)
        report = measure.run_bench(measure.bench_argv(running.target, args.model, settings))
        m: Measurement = measurement_from_report(report)
        return judge(objective, cand, m, args.p99_budget_ms, time.monotonic() - started)
    except measure.MeasureError as err:
        reason = f"{err}; server log: {running.log_tail()}" if not running.alive() else str(err)
        return Trial(cand, TrialStatus.FAILED, reason=reason, seconds=time.monotonic() - started)
    finally:
        running.stop()


def tune(args: argparse.Namespace) -> dict[str, Any]:
    objective = Objective(args.objective)
    cores = cores_of(args.cpus)
    space = SearchSpace(args.intra_op, args.inter_op, args.batching)
    plan = candidates(cores, objective, space, args.max_trials)
    settings = measure.BenchSettings(
        signature=args.signature, warmup=args.warmup, requests=args.requests, batch_size=args.batch_size,
        concurrency=args.concurrency, duration_s=args.duration, shapes=tuple(args.shape),
    )
    host = args.host_flag == "yes" or (args.host_flag == "auto" and server.accepts_host_flag(args.server_binary))
    extra = (f"--host={server.LOOPBACK}",) if host else ()
    _log(f"{len(plan)} trial(s) on CPUs {format_cpulist(args.cpus)} ({cores.physical_cores} physical core(s), "
         f"{cores.threads_per_core} thread(s) per core), objective {objective}")
    started = time.monotonic()
    trials: list[Trial] = []
    with tempfile.TemporaryDirectory(prefix="pinserve-tune-") as workdir:
        config = server.ServerConfig(args.server_binary, args.model, args.model_base_path, args.cpus,
                                     Path(workdir), (*extra, *args.server_arg), args.batch_size, args.concurrency)
        for index, cand in enumerate(plan):
            trial = _run_trial(args, config, settings, cand, objective=objective, cores=cores, index=index,
                               best=best_trial(objective, trials))
            trials.append(trial)
            m = trial.measurement
            _log(f"trial {index + 1}/{len(plan)} intra={cand.intra_op} inter={cand.inter_op} "
                 f"batching={'on' if cand.batching else 'off'}: {trial.status} p50={m.p50_ms} p99={m.p99_ms} "
                 f"items/s={m.items_per_second}" + (f" ({trial.reason[:200]})" if trial.reason else ""))
        confirmation: list[Trial] = []
        if args.confirm and needs_confirmation(objective, trials):
            winner = best_trial(objective, trials)
            assert winner is not None
            _log("measuring the baseline and the winner once more")
            for index, cand in enumerate((trials[0].candidate, winner.candidate), start=len(plan)):
                confirmation.append(_run_trial(args, config, settings, cand, objective=objective, cores=cores,
                                               index=index, best=None))
    out = result(objective, trials, args.p99_budget_ms, confirmation)
    out |= {
        "cpus": format_cpulist(args.cpus),
        "physicalCores": cores.physical_cores,
        "threadsPerCore": cores.threads_per_core,
        "tuningSeconds": round(time.monotonic() - started, 1),
    }
    return out


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    if args.client_cpus:
        os.sched_setaffinity(0, args.client_cpus)  # before any thread starts: every later one inherits it
    try:
        out = tune(args)
    except ValueError as exc:  # an empty or invalid search space
        print(f"pinserve tune: error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(out, indent=2))
    return 0 if out["best"] is not None else 1
