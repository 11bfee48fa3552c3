"""The fault-injection suite: one test per failure, asserting what the client got and
what the router did (which backends were hit, which state transitions happened)."""

from __future__ import annotations

import asyncio
import io
import time

import openai
import pytest

from router import log
from router.app import PROXY
from router.config import load_config
from router.simulate import SimulatedBackend
from tests.conftest import start_proxy

HI = [{"role": "user", "content": "Hi"}]
CHAT_PATHS = ("/v1/chat/completions",)  # faults hit generations only, never the monitor's probes


class Faulty:
    """primary (a vLLM) with LiteLLM fallbacks to backup (a llama-cpp-python), and a
    two-deployment group 'pair' on two more vLLMs, in front of a running proxy."""

    def __init__(self, tmp_path, **router: object) -> None:
        self.tmp_path = tmp_path
        self.router = {"num_retries": 0, "allowed_fails": 1, "cooldown_time": 0.5, "timeout": 10, "monitor_interval": 60, **router}
        self.primary = SimulatedBackend("vllm", ["m"])
        self.backup = SimulatedBackend("llama_cpp_python", ["m"])
        self.pair = [SimulatedBackend("vllm", ["m"]), SimulatedBackend("vllm", ["m"])]
        self.log = io.StringIO()

    async def __aenter__(self) -> "Faulty":
        for sim in (self.primary, self.backup, *self.pair):
            await sim.start()
            sim.faults.paths = CHAT_PATHS
        settings = "".join(f"\n  {k}: {v}" for k, v in self.router.items())
        (self.tmp_path / "c.yaml").write_text(f"""
model_list:
  - {{model_name: primary, litellm_params: {{model: hosted_vllm/m, api_base: "{self.primary.base_url}/v1", timeout: 1}}, model_info: {{id: primary-1}}}}
  - {{model_name: backup, litellm_params: {{model: openai/m, api_base: "{self.backup.base_url}/v1"}}, model_info: {{id: backup-1, provider: llama_cpp_python}}}}
  - {{model_name: pair, litellm_params: {{model: hosted_vllm/m, api_base: "{self.pair[0].base_url}/v1"}}, model_info: {{id: pair-a}}}}
  - {{model_name: pair, litellm_params: {{model: hosted_vllm/m, api_base: "{self.pair[1].base_url}/v1"}}, model_info: {{id: pair-b}}}}
router_settings:{settings}
  fallbacks: [{{primary: [backup]}}]
""")
        (self.tmp_path / "model-mappings.yaml").write_text("{}\n")
        log.configure("human", "info", stream=self.log)
        self.runner, url = await start_proxy(load_config(str(self.tmp_path / "c.yaml")))
        self.client = openai.AsyncOpenAI(base_url=url + "/v1", api_key="x", max_retries=0, timeout=60)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.client.close()
        await self.runner.cleanup()
        for sim in (self.primary, self.backup, *self.pair):
            await sim.stop()
        log.configure()

    def health(self, dep_id: str) -> dict:
        return self.runner.app[PROXY].state[dep_id].snapshot()

    async def chat(self, model: str = "primary", **kw):
        raw = await self.client.chat.completions.with_raw_response.create(model=model, messages=HI, max_tokens=3, **kw)
        if kw.get("stream"):
            async for _ in raw.parse():
                pass
        else:
            assert raw.parse().choices[0].message.content
        return raw.headers


def chats(sim: SimulatedBackend) -> int:
    return sim.stats.requests["/v1/chat/completions"]


async def test_primary_500_fallback_serves(tmp_path):
    async with Faulty(tmp_path) as f:
        f.primary.faults.status = 500
        headers = await f.chat()
        assert (headers["x-router-deployment"], headers["x-router-attempts"], headers["x-router-fallback"]) == \
            ("backup-1", "2", "primary-1,backup-1")
        assert chats(f.primary) == 1 and chats(f.backup) == 1
        assert "WARNING [ROUTER] Fallback triggered: vllm -> llama_cpp_python" in f.log.getvalue()


