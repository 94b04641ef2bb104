"""status.py: condition merging, the desired status, merge patches and the single writer."""

from __future__ import annotations

import copy
import re
from collections.abc import Mapping
from typing import Any

import pytest

from pinserve.status import (
    CONDITION_TYPES,
    Condition,
    desired_status,
    merge_conditions,
    now_rfc3339,
    status_patch,
    write_status,
)

pytestmark = pytest.mark.unit

T0, T1 = "2024-01-01T00:00:00Z", "2024-01-01T00:05:00Z"


def test_new_conditions_get_the_current_time() -> None:
    merged = merge_conditions([], [Condition("Ready", "False", "Deploying", "creating")], 3, T0)
    assert merged == [{"type": "Ready", "status": "False", "observedGeneration": 3, "lastTransitionTime": T0,
                       "reason": "Deploying", "message": "creating"}]


def test_same_status_keeps_transition_time_but_updates_reason_message_generation() -> None:
    first = merge_conditions([], [Condition("Ready", "False", "Deploying", "a")], 1, T0)
    second = merge_conditions(first, [Condition("Ready", "False", "PodsNotReady", "0/1 ready")], 2, T1)
    assert second[0]["lastTransitionTime"] == T0
    assert (second[0]["reason"], second[0]["message"], second[0]["observedGeneration"]) == (
        "PodsNotReady", "0/1 ready", 2)


@pytest.mark.parametrize(("before", "after"), [("False", "True"), ("True", "False"), ("Unknown", "True"),
                                               ("True", "Unknown")])
def test_status_change_moves_transition_time(before: str, after: str) -> None:
    first = merge_conditions([], [Condition("Ready", before, "A")], 1, T0)  # type: ignore[arg-type]
    second = merge_conditions(first, [Condition("Ready", after, "B")], 1, T1)  # type: ignore[arg-type]
    assert second[0]["lastTransitionTime"] == T1


def test_conditions_not_updated_are_kept_and_order_is_canonical() -> None:
    existing = [
        {"type": "Custom", "status": "True", "reason": "X", "lastTransitionTime": T0},
        {"type": "Benchmarked", "status": "True", "reason": "Measured", "lastTransitionTime": T0},
    ]
    merged = merge_conditions(existing, [Condition("Placed", "True", "Planned"), Condition("Ready", "True", "Ok")],
                              4, T1)
    assert [c["type"] for c in merged] == ["Ready", "Placed", "Benchmarked", "Custom"]
    assert merged[2] == existing[1]  # untouched, down to its old observedGeneration (none)
    assert set(CONDITION_TYPES) == {"Ready", "Placed", "Pinned", "Benchmarked", "Tuned"}


def test_existing_condition_without_time_gets_one() -> None:
    merged = merge_conditions([{"type": "Ready", "status": "True"}], [Condition("Ready", "True", "Ok")], 1, T1)
    assert merged[0]["lastTransitionTime"] == T1


def test_long_messages_are_cut() -> None:
    merged = merge_conditions([], [Condition("Ready", "False", "Bad", "x" * 5000)], 1, T0)
    assert len(merged[0]["message"]) == 1024


def test_merge_does_not_mutate_its_input() -> None:
    existing = [{"type": "Ready", "status": "False", "reason": "A", "lastTransitionTime": T0}]
    before = copy.deepcopy(existing)
    merge_conditions(existing, [Condition("Ready", "True", "B")], 1, T1)
    assert existing == before


def test_now_is_rfc3339_utc_seconds() -> None:
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", now_rfc3339())


# -- desired_status ---------------------------------------------------------------------------------------


def test_desired_status_replaces_removes_and_keeps_fields() -> None:
    current = {"observedGeneration": 1, "placement": {"cpuRequest": 8}, "benchmark": {"generation": 1},
               "endpoints": {"grpc": "x"}, "conditions": []}
    status = desired_status(current, generation=2, conditions=[Condition("Ready", "True", "Ok")],
                            fields={"placement": {"cpuRequest": 4}, "endpoints": None}, now=T1)
    assert status["observedGeneration"] == 2
    assert status["placement"] == {"cpuRequest": 4}
    assert "endpoints" not in status
    assert status["benchmark"] == {"generation": 1}
    assert status["conditions"][0]["observedGeneration"] == 2
    assert current["placement"] == {"cpuRequest": 8}  # not mutated


def test_desired_status_from_nothing() -> None:
    status = desired_status(None, generation=1, conditions=[], fields={}, now=T0)
    assert status == {"observedGeneration": 1, "conditions": []}


