"""Every rule of the shipped configuration, driven through the proxy with the openai
client against simulated backends: which route decided, and which backend served."""

from __future__ import annotations

import asyncio
from pathlib import Path

import openai
import pytest

from router.app import PROXY
from router.config import load_config
from router.simulate import SimulatedBackend
from tests.conftest import shipped_copy, start_proxy

ROOT = Path(__file__).resolve().parents[2]
HI = [{"role": "user", "content": "Hi"}]
SHIPPED_PORTS = {"ollama": 11434, "vllm": 8001, "llama_cpp_python": 8000, "llama_cpp_native": 8080}
MODELS = {
    "ollama": ["llama3.1:8b", "qwen2.5-coder:7b", "deepseek-coder-v2", "mistral:7b", "phi-2.7b", "vicuna-13b"],
    "vllm": ["meta-llama/Llama-2-13b-chat-hf", "meta-llama/Llama-2-7b-chat-hf", "mistralai/Mistral-7B-Instruct-v0.2", "falcon-40b"],
    "llama_cpp_python": ["llama-cpp-default", "llama3.1-8b-instruct.Q4_K_M.gguf"],
    "llama_cpp_native": ["llama3.1-8b-instruct.Q4_K_M.gguf"],
}


async def start_shipped(tmp_path, loaded: bool):
    """The shipped config files, with each backend port pointed at a simulator, once
    the router's monitor has probed every backend (so warmth is known)."""
    sims = {kind: SimulatedBackend(kind, models, loaded=models if loaded and kind == "ollama" else ())
            for kind, models in MODELS.items()}
    for sim in sims.values():
        await sim.start()
    config = load_config(str(shipped_copy(tmp_path, {port: sims[kind].port for kind, port in SHIPPED_PORTS.items()})))
    runner, url = await start_proxy(config)
    servers = runner.app[PROXY].state.servers
    while len(servers) < len({d.api_base for d in config.deployments}):  # the monitor's first round
        await asyncio.sleep(0.01)
    return runner, openai.AsyncOpenAI(base_url=url + "/v1", api_key="x", max_retries=0, timeout=60), sims


@pytest.fixture
async def shipped(tmp_path):
    runner, client, sims = await start_shipped(tmp_path, loaded=True)
    yield client, sims
    await client.close()
    await runner.cleanup()
    for sim in sims.values():
        await sim.stop()


def served_by(sims: dict[str, SimulatedBackend], before: dict[str, int]) -> list[str]:
    """Which simulators got a generation request since ``before``."""
    return [k for k, s in sims.items() if generations(s) > before[k]]


def generations(sim: SimulatedBackend) -> int:
    return sum(n for path, n in sim.stats.requests.items() if path in ("/api/chat", "/v1/chat/completions"))


async def chat(client, sims, model: str, headers: dict[str, str] | None = None, **kw):
    before = {k: generations(s) for k, s in sims.items()}
    raw = await client.chat.completions.with_raw_response.create(model=model, messages=HI, extra_headers=headers or {}, **kw)
    if kw.get("stream"):
        async for _ in raw.parse():
            pass
    else:
        assert raw.parse().choices[0].message.content
    return raw.headers, served_by(sims, before)


@pytest.mark.parametrize("model, route, provider", [
    ("llama3.1:8b", "exact", {"ollama", "llama_cpp_python"}),  # redundant_models: 70/30
    ("qwen2.5-coder:7b", "exact", {"ollama"}),
    ("llama2-13b-vllm", "exact", {"vllm"}),
    ("llama-cpp-default", "exact", {"llama_cpp_python"}),
])
async def test_every_exact_match(shipped, model, route, provider):
    client, sims = shipped
    headers, hit = await chat(client, sims, model)
    assert headers["x-router-route"] == route and headers["x-router-provider"] in provider
    assert hit == [headers["x-router-provider"]]


@pytest.mark.parametrize("model, provider", [
    ("meta-llama/Llama-2-7b-chat-hf", "vllm"),        # ^meta-llama/.*
    ("mistralai/Mistral-7B-Instruct-v0.2", "vllm"),   # ^mistralai/.*
    ("mistral:7b", "ollama"),                          # .*:\d+[bB]$
    ("llama3.1-8b-instruct.Q4_K_M.gguf", "llama_cpp_python"),  # .*\.gguf$
])
async def test_every_pattern(shipped, model, provider):
    client, sims = shipped
    headers, hit = await chat(client, sims, model)
    assert (headers["x-router-route"], headers["x-router-provider"], hit) == ("pattern", provider, [provider])
    assert sims[provider].stats.last_body["model"] == model


@pytest.mark.parametrize("capability, deployments", [
    ("code_generation", {"qwen-coder", "deepseek-coder"}),
    ("high_throughput", {"llama2-13b-vllm"}),
    ("low_latency", {"llama-cpp-native"}),
    ("general_chat", {"llama3.1-ollama", "llama3.1-llamacpp", "llama2-13b-vllm"}),
    ("large_context", {"llama-cpp-python", "llama3.1-llamacpp"}),
])
async def test_every_capability_by_header_without_a_model(shipped, capability, deployments):
    client, sims = shipped
    headers, hit = await chat(client, sims, "", {"X-Capability": capability})
    assert headers["x-router-route"] == "capability" and headers["x-router-deployment"] in deployments
    assert hit == [headers["x-router-provider"]]


async def test_unknown_capability_is_a_400(shipped):
    client, sims = shipped
    with pytest.raises(openai.BadRequestError) as info:
        await chat(client, sims, "", {"X-Capability": "poetry"})
    assert "known: code_generation" in info.value.message


