"""Configuration loading: the shipped files, each class of error with its file:line, warnings."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from router.config import ConfigError, load_config

ROOT = Path(__file__).resolve().parents[2]


def write(tmp_path: Path, name: str, text: str) -> str:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text).lstrip())
    return str(path)


def errors_of(config: str, mappings: str | None = None) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_config(config, mappings)
    return [str(i) for i in info.value.issues]


def test_shipped_config_loads_the_seed_setup():
    cfg = load_config(str(ROOT / "config/litellm-unified.yaml"))
    assert cfg.mappings_file and cfg.mappings_file.endswith("model-mappings.yaml")
    providers = {d.id: (d.provider, d.kind, d.api_base, d.upstream_model) for d in cfg.deployments}
    assert providers["llama3.1-ollama"] == ("ollama", "ollama", "http://127.0.0.1:11434", "llama3.1:8b")
    assert providers["qwen-coder"] == ("ollama", "ollama", "http://127.0.0.1:11434", "qwen2.5-coder:7b")
    assert providers["llama2-13b-vllm"] == ("vllm", "vllm", "http://127.0.0.1:8001/v1", "meta-llama/Llama-2-13b-chat-hf")
    assert providers["llama-cpp-python"][:3] == ("llama_cpp_python", "llama_cpp_python", "http://127.0.0.1:8000/v1")
    assert providers["llama-cpp-native"][:3] == ("llama_cpp_native", "llama_cpp_native", "http://127.0.0.1:8080/v1")
    assert [p.shown for p in cfg.mappings.patterns] == ["^meta-llama/.*", "^mistralai/.*", ".*:\\d+[bB]$", ".*\\.gguf$"]
    assert set(cfg.mappings.fallback_chains) == {"default", "code_generation", "high_availability"}
    assert dict(cfg.mappings.redundant_models["llama3.1:8b"]) == {"ollama": 0.7, "llama_cpp_python": 0.3}
    assert [d.id for d in cfg.aliases["general_chat"]] == ["llama3.1-ollama", "llama2-13b-vllm", "llama-cpp-python"]
    assert cfg.router.timeout == 30 and cfg.router.routing_strategy == "usage-based-routing-v2"


def test_check_config_cli_accepts_shipped_config_with_summary():
    out = subprocess.run([sys.executable, "-m", "router", "check-config"], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("OK ") and "7 deployments" in out.stdout and "4 patterns" in out.stdout


@pytest.mark.parametrize(
    "params, line, path, problem",
    [
        ("model: antropic/claude-3\n      api_base: http://x", 4, "model_list[0].litellm_params.model", "unknown provider prefix"),
        ("model: azure/gpt-4o", 3, "model_list[0].litellm_params", "api_base is required"),
        ("model: openai/foo\n      api_base: http://x\n      rpm: lots", 6, "model_list[0].litellm_params.rpm", "must be a non-negative integer"),
        ("model: openai/foo\n      api_base: ftp://x", 5, "model_list[0].litellm_params.api_base", "must be an http(s) URL"),
        ("model: openai/foo\n      api_base: http://x\n      timeout: [1]", 6, "model_list[0].litellm_params.timeout", "must be a number greater than 0"),
        ("model: openai/foo\n      api_base: http://x\n      timeout: 0", 6, "model_list[0].litellm_params.timeout", "must be a number greater than 0"),
        ("model: openai/foo\n      api_base: http://user:pw@x", 5, "model_list[0].litellm_params.api_base", "must not carry credentials"),
        ("model: openai/foo\n      api_base: os.environ/NO_SUCH_VAR_X", 5, "model_list[0].litellm_params.api_base", "environment variable NO_SUCH_VAR_X is not set"),
    ],
)
def test_model_list_errors_name_file_line_and_key(tmp_path, params, line, path, problem):
    cfg = str(tmp_path / "c.yaml")
    Path(cfg).write_text(f"model_list:\n  - model_name: m\n    litellm_params:\n      {params}\n")
    errs = errors_of(cfg)
    assert len(errs) == 1, errs
    assert errs[0].startswith(f"{cfg}:{line}: {path}: {problem}"), errs


def test_duplicate_deployment_ids_are_an_error(tmp_path):
    cfg = write(tmp_path, "c.yaml", """
        model_list:
          - model_name: a
            litellm_params: {model: openai/a, api_base: "http://h:1"}
            model_info: {id: same}
          - model_name: b
            litellm_params: {model: openai/b, api_base: "http://h:1"}
            model_info: {id: same}
        """)
    errs = errors_of(cfg)
    assert errs == [f"{cfg}:7: model_list[1].model_info.id: duplicate deployment id 'same' (first used at line 4)"]


def test_yaml_syntax_error_reports_its_line(tmp_path):
    cfg = write(tmp_path, "c.yaml", """
        model_list:
          - model_name: a
            litellm_params: {model: openai/a
        router_settings: {}
        """)
    errs = errors_of(cfg)
    assert len(errs) == 1 and errs[0].startswith(f"{cfg}:") and "YAML syntax error" in errs[0]


def test_duplicate_yaml_keys_are_reported(tmp_path):
    cfg = write(tmp_path, "c.yaml", """
        router_settings:
          timeout: 5
          timeout: 50
        """)
    assert errors_of(cfg) == [f"{cfg}:3: router_settings.timeout: duplicate key (YAML would silently keep only the last one)"]


def test_policy_file_errors_bad_regex_unknown_provider_bad_condition(tmp_path):
    cfg = write(tmp_path, "c.yaml", "model_list: []\n")
    maps = write(tmp_path, "m.yaml", """
        providers:
          ollama: {type: ollama, api_base: "http://127.0.0.1:11434"}
        patterns:
          - pattern: "^(unclosed"
            provider: ollama
          - pattern: ".*"
            provider: vllm
        fallback_chains:
          default:
            chain:
              - primary: ollama
                condition: model_size >>= "13B"
        model_size_routing:
          - size: "13B - 8B"
            provider: ollama
        """)
    errs = errors_of(cfg, maps)
    assert errs[0].startswith(f"{maps}:4: patterns[0].pattern: bad regex '^(unclosed'")
    assert errs[1] == f"{maps}:7: patterns[1].provider: unknown provider 'vllm' (known: ollama)"
    assert errs[2].startswith(f"{maps}:12: fallback_chains.default.chain[0].condition: ")
    assert errs[3] == f"{maps}:14: model_size_routing[0].size: empty size range: '13B - 8B'"
    assert len(errs) == 4


def test_real_litellm_config_with_unsupported_keys_loads_with_one_warning_each(tmp_path, monkeypatch):
    monkeypatch.setenv("VLLM_KEY", "sk-upstream-secret")
    cfg = write(tmp_path, "c.yaml", """
        model_list:
          - model_name: gpt-local
            litellm_params:
              model: hosted_vllm/Qwen/Qwen2.5-7B-Instruct
              api_base: http://127.0.0.1:8001/v1
              api_key: os.environ/VLLM_KEY
              input_cost_per_token: 0.0
              tags: ["free"]
        litellm_settings:
          drop_params: true
          success_callback: ["langfuse"]
        general_settings:
          master_key: sk-1234
          database_url: postgres://x
        router_settings:
          routing_strategy: simple-shuffle
          retry_policy: {TimeoutErrorRetries: 2}
        some_future_key: 1
        """)
    loaded = load_config(cfg)
    warnings = [str(w) for w in loaded.warnings]
    assert len(warnings) == 6, warnings
    assert f"{cfg}:8: model_list[0].litellm_params.tags: LiteLLM setting not supported by llm-router; ignored" in warnings
    assert f"{cfg}:18: some_future_key: unknown key; ignored" in warnings
    dep = loaded.deployments[0]
    assert dep.model_info["input_cost_per_token"] == 0.0  # LiteLLM's older place for the price, folded into model_info
    assert (dep.api_key, dep.api_base, dep.upstream_model, dep.provider) == ("sk-upstream-secret", "http://127.0.0.1:8001/v1", "Qwen/Qwen2.5-7B-Instruct", "vllm")
    assert "sk-upstream-secret" not in repr(dep) and "sk-1234" not in repr(loaded)
    assert loaded.master_key == "sk-1234"


def test_provider_is_found_by_api_base_when_model_info_does_not_name_it(tmp_path):
    cfg = write(tmp_path, "c.yaml", """
        model_list:
          - model_name: tiny
            litellm_params: {model: openai/tiny.gguf, api_base: "http://localhost:8080/v1/"}
        """)
    maps = write(tmp_path, "m.yaml", """
        providers:
          llama_cpp_native: {type: llama_cpp_native, api_base: "http://127.0.0.1:8080"}
        """)
    dep = load_config(cfg, maps).deployments[0]
    assert (dep.provider, dep.kind, dep.api_base) == ("llama_cpp_native", "llama_cpp_native", "http://localhost:8080/v1")


def test_invalid_config_exits_2_with_file_line_messages_and_no_traceback(tmp_path):
    cfg = write(tmp_path, "c.yaml", """
        model_list:
          - model_name: a
            litellm_params: {model: bogus/a, api_base: "http://h:1"}
        """)
    for command in (["check-config"], ["serve", "--port", "0"]):
        out = subprocess.run([sys.executable, "-m", "router", *command, "--config", cfg], capture_output=True, text=True,
                             cwd=ROOT, env={**os.environ, "LLM_ROUTER_PORT": "0"}, timeout=30)
        assert out.returncode == 2
        assert f"{cfg}:3: model_list[0].litellm_params.model: unknown provider prefix in 'bogus/a'" in out.stderr
        assert "Traceback" not in out.stderr + out.stdout


def test_environment_references_and_quoted_numbers_work_for_every_key(tmp_path, monkeypatch):
    monkeypatch.setenv("STREAM_TIMEOUT", "45")
    cfg = write(tmp_path, "c.yaml", """
        model_list:
          - model_name: gemini
            litellm_params:
              model: openai/gemini-2.0-flash
              api_base: https://example.invalid/v1beta/openai/
              stream_timeout: os.environ/STREAM_TIMEOUT
              rpm: "60"
              timeout: "12.5"
        """)
    dep = load_config(cfg).deployments[0]
    assert (dep.stream_timeout, dep.rpm, dep.timeout) == (45.0, 60, 12.5)
    assert dep.api_base == "https://example.invalid/v1beta/openai"  # a path is kept as given, no /v1 added


def test_a_key_with_a_line_break_is_refused_without_showing_it(tmp_path, monkeypatch):
    """A key read from a file often ends in a newline; sent as a header it would split the
    request. It is a located error, and the message does not repeat the secret."""
    monkeypatch.setenv("VLLM_KEY", "sk-secret-value\n")
    cfg = write(tmp_path, "c.yaml", """
        model_list:
          - model_name: m
            litellm_params:
              model: openai/m
              api_base: http://127.0.0.1:8000
              api_key: os.environ/VLLM_KEY
        """)
    (err,) = errors_of(cfg)
    assert ":6: model_list[0].litellm_params.api_key: contains a line break" in err
    assert "sk-secret" not in err


def test_explain_cli_prints_the_trace_and_the_decision_without_sending_anything():
    out = subprocess.run([sys.executable, "-m", "router", "explain", "llama-70b"], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "size: 70B is in '> 13B' -> provider vllm" in out.stdout
    assert "[ROUTER] Model: llama-70b -> Provider: vllm (model size) deployment=vllm/*" in out.stdout
    out = subprocess.run([sys.executable, "-m", "router", "explain", "-H", "X-Capability: high_throughput", "--json"],
                         cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0 and '"route": "capability"' in out.stdout and '"deployment": "llama2-13b-vllm"' in out.stdout
    out = subprocess.run([sys.executable, "-m", "router", "explain", "-H", "X-Capability: nope"], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 1 and "Unknown capability 'nope'" in out.stderr


def test_summary_counts_litellm_fallbacks(tmp_path):
    """The start-up line said "0 fallback chains" for a config whose fallbacks are
    LiteLLM's (router_settings / litellm_settings), as if none were set."""
    cfg = load_config(write(tmp_path, "c.yaml", textwrap.dedent("""\
        model_list:
          - {model_name: a, litellm_params: {model: openai/x, api_base: 'http://127.0.0.1:9/v1'}}
          - {model_name: b, litellm_params: {model: openai/x, api_base: 'http://127.0.0.1:9/v1'}}
        router_settings:
          fallbacks: [{a: [b]}]
        litellm_settings:
          context_window_fallbacks: [{b: [a]}]
        """)))
    assert "fallbacks for 2 model groups" in cfg.summary()


@pytest.mark.parametrize("url, problem", [
    ("redis://127.0.0.1:6379/15?bogus=1", "unknown query parameter 'bogus'"),
    ("redis://:hunter2secret@127.0.0.1:6379/0?socket_timeout=soon", "socket_timeout"),
    ("http://127.0.0.1:6379", "schemes"),
    ("redis://:hunter2secret@127.0.0.1:6379/notadb", "`/notadb` is not a number"),  # redis-py: database 0, quietly
])
def test_a_redis_url_redis_py_would_refuse_is_a_config_error_without_its_secret(tmp_path, url, problem):
    """An unknown query parameter passed check-config, then every connection failed and
    the shutdown ended in a traceback. The error names the problem, never the URL."""
    head = "model_list:\n  - model_name: a\n    litellm_params: {model: openai/x, api_base: 'http://127.0.0.1:9/v1'}\n"
    for where, key in ((f"router_settings:\n  redis_url: '{url}'\n", "router_settings.redis_url"),
                       (f"litellm_settings:\n  cache: true\n  cache_params: {{type: redis, url: '{url}'}}\n",
                        "litellm_settings.cache_params.url")):
        errors = errors_of(write(tmp_path, "c.yaml", head + where))
        assert len(errors) == 1 and problem in errors[0] and key in errors[0], errors
        assert "hunter2secret" not in errors[0]


def test_redis_urls_redis_py_accepts_load(tmp_path):
    head = "model_list:\n  - model_name: a\n    litellm_params: {model: openai/x, api_base: 'http://127.0.0.1:9/v1'}\n"
    for good in ("redis://:pw@127.0.0.1:6379/0?socket_timeout=2", "rediss://h:6380/1?ssl_cert_reqs=none", "unix:///run/r.sock?db=2"):
        assert load_config(write(tmp_path, "c.yaml", head + f"router_settings:\n  redis_url: '{good}'\n")).router.redis_url == good


BASE = 'model_list:\n  - model_name: m\n    litellm_params: {model: openai/m, api_base: "http://h:1"}\n'


@pytest.mark.parametrize("text,line,path,problem", [
    ("router_settings:\n  priority: {classes: [a, a]}\n", 5, "router_settings.priority.classes", "must be a non-empty list"),
    ("router_settings:\n  priority: {classes: ['1', '0']}\n", 5, "router_settings.priority.classes", "must be a non-empty list"),
    ("router_settings:\n  priority: {default: urgentish}\n", 5, "router_settings.priority.default", "must name one of the classes"),
    ("router_settings:\n  priority: {reserve: {vip: 1}}\n", 5, "router_settings.priority.reserve.vip", "unknown class"),
    ("router_settings:\n  priority: {reserve: {interactive: -1}}\n", 5, "router_settings.priority.reserve.interactive", "must be a whole number"),
    ("router_settings:\n  priority: {queue_limit: {batch: x}}\n", 5, "router_settings.priority.queue_limit.batch", "must be a whole number"),
    ("router_settings:\n  priority: {aging_seconds: -1}\n", 5, "router_settings.priority.aging_seconds", "must be a non-negative number"),
    ("router_settings:\n  priority: {aliases: {batch: interactive}}\n", 5, "router_settings.priority.aliases.batch", "an alias may not be"),
    ("router_settings:\n  priority: {aliases: {p0: vip}}\n", 5, "router_settings.priority.aliases.p0", "must name one of the classes"),
    ("router_settings:\n  priority: {backend_queue_threshold: -2}\n", 5, "router_settings.priority.backend_queue_threshold", "must be a non-negative integer"),
    ("router_settings:\n  default_priority: soon\n", 5, "router_settings.default_priority", "must be an integer"),
    ("general_settings:\n  master_key: sk-master-00001\n  api_keys:\n    - {name: a, key: sk-aaaaaaaa1, priority: vip}\n", 7,
     "general_settings.api_keys[0].priority", "unknown priority class 'vip'"),
    ("general_settings:\n  master_key: sk-master-00001\n  api_keys:\n    - {name: a, key: sk-aaaaaaaa1, max_priority: [1]}\n", 7,
     "general_settings.api_keys[0].max_priority", "unknown priority class"),
])
def test_priority_settings_errors_name_file_line_and_key(tmp_path, text, line, path, problem):
    cfg = write(tmp_path, "c.yaml", "")
    Path(cfg).write_text(BASE + text)
    errs = errors_of(cfg)
    assert len(errs) == 1, errs
    assert errs[0].startswith(f"{cfg}:{line}: {path}: {problem}"), errs


def test_priority_settings_load_with_litellm_names(tmp_path):
    cfg = write(tmp_path, "c.yaml", "")
    Path(cfg).write_text(BASE + "router_settings:\n  default_priority: 0\n  priority: {reserve: {interactive: 1}, queue_limit: 7}\n"
                         "litellm_settings:\n  priority_reservation: {prod: 0.9}\n"
                         "general_settings:\n  master_key: sk-master-00001\n  api_keys:\n"
                         "    - {name: a, key: sk-aaaaaaaa1, priority: low, max_priority: 1}\n")
    config = load_config(cfg)
    p = config.router.priority
    assert p.default == "interactive" and p.reserve == {"interactive": 1} and p.limit(2) == 7
    key = next(k for k in config.api_keys if k.name == "a")
    assert (key.priority, key.max_priority) == ("batch", "default")
    assert any("litellm_settings.priority_reservation" in str(w) and "ignored" in str(w) for w in config.warnings)
