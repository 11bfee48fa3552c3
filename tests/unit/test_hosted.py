"""The hosted providers' table (router.backends.hosted) as a config sees it: default
bases and key variables as LiteLLM has them, what overrides what, Azure's api-version,
the providers we do not speak, and keys that never show."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import orjson
import pytest

from router.backends import KINDS, PREFIX_KINDS
from router.backends.base import auth_headers
from router.config import ConfigError, load_config

# From LiteLLM's source (see router/backends/hosted.py): prefix -> (default base, first key variable).
LITELLM = {
    "groq": ("https://api.groq.com/openai/v1", "GROQ_API_KEY"),
    "together_ai": ("https://api.together.xyz/v1", "TOGETHER_API_KEY"),
    "openrouter": ("https://openrouter.ai/api/v1", "OPENROUTER_API_KEY"),
    "deepseek": ("https://api.deepseek.com/beta", "DEEPSEEK_API_KEY"),
    "mistral": ("https://api.mistral.ai/v1", "MISTRAL_API_KEY"),
    "fireworks_ai": ("https://api.fireworks.ai/inference/v1", "FIREWORKS_API_KEY"),
    "xai": ("https://api.x.ai/v1", "XAI_API_KEY"),
    "cerebras": ("https://api.cerebras.ai/v1", "CEREBRAS_API_KEY"),
    "deepinfra": ("https://api.deepinfra.com/v1/openai", "DEEPINFRA_API_KEY"),
    "anthropic": ("https://api.anthropic.com", "ANTHROPIC_API_KEY"),
    "openai": ("https://api.openai.com/v1", "OPENAI_API_KEY"),
}


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    for kind in KINDS.values():
        if kind.cloud is not None:
            for name in (*kind.cloud.key_env, *kind.cloud.base_env, kind.cloud.version_env):
                if name:
                    monkeypatch.delenv(name, raising=False)


def _load(tmp_path, models: str, extra: str = ""):
    (tmp_path / "c.yaml").write_text("model_list:\n" + textwrap.indent(textwrap.dedent(models), "  ") + extra)
    return load_config(str(tmp_path / "c.yaml"))


@pytest.mark.parametrize("prefix", sorted(LITELLM))
def test_each_cloud_without_api_base_goes_to_litellms_default_with_litellms_key_variable(tmp_path, monkeypatch, prefix):
    base, key_var = LITELLM[prefix]
    monkeypatch.setenv(key_var, "sk-from-env")
    dep = _load(tmp_path, f"- {{model_name: m, litellm_params: {{model: {prefix}/some-model}}}}").deployments[0]
    assert dep.api_base == base and dep.hosted and dep.api_key == "sk-from-env"
    header = {"anthropic": "x-api-key"}.get(prefix, "Authorization")
    assert dep.headers[header] in ("sk-from-env", "Bearer sk-from-env")


def test_every_prefix_of_the_table_is_tested_here():
    assert set(LITELLM) | {"azure", "ollama", "ollama_chat", "hosted_vllm"} == set(PREFIX_KINDS)


def test_api_base_and_api_key_in_the_config_win_over_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("GROQ_API_KEY", "sk-env")
    monkeypatch.setenv("GROQ_API_BASE", "https://proxy.example/openai/v1")
    deps = _load(tmp_path, """
        - {model_name: a, litellm_params: {model: groq/x, api_base: "http://127.0.0.1:9/v1", api_key: sk-config}}
        - {model_name: b, litellm_params: {model: groq/x}}
        """).deployments
    assert (deps[0].api_base, deps[0].api_key) == ("http://127.0.0.1:9/v1", "sk-config")
    assert (deps[1].api_base, deps[1].api_key) == ("https://proxy.example/openai/v1", "sk-env")
    assert deps[0].hosted and deps[1].hosted  # a cloud kind is hosted wherever it points


def test_openai_with_an_api_base_is_a_local_server_and_never_gets_the_openai_key(tmp_path, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-openai")
    local, cloud = _load(tmp_path, """
        - {model_name: a, litellm_params: {model: openai/llama, api_base: "http://127.0.0.1:8080/v1"}}
        - {model_name: b, litellm_params: {model: openai/gpt-4o}}
        """).deployments
    assert (local.hosted, local.api_key, dict(local.headers)) == (False, None, {})
    assert (cloud.hosted, cloud.api_key, cloud.api_base) == (True, "sk-openai", "https://api.openai.com/v1")


def test_fireworks_names_get_the_account_prefix_once(tmp_path):
    a, b = _load(tmp_path, """
        - {model_name: a, litellm_params: {model: fireworks_ai/llama-v3p1-8b-instruct}}
        - {model_name: b, litellm_params: {model: fireworks_ai/accounts/me/models/mine}}
        """).deployments
    assert (a.upstream_model, b.upstream_model) == ("accounts/fireworks/models/llama-v3p1-8b-instruct", "accounts/me/models/mine")


def test_azure_needs_a_base_and_takes_its_version_from_config_then_environment_then_litellms_default(tmp_path, monkeypatch):
    with pytest.raises(ConfigError, match=r"c.yaml:2: model_list\[0\].litellm_params: api_base is required for 'azure/gpt4o' \(or set AZURE_API_BASE\)"):
        _load(tmp_path, "- {model_name: a, litellm_params: {model: azure/gpt4o}}")
    monkeypatch.setenv("AZURE_API_BASE", "https://me.openai.azure.com")
    models = """
        - {model_name: a, litellm_params: {model: azure/gpt4o, api_version: "2024-06-01", api_key: k}}
        - {model_name: b, litellm_params: {model: azure/gpt4o}}
        """
    a, b = _load(tmp_path, models).deployments
    assert (a.api_version, b.api_version, a.api_base) == ("2024-06-01", "2025-02-01-preview", "https://me.openai.azure.com")
    assert dict(a.headers) == {"api-key": "k"}
    monkeypatch.setenv("AZURE_API_VERSION", "2024-10-21")
    assert _load(tmp_path, models).deployments[1].api_version == "2024-10-21"


def test_auth_headers_follow_the_wire_format():
    assert auth_headers("openai", "k") == {"Authorization": "Bearer k"}
    assert auth_headers("azure", "k") == {"api-key": "k"}
    assert auth_headers("anthropic", "k") == {"x-api-key": "k", "anthropic-version": "2023-06-01"}
    assert auth_headers("anthropic", None) == {"anthropic-version": "2023-06-01"}
    assert auth_headers("openai", "k", "org-1") == {"Authorization": "Bearer k", "OpenAI-Organization": "org-1"}


def test_extra_headers_are_sent_and_checked(tmp_path):
    dep = _load(tmp_path, """
        - model_name: a
          litellm_params:
            model: openrouter/meta-llama/llama-3-70b
            api_key: sk-or
            extra_headers: {HTTP-Referer: "https://team.example", X-Title: team-chat}
        """).deployments[0]
    assert dict(dep.headers) == {"Authorization": "Bearer sk-or", "HTTP-Referer": "https://team.example", "X-Title": "team-chat"}
    with pytest.raises(ConfigError, match=r"extra_headers.Host: is set by the router itself"):
        _load(tmp_path, "- {model_name: a, litellm_params: {model: groq/x, extra_headers: {Host: evil}}}")


def test_a_hosted_deployment_without_a_key_warns_once(tmp_path):
    config = _load(tmp_path, "- {model_name: a, litellm_params: {model: mistral/mistral-large-latest}}")
    assert [str(w) for w in config.warnings] == [
        f"{tmp_path}/c.yaml:2: model_list[0].litellm_params: no api_key for 'mistral/mistral-large-latest' and none of "
        "MISTRAL_API_KEY is set: its requests go without a key"]


def test_providers_we_do_not_speak_load_disabled_and_typos_stay_errors(tmp_path):
    config = _load(tmp_path, """
        - {model_name: a, litellm_params: {model: ollama/llama3, api_base: "http://127.0.0.1:11434"}}
        - {model_name: b, litellm_params: {model: bedrock/anthropic.claude-v2, aws_region_name: us-east-1}}
        - {model_name: a, litellm_params: {model: sagemaker/jumpstart-llama}}
        """)
    assert [d.model_name for d in config.deployments] == ["a"] and set(config.groups) == {"a"}
    assert [(x.model_name, x.model) for x in config.disabled] == [("b", "bedrock/anthropic.claude-v2"), ("a", "sagemaker/jumpstart-llama")]
    assert config.disabled_reason("b") == "llm-router does not speak LiteLLM's bedrock/ provider (bedrock/anthropic.claude-v2)"
    assert config.disabled_reason("a") is None  # a group with a servable deployment is served
    with pytest.raises(ConfigError, match="unknown provider prefix in 'olama/llama3'"):
        _load(tmp_path, "- {model_name: a, litellm_params: {model: olama/llama3, api_base: \"http://x\"}}")


def test_check_config_passes_with_disabled_deployments_and_strict_makes_them_errors(tmp_path):
    (tmp_path / "c.yaml").write_text(textwrap.dedent("""
        model_list:
          - {model_name: a, litellm_params: {model: ollama/llama3, api_base: "http://127.0.0.1:11434"}}
          - {model_name: b, litellm_params: {model: vertex_ai/gemini-pro}}
        router_settings:
          fallbacks: [{a: [b]}]
        """))
    run = lambda *extra: subprocess.run([sys.executable, "-m", "router", "check-config", "--config", str(tmp_path / "c.yaml"), *extra],
                                        capture_output=True, text=True)
    ok, strict = run(), run("--strict")
    assert ok.returncode == 0 and "(1 disabled)" in ok.stdout and "vertex_ai/" in ok.stderr
    assert strict.returncode == 2 and "Traceback" not in strict.stderr
    assert f"{tmp_path}/c.yaml:4: model_list[1].litellm_params.model: llm-router does not speak LiteLLM's vertex_ai/ provider" in strict.stderr
    assert f"{tmp_path}/c.yaml:6: router_settings.fallbacks[0].a: the fallbacks of 'a' (b) are all disabled" in strict.stderr


def test_keys_never_show_in_the_config_objects(tmp_path):
    config = _load(tmp_path, """
        - {model_name: a, litellm_params: {model: anthropic/claude, api_key: sk-ant-secret}}
        - {model_name: b, litellm_params: {model: azure/x, api_base: "https://r.openai.azure.com", api_key: az-secret}}
        """)
    assert "sk-ant-secret" not in repr(config) and "az-secret" not in repr(config)


def test_a_key_variable_with_a_trailing_newline_is_a_located_config_error(tmp_path, monkeypatch):
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-abc\n")
    with pytest.raises(ConfigError) as err:
        _load(tmp_path, "- {model_name: a, litellm_params: {model: anthropic/claude}}")
    assert "c.yaml:2: model_list[0].litellm_params: the key in ANTHROPIC_API_KEY contains a line break" in str(err.value)
    assert "sk-ant-abc" not in str(err.value)


def test_a_key_the_upstream_echoes_is_blanked_out_of_the_error(tmp_path):
    from router.errors import upstream_error

    dep = _load(tmp_path, "- {model_name: a, litellm_params: {model: anthropic/claude, api_key: sk-ant-echoed-1}}").deployments[0]
    body = b'{"type":"error","error":{"type":"authentication_error","message":"invalid x-api-key sk-ant-echoed-1"}}'
    err = upstream_error(401, body, dep.provider, None, dep.secrets)
    assert "sk-ant-echoed-1" not in err.message and "[redacted]" in err.message
    client = upstream_error(400, body.replace(b"authentication_error", b"invalid_request_error"), dep.provider, None, dep.secrets)
    assert b"sk-ant-echoed-1" not in client.to_bytes()
    assert orjson.loads(client.to_bytes())["error"]["type"] == "invalid_request_error"  # OpenAI's shape, not Anthropic's


def test_prices_written_as_yaml_reads_them_are_numbers_and_nonsense_is_a_located_error(tmp_path):
    dep = _load(tmp_path, """
        - model_name: a
          litellm_params: {model: anthropic/claude, api_key: k, input_cost_per_token: 3e-06}
          model_info: {output_cost_per_token: 1.5e-05}
        """).deployments[0]
    assert (dep.model_info["input_cost_per_token"], dep.model_info["output_cost_per_token"]) == (3e-06, 1.5e-05)
    with pytest.raises(ConfigError, match=r"c.yaml:5: model_list\[0\].model_info.output_cost_per_token: must be a non-negative number, got str .cheap."):
        _load(tmp_path, """
            - model_name: a
              litellm_params: {model: anthropic/claude, api_key: k}
              model_info: {output_cost_per_token: cheap}
            """)
