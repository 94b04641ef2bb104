"""The node class a placement selects, and the record of it in status that makes placement sticky.

All replicas share one pod template, so a plan picks one class of nodes: one threads-per-core value,
selected by match expressions on the agent's ``pinserve.io/threads-per-core`` label when the cluster
mixes classes.  status.placement records that choice (``threadsPerCore``, ``nodeClass``) with the
``planKey`` of the spec fields planning reads; planning keeps it while the key is unchanged and an
eligible node of the class remains, so node churn re-renders nothing.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from pinserve.api import ModelServerSpec

LABEL_THREADS_PER_CORE = "pinserve.io/threads-per-core"


@dataclass(frozen=True)
class PlacementRecord:
    """The node class a ModelServer was placed on, read back from its status.placement."""

    plan_key: str
    threads_per_core: int
    match_expressions: tuple[Mapping[str, Any], ...] = ()

    @classmethod
    def from_status(cls, placement: Mapping[str, Any] | None) -> PlacementRecord | None:
        """None when status holds no (or no readable) record, e.g. one written by an older operator."""
        if not isinstance(placement, Mapping):
            return None
        key, tpc = placement.get("planKey"), placement.get("threadsPerCore")
        node_class = placement.get("nodeClass")
        if not isinstance(key, str) or not key or isinstance(tpc, bool) or not isinstance(tpc, int) or tpc < 1:
            return None
        if not isinstance(node_class, Mapping):
            return None
        exprs = node_class.get("matchExpressions") or []
        if not isinstance(exprs, list) or not all(isinstance(e, Mapping) and "key" in e for e in exprs):
            return None
        return cls(key, tpc, tuple(dict(e) for e in exprs))

    def describe(self) -> str:
        terms = [f"{e['key']} {e.get('operator')} {','.join(str(v) for v in e.get('values') or [])}".strip()
                 for e in self.match_expressions]
        return f"{self.threads_per_core} thread(s) per core" + (f": {'; '.join(terms)}" if terms else "")


def class_expressions(tpc: int, all_agent: bool, other_tpcs: Iterable[int]) -> list[dict[str, Any]]:
    """Match expressions that keep replicas off the nodes of other threads-per-core classes (none if uniform)."""
    others = sorted(str(t) for t in other_tpcs)
    if not others:
        return []
    if all_agent:
        return [{"key": LABEL_THREADS_PER_CORE, "operator": "In", "values": [str(tpc)]}]
    # NotIn also matches nodes without the label, i.e. those planned from capacity.
    return [{"key": LABEL_THREADS_PER_CORE, "operator": "NotIn", "values": others}]


def matches(labels: Mapping[str, str], expressions: Iterable[Mapping[str, Any]]) -> bool:
    """Node selector requirement semantics (In, NotIn, Exists, DoesNotExist) over a node's labels."""
    for expr in expressions:
        key, op = str(expr.get("key")), expr.get("operator")
        values = [str(v) for v in expr.get("values") or []]
        present = key in labels
        if op == "In" and not (present and labels[key] in values):
            return False
        if op == "NotIn" and present and labels[key] in values:
            return False
        if op == "Exists" and not present:
            return False
        if op == "DoesNotExist" and present:
            return False
    return True


def plan_key(spec: ModelServerSpec) -> str:
    """Hash of the spec fields planning reads; a change of anything else (replicas, env, ...) keeps the class."""
    data = {"resources": spec.resources.to_wire(), "placement": spec.placement.to_wire()}
    return hashlib.sha256(json.dumps(data, sort_keys=True, separators=(",", ":")).encode()).hexdigest()[:16]
