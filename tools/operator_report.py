"""The operator benchmark's figures of one column (``Result``) and the side-by-side table that prints them."""

from __future__ import annotations

import argparse
from collections import Counter
from dataclasses import dataclass, field


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


@dataclass
class Result:
    label: str
    scope: str
    latencies: list[float] = field(default_factory=list)
    missing: int = 0
    per_create: Counter[str] = field(default_factory=Counter)
    per_create_own: Counter[str] | None = None
    idle: Counter[str] = field(default_factory=Counter)
    converged_s: float = float("nan")
    rss_start: float = float("nan")
    rss_end: float = float("nan")
    rss_idle: float = float("nan")
    cached: dict[str, int] = field(default_factory=dict)
    cpu_s: float = float("nan")  # the operator's CPU from the first create until converged
    reconciles: int = 0
    triggers: Counter[str] = field(default_factory=Counter)  # what set reconciles off, by source
    cluster_cores: float = float("nan")  # the control plane's CPU use when the column started
    loop: dict[str, float] = field(default_factory=dict)  # event-loop lag and GC from the first create on
    timings: dict[str, dict[str, float]] = field(default_factory=dict)  # queue waits and reconcile times


def quantiles(t: dict[str, float] | None) -> str:
    return f"{t['p50'] * 1000:.0f} / {t['p99'] * 1000:.0f}" if t and t.get("count") else "-"


def verbs(counts: Counter[str] | None, per: int) -> str:
    if counts is None:
        return "-"
    total = sum(counts.values()) / per
    return f"{total:.1f}: " + " ".join(f"{verb} {count / per:.2f}" for verb, count in sorted(counts.items()))


def report(results: list[Result], args: argparse.Namespace) -> str:
    per = max(args.modelservers, 1)
    rows: list[tuple[str, list[str]]] = [
        ("scope", [r.scope for r in results]),
        ("control plane CPU at the start (cores)", [f"{r.cluster_cores:.2f}" for r in results]),
        ("create->Deployment p50 (ms)", [f"{percentile(r.latencies, 0.5):.0f}" for r in results]),
        ("create->Deployment p99 (ms)", [f"{percentile(r.latencies, 0.99):.0f}" for r in results]),
        ("create->Deployment max (ms)", [f"{max(r.latencies, default=float('nan')):.0f}" for r in results]),
        ("Deployments missing after 300 s", [str(r.missing) for r in results]),
        ("converged: last write after last create (s)", [f"{r.converged_s:.0f}" for r in results]),
        ("requests per create (operator's own client)",
         [verbs(r.per_create if r.per_create_own is None else r.per_create_own, per) for r in results]),
        ("requests per create (all, kopf's included)",
         [verbs(r.per_create, per) if r.per_create_own is not None else "-" for r in results]),
        ("operator CPU per create (ms, until converged)", [f"{r.cpu_s * 1000 / per:.1f}" for r in results]),
        ("reconciles per create", [f"{r.reconciles / per:.1f}" if r.reconciles else "-" for r in results]),
        ("reconcile triggers per create, by source",
         [verbs(r.triggers, per) if r.triggers else "-" for r in results]),
        ("requests per idle minute", [verbs(r.idle, 1) if args.idle else "-" for r in results]),
        ("RSS before creates (MB)", [f"{r.rss_start:.0f}" for r in results]),
        ("RSS converged (MB)", [f"{r.rss_end:.0f}" for r in results]),
        ("RSS after idling (MB)", [f"{r.rss_idle:.0f}" for r in results]),
        *[(f"{name} p50 / p99 (ms; from histogram buckets)", [quantiles(r.timings.get(name)) for r in results])
          for name in ("wait first", "wait again", "reconcile")],
        ("event-loop lag: seconds late in total",
         [f"{r.loop['lag_seconds']:.1f}" if r.loop else "-" for r in results]),
        ("probe wake-ups late > 50 ms / > 250 ms / > 1 s",
         [f"{r.loop['over 0.05']:.0f} / {r.loop['over 0.25']:.0f} / {r.loop['over 1']:.0f}" if r.loop else "-"
          for r in results]),
        ("GC gen 2: collections, seconds (gen 0+1 seconds)",
         [f"{r.loop['gc2']:.0f}, {r.loop['gc2 s']:.2f} ({r.loop['gc01 s']:.2f})" if r.loop else "-"
          for r in results]),
        ("objects cached (pinserve's informer)",
         [" ".join(f"{k} {v}" for k, v in r.cached.items()) or "-" for r in results]),
    ]
    base = next((r for r in results if r.label == "pinserve"), None)
    noisy = next((r for r in results if r.label.startswith("+")), None)
    old = next((r for r in results if r.label == "baseline"), None)
    old_noisy = next((r for r in results if r.label.startswith("baseline +")), None)
    added = {}
    for clean, dirty in ((base, noisy), (old, old_noisy)):
        if clean is not None and dirty is not None:
            added[dirty.label] = (f"{dirty.rss_start - clean.rss_start:+.0f} before creates, "
                                  f"{dirty.rss_end - clean.rss_end:+.0f} converged")
    if added:
        rows.append(("RSS added by unrelated pods (MB)", [added.get(r.label, "") for r in results]))
    floor = next((r for r in results if r.label == "kopf floor"), None)
    if floor is not None and floor.latencies:
        for q in (0.5, 0.99):
            rows.append((f"p{q * 100:g} / floor p{q * 100:g}",
                         [f"{percentile(r.latencies, q) / percentile(floor.latencies, q):.2f}x" for r in results]))
    header = ("", [r.label for r in results])
    width = max(len(name) for name, _ in [header, *rows])
    cols = [max(len(row[1][i]) if i < len(row[1]) else 0 for row in [header, *rows]) for i in range(len(results))]
    lines = []
    for name, values in [header, *rows]:
        cells = "  ".join(v.ljust(cols[i]) for i, v in enumerate(values))
        lines.append(f"  {name.ljust(width)}  {cells}".rstrip())
    return "\n".join(lines)
