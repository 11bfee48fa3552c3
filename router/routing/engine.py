"""The routing decision: which deployments may serve a request, in what order, and why.

``Engine.decide(facts, view)`` is synchronous and does no I/O. Its ``Resolver``
(``resolve.py``) walks the seed's hierarchy to find the candidates — exact,
pattern, capability, size, default — then the engine drops deployments over their
``rpm``/``tpm`` this minute and those cooling down, lets the load-balancing
strategy order the rest, demotes a degraded first pick half of the time, then
applies request-metadata rules and warm-first routing, each of which may move a
deployment to the front. Every step leaves a line in the trace. The fallback
chains (step 6), computed only after the candidates failed, are in
``fallbacks.py``; ``Engine.fallbacks`` is the proxy's way in.
"""

from __future__ import annotations

import random
import time
from router.config import Config
from router.domain import Deployment, RequestFacts, RouteDecision
from router.errors import BadRequest, RateLimited
from router.routing import strategies
from router.routing.fallbacks import FallbackPlan, FallbackRules
from router.routing.resolve import Resolution, Resolver
from router.routing.rules import Condition, compare
from router.routing.prefix import session_key
from router.routing.strategies.cache_aware import CacheAware, Placement
from router.state import StateTable

ROUTE_LABELS = {
    "exact": "exact match",
    "id": "deployment id",
    "alias": "alias",
    "pattern": "pattern match",
    "wildcard": "wildcard match",
    "capability": "capability",
    "size": "model size",
    "default": "default provider",
    "metadata": "request metadata",
    "warm": "warm provider",
    "cache": "prompt cache",
    "session": "session affinity",
}


