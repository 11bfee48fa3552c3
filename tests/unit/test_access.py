"""Keys, limits and the regex check: the pure parts of the security work."""

from __future__ import annotations

import re
import time

import pytest

from router.access import GLOBAL, Access, RateLimits
from router.config import ApiKey, Config, ConfigError, Limits, load_config
from router.errors import AuthenticationError, PermissionDenied, RequestRateLimited
from router.regexcheck import backtracking_problem
from tests.unit.test_config import errors_of, write

MASTER, TEAM = ApiKey("master", "sk-master-000", admin=True), ApiKey("team", "sk-team-0000", ("llama*", "qwen2.5:7b"), 2)


def access(*keys: ApiKey, metrics_require_auth: bool = False) -> Access:
    cfg = Config.__new__(Config)
    object.__setattr__(cfg, "api_keys", keys)
    object.__setattr__(cfg, "limits", Limits(metrics_require_auth=metrics_require_auth))
    return Access(cfg)


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def test_paths_fall_in_open_admin_and_client_classes():
    a = access(MASTER, TEAM)
    for path in ("/health/liveliness", "/health/readiness", "/openapi.json", "/ui", "/metrics"):
        assert a.authorize(path, {}) is None
    for path in ("/health", "/router/stats", "/router/reload", "/ui/data"):
        with pytest.raises(AuthenticationError):
            a.authorize(path, {})
        with pytest.raises(PermissionDenied):
            a.authorize(path, bearer(TEAM.key))
        assert a.authorize(path, {"x-api-key": MASTER.key}) is MASTER
    assert a.authorize("/v1/chat/completions", bearer(TEAM.key)) is TEAM
    assert a.authorize("/v1/chat/completions", {"Authorization": f"bearer  {MASTER.key} "}) is MASTER
    for wrong in ("", "sk-team-000", TEAM.key + "x", "Basic " + TEAM.key):
        with pytest.raises(AuthenticationError):
            a.authorize("/v1/chat/completions", {"Authorization": wrong})
    assert access().authorize("/router/stats", {}) is None  # no keys configured: open (loopback only, see the CLI)
    with pytest.raises(AuthenticationError):
        access(MASTER, metrics_require_auth=True).authorize("/metrics", {})


def test_key_model_globs():
    assert TEAM.allows("llama3.1:8b") and TEAM.allows("nope", "qwen2.5:7b") and not TEAM.allows("qwen2.5:14b")
    assert not TEAM.allows(None) and MASTER.allows("anything")


