"""Load-balancing strategies behind one small protocol, found through a registry.

A strategy orders a group's candidate deployments (first = chosen) and says
why, as a score per deployment. It reads runtime state through the
``StateTable`` view and never writes it: the proxy records the pick afterwards.
Names from LiteLLM (``routing_strategy``) and from the seed's policy file map to
one canonical name each; config loading rejects any other name.
"""

from __future__ import annotations

import random
from typing import Callable, Protocol, Sequence

from router.domain import Deployment, RequestFacts
from router.state import StateTable

Ranked = list[tuple[Deployment, float | None]]  # in order; score is strategy-specific (None = not scored)


class Strategy(Protocol):
    name: str

    def order(self, group: str, candidates: Sequence[Deployment], view: StateTable, rng: random.Random,
              facts: RequestFacts) -> Ranked:
        """Return every candidate exactly once, best first, with its score. ``group``
        names the model group / alias / capability, for strategies that keep
        per-group memo state."""
        ...

    # Optional: ``target(candidates) -> list[float]``, the share of traffic each candidate
    # should get (weights, any scale), for the load-balance effectiveness metric. A strategy
    # without it aims at an even split.


# Every accepted name -> canonical name.
STRATEGY_NAMES: dict[str, str] = {
    "simple-shuffle": "simple-shuffle",
    "shuffle": "simple-shuffle",
    "load_balance": "simple-shuffle",
    "round_robin": "round-robin",
    "round-robin": "round-robin",
    "least-busy": "least-busy",
    "least_loaded": "least-busy",
    "least_busy": "least-busy",
    "usage-based-routing": "usage-based",
    "usage-based-routing-v2": "usage-based",
    "usage_based": "usage-based",
    "latency-based-routing": "latency-based",
    "fastest_response": "latency-based",
    "cost-based-routing": "cost-based",
    "most_capacity": "most-capacity",
    "cache-aware": "cache-aware",
    "cache_aware": "cache-aware",
}


def canonical(name: str) -> str | None:
    return STRATEGY_NAMES.get(name)


def registry() -> dict[str, Callable[..., Strategy]]:
    from router.routing.strategies import (cache_aware, cost_based, latency_based, least_busy, most_capacity, round_robin,
                                           shuffle, usage_based)

    return {
        "simple-shuffle": shuffle.SimpleShuffle,
        "round-robin": round_robin.RoundRobin,
        "least-busy": least_busy.LeastBusy,
        "usage-based": usage_based.UsageBased,
        "latency-based": latency_based.LatencyBased,
        "most-capacity": most_capacity.MostCapacity,
        "cost-based": cost_based.CostBased,
        "cache-aware": cache_aware.CacheAware,
    }


def tie_break(ranked: list[tuple[float, Deployment]], rng: random.Random, descending: bool = False) -> Ranked:
    """Sort by score, breaking ties randomly (so equal deployments share the load)."""
    keyed = [(-s if descending else s, rng.random(), d, s) for s, d in ranked]
    keyed.sort(key=lambda k: (k[0], k[1]))
    return [(d, s) for _, _, d, s in keyed]
