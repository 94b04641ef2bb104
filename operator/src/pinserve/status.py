"""The single writer of ModelServer status and its metav1-style conditions.

Everything else computes; only ``write_status`` sends status to the API server, and only
when something changed, so a no-op resync costs no write.
"""

from __future__ import annotations

import copy
import datetime as dt
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from pinserve.redact import redact_text

CONDITION_TYPES = ("Ready", "Placed", "Pinned", "Benchmarked", "Tuned")
ConditionStatus = Literal["True", "False", "Unknown"]


@dataclass(frozen=True)
class Condition:
    type: str
    status: ConditionStatus
    reason: str  # one CamelCase word
    message: str = ""

    def __post_init__(self) -> None:
        # Status is readable by whoever reads the ModelServer: no presigned query string or URI password in it
        # (a fetch failure, a pod's termination message, an admission message may quote the model URI).
        object.__setattr__(self, "message", redact_text(self.message))


def now_rfc3339() -> str:
    return dt.datetime.now(dt.UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def merge_conditions(
    existing: Iterable[Mapping[str, Any]],
    updates: Iterable[Condition],
    generation: int,
    now: str,
) -> list[dict[str, Any]]:
    """New condition list; lastTransitionTime moves only when a condition's status changes."""
    by_type = {c.get("type"): dict(c) for c in existing if c.get("type")}
    for cond in updates:
        old = by_type.get(cond.type)
        changed = old is None or old.get("status") != cond.status
        by_type[cond.type] = {
            "type": cond.type,
            "status": cond.status,
            "observedGeneration": generation,
            "lastTransitionTime": now if changed or not old else old.get("lastTransitionTime", now),
            "reason": cond.reason,
            "message": cond.message[:1024],
        }
    known = [by_type[t] for t in CONDITION_TYPES if t in by_type]
    extra = [c for t, c in sorted(by_type.items(), key=lambda kv: str(kv[0])) if t not in CONDITION_TYPES]
    return known + extra


def desired_status(
    current: Mapping[str, Any] | None,
    *,
    generation: int,
    conditions: Iterable[Condition],
    fields: Mapping[str, Any],
    now: str,
) -> dict[str, Any]:
    """The status to hold: the current one with ``fields`` replaced and conditions merged.

    A field set to None is removed; fields not mentioned (e.g. benchmark) are kept.
    """
    status = copy.deepcopy(dict(current or {}))
    for key, value in fields.items():
        if value is None:
            status.pop(key, None)
        else:
            status[key] = copy.deepcopy(value)
    status["observedGeneration"] = generation
    status["conditions"] = merge_conditions(status.get("conditions") or [], conditions, generation, now)
    return status


def _merge_diff(current: Mapping[str, Any], desired: Mapping[str, Any]) -> dict[str, Any]:
    # JSON merge patch (RFC 7386) merges objects recursively, so removed nested keys need nulls.
    patch: dict[str, Any] = {}
    for key in current.keys() | desired.keys():
        if key not in desired:
            patch[key] = None
            continue
        old, new = current.get(key), desired[key]
        if old == new:
            continue
        if isinstance(old, Mapping) and isinstance(new, Mapping):
            patch[key] = _merge_diff(old, new)
        else:
            patch[key] = new
    return patch


def status_patch(current: Mapping[str, Any] | None, desired: Mapping[str, Any]) -> dict[str, Any] | None:
    """A JSON merge patch turning current into desired, or None when nothing differs."""
    return _merge_diff(current or {}, desired) or None


class StatusApi(Protocol):
    async def patch_status(
        self, namespace: str, name: str, patch: Mapping[str, Any], resource_version: str | None = None
    ) -> dict[str, Any]: ...


async def write_status(
    api: StatusApi,
    namespace: str,
    name: str,
    current: Mapping[str, Any] | None,
    desired: Mapping[str, Any],
) -> dict[str, Any] | None:
    """Write ``desired`` over ``current`` if they differ; returns the API's answer, None when nothing was written."""
    patch = status_patch(current, desired)
    if patch is None:
        return None
    return await api.patch_status(namespace, name, {"status": patch})
