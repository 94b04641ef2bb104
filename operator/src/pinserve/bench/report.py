"""The full JSON report and the compact summary (<= 4 KiB, a Kubernetes termination message).

Top-level fields follow `status.benchmark` of the design: latencyMs {p50, p90, p99, mean, max, ...},
requests (latency samples), throughput {batchSize, concurrency, requestsPerSecond, itemsPerSecond, ...},
errors (a count) with errorsByCode beside it, and notes explaining anything withheld.
"""

from __future__ import annotations

import datetime
import json
from collections.abc import Callable, Mapping
from typing import Any

from pinserve.bench.errors import BenchError
from pinserve.bench.runner import LatencyRun, ThroughputRun
from pinserve.bench.stats import summarize

SUMMARY_LIMIT = 4096
_SUMMARY_LATENCY_KEYS = ("p50", "p90", "p99", "mean", "max", "min", "stddev")
_SUMMARY_THROUGHPUT_KEYS = ("batchSize", "concurrency", "requestsPerSecond", "itemsPerSecond")
_NOTE_CHARS = 300
_MESSAGE_CHARS = 1000
_CODE_CHARS = 64
_TOP_CODES = 10


def now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def latency_section(run: LatencyRun) -> tuple[dict[str, Any], list[str]]:
    summary = summarize(run.latencies_s, "latency")
    return {"latencyMs": summary.as_dict(), "requests": summary.count}, summary.notes


def throughput_section(run: ThroughputRun, items_per_request: int) -> tuple[dict[str, Any], list[str]]:
    summary = summarize(run.latencies_s, "throughput")
    elapsed = run.elapsed_s if run.elapsed_s > 0 else float("inf")
    section = {
        "batchSize": items_per_request,
        "concurrency": run.concurrency,
        "requestsPerSecond": round(run.ok / elapsed, 2),
        "itemsPerSecond": round(run.ok * items_per_request / elapsed, 2),
        "durationSeconds": round(run.elapsed_s, 3),
        "requests": run.ok,
        "errors": sum(run.errors.values()),
        "latencyMs": summary.as_dict(),
        # The client's own cost, to tell a saturated client from a saturated server.
        "clientCpuMicrosPerRequest": round(run.cpu_s * 1e6 / run.attempted, 1) if run.attempted else None,
    }
    notes = list(summary.notes)
    for code, message in sorted(run.first_error.items()):
        notes.append(f"throughput: {run.errors[code]} request(s) failed with {code}, first: {message}")
    return section, notes


def errors_by_code(run: ThroughputRun | None) -> dict[str, int]:
    if run is None:
        return {}
    return dict(sorted(run.errors.items(), key=lambda kv: (-kv[1], kv[0])))


def _dumps(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":"), sort_keys=False).encode()


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _pick(source: Mapping[str, Any], keys: tuple[str, ...]) -> dict[str, Any]:
    return {k: source[k] for k in keys if k in source}


def _fold_codes(codes: Mapping[str, int], keep: int) -> dict[str, int]:
    """The `keep` most frequent codes, the rest summed under OTHER so the total is preserved."""
    ranked = sorted(codes.items(), key=lambda kv: (-kv[1], kv[0]))
    folded = dict(ranked[:keep])
    rest = sum(n for _, n in ranked[keep:])
    if rest:
        folded["OTHER"] = folded.get("OTHER", 0) + rest
    return folded


def compact_summary(report: Mapping[str, Any], limit: int = SUMMARY_LIMIT) -> bytes:
    """The summary fields of `report` as JSON of at most `limit` bytes.

    Shrinks in order of least value lost: long notes and names clipped, error codes beyond the ten most
    frequent folded into OTHER, notes dropped from the end, more codes folded, the error message clipped;
    the figures and the error total always stay.
    """
    summary: dict[str, Any] = _pick(report, ("completedAt", "model", "version", "signature", "protocol"))
    if report.get("latencyMs") is not None:
        summary["latencyMs"] = _pick(report["latencyMs"], _SUMMARY_LATENCY_KEYS)
        summary["requests"] = report.get("requests", 0)
    if report.get("throughput") is not None:
        thr = report["throughput"]
        summary["throughput"] = _pick(thr, _SUMMARY_THROUGHPUT_KEYS)
        if "latencyMs" in thr:
            summary["throughput"]["latencyMs"] = _pick(thr["latencyMs"], ("p50", "p99"))
    if "errors" in report:
        summary["errors"] = report["errors"]
    if report.get("errorsByCode"):
        codes: dict[str, int] = {}
        for code, count in report["errorsByCode"].items():
            key = _clip(str(code), _CODE_CHARS)
            codes[key] = codes.get(key, 0) + count  # clipping may merge names; keep the total
        summary["errorsByCode"] = codes
    if report.get("notes"):
        summary["notes"] = [_clip(str(n), _NOTE_CHARS) for n in report["notes"]]
    if report.get("error"):
        err = report["error"]
        summary["error"] = {"reason": err["reason"], "message": _clip(str(err["message"]), _MESSAGE_CHARS)}

    def fold_to_top(s: dict[str, Any]) -> bool:
        codes = s.get("errorsByCode")
        if not codes or len(codes) <= _TOP_CODES:
            return False
        s["errorsByCode"] = _fold_codes(codes, _TOP_CODES - 1)
        return True

    def fold(s: dict[str, Any]) -> bool:
        codes = s.get("errorsByCode")
        if not codes or len(codes) <= 1:
            return False
        named = len(codes) - (1 if "OTHER" in codes else 0)
        s["errorsByCode"] = _fold_codes(codes, named // 2)
        return True

    def drop_note(s: dict[str, Any]) -> bool:
        notes = s.get("notes")
        if not notes:
            return False
        dropped = int(s.pop("notesOmitted", 0)) + 1
        s["notes"] = notes[:-1]
        s["notesOmitted"] = dropped
        return True

    def clip_message(s: dict[str, Any]) -> bool:
        err = s.get("error")
        if not err or len(err["message"]) <= 80:
            return False
        err["message"] = _clip(err["message"], len(err["message"]) // 2)
        return True

    def drop_extras(s: dict[str, Any]) -> bool:
        removable = [k for k in ("notes", "notesOmitted", "errorsByCode", "model", "signature") if k in s]
        if not removable:
            return False
        del s[removable[0]]
        return True

    for shrink in (fold_to_top, drop_note, fold, clip_message, drop_extras):
        step: Callable[[dict[str, Any]], bool] = shrink
        while len(_dumps(summary)) > limit and step(summary):
            pass
    encoded = _dumps(summary)
    if len(encoded) > limit:
        raise ValueError(f"summary of {len(encoded)} bytes cannot be fit into {limit}")
    return encoded


def error_report(err: BenchError, context: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """What a failed run reports: `{"error": {"reason", "message"}}` plus whatever context is known."""
    report: dict[str, Any] = dict(context or {})
    report["completedAt"] = now()
    report["error"] = {"reason": err.reason, "message": err.message}
    return report
