"""Fallbacks: where a request goes once the decision's own candidates have failed.

LiteLLM's ``router_settings.fallbacks`` (or ``context_window_fallbacks`` after a
context overflow) for the model group come first, then the policy's
``fallback_chains`` — the chain named like the capability / group / alias, else
``default`` — step by step, each step kept only if its condition holds now.
Computed only after a failure (``Engine.fallbacks``, called by the proxy), never
on the per-request path; names are looked up with the same ``Resolver`` that
found the candidates, so a fallback model routes as it would if requested.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from router.config import Config
from router.domain import Deployment, RequestFacts, RouteDecision
from router.policy import FallbackChain
from router.routing import spill
from router.routing.resolve import Resolver
from router.routing.rules import Condition, compare, size_from_name
from router.state import StateTable


@dataclass(slots=True)
class FallbackPlan:
    """Deployments to try after the decision's own, with the upstream name for each,
    and the chain's retry settings (None: router_settings.num_retries applies)."""

    entries: list[tuple[Deployment, str]]
    retry_attempts: int | None = None
    retry_delay_ms: int | None = None
    trace: list[str] = field(default_factory=list)


class FallbackRules:
    """The fallback rules of one ``Config``, resolving names with its ``Resolver``."""

    __slots__ = ("config", "resolver", "spilling")

    def __init__(self, config: Config, resolver: Resolver) -> None:
        self.config = config
        self.resolver = resolver
        self.spilling = any(s.spill_when is not None for c in config.mappings.fallback_chains.values() for s in c.steps)

    def plan(self, decision: RouteDecision, facts: RequestFacts, view: StateTable,
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
            res = self.resolver.exact(name, []) or self.resolver.pattern(name, [])
            if res is None:
                trace.append(f"fallback: {name!r} (from {'context_window_fallbacks' if context_overflow else 'fallbacks'}) routes nowhere")
                continue
            for d in res.candidates + res.tail:
                entries.append((d, res.upstream if d.is_dynamic and res.upstream else d.upstream_model))
            trace.append(f"fallback: {group!r} -> {name!r} ({', '.join(d.id for d in res.candidates)})")
        if context_overflow:
            return FallbackPlan(entries, trace=trace)
        chain = self._chain(decision, group)
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

    def _chain(self, decision: RouteDecision, group: str | None) -> FallbackChain | None:
        """The policy's chain for this request: named like the capability / group / alias, else ``default``."""
        chains = self.config.mappings.fallback_chains
        return next((chains[n] for n in (decision.matched, group) if n and n in chains), None) or chains.get("default")

    def spills(self, decision: RouteDecision, facts: RequestFacts) -> bool:
        """Does this request's chain have a spill-over step? (The cheap check made per request.)"""
        if not self.spilling:
            return False
        chain = self._chain(decision, facts.model or decision.matched)
        return chain is not None and any(s.spill_when is not None for s in chain.steps)

    def spill(self, decision: RouteDecision, facts: RequestFacts, view: StateTable) -> FallbackPlan:
        """Spill-over (``router.routing.spill``): the chain steps whose ``spill_when`` holds
        for the decision's own candidates now, to be tried before them. Empty when no step's
        does (or every candidate is a spill target itself)."""
        chain = self._chain(decision, facts.model or decision.matched)
        entries: list[tuple[Deployment, str]] = []
        trace: list[str] = []
        if chain is None or not decision.candidates:
            return FallbackPlan(entries, trace=trace)
        loads = [spill.load_of(view, d) for d in decision.candidates]
        for step in chain.steps:
            if step.spill_when is None or not spill.holds(step.spill_when, loads):
                continue
            found = [(d, u) for d, u in self._on_step(step.provider, step.preferred_model, decision)
                     if d not in decision.candidates and view.available(d) and not view.server_down(d)]
            if found:
                entries += found
                trace.append(f"spill-over: {step.spill_when} ({spill.describe(step.spill_when, loads)}) -> "
                             f"chain {chain.name} {step.rank} {step.provider}: {', '.join(d.id for d, _ in found)}")
        return FallbackPlan(entries, trace=trace)

    def _request_size(self, decision: RouteDecision, view: StateTable) -> float | None:
        """The size ``model_size`` chain conditions test: the routed name's, else the first candidate's."""
        if decision.upstream_model:
            size = size_from_name(decision.upstream_model)
            if size is not None:
                return size
        first = (decision.candidates or decision.last_resort or (None,))[0]
        return self.resolver.model_size(first, view) if first is not None else None

    def _step_holds(self, cond: Condition, size: float | None, failed: set[str], view: StateTable) -> bool:
        """Whether a chain step's condition holds now (``failed``: providers this request already failed on)."""
        if cond.subject == "always":
            return True
        if cond.subject == "unavailable":
            provider = cond.value
            deps = [d for d in self.config.deployments if d.provider == provider]
            return provider in failed or not any(view.available(d) and not view.server_down(d) for d in deps)
        if cond.subject == "model_size":
            return size is not None and compare(size, cond.op, cond.value)
        return False

    def _on_step(self, provider: str, preferred: str | None, decision: RouteDecision) -> list[tuple[Deployment, str]]:
        """A chain step's deployments on ``provider``, each with the upstream name to send."""
        cfg = self.config
        if preferred:
            deps = [d for d in cfg.groups.get(preferred, ()) if d.provider == provider]
            configured = self.resolver.by_upstream.get((provider, preferred))
            if configured and configured not in deps:
                deps.append(configured)
            return [(d, d.upstream_model) for d in deps] or [(cfg.catchalls[provider], preferred)]
        known = decision.candidates + decision.last_resort
        same = [d for d in known if d.provider == provider and not d.is_dynamic]
        if same:
            return [(d, d.upstream_model) for d in same]
        name = decision.upstream_model or (known[0].upstream_model if known else None)
        if name:
            configured = self.resolver.by_upstream.get((provider, name))
            if configured is not None:
                return [(configured, configured.upstream_model)]
            if decision.upstream_model:  # routed by name: the provider may serve that name too
                return [(cfg.catchalls[provider], decision.upstream_model)]
        if decision.resolved == "capability":  # a task, not a model: any deployment of the provider will do
            return [(d, d.upstream_model) for d in cfg.deployments if d.provider == provider and not d.is_dynamic]
        return []
