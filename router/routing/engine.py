"""The routing decision: which deployments may serve a request, in what order, and why.

``Engine.decide(facts, view)`` is synchronous and does no I/O. It walks the
seed's hierarchy to find the candidates —

1. exact: model_list name, deployment id, ``model_group_alias``, ``exact_matches``
   (an ``exact_matches`` entry for a model_list name puts its provider's deployments
   of the group first, its fallback provider's next, the group's others last)
2. pattern: the policy's ``patterns`` (file order), then model_list wildcards
3. capability: ``X-Capability`` header, or the model named like a capability
4. size: a parameter count in the name, by ``model_size_routing``
5. default: ``default_provider``

— drops deployments over their ``rpm``/``tpm`` this minute, lets the load-
balancing strategy order the rest, then applies request-metadata rules and
warm-first routing, each of which may move a deployment to the front. Every step
leaves a line in the trace. Fallback chains (step 6) come with the reliability work.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass, field
from router.config import Config
from router.domain import Deployment, RequestFacts, RouteDecision
from router.errors import BadRequest, NoCapableDeployment, RateLimited
from router.policy import Capability
from router.routing import strategies
from router.routing.patterns import PatternIndex
from router.routing.rules import Condition, parse_size, size_from_name
from router.state import StateTable

MAX_MODEL_NAME = 512  # longer names are rejected before any regex runs

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
}
_CONTEXT_KEYS = ("max_input_tokens", "context_length", "context_window", "num_ctx", "max_tokens")
_SIZE_KEYS = ("parameter_size", "model_size", "parameters", "params")


@dataclass(slots=True)
class FallbackPlan:
    """Deployments to try after the decision's own, with the upstream name for each,
    and the chain's retry settings (None: router_settings.num_retries applies)."""

    entries: list[tuple[Deployment, str]]
    retry_attempts: int | None = None
    retry_delay_ms: int | None = None
    trace: list[str] = field(default_factory=list)


@dataclass(slots=True)
class _Resolution:
    route: str
    group: str  # what strategy memo and per-group strategy choice key on
    candidates: list[Deployment]
    upstream: str | None = None
    matched: str = ""
    strategy: str | None = None  # canonical name chosen by the step, if any
    tail: list[Deployment] = field(default_factory=list)  # fallbacks kept after the ordered candidates
    movable: list[Deployment] = field(default_factory=list)  # tail members request metadata may bring forward