async def test_primary_refused_fallback_serves_and_it_counts_toward_cooldown(tmp_path):
    async with Faulty(tmp_path) as f:
        await f.primary.stop()
        for _ in range(2):
            assert (await f.chat())["x-router-deployment"] == "backup-1"
        assert f.health("primary-1")["state"] == "cooldown"  # LiteLLM exempts connection errors; we do not
        assert "Deployment primary-1 (vllm): healthy -> cooldown" in f.log.getvalue()


async def test_primary_hangs_timeout_then_fallback_within_timeout_plus_margin(tmp_path):
    async with Faulty(tmp_path) as f:
        f.primary.faults.hang = True  # primary's timeout is 1 s
        start = time.monotonic()
        headers = await f.chat()
        elapsed = time.monotonic() - start
        assert headers["x-router-deployment"] == "backup-1" and 1.0 <= elapsed < 2.5


async def test_streaming_failure_before_the_first_byte_falls_back_transparently(tmp_path):
    async with Faulty(tmp_path) as f:
        f.primary.faults.status = 503
        headers = await f.chat(stream=True)
        assert (headers["x-router-deployment"], headers["x-router-attempts"]) == ("backup-1", "2")


async def test_429_immediate_fallback_and_primary_rested_for_retry_after(tmp_path):
    async with Faulty(tmp_path) as f:
        f.primary.faults.status, f.primary.faults.retry_after = 429, 30
        start = time.monotonic()
        assert (await f.chat())["x-router-deployment"] == "backup-1"
        assert time.monotonic() - start < 1.0  # no waiting for Retry-After: the backup serves now
        health = f.health("primary-1")
        assert health["state"] == "cooldown" and 25 < health["cooldown_left_s"] <= 30
        assert (await f.chat())["x-router-deployment"] == "backup-1"
        assert chats(f.primary) == 1  # rested: not asked again


async def test_400_is_passed_through_without_fallback(tmp_path):
    async with Faulty(tmp_path) as f:
        f.primary.faults.status = 400
        with pytest.raises(openai.BadRequestError):
            await f.chat()
        assert chats(f.backup) == 0 and f.health("primary-1")["state"] == "healthy"


async def test_repeated_failures_cool_down_then_half_open_trial_recovers(tmp_path):
    async with Faulty(tmp_path) as f:
        f.primary.faults.status = 500
        for _ in range(2):  # allowed_fails 1: the second failure within a minute cools it down
            assert (await f.chat())["x-router-deployment"] == "backup-1"
        assert f.health("primary-1")["state"] == "cooldown"
        assert (await f.chat())["x-router-fallback"] == "backup-1"  # skipped while cooling
        assert chats(f.primary) == 2
        f.primary.faults.clear()
        f.primary.faults.paths = CHAT_PATHS
        while f.health("primary-1")["state"] != "half_open":  # cooldown_time 0.5 s
            await asyncio.sleep(0.02)
        headers = await f.chat()  # the trial
        assert headers["x-router-deployment"] == "primary-1"
        assert f.health("primary-1")["state"] == "healthy"
        out = f.log.getvalue()
        assert "primary-1 (vllm): cooldown -> half_open" in out and "primary-1 (vllm): half_open -> healthy" in out


async def test_whole_group_cooling_tries_the_least_recently_failed(tmp_path):
    async with Faulty(tmp_path, cooldown_time=60) as f:
        a, b = f.pair
        a.faults.status = b.faults.status = 500
        for _ in range(4):
            with pytest.raises(openai.APIStatusError):
                await f.chat("pair")
        assert f.health("pair-a")["state"] == f.health("pair-b")["state"] == "cooldown"
        first_failed = min(("pair-a", "pair-b"), key=lambda d: f.runner.app[PROXY].state[d].health.last_failure_at)
        a.faults.clear()
        b.faults.clear()
        headers = await f.chat("pair")  # not a 503: the one that failed longest ago gets a try
        assert headers["x-router-deployment"] == first_failed


