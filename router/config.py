"""Configuration: LiteLLM's ``config.yaml`` plus the routing policy file, as frozen objects.

``load_config(path, mappings_path)`` reads both files, validates every key it
knows, warns once for each key it does not act on, and returns a ``Config``. Any
error raises ``ConfigError`` carrying ``file:line: key.path: problem`` lines.
Nothing downstream reads the raw YAML.
"""

from __future__ import annotations

import hmac
import os
import re
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from types import MappingProxyType
from typing import Any, Mapping
from urllib.parse import urlsplit

from router.admission import PrioritySettings
from router.checks import _UNSENDABLE, _short, api_root, check_url, get, shown, unknown_keys
from router.backends import KINDS, PREFIX_KINDS, UNSUPPORTED_PREFIXES, WIRE_FORMATS
from router.backends.base import NATIVE_API_NAMES, BackendKind, auth_headers
from router.domain import Deployment, Disabled, Provider
from router.health import Policy
from router.policy import Mappings, load_policy
from router.routing import strategies
from router.routing.strategies.cache_aware import strategy_args
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
    monitor_interval: float = 5.0  # seconds between background probes of each backend server
    shutdown_grace_period: float = 30.0  # seconds in-flight requests get to finish on SIGTERM
    queue_timeout: float = 30.0  # seconds a request waits for a deployment at max_parallel_requests
    redis_key_prefix: str = "llm-router:"
    # cache-aware routing's settings (LiteLLM's routing_strategy_args): load_factor, min_match_tokens, capacity_tokens
    strategy_args: Mapping[str, float] = field(default_factory=lambda: MappingProxyType({}))
    # LiteLLM's optional_pre_call_checks that pin: session_affinity, deployment_affinity, prompt_caching
    affinity: frozenset[str] = frozenset()
    group_affinity: Mapping[str, frozenset[str]] = field(default_factory=lambda: MappingProxyType({}))  # model_group_affinity_config
    affinity_ttl: float = 3600.0  # deployment_affinity_ttl_seconds: a pin lasts this long after its last use
    priority: PrioritySettings = field(default_factory=PrioritySettings)  # priority classes and fair admission


@dataclass(frozen=True, slots=True)
class CacheSettings:
    """``litellm_settings.cache`` / ``cache_params``."""

    enabled: bool = False
    type: str = "local"  # local | redis
    url: str | None = field(default=None, repr=False)
    password: str | None = field(default=None, repr=False)
    namespace: str = "llm-router:"
    ttl: float = 600.0
    scope: str = "key"  # key: entries per client key (or tenant) | shared: one scope for every client
    max_bytes: int = 64 * 1024 * 1024  # local LRU budget
    max_entry_bytes: int = 1024 * 1024


@dataclass(frozen=True, slots=True)
class ApiKey:
    """A client key: the master key (admin) or one of ``general_settings.api_keys``."""

    name: str
    key: str = field(repr=False)
    models: tuple[str, ...] | None = None  # model names / globs it may use; None = every model
    rpm_limit: int | None = None
    admin: bool = False
    tenant: str | None = None  # response-cache scope; keys with the same tenant share entries (None: its own)
    priority: str | None = None  # the class of its requests unless they ask for another (router.admission)
    max_priority: str | None = None  # the highest class its requests may ask for (default: its priority)

    @property
    def cache_scope(self) -> str:
        """Its part of a response-cache key: its tenant, else its name (the master key's own)."""
        return f"tenant:{self.tenant}" if self.tenant is not None else f"{'admin' if self.admin else 'key'}:{self.name}"

    def allows(self, *names: str | None) -> bool:
        """May this key use a model asked for (or resolved) as any of ``names``?"""
        if self.models is None:
            return True
        return any(n is not None and any(fnmatchcase(n, m) for m in self.models) for n in names)


@dataclass(frozen=True, slots=True)
class Limits:
    """What one client may send (``general_settings``); every one has a safe default."""

    max_request_size_mb: float = 32.0
    max_json_depth: int = 64
    max_messages: int = 4096  # messages in a chat request
    max_input_items: int = 4096  # prompts / embedding inputs in one request
    max_header_size_kb: float = 16.0  # one header line
    max_headers: int = 128
    client_read_timeout: float = 30.0  # s to send the headers, and the body, of a request; idle keep-alive
    max_connections: int = 4096  # open client connections; more get a 503 and are closed
    global_rpm_limit: int | None = None  # requests per minute over all keys (shared through Redis)
    metrics_require_auth: bool = False


