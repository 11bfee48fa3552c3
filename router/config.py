"""Configuration: LiteLLM's ``config.yaml`` plus the routing policy file, as frozen objects.

``load_config(path, mappings_path)`` reads both files, validates every key it
knows, warns once for each key it does not act on, and returns a ``Config``. Any
error raises ``ConfigError`` carrying ``file:line: key.path: problem`` lines.
Nothing downstream reads the raw YAML.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Callable, Mapping
from urllib.parse import urlsplit

from router.domain import PREFIX_KINDS, WIRE_FORMATS, Deployment, Provider
from router.routing import strategies
from router.routing.rules import Condition, SizeRange, parse_condition, parse_size, parse_size_range
from router.yamlsource import Issue, Path, Source, load

DEFAULT_CONFIG = "config/litellm-unified.yaml"
DEFAULT_TIMEOUT = 600.0  # LiteLLM's default request timeout, seconds


class ConfigError(Exception):
    def __init__(self, issues: list[Issue]) -> None:
        super().__init__("\n".join(map(str, issues)))
        self.issues = issues


# ---------------------------------------------------------------------------
# Typed configuration objects
# ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RouterSettings:
    routing_strategy: str = "simple-shuffle"
    allowed_fails: int | None = None
    num_retries: int | None = None
    timeout: float | None = None
    cooldown_time: float | None = None
    enable_pre_call_checks: bool = False
    redis_host: str | None = None
    redis_port: int | None = None
    redis_password: str | None = field(default=None, repr=False)
    redis_url: str | None = field(default=None, repr=False)
    fallbacks: Mapping[str, tuple[str, ...]] = field(default_factory=lambda: MappingProxyType({}))
    context_window_fallbacks: Mapping[str, tuple[str, ...]] = field(default_factory=lambda: MappingProxyType({}))
    debug_router: bool = False
    max_connections_per_backend: int = 256


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


@dataclass(frozen=True, slots=True)
class ChainStep:
    provider: str
    rank: str
    condition: Condition
    preferred_model: str | None = None


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


@dataclass(frozen=True, slots=True)
class Config:
    file: str
    mappings_file: str | None
    deployments: tuple[Deployment, ...]
    groups: Mapping[str, tuple[Deployment, ...]]
    by_id: Mapping[str, Deployment]
    aliases: Mapping[str, tuple[Deployment, ...]]
    wildcards: tuple[tuple[re.Pattern[str], Deployment], ...]
    catchalls: Mapping[str, Deployment]  # provider name -> dynamic deployment
    router: RouterSettings
    mappings: Mappings
    master_key: str | None = field(default=None, repr=False)
    request_timeout: float = DEFAULT_TIMEOUT
    warnings: tuple[Issue, ...] = ()

    def summary(self) -> str:
        m = self.mappings
        return (
            f"{len(self.deployments)} deployments in {len(self.groups)} model groups, "
            f"{len(self.aliases)} aliases, {len(m.providers)} providers, {len(m.exact_matches)} exact matches, "
            f"{len(m.patterns)} patterns, {len(m.capabilities)} capabilities, {len(m.fallback_chains)} fallback chains"
        )


# ---------------------------------------------------------------------------
# Checked getters: each records an error at the key's line and returns a default
# ---------------------------------------------------------------------------

_MISSING = object()
_ENV_PREFIX = "os.environ/"
_NUMBER = re.compile(r"^\s*\d+(\.\d+)?\s*$")


def _get(src: Source, m: Mapping[str, Any], key: str, path: Path, kind: str, default: Any = None, required: bool = False) -> Any:
    """``m[key]`` checked against ``kind``; errors are recorded and ``default`` returned.

    LiteLLM's ``os.environ/NAME`` works for every key; an unset variable is an
    error, except for ``secret`` keys, where it only warns (no key is sent).
    Numbers written as strings (``"60"``, or from the environment) are accepted.
    """
    value = m.get(key, _MISSING)
    if isinstance(value, str) and value.startswith(_ENV_PREFIX):
        name = value[len(_ENV_PREFIX):]
        value = os.environ.get(name)
        if value is None:
            if kind == "secret":
                src.warn(path + (key,), f"environment variable {name} is not set; no value is used")
            else:
                src.error(path + (key,), f"environment variable {name} is not set")
            return default
    if value is _MISSING or value is None:
        if required:
            src.error(path + (key,), "is required")
        return default
    if kind in ("int", "num", "pos") and isinstance(value, str) and _NUMBER.match(value):
        value = float(value) if "." in value else int(value)
    ok, converted = _CONVERT[kind](value)
    if not ok:
        src.error(path + (key,), f"must be {_KIND_NAMES[kind]}, got {type(value).__name__} {value!r}")
        return default
    return converted


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


_CONVERT: dict[str, Callable[[Any], tuple[bool, Any]]] = {
    "str": lambda v: (isinstance(v, str) and v != "", v),
    "secret": lambda v: (isinstance(v, str) and v != "", v),
    "int": lambda v: (isinstance(v, int) and not isinstance(v, bool) and v >= 0, v),
    "num": lambda v: (_is_number(v) and v >= 0, float(v) if _is_number(v) else v),
    "pos": lambda v: (_is_number(v) and v > 0, float(v) if _is_number(v) else v),
    "bool": lambda v: (isinstance(v, bool), v),
    "list": lambda v: (isinstance(v, list), v),
    "map": lambda v: (isinstance(v, dict), v),
    "strlist": lambda v: (isinstance(v, list) and all(isinstance(x, str) for x in v), tuple(v) if isinstance(v, list) else v),
}
_KIND_NAMES = {
    "str": "a non-empty string",
    "secret": "a non-empty string",
    "int": "a non-negative integer",
    "num": "a non-negative number",
    "pos": "a number greater than 0",
    "bool": "true or false",
    "list": "a list",
    "map": "a mapping",
    "strlist": "a list of strings",
}


def _unknown_keys(src: Source, m: Mapping[str, Any], path: Path, known: set[str], ignored: set[str] = frozenset()) -> None:
    for key in m:
        if key in known:
            continue
        if key in ignored:
            src.warn(path + (key,), "LiteLLM setting not supported by llm-router; ignored")
        else:
            src.warn(path + (key,), "unknown key; ignored")


def _url(src: Source, path: Path, url: str | None) -> str | None:
    """Validate an api_base; return it without a trailing slash (``None`` if invalid)."""
    if url is None:
        return None
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        src.error(path, f"must be an http(s) URL, got {url!r}")
        return None
    try:
        parts.port
    except ValueError:
        src.error(path, f"invalid port in {url!r}")
        return None
    if parts.username is not None or parts.password is not None:
        src.error(path, "must not carry credentials (user:password@); put the key in api_key")
        return None
    return url.rstrip("/")


def api_root(url: str, wire: str) -> str:
    """Where a wire format's paths hang off ``url``: for OpenAI-compatible servers a
    bare ``http://host:port`` gets ``/v1`` (what vLLM and llama.cpp serve), a URL
    with a path is used as given (the OpenAI SDK's rule); Ollama's is the root."""
    if wire == "openai" and urlsplit(url).path.strip("/") == "":
        return url + "/v1"
    return url


# ---------------------------------------------------------------------------
# The LiteLLM config file
# ---------------------------------------------------------------------------

_TOP_KEYS = {"model_list", "router_settings", "litellm_settings", "general_settings", "environment_variables", "debug", "debug_router"}
_TOP_IGNORED = {"credential_list", "include", "files_settings", "assistant_settings", "guardrails", "mcp_servers"}
_PARAM_KEYS = {
    "model", "api_base", "api_key", "rpm", "tpm", "weight", "order", "timeout", "stream_timeout",
    "max_tokens", "max_parallel_requests",
}
_PARAM_IGNORED = {
    "api_version", "organization", "tags", "input_cost_per_token", "output_cost_per_token", "drop_params",
    "extra_headers", "keep_alive", "region_name", "custom_llm_provider", "cooldown_time", "mock_response",
    "use_in_pass_through", "merge_reasoning_content_in_choices", "temperature", "top_p", "num_ctx",
}
_ROUTER_KEYS = {
    "routing_strategy", "model_group_alias", "allowed_fails", "num_retries", "timeout", "cooldown_time",
    "enable_pre_call_checks", "redis_host", "redis_port", "redis_password", "redis_url", "fallbacks",
    "context_window_fallbacks", "debug_router", "max_connections_per_backend",
}
_ROUTER_IGNORED = {
    "retry_policy", "allowed_fails_policy", "content_policy_fallbacks", "default_fallbacks", "max_fallbacks",
    "routing_strategy_args", "cache_responses", "provider_budget_config", "model_group_retry_policy",
    "enable_tag_filtering", "disable_cooldowns", "optional_pre_call_checks", "retry_after", "stream_timeout",
    "default_litellm_params", "set_verbose", "debug_level", "client_ttl", "polling_interval",
}
_LITELLM_KEYS = {"request_timeout", "num_retries", "context_window_fallbacks", "fallbacks"}
_LITELLM_IGNORED = {
    "drop_params", "set_verbose", "json_logs", "callbacks", "success_callback", "failure_callback",
    "service_callback", "cache", "cache_params", "default_fallbacks", "content_policy_fallbacks",
    "telemetry", "turn_off_message_logging", "redact_user_api_key_info", "modify_params", "max_budget",
    "budget_duration", "enable_json_schema_validation", "default_team_settings", "force_ipv4",
}
_GENERAL_KEYS = {"master_key"}
_GENERAL_IGNORED = {
    "database_url", "store_model_in_db", "alerting", "alerting_threshold", "background_health_checks",
    "health_check_interval", "health_check_details", "proxy_batch_write_at", "database_connection_pool_limit",
    "disable_spend_logs", "allow_requests_on_db_unavailable", "ui_access_mode", "public_routes",
    "allowed_routes", "disable_master_key_return", "litellm_key_header_name", "enable_jwt_auth",
    "use_redis_transaction_buffer", "max_parallel_requests", "global_max_parallel_requests",
    "infer_model_from_keys", "user_header_name", "disable_reset_budget",
}
# Keys we validate now but whose behaviour arrives with later work: one warning each.
_NOT_YET = {
    ("router_settings", "allowed_fails"), ("router_settings", "num_retries"), ("router_settings", "cooldown_time"),
    ("router_settings", "enable_pre_call_checks"), ("router_settings", "redis_host"), ("router_settings", "redis_port"),
    ("router_settings", "redis_password"), ("router_settings", "redis_url"), ("router_settings", "fallbacks"),
    ("router_settings", "context_window_fallbacks"), ("litellm_settings", "num_retries"),
    ("litellm_settings", "context_window_fallbacks"), ("litellm_settings", "fallbacks"),
}


def _fallback_map(src: Source, value: Any, path: Path) -> Mapping[str, tuple[str, ...]]:
    """LiteLLM's ``[{"model": ["fb1", ...]}]`` and the seed's ``[{model:, fallback_models: [...]}]``."""
    out: dict[str, tuple[str, ...]] = {}
    if value is None:
        return MappingProxyType(out)
    if not isinstance(value, list):
        src.error(path, "must be a list of {model: [fallbacks]} entries")
        return MappingProxyType(out)
    for i, item in enumerate(value):
        p = path + (i,)
        if isinstance(item, dict) and "model" in item:
            model = _get(src, item, "model", p, "str")
            fbs = _get(src, item, "fallback_models", p, "strlist", required=True)
            _unknown_keys(src, item, p, {"model", "fallback_models"})
            if model and fbs is not None:
                out[model] = fbs
        elif isinstance(item, dict) and len(item) == 1:
            (model, fbs), = item.items()
            if not (isinstance(fbs, list) and all(isinstance(x, str) for x in fbs)):
                src.error(p + (model,), "fallbacks must be a list of model names")
            else:
                out[model] = tuple(fbs)
        else:
            src.error(p, "must be {model: [fallback models]} or {model: ..., fallback_models: [...]}")
    return MappingProxyType(out)


def _router_settings(src: Source, top: Mapping[str, Any]) -> RouterSettings:
    path: Path = ("router_settings",)
    rs = _get(src, top, "router_settings", (), "map", default={})
    _unknown_keys(src, rs, path, _ROUTER_KEYS, _ROUTER_IGNORED)
    for key in rs:
        if ("router_settings", key) in _NOT_YET:
            src.warn(path + (key,), "accepted but not acted on yet (reliability and shared-state work is pending); ignored")
    strategy = _get(src, rs, "routing_strategy", path, "str", default="simple-shuffle")
    if strategies.canonical(strategy) is None:
        src.error(path + ("routing_strategy",), f"unknown strategy {strategy!r} (known: {', '.join(sorted(strategies.STRATEGY_NAMES))})")
    elif not strategies.is_implemented(strategy):
        src.warn(path + ("routing_strategy",), f"strategy {strategy!r} is not implemented yet; simple-shuffle is used")
    debug = _get(src, top, "debug_router", (), "bool", default=False)
    return RouterSettings(
        routing_strategy=strategy,
        allowed_fails=_get(src, rs, "allowed_fails", path, "int"),
        num_retries=_get(src, rs, "num_retries", path, "int"),
        timeout=_get(src, rs, "timeout", path, "pos"),
        cooldown_time=_get(src, rs, "cooldown_time", path, "num"),
        enable_pre_call_checks=_get(src, rs, "enable_pre_call_checks", path, "bool", default=False),
        redis_host=_get(src, rs, "redis_host", path, "str"),
        redis_port=_get(src, rs, "redis_port", path, "int"),
        redis_password=_get(src, rs, "redis_password", path, "secret"),
        redis_url=_get(src, rs, "redis_url", path, "secret"),
        fallbacks=_fallback_map(src, rs.get("fallbacks"), path + ("fallbacks",)),
        context_window_fallbacks=_fallback_map(src, rs.get("context_window_fallbacks"), path + ("context_window_fallbacks",)),
        debug_router=_get(src, rs, "debug_router", path, "bool", default=debug),
        max_connections_per_backend=int(_get(src, rs, "max_connections_per_backend", path, "pos", default=256)),
    )


def _provider_for(src: Source, path: Path, kind: str, api_base: str | None, info: Mapping[str, Any], providers: Mapping[str, Provider]) -> str:
    named = info.get("provider")
    if named is not None:
        if not isinstance(named, str):
            src.error(path + ("model_info", "provider"), "must be a string")
        elif providers and named not in providers:
            src.error(path + ("model_info", "provider"), f"unknown provider {named!r} (known: {', '.join(sorted(providers))})")
        elif not providers and named not in WIRE_FORMATS:
            src.error(path + ("model_info", "provider"), f"unknown provider {named!r} (known kinds: {', '.join(sorted(WIRE_FORMATS))})")
        else:
            return named
    if api_base is not None:
        for p in providers.values():
            if _same_server(p.api_base, api_base):
                return p.name
    return kind


def _same_server(a: str, b: str) -> bool:
    pa, pb = urlsplit(a), urlsplit(b)
    host = lambda p: {"localhost": "127.0.0.1"}.get(p.hostname or "", p.hostname)  # noqa: E731
    port = lambda p: p.port or (443 if p.scheme == "https" else 80)  # noqa: E731
    return (pa.scheme, host(pa), port(pa)) == (pb.scheme, host(pb), port(pb))


def _deployments(src: Source, top: Mapping[str, Any], providers: Mapping[str, Provider], default_timeout: float) -> list[Deployment]:
    out: list[Deployment] = []
    model_list = _get(src, top, "model_list", (), "list", default=[])
    seen_ids: dict[str, Path] = {}
    for i, entry in enumerate(model_list):
        path: Path = ("model_list", i)
        if not isinstance(entry, dict):
            src.error(path, "must be a mapping with model_name and litellm_params")
            continue
        _unknown_keys(src, entry, path, {"model_name", "litellm_params", "model_info"})
        name = _get(src, entry, "model_name", path, "str", required=True)
        params = _get(src, entry, "litellm_params", path, "map", required=True)
        info = _get(src, entry, "model_info", path, "map", default={})
        if name is None or params is None:
            continue
        pp = path + ("litellm_params",)
        _unknown_keys(src, params, pp, _PARAM_KEYS, _PARAM_IGNORED)
        model = _get(src, params, "model", pp, "str", required=True)
        if model is None:
            continue
        prefix, sep, upstream = model.partition("/")
        kind = PREFIX_KINDS.get(prefix) if sep else None
        if kind is None:
            src.error(pp + ("model",), f"unknown provider prefix in {model!r} (supported: {', '.join(p + '/' for p in PREFIX_KINDS)})")
            continue
        raw_base = _get(src, params, "api_base", pp, "str")
        api_base = _url(src, pp + ("api_base",), raw_base)
        provider = _provider_for(src, path, kind, api_base, info, providers)
        if provider in providers:
            kind = providers[provider].kind if WIRE_FORMATS[providers[provider].kind] == WIRE_FORMATS[kind] else kind
            if api_base is None:
                api_base = providers[provider].api_base
        elif provider in WIRE_FORMATS:
            kind = provider if WIRE_FORMATS[provider] == WIRE_FORMATS[kind] else kind
        if api_base is None:
            if raw_base is None and "api_base" not in params:
                src.error(pp, f"api_base is required (or model_info.provider naming a provider with an api_base) for {model!r}")
            continue
        api_base = api_root(api_base, WIRE_FORMATS[kind])
        dep_id = info.get("id")
        if dep_id is not None and not isinstance(dep_id, str):
            src.error(path + ("model_info", "id"), "must be a string")
            dep_id = None
        if dep_id is not None and dep_id in seen_ids:
            src.error(path + ("model_info", "id"), f"duplicate deployment id {dep_id!r} (first used at line {src.line(seen_ids[dep_id])})")
            continue
        generated = dep_id is None
        if generated:
            dep_id = f"{name}@{provider}"
            n = 2
            while dep_id in seen_ids:
                dep_id, n = f"{name}@{provider}#{n}", n + 1
        seen_ids[dep_id] = path + ("model_info", "id") if not generated else path
        wildcard = name if "*" in name else None
        out.append(
            Deployment(
                id=dep_id,
                model_name=name,
                provider=provider,
                kind=kind,
                upstream_model=upstream,
                api_base=api_base,
                api_key=_get(src, params, "api_key", pp, "secret"),
                rpm=_get(src, params, "rpm", pp, "int"),
                tpm=_get(src, params, "tpm", pp, "int"),
                weight=_get(src, params, "weight", pp, "num"),
                order=_get(src, params, "order", pp, "int"),
                timeout=_get(src, params, "timeout", pp, "pos", default=default_timeout),
                stream_timeout=_get(src, params, "stream_timeout", pp, "pos"),
                max_tokens=_get(src, params, "max_tokens", pp, "int"),
                max_parallel_requests=_get(src, params, "max_parallel_requests", pp, "int"),
                model_info=MappingProxyType(dict(info)),
                is_dynamic=wildcard is not None and "*" in upstream,
                wildcard=wildcard,
            )
        )
    return out


def _wildcard_regex(pattern: str) -> re.Pattern[str]:
    return re.compile("^" + "(.*)".join(re.escape(part) for part in pattern.split("*")) + "$")


def _aliases(src: Source, top: Mapping[str, Any], groups: Mapping[str, tuple[Deployment, ...]], by_id: Mapping[str, Deployment]) -> dict[str, tuple[Deployment, ...]]:
    """``model_group_alias``: alias -> group name (LiteLLM), ``{model: name, hidden: bool}``,
    or a list of group names / deployment ids (the seed's form)."""
    rs = top.get("router_settings") if isinstance(top.get("router_settings"), dict) else {}
    raw = rs.get("model_group_alias")
    path: Path = ("router_settings", "model_group_alias")
    out: dict[str, tuple[Deployment, ...]] = {}
    if raw is None:
        return out
    if not isinstance(raw, dict):
        src.error(path, "must be a mapping of alias -> model group(s)")
        return out
    for alias, target in raw.items():
        p = path + (alias,)
        if isinstance(target, dict):
            target = target.get("model")
        names = [target] if isinstance(target, str) else target
        if not (isinstance(names, list) and all(isinstance(n, str) for n in names)):
            src.error(p, "must be a model group name, a list of names or {model: name}")
            continue
        found: list[Deployment] = []
        for n in names:
            if n in groups:
                found.extend(d for d in groups[n] if d not in found)
            elif n in by_id:
                if by_id[n] not in found:
                    found.append(by_id[n])
            else:
                src.warn(p, f"alias target {n!r} is neither a model_name nor a deployment id; skipped")
        if alias in groups:
            src.warn(p, f"alias {alias!r} is also a model_name; the model_name wins")
        if found:
            out[alias] = tuple(found)
    return out


# ---------------------------------------------------------------------------
# The routing policy file (model-mappings.yaml)
# ---------------------------------------------------------------------------

_MAPPING_KEYS = {
    "providers", "exact_matches", "patterns", "capabilities", "load_balancing", "redundant_models",
    "fallback_chains", "model_size_routing", "request_metadata_routing", "first_request_routing",
    "rate_limited_fallback", "error_based_routing", "default_provider",
}
_RANKS = ("primary", "secondary", "tertiary", "quaternary", "quinary")


def _provider_ref(src: Source, m: Mapping[str, Any], key: str, path: Path, providers: Mapping[str, Provider], required: bool = False) -> str | None:
    name = _get(src, m, key, path, "str", required=required)
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


def _providers(src: Source, data: Mapping[str, Any]) -> dict[str, Provider]:
    out: dict[str, Provider] = {}
    raw = _get(src, data, "providers", (), "map", default={})
    for name, spec in raw.items():
        p: Path = ("providers", name)
        if not isinstance(spec, dict):
            src.error(p, "must be a mapping with api_base and type")
            continue
        _unknown_keys(src, spec, p, {"api_base", "type", "kind", "description"})
        kind = spec.get("type", spec.get("kind", name))
        if kind not in WIRE_FORMATS:
            src.error(p + ("type",), f"unknown provider type {kind!r} (known: {', '.join(sorted(WIRE_FORMATS))})")
            continue
        base = _url(src, p + ("api_base",), _get(src, spec, "api_base", p, "str", required=True))
        if base:
            out[name] = Provider(name, kind, base, _get(src, spec, "description", p, "str", default=""))
    return out


def _mappings(src: Source) -> Mappings:
    data = src.data if isinstance(src.data, dict) else {}
    if src.data is not None and not isinstance(src.data, dict):
        src.error((), "the policy file must be a mapping")
    _unknown_keys(src, data, (), _MAPPING_KEYS)
    providers = _providers(src, data)

    exact: dict[str, ExactMatch] = {}
    for model, spec in _get(src, data, "exact_matches", (), "map", default={}).items():
        p: Path = ("exact_matches", model)
        if not isinstance(spec, dict):
            src.error(p, "must be a mapping with provider")
            continue
        _unknown_keys(src, spec, p, {"provider", "priority", "fallback", "description"})
        prov = _provider_ref(src, spec, "provider", p, providers, required=True)
        if prov:
            exact[model] = ExactMatch(model, prov, _get(src, spec, "priority", p, "str", default="primary"),
                                      _provider_ref(src, spec, "fallback", p, providers), _get(src, spec, "description", p, "str", default=""))

    patterns: list[PatternRule] = []
    for i, spec in enumerate(_get(src, data, "patterns", (), "list", default=[])):
        p = ("patterns", i)
        if not isinstance(spec, dict):
            src.error(p, "must be a mapping with pattern and provider")
            continue
        _unknown_keys(src, spec, p, {"pattern", "provider", "fallback", "description"})
        text = _get(src, spec, "pattern", p, "str", required=True)
        prov = _provider_ref(src, spec, "provider", p, providers, required=True)
        regex = None
        if text is not None:
            try:
                regex = re.compile(text)
            except re.error as exc:
                src.error(p + ("pattern",), f"bad regex {text!r}: {exc}")
        if regex is not None and prov:
            patterns.append(PatternRule(regex, prov, _provider_ref(src, spec, "fallback", p, providers), _get(src, spec, "description", p, "str", default="")))

    capabilities: dict[str, Capability] = {}
    for name, spec in _get(src, data, "capabilities", (), "map", default={}).items():
        p = ("capabilities", name)
        if not isinstance(spec, dict):
            src.error(p, "must be a mapping")
            continue
        _unknown_keys(src, spec, p, {"description", "preferred_models", "provider", "providers", "fallback", "min_model_size", "min_context", "routing_strategy"})
        strategy = _get(src, spec, "routing_strategy", p, "str")
        if strategy is not None and strategies.canonical(strategy) is None:
            src.error(p + ("routing_strategy",), f"unknown strategy {strategy!r} (known: {', '.join(sorted(strategies.STRATEGY_NAMES))})")
        provs = _get(src, spec, "providers", p, "strlist", default=())
        for j, prov in enumerate(provs):
            if prov not in providers:
                src.error(p + ("providers", j), f"unknown provider {prov!r}")
        min_size = spec.get("min_model_size")
        capabilities[name] = Capability(
            name=name,
            description=_get(src, spec, "description", p, "str", default=""),
            preferred_models=_get(src, spec, "preferred_models", p, "strlist", default=()),
            provider=_provider_ref(src, spec, "provider", p, providers),
            providers=provs,
            fallback=_provider_ref(src, spec, "fallback", p, providers),
            min_model_size=_parse_with(src, p + ("min_model_size",), min_size, parse_size) if min_size is not None else None,
            min_context=_get(src, spec, "min_context", p, "int"),
            routing_strategy=strategy,
        )

    balancing: dict[str, StrategySpec] = {}
    for name, spec in _get(src, data, "load_balancing", (), "map", default={}).items():
        p = ("load_balancing", name)
        if strategies.canonical(name) is None:
            src.error(p, f"unknown strategy {name!r} (known: {', '.join(sorted(strategies.STRATEGY_NAMES))})")
            continue
        spec = spec if isinstance(spec, dict) else {}
        _unknown_keys(src, spec, p, {"description", "applicable_to", "weight_factors", "measure"})
        factors: dict[str, float] = {}
        for j, item in enumerate(_get(src, spec, "weight_factors", p, "list", default=[])):
            if isinstance(item, dict) and len(item) == 1 and isinstance(next(iter(item.values())), (int, float)):
                factors.update(item)
            else:
                src.error(p + ("weight_factors", j), "must be {factor: number}")
        for j, cap in enumerate(_get(src, spec, "applicable_to", p, "strlist", default=())):
            if cap not in capabilities:
                src.warn(p + ("applicable_to", j), f"{cap!r} is not a defined capability")
        balancing[name] = StrategySpec(name, _get(src, spec, "description", p, "str", default=""),
                                       _get(src, spec, "applicable_to", p, "strlist", default=()),
                                       MappingProxyType(factors), _get(src, spec, "measure", p, "str"))

    redundant: dict[str, Mapping[str, float]] = {}
    for model, spec in _get(src, data, "redundant_models", (), "map", default={}).items():
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
            w = _get(src, e, "weight", q, "num", required=True)
            if prov and w is not None:
                weights[prov] = w
        redundant[model] = MappingProxyType(weights)

    chains: dict[str, FallbackChain] = {}
    for name, spec in _get(src, data, "fallback_chains", (), "map", default={}).items():
        p = ("fallback_chains", name)
        if not isinstance(spec, dict):
            src.error(p, "must be a mapping with chain")
            continue
        _unknown_keys(src, spec, p, {"description", "chain", "retry_attempts", "retry_delay_ms"})
        steps: list[ChainStep] = []
        for j, step in enumerate(_get(src, spec, "chain", p, "list", required=True, default=[])):
            q = p + ("chain", j)
            if not isinstance(step, dict):
                src.error(q, "must be a mapping like {primary: provider, condition: ...}")
                continue
            rank = next((r for r in (*_RANKS, "provider") if r in step), None)
            if rank is None:
                src.error(q, f"needs one of {', '.join(_RANKS)} or provider naming a provider")
                continue
            _unknown_keys(src, step, q, {rank, "condition", "preferred_model"})
            prov = _provider_ref(src, step, rank, q, providers, required=True)
            cond = _parse_with(src, q + ("condition",), step.get("condition"), parse_condition)
            if cond is not None and cond.subject == "unavailable" and cond.value not in providers:
                src.error(q + ("condition",), f"unknown provider {cond.value!r} in {step.get('condition')!r}")
            if prov and cond is not None:
                steps.append(ChainStep(prov, rank, cond, _get(src, step, "preferred_model", q, "str")))
        chains[name] = FallbackChain(name, tuple(steps), _get(src, spec, "description", p, "str", default=""),
                                     _get(src, spec, "retry_attempts", p, "int"), _get(src, spec, "retry_delay_ms", p, "int"))

    size_rules: list[SizeRule] = []
    for i, spec in enumerate(_get(src, data, "model_size_routing", (), "list", default=[])):
        p = ("model_size_routing", i)
        if not isinstance(spec, dict):
            src.error(p, "must be {size, provider, fallback, reason}")
            continue
        _unknown_keys(src, spec, p, {"size", "provider", "fallback", "reason"})
        text = _get(src, spec, "size", p, "str", required=True)
        rng = _parse_with(src, p + ("size",), text, parse_size_range) if text else None
        prov = _provider_ref(src, spec, "provider", p, providers, required=True)
        if rng and prov:
            size_rules.append(SizeRule(rng, text, prov, _provider_ref(src, spec, "fallback", p, providers), _get(src, spec, "reason", p, "str", default="")))

    meta_rules: list[MetadataRule] = []
    for name, spec in _get(src, data, "request_metadata_routing", (), "map", default={}).items():
        p = ("request_metadata_routing", name)
        if not isinstance(spec, dict):
            src.error(p, "must be {provider, condition}")
            continue
        _unknown_keys(src, spec, p, {"provider", "condition", "description"})
        prov = _provider_ref(src, spec, "provider", p, providers, required=True)
        cond = _parse_with(src, p + ("condition",), _get(src, spec, "condition", p, "str", required=True), parse_condition)
        if prov and cond is not None:
            meta_rules.append(MetadataRule(name, prov, cond))

    fr = _get(src, data, "first_request_routing", (), "map", default={})
    _unknown_keys(src, fr, ("first_request_routing",), {"description", "strategy", "warm_check_timeout_ms"})
    first = _get(src, fr, "strategy", ("first_request_routing",), "str")
    if first is not None and first not in ("prefer_warm_providers", "none"):
        src.error(("first_request_routing", "strategy"), f"unknown strategy {first!r} (known: prefer_warm_providers, none)")
    rl = _get(src, data, "rate_limited_fallback", (), "map", default={})
    _unknown_keys(src, rl, ("rate_limited_fallback",), {"description", "enabled", "fallback_duration_seconds"})
    eb = _get(src, data, "error_based_routing", (), "map", default={})
    _unknown_keys(src, eb, ("error_based_routing",), {"description", "enabled", "error_threshold", "cooldown_seconds"})

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
        warm_check_timeout_ms=_get(src, fr, "warm_check_timeout_ms", ("first_request_routing",), "int", default=100),
        rate_limited_fallback_enabled=_get(src, rl, "enabled", ("rate_limited_fallback",), "bool", default=False),
        rate_limited_fallback_seconds=_get(src, rl, "fallback_duration_seconds", ("rate_limited_fallback",), "num", default=60.0),
        error_routing_enabled=_get(src, eb, "enabled", ("error_based_routing",), "bool", default=False),
        error_threshold=_get(src, eb, "error_threshold", ("error_based_routing",), "int", default=3),
        error_cooldown_seconds=_get(src, eb, "cooldown_seconds", ("error_based_routing",), "num", default=300.0),
    )


# ---------------------------------------------------------------------------
# Entry point
# ---------------------------------------------------------------------------


def default_mappings_path(config_path: str) -> str:
    return os.path.join(os.path.dirname(config_path), "model-mappings.yaml")


def load_config(path: str, mappings_path: str | None = None, *, mappings_required: bool = False) -> Config:
    """Load and validate both files. ``mappings_path=None`` means the default file
    beside ``path``, used only if it exists (unless ``mappings_required``)."""
    src = load(path)
    msrc: Source | None = None
    if mappings_path is None:
        candidate = default_mappings_path(path)
        if os.path.exists(candidate):
            mappings_path = candidate
    elif not os.path.exists(mappings_path) and not mappings_required:
        mappings_path = None
    if mappings_path is not None:
        msrc = load(mappings_path)
    if src.errors or (msrc and msrc.errors):
        raise ConfigError(src.errors + (msrc.errors if msrc else []))

    mappings = _mappings(msrc) if msrc else Mappings()
    top = src.data if isinstance(src.data, dict) else {}
    if src.data is not None and not isinstance(src.data, dict):
        src.error((), "the config file must be a mapping with model_list")
    _unknown_keys(src, top, (), _TOP_KEYS, _TOP_IGNORED)

    env_vars = _get(src, top, "environment_variables", (), "map", default={})
    for k, v in env_vars.items():
        if isinstance(v, (str, int, float)) and not isinstance(v, bool):
            os.environ.setdefault(str(k), str(v))
        else:
            src.error(("environment_variables", k), "must be a string")

    ls = _get(src, top, "litellm_settings", (), "map", default={})
    _unknown_keys(src, ls, ("litellm_settings",), _LITELLM_KEYS, _LITELLM_IGNORED)
    for key in ls:
        if ("litellm_settings", key) in _NOT_YET:
            src.warn(("litellm_settings", key), "accepted but not acted on yet (reliability work is pending); ignored")
    gs = _get(src, top, "general_settings", (), "map", default={})
    _unknown_keys(src, gs, ("general_settings",), _GENERAL_KEYS, _GENERAL_IGNORED)
    master_key = _get(src, gs, "master_key", ("general_settings",), "secret")
    master_key = os.environ.get("LLM_ROUTER_MASTER_KEY") or master_key

    router = _router_settings(src, top)
    request_timeout = router.timeout or _get(src, ls, "request_timeout", ("litellm_settings",), "pos") or DEFAULT_TIMEOUT
    deployments = _deployments(src, top, mappings.providers, request_timeout)

    by_id = {d.id: d for d in deployments}
    groups: dict[str, list[Deployment]] = {}
    wildcards: list[tuple[re.Pattern[str], Deployment]] = []
    for d in deployments:
        if d.wildcard:
            wildcards.append((_wildcard_regex(d.wildcard), d))
        else:
            groups.setdefault(d.model_name, []).append(d)
    frozen_groups = {k: tuple(v) for k, v in groups.items()}

    catchalls = {
        p.name: Deployment(id=f"{p.name}/*", model_name="*", provider=p.name, kind=p.kind, upstream_model="",
                           api_base=api_root(p.api_base, p.wire), timeout=request_timeout, is_dynamic=True)
        for p in mappings.providers.values()
    }
    aliases = _aliases(src, top, frozen_groups, by_id)
    for model, spec in mappings.exact_matches.items():
        if model in frozen_groups and not any(d.provider == spec.provider for d in frozen_groups[model]):
            msrc.warn(("exact_matches", model), f"model_list group {model!r} has no deployment on provider {spec.provider!r}; the model_list group is used")
    for model in mappings.redundant_models:
        if model not in frozen_groups:
            msrc.warn(("redundant_models", model), f"no model_list group named {model!r}; weights unused")

    if src.errors or (msrc and msrc.errors):
        raise ConfigError(src.errors + (msrc.errors if msrc else []))
    warnings = tuple(src.warnings + (msrc.warnings if msrc else []))
    return Config(
        file=path,
        mappings_file=mappings_path,
        deployments=tuple(deployments),
        groups=MappingProxyType(frozen_groups),
        by_id=MappingProxyType(by_id),
        aliases=MappingProxyType(aliases),
        wildcards=tuple(wildcards),
        catchalls=MappingProxyType(catchalls),
        router=router,
        mappings=mappings,
        master_key=master_key,
        request_timeout=request_timeout,
        warnings=warnings,
    )
