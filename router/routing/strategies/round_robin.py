"""round-robin: the seed's counter algorithm — lowest pick counter wins (ties in
config order); the proxy increments the counter on every pick and StateTable
resets all counters every minute."""

from __future__ import annotations

import random
from typing import Sequence

from router.domain import Deployment, RequestFacts
from router.routing.strategies import Ranked
from router.state import StateTable


class RoundRobin:
    name = "round-robin"

    def __init__(self, spec: object = None, provider_weights: object = None) -> None:
        pass

    def order(self, group: str, candidates: Sequence[Deployment], view: StateTable, rng: random.Random,
              facts: RequestFacts) -> Ranked:
        keyed = sorted(enumerate(candidates), key=lambda ic: (view.picks(ic[1]), ic[0]))
        return [(d, float(view.picks(d))) for _, d in keyed]