@dataclass(frozen=True, slots=True)
class WebAccess:
    """Who may reach a router that has no key (``general_settings.allowed_hosts``,
    ``allowed_origins`` and env ``LLM_ROUTER_ORIGINS``), on top of the loopback names
    that are always allowed; lower-cased, ``*`` globs allowed. Unused with a key."""

    allowed_hosts: tuple[str, ...] = ()
    allowed_origins: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Config:
    file: str
    mappings_file: str | None
    deployments: tuple[Deployment, ...]
    groups: Mapping[str, tuple[Deployment, ...]]
    by_id: Mapping[str, Deployment]
    aliases: Mapping[str, tuple[Deployment, ...]]
    wildcards: tuple[tuple[Wildcard, Deployment], ...]
    catchalls: Mapping[str, Deployment]  # provider name -> dynamic deployment
    router: RouterSettings
    mappings: Mappings
    master_key: str | None = field(default=None, repr=False)
    api_keys: tuple[ApiKey, ...] = ()
    limits: Limits = field(default_factory=Limits)
    cache: CacheSettings = field(default_factory=CacheSettings)
    web: WebAccess = field(default_factory=WebAccess)
    request_timeout: float = DEFAULT_TIMEOUT
    warnings: tuple[Issue, ...] = ()
    disabled: tuple[Disabled, ...] = ()  # model_list entries of providers we do not speak: never routed to
    unserved: tuple[Issue, ...] = ()  # the warnings about them (and fallbacks only to them): errors under check-config --strict

    def health_policy(self) -> Policy:
        r, m = self.router, self.mappings
        return Policy(
            allowed_fails=r.allowed_fails if r.allowed_fails is not None else 3,
            cooldown_time=r.cooldown_time if r.cooldown_time is not None else 5.0,
            rate_limit_cooldown=m.rate_limited_fallback_seconds if m.rate_limited_fallback_enabled else None,
            degrade=m.error_routing_enabled,
            error_threshold=m.error_threshold,
            degrade_seconds=m.error_cooldown_seconds,
        )

    def all_deployments(self) -> list[Deployment]:
        """The configured deployments and the providers' catch-alls: what is probed,
        shown on /health and /ui, shared through Redis and counted in metrics."""
        return [*self.deployments, *self.catchalls.values()]

    def disabled_reason(self, model: str | None) -> str | None:
        """Why ``model`` (a model_list name whose every entry is disabled) is not served, or None."""
        if model is None or model in self.groups:
            return None
        found = [x for x in self.disabled if x.model_name == model]
        return f"{found[0].reason} ({found[0].model})" if found else None

    def summary(self) -> str:
        m = self.mappings
        return (
            f"{len(self.deployments)} deployments in {len(self.groups)} model groups"
            f"{f' ({len(self.disabled)} disabled)' if self.disabled else ''}, "
            f"{len(self.aliases)} aliases, {len(m.providers)} providers, {len(m.exact_matches)} exact matches, "
            f"{len(m.patterns)} patterns, {len(m.capabilities)} capabilities, {len(m.fallback_chains)} fallback chains, "
            f"fallbacks for {len(set(self.router.fallbacks) | set(self.router.context_window_fallbacks))} model groups"
        )


# ---------------------------------------------------------------------------
# The LiteLLM config file
# ---------------------------------------------------------------------------

_TOP_KEYS = {"model_list", "router_settings", "litellm_settings", "general_settings", "environment_variables", "debug", "debug_router"}
_TOP_IGNORED = {"credential_list", "include", "files_settings", "assistant_settings", "guardrails", "mcp_servers"}
_PARAM_KEYS = {
    "model", "api_base", "api_key", "rpm", "tpm", "weight", "order", "timeout", "stream_timeout",
    "max_tokens", "max_parallel_requests", "api_version", "organization", "extra_headers",
    "input_cost_per_token", "output_cost_per_token",
}
_PARAM_IGNORED = {
    "tags", "drop_params", "keep_alive", "region_name", "custom_llm_provider", "cooldown_time", "mock_response",
    "use_in_pass_through", "merge_reasoning_content_in_choices", "temperature", "top_p", "num_ctx",
}
_ROUTER_KEYS = {
    "routing_strategy", "model_group_alias", "allowed_fails", "num_retries", "timeout", "cooldown_time",
    "enable_pre_call_checks", "redis_host", "redis_port", "redis_password", "redis_url", "fallbacks",
    "context_window_fallbacks", "debug_router", "max_connections_per_backend", "monitor_interval", "shutdown_grace_period", "queue_timeout", "redis_key_prefix",
    "routing_strategy_args", "optional_pre_call_checks", "model_group_affinity_config", "deployment_affinity_ttl_seconds",
    "priority", "default_priority",
}
_ROUTER_IGNORED = {
    "retry_policy", "allowed_fails_policy", "content_policy_fallbacks", "default_fallbacks", "max_fallbacks",
    "cache_responses", "provider_budget_config", "model_group_retry_policy",
    "enable_tag_filtering", "disable_cooldowns", "retry_after", "stream_timeout",
    "default_litellm_params", "set_verbose", "debug_level", "client_ttl", "polling_interval",
}
_LITELLM_KEYS = {"request_timeout", "num_retries", "context_window_fallbacks", "fallbacks", "cache", "cache_params"}
_LITELLM_IGNORED = {
    "drop_params", "set_verbose", "json_logs", "callbacks", "success_callback", "failure_callback",
    "service_callback", "default_fallbacks", "content_policy_fallbacks",
    "telemetry", "turn_off_message_logging", "redact_user_api_key_info", "modify_params", "max_budget",
    "budget_duration", "enable_json_schema_validation", "default_team_settings", "force_ipv4",
    "priority_reservation", "priority_reservation_settings",
}
_GENERAL_KEYS = {"master_key", "api_keys", "metrics_require_auth", "max_request_size_mb", "max_json_depth",
                 "max_messages", "max_input_items", "max_header_size_kb", "max_headers", "client_read_timeout",
                 "max_connections", "global_rpm_limit", "allowed_hosts", "allowed_origins"}
_GENERAL_IGNORED = {
    "database_url", "store_model_in_db", "alerting", "alerting_threshold", "background_health_checks",
    "health_check_interval", "health_check_details", "proxy_batch_write_at", "database_connection_pool_limit",
    "disable_spend_logs", "allow_requests_on_db_unavailable", "ui_access_mode", "public_routes",
    "allowed_routes", "disable_master_key_return", "litellm_key_header_name", "enable_jwt_auth",
    "use_redis_transaction_buffer", "max_parallel_requests", "global_max_parallel_requests",
    "infer_model_from_keys", "user_header_name", "disable_reset_budget",
}
# Keys we validate now but whose behaviour arrives with later work: one warning each.
_NOT_YET: set[tuple[str, str]] = set()  # keys validated but not acted on yet: one warning each


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
            model = get(src, item, "model", p, "str")
            fbs = get(src, item, "fallback_models", p, "strlist", required=True)
            unknown_keys(src, item, p, {"model", "fallback_models"})
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


_KEY_FIELDS = {"name", "key", "models", "rpm_limit", "tenant", "priority", "max_priority"}


