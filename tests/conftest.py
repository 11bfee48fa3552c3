"""Shared fixtures: simulated backends of every kind, and the proxy in front of them."""

from __future__ import annotations

import io
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import AsyncIterator, Iterator

import pytest
from aiohttp import web
from blockbuster import blockbuster_ctx

from router import log
from router.app import create_app
from router.config import Config, load_config
from router.server import Runner
from router.simulate import SimulatedBackend


ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def no_blocking_calls_on_the_loop() -> Iterator[None]:
    """Any blocking call (file or socket I/O, sleep, …) that router code makes on a running
    event loop fails the test, as in aiohttp's own suite. Only router frames count: the
    tests' own set-up and the simulators may block. Configuration loading called straight
    from a test is allowed; the router itself loads it off the loop."""
    with blockbuster_ctx("router", excluded_modules=["router.simulate", "router.config", "router.policy",
                                                     "router.yamlsource", "router.checks", "router.regexcheck"]) as bb:
        for func in bb.functions.values():  # a logged traceback reads its source lines: rare, once per kind of error
            func.can_block_in("linecache.py", {"checkcache", "updatecache"})
            func.can_block_in("rich/traceback.py", {"_render_stack", "read_code"})  # structlog's, where rich is installed
        yield


def shipped_copy(dest: Path, ports: dict[int, int]) -> Path:
    """The shipped config files in ``dest``, backend ports replaced, and without the
    shared Redis state (tests that want Redis configure their own key prefix)."""
    for name in ("litellm-unified.yaml", "model-mappings.yaml"):
        text = (ROOT / "config" / name).read_text()
        for old, new in ports.items():
            text = text.replace(f"127.0.0.1:{old}", f"127.0.0.1:{new}")
        text = text.replace("  redis_host: 127.0.0.1\n", "").replace("  redis_port: 6379\n", "")
        (dest / name).write_text(text)
    return dest / "litellm-unified.yaml"


@dataclass
class Stack:
    """Running simulators + a running proxy, and the proxy's captured log."""

    url: str
    backends: dict[str, SimulatedBackend]
    config: Config
    log: io.StringIO
    app: web.Application

    def log_lines(self) -> list[str]:
        return self.log.getvalue().splitlines()


def stack_config(tmp_path: Path, b: dict[str, SimulatedBackend], extra_router: str = "", extra_general: str = "",
                 extra_models: str = "") -> Config:
    (tmp_path / "litellm.yaml").write_text(textwrap.dedent(f"""
        model_list:
          - model_name: llama3.1:8b
            litellm_params: {{model: ollama_chat/llama3.1:8b, api_base: "{b['ollama'].base_url}"}}
            model_info: {{id: llama3.1-ollama}}
          - model_name: qwen2.5-coder:7b
            litellm_params: {{model: ollama/qwen2.5-coder:7b, api_base: "{b['ollama'].base_url}", max_tokens: 6}}
            model_info: {{id: qwen-coder}}
          - model_name: nomic-embed
            litellm_params: {{model: ollama/nomic-embed-text, api_base: "{b['ollama'].base_url}"}}
          - model_name: llama2-13b-vllm
            litellm_params: {{model: hosted_vllm/meta-llama/Llama-2-13b-chat-hf, api_base: "{b['vllm'].base_url}/v1", api_key: sk-upstream-vllm}}
            model_info: {{id: llama2-13b-vllm}}
          - model_name: llama-cpp-default
            litellm_params: {{model: openai/llama-cpp-default, api_base: "{b['llama_cpp_python'].base_url}/v1", api_key: not-needed}}
            model_info: {{id: llama-cpp-python}}
          - model_name: native
            litellm_params: {{model: openai/tiny.gguf, api_base: "{b['llama_cpp_native'].base_url}/v1", timeout: 2}}
            model_info: {{id: llama-cpp-native}}
          {extra_models}
        router_settings:
          model_group_alias:
            general_chat: [llama3.1-ollama]
          {extra_router if "num_retries" in extra_router else "num_retries: 0" + chr(10) + "          " + extra_router}
        general_settings: {{{extra_general}}}
        """))
    (tmp_path / "model-mappings.yaml").write_text(textwrap.dedent(f"""
        providers:
          ollama: {{type: ollama, api_base: "{b['ollama'].base_url}"}}
          vllm: {{type: vllm, api_base: "{b['vllm'].base_url}"}}
          llama_cpp_python: {{type: llama_cpp_python, api_base: "{b['llama_cpp_python'].base_url}"}}
          llama_cpp_native: {{type: llama_cpp_native, api_base: "{b['llama_cpp_native'].base_url}"}}
        patterns:
          - pattern: "^meta-llama/.*"
            provider: vllm
          - pattern: ".*:\\\\d+[bB]$"
            provider: ollama
          - pattern: ".*\\\\.gguf$"
            provider: llama_cpp_python
        """))
    return load_config(str(tmp_path / "litellm.yaml"))


@pytest.fixture
async def backends() -> AsyncIterator[dict[str, SimulatedBackend]]:
    sims = {
        "ollama": SimulatedBackend("ollama", ["llama3.1:8b", "qwen2.5-coder:7b", "mistral:7b", "nomic-embed-text"]),
        "vllm": SimulatedBackend("vllm", ["meta-llama/Llama-2-13b-chat-hf", "meta-llama/Llama-2-7b-chat-hf"]),
        "llama_cpp_python": SimulatedBackend("llama_cpp_python", ["llama-cpp-default"]),
        "llama_cpp_native": SimulatedBackend("llama_cpp_native", ["tiny.gguf"]),
    }
    for sim in sims.values():
        await sim.start()
    yield sims
    for sim in sims.values():
        await sim.stop()


async def start_proxy(config: Config) -> tuple[web.AppRunner, str]:
    runner = Runner(create_app(config), config.limits)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    return runner, f"http://127.0.0.1:{port}"


@pytest.fixture
async def make_stack(tmp_path, backends):
    runners: list[web.AppRunner] = []

    async def make(**kwargs: str) -> Stack:
        buf = io.StringIO()
        log.configure("human", "info", stream=buf)
        config = stack_config(tmp_path, backends, **kwargs)
        runner, url = await start_proxy(config)
        runners.append(runner)
        return Stack(url, backends, config, buf, runner.app)

    yield make
    for runner in runners:
        await runner.cleanup()
    log.configure()


@pytest.fixture
async def stack(make_stack) -> Stack:
    return await make_stack()
