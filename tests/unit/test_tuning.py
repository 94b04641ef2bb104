"""The tuning search's pure core: candidates, early stopping, judging, the winner and its gain."""

from __future__ import annotations

from typing import Any

import pytest

from pinserve.tuning import (
    Candidate,
    Cores,
    Measurement,
    Objective,
    SearchSpace,
    Trial,
    TrialStatus,
    baseline,
    best_trial,
    candidates,
    early_stop,
    gain_percent,
    judge,
    measurement_from_report,
    needs_confirmation,
    ranked,
    result,
)

pytestmark = pytest.mark.unit

L, T = Objective.LATENCY, Objective.THROUGHPUT


def c(intra: int, inter: int, batching: bool = False) -> Candidate:
    return Candidate(intra, inter, batching)


@pytest.mark.parametrize(
    ("cores", "expected"),
    [
        (Cores(4), c(4, 2)),
        (Cores(1), c(1, 1)),  # one CPU: inter-op capped as the start script caps it
        (Cores(1, 2), c(1, 2)),
        (Cores(8, 2), c(8, 2)),
    ],
)
def test_baseline_is_intels_rule(cores: Cores, expected: Candidate) -> None:
    assert baseline(cores) == expected


@pytest.mark.parametrize(
    ("cores", "objective", "space", "max_trials", "expected"),
    [
        # auto, 4 cores, no SMT: intra {2,3,4} x inter {1,2,4}; one-dimension changes first, nearest first
        (Cores(4), L, SearchSpace(), 100,
         [c(4, 2), c(3, 2), c(2, 2), c(4, 1), c(4, 4), c(3, 1), c(3, 4), c(2, 1), c(2, 4)]),
        (Cores(4), L, SearchSpace(), 3, [c(4, 2), c(3, 2), c(2, 2)]),
        (Cores(4), L, SearchSpace(), 1, [c(4, 2)]),
        # SMT: the hyper-threads are a candidate too
        (Cores(2, 2), L, SearchSpace(), 4, [c(2, 2), c(1, 2), c(4, 2), c(2, 1)]),
        # one core: nothing but inter-op 1 (the baseline) is possible
        (Cores(1), L, SearchSpace(), 10, [c(1, 1)]),
        (Cores(1), T, SearchSpace(), 10, [c(1, 1), c(1, 1, True)]),
        # throughput: batching on is a neighbour
        (Cores(2), T, SearchSpace(), 3, [c(2, 2), c(2, 2, True), c(1, 2)]),
        # an explicit space; the baseline comes first even when the space leaves it out
        (Cores(4), L, SearchSpace(intra_op=(1, 4), inter_op=(1,)), 10, [c(4, 2), c(4, 1), c(1, 1)]),
        (Cores(4), T, SearchSpace(intra_op=(4,), inter_op=(2,), batching=(True,)), 10, [c(4, 2), c(4, 2, True)]),
    ],
)
def test_candidates(cores: Cores, objective: Objective, space: SearchSpace, max_trials: int,
                    expected: list[Candidate]) -> None:
    assert candidates(cores, objective, space, max_trials) == expected