def _api_keys(src: Source, gs: Mapping[str, Any], master_key: str | None,
              priority: PrioritySettings = PrioritySettings()) -> tuple[ApiKey, ...]:
    """``general_settings.api_keys``: ``[{name, key, models: [...], rpm_limit, tenant}]`` (LiteLLM keeps
    virtual keys in its database; here they live in the file). The master key is the admin."""
    path: Path = ("general_settings", "api_keys")
    items = get(src, gs, "api_keys", ("general_settings",), "list", default=[])
    keys: list[ApiKey] = []
    if master_key:
        keys.append(ApiKey("master", master_key, admin=True))
    names: set[str] = set()
    for i, item in enumerate(items):
        p = path + (i,)
        if not isinstance(item, dict):
            src.error(p, "must be a mapping with name and key")
            continue
        unknown_keys(src, item, p, _KEY_FIELDS)
        name = get(src, item, "name", p, "str", required=True)
        key = get(src, item, "key", p, "secret", required=True)
        models = get(src, item, "models", p, "strlist")
        rpm = get(src, item, "rpm_limit", p, "int")
        tenant = get(src, item, "tenant", p, "str")
        classes = []
        for field_name in ("priority", "max_priority"):
            value = item.get(field_name)
            rank = None if value is None else priority.parse(value)
            if value is not None and rank is None:
                src.error(p + (field_name,), f"unknown priority class {_short(value)} (classes: {', '.join(priority.classes)})")
            classes.append(None if rank is None else priority.classes[rank])
        if name in names:
            src.error(p + ("name",), f"duplicate key name {name!r}")
        if key is not None and any(hmac.compare_digest(key.encode(), k.key.encode()) for k in keys):
            src.error(p + ("key",), "the same key is configured twice (or equals the master key)")
        if key is not None and len(key) < 8:
            src.error(p + ("key",), "must be at least 8 characters")
        if name and key:
            names.add(name)
            keys.append(ApiKey(name, key, models, rpm, tenant=tenant, priority=classes[0], max_priority=classes[1]))
    if items and not master_key:
        src.warn(("general_settings", "api_keys"), "no master_key: the admin endpoints (/router/*, /health, /ui/data) "
                 "cannot be reached with these keys")
    return tuple(keys)


def _limits(src: Source, gs: Mapping[str, Any]) -> Limits:
    path: Path = ("general_settings",)
    d = Limits()

    def positive_int(key: str, default: int) -> int:
        value = get(src, gs, key, path, "int", default=default)
        if value == 0:
            src.error(path + (key,), "must be at least 1")
            return default
        return value

    return Limits(
        max_request_size_mb=get(src, gs, "max_request_size_mb", path, "pos", default=d.max_request_size_mb),
        max_json_depth=positive_int("max_json_depth", d.max_json_depth),
        max_messages=positive_int("max_messages", d.max_messages),
        max_input_items=positive_int("max_input_items", d.max_input_items),
        max_header_size_kb=get(src, gs, "max_header_size_kb", path, "pos", default=d.max_header_size_kb),
        max_headers=positive_int("max_headers", d.max_headers),
        client_read_timeout=get(src, gs, "client_read_timeout", path, "pos", default=d.client_read_timeout),
        max_connections=positive_int("max_connections", d.max_connections),
        global_rpm_limit=get(src, gs, "global_rpm_limit", path, "int"),
        metrics_require_auth=get(src, gs, "metrics_require_auth", path, "bool", default=False),
    )


_HOST_RE = re.compile(r"(\*|(\*\.)?[a-z0-9_-]+(\.[a-z0-9_-]+)*|\[[0-9a-f:.]+\])")
_ORIGIN_RE = re.compile(r"(\*|null|[a-z][a-z0-9+.-]*://(\*|(\*\.)?[a-z0-9_-]+(\.[a-z0-9_-]+)*|\[[0-9a-f:.]+\])(:(\d{1,5}|\*))?)")


def _web_access(src: Source, gs: Mapping[str, Any]) -> WebAccess:
    """``allowed_hosts`` (names a keyless router answers to besides loopback, like
    ``my-box.lan``) and ``allowed_origins`` (web pages that may call it, like
    OLLAMA_ORIGINS: ``https://chat.example.lan``, ``http://localhost:*``)."""
    path: Path = ("general_settings",)
    hosts = get(src, gs, "allowed_hosts", path, "strlist", default=())
    origins = list(get(src, gs, "allowed_origins", path, "strlist", default=()))
    for i, h in enumerate(hosts):
        if not _HOST_RE.fullmatch(h.strip().lower().rstrip(".")):
            src.error(path + ("allowed_hosts", i), f"{h!r} is not a host name: no scheme, port or path "
                      "(`my-box.lan`, `*.lan`, `[fd00::1]`, or `*` for any)")
    for i, o in enumerate(origins):
        if not _ORIGIN_RE.fullmatch(o.strip().lower().rstrip("/")):
            src.error(path + ("allowed_origins", i), f"{o!r} is not an origin: scheme://host[:port], no path "
                      "(`https://chat.example.lan`, `http://localhost:*`, `https://*.example.lan`, `null`, or `*`)")
    env = os.environ.get("LLM_ROUTER_ORIGINS", "")
    for o in filter(None, (x.strip() for x in env.split(","))):
        if _ORIGIN_RE.fullmatch(o.lower().rstrip("/")):
            origins.append(o)
        else:
            src.errors.append(Issue("environment", 0, "LLM_ROUTER_ORIGINS", f"{o!r} is not an origin: "
                                    "scheme://host[:port], no path, comma-separated"))
    return WebAccess(tuple(h.strip().lower().rstrip(".") for h in hosts),
                     tuple(o.strip().lower().rstrip("/") for o in origins))


_CACHE_KEYS = {"type", "host", "port", "password", "url", "redis_url", "namespace", "ttl", "scope", "max_bytes", "max_entry_bytes"}
_CACHE_IGNORED = {"supported_call_types", "mode", "s3_bucket_name", "s3_region_name", "similarity_threshold",
                  "qdrant_collection_name", "redis_semantic_cache_embedding_model", "disk_cache_dir", "default_in_memory_ttl"}