class Engine:
    """Routing for one ``Config``: ``decide`` per request, ``fallbacks`` after a failure."""

    def __init__(self, config: Config, rng: random.Random | None = None) -> None:
        self.config = config
        self._rng = rng or random.Random()
        m = config.mappings
        self.resolver = Resolver(config)
        self.patterns = self.resolver.patterns
        self._fallbacks = FallbackRules(config, self.resolver)
        specs = {strategies.canonical(name): spec for name, spec in m.load_balancing.items()}
        weights = {model: dict(w) for model, w in m.redundant_models.items()}
        self._strategies = {name: make(specs.get(name), weights) for name, make in strategies.registry().items()}
        self.default_strategy = strategies.canonical(config.router.routing_strategy) or "simple-shuffle"
        # load_balancing.<strategy>.applicable_to: capability / group / alias -> strategy
        self._applicable: dict[str, str] = {}
        for name, spec in m.load_balancing.items():
            for target in spec.applicable_to:
                self._applicable.setdefault(target, strategies.canonical(name) or self.default_strategy)
        # redundant_models states a split ("70% of requests"): those groups shuffle by it
        # unless load_balancing names them explicitly.
        for model in m.redundant_models:
            self._applicable.setdefault(model, "simple-shuffle")
        router = config.router
        cache_aware = [name for name in (self.default_strategy, *self._applicable.values(),
                                         *(c.routing_strategy for c in m.capabilities.values())) if name and strategies.canonical(name) == "cache-aware"]
        checks = set(router.affinity).union(*router.group_affinity.values())
        self.wants_prompt = bool(cache_aware) or "prompt_caching" in checks  # the proxy renders prompts to block keys
        self.wants_session = bool(cache_aware) or "session_affinity" in checks  # the proxy looks for a session id
        self.wants_caller = "deployment_affinity" in checks
        self._cache_aware: CacheAware = self._strategies["cache-aware"]  # type: ignore[assignment]
        self.header_names = frozenset(
            r.condition.subject[len("header."):] for r in m.request_metadata_routing if r.condition.subject.startswith("header.")
        )

    # -- the decision ---------------------------------------------------------------------

    def decide(self, facts: RequestFacts, view: StateTable) -> RouteDecision | None:
        """Candidates for ``facts`` in the order to try them, or ``None`` (no route: 404).

        Raises ``BadRequest`` for an unknown ``X-Capability``, ``RateLimited`` when
        every candidate is over its rpm/tpm this minute, ``NoCapableDeployment``
        when a capability's requirements exclude every deployment.
        """
        trace: list[str] = []
        capability = None
        if facts.capability is not None:
            capability = self.config.mappings.capabilities.get(facts.capability)
            if capability is None:
                known = ", ".join(sorted(self.config.mappings.capabilities)) or "none configured"
                raise BadRequest(f"Unknown capability {facts.capability!r} in X-Capability (known: {known}).", param="X-Capability")
        res = self.resolver.resolve(facts, capability, view, trace)
        if res is None:
            return None
        limited = self._within_limits(res.candidates, view, trace)
        candidates = self._healthy(limited, view, trace)
        last_resort: list[Deployment] = []
        if not candidates and limited:
            # Not a 503 when every candidate is out: fallbacks first, then the one that
            # failed longest ago (LiteLLM's cooldowns black out whole groups).
            last_resort = [min(limited, key=view.last_failure_at)]
            trace.append(f"health: every candidate is unavailable; fallbacks first, then the least recently failed, {last_resort[0].id}")
        name = res.strategy or self._applicable.get(res.group) or self.default_strategy
        strategy = self._strategies[name]
        placement: Placement | None = None
        if type(strategy) is CacheAware and candidates and (len(candidates) > 1 or facts.prompt is not None):
            placement = strategy.decide(res.group, candidates, view, self._rng, facts)  # one candidate too: its answer teaches the index
            ranked = placement.ranked
        elif len(candidates) <= 1:
            ranked = [(d, None) for d in candidates]
        else:
            ranked = strategy.order(res.group, candidates, view, self._rng, facts)
        ordered = [d for d, _ in ranked]
        route = res.route
        if len(candidates) > 1:
            trace.append(f"strategy {name}: " + ", ".join(f"{d.id}={s}" if s is not None else d.id for d, s in ranked))
            if placement is not None:
                trace.append(f"cache: {placement.reason}")
                if placement.by != "load":
                    route = "cache"
            self._demote_degraded(ordered, view, trace)
        session = None
        if ordered and (facts.session is not None or facts.caller is not None or facts.prompt is not None):
            checks = self.config.router.affinity | self.config.router.group_affinity.get(res.group, frozenset())
            if placement is None and "prompt_caching" in checks and facts.prompt is not None and len(candidates) > 1:
                placement = self._prefer_cached(candidates, ordered, view, facts, trace)
                if placement is not None and placement.by == "prefix":
                    route = "cache"
            session = facts.session if facts.session is not None and (
                "session_affinity" in checks or type(strategy) is CacheAware) else \
                facts.caller if facts.caller is not None and "deployment_affinity" in checks else None
            if session is not None and self._apply_session(session, candidates, ordered, view, placement, trace):
                route = "session"
        if ordered and self._apply_metadata(facts, res, ordered, view, trace):
            route = "metadata"
        warm_up = self._apply_warmth(res, ordered, view, trace, facts.endpoint) if ordered else []
        if warm_up:
            route = "warm"
        ordered += [d for d in res.tail if d not in ordered]
        return RouteDecision(
            model=facts.model or (ordered or last_resort or res.candidates)[0].model_name,
            route=route,
            candidates=tuple(ordered),
            upstream_model=res.upstream,
            matched=res.matched,
            trace=tuple(trace),
            strategy=name if len(candidates) > 1 else "",
            scores=tuple((d.id, s) for d, s in ranked),
            warm_up=tuple(warm_up),
            resolved=res.route,
            last_resort=tuple(last_resort),
            prompt=facts.prompt if placement is not None else None,
            predicted=placement.predicted if placement is not None else {},
            session=session,
        )

    def target_split(self, decision: RouteDecision) -> list[float] | None:
        """The share of traffic each of ``decision.candidates`` should get under the
        decision's strategy (None: an even split), for the effectiveness metric."""
        target = getattr(self._strategies.get(decision.strategy), "target", None)
        return target(decision.candidates) if target is not None else None

    # -- fallbacks (step 6) ---------------------------------------------------------------------

    def fallbacks(self, decision: RouteDecision, facts: RequestFacts, view: StateTable,
                  failed_providers: set[str], context_overflow: bool = False) -> FallbackPlan:
        """Where to go once the decision's own candidates failed (``fallbacks.py``):
        LiteLLM's ``fallbacks`` / ``context_window_fallbacks``, then the policy's
        ``fallback_chains``. Computed only after a failure."""
        return self._fallbacks.plan(decision, facts, view, failed_providers, context_overflow)

    def spill(self, decision: RouteDecision, facts: RequestFacts, view: StateTable) -> FallbackPlan | None:
        """Spill-over targets to try before the decision's own candidates, which are all
        too busy (``spill.py``); None when this request's chain has no spill-over step."""
        if not self._fallbacks.spills(decision, facts):
            return None
        return self._fallbacks.spill(decision, facts, view)

    # -- filters and adjustments -------------------------------------------------------------

    def _within_limits(self, candidates: list[Deployment], view: StateTable, trace: list[str]) -> list[Deployment]:
        kept = []
        for d in candidates:
            if d.rpm is None and d.tpm is None:
                kept.append(d)
                continue
            requests, tokens = view.minute_usage(d)
            if d.rpm is not None and requests >= d.rpm:
                trace.append(f"limits: {d.id} skipped, {requests}/{d.rpm} requests this minute")
            elif d.tpm is not None and tokens >= d.tpm:
                trace.append(f"limits: {d.id} skipped, {tokens}/{d.tpm} tokens this minute")
            else:
                kept.append(d)
        if not kept:
            retry = 60 - int(time.time()) % 60
            raise RateLimited("Every deployment for this model is at its rpm/tpm limit for this minute.", retry)
        return kept

    def _healthy(self, candidates: list[Deployment], view: StateTable, trace: list[str]) -> list[Deployment]:
        """Drop deployments cooling down (or whose half-open trial is under way) and, with
        ``enable_pre_call_checks``, those whose server the last probe could not reach."""
        pre_call = self.config.router.enable_pre_call_checks
        kept = []
        for d in candidates:
            if not view.available(d):
                trace.append(f"health: {d.id} is cooling down")
            elif pre_call and view.server_down(d):
                trace.append(f"health: {d.id} skipped, its server was unreachable at the last probe")
            else:
                kept.append(d)
        return kept

    def _demote_degraded(self, ordered: list[Deployment], view: StateTable, trace: list[str]) -> None:
        """A degraded deployment keeps half its share: picked first, it gives way to the
        next healthy candidate half of the time."""
        if view.degraded(ordered[0]) and self._rng.random() < 0.5:
            healthy = next((d for d in ordered[1:] if not view.degraded(d)), None)
            if healthy is not None:
                ordered.remove(healthy)
                ordered.insert(0, healthy)
                trace.append(f"health: {ordered[1].id} is degraded; {healthy.id} goes first this time")

    def _apply_metadata(self, facts: RequestFacts, res: Resolution, ordered: list[Deployment], view: StateTable,
                        trace: list[str]) -> bool:
        """The first matching request_metadata_routing rule moves that provider's
        deployments to the front — only if the request's model is deployed there
        (among the candidates, or the group's deployments an exact_matches entry put last)."""
        for rule in self.config.mappings.request_metadata_routing:
            if not self._holds(rule.condition, facts):
                continue
            there = [d for d in ordered if d.provider == rule.provider]
            if not there and res.movable:
                there = [d for d in res.movable if d.provider == rule.provider and view.available(d)]
                if there:
                    ordered[:0] = there
                    trace.append(f"metadata: {rule.name} ({rule.condition}) -> {ordered[0].id} on {rule.provider}")
                    return True
            if not there and res.upstream is not None:
                configured = self.resolver.by_upstream.get((rule.provider, res.upstream))
                there = [configured] if configured else []
                if configured:
                    ordered.insert(0, configured)
            if not there:
                trace.append(f"metadata: {rule.name} ({rule.condition}) wants {rule.provider}, "
                             f"but the model is not deployed there; the normal route stands")
                continue
            if ordered[0].provider == rule.provider:
                trace.append(f"metadata: {rule.name} ({rule.condition}) agrees with {ordered[0].id}")
                return False
            for d in reversed(there):
                ordered.remove(d)
                ordered.insert(0, d)
            trace.append(f"metadata: {rule.name} ({rule.condition}) -> {ordered[0].id} on {rule.provider}")
            return True
        return False

    def _holds(self, cond: Condition, facts: RequestFacts) -> bool:
        if cond.subject.startswith("header."):
            value = facts.headers.get(cond.subject[len("header."):])
            equal = value is not None and value.lower() == str(cond.value).lower()
            return equal if cond.op == "==" else not equal
        actual: float | bool | None = {"stream": facts.stream, "batch_size": facts.batch_size}.get(cond.subject)
        if actual is None:
            return False
        return compare(actual, cond.op, cond.value)

    def _apply_warmth(self, res: Resolution, ordered: list[Deployment], view: StateTable, trace: list[str],
                      endpoint: str = "chat") -> list[Deployment]:
        """prefer_warm_providers: if the pick is known cold and another candidate is
        known warm, serve from the warm one and warm the cold one up in the background.
        Ollama's own API (``/api/*``) gets it unless ``first_request_routing`` says ``none``:
        its clients expect the server that has the model loaded."""
        strategy = self.config.mappings.first_request_strategy
        if strategy is None and endpoint.startswith("ollama_"):
            strategy = "prefer_warm_providers"
        if strategy != "prefer_warm_providers" or len(ordered) < 2:
            return []
        first = ordered[0]
        name = lambda d: res.upstream if d.is_dynamic and res.upstream else d.upstream_model  # noqa: E731
        if view.is_warm(first, name(first)) is not False:
            return []
        for d in ordered[1:]:
            if view.is_warm(d, name(d)):
                ordered.remove(d)
                ordered.insert(0, d)
                trace.append(f"warm: {first.id} is cold, {d.id} is warm; warming {first.id} up in the background")
                return [first]
        trace.append(f"warm: {first.id} is cold and no other candidate is known warm")
        return []

    def _prefer_cached(self, candidates: list[Deployment], ordered: list[Deployment], view: StateTable,
                       facts: RequestFacts, trace: list[str]) -> Placement:
        """LiteLLM's ``prompt_caching`` check under another strategy: the deployment that
        holds the longest cached match (within the load bound) goes first."""
        placement = self._cache_aware.place(candidates, view, self._rng, facts.prompt)
        if placement.by == "prefix":
            first = placement.ranked[0][0]
            if ordered[0] is not first:
                ordered.remove(first)
                ordered.insert(0, first)
            trace.append(f"prompt_caching: {placement.reason}")
        return placement

    def _apply_session(self, session: str, candidates: list[Deployment], ordered: list[Deployment], view: StateTable,
                       placement: Placement | None, trace: list[str]) -> bool:
        """Session affinity: the session's deployment goes first while it is available and
        within the load bound; a new (or moved) session is placed by its cached prefix, else
        by consistent hashing of its id. The pin follows whichever deployment serves it."""
        label = f"session {session_key(session):08x}"
        pinned = view.sessions.get(session, time.time())
        chosen = placement if placement is not None and placement.by in ("prefix", "ring") else None
        by_id = None
        if len(candidates) > 1 and chosen is None:
            by_id = self._cache_aware.place(candidates, view, self._rng, None, session_key(session))
        bounds = chosen or by_id
        why = None
        if pinned is not None:
            dep = next((d for d in ordered if d.id == pinned), None)
            if dep is not None and (bounds is None or bounds.within(dep.id)):
                if ordered[0] is not dep:
                    ordered.remove(dep)
                    ordered.insert(0, dep)
                trace.append(f"{label}: stays on {dep.id}")
                return True
            why = "is over the load bound" if dep is not None else "is unavailable (cooling down or failed)"
        if chosen is not None:
            first = chosen.ranked[0][0]
            how = "follows its cached prefix" if chosen.by == "prefix" else "placed with its first message"
        elif by_id is not None:
            first, how = by_id.ranked[0][0], "placed by its id"
        else:
            first, how = ordered[0], "the only candidate"
        if ordered[0] is not first:
            ordered.remove(first)
            ordered.insert(0, first)
        trace.append(f"{label}: new, {how}: {first.id}" if why is None else f"{label}: {pinned} {why}; moves to {first.id} ({how})")
        return True

    # -- model metadata (the resolver's, which caches what the configuration fixes) ---------------

    def model_size(self, d: Deployment, view: StateTable) -> float | None:
        """Billions of parameters: from the name, else model_info, else the backend's metadata."""
        return self.resolver.model_size(d, view)

    def context_length(self, d: Deployment, view: StateTable) -> int | None:
        """Tokens of context: from model_info, else the backend's metadata."""
        return self.resolver.context_length(d, view)
