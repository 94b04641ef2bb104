"""`pinserve tune-report [FILE]`: the trials of a tuning run as a table, best first.

Reads (from FILE, or stdin when FILE is '-' or absent) the JSON of `pinserve tune`, a ModelServer
(`kubectl get modelserver NAME -o json`: its status.tuning), or a list of them (`kubectl get modelservers -o json`).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping
from typing import Any

from pinserve.tuning import Objective, TrialStatus, ranked, trial_from_dict

_COLUMNS = ("RANK", "INTRA", "INTER", "BATCHING", "P50(MS)", "P99(MS)", "ITEMS/S", "STATUS", "NOTE")


_trial = trial_from_dict


def _cell(value: Any) -> str:
    return "-" if value is None else f"{value:g}" if isinstance(value, float) else str(value)


def render_table(tuning: Mapping[str, Any]) -> str:
    """One tuning result (the `pinserve tune` JSON or a status.tuning) as aligned text, best first."""
    objective = Objective(tuning.get("objective", "latency"))
    trials = [_trial(t) for t in tuning.get("trials") or []]
    base = trials[0].candidate if trials else None
    rows = []
    for rank, t in enumerate(ranked(objective, trials), start=1):
        m = t.measurement
        note = "baseline (Intel's rule)" if t.candidate == base else ""
        if t.reason:
            note = f"{note}; {t.reason}" if note else t.reason
        rows.append((str(rank) if t.status is TrialStatus.OK else "-", str(t.candidate.intra_op),
                     str(t.candidate.inter_op), "on" if t.candidate.batching else "off", _cell(m.p50_ms),
                     _cell(m.p99_ms), _cell(m.items_per_second), str(t.status), note[:120]))
    widths = [max(len(r[i]) for r in [_COLUMNS, *rows]) for i in range(len(_COLUMNS))]
    lines = ["   ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
             for row in [_COLUMNS, *rows]]
    gain = tuning.get("gainPercent")
    summary = f"objective {objective}"
    if tuning.get("p99BudgetMs") is not None:
        summary += f", p99 budget {tuning['p99BudgetMs']:g} ms"
    summary += f"; {len(trials)} trial(s)"
    if tuning.get("tuningSeconds") is not None:
        summary += f" in {tuning['tuningSeconds']:g} s"
    summary += "; gain over Intel's rule: " + ("unknown" if gain is None else f"{gain:+g}%")
    confirmed = []
    for d in tuning.get("confirmation") or []:
        t = _trial(d)
        m, c = t.measurement, t.candidate
        confirmed.append(f"measured once more: intra {c.intra_op} / inter {c.inter_op} / batching "
                         f"{'on' if c.batching else 'off'}: p50 {_cell(m.p50_ms)} ms, p99 {_cell(m.p99_ms)} ms, "
                         f"{_cell(m.items_per_second)} items/s ({t.status})")
    notes = [*confirmed, *(f"note: {n}" for n in tuning.get("notes") or [])]
    return "\n".join([summary, *lines, *notes]) + "\n"


def tunings(doc: Any) -> list[tuple[str | None, Mapping[str, Any]]]:
    """(name, tuning result) pairs found in a document; ValueError when there is none."""
    if isinstance(doc, Mapping) and isinstance(doc.get("items"), list):
        found = []
        for item in doc["items"]:  # a list shows the tuned ones and skips the others
            try:
                found += tunings(item)
            except ValueError:
                continue
        if not found:
            raise ValueError("no ModelServer in the list has status.tuning")
        return found
    if isinstance(doc, Mapping) and "trials" in doc:
        return [(None, doc)]
    if isinstance(doc, Mapping) and isinstance(doc.get("status"), Mapping):
        tuning = doc["status"].get("tuning")
        name = (doc.get("metadata") or {}).get("name")
        if isinstance(tuning, Mapping) and "trials" in tuning:
            return [(name, tuning)]
        raise ValueError(f"ModelServer {name or '?'} has no status.tuning (not tuned yet?)")
    raise ValueError("expected `pinserve tune` JSON, a ModelServer or a list of them")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="pinserve tune-report", description=__doc__.split("\n\n")[0])
    parser.add_argument("file", nargs="?", default="-", help="JSON file ('-' or absent: stdin)")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    try:
        if args.file == "-":
            text = sys.stdin.read()
        else:
            with open(args.file, encoding="utf-8") as f:
                text = f.read()
        found = tunings(json.loads(text))
    except (OSError, ValueError) as exc:  # JSONDecodeError is a ValueError
        print(f"pinserve tune-report: error: {exc}", file=sys.stderr)
        return 2
    out = []
    for name, tuning in found:
        out.append((f"== {name}\n" if name else "") + render_table(tuning))
    sys.stdout.write("\n".join(out))
    return 0
