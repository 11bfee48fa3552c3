"""Strategies against simulated backends of different speeds and loads."""

from __future__ import annotations

import asyncio
from collections import Counter

import openai
import pytest

from router.config import load_config
from router.simulate import SimulatedBackend
from tests.conftest import start_proxy

HI = [{"role": "user", "content": "Hi"}]


async def group_of(tmp_path, sims: list[SimulatedBackend], strategy: str, policy: str = ""):
    lines = ["model_list:"]
    for i, sim in enumerate(sims):
        lines.append(f"  - {{model_name: grp, litellm_params: {{model: hosted_vllm/m, api_base: '{sim.base_url}/v1'}}, model_info: {{id: d{i}}}}}")
    lines.append(f"router_settings: {{routing_strategy: {strategy}, monitor_interval: 0.05}}")
    (tmp_path / "c.yaml").write_text("\n".join(lines) + "\n")
    (tmp_path / "model-mappings.yaml").write_text(policy or "{}\n")
    runner, url = await start_proxy(load_config(str(tmp_path / "c.yaml")))
    return runner, openai.AsyncOpenAI(base_url=url + "/v1", api_key="x", max_retries=0, timeout=60)


@pytest.fixture
async def sims():
    started = [SimulatedBackend("vllm", ["m"]) for _ in range(3)]
    for s in started:
        await s.start()
    yield started
    for s in started:
        await s.stop()


async def stream_once(client) -> str:
    raw = await client.chat.completions.with_raw_response.create(model="grp", messages=HI, stream=True, max_tokens=2)
    async for _ in raw.parse():
        pass
    return raw.headers["x-router-deployment"]


async def test_latency_based_sends_most_traffic_to_the_fast_backend_and_shifts_when_it_slows(tmp_path, sims):
    fast, slow = sims[0], sims[1]
    fast.ttft, slow.ttft = 0.002, 0.05
    policy = "load_balancing:\n  fastest_response: {reevaluate_seconds: 0.05, explore: 0.1}\n"
    runner, client = await group_of(tmp_path, [fast, slow], "latency-based-routing", policy)
    try:
        first = Counter([await stream_once(client) for _ in range(40)])
        assert first["d0"] >= 30, first
        fast.ttft, slow.ttft = 0.08, 0.002  # the fast one gets slow, the slow one recovers
        later = [await stream_once(client) for _ in range(60)]
        assert Counter(later[-30:])["d1"] >= 22, later
    finally:
        await client.close()
        await runner.cleanup()


async def test_least_busy_spreads_concurrent_long_streams_evenly(tmp_path, sims):
    for s in sims:
        s.tokens_per_s = 10  # 20 tokens: each stream stays open ~2 s
    runner, client = await group_of(tmp_path, sims, "least-busy")
    try:
        async def long_stream() -> None:
            stream = await client.chat.completions.create(model="grp", messages=HI, stream=True, max_tokens=20)
            async for _ in stream:
                pass

        tasks = [asyncio.create_task(long_stream()) for _ in range(9)]
        while sum(s.stats.open for s in sims) < 9:  # until all nine are open at the backends
            await asyncio.sleep(0.01)
        assert [s.stats.open for s in sims] == [3, 3, 3]
        await asyncio.gather(*tasks)
    finally:
        await client.close()
        await runner.cleanup()


async def wait_for(condition, what: str, deadline_s: float = 5.0) -> None:
    """Poll ``condition`` until it holds (the monitor works on its own schedule)."""
    loop = asyncio.get_running_loop()
    end = loop.time() + deadline_s
    while not condition():
        assert loop.time() < end, f"timed out waiting for {what}"
        await asyncio.sleep(0.01)


async def test_least_busy_counts_load_the_backend_reports_from_other_clients(tmp_path, sims):
    from router.app import PROXY

    busy, idle = sims[0], sims[1]
    busy.tokens_per_s = 10
    runner, client = await group_of(tmp_path, [busy, idle], "least-busy")
    runner.app[PROXY].state.servers.clear()
    direct = openai.AsyncOpenAI(base_url=busy.base_url + "/v1", api_key="x", max_retries=0, timeout=60)
    try:
        async def other_client() -> None:  # someone else's long streams, straight to the backend
            async for _ in await direct.chat.completions.create(model="m", messages=HI, stream=True, max_tokens=30):
                pass

        others = [asyncio.create_task(other_client()) for _ in range(3)]
        await wait_for(lambda: busy.stats.open == 3, "three direct streams")
        state = runner.app[PROXY].state
        await wait_for(lambda: (state.servers.get(busy.base_url + "/v1") or None) is not None
                       and state.servers[busy.base_url + "/v1"].running == 3, "the monitor to see vLLM's load")
        served = [await stream_once(client) for _ in range(3)]
        assert served == ["d1", "d1", "d1"]  # our own in-flight count alone would have said "both idle"
        for t in others:
            t.cancel()
        await asyncio.gather(*others, return_exceptions=True)
    finally:
        await direct.close()
        await client.close()
        await runner.cleanup()


async def test_capability_min_size_uses_the_sizes_ollama_reports(tmp_path):
    from router.app import PROXY

    ollama = SimulatedBackend("ollama", ["alpha", "beta"], model_meta={"alpha": {"parameter_size": "7B"}, "beta": {"parameter_size": "34B"}})
    await ollama.start()
    (tmp_path / "c.yaml").write_text(
        "model_list:\n"
        f"  - {{model_name: alpha, litellm_params: {{model: ollama_chat/alpha, api_base: '{ollama.base_url}'}}}}\n"
        f"  - {{model_name: beta, litellm_params: {{model: ollama_chat/beta, api_base: '{ollama.base_url}'}}}}\n"
        "router_settings: {monitor_interval: 0.05}\n")
    (tmp_path / "model-mappings.yaml").write_text(
        f"providers: {{ollama: {{type: ollama, api_base: '{ollama.base_url}'}}}}\n"
        "capabilities: {big: {min_model_size: '13B', provider: ollama}}\n")
    runner, url = await start_proxy(load_config(str(tmp_path / "c.yaml")))
    client = openai.AsyncOpenAI(base_url=url + "/v1", api_key="x", max_retries=0, timeout=60)
    try:
        state = runner.app[PROXY].state
        await wait_for(lambda: ollama.base_url in state.servers and state.servers[ollama.base_url].sizes, "the size probe")
        for _ in range(5):
            raw = await client.chat.completions.with_raw_response.create(model="", messages=HI, extra_headers={"X-Capability": "big"})
            assert (raw.headers["x-router-route"], raw.headers["x-router-deployment"]) == ("capability", "beta@ollama")
    finally:
        await client.close()
        await runner.cleanup()
        await ollama.stop()
