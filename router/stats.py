"""In-process routing statistics: the seed's "Routing Metrics" that belong to routing.

``routing_decision_time`` (a fixed-bucket histogram, microseconds), decisions by
route (so ``exact_match_rate`` = exact / total), by resolution step and by
provider (``provider_distribution``). Bounded by construction: counters keyed by
route names and provider names, both fixed sets. ``/router/stats`` shows them;
the Prometheus exporter will read the same object.
"""

from __future__ import annotations

import time
from bisect import bisect_left
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Any

from router.routing.engine import ROUTE_LABELS

BUCKETS_US = (5, 10, 20, 50, 100, 200, 500, 1000, 5000)


@dataclass(slots=True)
class RoutingStats:
    decisions: int = 0
    no_route: int = 0
    by_route: Counter[str] = field(default_factory=Counter)  # resolution step: exact, pattern, capability, ...
    adjusted: Counter[str] = field(default_factory=Counter)  # metadata / warm moved the pick
    by_provider: Counter[str] = field(default_factory=Counter)
    decision_us_sum: float = 0.0
    decision_us_buckets: list[int] = field(default_factory=lambda: [0] * (len(BUCKETS_US) + 1))
    cache_hits: int = 0
    cache_misses: int = 0

    def record(self, seconds: float, resolved: str | None, route: str | None, provider: str | None) -> None:
        us = seconds * 1e6
        self.decisions += 1
        self.decision_us_sum += us
        self.decision_us_buckets[bisect_left(BUCKETS_US, us)] += 1  # the first bound >= us, else the overflow
        if resolved is None:
            self.no_route += 1
        else:
            self.by_route[resolved] += 1
            if route and route != resolved:
                self.adjusted[route] += 1
            if provider:
                self.by_provider[provider] += 1

    def snapshot(self) -> dict[str, Any]:
        total = self.decisions or 1
        return {
            "decisions": self.decisions,
            "no_route": self.no_route,
            "routing_decision_time_us": {
                "mean": round(self.decision_us_sum / total, 2),
                "buckets": {f"le_{b}": n for b, n in zip((*BUCKETS_US, "inf"), self.decision_us_buckets)},
            },
            "exact_match_rate": round(self.by_route["exact"] / total, 4),
            "pattern_match_rate": round(self.by_route["pattern"] / total, 4),
            "by_route": dict(self.by_route),
            "adjusted_by": dict(self.adjusted),
            "provider_distribution": {p: round(n / total, 4) for p, n in self.by_provider.items()},
            "cache_hits": self.cache_hits,
            "cache_misses": self.cache_misses,
            "cache_hit_rate": round(self.cache_hits / (self.cache_hits + self.cache_misses), 4) if self.cache_hits + self.cache_misses else None,
        }


RECENT_SIZE = 100
MAX_MODEL_CHARS = 200  # the model name is the client's; keep entries small


class RecentDecisions:
    """The last ``size`` requests' routing outcomes, newest last; O(1) per record."""

    def __init__(self, size: int = RECENT_SIZE) -> None:
        self._ring: deque[tuple[Any, ...]] = deque(maxlen=size)  # tuples: the dicts are built when the page asks

    def record(self, request_id: str, model: str, route: str | None, deployment: str | None, provider: str | None,
               status: int, latency_ms: float, attempts: int, *, fallback: str | None = None,
               error: str | None = None, cache: str | None = None) -> None:
        """One request ended. ``route`` is ``RouteDecision.route`` (None: no route);
        ``deployment``/``provider`` the last one tried (None: none was);
        ``fallback`` the tried deployment ids joined by commas, when more than one."""
        self._ring.append((time.time(), request_id, model[:MAX_MODEL_CHARS], route, deployment, provider, status,
                           latency_ms, attempts, fallback, error, cache))

    def snapshot(self) -> list[dict[str, Any]]:
        """Newest first."""
        return [{"time": round(t, 3), "request_id": rid, "model": model, "route": route,
                 "route_label": ROUTE_LABELS.get(route, route) if route else None, "deployment": dep, "provider": provider,
                 "status": status, "latency_ms": latency, "attempts": attempts, "fallback": fallback, "error": error,
                 "cache": cache}
                for t, rid, model, route, dep, provider, status, latency, attempts, fallback, error, cache in reversed(self._ring)]

    def __len__(self) -> int:
        return len(self._ring)