def _cache_settings(src: Source, ls: Mapping[str, Any], router: RouterSettings) -> CacheSettings:
    lp: Path = ("litellm_settings",)
    enabled = get(src, ls, "cache", lp, "bool", default=False)
    cp = get(src, ls, "cache_params", lp, "map", default={})
    path = lp + ("cache_params",)
    unknown_keys(src, cp, path, _CACHE_KEYS, _CACHE_IGNORED)
    kind = get(src, cp, "type", path, "str", default="local")
    if kind not in ("local", "redis"):
        src.error(path + ("type",), f"unsupported cache type {kind!r} (supported: local, redis)")
    scope = get(src, cp, "scope", path, "str", default="key")
    if scope not in ("key", "shared"):
        src.error(path + ("scope",), f"unsupported cache scope {scope!r} (supported: key, shared)")
    url = _redis_url(src, cp, "url", path) or _redis_url(src, cp, "redis_url", path)
    host = get(src, cp, "host", path, "str")
    if url is None and host is not None:
        url = f"redis://{host}:{get(src, cp, 'port', path, 'int', default=6379)}"
    if url is None and kind == "redis":
        url = router.redis_url or (f"redis://{router.redis_host}:{router.redis_port or 6379}" if router.redis_host else None)
        if url is None and enabled:
            src.error(path, "cache type redis needs host/url here or redis_host/redis_url in router_settings")
    return CacheSettings(
        enabled=bool(enabled), type=kind, url=url,
        password=get(src, cp, "password", path, "secret") or router.redis_password,
        namespace=get(src, cp, "namespace", path, "str", default=router.redis_key_prefix),
        ttl=get(src, cp, "ttl", path, "pos", default=600.0), scope=scope,
        max_bytes=int(get(src, cp, "max_bytes", path, "pos", default=64 * 1024 * 1024)),
        max_entry_bytes=int(get(src, cp, "max_entry_bytes", path, "pos", default=1024 * 1024)),
    )


def _redis_url(src: Source, container: Mapping[str, Any], key: str, path: Path) -> str | None:
    """A Redis URL, checked as redis-py will use it: its scheme and every query
    parameter (an unknown one, ``?bogus=1``, passed the check and then failed each
    connection, and the shutdown with a traceback). The URL is never shown: it may
    hold a password."""
    url = get(src, container, key, path, "secret")
    if url:
        from redis.asyncio import ConnectionPool

        try:
            db = urlsplit(url).path.strip("/") if not url.startswith("unix:") else ""
            if db and not db.isdigit():  # redis-py would quietly use database 0
                raise ValueError(f"the database `/{db[:20]}` is not a number")
            pool = ConnectionPool.from_url(url)
            pool.connection_class(**pool.connection_kwargs)  # no I/O: only the arguments are checked
        except (TypeError, ValueError) as exc:
            unknown = re.search(r"unexpected keyword argument '([^']*)'", str(exc))
            detail = f"unknown query parameter {unknown.group(1)!r}" if unknown else str(exc).replace(url, "<url>")
            src.error(path + (key,), f"not a Redis URL redis-py accepts: {detail}")
    return url


def _router_settings(src: Source, top: Mapping[str, Any]) -> RouterSettings:
    path: Path = ("router_settings",)
    rs = get(src, top, "router_settings", (), "map", default={})
    ls = top.get("litellm_settings") if isinstance(top.get("litellm_settings"), dict) else {}
    lp: Path = ("litellm_settings",)
    unknown_keys(src, rs, path, _ROUTER_KEYS, _ROUTER_IGNORED)
    for key in rs:
        if ("router_settings", key) in _NOT_YET:
            src.warn(path + (key,), "accepted but not acted on yet; ignored")
    strategy = get(src, rs, "routing_strategy", path, "str", default="simple-shuffle")
    if strategies.canonical(strategy) is None:
        src.error(path + ("routing_strategy",), f"unknown strategy {strategy!r} (known: {', '.join(sorted(strategies.STRATEGY_NAMES))})")
    debug = get(src, top, "debug_router", (), "bool", default=False)
    return RouterSettings(
        routing_strategy=strategy,
        allowed_fails=get(src, rs, "allowed_fails", path, "int"),
        num_retries=get(src, rs, "num_retries", path, "int", default=get(src, ls, "num_retries", lp, "int")),
        timeout=get(src, rs, "timeout", path, "pos"),
        cooldown_time=get(src, rs, "cooldown_time", path, "num"),
        enable_pre_call_checks=get(src, rs, "enable_pre_call_checks", path, "bool", default=False),
        redis_host=get(src, rs, "redis_host", path, "str"),
        redis_port=get(src, rs, "redis_port", path, "int"),
        redis_password=get(src, rs, "redis_password", path, "secret"),
        redis_url=_redis_url(src, rs, "redis_url", path),
        fallbacks=MappingProxyType({**_fallback_map(src, ls.get("fallbacks"), lp + ("fallbacks",)),
                                    **_fallback_map(src, rs.get("fallbacks"), path + ("fallbacks",))}),
        context_window_fallbacks=MappingProxyType({
            **_fallback_map(src, ls.get("context_window_fallbacks"), lp + ("context_window_fallbacks",)),
            **_fallback_map(src, rs.get("context_window_fallbacks"), path + ("context_window_fallbacks",))}),
        shutdown_grace_period=get(src, rs, "shutdown_grace_period", path, "num", default=30.0),
        queue_timeout=get(src, rs, "queue_timeout", path, "num", default=30.0),
        redis_key_prefix=get(src, rs, "redis_key_prefix", path, "str", default="llm-router:"),
        debug_router=get(src, rs, "debug_router", path, "bool", default=debug),
        max_connections_per_backend=int(get(src, rs, "max_connections_per_backend", path, "pos", default=256)),
        monitor_interval=get(src, rs, "monitor_interval", path, "pos", default=5.0),
        strategy_args=MappingProxyType(strategy_args(src, rs.get("routing_strategy_args"), path + ("routing_strategy_args",),
                                                      strategies.canonical(strategy) == "cache-aware")),
        affinity=_affinity_checks(src, rs.get("optional_pre_call_checks"), path + ("optional_pre_call_checks",)),
        group_affinity=MappingProxyType({
            group: _affinity_checks(src, checks, path + ("model_group_affinity_config", group))
            for group, checks in get(src, rs, "model_group_affinity_config", path, "map", default={}).items()}),
        affinity_ttl=get(src, rs, "deployment_affinity_ttl_seconds", path, "pos", default=3600.0),
        priority=_priority(src, rs, path),
    )


