"""simple-shuffle: LiteLLM's default, weighted random without live state."""

from __future__ import annotations

import random
from typing import Mapping, Sequence

from router.domain import Deployment, RequestFacts
from router.routing.strategies import Ranked
from router.state import StateTable


def shuffle_weights(candidates: Sequence[Deployment], provider_weights: Mapping[str, float] | None = None) -> list[float]:
    """``weight``, else the policy file's ``redundant_models`` provider weights, else
    ``rpm``, else ``tpm``, else uniform. A source is used only if every candidate
    has it, so a half-configured group does not starve the deployments that lack
    the key (LiteLLM looks only at the first deployment)."""
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


def weighted_order(candidates: Sequence[Deployment], weights: Sequence[float], rng: random.Random) -> Ranked:
    """Weighted random order without replacement (Efraimidis–Spirakis keys)."""
    keyed = [(rng.random() ** (1.0 / w) if w > 0 else -1.0, d, w) for d, w in zip(candidates, weights)]
    keyed.sort(key=lambda k: k[0], reverse=True)
    return [(d, w) for _, d, w in keyed]


class SimpleShuffle:
    name = "simple-shuffle"

    def __init__(self, spec: object = None, provider_weights: Mapping[str, Mapping[str, float]] | None = None) -> None:
        self._provider_weights = provider_weights or {}  # model group -> provider -> weight
        # Weights depend only on the configuration (this object lives as long as it): computed once per
        # candidate set. Keyed by identity, kept alive by the stored tuple; bounded by the config's groups.
        self._weights: dict[tuple[int, ...], tuple[tuple[Deployment, ...], list[float]]] = {}

    def order(self, group: str, candidates: Sequence[Deployment], view: StateTable, rng: random.Random,
              facts: RequestFacts) -> Ranked:
        if len(candidates) <= 1:
            return [(d, None) for d in candidates]
        key = tuple(map(id, candidates))
        cached = self._weights.get(key)
        if cached is None:
            if len(self._weights) > 10_000:  # candidate sets filtered by health vary; keep this bounded
                self._weights.clear()
            weights = shuffle_weights(candidates, self._provider_weights.get(candidates[0].model_name))
            cached = self._weights[key] = (tuple(candidates), weights)
        return weighted_order(candidates, cached[1], rng)

    def target(self, candidates: Sequence[Deployment]) -> list[float]:
        """The share of traffic each candidate should get: its weight."""
        return shuffle_weights(candidates, self._provider_weights.get(candidates[0].model_name)) if candidates else []
