"""``api_base: unix:///path/to.sock``: what loads, what is refused (file:line: key: why), and
how the socket is shown."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from router.checks import http_url, shown, unix_socket
from router.config import load_config

from test_config import ROOT, errors_of, write


def test_a_unix_api_base_loads_with_v1_on_the_socket(tmp_path):
    cfg = write(tmp_path, "c.yaml", """
        model_list:
          - model_name: a
            litellm_params: {model: hosted_vllm/org/a, api_base: "unix:///run/llm/vllm.sock"}
          - model_name: b
            litellm_params: {model: openai/b.gguf, api_base: "unix:///run/llm/llama server.sock/"}
            model_info: {provider: llama_cpp_native}
        """)
    a, b = load_config(cfg).deployments
    assert (a.kind, a.api_base) == ("vllm", "http+unix://%2Frun%2Fllm%2Fvllm.sock/v1")
    assert (b.kind, b.api_base) == ("llama_cpp_native", "http+unix://%2Frun%2Fllm%2Fllama%20server.sock/v1")
    assert shown(a.api_base) == "unix:///run/llm/vllm.sock" and unix_socket(b.api_base) == "/run/llm/llama server.sock"
    assert http_url(a.api_base + "/models") == "http://localhost/v1/models"
    assert shown("http://127.0.0.1:8000/v1") == http_url("http://127.0.0.1:8000/v1") == "http://127.0.0.1:8000/v1"


def test_a_deployment_on_a_providers_socket_belongs_to_that_provider(tmp_path):
    cfg = write(tmp_path, "c.yaml", """
        model_list:
          - model_name: a
            litellm_params: {model: openai/a, api_base: "unix:///run/llm/vllm.sock"}
          - model_name: b
            litellm_params: {model: openai/b, api_base: "unix:///run/llm/other.sock"}
          - model_name: c
            litellm_params: {model: openai/c}
            model_info: {provider: vllm}
        """)
    maps = write(tmp_path, "m.yaml", """
        providers:
          vllm: {type: vllm, api_base: "unix:///run/llm/vllm.sock"}
          tcp: {type: vllm, api_base: "http://localhost:80"}
        """)
    config = load_config(cfg, maps)
    a, b, c = config.deployments
    assert (a.provider, b.provider, c.provider) == ("vllm", "openai", "vllm")
    assert c.api_base == a.api_base == config.catchalls["vllm"].api_base == "http+unix://%2Frun%2Fllm%2Fvllm.sock/v1"


LONG = "/" + "d" * 100 + "/x.sock"


@pytest.mark.parametrize("base, problem", [
    ("unix://run/llm/vllm.sock", "a unix socket must be given by its absolute path, as unix:///run/llm/vllm.sock (three slashes), got 'unix://run/llm/vllm.sock'"),
    ("unix:run/vllm.sock", "a unix socket must be given by its absolute path"),
    ("unix:/run/vllm.sock", "a unix socket must be given by its absolute path"),
    ("unix://", "names no socket path: write unix:///run/llm/vllm.sock, got 'unix://'"),
    ("unix:///", "names no socket path"),
    ("unix:///run/llm/vllm.sock/v1", "the whole path is the socket and requests go to /v1/... on it: write unix:///run/llm/vllm.sock, not 'unix:///run/llm/vllm.sock/v1'"),
    (f"unix://{LONG}", f"the socket path is {len(LONG)} bytes long; unix sockets allow at most 107"),
    ("http+unix://%2Frun%2Fvllm.sock", "must be an http(s) URL or unix:///path/to.sock, got 'http+unix://%2Frun%2Fvllm.sock'"),
    ("unix:///tmp/x.sock?x=1", "a socket path has no query, fragment, control characters or surrounding spaces"),
    ("unix:///tmp/x.sock#frag", "a socket path has no query, fragment, control characters or surrounding spaces"),
    ("unix:///tmp/x.sock\t", "a socket path has no query, fragment, control characters or surrounding spaces"),
    ("unix:///tmp/x.sock ", "a socket path has no query, fragment, control characters or surrounding spaces"),
])
def test_bad_unix_api_bases_are_errors_at_their_line(tmp_path, base, problem):
    cfg = str(tmp_path / "c.yaml")
    Path(cfg).write_text(f"model_list:\n  - model_name: m\n    litellm_params:\n      model: openai/m\n      api_base: '{base}'\n")
    errs = errors_of(cfg)
    assert len(errs) == 1 and errs[0].startswith(f"{cfg}:5: model_list[0].litellm_params.api_base: {problem}"), errs


OLLAMA_REFUSED = ("Ollama cannot listen on a unix socket; unix:// is for OpenAI-compatible servers "
                  "(vLLM --uds, llama-server --host /path.sock): give Ollama's http://host:port")


def test_ollama_on_a_unix_socket_is_refused_in_both_files(tmp_path):
    cfg = write(tmp_path, "c.yaml", """
        model_list:
          - model_name: a
            litellm_params: {model: ollama_chat/llama3.1:8b, api_base: "unix:///run/ollama.sock"}
          - model_name: b
            litellm_params: {model: ollama/llama3.1:8b}
            model_info: {provider: vllm}
        """)
    maps = write(tmp_path, "m.yaml", """
        providers:
          ollama: {type: ollama, api_base: "unix:///run/ollama.sock"}
          vllm: {type: vllm, api_base: "unix:///run/vllm.sock"}
        """)
    assert errors_of(cfg, maps) == [
        f"{cfg}:3: model_list[0].litellm_params.api_base: {OLLAMA_REFUSED}",
        f"{cfg}:6: model_list[1].model_info.provider: {OLLAMA_REFUSED}",
        f"{maps}:2: providers.ollama.api_base: {OLLAMA_REFUSED}",
    ]


def test_check_config_exits_2_on_a_bad_unix_url_without_a_traceback(tmp_path):
    cfg = write(tmp_path, "c.yaml", """
        model_list:
          - model_name: a
            litellm_params: {model: openai/a, api_base: "unix://relative.sock"}
        """)
    out = subprocess.run([sys.executable, "-m", "router", "check-config", "--config", cfg], capture_output=True, text=True,
                         cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=30)
    assert out.returncode == 2
    assert f"{cfg}:3: model_list[0].litellm_params.api_base: a unix socket must be given by its absolute path" in out.stderr
    assert "Traceback" not in out.stderr + out.stdout