_PRIORITY_KEYS = {"classes", "default", "reserve", "aging_seconds", "queue_limit",
                  "backend_queue_threshold", "aliases", "fairness"}


def _per_class(src: Source, m: Mapping[str, Any], path: Path, classes: tuple[str, ...], what: str) -> dict[str, int]:
    """``{class: N}``: known classes, whole numbers of ``what``, 0 or more."""
    out: dict[str, int] = {}
    for name, n in m.items():
        if name not in classes:
            src.error(path + (name,), f"unknown class (classes: {', '.join(classes)})")
        elif type(n) is not int or n < 0:
            src.error(path + (name,), f"must be a whole number of {what}, 0 or more")
        else:
            out[name] = n
    return out


def _integer(text: str) -> bool:
    try:
        int(text)
    except ValueError:
        return False
    return True


def _priority(src: Source, rs: Mapping[str, Any], path: Path) -> PrioritySettings:
    """``router_settings.priority`` (router.admission), and LiteLLM's ``default_priority``
    (its integer: 0 is the highest class)."""
    pp = path + ("priority",)
    m = get(src, rs, "priority", path, "map", default={})
    unknown_keys(src, m, pp, _PRIORITY_KEYS)
    base = PrioritySettings()
    classes = get(src, m, "classes", pp, "strlist", default=base.classes)
    if classes is not None and (not classes or len(set(classes)) != len(classes)
                                or any(not c or c != c.strip().lower() or _integer(c) for c in classes)):
        src.error(pp + ("classes",), "must be a non-empty list of distinct lower-case class names, highest first "
                  "(not numbers: a number names a class by its rank, 0 the highest)")
        classes = base.classes
    classes = tuple(classes or base.classes)
    aliases: dict[str, str] = {}
    for alias, target in get(src, m, "aliases", pp, "map", default={}).items():
        if not isinstance(target, str) or target not in classes:
            src.error(pp + ("aliases", alias), f"must name one of the classes ({', '.join(classes)})")
        elif str(alias).strip().lower() in classes or _integer(str(alias)):
            src.error(pp + ("aliases", alias), "an alias may not be a class's name or a number")
        else:
            aliases[str(alias).strip().lower()] = target
    probe = PrioritySettings(classes=classes, default=classes[min(1, len(classes) - 1)] if "default" not in classes
                             else "default", aliases=MappingProxyType(aliases))
    default = probe.default
    if "default" in m:
        rank = probe.parse(m["default"])
        if rank is None:
            src.error(pp + ("default",), f"must name one of the classes ({', '.join(classes)})")
        else:
            default = classes[rank]
    elif "default_priority" in rs:  # LiteLLM's router setting: an integer, 0 the highest
        rank = probe.parse(rs["default_priority"])
        if rank is None:
            src.error(path + ("default_priority",), "must be an integer (0 is the highest priority) or a class name")
        else:
            default = classes[rank]
    reserve = _per_class(src, get(src, m, "reserve", pp, "map", default={}), pp + ("reserve",), classes,
                         "slots per deployment")
    limits: dict[str, int] = {}
    default_limit = base.default_queue_limit
    raw = m.get("queue_limit")
    if isinstance(raw, dict):
        limits = _per_class(src, raw, pp + ("queue_limit",), classes, "waiting requests")
    elif raw is not None:
        n = get(src, m, "queue_limit", pp, "int")  # "int": not negative
        if n is not None:
            default_limit = n
    aging = get(src, m, "aging_seconds", pp, "num", default=base.aging_seconds)  # "num": not negative
    threshold = get(src, m, "backend_queue_threshold", pp, "int")  # "int": not negative
    return PrioritySettings(classes=classes, default=default, reserve=MappingProxyType(reserve),
                            aging_seconds=float(aging), queue_limit=MappingProxyType(limits),
                            default_queue_limit=default_limit,
                            backend_queue_threshold=threshold, aliases=MappingProxyType(aliases),
                            fairness=get(src, m, "fairness", pp, "bool", default=True))


# LiteLLM's optional_pre_call_checks: the ones that pin a request to a deployment are acted on
AFFINITY_CHECKS = {"session_affinity", "deployment_affinity", "prompt_caching"}
_CHECKS_IGNORED = {"responses_api_deployment_check", "encrypted_content_affinity", "enforce_model_rate_limits",
                   "router_budget_limiting", "forward_client_headers_by_model_group"}
def _affinity_checks(src: Source, value: Any, path: Path) -> frozenset[str]:
    if value is None:
        return frozenset()
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        src.error(path, "must be a list of check names")
        return frozenset()
    for i, name in enumerate(value):
        if name in _CHECKS_IGNORED:
            src.warn(path + (i,), f"{name!r} is LiteLLM's; llm-router does not act on it")
        elif name not in AFFINITY_CHECKS:
            src.error(path + (i,), f"unknown check {name!r} (known: {', '.join(sorted(AFFINITY_CHECKS | _CHECKS_IGNORED))})")
    return frozenset(v for v in value if v in AFFINITY_CHECKS)


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
    if a.startswith("unix:") or b.startswith("unix:"):
        return a == b  # the same socket path (checked and normalised by check_url)
    pa, pb = urlsplit(a), urlsplit(b)
    host = lambda p: {"localhost": "127.0.0.1"}.get(p.hostname or "", p.hostname)  # noqa: E731
    port = lambda p: p.port or (443 if p.scheme == "https" else 80)  # noqa: E731
    return (pa.scheme, host(pa), port(pa)) == (pb.scheme, host(pb), port(pb))


