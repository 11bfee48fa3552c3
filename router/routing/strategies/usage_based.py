"""usage-based-routing(-v2) / usage_based: the seed's weighted score,

    score = latency_w * (1/latency) + success_w * success_rate + cost_w * (1/cost)

with the weights from ``load_balancing.usage_based.weight_factors`` (default
0.4 / 0.4 / 0.2). ``1/latency`` and ``1/cost`` are scaled by the best
candidate's value so each term lies in [0, 1] and the weights mean what they
say (a free local model would otherwise score infinity). Unmeasured deployments
get the best latency and a success rate of 1, so they are tried. Scores are
recomputed every 10 requests per group, as the seed says. Deployments over their
``rpm``/``tpm`` this minute are skipped by the engine before any strategy runs.
"""

from __future__ import annotations

import random
from typing import Any, Sequence

from router.domain import Deployment, RequestFacts
from router.routing.strategies import Ranked, tie_break
from router.routing.strategies.cost_based import cost
from router.state import StateTable

DEFAULT_FACTORS = {"latency": 0.4, "success_rate": 0.4, "cost": 0.2}
RECOMPUTE_EVERY = 10


def scores(candidates: Sequence[Deployment], view: StateTable, factors: dict[str, float]) -> dict[str, float]:
    latencies = {d.id: view.mean_latency(d) for d in candidates}
    known = [v for v in latencies.values() if v]
    best_latency = min(known) if known else 1.0
    costs = {d.id: cost(d) for d in candidates}
    paid = [c for c in costs.values() if c > 0]
    cheapest = min(paid) if paid else 0.0
    out = {}
    for d in candidates:
        latency = latencies[d.id] or best_latency
        rate = view.success_rate(d)
        out[d.id] = (factors.get("latency", 0.0) * (best_latency / latency)
                     + factors.get("success_rate", 0.0) * (1.0 if rate is None else rate)
                     + factors.get("cost", 0.0) * (cheapest / costs[d.id] if costs[d.id] > 0 else 1.0))
    return out


class UsageBased:
    name = "usage-based"

    def __init__(self, spec: Any = None, provider_weights: object = None) -> None:
        factors = dict(getattr(spec, "weight_factors", None) or {})
        self.factors = factors or dict(DEFAULT_FACTORS)
        self._memo: dict[str, tuple[int, tuple[str, ...], dict[str, float]]] = {}

    def order(self, group: str, candidates: Sequence[Deployment], view: StateTable, rng: random.Random,
              facts: RequestFacts) -> Ranked:
        ids = tuple(d.id for d in candidates)
        memo = self._memo.get(group)
        if memo is None or memo[0] >= RECOMPUTE_EVERY or memo[1] != ids:
            memo = (0, ids, scores(candidates, view, self.factors))
        self._memo[group] = (memo[0] + 1, ids, memo[2])
        return tie_break([(round(memo[2][d.id], 4), d) for d in candidates], rng, descending=True)
