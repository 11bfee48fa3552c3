"""latency-based-routing / fastest_response: the lowest p95 over a sliding window.

Streaming requests rank by time to first token, others by total latency (each
falls back to the other when a deployment has no samples of that kind). The
ranking is re-evaluated every ``reevaluate_seconds`` (default 10) per group, and
at every request while some candidate has fewer than 5 samples, which therefore
goes first (unmeasured = assumed fastest). With probability ``explore``
(default 0.1) another candidate is tried first, so a slower or recovered
backend keeps being measured. Windows are fixed-size rings (``router.state``).
"""

from __future__ import annotations

import random
import time
from typing import Any, Sequence

from router.domain import Deployment, RequestFacts
from router.routing.strategies import Ranked
from router.state import StateTable

MIN_SAMPLES = 5


def measure(view: StateTable, d: Deployment, stream: bool) -> float | None:
    first, second = (view.ttft_p95, view.latency_p95) if stream else (view.latency_p95, view.ttft_p95)
    value = first(d)
    return value if value is not None else second(d)


class LatencyBased:
    name = "latency-based"

    def __init__(self, spec: Any = None, provider_weights: object = None) -> None:
        self.interval = float(getattr(spec, "reevaluate_seconds", None) or 10.0)
        explore = getattr(spec, "explore", None)
        self.explore = 0.1 if explore is None else float(explore)
        self._memo: dict[tuple[str, bool], tuple[float, tuple[str, ...], list[tuple[str, float | None]]]] = {}
        self.clock = time.monotonic

    def order(self, group: str, candidates: Sequence[Deployment], view: StateTable, rng: random.Random,
              facts: RequestFacts) -> Ranked:
        now = self.clock()
        ids = tuple(d.id for d in candidates)
        key = (group, facts.stream)
        memo = self._memo.get(key)
        if memo is None or memo[1] != ids or now - memo[0] >= self.interval:
            ranking = [(d.id, measure(view, d, facts.stream)) for d in candidates]
            ranking.sort(key=lambda r: -1.0 if r[1] is None else r[1])
            if all(view.samples(d) >= MIN_SAMPLES for d in candidates):
                self._memo[key] = (now, ids, ranking)
            else:
                self._memo.pop(key, None)
        else:
            ranking = memo[2]
        by_id = {d.id: d for d in candidates}
        ranked: Ranked = [(by_id[i], None if s is None else round(s * 1000, 2)) for i, s in ranking]
        if len(ranked) > 1 and rng.random() < self.explore:
            ranked.insert(0, ranked.pop(rng.randrange(1, len(ranked))))
        return ranked
