"""most_capacity: the most free capacity — known capacity (``max_parallel_requests``,
llama.cpp slots) minus load; deployments of unknown capacity rank by load alone."""

from __future__ import annotations

import random
from typing import Sequence

from router.domain import Deployment, RequestFacts
from router.routing.strategies import Ranked, tie_break
from router.routing.strategies.least_busy import load
from router.state import StateTable


class MostCapacity:
    name = "most-capacity"

    def __init__(self, spec: object = None, provider_weights: object = None) -> None:
        pass

    def order(self, group: str, candidates: Sequence[Deployment], view: StateTable, rng: random.Random,
              facts: RequestFacts) -> Ranked:
        scored = []
        for d in candidates:
            cap = view.capacity(d)
            scored.append((float((cap or 0) - load(view, d)), d))
        return tie_break(scored, rng, descending=True)