async def test_mid_stream_drop_ends_with_an_error_event_and_no_fallback(tmp_path):
    async with Faulty(tmp_path) as f:
        f.primary.faults.drop_after_chunks = 2
        with pytest.raises(openai.APIError) as info:
            await f.chat(stream=True)
        assert "dropped the connection mid-response" in info.value.message
        assert chats(f.backup) == 0  # bytes had reached the client: no transparent fallback


async def test_retries_with_backoff_recover_from_a_transient_error(tmp_path):
    async with Faulty(tmp_path, num_retries=2, allowed_fails=5) as f:
        f.pair[0].faults.status, f.pair[0].faults.status_count = 500, 1
        f.pair[1].faults.status, f.pair[1].faults.status_count = 500, 1
        headers = await f.chat("pair")
        assert headers["x-router-attempts"] == "3"  # both failed once; the retry round succeeded


async def test_garbage_body_from_the_primary_falls_back(tmp_path):
    async with Faulty(tmp_path) as f:
        f.primary.faults.garbage = True  # a 200 HTML page from a misconfigured reverse proxy
        headers = await f.chat()
        assert (headers["x-router-deployment"], headers["x-router-attempts"]) == ("backup-1", "2")
        assert "not a JSON object" in f.health("primary-1")["last_failure_reason"]


async def test_hang_mid_stream_ends_with_a_timeout_event_after_the_idle_limit(tmp_path):
    async with Faulty(tmp_path) as f:
        f.primary.faults.hang_after_chunks = 2  # primary's timeout (and so its idle limit) is 1 s
        start = time.monotonic()
        with pytest.raises(openai.APIError) as info:
            await f.chat(stream=True)
        assert 1.0 <= time.monotonic() - start < 2.5
        assert info.value.code == "upstream_timeout" and chats(f.backup) == 0


async def test_killed_backend_cools_down_and_the_probe_brings_it_back_after_restart(tmp_path):
    async with Faulty(tmp_path, cooldown_time=60, monitor_interval=0.1) as f:
        await f.primary.pause_listening()  # the process is gone: connections are refused
        for _ in range(2):
            assert (await f.chat())["x-router-deployment"] == "backup-1"
        assert f.health("primary-1")["state"] == "cooldown"
        await f.primary.resume_listening()  # restarted on the same port
        while f.health("primary-1")["state"] != "half_open":  # the monitor reaches it well before 60 s
            await asyncio.sleep(0.02)
        assert (await f.chat())["x-router-deployment"] == "primary-1"
        assert f.health("primary-1")["state"] == "healthy"
        assert "probe reached the backend" in f.log.getvalue()


async def test_pre_call_checks_skip_a_backend_the_probe_found_down_without_trying_it(tmp_path):
    async with Faulty(tmp_path, enable_pre_call_checks="true", monitor_interval=0.05) as f:
        await f.primary.pause_listening()
        state = f.runner.app[PROXY].state
        base = f.primary.base_url + "/v1"
        while not (base in state.servers and not state.servers[base].reachable):
            await asyncio.sleep(0.02)
        headers = await f.chat()
        assert (headers["x-router-deployment"], headers["x-router-attempts"]) == ("backup-1", "1")  # no attempt at primary
        assert f.health("primary-1")["failures"] == 0