COSTS = ("input_cost_per_token", "output_cost_per_token")  # USD per token, in model_info (router.costs)


def _env(names: tuple[str, ...]) -> str | None:
    """The first of the environment variables ``names`` that is set (and not empty)."""
    for name in names:
        try:
            value = os.environ.get(name)
        except ValueError:
            value = None
        if value:
            return value
    return None


def _env_key(src: Source, path: Path, names: tuple[str, ...]) -> str | None:
    """A hosted deployment's key from the first of LiteLLM's variables ``names`` that is set;
    one with a line break (a trailing newline from the file it came from) is an error here,
    not a failure of every request."""
    for name in names:
        value = _env((name,))
        if value is not None:
            if _UNSENDABLE.search(value):
                src.error(path, f"the key in {name} contains a line break or control character, which cannot be sent "
                                "in an HTTP header (a trailing newline from the file or variable it came from?)")
                return None
            return value
    return None


def _cloud_base(src: Source, pp: Path, backend: BackendKind, model: str) -> str | None:
    """A hosted API's api_base when the config gives none: LiteLLM's variable, else its default."""
    cloud = backend.cloud
    assert cloud is not None
    from_env = _env(cloud.base_env)
    if from_env is not None:
        return check_url(src, pp + ("api_base",), from_env, backend.wire)
    if not cloud.base:
        src.error(pp, f"api_base is required for {model!r} (or set {' or '.join(cloud.base_env)})")
        return None
    return cloud.base


def _azure_version(configured: str | None) -> str:
    """An Azure deployment's api-version: configured, else ``AZURE_API_VERSION``, else LiteLLM's default."""
    cloud = KINDS["azure"].cloud
    assert cloud is not None
    return configured or _env((cloud.version_env,)) or cloud.default_version


def _model_info(src: Source, path: Path, info: Mapping[str, Any], params: Mapping[str, Any]) -> dict[str, Any]:
    """model_info, with the per-token costs checked; LiteLLM's older place for them,
    litellm_params, fills in what model_info does not say."""
    out = dict(info)
    for key in COSTS:
        where, source = (path + ("model_info",), info) if key in info else (path + ("litellm_params",), params)
        if key in source:
            raw = source[key]
            if isinstance(raw, str) and re.fullmatch(r"\s*\d+(\.\d*)?[eE][-+]?\d+\s*", raw):
                raw = float(raw)  # YAML 1.1 reads 4e-06 (no dot) as a string; LiteLLM takes it as the number
                source = {key: raw}
            value = get(src, source, key, where, "num")
            if value is None:
                out.pop(key, None)
            else:
                out[key] = float(value)
    return out


def _headers(src: Source, pp: Path, params: Mapping[str, Any], wire: str, api_key: str | None) -> dict[str, str]:
    """What every request to the deployment carries: its key, LiteLLM's ``organization``
    and ``extra_headers``."""
    headers = auth_headers(wire, api_key, get(src, params, "organization", pp, "str"))
    extra = get(src, params, "extra_headers", pp, "map", default={})
    for name, value in extra.items():
        if not (isinstance(name, str) and re.fullmatch(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+", name)):
            src.error(pp + ("extra_headers",), f"{name!r} is not an HTTP header name")
        elif name.lower() in ("content-type", "content-length", "host", "transfer-encoding", "connection"):
            src.error(pp + ("extra_headers", name), "is set by the router itself")
        else:
            text = get(src, extra, name, pp + ("extra_headers",), "secret")
            if text is not None:
                headers[name] = text
    return headers


def _deployments(src: Source, top: Mapping[str, Any], providers: Mapping[str, Provider], default_timeout: float,
                 disabled: list[Disabled]) -> list[Deployment]:
    """The model_list's deployments; those of a LiteLLM provider we do not speak go in
    ``disabled`` (with a warning) instead."""
    out: list[Deployment] = []
    model_list = get(src, top, "model_list", (), "list", default=[])
    seen_ids: dict[str, Path] = {}
    for i, entry in enumerate(model_list):
        path: Path = ("model_list", i)
        if not isinstance(entry, dict):
            src.error(path, "must be a mapping with model_name and litellm_params")
            continue
        unknown_keys(src, entry, path, {"model_name", "litellm_params", "model_info"})
        name = get(src, entry, "model_name", path, "str", required=True)
        params = get(src, entry, "litellm_params", path, "map", required=True)
        info = get(src, entry, "model_info", path, "map", default={})
        if name is None or params is None:
            continue
        pp = path + ("litellm_params",)
        unknown_keys(src, params, pp, _PARAM_KEYS, _PARAM_IGNORED)
        model = get(src, params, "model", pp, "str", required=True)
        if model is None:
            continue
        prefix, sep, upstream = model.partition("/")
        kind = PREFIX_KINDS.get(prefix) if sep else None
        if kind is None and sep and prefix in UNSUPPORTED_PREFIXES:
            reason = f"llm-router does not speak LiteLLM's {prefix}/ provider"
            src.warn(pp + ("model",), f"{reason}: {name!r} ({model}) is disabled, never routed to")
            disabled.append(Disabled(name, model, reason, f"{src.file}:{src.line(pp + ('model',))}"))
            continue
        if kind is None:
            src.error(pp + ("model",), f"unknown provider prefix in {model!r} (supported: {', '.join(p + '/' for p in PREFIX_KINDS)}; "
                                       "LiteLLM's other providers load disabled)")
            continue
        backend = KINDS[kind]
        raw_base = get(src, params, "api_base", pp, "str")
        api_base = check_url(src, pp + ("api_base",), raw_base, WIRE_FORMATS[kind])
        hosted = backend.hosted
        if raw_base is None and "api_base" not in params and backend.cloud is not None and "provider" not in info:
            api_base = _cloud_base(src, pp, backend, model)
            if api_base is None:
                continue
            hosted = True  # openai/ without an api_base is OpenAI's own API
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
        if raw_base is None and api_base.startswith("unix:") and check_url(src, path + ("model_info", "provider"), api_base, WIRE_FORMATS[kind]) is None:
            continue  # an Ollama-format deployment on an OpenAI-compatible provider's socket
        api_base = api_root(api_base, WIRE_FORMATS[kind])
        cloud = KINDS[kind].cloud
        hosted = hosted or KINDS[kind].hosted
        api_key = get(src, params, "api_key", pp, "secret")
        if api_key is None and "api_key" not in params and hosted and cloud is not None:
            errors = len(src.errors)
            api_key = _env_key(src, pp, cloud.key_env)
            if api_key is None and len(src.errors) == errors:
                src.warn(pp, f"no api_key for {model!r} and none of {', '.join(cloud.key_env)} is set: "
                             "its requests go without a key")
        if cloud is not None and cloud.model_prefix and not upstream.startswith(cloud.model_prefix.split("/")[0] + "/"):
            upstream = cloud.model_prefix + upstream
        api_version = None
        if WIRE_FORMATS[kind] == "azure":
            api_version = _azure_version(get(src, params, "api_version", pp, "str"))
        elif "api_version" in params:
            src.warn(pp + ("api_version",), f"only Azure OpenAI deployments use api_version; ignored for {model!r}")
        headers = _headers(src, pp, params, WIRE_FORMATS[kind], api_key)
        info = _model_info(src, path, info, params)
        kv = info.get("kv_cache_tokens")
        if kv is not None and (type(kv) is not int or kv < 1):
            src.error(path + ("model_info", "kv_cache_tokens"), "must be a positive number of tokens (the server's KV-cache capacity)")
        policy = info.get("scheduling_policy")
        if policy is not None and policy not in ("priority", "fcfs"):
            src.error(path + ("model_info", "scheduling_policy"), "must be 'priority' (vLLM started with "
                      "--scheduling-policy priority: it gets each request's class as its priority integer) or 'fcfs'")
        native = info.get("native_apis")
        if native is not None and (not isinstance(native, list) or not all(n in NATIVE_API_NAMES for n in native)):
            src.error(path + ("model_info", "native_apis"),
                      f"must be a list of the APIs the server serves itself, of: {', '.join(NATIVE_API_NAMES)}")
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
                api_key=api_key,
                rpm=get(src, params, "rpm", pp, "int"),
                tpm=get(src, params, "tpm", pp, "int"),
                weight=get(src, params, "weight", pp, "num"),
                order=get(src, params, "order", pp, "int"),
                timeout=get(src, params, "timeout", pp, "pos", default=default_timeout),
                stream_timeout=get(src, params, "stream_timeout", pp, "pos"),
                max_tokens=get(src, params, "max_tokens", pp, "int"),
                max_parallel_requests=get(src, params, "max_parallel_requests", pp, "int",
                                          default=KINDS[kind].serial),
                model_info=MappingProxyType(dict(info)),
                is_dynamic=wildcard is not None and "*" in upstream,
                wildcard=wildcard,
                hosted=hosted,
                api_version=api_version,
                headers=MappingProxyType(headers),
            )
        )
    return out


