"""Is a live object still what we want?  Two pure checks, both needed.

1. The desired hash: every applied child carries ``pinserve.io/desired-hash``, the hash of the whole object
   we rendered.  When the rendering changes (a field added, changed *or removed*) the hash changes and the
   object is applied again; server-side apply under the same field manager then drops the fields we stopped
   sending.  A subset comparison alone never notices a removal.
2. A tolerant subset comparison against the live object, for edits made by hand.  The API server adds
   defaults and other controllers add fields, so "in sync" means every field we render is present in the
   live object with our value.  Lists of named items (containers, env, ports, volumes) are matched by
   name, other lists position by position.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from pinserve.quantity import parse_quantity
from pinserve.render.common import ANNOTATION_DESIRED_HASH, content_hash

# Values the API server normalises: compare them as the server writes them.
_SERVER_NORMALISED = {"defaultMode"}
# Maps of resource quantities, which the API server rewrites in canonical form ("1024Mi" -> "1Gi").
_QUANTITY_MAPS = {"requests", "limits"}


def _omitted(value: Any) -> bool:
    """Empty values that the API server drops on write (Go's omitempty): absent means equal."""
    return value in ("", [], {}) or value is False


def _same_quantity(live: Any, desired: Any) -> bool:
    try:
        return parse_quantity(live) == parse_quantity(desired)
    except (ValueError, TypeError):
        return contains(live, desired)


def _named(items: Sequence[Any]) -> bool:
    return bool(items) and all(isinstance(i, Mapping) and "name" in i for i in items)


def contains(live: Any, desired: Any) -> bool:
    """True when ``desired`` is a subset of ``live``."""
    if isinstance(desired, Mapping):
        if not isinstance(live, Mapping):
            return False
        return all(
            key in _SERVER_NORMALISED
            or (key in live and _contains_field(key, live[key], value))
            or (key not in live and _omitted(value))
            for key, value in desired.items()
        )
    if isinstance(desired, list):
        if not isinstance(live, list):
            return False
        if _named(desired) and _named(live):
            by_name = {item["name"]: item for item in live}
            return all(
                item["name"] in by_name and contains(by_name[item["name"]], item) for item in desired
            )
        return len(live) == len(desired) and all(contains(a, b) for a, b in zip(live, desired, strict=True))
    if isinstance(desired, bool) or isinstance(live, bool):
        return live is desired
    if isinstance(desired, int | float) and isinstance(live, int | float):
        return live == desired
    return str(live) == str(desired)


def _contains_field(key: str, live: Any, desired: Any) -> bool:
    if key in _QUANTITY_MAPS and isinstance(desired, Mapping) and isinstance(live, Mapping):
        return all(name in live and _same_quantity(live[name], value) for name, value in desired.items())
    return contains(live, desired)


def stamped(desired: Mapping[str, Any]) -> dict[str, Any]:
    """``desired`` annotated with the hash of itself (without that annotation).

    A new object and metadata; the rest (spec, data) is shared with ``desired``, never changed here: rendered
    objects are made afresh per reconcile, and copying a Deployment deeply cost more than hashing it.
    """
    obj = dict(desired)
    meta = obj["metadata"] = dict(obj.get("metadata") or {})
    annotations = {k: v for k, v in (meta.get("annotations") or {}).items() if k != ANNOTATION_DESIRED_HASH}
    if annotations:
        meta["annotations"] = annotations
    else:
        meta.pop("annotations", None)
    digest = content_hash(obj)
    meta["annotations"] = {**annotations, ANNOTATION_DESIRED_HASH: digest}
    return obj


def desired_hash(obj: Mapping[str, Any]) -> str | None:
    return ((obj.get("metadata") or {}).get("annotations") or {}).get(ANNOTATION_DESIRED_HASH)


# Answers of in_sync by (live uid, live resourceVersion, desired hash). An object at the same resourceVersion
# has not changed, and the same hash is the same rendering, so the answer cannot have changed either: a child's
# status moving on re-asks it for the other children of its ModelServer, and the resync for every one.
# Bounded (the oldest answer goes first); answers for objects without a uid or resourceVersion are not kept.
MEMO_SIZE = 8192
_memo: dict[tuple[str, str, str], bool] = {}


def in_sync(live: Mapping[str, Any] | None, desired: Mapping[str, Any]) -> bool:
    """``desired`` (stamped) was applied as it is now and nobody has edited our fields since."""
    if live is None:
        return False
    want = desired_hash(desired)
    if want is not None and desired_hash(live) != want:
        return False
    meta = live.get("metadata") or {}
    uid, version = meta.get("uid"), meta.get("resourceVersion")
    key = (str(uid), str(version), want) if want and uid and version else None
    if key is not None:
        known = _memo.get(key)
        if known is not None:
            return known
    answer = contains(live, desired)
    if key is not None:
        if len(_memo) >= MEMO_SIZE:
            del _memo[next(iter(_memo))]
        _memo[key] = answer
    return answer