async def test_context_overflow_goes_to_context_window_fallbacks_and_other_400s_do_not(tmp_path):
    from aiohttp import web

    async def too_long(request: web.Request) -> web.Response:
        await request.read()
        return web.json_response({"error": {"message": "This model's maximum context length is 4096 tokens. However, you requested 9000 tokens.",
                                            "type": "BadRequestError", "param": None, "code": 400}}, status=400)

    async def models(request: web.Request) -> web.Response:
        return web.json_response({"data": [{"id": "m"}]})

    small = web.Application()
    small.router.add_post("/v1/chat/completions", too_long)
    small.router.add_get("/v1/models", models)
    runner = web.AppRunner(small)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    small_url = f"http://127.0.0.1:{runner.addresses[0][1]}"
    big = SimulatedBackend("vllm", ["m"])
    await big.start()
    (tmp_path / "c.yaml").write_text(f"""
model_list:
  - {{model_name: small, litellm_params: {{model: hosted_vllm/m, api_base: "{small_url}/v1"}}}}
  - {{model_name: big, litellm_params: {{model: hosted_vllm/m, api_base: "{big.base_url}/v1"}}}}
  - {{model_name: other, litellm_params: {{model: hosted_vllm/m, api_base: "{small_url}/v1"}}}}
router_settings:
  context_window_fallbacks: [{{small: [big]}}]
  fallbacks: [{{other: [big]}}]
""")
    (tmp_path / "model-mappings.yaml").write_text("{}\n")
    proxy_runner, url = await start_proxy(load_config(str(tmp_path / "c.yaml")))
    client = openai.AsyncOpenAI(base_url=url + "/v1", api_key="x", max_retries=0, timeout=60)
    try:
        raw = await client.chat.completions.with_raw_response.create(model="small", messages=HI)
        assert raw.headers["x-router-fallback"] == "small@vllm,big@vllm"
        with pytest.raises(openai.BadRequestError) as info:  # plain fallbacks do not apply to a client error
            await client.chat.completions.create(model="other", messages=HI)
        assert "maximum context length" in info.value.message and chats(big) == 1  # passed through as the backend sent it
    finally:
        await client.close()
        await proxy_runner.cleanup()
        await runner.cleanup()
        await big.stop()


@pytest.mark.parametrize(("header", "cooldown"), [("1e400", (0, 5)), ("99999999999", (3590, 3600)), ("nan", (0, 5))])
async def test_an_absurd_retry_after_is_a_bounded_429_and_a_bounded_cooldown(tmp_path, header, cooldown):
    """A backend's 429 with Retry-After 1e400 was a 500 for the client and an infinite
    cooldown; 99999999999 rested the deployment for ~3000 years."""
    from aiohttp import ClientSession, web

    async def chat(_: web.Request) -> web.Response:
        return web.json_response({"error": {"message": "slow down", "type": "rate_limit_error"}}, status=429,
                                 headers={"Retry-After": header})

    app = web.Application()
    # no /v1/models: the monitor's probe must not turn the cooldown into a half-open trial
    app.router.add_post("/v1/chat/completions", chat)
    backend = web.AppRunner(app)
    await backend.setup()
    site = web.TCPSite(backend, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    (tmp_path / "c.yaml").write_text(f"""
model_list:
  - {{model_name: m, litellm_params: {{model: hosted_vllm/m, api_base: "http://127.0.0.1:{port}/v1"}}, model_info: {{id: limited}}}}
router_settings: {{num_retries: 0, cooldown_time: 5, monitor_interval: 60}}
""")
    (tmp_path / "model-mappings.yaml").write_text("{}\n")
    runner, url = await start_proxy(load_config(str(tmp_path / "c.yaml")))
    try:
        async with ClientSession() as http:
            async with http.post(url + "/v1/chat/completions", json={"model": "m", "messages": HI}) as resp:
                assert resp.status == 429, await resp.text()
                assert (await resp.json())["error"]["type"] == "rate_limit_error"
                if "Retry-After" in resp.headers or header[0] == "9":
                    assert 1 <= int(resp.headers["Retry-After"]) <= 3600
            async with http.get(url + "/health") as resp:
                rows = {r["id"]: r for r in (await resp.json())["unhealthy_endpoints"]}
        assert rows["limited"]["state"] == "cooldown"
        assert cooldown[0] <= rows["limited"]["cooldown_left_s"] <= cooldown[1]
    finally:
        await runner.cleanup()
        await backend.cleanup()