class Engine:
    def __init__(self, config: Config, rng: random.Random | None = None) -> None:
        self.config = config
        self._rng = rng or random.Random()
        m = config.mappings
        self.patterns = PatternIndex(m.patterns)
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
        self._by_upstream: dict[tuple[str, str], Deployment] = {}
        for d in config.deployments:
            if not d.is_dynamic:
                self._by_upstream.setdefault((d.provider, d.upstream_model), d)
        self._capabilities: dict[str, tuple[list[Deployment], list[Deployment], list[str]]] = {}
        self._static_size: dict[str, float | None] = {}
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
        res = self._resolve(facts, capability, view, trace)
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
        ranked = strategy.order(res.group, candidates, view, self._rng, facts) if len(candidates) > 1 else [(d, None) for d in candidates]
        ordered = [d for d, _ in ranked]
        if len(candidates) > 1:
            trace.append(f"strategy {name}: " + ", ".join(f"{d.id}={s}" if s is not None else d.id for d, s in ranked))
            self._demote_degraded(ordered, view, trace)
        route = res.route
        if ordered and self._apply_metadata(facts, res, ordered, view, trace):
            route = "metadata"
        warm_up = self._apply_warmth(res, ordered, view, trace) if ordered else []
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
        )

    def _resolve(self, facts: RequestFacts, capability: Capability | None, view: StateTable, trace: list[str]) -> _Resolution | None:
        cfg, model = self.config, facts.model
        if model is not None:
            res = self._exact(model, trace) or self._pattern(model, trace)
            if res is not None:
                if capability is not None:
                    trace.append(f"capability: X-Capability {capability.name!r} not needed, the model name decided")
                return res
        if capability is None and model is not None and model in cfg.mappings.capabilities:
            capability = cfg.mappings.capabilities[model]
            trace.append(f"capability: the model name {model!r} is a capability")
        if capability is not None:
            return self._capability(capability, view, trace)
        if model is not None:
            res = self._size(model, trace)
            if res is not None:
                return res
        default = cfg.mappings.default_provider
        if default and model is not None:
            trace.append(f"default: default_provider {default}")
            return self._on_provider("default", default, model, trace)
        trace.append("default: no default_provider configured" if not default else "default: no model name to send")
        return None

    def _exact(self, model: str, trace: list[str]) -> _Resolution | None:
        cfg = self.config
        group = cfg.groups.get(model)
        exact = cfg.mappings.exact_matches.get(model)
        if group and exact is not None:
            return self._exact_group(model, group, exact.provider, exact.fallback, trace)
        if group:
            trace.append(f"exact: model_list group {model!r} has {len(group)} deployment(s)")
            return _Resolution("exact", model, list(group))
        dep = cfg.by_id.get(model)
        if dep is not None:
            trace.append(f"id: {model!r} pins deployment {dep.id}")
            return _Resolution("id", model, [dep])
        alias = cfg.aliases.get(model)
        if alias:
            trace.append(f"alias: {model!r} -> {', '.join(d.id for d in alias)}")
            return _Resolution("alias", model, list(alias))
        exact = cfg.mappings.exact_matches.get(model)
        if exact is not None:
            trace.append(f"exact: exact_matches sends {model!r} to provider {exact.provider}")
            return self._on_provider("exact", exact.provider, model, trace, fallback=exact.fallback)
        trace.append(f"exact: no model_list name, deployment id, alias or exact match {model!r}")
        return None

    def _exact_group(self, model: str, group: tuple[Deployment, ...], provider: str, fallback: str | None,
                     trace: list[str]) -> _Resolution:
        """A model_list name that also has an exact_matches entry: the entry decides. Its
        provider's deployments of the group are the candidates (with the providers of the
        name's redundant_models split, which states that the name is shared), else that
        provider's catch-all; then its fallback provider's (likewise); then the group's
        other deployments, last."""
        def on(p: str) -> list[Deployment]:
            there = [d for d in group if d.provider == p]
            return there or [self._by_upstream.get((p, model)) or self.config.catchalls[p]]

        providers = [provider] + [p for p in self.config.mappings.redundant_models.get(model, {}) if p != provider]
        candidates: list[Deployment] = []
        for p in providers:
            candidates += [d for d in on(p) if d not in candidates]
        tail = [d for d in on(fallback) if d not in candidates] if fallback and fallback not in providers else []
        rest = [d for d in group if d not in candidates and d not in tail]
        split = f" and the redundant_models split over {', '.join(providers)}" if len(providers) > 1 else ""
        trace.append(f"exact: exact_matches sends model_list group {model!r} to provider {provider}{split}: "
                     + ", ".join(d.id for d in candidates))
        if tail:
            trace.append(f"exact: then fallback provider {fallback}: {', '.join(d.id for d in tail)}")
        if rest:
            trace.append(f"exact: then the group's other deployments: {', '.join(d.id for d in rest)}")
        upstream = model if any(d.is_dynamic for d in candidates + tail) else None
        return _Resolution("exact", model, candidates, upstream, tail=tail + rest, movable=rest)

    def _pattern(self, model: str, trace: list[str]) -> _Resolution | None:
        rule = self.patterns.first_match(model)
        if rule is not None:
            trace.append(f"pattern: {rule.shown!r} matches -> provider {rule.provider}")
            return self._on_provider("pattern", rule.provider, model, trace, matched=rule.shown, fallback=rule.fallback)
        if self.config.mappings.patterns:
            trace.append(f"pattern: none of {len(self.config.mappings.patterns)} patterns match")
        for wildcard, wdep in self.config.wildcards:
            groups = wildcard.match(model)
            if groups is not None:
                upstream = wdep.upstream_model
                for part in groups:
                    upstream = upstream.replace("*", part, 1)
                trace.append(f"wildcard: model_list {wdep.wildcard!r} matches -> {wdep.id} as {upstream!r}")
                return _Resolution("wildcard", wdep.wildcard or model, [wdep], upstream, wdep.wildcard or "")
        return None

    def _capability_members(self, cap: Capability) -> tuple[list[Deployment], list[Deployment], list[str]]:
        """The static part of a capability, computed once: its preferred models' deployments
        on its providers (else every deployment of those providers), its fallback
        provider's deployments, and the trace lines explaining what was left out."""
        cfg = self.config
        notes: list[str] = []
        found: list[Deployment] = []
        for name in cap.preferred_models:
            deps = cfg.groups.get(name) or ((cfg.by_id[name],) if name in cfg.by_id else ()) or \
                tuple(d for d in cfg.deployments if d.upstream_model == name and not d.is_dynamic)
            if not deps:
                notes.append(f"capability {cap.name}: preferred model {name!r} is not configured")
            found += [d for d in deps if d not in found]
        providers = ([cap.provider] if cap.provider else []) + list(cap.providers)
        if found and providers:
            for d in found:
                if d.provider not in providers:
                    notes.append(f"capability {cap.name}: {d.id} is not on {', '.join(providers)}")
            found = [d for d in found if d.provider in providers]
        if not found:  # no preferred model deployed: any deployment on the capability's providers
            found = [d for d in cfg.deployments if d.provider in providers and not d.is_dynamic]
        tail = [d for d in cfg.deployments if cap.fallback and d.provider == cap.fallback and not d.is_dynamic and d not in found]
        return found, tail, notes

    def _capability(self, cap: Capability, view: StateTable, trace: list[str]) -> _Resolution:
        members = self._capabilities.get(cap.name)
        if members is None:
            members = self._capabilities[cap.name] = self._capability_members(cap)
        found, tail, notes = members
        trace += notes
        kept, excluded = [], []
        for d in found:
            reason = self._unfit(cap, d, view)
            if reason:
                excluded.append(f"{d.id}: {reason}")
                trace.append(f"capability {cap.name}: {d.id} excluded ({reason})")
            else:
                kept.append(d)
        strategy = strategies.canonical(cap.routing_strategy or "") or None
        tail = [d for d in tail if d not in kept]
        if not kept and not tail:
            raise NoCapableDeployment(f"No deployment satisfies capability {cap.name!r}"
                                      + (f" ({'; '.join(excluded)})." if excluded else "."))
        if not kept:
            trace.append(f"capability {cap.name}: no candidate left; fallback provider {cap.fallback}")
            kept, tail = tail, []
        else:
            trace.append(f"capability {cap.name}: candidates {', '.join(d.id for d in kept)}")
        return _Resolution("capability", cap.name, kept, matched=cap.name, strategy=strategy, tail=tail)

    def _unfit(self, cap: Capability, d: Deployment, view: StateTable) -> str | None:
        if cap.min_model_size is not None:
            size = self.model_size(d, view)
            if size is None:
                return f"model size unknown, needs >= {cap.min_model_size:g}B"
            if size < cap.min_model_size:
                return f"{size:g}B < {cap.min_model_size:g}B"
        if cap.min_context is not None:
            ctx = self.context_length(d, view)
            if ctx is None:
                return f"context length unknown, needs >= {cap.min_context}"
            if ctx < cap.min_context:
                return f"context {ctx} < {cap.min_context}"
        return None

    def _size(self, model: str, trace: list[str]) -> _Resolution | None:
        size = size_from_name(model)
        rules = self.config.mappings.model_size_routing
        if size is None or not rules:
            if rules:
                trace.append(f"size: no parameter count in {model!r}")
            return None
        for rule in rules:
            if rule.size.contains(size):
                trace.append(f"size: {size:g}B is in {rule.text!r} -> provider {rule.provider}")
                return self._on_provider("size", rule.provider, model, trace, matched=rule.text, fallback=rule.fallback)
        trace.append(f"size: {size:g}B is in no model_size_routing range")
        return None

    def _on_provider(self, route: str, provider: str, model: str, trace: list[str], *, matched: str = "",
                     fallback: str | None = None) -> _Resolution:
        """``model`` on ``provider``: its configured deployment there, else the provider's
        catch-all; the same for the fallback provider, kept after the ordered candidates.
        (``upstream`` applies to catch-alls only; configured deployments keep their name.)"""
        def on(p: str) -> Deployment:
            return self._by_upstream.get((p, model)) or self.config.catchalls[p]

        dep = on(provider)
        if not dep.is_dynamic:
            trace.append(f"{route}: provider {provider} serves {model!r} as deployment {dep.id}")
        tail = [on(fallback)] if fallback and fallback != provider else []
        return _Resolution(route, dep.id, [dep], model, matched, tail=tail)

    # -- fallbacks (step 6) ---------------------------------------------------------------------

    def target_split(self, decision: RouteDecision) -> list[float] | None:
        """The share of traffic each of ``decision.candidates`` should get under the
        decision's strategy (None: an even split), for the effectiveness metric."""
        target = getattr(self._strategies.get(decision.strategy), "target", None)
        return target(decision.candidates) if target is not None else None

    def fallbacks(self, decision: RouteDecision, facts: RequestFacts, view: StateTable,
                  failed_providers: set[str], context_overflow: bool = False) -> FallbackPlan:
        """Where to go once the decision's own candidates failed: LiteLLM's
        ``fallbacks`` (or ``context_window_fallbacks`` after a context overflow) for the
        model group, then the policy's ``fallback_chains`` — the chain named like the
        capability / group / alias, else ``default``. Steps whose condition does not
        hold are skipped; a provider step uses the requested model's deployment on
        that provider, or the provider's catch-all when the model was routed by name
        (pattern, size, default, exact_matches), or any of its deployments for a capability
        request (a task, not a model). Computed only after a failure."""
        trace: list[str] = []
        entries: list[tuple[Deployment, str]] = []
        group = facts.model or decision.matched
        table = self.config.router.context_window_fallbacks if context_overflow else self.config.router.fallbacks
        for name in table.get(group, ()) if group else ():
            res = self._exact(name, []) or self._pattern(name, [])
            if res is None:
                trace.append(f"fallback: {name!r} (from {'context_window_fallbacks' if context_overflow else 'fallbacks'}) routes nowhere")
                continue
            for d in res.candidates + res.tail:
                entries.append((d, res.upstream if d.is_dynamic and res.upstream else d.upstream_model))
            trace.append(f"fallback: {group!r} -> {name!r} ({', '.join(d.id for d in res.candidates)})")
        if context_overflow:
            return FallbackPlan(entries, trace=trace)
        chains = self.config.mappings.fallback_chains
        chain = next((chains[n] for n in (decision.matched, group) if n and n in chains), None) or chains.get("default")
        if chain is None:
            return FallbackPlan(entries, trace=trace)
        size = self._request_size(decision, view)
        for step in chain.steps:
            if not self._step_holds(step.condition, size, failed_providers, view):
                trace.append(f"chain {chain.name}: {step.rank} {step.provider} skipped ({step.condition} does not hold)")
                continue
            found = self._on_step(step.provider, step.preferred_model, decision)
            if not found:
                trace.append(f"chain {chain.name}: {step.rank} {step.provider} has no deployment of this model")
            entries += found
        trace.append(f"chain {chain.name}: " + (", ".join(d.id for d, _ in entries) or "nothing to try"))
        return FallbackPlan(entries, chain.retry_attempts, chain.retry_delay_ms, trace)

    def _request_size(self, decision: RouteDecision, view: StateTable) -> float | None:
        if decision.upstream_model:
            size = size_from_name(decision.upstream_model)
            if size is not None:
                return size
        first = (decision.candidates or decision.last_resort or (None,))[0]
        return self.model_size(first, view) if first is not None else None

    def _step_holds(self, cond: Condition, size: float | None, failed: set[str], view: StateTable) -> bool:
        if cond.subject == "always":
            return True
        if cond.subject == "unavailable":
            provider = cond.value
            deps = [d for d in self.config.deployments if d.provider == provider]
            return provider in failed or not any(view.available(d) and not view.server_down(d) for d in deps)
        if cond.subject == "model_size":
            return size is not None and _compare(size, cond.op, cond.value)
        return False

    def _on_step(self, provider: str, preferred: str | None, decision: RouteDecision) -> list[tuple[Deployment, str]]:
        cfg = self.config
        if preferred:
            deps = [d for d in cfg.groups.get(preferred, ()) if d.provider == provider]
            configured = self._by_upstream.get((provider, preferred))
            if configured and configured not in deps:
                deps.append(configured)
            return [(d, d.upstream_model) for d in deps] or [(cfg.catchalls[provider], preferred)]
        known = decision.candidates + decision.last_resort
        same = [d for d in known if d.provider == provider and not d.is_dynamic]
        if same:
            return [(d, d.upstream_model) for d in same]
        name = decision.upstream_model or (known[0].upstream_model if known else None)
        if name:
            configured = self._by_upstream.get((provider, name))
            if configured is not None:
                return [(configured, configured.upstream_model)]
            if decision.upstream_model:  # routed by name: the provider may serve that name too
                return [(cfg.catchalls[provider], decision.upstream_model)]
        if decision.resolved == "capability":  # a task, not a model: any deployment of the provider will do
            return [(d, d.upstream_model) for d in cfg.deployments if d.provider == provider and not d.is_dynamic]
        return []

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

    def _apply_metadata(self, facts: RequestFacts, res: _Resolution, ordered: list[Deployment], view: StateTable,
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
                configured = self._by_upstream.get((rule.provider, res.upstream))
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
        return _compare(actual, cond.op, cond.value)

    def _apply_warmth(self, res: _Resolution, ordered: list[Deployment], view: StateTable, trace: list[str]) -> list[Deployment]:
        """prefer_warm_providers: if the pick is known cold and another candidate is
        known warm, serve from the warm one and warm the cold one up in the background."""
        if self.config.mappings.first_request_strategy != "prefer_warm_providers" or len(ordered) < 2:
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

    # -- model metadata ------------------------------------------------------------------------

    def model_size(self, d: Deployment, view: StateTable) -> float | None:
        """Billions of parameters: from the name, else model_info, else the backend's metadata."""
        if d.id not in self._static_size:
            self._static_size[d.id] = _static_size(d)
        size = self._static_size[d.id]
        return size if size is not None else view.model_size(d, d.upstream_model)

    def context_length(self, d: Deployment, view: StateTable) -> int | None:
        for key in _CONTEXT_KEYS:
            value = d.model_info.get(key)
            if isinstance(value, int) and not isinstance(value, bool):
                return value
        return view.context_length(d, d.upstream_model)


def _static_size(d: Deployment) -> float | None:
    size = size_from_name(d.upstream_model) or size_from_name(d.model_name)
    if size is not None:
        return size
    for key in _SIZE_KEYS:
        if key in d.model_info:
            try:
                return parse_size(d.model_info[key])
            except ValueError:
                pass
    return None


def _compare(actual: float | bool, op: str, value: float | bool) -> bool:
    return {
        "==": actual == value, "!=": actual != value, ">": actual > value,
        ">=": actual >= value, "<": actual < value, "<=": actual <= value,
    }[op]