@pytest.mark.parametrize("model, provider", [
    ("phi-2.7b", "ollama"),      # < 8B
    ("vicuna-13b", "ollama"),    # 8B - 13B (13 is in)
    ("falcon-40b", "vllm"),      # > 13B
])
async def test_every_size_range(shipped, model, provider):
    client, sims = shipped
    headers, hit = await chat(client, sims, model)
    assert (headers["x-router-route"], headers["x-router-provider"], hit) == ("size", provider, [provider])


async def test_metadata_high_priority(shipped):
    client, sims = shipped
    headers, hit = await chat(client, sims, "general_chat", {"X-Priority": "high"})
    assert (headers["x-router-route"], headers["x-router-deployment"], hit) == ("metadata", "llama2-13b-vllm", ["vllm"])


async def test_metadata_batch_requests(shipped):
    client, sims = shipped
    headers, hit = await chat(client, sims, "general_chat", n=2)
    assert (headers["x-router-route"], headers["x-router-provider"], hit) == ("metadata", "vllm", ["vllm"])


async def test_metadata_streaming_requests_go_to_ollama(shipped):
    client, sims = shipped
    for _ in range(10):  # without the rule, 30 % would go to llama_cpp_python
        headers, hit = await chat(client, sims, "llama3.1:8b", stream=True)
        assert headers["x-router-deployment"] == "llama3.1-ollama" and hit == ["ollama"]
        assert headers["x-router-route"] in ("metadata", "exact")  # "exact" when the shuffle already picked Ollama


async def test_explain_endpoint_and_routing_stats(shipped):
    client, sims = shipped
    await chat(client, sims, "llama2-13b-vllm")
    await chat(client, sims, "mistral:7b")
    http = client._client  # the SDK's own httpx client, to read JSON endpoints
    base = str(client.base_url).removesuffix("/v1/")
    r = await http.get(base + "/router/explain", params={"capability": "high_throughput"})
    body = r.json()
    assert (body["route"], body["candidates"][0]["deployment"]) == ("capability", "llama2-13b-vllm")
    assert body["trace"] == ["capability high_throughput: candidates llama2-13b-vllm"]
    stats = (await http.get(base + "/router/stats")).json()
    assert stats["decisions"] == 2 and stats["exact_match_rate"] == 0.5 and stats["pattern_match_rate"] == 0.5
    assert stats["provider_distribution"] == {"vllm": 0.5, "ollama": 0.5}


async def test_warm_first_serves_from_a_warm_backend_and_loads_the_cold_one(tmp_path):
    runner, client, sims = await start_shipped(tmp_path, loaded=False)  # Ollama has nothing loaded
    try:
        routes = []
        while "warm" not in routes:  # the shuffle picks Ollama 70 % of the time; then warmth overrides it
            headers, hit = await chat(client, sims, "llama3.1:8b")
            assert hit == ["llama_cpp_python"]
            routes.append(headers["x-router-route"])
        assert len(routes) < 20
        ollama = sims["ollama"]
        await asyncio.gather(*runner.app[PROXY]._warming.values())  # the background load, if still running
        assert ollama.stats.requests["/api/generate"] == 1
        assert ollama.stats.last_body == {"model": "llama3.1:8b"}  # a load request: no prompt, nothing generated
        providers = {(await chat(client, sims, "llama3.1:8b"))[0]["x-router-provider"] for _ in range(30)}
        assert providers == {"ollama", "llama_cpp_python"}  # normal 70/30 routing again
    finally:
        await client.close()
        await runner.cleanup()
        for sim in sims.values():
            await sim.stop()


async def test_exact_matches_decides_for_a_name_model_list_has_on_two_providers(tmp_path):
    """The seed's step 1: exact_matches found -> its provider. A model_list group used
    to win, shuffling the name across both providers."""
    vllm, cpp = SimulatedBackend("vllm", ["m"]), SimulatedBackend("llama_cpp_python", ["m"])
    for sim in (vllm, cpp):
        await sim.start()
        sim.faults.paths = ("/v1/chat/completions",)
    (tmp_path / "c.yaml").write_text(f"""
model_list:
  - {{model_name: m, litellm_params: {{model: hosted_vllm/m, api_base: "{vllm.base_url}/v1"}}, model_info: {{id: m-vllm}}}}
  - {{model_name: m, litellm_params: {{model: openai/m, api_base: "{cpp.base_url}/v1"}}, model_info: {{id: m-cpp, provider: llama_cpp_python}}}}
router_settings: {{num_retries: 0, monitor_interval: 60}}
""")
    (tmp_path / "model-mappings.yaml").write_text(f"""
providers:
  vllm: {{type: vllm, api_base: "{vllm.base_url}/v1"}}
  llama_cpp_python: {{type: llama_cpp_python, api_base: "{cpp.base_url}/v1"}}
exact_matches:
  m: {{provider: llama_cpp_python, priority: primary, fallback: vllm}}
""")
    runner, url = await start_proxy(load_config(str(tmp_path / "c.yaml")))
    client = openai.AsyncOpenAI(base_url=url + "/v1", api_key="x", max_retries=0, timeout=60)
    try:
        for _ in range(12):
            raw = await client.chat.completions.with_raw_response.create(model="m", messages=HI, max_tokens=3)
            assert (raw.headers["x-router-route"], raw.headers["x-router-deployment"]) == ("exact", "m-cpp")
        cpp.faults.status = 500  # the entry's fallback provider follows
        raw = await client.chat.completions.with_raw_response.create(model="m", messages=HI, max_tokens=3)
        assert (raw.headers["x-router-deployment"], raw.headers["x-router-fallback"]) == ("m-vllm", "m-cpp,m-vllm")
    finally:
        await client.close()
        await runner.cleanup()
        for sim in (vllm, cpp):
            await sim.stop()