class Wildcard:
    """A model_list name with ``*`` (LiteLLM's wildcard routing, ``openai/*``), matched
    as the regex ``^a(.*)b(.*)c$`` would be, greedy captures included, but in linear time:
    that regex backtracks, about n**(stars-1) steps on a hostile 512-character name
    (``*a*b*c*``), and model names come from clients. A greedy match puts each literal
    part as far right as the parts after it allow: placing them from the right, each at
    its last occurrence before the next, gives exactly that."""

    __slots__ = ("pattern", "parts")

    def __init__(self, pattern: str) -> None:
        self.pattern = pattern
        self.parts = pattern.split("*")

    def match(self, name: str) -> tuple[str, ...] | None:
        """The text each ``*`` stands for, or None. Like ``.``, a ``*`` never spans a
        newline (model names with control characters are refused earlier anyway)."""
        parts = self.parts
        first, last = parts[0], parts[-1]
        if len(parts) == 1:
            return () if name == first else None
        if len(name) < len(first) + len(last) or not name.startswith(first) or not name.endswith(last):
            return None
        start, end = len(first), len(name) - len(last)
        ends: list[int] = []  # where each middle part starts, right to left
        for part in reversed(parts[1:-1]):
            at = name.rfind(part, start, end)
            if at < 0:
                return None
            ends.append(at)
            end = at
        groups: list[str] = []
        pos = start
        for part, at in zip(parts[1:-1], reversed(ends)):
            groups.append(name[pos:at])
            pos = at + len(part)
        groups.append(name[pos:len(name) - len(last)])
        return None if any("\n" in g for g in groups) else tuple(groups)


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
# Entry point
# ---------------------------------------------------------------------------


def default_mappings_path(config_path: str) -> str:
    return os.path.join(os.path.dirname(config_path), "model-mappings.yaml")


def read_files(path: str, mappings_path: str | None = None) -> dict[str, bytes | None]:
    """The bytes of the files ``load_config`` would read (None: absent or unreadable), so
    that several processes load the very same configuration whatever the disk holds
    later (``router.workers`` hands its workers the configuration they accepted)."""
    files: dict[str, bytes | None] = {}
    for p in (path, default_mappings_path(path) if mappings_path is None else mappings_path):
        try:
            with open(p, "rb") as fh:
                files[p] = fh.read()
        except (OSError, ValueError):
            files[p] = None
    return files


