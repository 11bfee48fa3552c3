"""The routing decision: which deployments may serve a request, in what order.

``Engine.decide(model)`` is synchronous and does no I/O: it walks the seed's
hierarchy (exact name → deployment id → alias → policy exact match → regex
patterns → model_list wildcards → default provider) and lets the group's
load-balancing strategy order the candidates. Capability, size and metadata
routing, fallbacks and cooldowns plug in here in later work.
"""

from __future__ import annotations

import random
from typing import Sequence

from router.config import Config
from router.domain import Deployment, RouteDecision
from router.routing.strategies import SimpleShuffle, Strategy

MAX_MODEL_NAME = 512  # longer names are rejected before any regex runs

ROUTE_LABELS = {
    "exact": "exact match",
    "id": "deployment id",
    "alias": "alias",
    "pattern": "pattern match",
    "wildcard": "wildcard match",
    "default": "default provider",
}


class Engine:
    def __init__(self, config: Config, rng: random.Random | None = None) -> None:
        self.config = config
        self._rng = rng or random.Random()
        weights = {model: dict(w) for model, w in config.mappings.redundant_models.items()}
        self._strategy: Strategy = SimpleShuffle(weights)
        # (provider, upstream model) -> configured deployment, so a pattern route to a
        # model that model_list also declares uses that deployment's settings.
        self._by_upstream: dict[tuple[str, str], Deployment] = {}
        for d in config.deployments:
            if not d.is_dynamic:
                self._by_upstream.setdefault((d.provider, d.upstream_model), d)

    def decide(self, model: str) -> RouteDecision | None:
        """Resolve ``model`` to an ordered candidate list, or ``None`` (no route: 404)."""
        cfg = self.config
        trace: list[str] = []
        group = cfg.groups.get(model)
        if group:
            trace.append(f"exact: model_list group {model!r} has {len(group)} deployment(s)")
            return self._decision(model, "exact", group, trace)
        dep = cfg.by_id.get(model)
        if dep is not None:
            trace.append(f"id: {model!r} pins deployment {dep.id}")
            return self._decision(model, "id", (dep,), trace)
        alias = cfg.aliases.get(model)
        if alias:
            trace.append(f"alias: {model!r} -> {', '.join(d.id for d in alias)}")
            return self._decision(model, "alias", alias, trace)
        trace.append(f"exact: no model_list name, deployment id or alias {model!r}")

        exact = cfg.mappings.exact_matches.get(model)
        if exact is not None:
            trace.append(f"exact: exact_matches sends {model!r} to provider {exact.provider}")
            return self._provider_decision(model, "exact", exact.provider, model, trace)

        for rule in cfg.mappings.patterns:
            if rule.pattern.search(model):
                trace.append(f"pattern: {rule.pattern.pattern!r} matches -> provider {rule.provider}")
                return self._provider_decision(model, "pattern", rule.provider, model, trace, matched=rule.pattern.pattern)
        if cfg.mappings.patterns:
            trace.append(f"pattern: none of {len(cfg.mappings.patterns)} patterns match")

        for regex, wdep in cfg.wildcards:
            m = regex.match(model)
            if m:
                upstream = wdep.upstream_model
                for part in m.groups():
                    upstream = upstream.replace("*", part, 1)
                trace.append(f"wildcard: model_list {wdep.wildcard!r} matches -> {wdep.id} as {upstream!r}")
                return RouteDecision(model, "wildcard", (wdep,), upstream, wdep.wildcard or "", tuple(trace))

        default = cfg.mappings.default_provider
        if default:
            trace.append(f"default: default_provider {default}")
            return self._provider_decision(model, "default", default, model, trace)
        trace.append("default: no default_provider configured")
        return None

    def _decision(self, model: str, route: str, candidates: Sequence[Deployment], trace: list[str]) -> RouteDecision:
        ordered = self._strategy.order(candidates, self._rng)
        if len(ordered) > 1:
            trace.append(f"strategy {self._strategy.name}: order {', '.join(d.id for d in ordered)}")
        return RouteDecision(model, route, tuple(ordered), None, "", tuple(trace))

    def _provider_decision(self, model: str, route: str, provider: str, upstream: str, trace: list[str], matched: str = "") -> RouteDecision:
        configured = self._by_upstream.get((provider, upstream))
        if configured is not None:
            trace.append(f"{route}: provider {provider} serves {upstream!r} as deployment {configured.id}")
            return RouteDecision(model, route, (configured,), None, matched, tuple(trace))
        catchall = self.config.catchalls[provider]
        return RouteDecision(model, route, (catchall,), upstream, matched, tuple(trace))