def test_desired_status_copies_fields() -> None:
    pods = [{"name": "p"}]
    status = desired_status({}, generation=1, conditions=[], fields={"pods": pods}, now=T0)
    pods.append({"name": "q"})
    assert status["pods"] == [{"name": "p"}]


# -- status_patch -----------------------------------------------------------------------------------------

PATCHES = [
    ("equal", {"a": 1, "b": {"c": [1, 2]}}, {"a": 1, "b": {"c": [1, 2]}}, None),
    ("both empty", {}, {}, None),
    ("from None", None, {"a": 1}, {"a": 1}),
    ("changed scalar", {"a": 1, "b": 2}, {"a": 1, "b": 3}, {"b": 3}),
    ("added key", {"a": 1}, {"a": 1, "b": 2}, {"b": 2}),
    ("removed top key", {"a": 1, "b": 2}, {"a": 1}, {"b": None}),
    ("removed nested key", {"p": {"x": 1, "y": 2}}, {"p": {"x": 1}}, {"p": {"y": None}}),
    ("deep nested", {"p": {"q": {"x": 1, "y": 2}}}, {"p": {"q": {"x": 1}}}, {"p": {"q": {"y": None}}}),
    ("list replaced whole", {"l": [1, 2, 3]}, {"l": [1, 3]}, {"l": [1, 3]}),
    ("mapping to scalar", {"a": {"x": 1}}, {"a": 5}, {"a": 5}),
    ("scalar to mapping", {"a": 5}, {"a": {"x": 1}}, {"a": {"x": 1}}),
]


@pytest.mark.parametrize(("current", "desired", "patch"), [p[1:] for p in PATCHES], ids=[p[0] for p in PATCHES])
def test_status_patch(current: Any, desired: Any, patch: Any) -> None:
    assert status_patch(current, desired) == patch


def apply_merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386, written out here so that the patches are checked against the RFC, not against status.py."""
    if not isinstance(patch, Mapping):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, Mapping) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = apply_merge_patch(result.get(key), value)
    return result


@pytest.mark.parametrize(("current", "desired"), [p[1:3] for p in PATCHES], ids=[p[0] for p in PATCHES])
def test_patch_turns_current_into_desired(current: Any, desired: Any) -> None:
    patch = status_patch(current, desired)
    assert apply_merge_patch(current or {}, patch or {}) == desired


# -- write_status -----------------------------------------------------------------------------------------


class FakeApi:
    """Records patch_status calls and applies them the way the API server would."""

    def __init__(self, status: dict[str, Any] | None = None) -> None:
        self.status = status
        self.calls: list[tuple[str, str, Mapping[str, Any]]] = []

    async def patch_status(self, namespace: str, name: str, patch: Mapping[str, Any],
                           resource_version: str | None = None) -> dict[str, Any]:
        self.calls.append((namespace, name, copy.deepcopy(dict(patch))))
        self.status = apply_merge_patch(self.status or {}, patch["status"])
        return {"metadata": {"resourceVersion": str(len(self.calls) + 100)}, "status": self.status}


async def test_write_status_writes_once_then_not_again() -> None:
    api = FakeApi()
    desired = desired_status(None, generation=1, conditions=[Condition("Ready", "False", "Deploying")],
                             fields={"placement": {"cpuRequest": 8}}, now=T0)
    answer = await write_status(api, "ml", "rfcn", None, desired)
    assert answer is not None and answer["metadata"]["resourceVersion"] == "101"  # the object it made
    assert len(api.calls) == 1
    namespace, name, patch = api.calls[0]
    assert (namespace, name) == ("ml", "rfcn") and patch["status"]["placement"] == {"cpuRequest": 8}
    assert api.status == desired
    # A resync computing the same status (later clock) writes nothing.
    again = desired_status(api.status, generation=1, conditions=[Condition("Ready", "False", "Deploying")],
                           fields={"placement": {"cpuRequest": 8}}, now=T1)
    assert again == desired
    assert await write_status(api, "ml", "rfcn", api.status, again) is None
    assert len(api.calls) == 1


async def test_write_status_sends_only_the_difference() -> None:
    current = {"observedGeneration": 1, "placement": {"cpuRequest": 8, "nodes": ["a"]}, "readyReplicas": 0}
    api = FakeApi(copy.deepcopy(current))
    desired = {"observedGeneration": 1, "placement": {"cpuRequest": 8}, "readyReplicas": 1}
    assert await write_status(api, "ml", "rfcn", current, desired) is not None
    assert api.calls[0][2] == {"status": {"placement": {"nodes": None}, "readyReplicas": 1}}
    assert api.status == desired
