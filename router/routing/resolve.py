"""Finding the candidates: the deployments that may serve a request, before any
filtering or ordering.

``Resolver.resolve(facts, capability, view, trace)`` walks the seed's hierarchy and
stops at the first step that names deployments —

1. exact: model_list name, deployment id, ``model_group_alias``, ``exact_matches``
   (an ``exact_matches`` entry for a model_list name puts its provider's deployments
   of the group first, its fallback provider's next, the group's others last)
2. pattern: the policy's ``patterns`` (file order), then model_list wildcards
3. capability: ``X-Capability`` header, or the model named like a capability
4. size: a parameter count in the name, by ``model_size_routing``
5. default: ``default_provider``

— and returns a ``Resolution``: the candidates, the fallback provider's deployments
kept after them, and what the engine's later steps key on (group, strategy,
upstream name). The engine (``engine.py``) filters and orders the candidates; the
fallback chains (``fallbacks.py``) look names up here too. Synchronous, no I/O:
what depends only on the configuration (the pattern index, deployments by upstream
name, a capability's members, sizes from names and model_info) is computed once.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from router.config import Config
from router.domain import Deployment, RequestFacts
from router.errors import NoCapableDeployment
from router.policy import Capability
from router.routing import strategies
from router.routing.patterns import PatternIndex
from router.routing.rules import parse_size, size_from_name
from router.state import StateTable

MAX_MODEL_NAME = 512  # longer names are rejected before any regex runs

_CONTEXT_KEYS = ("max_input_tokens", "context_length", "context_window", "num_ctx", "max_tokens")
_SIZE_KEYS = ("parameter_size", "model_size", "parameters", "params")


@dataclass(slots=True)
class Resolution:
    """The candidates one step of the hierarchy found, and how it found them."""

    route: str
    group: str  # what strategy memo and per-group strategy choice key on
    candidates: list[Deployment]
    upstream: str | None = None
    matched: str = ""
    strategy: str | None = None  # canonical name chosen by the step, if any
    tail: list[Deployment] = field(default_factory=list)  # fallbacks kept after the ordered candidates
    movable: list[Deployment] = field(default_factory=list)  # tail members request metadata may bring forward


class Resolver:
    """The hierarchy's lookups over one ``Config``, with what they need precomputed."""

    __slots__ = ("config", "patterns", "by_upstream", "_capabilities", "_static_size")

    def __init__(self, config: Config) -> None:
        self.config = config
        self.patterns = PatternIndex(config.mappings.patterns)
        # (provider, upstream model) -> its configured deployment: a name on a provider
        self.by_upstream: dict[tuple[str, str], Deployment] = {}
        for d in config.deployments:
            if not d.is_dynamic:
                self.by_upstream.setdefault((d.provider, d.upstream_model), d)
        self._capabilities: dict[str, tuple[list[Deployment], list[Deployment], list[str]]] = {}
        self._static_size: dict[str, float | None] = {}

    # -- the hierarchy ----------------------------------------------------------------------

    def resolve(self, facts: RequestFacts, capability: Capability | None, view: StateTable, trace: list[str]) -> Resolution | None:
        """The first step of the hierarchy that finds candidates for ``facts``, or ``None``
        (no route). ``capability`` is the ``X-Capability`` header's, already looked up."""
        cfg, model = self.config, facts.model
        if model is not None:
            res = self.exact(model, trace) or self.pattern(model, trace)
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

    def exact(self, model: str, trace: list[str]) -> Resolution | None:
        """Step 1: ``model`` as a model_list name, deployment id, alias or exact_matches entry."""
        cfg = self.config
        group = cfg.groups.get(model)
        exact = cfg.mappings.exact_matches.get(model)
        if group and exact is not None:
            return self._exact_group(model, group, exact.provider, exact.fallback, trace)
        if group:
            trace.append(f"exact: model_list group {model!r} has {len(group)} deployment(s)")
            return Resolution("exact", model, list(group))
        dep = cfg.by_id.get(model)
        if dep is not None:
            trace.append(f"id: {model!r} pins deployment {dep.id}")
            return Resolution("id", model, [dep])
        alias = cfg.aliases.get(model)
        if alias:
            trace.append(f"alias: {model!r} -> {', '.join(d.id for d in alias)}")
            return Resolution("alias", model, list(alias))
        exact = cfg.mappings.exact_matches.get(model)
        if exact is not None:
            trace.append(f"exact: exact_matches sends {model!r} to provider {exact.provider}")
            return self._on_provider("exact", exact.provider, model, trace, fallback=exact.fallback)
        trace.append(f"exact: no model_list name, deployment id, alias or exact match {model!r}")
        return None

    def _exact_group(self, model: str, group: tuple[Deployment, ...], provider: str, fallback: str | None,
                     trace: list[str]) -> Resolution:
        """A model_list name that also has an exact_matches entry: the entry decides. Its
        provider's deployments of the group are the candidates (with the providers of the
        name's redundant_models split, which states that the name is shared), else that
        provider's catch-all; then its fallback provider's (likewise); then the group's
        other deployments, last."""
        def on(p: str) -> list[Deployment]:
            there = [d for d in group if d.provider == p]
            return there or [self.by_upstream.get((p, model)) or self.config.catchalls[p]]

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
        return Resolution("exact", model, candidates, upstream, tail=tail + rest, movable=rest)

    def pattern(self, model: str, trace: list[str]) -> Resolution | None:
        """Step 2: the first policy pattern ``model`` matches, else the first model_list wildcard."""
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
                return Resolution("wildcard", wdep.wildcard or model, [wdep], upstream, wdep.wildcard or "")
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

    def _capability(self, cap: Capability, view: StateTable, trace: list[str]) -> Resolution:
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
        return Resolution("capability", cap.name, kept, matched=cap.name, strategy=strategy, tail=tail)

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

    def _size(self, model: str, trace: list[str]) -> Resolution | None:
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
                     fallback: str | None = None) -> Resolution:
        """``model`` on ``provider``: its configured deployment there, else the provider's
        catch-all; the same for the fallback provider, kept after the ordered candidates.
        (``upstream`` applies to catch-alls only; configured deployments keep their name.)"""
        def on(p: str) -> Deployment:
            return self.by_upstream.get((p, model)) or self.config.catchalls[p]

        dep = on(provider)
        if not dep.is_dynamic:
            trace.append(f"{route}: provider {provider} serves {model!r} as deployment {dep.id}")
        tail = [on(fallback)] if fallback and fallback != provider else []
        return Resolution(route, dep.id, [dep], model, matched, tail=tail)

    # -- model metadata ------------------------------------------------------------------------

    def model_size(self, d: Deployment, view: StateTable) -> float | None:
        """Billions of parameters: from the name, else model_info, else the backend's metadata."""
        if d.id not in self._static_size:
            self._static_size[d.id] = _static_size(d)
        size = self._static_size[d.id]
        return size if size is not None else view.model_size(d, d.upstream_model)

    def context_length(self, d: Deployment, view: StateTable) -> int | None:
        """Tokens of context: from model_info, else the backend's metadata."""
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

