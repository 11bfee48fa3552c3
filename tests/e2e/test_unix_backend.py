"""The proxy in front of OpenAI-compatible backends on unix sockets (``api_base:
unix:///…sock``, as vLLM ``--uds`` and llama-server ``--host /x.sock`` listen): the
official client through it, streamed and not, /health probing the sockets, a dead
socket falling back to a TCP backend, and how the socket is shown."""

from __future__ import annotations

import asyncio
import io
import os
import shutil
import tempfile
from typing import AsyncIterator

import aiohttp
import openai
import pytest
import uvloop

from router import log
from router.__main__ import simulator_specs
from router.app import PROXY
from router.config import load_config
from router.simulate import SimulatedBackend
from tests.conftest import start_proxy

HI = [{"role": "user", "content": "Hi"}]
KEY = "sk-upstream-unix-secret"


@pytest.fixture(params=["asyncio", "uvloop"], autouse=True)
def event_loop_policy(request: pytest.FixtureRequest) -> asyncio.AbstractEventLoopPolicy:
    """Both loops: the proxy runs on uvloop, whose unix transports differ in the details."""
    return uvloop.EventLoopPolicy() if request.param == "uvloop" else asyncio.DefaultEventLoopPolicy()


class UnixStack:
    """vLLM and llama-server simulators on unix sockets, a TCP llama-cpp-python as the
    fallback of the vLLM group, and the proxy in front of them."""

    def __init__(self, tmp_path) -> None:
        self.tmp_path = tmp_path
        self.dir = tempfile.mkdtemp(prefix="llmr-")  # short: tmp_path can exceed the 107-byte socket path limit
        self.vllm_sock, self.native_sock = os.path.join(self.dir, "vllm.sock"), os.path.join(self.dir, "llama.sock")
        self.vllm = SimulatedBackend("vllm", ["org/m"], tokens_per_s=0)
        self.native = SimulatedBackend("llama_cpp_native", ["tiny.gguf"])
        self.backup = SimulatedBackend("llama_cpp_python", ["m"])
        self.log = io.StringIO()

    async def __aenter__(self) -> UnixStack:
        await self.vllm.start(self.vllm_sock)
        await self.native.start(self.native_sock)
        await self.backup.start()
        (self.tmp_path / "c.yaml").write_text(f"""
model_list:
  - {{model_name: m, litellm_params: {{model: hosted_vllm/org/m, api_base: "{self.vllm.base_url}", api_key: {KEY}}}, model_info: {{id: vllm-unix}}}}
  - {{model_name: native, litellm_params: {{model: openai/tiny.gguf, api_base: "{self.native.base_url}"}}, model_info: {{id: native-unix}}}}
  - {{model_name: backup, litellm_params: {{model: openai/m, api_base: "{self.backup.base_url}/v1"}}, model_info: {{id: backup-tcp, provider: llama_cpp_python}}}}
router_settings:
  num_retries: 0
  monitor_interval: 60
  fallbacks: [{{m: [backup]}}]
""")
        (self.tmp_path / "model-mappings.yaml").write_text(f"""
providers:
  vllm: {{type: vllm, api_base: "{self.vllm.base_url}"}}
  llama_cpp_native: {{type: llama_cpp_native, api_base: "{self.native.base_url}"}}
  llama_cpp_python: {{type: llama_cpp_python, api_base: "{self.backup.base_url}"}}
""")
        log.configure("human", "info", stream=self.log)
        self.config = load_config(str(self.tmp_path / "c.yaml"))
        self.runner, self.url = await start_proxy(self.config)
        self.client = openai.AsyncOpenAI(base_url=self.url + "/v1", api_key="x", max_retries=0, timeout=30)
        self.http = aiohttp.ClientSession()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.client.close()
        await self.http.close()
        await self.runner.cleanup()
        for sim in (self.vllm, self.native, self.backup):
            await sim.stop()
        log.configure()
        shutil.rmtree(self.dir, ignore_errors=True)

    async def get(self, path: str) -> dict:
        async with self.http.get(self.url + path) as resp:
            assert resp.status == 200, await resp.text()
            return await resp.json()


@pytest.fixture
async def unix_stack(tmp_path) -> AsyncIterator[UnixStack]:
    async with UnixStack(tmp_path) as s:
        yield s


async def test_non_streamed_chat_reaches_the_socket_with_v1_paths_host_localhost_and_the_key(unix_stack):
    s = unix_stack
    for _ in range(3):
        raw = await s.client.chat.completions.with_raw_response.create(model="m", messages=HI, max_tokens=5)
        assert raw.headers["x-router-deployment"] == "vllm-unix" and raw.headers["x-router-provider"] == "vllm"
        assert raw.parse().choices[0].message.content.strip()
    stats = s.vllm.stats
    assert stats.requests["/v1/chat/completions"] == 3 and stats.last_body["model"] == "org/m"
    headers = {k.lower(): v for k, v in stats.last_headers.items()}
    assert headers["host"] == "localhost" and headers["authorization"] == f"Bearer {KEY}"
    (origin,) = [o for o in s.runner.app[PROXY].pool._origins.values() if o.target.unix == s.vllm_sock]
    assert origin.count == 1 and len(origin.idle) == 1  # one kept-alive connection served all three
    completion = await s.client.chat.completions.create(model="native", messages=HI)  # llama-server on its socket
    assert completion.choices[0].message.content and s.native.stats.requests["/v1/chat/completions"] == 1
    assert KEY not in s.log.getvalue()