def test_rate_limits_count_per_minute_per_key_and_globally():
    limits, t = RateLimits(), 60 * 1000.0 + 10  # 50 s left in this minute
    limits.admit(TEAM, 3, t)
    limits.admit(TEAM, 3, t + 1)
    with pytest.raises(RequestRateLimited) as info:
        limits.admit(TEAM, 3, t + 2)
    assert info.value.headers() == {"Retry-After": "48"}
    limits.admit(MASTER, 3, t + 2)  # other keys are not held by team's limit
    with pytest.raises(RequestRateLimited):
        limits.admit(MASTER, 3, t + 3)  # the global one: team's two and master's one
    limits.admit(TEAM, 3, t + 50)  # a new minute
    # Counts from other instances (through Redis) add to ours, never counting ours twice.
    minute = int((t + 50) // 60)
    limits.flushed[(GLOBAL, minute)] = 1
    limits.shared[(GLOBAL, minute)] = 3  # ours (1) + 2 elsewhere
    assert limits.count(GLOBAL, minute) == 3
    with pytest.raises(RequestRateLimited):
        limits.admit(None, 3, t + 51)


@pytest.mark.parametrize("pattern", [r"(a+)+$", r"(.*)*x", r"^(\w+\s?)+$", r"^(\d+|\w+)*$", r"(.*a)*x", r"((ab)+)+c",
                                     r"(x+x+)+y", r"^(a|a?)+$", r"^([a-z0-9]+)*@"])
def test_catastrophic_patterns_are_refused(pattern):
    assert backtracking_problem(pattern)


@pytest.mark.parametrize("pattern", [r"^meta-llama/.*", r".*:\d+[bB]$", r".*\.gguf$", r"^(\w+-)*\d+b$", r"^(foo|bar)*$",
                                     r"(?i)^llama.*", r".*(code|coder).*", r"^([a-z]+/)*[a-z]+$", r"^(\w|\d)+$", r"^[^/]+/.*$"])
def test_ordinary_patterns_pass(pattern):
    assert backtracking_problem(pattern) is None
    re.compile(pattern)


def test_a_refused_pattern_is_a_located_config_error(tmp_path):
    cfg = write(tmp_path, "c.yaml", "model_list: []\n")
    maps = write(tmp_path, "m.yaml", """
        providers:
          ollama: {type: ollama, api_base: "http://127.0.0.1:11434"}
        patterns:
          - pattern: "^(\\\\w+\\\\s?)+$"
            provider: ollama
        """)
    errs = errors_of(cfg, maps)
    assert len(errs) == 1 and errs[0].startswith(f"{maps}:4: patterns[0].pattern: refused regex")
    assert "nested" in errs[0]


def test_keys_and_limits_in_general_settings(tmp_path, monkeypatch):
    monkeypatch.delenv("LLM_ROUTER_MASTER_KEY", raising=False)
    cfg = write(tmp_path, "c.yaml", """
        model_list: []
        general_settings:
          master_key: sk-master-000
          api_keys:
            - {name: team, key: sk-team-0000, models: [llama3.1:8b], rpm_limit: 10}
          max_request_size_mb: 4
          client_read_timeout: 5
          max_connections: 100
          global_rpm_limit: 600
        """)
    config = load_config(cfg)
    assert [k.name for k in config.api_keys] == ["master", "team"] and config.api_keys[0].admin
    assert config.api_keys[1].models == ("llama3.1:8b",) and config.api_keys[1].rpm_limit == 10
    assert (config.limits.max_request_size_mb, config.limits.client_read_timeout, config.limits.max_connections,
            config.limits.global_rpm_limit) == (4, 5, 100, 600)
    assert "sk-team-0000" not in repr(config.api_keys) and "sk-master-000" not in repr(config)

    bad = write(tmp_path, "bad.yaml", """
        model_list: []
        general_settings:
          master_key: sk-master-000
          api_keys:
            - {name: a, key: short}
            - {name: b, key: sk-master-000, modles: [x]}
            - just-a-string
          max_connections: 0
          max_json_depth: deep
        """)
    errs = errors_of(bad)
    assert any(e.startswith(f"{bad}:5: general_settings.api_keys[0].key: must be at least 8") for e in errs), errs
    assert any(":6: general_settings.api_keys[1].key: the same key" in e for e in errs), errs
    assert any(":7: general_settings.api_keys[2]: must be a mapping" in e for e in errs), errs
    assert any(":8: general_settings.max_connections: must be at least 1" in e for e in errs), errs
    assert any(":9: general_settings.max_json_depth: must be a non-negative integer" in e for e in errs), errs
    assert len(errs) == 5
    assert not any("sk-master-000" in e for e in errs)


def test_a_key_may_use_a_deployment_by_its_own_names_or_by_the_name_the_request_routed_by():
    from router.domain import Deployment
    dep = Deployment("qwen-1", "coder", "vllm", "vllm", "Qwen/Qwen2.5-7B", "http://127.0.0.1:1")
    catchall = Deployment("vllm/*", "vllm/*", "vllm", "vllm", "", "http://127.0.0.1:1", is_dynamic=True)
    key = ApiKey("k", "sk-k-000000", ("coder", "qwen-1", "fast", "meta-llama/*"))
    assert Access.may_use(None, dep, "x") and Access.may_use(ApiKey("all", "sk-all-0000"), dep, "x")
    assert Access.may_use(key, dep, dep.upstream_model)  # its group (and its id)
    assert Access.may_use(ApiKey("k", "sk-k-000000", ("qwen-1",)), dep, dep.upstream_model)  # its id
    other = Deployment("big-1", "big", "vllm", "vllm", "meta-llama/Llama-70B", "http://127.0.0.1:1")
    assert not Access.may_use(key, other, other.upstream_model)  # a static deployment's upstream name is not one
    assert Access.may_use(key, other, other.upstream_model, asked="fast")  # ...but the name it was reached by is
    assert Access.may_use(key, catchall, "meta-llama/x") and not Access.may_use(key, catchall, "mistral")
