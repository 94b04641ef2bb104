"""plan(), remembered: the same spec on the same nodes plans the same (plan is a pure function).

Every reconcile plans its ModelServer against every node of the cluster; the nodes change far less often than
pods do. A :class:`PlanCache` keeps the answers (placements and refusals) for one list of nodes: the same
NodeInfo objects (frozen) in the same order. Any other list, or any other NodeInfo in it, starts over.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

from pinserve.api import ModelServerSpec
from pinserve.nodeclass import PlacementRecord
from pinserve.planning import NodeInfo, Placement, PlanError, plan
from pinserve.settings import Settings

MAX_ENTRIES = 1024  # distinct (spec, recorded placement) pairs kept; a placement is about a kilobyte


class PlanCache:
    def __init__(self, max_entries: int = MAX_ENTRIES) -> None:
        self.max_entries = max_entries
        self._nodes: tuple[NodeInfo, ...] = ()  # held, so that their ids below stay theirs
        self._ids: tuple[int, ...] = ()
        self._answers: OrderedDict[tuple[str, str, Settings], Placement | PlanError] = OrderedDict()
        self.hits = 0
        self.misses = 0

    def plan(self, spec: ModelServerSpec, nodes: Sequence[NodeInfo], settings: Settings,
             previous: PlacementRecord | None = None) -> Placement:
        """What :func:`pinserve.planning.plan` answers (a Placement, or PlanError raised), remembered."""
        ids = tuple(map(id, nodes))
        if ids != self._ids:
            self._nodes, self._ids = tuple(nodes), ids
            self._answers.clear()
        # repr: equal inputs give equal text (frozen models and dataclasses); unequal ones never do.
        key = (repr(spec), repr(previous), settings)
        answer = self._answers.get(key)
        if answer is None:
            self.misses += 1
            try:
                answer = plan(spec, self._nodes, settings, previous)
            except PlanError as exc:
                answer = exc
            self._answers[key] = answer
            if len(self._answers) > self.max_entries:
                self._answers.popitem(last=False)
        else:
            self.hits += 1
            self._answers.move_to_end(key)
        if isinstance(answer, PlanError):
            raise PlanError(answer.reason, answer.message, answer.field)
        return answer


#: The operator's: reconcile plans through it (one process, one cluster's nodes).
PLANS = PlanCache()