async def test_streamed_chat_through_the_official_client(unix_stack):
    s = unix_stack
    whole = (await s.client.chat.completions.create(model="m", messages=HI)).choices[0].message.content
    pieces, finish = [], None
    async with await s.client.chat.completions.create(model="m", messages=HI, stream=True,
                                                       stream_options={"include_usage": True}) as stream:
        async for chunk in stream:
            for choice in chunk.choices:
                pieces.append(choice.delta.content or "")
                finish = choice.finish_reason or finish
    assert len([p for p in pieces if p]) > 1 and "".join(pieces) == whole and finish in ("stop", "length")
    embeddings = await s.client.embeddings.create(model="m", input=["a", "b"])
    assert len(embeddings.data) == 2


async def test_health_probes_the_sockets_and_shows_them_as_written(unix_stack):
    s = unix_stack
    body = await s.get("/health")
    rows = {r["id"]: r for r in body["healthy_endpoints"] + body["unhealthy_endpoints"]}
    assert rows["vllm-unix"]["healthy"] and rows["vllm-unix"]["api_base"] == f"unix://{s.vllm_sock}"
    assert rows["native-unix"]["healthy"] and rows["native-unix"]["api_base"] == f"unix://{s.native_sock}"
    assert rows["vllm/*"]["api_base"] == f"unix://{s.vllm_sock}"
    assert s.vllm.stats.requests["/v1/models"] >= 1 and s.vllm.stats.requests["/metrics"] >= 1
    assert s.native.stats.requests["/slots"] >= 1
    state = s.runner.app[PROXY].state.servers
    assert state[s.config.by_id["native-unix"].api_base].slots == 4  # llama-server's /slots read over the socket
    explain = await s.get("/router/explain?model=m")
    assert [c["api_base"] for c in explain["candidates"]] == [f"unix://{s.vllm_sock}"]

    await s.vllm.pause_listening()  # killed: the socket file stays, nobody listens
    body = await s.get("/health")
    row = next(r for r in body["unhealthy_endpoints"] if r["id"] == "vllm-unix")
    assert row["error"] == f"cannot connect to unix socket {s.vllm_sock}: Connection refused"
    os.unlink(s.vllm_sock)  # gone altogether
    body = await s.get("/health")
    row = next(r for r in body["unhealthy_endpoints"] if r["id"] == "vllm-unix")
    assert row["error"] == f"cannot connect to unix socket {s.vllm_sock}: No such file or directory"
    await s.vllm.resume_listening()  # restarted on the same path
    body = await s.get("/health")
    assert any(r["id"] == "vllm-unix" for r in body["healthy_endpoints"])


async def test_a_dead_socket_falls_back_to_the_tcp_backend_and_the_error_names_the_socket(unix_stack):
    s = unix_stack
    await s.vllm.pause_listening()
    raw = await s.client.chat.completions.with_raw_response.create(model="m", messages=HI, max_tokens=3)
    assert raw.headers["x-router-deployment"] == "backup-tcp"
    await s.native.pause_listening()  # no fallback configured for it
    with pytest.raises(openai.APIStatusError) as info:
        await s.client.chat.completions.create(model="native", messages=HI)
    assert f"unix://{s.native_sock}" in str(info.value) and "%2F" not in str(info.value)
    assert f"unix://{s.native_sock}" in s.log.getvalue() and "%2F" not in s.log.getvalue()
    ui = await s.get("/ui/data")  # the status page's last error for it
    (row,) = [r for r in ui["deployments"] if r["id"] == "native-unix"]
    assert f"unix://{s.native_sock}" in row["last_error"] and "%2F" not in row["last_error"]


def test_simulate_serves_a_unix_api_base_on_its_socket(tmp_path):
    (tmp_path / "c.yaml").write_text("""
model_list:
  - {model_name: a, litellm_params: {model: hosted_vllm/org/a, api_base: "unix:///run/llm/vllm.sock"}}
  - {model_name: b, litellm_params: {model: hosted_vllm/org/b, api_base: "unix:///run/llm/vllm.sock"}}
  - {model_name: c, litellm_params: {model: openai/c, api_base: "http://127.0.0.1:8001"}}
""")
    (tmp_path / "model-mappings.yaml").write_text("{}\n")
    specs = simulator_specs(load_config(str(tmp_path / "c.yaml")))
    assert specs == [("vllm", "/run/llm/vllm.sock", 0, ["org/a", "org/b"]), ("openai", "127.0.0.1", 8001, ["c"])]