def load_config(path: str, mappings_path: str | None = None, *, mappings_required: bool = False,
                files: Mapping[str, bytes | None] | None = None) -> Config:
    """Load and validate both files. ``mappings_path=None`` means the default file
    beside ``path``, used only if it exists (unless ``mappings_required``). ``files``
    (from ``read_files``) gives their bytes instead of the disk's."""

    def exists(p: str) -> bool:
        return files[p] is not None if files is not None and p in files else os.path.exists(p)

    def read(p: str) -> Source:
        raw = files.get(p) if files is not None else None
        return load(p, raw)  # no bytes: from the disk (which says why it cannot be read)

    src = read(path)
    msrc: Source | None = None
    if mappings_path is None:
        candidate = default_mappings_path(path)
        if exists(candidate):
            mappings_path = candidate
    elif not exists(mappings_path) and not mappings_required:
        mappings_path = None
    if mappings_path is not None:
        msrc = read(mappings_path)
    if src.errors or (msrc and msrc.errors):
        raise ConfigError(src.errors + (msrc.errors if msrc else []))

    mappings = load_policy(msrc) if msrc else Mappings()
    top = src.data if isinstance(src.data, dict) else {}
    if src.data is not None and not isinstance(src.data, dict):
        src.error((), "the config file must be a mapping with model_list")
    unknown_keys(src, top, (), _TOP_KEYS, _TOP_IGNORED)

    env_vars = get(src, top, "environment_variables", (), "map", default={})
    for k, v in env_vars.items():
        if isinstance(v, (str, int, float)) and not isinstance(v, bool):
            try:
                os.environ.setdefault(str(k), str(v))
            except (ValueError, OSError, UnicodeError):  # "=" or NUL in the name, NUL or a lone surrogate, an empty name
                src.error(("environment_variables", k), "not a valid environment variable name or value")
        else:
            src.error(("environment_variables", k), "must be a string")

    ls = get(src, top, "litellm_settings", (), "map", default={})
    unknown_keys(src, ls, ("litellm_settings",), _LITELLM_KEYS, _LITELLM_IGNORED)
    gs = get(src, top, "general_settings", (), "map", default={})
    unknown_keys(src, gs, ("general_settings",), _GENERAL_KEYS, _GENERAL_IGNORED)
    master_key = get(src, gs, "master_key", ("general_settings",), "secret")
    master_key = os.environ.get("LLM_ROUTER_MASTER_KEY") or master_key
    router = _router_settings(src, top)
    api_keys = _api_keys(src, gs, master_key, router.priority)
    limits = _limits(src, gs)
    web = _web_access(src, gs)

    cache = _cache_settings(src, ls, router)
    request_timeout = router.timeout or get(src, ls, "request_timeout", ("litellm_settings",), "pos") or DEFAULT_TIMEOUT
    disabled: list[Disabled] = []
    deployments = _deployments(src, top, mappings.providers, request_timeout, disabled)

    by_id = {d.id: d for d in deployments}
    groups: dict[str, list[Deployment]] = {}
    wildcards: list[tuple[Wildcard, Deployment]] = []
    for d in deployments:
        if d.wildcard:
            wildcards.append((Wildcard(d.wildcard), d))
        else:
            groups.setdefault(d.model_name, []).append(d)
    frozen_groups = {k: tuple(v) for k, v in groups.items()}

    catchalls = {
        p.name: Deployment(id=f"{p.name}/*", model_name="*", provider=p.name, kind=p.kind, upstream_model="",
                           api_base=api_root(p.api_base, p.wire), timeout=request_timeout, is_dynamic=True,
                           max_parallel_requests=KINDS[p.kind].serial, hosted=p.hosted,
                           api_key=_env_key(msrc or src, ("providers", p.name), KINDS[p.kind].cloud.key_env)
                           if p.hosted and KINDS[p.kind].cloud else None,
                           api_version=_azure_version(None) if p.wire == "azure" else None)
        for p in mappings.providers.values()
    }
    aliases = _aliases(src, top, frozen_groups, by_id)
    unserved = [w for w in src.warnings if any(w.line == int(x.where.rsplit(":", 1)[1]) and w.file == src.file for x in disabled)]
    disabled_names = {x.model_name for x in disabled} - set(frozen_groups) - set(aliases)
    for section in ("router_settings", "litellm_settings"):
        table = top.get(section, {}).get("fallbacks") if isinstance(top.get(section), dict) else None
        for i, entry in enumerate(table if isinstance(table, list) else []):
            for group, names in (entry.items() if isinstance(entry, dict) else ()):
                if isinstance(names, list) and names and all(n in disabled_names for n in names):
                    src.warn((section, "fallbacks", i, group), f"the fallbacks of {group!r} ({', '.join(map(str, names))}) "
                                                               "are all disabled deployments: it has no fallback")
                    unserved.append(src.warnings[-1])
    for model, spec in mappings.exact_matches.items():
        if model in frozen_groups and not any(d.provider == spec.provider for d in frozen_groups[model]):
            msrc.warn(("exact_matches", model), f"model_list group {model!r} has no deployment on provider {spec.provider!r}; the model_list group is used")
    for name, chain in mappings.fallback_chains.items():
        for j, step in enumerate(chain.steps):
            wanted = step.preferred_model
            if wanted in frozen_groups and not any(d.provider == step.provider for d in frozen_groups[wanted]):
                on = ", ".join(sorted({d.provider for d in frozen_groups[wanted]}))
                msrc.warn(("fallback_chains", name, "chain", j, "preferred_model"),
                          f"model group {wanted!r} has no deployment on provider {step.provider!r} (it is on {on}): "
                          f"this step sends {wanted!r} to {step.provider!r}'s catch-all at {shown(catchalls[step.provider].api_base)}; "
                          f"give the deployment model_info.provider: {step.provider}")
    for model in mappings.redundant_models:
        if model not in frozen_groups:
            msrc.warn(("redundant_models", model), f"no model_list group named {model!r}; weights unused")
    for name, spec in mappings.load_balancing.items():
        for j, target in enumerate(spec.applicable_to):
            if target not in mappings.capabilities and target not in frozen_groups and target not in aliases:
                msrc.warn(("load_balancing", name, "applicable_to", j), f"{target!r} is neither a capability, a model group nor an alias")

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
        api_keys=api_keys,
        limits=limits,
        cache=cache,
        web=web,
        request_timeout=request_timeout,
        warnings=warnings,
        disabled=tuple(disabled),
        unserved=tuple(unserved),
    )
