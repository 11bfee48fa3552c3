"""cost-based-routing: the lowest cost per token (``model_info.input_cost_per_token``
+ ``output_cost_per_token``, or ``cost``); unknown cost counts as free."""

from __future__ import annotations

import random
from typing import Sequence

from router.domain import Deployment, RequestFacts
from router.routing.strategies import Ranked, tie_break
from router.state import StateTable


def cost(d: Deployment) -> float:
    info = d.model_info
    total = 0.0
    for key in ("input_cost_per_token", "output_cost_per_token", "cost"):
        value = info.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            total += float(value)
    return total


class CostBased:
    name = "cost-based"

    def __init__(self, spec: object = None, provider_weights: object = None) -> None:
        pass

    def order(self, group: str, candidates: Sequence[Deployment], view: StateTable, rng: random.Random,
              facts: RequestFacts) -> Ranked:
        return tie_break([(cost(d), d) for d in candidates], rng)
