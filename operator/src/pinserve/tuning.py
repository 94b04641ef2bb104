"""The tuning search, pure: candidates from a search space, early stopping, the winner and its gain.

Intel's rule (intra-op = physical cores, inter-op = 2, no batching) is the **baseline** and always the first
trial; the other candidates are its neighbours, nearest first, bounded by ``maxTrials``:

- intra-op: the physical cores, one fewer, half of them, and every CPU (the hyper-threads) on SMT;
- inter-op: 1, 2 and 4, never more than the CPUs;
- batching: off for the ``latency`` objective, off and on for ``throughput``.

Objectives: ``latency`` picks the lowest batch-1 p99; ``throughput`` the most items/s at the benchmark's batch
size among trials whose throughput-run p99 (its maximum when too few requests back a p99) is within
``p99BudgetMs`` when one is given. A trial whose short probe is clearly worse than the best so far is stopped
early (:func:`early_stop`). Nothing here runs a server or a benchmark: the callers (``pinserve tune``, the
operator) do, and hand the figures back as :class:`Measurement`.
"""

from __future__ import annotations

import enum
import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

#: Intel's inter-op default.
INTEL_INTER_OP = 2
AUTO_INTER_OP = (1, 2, 4)
#: A probe slower than this many times the best so far stops the trial.
EARLY_STOP_FACTOR = 1.5


class Objective(enum.StrEnum):
    LATENCY = "latency"
    THROUGHPUT = "throughput"


class TrialStatus(enum.StrEnum):
    OK = "ok"  # measured in full
    STOPPED_EARLY = "stoppedEarly"  # the probe was clearly worse than the best so far
    OVER_BUDGET = "overBudget"  # measured, but its p99 is over p99BudgetMs (throughput objective)
    FAILED = "failed"  # the server or the benchmark failed; `reason` says why


@dataclass(frozen=True, order=True)
class Candidate:
    intra_op: int
    inter_op: int
    batching: bool = False

    def as_dict(self) -> dict[str, Any]:
        return {"intraOp": self.intra_op, "interOp": self.inter_op, "batching": self.batching}


@dataclass(frozen=True)
class Cores:
    """The CPUs a trial runs on: whole physical cores and their hardware threads."""

    physical_cores: int
    threads_per_core: int = 1

    @property
    def cpus(self) -> int:
        return self.physical_cores * self.threads_per_core


@dataclass(frozen=True)
class SearchSpace:
    """Each dimension's candidates; ``None`` is ``auto`` for that dimension."""

    intra_op: tuple[int, ...] | None = None
    inter_op: tuple[int, ...] | None = None
    batching: tuple[bool, ...] | None = None


def baseline(cores: Cores) -> Candidate:
    """Intel's rule, with inter-op capped at the CPUs as the start script caps it."""
    return Candidate(cores.physical_cores, min(INTEL_INTER_OP, cores.cpus), False)


