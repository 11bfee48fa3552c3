"""The routing policy file (the seed's ``model-mappings.yaml``) as frozen objects.

``load_policy(src)`` validates every section: provider names, regexes, strategy
names, size ranges and rule conditions, each error at its file and line.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Callable, Mapping

from router.regexcheck import backtracking_problem, searched_form
from router.checks import check_url, get, unknown_keys
from router.backends import KINDS, WIRE_FORMATS
from router.domain import Provider
from router.routing import strategies
from router.routing.strategies.cache_aware import CACHE_AWARE_ARGS, strategy_args
from router.routing.rules import Condition, SizeRange, parse_condition, parse_size, parse_size_range
from router.routing.spill import parse_spill
from router.yamlsource import Path, Source


@dataclass(frozen=True, slots=True)
class ExactMatch:
    model: str
    provider: str
    priority: str = "primary"
    fallback: str | None = None
    description: str = ""


@dataclass(frozen=True, slots=True)
class PatternRule:
    pattern: re.Pattern[str]
    provider: str
    fallback: str | None = None
    description: str = ""
    text: str = ""  # the pattern as written (``pattern`` is its searched form: see ``regexcheck.searched_form``)

    @property
    def shown(self) -> str:
        return self.text or self.pattern.pattern


@dataclass(frozen=True, slots=True)
class Capability:
    name: str
    description: str = ""
    preferred_models: tuple[str, ...] = ()
    provider: str | None = None
    providers: tuple[str, ...] = ()
    fallback: str | None = None
    min_model_size: float | None = None
    min_context: int | None = None
    routing_strategy: str | None = None


@dataclass(frozen=True, slots=True)
class StrategySpec:
    name: str
    description: str = ""
    applicable_to: tuple[str, ...] = ()
    weight_factors: Mapping[str, float] = field(default_factory=lambda: MappingProxyType({}))
    measure: str | None = None
    reevaluate_seconds: float | None = None  # latency-based: how often the ranking is recomputed
    explore: float | None = None  # latency-based: share of requests sent to a non-best deployment
    args: Mapping[str, float] = field(default_factory=lambda: MappingProxyType({}))  # cache-aware: load_factor, min_match_tokens, capacity_tokens


@dataclass(frozen=True, slots=True)
class ChainStep:
    provider: str
    rank: str
    condition: Condition
    preferred_model: str | None = None
    spill_when: Condition | None = None  # also tried first when the local candidates are this busy (router.routing.spill)


@dataclass(frozen=True, slots=True)
class FallbackChain:
    name: str
    steps: tuple[ChainStep, ...]
    description: str = ""
    retry_attempts: int | None = None
    retry_delay_ms: int | None = None


@dataclass(frozen=True, slots=True)
class SizeRule:
    size: SizeRange
    text: str
    provider: str
    fallback: str | None = None
    reason: str = ""


@dataclass(frozen=True, slots=True)
class MetadataRule:
    name: str
    provider: str
    condition: Condition


@dataclass(frozen=True, slots=True)
class Mappings:
    providers: Mapping[str, Provider] = field(default_factory=lambda: MappingProxyType({}))
    exact_matches: Mapping[str, ExactMatch] = field(default_factory=lambda: MappingProxyType({}))
    patterns: tuple[PatternRule, ...] = ()
    capabilities: Mapping[str, Capability] = field(default_factory=lambda: MappingProxyType({}))
    load_balancing: Mapping[str, StrategySpec] = field(default_factory=lambda: MappingProxyType({}))
    redundant_models: Mapping[str, Mapping[str, float]] = field(default_factory=lambda: MappingProxyType({}))
    fallback_chains: Mapping[str, FallbackChain] = field(default_factory=lambda: MappingProxyType({}))
    model_size_routing: tuple[SizeRule, ...] = ()
    request_metadata_routing: tuple[MetadataRule, ...] = ()
    default_provider: str | None = None
    first_request_strategy: str | None = None
    warm_check_timeout_ms: int = 100
    rate_limited_fallback_enabled: bool = False
    rate_limited_fallback_seconds: float = 60.0
    error_routing_enabled: bool = False
    error_threshold: int = 3
    error_cooldown_seconds: float = 300.0



_MAPPING_KEYS = {
    "providers", "exact_matches", "patterns", "capabilities", "load_balancing", "redundant_models",
    "fallback_chains", "model_size_routing", "request_metadata_routing", "first_request_routing",
    "rate_limited_fallback", "error_based_routing", "default_provider",
}
_RANKS = ("primary", "secondary", "tertiary", "quaternary", "quinary")


def _provider_ref(src: Source, m: Mapping[str, Any], key: str, path: Path, providers: Mapping[str, Provider], required: bool = False) -> str | None:
    name = get(src, m, key, path, "str", required=required)
    if name is not None and name not in providers:
        src.error(path + (key,), f"unknown provider {name!r} (known: {', '.join(sorted(providers)) or 'none defined'})")
        return None
    return name


def _parse_with(src: Source, path: Path, value: Any, parser: Callable[[Any], Any]) -> Any:
    try:
        return parser(value)
    except ValueError as exc:
        src.error(path, str(exc))
        return None
    except OverflowError:  # min_model_size: 10**400
        src.error(path, f"number out of range: {str(value)[:40]}...")
        return None


def _providers(src: Source, data: Mapping[str, Any]) -> dict[str, Provider]:
    out: dict[str, Provider] = {}
    raw = get(src, data, "providers", (), "map", default={})
    for name, spec in raw.items():
        p: Path = ("providers", name)
        if not isinstance(spec, dict):
            src.error(p, "must be a mapping with api_base and type")
            continue
        unknown_keys(src, spec, p, {"api_base", "type", "kind", "description"})
        kind = spec.get("type", spec.get("kind", name))
        if not isinstance(kind, str) or kind not in WIRE_FORMATS:
            src.error(p + ("type",), f"unknown provider type {kind!r} (known: {', '.join(sorted(WIRE_FORMATS))})")
            continue
        cloud = KINDS[kind].cloud
        if "api_base" not in spec and cloud is not None and cloud.base:  # a hosted API: where LiteLLM would send it
            base = next((os.environ[v] for v in cloud.base_env if os.environ.get(v)), cloud.base)
            base = check_url(src, p + ("type",), base, WIRE_FORMATS[kind])
            hosted = True
        else:
            base = check_url(src, p + ("api_base",), get(src, spec, "api_base", p, "str", required=True), WIRE_FORMATS[kind])
            hosted = KINDS[kind].hosted
        if base:
            out[name] = Provider(name, kind, base, get(src, spec, "description", p, "str", default=""), hosted)
    return out


def load_policy(src: Source) -> Mappings:
    data = src.data if isinstance(src.data, dict) else {}
    if src.data is not None and not isinstance(src.data, dict):
        src.error((), "the policy file must be a mapping")
    unknown_keys(src, data, (), _MAPPING_KEYS)
    providers = _providers(src, data)

    exact: dict[str, ExactMatch] = {}
    for model, spec in get(src, data, "exact_matches", (), "map", default={}).items():
        p: Path = ("exact_matches", model)
        if not isinstance(spec, dict):
            src.error(p, "must be a mapping with provider")
            continue
        unknown_keys(src, spec, p, {"provider", "priority", "fallback", "description"})
        prov = _provider_ref(src, spec, "provider", p, providers, required=True)
        if prov:
            exact[model] = ExactMatch(model, prov, get(src, spec, "priority", p, "str", default="primary"),
                                      _provider_ref(src, spec, "fallback", p, providers), get(src, spec, "description", p, "str", default=""))

    patterns: list[PatternRule] = []
    for i, spec in enumerate(get(src, data, "patterns", (), "list", default=[])):
        p = ("patterns", i)
        if not isinstance(spec, dict):
            src.error(p, "must be a mapping with pattern and provider")
            continue
        unknown_keys(src, spec, p, {"pattern", "provider", "fallback", "description"})
        text = get(src, spec, "pattern", p, "str", required=True)
        prov = _provider_ref(src, spec, "provider", p, providers, required=True)
        regex = None
        if text is not None:
            try:
                re.compile(text)
                regex = re.compile(searched_form(text))  # what is matched: the same names, fewer loops
            except (re.error, OverflowError, RecursionError) as exc:  # "a{4294967296}", "((((...))))" 1000 deep
                src.error(p + ("pattern",), f"bad regex {text[:200]!r}: {exc}")
            else:
                problem = backtracking_problem(regex.pattern)
                if problem:
                    src.error(p + ("pattern",), f"refused regex {text[:200]!r}: {problem}")
                    regex = None
        if regex is not None and prov:
            patterns.append(PatternRule(regex, prov, _provider_ref(src, spec, "fallback", p, providers),
                                        get(src, spec, "description", p, "str", default=""), text))

    capabilities: dict[str, Capability] = {}
    for name, spec in get(src, data, "capabilities", (), "map", default={}).items():
        p = ("capabilities", name)
        if not isinstance(spec, dict):
            src.error(p, "must be a mapping")
            continue
        unknown_keys(src, spec, p, {"description", "preferred_models", "provider", "providers", "fallback", "min_model_size", "min_context", "routing_strategy"})
        strategy = get(src, spec, "routing_strategy", p, "str")
        if strategy is not None and strategies.canonical(strategy) is None:
            src.error(p + ("routing_strategy",), f"unknown strategy {strategy!r} (known: {', '.join(sorted(strategies.STRATEGY_NAMES))})")
        provs = get(src, spec, "providers", p, "strlist", default=())
        for j, prov in enumerate(provs):
            if prov not in providers:
                src.error(p + ("providers", j), f"unknown provider {prov!r}")
        min_size = spec.get("min_model_size")
        capabilities[name] = Capability(
            name=name,
            description=get(src, spec, "description", p, "str", default=""),
            preferred_models=get(src, spec, "preferred_models", p, "strlist", default=()),
            provider=_provider_ref(src, spec, "provider", p, providers),
            providers=provs,
            fallback=_provider_ref(src, spec, "fallback", p, providers),
            min_model_size=_parse_with(src, p + ("min_model_size",), min_size, parse_size) if min_size is not None else None,
            min_context=get(src, spec, "min_context", p, "int"),
            routing_strategy=strategy,
        )

    balancing: dict[str, StrategySpec] = {}
    for name, spec in get(src, data, "load_balancing", (), "map", default={}).items():
        p = ("load_balancing", name)
        if strategies.canonical(name) is None:
            src.error(p, f"unknown strategy {name!r} (known: {', '.join(sorted(strategies.STRATEGY_NAMES))})")
            continue
        spec = spec if isinstance(spec, dict) else {}
        unknown_keys(src, spec, p, {"description", "applicable_to", "weight_factors", "measure", "reevaluate_seconds", "explore",
                                    "load_factor", "min_match_tokens", "capacity_tokens"})
        factors: dict[str, float] = {}
        for j, item in enumerate(get(src, spec, "weight_factors", p, "list", default=[])):
            if isinstance(item, dict) and len(item) == 1 and isinstance(next(iter(item.values())), (int, float)):
                factors.update(item)
            else:
                src.error(p + ("weight_factors", j), "must be {factor: number}")
        explore = get(src, spec, "explore", p, "num")
        if explore is not None and explore > 1:
            src.error(p + ("explore",), "must be a share between 0 and 1")
        balancing[name] = StrategySpec(name, get(src, spec, "description", p, "str", default=""),
                                       get(src, spec, "applicable_to", p, "strlist", default=()),
                                       MappingProxyType(factors), get(src, spec, "measure", p, "str"),
                                       get(src, spec, "reevaluate_seconds", p, "pos"), explore,
                                       MappingProxyType(strategy_args(src, {k: v for k, v in spec.items() if k in CACHE_AWARE_ARGS}, p, False)))

    redundant: dict[str, Mapping[str, float]] = {}
    for model, spec in get(src, data, "redundant_models", (), "map", default={}).items():
        p = ("redundant_models", model)
        entries = spec.get("providers") if isinstance(spec, dict) else None
        if not isinstance(entries, list):
            src.error(p, "must be {providers: [{provider, weight}, ...]}")
            continue
        weights: dict[str, float] = {}
        for j, e in enumerate(entries):
            q = p + ("providers", j)
            if not isinstance(e, dict):
                src.error(q, "must be {provider: name, weight: number}")
                continue
            prov = _provider_ref(src, e, "provider", q, providers, required=True)
            w = get(src, e, "weight", q, "num", required=True)
            if prov and w is not None:
                weights[prov] = w
        redundant[model] = MappingProxyType(weights)

    chains: dict[str, FallbackChain] = {}
    for name, spec in get(src, data, "fallback_chains", (), "map", default={}).items():
        p = ("fallback_chains", name)
        if not isinstance(spec, dict):
            src.error(p, "must be a mapping with chain")
            continue
        unknown_keys(src, spec, p, {"description", "chain", "retry_attempts", "retry_delay_ms"})
        steps: list[ChainStep] = []
        for j, step in enumerate(get(src, spec, "chain", p, "list", required=True, default=[])):
            q = p + ("chain", j)
            if not isinstance(step, dict):
                src.error(q, "must be a mapping like {primary: provider, condition: ...}")
                continue
            rank = next((r for r in (*_RANKS, "provider") if r in step), None)
            if rank is None:
                src.error(q, f"needs one of {', '.join(_RANKS)} or provider naming a provider")
                continue
            unknown_keys(src, step, q, {rank, "condition", "preferred_model", "spill_when"})
            prov = _provider_ref(src, step, rank, q, providers, required=True)
            cond = _parse_with(src, q + ("condition",), step.get("condition"), parse_condition)
            if cond is not None and cond.subject == "unavailable" and cond.value not in providers:
                src.error(q + ("condition",), f"unknown provider {cond.value!r} in {step.get('condition')!r}")
            spill = None
            if "spill_when" in step:
                spill = _parse_with(src, q + ("spill_when",), get(src, step, "spill_when", q, "str", required=True), parse_spill)
                if spill is None:
                    continue
            if prov and cond is not None:
                steps.append(ChainStep(prov, rank, cond, get(src, step, "preferred_model", q, "str"), spill))
        chains[name] = FallbackChain(name, tuple(steps), get(src, spec, "description", p, "str", default=""),
                                     get(src, spec, "retry_attempts", p, "int"), get(src, spec, "retry_delay_ms", p, "int"))

    size_rules: list[SizeRule] = []
    for i, spec in enumerate(get(src, data, "model_size_routing", (), "list", default=[])):
        p = ("model_size_routing", i)
        if not isinstance(spec, dict):
            src.error(p, "must be {size, provider, fallback, reason}")
            continue
        unknown_keys(src, spec, p, {"size", "provider", "fallback", "reason"})
        text = get(src, spec, "size", p, "str", required=True)
        rng = _parse_with(src, p + ("size",), text, parse_size_range) if text else None
        prov = _provider_ref(src, spec, "provider", p, providers, required=True)
        if rng and prov:
            size_rules.append(SizeRule(rng, text, prov, _provider_ref(src, spec, "fallback", p, providers), get(src, spec, "reason", p, "str", default="")))

    meta_rules: list[MetadataRule] = []
    for name, spec in get(src, data, "request_metadata_routing", (), "map", default={}).items():
        p = ("request_metadata_routing", name)
        if not isinstance(spec, dict):
            src.error(p, "must be {provider, condition}")
            continue
        unknown_keys(src, spec, p, {"provider", "condition", "description"})
        prov = _provider_ref(src, spec, "provider", p, providers, required=True)
        cond = _parse_with(src, p + ("condition",), get(src, spec, "condition", p, "str", required=True), parse_condition)
        if prov and cond is not None:
            meta_rules.append(MetadataRule(name, prov, cond))

    fr = get(src, data, "first_request_routing", (), "map", default={})
    unknown_keys(src, fr, ("first_request_routing",), {"description", "strategy", "warm_check_timeout_ms"})
    first = get(src, fr, "strategy", ("first_request_routing",), "str")
    if first is not None and first not in ("prefer_warm_providers", "none"):
        src.error(("first_request_routing", "strategy"), f"unknown strategy {first!r} (known: prefer_warm_providers, none)")
    rl = get(src, data, "rate_limited_fallback", (), "map", default={})
    unknown_keys(src, rl, ("rate_limited_fallback",), {"description", "enabled", "fallback_duration_seconds"})
    eb = get(src, data, "error_based_routing", (), "map", default={})
    unknown_keys(src, eb, ("error_based_routing",), {"description", "enabled", "error_threshold", "cooldown_seconds"})

    return Mappings(
        providers=MappingProxyType(providers),
        exact_matches=MappingProxyType(exact),
        patterns=tuple(patterns),
        capabilities=MappingProxyType(capabilities),
        load_balancing=MappingProxyType(balancing),
        redundant_models=MappingProxyType(redundant),
        fallback_chains=MappingProxyType(chains),
        model_size_routing=tuple(size_rules),
        request_metadata_routing=tuple(meta_rules),
        default_provider=_provider_ref(src, data, "default_provider", (), providers),
        first_request_strategy=first,
        warm_check_timeout_ms=get(src, fr, "warm_check_timeout_ms", ("first_request_routing",), "int", default=100),
        rate_limited_fallback_enabled=get(src, rl, "enabled", ("rate_limited_fallback",), "bool", default=False),
        rate_limited_fallback_seconds=get(src, rl, "fallback_duration_seconds", ("rate_limited_fallback",), "num", default=60.0),
        error_routing_enabled=get(src, eb, "enabled", ("error_based_routing",), "bool", default=False),
        error_threshold=get(src, eb, "error_threshold", ("error_based_routing",), "int", default=3),
        error_cooldown_seconds=get(src, eb, "cooldown_seconds", ("error_based_routing",), "num", default=300.0),
    )
