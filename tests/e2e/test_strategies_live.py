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
    lines.append(f"router_settings: {{routing_strategy: {strategy}}}")
    (tmp_path / "c.yaml").write_text("\n".join(lines) + "\n")
    (tmp_path / "model-mappings.yaml").write_text(policy or "{}\n")
    runner, url = await start_proxy(load_config(str(tmp_path / "c.yaml")))
    return runner, openai.AsyncOpenAI(base_url=url + "/v1", api_key="x", max_retries=0)


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
