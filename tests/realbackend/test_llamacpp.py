"""llm-router in front of real llama-cpp-python servers (tiny random-weight model),
checked with the official openai client."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import aiohttp
import openai

from router.app import PROXY
from router.config import load_config
from tests.conftest import start_proxy

HI = [{"role": "user", "content": "Say something"}]


async def proxy_for(tmp_path: Path, servers, strategy: str = "simple-shuffle", extra: str = ""):
    lines = ["model_list:"]
    for i, s in enumerate(servers):
        lines.append(f"  - {{model_name: tiny, litellm_params: {{model: openai/tiny, api_base: '{s.base_url}/v1', api_key: none, timeout: 30}}, "
                     f"model_info: {{id: llama-{i}, provider: llama_cpp_python}}}}")
    lines.append(f"router_settings: {{routing_strategy: {strategy}, monitor_interval: 0.2, allowed_fails: 1, cooldown_time: 60{extra}}}")
    (tmp_path / "c.yaml").write_text("\n".join(lines) + "\n")
    (tmp_path / "model-mappings.yaml").write_text("{}\n")
    runner, url = await start_proxy(load_config(str(tmp_path / "c.yaml")))
    return runner, openai.AsyncOpenAI(base_url=url + "/v1", api_key="x", max_retries=0, timeout=60), url


async def test_chat_and_completions_streaming_and_not(tmp_path, llama_servers):
    (server,) = await llama_servers(1)
    runner, client, _ = await proxy_for(tmp_path, [server])
    try:
        chat = await client.chat.completions.create(model="tiny", messages=HI, max_tokens=12)
        assert chat.choices[0].message.content and chat.choices[0].finish_reason in ("stop", "length")
        assert chat.usage.completion_tokens > 0 and chat.usage.prompt_tokens > 0
        pieces, finish = [], None
        async with await client.chat.completions.create(model="tiny", messages=HI, max_tokens=12, stream=True) as stream:
            async for chunk in stream:
                for choice in chunk.choices:
                    pieces.append(choice.delta.content or "")
                    finish = choice.finish_reason or finish
        assert len([p for p in pieces if p]) > 1 and finish in ("stop", "length")  # incremental, and it ended properly
        text = await client.completions.create(model="tiny", prompt="The router", max_tokens=8)
        assert text.choices[0].text and text.usage.completion_tokens > 0
        streamed = [c.choices[0].text async for c in await client.completions.create(model="tiny", prompt="The router", max_tokens=8, stream=True) if c.choices]
        assert len([t for t in streamed if t]) > 1
    finally:
        await client.close()
        await runner.cleanup()


async def test_the_servers_quirks_do_not_reach_the_client(tmp_path, llama_servers):
    """Two concurrent streams: straight to llama-cpp-python the second one cuts the first
    short (interrupt_requests); through the router (one at a time per server) both end
    with a finish_reason. Malformed JSON never reaches it. It echoes the model name."""
    (server,) = await llama_servers(1)
    runner, client, url = await proxy_for(tmp_path, [server])
    direct = openai.AsyncOpenAI(base_url=server.base_url + "/v1", api_key="x", max_retries=0, timeout=60)

    async def stream_finish(c: openai.AsyncOpenAI, model: str) -> str | None:
        finish = None
        async with await c.chat.completions.create(model=model, messages=HI, max_tokens=200, stream=True) as s:
            async for chunk in s:
                for choice in chunk.choices:
                    finish = choice.finish_reason or finish
        return finish

    try:
        direct_finishes = await asyncio.gather(stream_finish(direct, "tiny"), stream_finish(direct, "tiny"))
        assert None in direct_finishes  # the quirk is real: one stream ended without a finish_reason
        routed = await asyncio.gather(stream_finish(client, "tiny"), stream_finish(client, "tiny"))
        assert None not in routed
        async with aiohttp.ClientSession() as s:
            async with s.post(url + "/v1/chat/completions", data=b"{broken") as r:
                assert r.status == 400 and (await r.json())["error"]["type"] == "invalid_request_error"
            async with s.post(server.base_url + "/v1/chat/completions", data=b"{broken",
                              headers={"Content-Type": "application/json"}) as r:
                assert r.status == 500  # what the server itself does with it
        echoed = await client.chat.completions.create(model="tiny", messages=HI, max_tokens=4)
        assert echoed.model == "tiny"  # llama-cpp-python echoes the upstream name we send
    finally:
        await direct.close()
        await client.close()
        await runner.cleanup()


async def test_two_servers_spread_then_one_dies_and_comes_back(tmp_path, llama_servers):
    a, b = await llama_servers(2)
    runner, client, _ = await proxy_for(tmp_path, [a, b], strategy="round_robin")
    state = runner.app[PROXY].state
    try:
        served = [(await client.chat.completions.with_raw_response.create(model="tiny", messages=HI, max_tokens=4)).headers["x-router-deployment"]
                  for _ in range(6)]
        assert sorted(served) == ["llama-0"] * 3 + ["llama-1"] * 3  # round robin spreads evenly
        a.kill()
        for _ in range(6):  # every request still succeeds, through the other server
            raw = await client.chat.completions.with_raw_response.create(model="tiny", messages=HI, max_tokens=4)
            assert raw.headers["x-router-deployment"] == "llama-1"
        assert state["llama-0"].snapshot()["state"] == "cooldown"
        await a.start()  # restarted on the same port
        while state["llama-0"].snapshot()["state"] != "half_open":  # the monitor reaches it (every 0.2 s)
            await asyncio.sleep(0.05)
        served = [(await client.chat.completions.with_raw_response.create(model="tiny", messages=HI, max_tokens=4)).headers["x-router-deployment"]
                  for _ in range(12)]
        # the trial goes to llama-0 and succeeds; round robin then lets it catch up on the
        # picks it missed while down (lowest counter first) before alternating again
        assert served[0] == "llama-0" and state["llama-0"].snapshot()["state"] == "healthy"
        assert set(served[-3:]) == {"llama-0", "llama-1"}
    finally:
        await client.close()
        await runner.cleanup()


async def test_health_and_warmth_probes_and_the_health_probe_script(tmp_path, llama_servers):
    (server,) = await llama_servers(1)
    runner, client, url = await proxy_for(tmp_path, [server])
    state = runner.app[PROXY].state
    loop = asyncio.get_running_loop()

    def probe() -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "router", "health-probe", "--url", url], capture_output=True, text=True, timeout=30)

    try:
        while server.base_url + "/v1" not in state.servers:
            await asyncio.sleep(0.05)
        seen = state.servers[server.base_url + "/v1"]
        assert seen.reachable  # llama-cpp-python: liveness only (its /v1/models would interrupt streams)
        d = runner.app[PROXY].config.by_id["llama-0"]
        assert state.is_warm(d, "tiny") is True  # a running llama.cpp server holds its model
        up = await loop.run_in_executor(None, probe)
        assert up.returncode == 0 and "UP   llama-0" in up.stdout
        server.kill()
        down = await loop.run_in_executor(None, probe)
        assert down.returncode == 2 and "DOWN llama-0" in down.stdout  # its only backend is down: "down"
    finally:
        await client.close()
        await runner.cleanup()
