"""Process lifecycle: SIGTERM drains streams, SIGHUP and POST /router/reload swap the
configuration atomically and refuse a broken one."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path

import aiohttp
import orjson
import pytest

from router.app import PROXY
from router.config import load_config
from router.simulate import SimulatedBackend
from tests.conftest import start_proxy
from tests.e2e.test_cli import free_ports, wait_until_up

ROOT = Path(__file__).resolve().parents[2]
HI = [{"role": "user", "content": "Hi"}]


def config_text(port: int, models: tuple[str, ...] = ("one",)) -> str:
    lines = ["model_list:"]
    for m in models:
        lines.append(f"  - {{model_name: {m}, litellm_params: {{model: openai/tiny, api_base: 'http://127.0.0.1:{port}/v1'}}}}")
    lines.append("router_settings: {shutdown_grace_period: 10, num_retries: 0}")
    return "\n".join(lines) + "\n"


@pytest.fixture
async def served(tmp_path):
    """A simulated llama-server (slow: 10 tokens/s) and `llm-router serve` as real processes."""
    sim_port, proxy_port = free_ports(2)
    cfg = tmp_path / "config.yaml"
    cfg.write_text(config_text(sim_port))
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    sim_cfg = tmp_path / "sim.yaml"
    sim_cfg.write_text(f"model_list:\n  - {{model_name: x, litellm_params: {{model: openai/tiny, api_base: 'http://127.0.0.1:{sim_port}/v1'}}, model_info: {{provider: llama_cpp_native}}}}\n")
    sim = subprocess.Popen([sys.executable, "-m", "router", "simulate", "--config", str(sim_cfg), "--ttft", "0", "--tokens-per-s", "10"],
                           cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    serve = subprocess.Popen([sys.executable, "-m", "router", "serve", "--config", str(cfg), "--port", str(proxy_port)],
                             cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    base = f"http://127.0.0.1:{proxy_port}"
    try:
        async with aiohttp.ClientSession() as s:
            await wait_until_up(s, f"http://127.0.0.1:{sim_port}/health", sim)
            await wait_until_up(s, base + "/health/readiness", serve)
        yield base, serve, cfg, sim_port
    finally:
        for p in (serve, sim):
            if p.poll() is None:
                p.kill()
            p.wait()
        if serve.stdout:
            serve.stdout.close()


async def read_log_until(proc: subprocess.Popen, text: str, deadline_s: float = 10) -> str:
    """Read the process's output line by line (off the loop) until ``text`` appears."""
    loop = asyncio.get_running_loop()
    seen = []
    end = loop.time() + deadline_s
    while loop.time() < end:
        line = await asyncio.wait_for(loop.run_in_executor(None, proc.stdout.readline), max(0.1, end - loop.time()))
        seen.append(line)
        if text in line:
            return "".join(seen)
        if not line:
            break
    raise AssertionError(f"{text!r} not in the log:\n{''.join(seen)}")


async def test_sigterm_during_a_stream_lets_it_complete_and_exits_0(served):
    base, serve, _, _ = served
    async with aiohttp.ClientSession() as s:
        body = orjson.dumps({"model": "one", "messages": HI, "stream": True, "max_tokens": 15})
        async with s.post(base + "/v1/chat/completions", data=body) as r:
            first = await r.content.readany()
            assert first.startswith(b"data: ")
            serve.send_signal(signal.SIGTERM)  # ~1.4 s of the stream still to come
            rest = await r.content.read()
    assert (first + rest).rstrip().endswith(b"data: [DONE]")
    assert await asyncio.get_running_loop().run_in_executor(None, serve.wait, 15) == 0
    async with aiohttp.ClientSession() as s:
        with pytest.raises(aiohttp.ClientConnectionError):
            await s.get(base + "/health/liveliness")


async def test_sighup_with_a_broken_config_keeps_the_old_one_and_a_good_one_takes_over(served):
    base, serve, cfg, sim_port = served
    cfg.write_text(config_text(sim_port) + "  oops: [unclosed\n")
    serve.send_signal(signal.SIGHUP)
    await read_log_until(serve, "Reload refused")
    async with aiohttp.ClientSession() as s:
        async with s.post(base + "/v1/chat/completions", data=orjson.dumps({"model": "one", "messages": HI})) as r:
            assert r.status == 200  # the old configuration still serves
        cfg.write_text(config_text(sim_port, ("one", "two")))
        serve.send_signal(signal.SIGHUP)
        await read_log_until(serve, "Configuration reloaded")
        async with s.post(base + "/v1/chat/completions", data=orjson.dumps({"model": "two", "messages": HI})) as r:
            assert r.status == 200


async def test_reload_endpoint_swaps_atomically_and_in_flight_requests_finish_on_their_config(tmp_path):
    sim = SimulatedBackend("llama_cpp_native", ["tiny"], tokens_per_s=20)
    await sim.start()
    cfg = tmp_path / "config.yaml"
    cfg.write_text(config_text(sim.port, ("one",)))
    (tmp_path / "model-mappings.yaml").write_text("{}\n")
    runner, url = await start_proxy(load_config(str(cfg)))
    try:
        async with aiohttp.ClientSession() as s:
            state_before = runner.app[PROXY].state["one@llama_cpp_native"]
            stream = await s.post(url + "/v1/chat/completions",
                                  data=orjson.dumps({"model": "one", "messages": HI, "stream": True, "max_tokens": 10}))
            await stream.content.readany()
            cfg.write_text(config_text(sim.port, ("two",)))  # "one" is gone from the new configuration
            async with s.post(url + "/router/reload") as r:
                assert r.status == 200 and (await r.json())["status"] == "reloaded"
            rest = await stream.content.read()  # the stream that started on the old config completes
            assert rest.rstrip().endswith(b"data: [DONE]")
            stream.close()
            async with s.post(url + "/v1/chat/completions", data=orjson.dumps({"model": "one", "messages": HI})) as r:
                assert r.status == 404
            async with s.post(url + "/v1/chat/completions", data=orjson.dumps({"model": "two", "messages": HI})) as r:
                assert r.status == 200
            cfg.write_text("model_list: [oops\n")
            async with s.post(url + "/router/reload") as r:
                assert r.status == 400 and "config.yaml:2: (yaml): YAML syntax error" in (await r.json())["error"]["message"]
            async with s.post(url + "/v1/chat/completions", data=orjson.dumps({"model": "two", "messages": HI})) as r:
                assert r.status == 200
            assert runner.app[PROXY].state["one@llama_cpp_native"] is state_before  # state of known ids is kept
    finally:
        await runner.cleanup()
        await sim.stop()


async def test_overlapping_reloads_leave_one_monitor(aiohttp_client, tmp_path):
    """Twenty reloads at once each stopped "the" monitor task and started their own, so
    all but one leaked: probes went from 5 to 42 per 5 s and never came back down, and
    the leaked monitors went on probing the old configuration's servers. Reloads now
    run one at a time: afterwards exactly one monitor runs."""
    from router.app import create_app

    cfg = tmp_path / "c.yaml"
    cfg.write_text("model_list:\n  - {model_name: a, litellm_params: {model: openai/x, api_base: 'http://127.0.0.1:9/v1'}}\n")
    client = await aiohttp_client(create_app(load_config(str(cfg))))

    def monitors() -> int:
        return sum(1 for t in asyncio.all_tasks() if not t.done() and t.get_coro().__qualname__ == "Monitor.run")

    assert monitors() == 1
    answers = await asyncio.gather(*(client.post("/router/reload") for _ in range(20)))
    assert [r.status for r in answers] == [200] * 20
    assert monitors() == 1
