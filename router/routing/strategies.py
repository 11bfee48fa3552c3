"""Load-balancing strategies behind one small protocol, found through a registry.

A strategy orders a group's candidate deployments; the proxy tries them in that
order. Strategies are pure functions of the candidates, per-deployment facts and
a random source, so they are tested without an event loop.
"""

from __future__ import annotations

import random
from typing import Callable, Protocol, Sequence

from router.domain import Deployment


class Strategy(Protocol):
    name: str

    def order(self, candidates: Sequence[Deployment], rng: random.Random) -> list[Deployment]:
        """Return ``candidates`` in the order to try them (first = chosen). Never drops any."""
        ...


def shuffle_weights(candidates: Sequence[Deployment], provider_weights: dict[str, float] | None = None) -> list[float]:
    """LiteLLM's simple-shuffle weights: ``weight``, else the policy file's
    ``redundant_models`` provider weights, else ``rpm``, else ``tpm``, else uniform.

    A source is used only if every candidate has it, so a half-configured group
    does not starve the deployments that lack the key (LiteLLM looks only at the
    first deployment and divides by zero or ignores the rest).
    """
    for pick in (
        lambda d: d.weight,
        lambda d: (provider_weights or {}).get(d.provider),
        lambda d: d.rpm,
        lambda d: d.tpm,
    ):
        values = [pick(d) for d in candidates]
        if all(v is not None for v in values) and sum(values) > 0:
            return [float(v) for v in values]
    return [1.0] * len(candidates)


def weighted_order(candidates: Sequence[Deployment], weights: Sequence[float], rng: random.Random) -> list[Deployment]:
    """Weighted random order without replacement (Efraimidis–Spirakis keys)."""
    keyed = []
    for d, w in zip(candidates, weights):
        key = rng.random() ** (1.0 / w) if w > 0 else -1.0
        keyed.append((key, d))
    keyed.sort(key=lambda kv: kv[0], reverse=True)
    return [d for _, d in keyed]


class SimpleShuffle:
    name = "simple-shuffle"

    def __init__(self, provider_weights: dict[str, dict[str, float]] | None = None) -> None:
        # model group -> provider -> weight, from model-mappings.yaml redundant_models
        self._provider_weights = provider_weights or {}

    def order(self, candidates: Sequence[Deployment], rng: random.Random) -> list[Deployment]:
        if len(candidates) <= 1:
            return list(candidates)
        weights = shuffle_weights(candidates, self._provider_weights.get(candidates[0].model_name))
        return weighted_order(candidates, weights, rng)


# Every strategy name a LiteLLM config or the policy file may use, mapped to its
# canonical name. Only simple-shuffle is implemented so far; the others are
# accepted (so existing configs load) and fall back to it with a load warning.
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
}

IMPLEMENTED: dict[str, Callable[..., Strategy]] = {"simple-shuffle": SimpleShuffle}


def canonical(name: str) -> str | None:
    return STRATEGY_NAMES.get(name)


def is_implemented(name: str) -> bool:
    return canonical(name) in IMPLEMENTED