def auto_intra_op(cores: Cores) -> tuple[int, ...]:
    n = cores.physical_cores
    values = {n, n - 1, n // 2}
    if cores.threads_per_core > 1:
        values.add(cores.cpus)
    return tuple(sorted(v for v in values if v >= 1))


def auto_inter_op(cores: Cores) -> tuple[int, ...]:
    return tuple(v for v in AUTO_INTER_OP if v <= cores.cpus)


def auto_batching(objective: Objective) -> tuple[bool, ...]:
    return (False, True) if objective is Objective.THROUGHPUT else (False,)


def _distance(c: Candidate, base: Candidate) -> tuple[int, float, float, bool, int, int]:
    """Nearest first: fewest changed dimensions, then the smallest change in threads (factors of two, summed);
    among equals intra-op changes first (the knob that matters most), then by value."""
    changed = (c.intra_op != base.intra_op) + (c.inter_op != base.inter_op) + (c.batching != base.batching)
    intra = abs(math.log2(c.intra_op / base.intra_op))
    inter = abs(math.log2(c.inter_op / base.inter_op))
    return changed, intra + inter, inter, c.batching, c.intra_op, c.inter_op


def candidates(cores: Cores, objective: Objective, space: SearchSpace, max_trials: int) -> list[Candidate]:
    """The baseline, then the space's other points nearest first; at most ``max_trials`` (>= 1) in all."""
    if max_trials < 1:
        raise ValueError(f"maxTrials must be >= 1, got {max_trials}")
    for name, values in (("intraOp", space.intra_op), ("interOp", space.inter_op)):
        if values is not None and (not values or min(values) < 1):
            raise ValueError(f"search.{name} must list whole numbers >= 1, got {list(values)}")
    if space.batching is not None and not space.batching:
        raise ValueError("search.batching must list true and/or false")
    base = baseline(cores)
    grid = itertools.product(
        space.intra_op or auto_intra_op(cores),
        space.inter_op or auto_inter_op(cores),
        space.batching or auto_batching(objective),
    )
    others = sorted({Candidate(*point) for point in grid} - {base}, key=lambda c: _distance(c, base))
    return [base, *others][:max_trials]


@dataclass(frozen=True)
class Measurement:
    """What one benchmark run (or probe) gave; ``None`` where the run could not support a figure."""

    p50_ms: float | None = None
    p99_ms: float | None = None
    items_per_second: float | None = None
    throughput_p99_ms: float | None = None


@dataclass(frozen=True)
class Trial:
    candidate: Candidate
    status: TrialStatus
    measurement: Measurement = field(default_factory=Measurement)
    reason: str | None = None
    seconds: float | None = None

    def as_dict(self) -> dict[str, Any]:
        m = self.measurement
        out = self.candidate.as_dict() | {
            "status": str(self.status),
            "p50Ms": m.p50_ms,
            "p99Ms": m.p99_ms,
            "itemsPerSecond": m.items_per_second,
            "throughputP99Ms": m.throughput_p99_ms,
        }
        if self.reason:
            out["reason"] = self.reason
        if self.seconds is not None:
            out["seconds"] = round(self.seconds, 2)
        return out


def trial_from_dict(d: Mapping[str, Any]) -> Trial:
    """A trial as :meth:`Trial.as_dict` wrote it (``pinserve tune`` JSON, status.tuning); KeyError/ValueError if
    it is not one."""
    m = Measurement(d.get("p50Ms"), d.get("p99Ms"), d.get("itemsPerSecond"), d.get("throughputP99Ms"))
    cand = Candidate(int(d["intraOp"]), int(d["interOp"]), bool(d.get("batching", False)))
    return Trial(cand, TrialStatus(d.get("status", "ok")), m, d.get("reason"), d.get("seconds"))


def score(objective: Objective, m: Measurement) -> float | None:
    """Higher is better; ``None`` when the measurement lacks the objective's figure."""
    if objective is Objective.LATENCY:
        return None if m.p99_ms is None else -m.p99_ms
    return m.items_per_second


def _probe_score(objective: Objective, probe: Measurement) -> float | None:
    # A probe is short: p50 (latency) or items/s over a second or two (throughput) are what it supports.
    if objective is Objective.LATENCY:
        return None if probe.p50_ms is None else -probe.p50_ms
    return probe.items_per_second


def early_stop(objective: Objective, probe: Measurement, best: Trial | None,
               factor: float = EARLY_STOP_FACTOR) -> str | None:
    """Why the trial should stop after its probe, or ``None`` to measure it in full.

    latency: the probe's p50 is over ``factor`` x the best p99 so far; throughput: its items/s are under the
    best items/s so far / ``factor``.
    """
    if best is None or best.status is not TrialStatus.OK:
        return None
    b = best.measurement
    if objective is Objective.LATENCY:
        if probe.p50_ms is not None and b.p99_ms is not None and probe.p50_ms > factor * b.p99_ms:
            return f"probe p50 {probe.p50_ms:g} ms > {factor:g} x best p99 {b.p99_ms:g} ms"
        return None
    if probe.items_per_second is not None and b.items_per_second and \
            probe.items_per_second < b.items_per_second / factor:
        return f"probe {probe.items_per_second:g} items/s < best {b.items_per_second:g} items/s / {factor:g}"
    return None


def judge(objective: Objective, candidate: Candidate, m: Measurement, p99_budget_ms: float | None,
          seconds: float | None = None) -> Trial:
    """A fully measured trial: ok, over budget, or failed for lack of the objective's figure."""
    if score(objective, m) is None:
        need = "p99 (too few latency requests?)" if objective is Objective.LATENCY else "items/s"
        return Trial(candidate, TrialStatus.FAILED, m, f"no {need} in the benchmark report", seconds)
    if objective is Objective.THROUGHPUT and p99_budget_ms is not None:
        p99 = m.throughput_p99_ms
        if p99 is None or p99 > p99_budget_ms:
            shown = "unknown" if p99 is None else f"{p99:g} ms"
            return Trial(candidate, TrialStatus.OVER_BUDGET, m, f"p99 {shown} over the budget {p99_budget_ms:g} ms",
                         seconds)
    return Trial(candidate, TrialStatus.OK, m, None, seconds)


def best_trial(objective: Objective, trials: Sequence[Trial]) -> Trial | None:
    """The winner among the OK trials; ties go to the earlier trial (the baseline first)."""
    ok = [t for t in trials if t.status is TrialStatus.OK]
    return max(ok, key=lambda t: score(objective, t.measurement) or 0.0, default=None)


def ranked(objective: Objective, trials: Sequence[Trial]) -> list[Trial]:
    """Best first: OK trials by score, then over-budget, stopped-early and failed ones in trial order."""
    order = [TrialStatus.OK, TrialStatus.OVER_BUDGET, TrialStatus.STOPPED_EARLY, TrialStatus.FAILED]

    def key(item: tuple[int, Trial]) -> tuple[int, float, int]:
        index, t = item
        s = score(objective, t.measurement) if t.status is TrialStatus.OK else None
        return order.index(t.status), -(s or 0.0), index

    return [t for _, t in sorted(enumerate(trials), key=key)]


def gain_percent(objective: Objective, best: Trial | None, base: Trial | None) -> float | None:
    """How much better the winner is than the baseline, in percent (p99 lower, or items/s higher)."""
    if best is None or base is None or base.status is not TrialStatus.OK:
        return None
    b, w = base.measurement, best.measurement
    if objective is Objective.LATENCY:
        if not b.p99_ms or w.p99_ms is None:
            return None
        return round((b.p99_ms - w.p99_ms) / b.p99_ms * 100.0, 1)
    if not b.items_per_second or w.items_per_second is None:
        return None
    return round((w.items_per_second - b.items_per_second) / b.items_per_second * 100.0, 1)


def needs_confirmation(objective: Objective, trials: Sequence[Trial]) -> bool:
    """Whether a winner other than the baseline was found, so both should be measured once more."""
    best = best_trial(objective, trials)
    return bool(trials) and best is not None and best is not trials[0] and trials[0].status is TrialStatus.OK


def confirm(objective: Objective, best: Trial, base_again: Trial, best_again: Trial) -> tuple[Trial, Trial, str]:
    """The winner and the baseline after a second measurement of both (one trial's p99 is noisy): the second
    figures stand; when the winner no longer beats the baseline, the baseline wins. Returns (winner, baseline,
    note)."""
    if base_again.status is not TrialStatus.OK or best_again.status is not TrialStatus.OK:
        return best_again, base_again, "confirmation incomplete: see confirmation[].status"
    if (score(objective, best_again.measurement) or 0.0) > (score(objective, base_again.measurement) or 0.0):
        return best_again, base_again, "the winner beat the baseline again when both were measured once more"
    c = best.candidate
    return base_again, base_again, (f"not confirmed: measured once more, intra {c.intra_op} / inter {c.inter_op} / "
                                    f"batching {'on' if c.batching else 'off'} did not beat Intel's rule, which stands")


def result(objective: Objective, trials: Sequence[Trial], p99_budget_ms: float | None = None,
           confirmation: Sequence[Trial] = ()) -> dict[str, Any]:
    """The JSON of a search: every trial in run order, the winner, the baseline (the first trial), the gain.

    ``confirmation`` is the baseline and the winner measured once more (see :func:`confirm`); when both
    complete, their figures are the ``best`` and ``baseline`` shown and give the gain.
    """
    base = trials[0] if trials else None
    best = best_trial(objective, trials)
    notes: list[str] = []
    if best is None:
        notes.append("no trial qualified: see each trial's status and reason")
    if base is not None and base.status is not TrialStatus.OK:
        notes.append(f"the baseline (Intel's rule) is {base.status}: no gain can be stated")
    gain = gain_percent(objective, best, base)
    if best is not None and len(confirmation) == 2:
        winner, base_again, note = confirm(objective, best, confirmation[0], confirmation[1])
        notes.append(note)
        if all(t.status is TrialStatus.OK for t in confirmation):
            best, base = winner, base_again
            gain = gain_percent(objective, winner, base_again)
        else:
            gain = None
    out = {
        "objective": str(objective),
        "p99BudgetMs": p99_budget_ms,
        "trials": [t.as_dict() for t in trials],
        "best": None if best is None else best.as_dict(),
        "baseline": None if base is None else base.as_dict(),
        "gainPercent": gain,
        "notes": notes,
    }
    if confirmation:
        out["confirmation"] = [t.as_dict() for t in confirmation]
    return out


def measurement_from_report(report: Mapping[str, Any]) -> Measurement:
    """The figures of a ``pinserve bench`` JSON report (either section may be missing)."""
    latency = report.get("latencyMs") or {}
    thr = report.get("throughput") or {}
    thr_latency = thr.get("latencyMs") or {}
    thr_p99 = thr_latency.get("p99")
    if thr_p99 is None and thr_latency.get("max") is not None:
        thr_p99 = thr_latency["max"]  # too few requests for a p99: the maximum bounds it from above
    return Measurement(latency.get("p50"), latency.get("p99"), thr.get("itemsPerSecond"), thr_p99)