@pytest.mark.parametrize(
    ("space", "max_trials", "message"),
    [
        (SearchSpace(), 0, "maxTrials must be >= 1"),
        (SearchSpace(intra_op=()), 5, "search.intraOp"),
        (SearchSpace(inter_op=(0, 2)), 5, "search.interOp"),
        (SearchSpace(batching=()), 5, "search.batching"),
    ],
)
def test_candidates_rejects(space: SearchSpace, max_trials: int, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        candidates(Cores(2), L, space, max_trials)


def ok(cand: Candidate, p50: float | None = None, p99: float | None = None, ips: float | None = None,
       tp99: float | None = None) -> Trial:
    return Trial(cand, TrialStatus.OK, Measurement(p50, p99, ips, tp99))


@pytest.mark.parametrize(
    ("objective", "probe", "best", "stops"),
    [
        (L, Measurement(p50_ms=31.0), None, False),  # nothing to compare with
        (L, Measurement(p50_ms=31.0), ok(c(2, 2), 5, 6), True),  # 31 > 1.5 x 6
        (L, Measurement(p50_ms=8.9), ok(c(2, 2), 5, 6), False),  # 8.9 <= 9
        (L, Measurement(p50_ms=9.1), ok(c(2, 2), 5, 6), True),
        (L, Measurement(), ok(c(2, 2), 5, 6), False),  # no figure: measure in full
        (L, Measurement(p50_ms=50), Trial(c(2, 2), TrialStatus.FAILED), False),
        (T, Measurement(items_per_second=70), ok(c(2, 2), ips=100), False),  # 70 >= 100 / 1.5
        (T, Measurement(items_per_second=66), ok(c(2, 2), ips=100), True),
        (T, Measurement(p50_ms=500), ok(c(2, 2), ips=100), False),  # latency does not stop a throughput trial
    ],
)
def test_early_stop(objective: Objective, probe: Measurement, best: Trial | None, stops: bool) -> None:
    reason = early_stop(objective, probe, best)
    assert (reason is not None) is stops, reason


@pytest.mark.parametrize(
    ("objective", "m", "budget", "status"),
    [
        (L, Measurement(1, 2, 100), None, TrialStatus.OK),
        (L, Measurement(1, None, 100), None, TrialStatus.FAILED),  # too few requests for a p99
        (T, Measurement(1, 2, 100, 50), None, TrialStatus.OK),
        (T, Measurement(1, 2, 100, 50), 60.0, TrialStatus.OK),
        (T, Measurement(1, 2, 100, 50), 40.0, TrialStatus.OVER_BUDGET),
        (T, Measurement(1, 2, 100, None), 40.0, TrialStatus.OVER_BUDGET),
        (T, Measurement(1, 2, None, 5), None, TrialStatus.FAILED),
    ],
)
def test_judge(objective: Objective, m: Measurement, budget: float | None, status: TrialStatus) -> None:
    assert judge(objective, c(2, 2), m, budget).status is status


LAT_TRIALS = [
    ok(c(4, 2), 10, 20, 90),
    ok(c(3, 2), 8, 15, 100),
    Trial(c(2, 2), TrialStatus.STOPPED_EARLY, Measurement(p50_ms=40), "probe"),
    Trial(c(4, 1), TrialStatus.FAILED, reason="crashed"),
    ok(c(4, 4), 9, 16, 95),
]
THR_TRIALS = [
    ok(c(2, 2), 5, 6, 100, 30),
    Trial(c(2, 2, True), TrialStatus.OVER_BUDGET, Measurement(5, 6, 300, 80), "over"),
    ok(c(1, 2), 5, 6, 150, 35),
]


@pytest.mark.parametrize(
    ("objective", "trials", "best", "gain", "order"),
    [
        (L, LAT_TRIALS, c(3, 2), 25.0, [c(3, 2), c(4, 4), c(4, 2), c(2, 2), c(4, 1)]),
        (T, THR_TRIALS, c(1, 2), 50.0, [c(1, 2), c(2, 2), c(2, 2, True)]),
        (L, [ok(c(2, 2), 1, 4)], c(2, 2), 0.0, [c(2, 2)]),
        # a failed baseline: a winner but no gain
        (L, [Trial(c(2, 2), TrialStatus.FAILED), ok(c(1, 2), 1, 4)], c(1, 2), None, [c(1, 2), c(2, 2)]),
        (L, [Trial(c(2, 2), TrialStatus.FAILED)], None, None, [c(2, 2)]),
    ],
)
def test_winner_gain_and_ranking(objective: Objective, trials: list[Trial], best: Candidate | None,
                                 gain: float | None, order: list[Candidate]) -> None:
    winner = best_trial(objective, trials)
    assert (winner.candidate if winner else None) == best
    assert gain_percent(objective, winner, trials[0]) == gain
    assert [t.candidate for t in ranked(objective, trials)] == order


def test_result_json() -> None:
    out = result(L, LAT_TRIALS)
    assert out["objective"] == "latency"
    assert out["baseline"]["intraOp"] == 4 and out["best"] == LAT_TRIALS[1].as_dict()
    assert out["gainPercent"] == 25.0
    assert out["trials"][2] == {"intraOp": 2, "interOp": 2, "batching": False, "status": "stoppedEarly",
                                "p50Ms": 40, "p99Ms": None, "itemsPerSecond": None, "throughputP99Ms": None,
                                "reason": "probe"}
    assert result(L, [Trial(c(1, 1), TrialStatus.FAILED)])["notes"]


@pytest.mark.parametrize(
    ("report", "expected"),
    [
        ({"latencyMs": {"p50": 1.0, "p99": 2.0}, "throughput": {"itemsPerSecond": 10.0, "latencyMs": {"p99": 3.0}}},
         Measurement(1.0, 2.0, 10.0, 3.0)),
        ({"throughput": {"itemsPerSecond": 10.0, "latencyMs": {"p99": None, "max": 7.0}}},
         Measurement(None, None, 10.0, 7.0)),
        ({}, Measurement()),
    ],
)
def test_measurement_from_report(report: dict[str, Any], expected: Measurement) -> None:
    assert measurement_from_report(report) == expected


@pytest.mark.parametrize(
    ("trials", "expected"),
    [
        (LAT_TRIALS, True),
        ([ok(c(2, 2), 1, 4), ok(c(1, 2), 1, 6)], False),  # the baseline won: nothing to confirm
        ([Trial(c(2, 2), TrialStatus.FAILED), ok(c(1, 2), 1, 4)], False),
        ([], False),
    ],
)
def test_needs_confirmation(trials: list[Trial], expected: bool) -> None:
    assert needs_confirmation(L, trials) is expected


@pytest.mark.parametrize(
    ("again", "best", "baseline_p99", "gain", "note"),
    [
        # confirmed: the second figures stand
        ([ok(c(4, 2), 10, 18), ok(c(3, 2), 8, 12)], c(3, 2), 18, 33.3, "beat the baseline again"),
        # not confirmed: the baseline wins, no gain
        ([ok(c(4, 2), 10, 12), ok(c(3, 2), 8, 13)], c(4, 2), 12, 0.0, "not confirmed"),
        # incomplete: the first round's winner stays, no gain is claimed
        ([Trial(c(4, 2), TrialStatus.FAILED), ok(c(3, 2), 8, 13)], c(3, 2), 20, None, "incomplete"),
    ],
)
def test_confirmation(again: list[Trial], best: Candidate, baseline_p99: float, gain: float | None,
                      note: str) -> None:
    out = result(L, LAT_TRIALS, confirmation=again)
    assert (out["best"]["intraOp"], out["best"]["interOp"]) == (best.intra_op, best.inter_op)
    assert out["baseline"]["p99Ms"] == baseline_p99
    assert out["gainPercent"] == gain
    assert any(note in n for n in out["notes"])
    assert len(out["confirmation"]) == 2
