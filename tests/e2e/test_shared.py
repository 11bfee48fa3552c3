"""Two router instances sharing state through a real Redis behave as one router."""

from __future__ import annotations

import asyncio
import io
import os
import shutil
import socket
import subprocess
import time
import uuid

import openai
import pytest
import redis.asyncio as aioredis

from router import log
from router.app import PROXY
from router.config import load_config
from router.simulate import SimulatedBackend
from tests.conftest import start_proxy

HI = [{"role": "user", "content": "Hi"}]


@pytest.fixture
def redis_url() -> str:
    url = os.environ.get("LLM_ROUTER_TEST_REDIS_URL")
    if not url:
        if os.environ.get("CI"):
            pytest.fail("LLM_ROUTER_TEST_REDIS_URL is not set: scripts/test provides Redis (CI must run these tests)")
        pytest.skip("no Redis for the tests (scripts/test finds or starts one)")
    return url


async def wait_for(condition, what: str, deadline_s: float = 5.0) -> float:
    """Poll ``condition`` (shared state arrives on its own schedule); returns the seconds waited."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    while not condition():
        assert loop.time() - start < deadline_s, f"timed out waiting for {what}"
        await asyncio.sleep(0.02)
    return loop.time() - start


class Pair:
    """Instances A and B on one Redis key prefix, in front of simulated vLLMs."""

    def __init__(self, tmp_path, url: str, extra: str = "", cache: bool = False, general: str = "{}") -> None:
        self.tmp_path, self.url, self.extra, self.cache, self.general = tmp_path, url, extra, cache, general
        self.prefix = f"llm-router-test:{uuid.uuid4().hex[:8]}:"
        self.key = "sk-team-key-1" if "api_keys" in general else "x"
        self.sims = [SimulatedBackend("vllm", ["m"]) for _ in range(3)]

    async def __aenter__(self) -> "Pair":
        for s in self.sims:
            await s.start()
            s.faults.paths = ("/v1/chat/completions",)
        a, b, c = self.sims
        (self.tmp_path / "c.yaml").write_text(f"""
model_list:
  - {{model_name: solo, litellm_params: {{model: hosted_vllm/m, api_base: "{a.base_url}/v1", rpm: 4}}, model_info: {{id: solo-1}}}}
  - {{model_name: pair, litellm_params: {{model: hosted_vllm/m, api_base: "{b.base_url}/v1"}}, model_info: {{id: pair-b}}}}
  - {{model_name: pair, litellm_params: {{model: hosted_vllm/m, api_base: "{c.base_url}/v1"}}, model_info: {{id: pair-c}}}}
  - {{model_name: flaky, litellm_params: {{model: hosted_vllm/m, api_base: "{a.base_url}/v1"}}, model_info: {{id: flaky-1}}}}
router_settings:
  redis_url: {self.url}
  redis_key_prefix: "{self.prefix}"
  num_retries: 0
  allowed_fails: 1
  cooldown_time: 30
  monitor_interval: 60
  {self.extra}
litellm_settings:
  fallbacks: [{{flaky: [pair]}}]
  cache: {str(self.cache).lower()}
  cache_params: {{type: redis, ttl: 60}}
general_settings: {self.general}
""")
        (self.tmp_path / "model-mappings.yaml").write_text("{}\n")
        config = load_config(str(self.tmp_path / "c.yaml"))
        self.runners, self.clients = [], []
        for _ in range(2):
            runner, url = await start_proxy(config)
            self.runners.append(runner)
            self.clients.append(openai.AsyncOpenAI(base_url=url + "/v1", api_key=self.key, max_retries=0, timeout=60))
        return self

    async def __aexit__(self, *exc: object) -> None:
        for c in self.clients:
            await c.close()
        for r in self.runners:
            await r.cleanup()
        for s in self.sims:
            await s.stop()
        client = aioredis.from_url(self.url)
        keys = [k async for k in client.scan_iter(match=self.prefix + "*")]
        if keys:
            await client.delete(*keys)
        await client.aclose()

    def state(self, i: int):
        return self.runners[i].app[PROXY].state

    async def chat(self, i: int, model: str, **kw):
        raw = await self.clients[i].chat.completions.with_raw_response.create(model=model, messages=HI, max_tokens=3, **kw)
        raw.parse()
        return raw.headers


async def test_a_cooldown_caused_through_a_is_honoured_by_b_within_a_second(tmp_path, redis_url):
    async with Pair(tmp_path, redis_url) as p:
        p.sims[0].faults.status = 500
        for _ in range(2):  # allowed_fails 1: the second failure cools flaky-1 down (through A)
            assert (await p.chat(0, "flaky"))["x-router-fallback"].startswith("flaky-1,")
        assert p.state(0)["flaky-1"].snapshot()["state"] == "cooldown"
        waited = await wait_for(lambda: p.state(1)["flaky-1"].snapshot()["state"] == "cooldown", "B to see the cooldown")
        assert waited < 1.0
        assert (await p.chat(1, "flaky"))["x-router-fallback"] in ("pair-b", "pair-c")  # B does not even try flaky-1
        assert p.sims[0].stats.requests["/v1/chat/completions"] == 2


async def test_rpm_limits_hold_across_both_instances(tmp_path, redis_url):
    while int(time.time()) % 60 > 50:  # usage counts per wall-clock minute: start well inside one
        await asyncio.sleep(0.2)
    async with Pair(tmp_path, redis_url) as p:
        for i in (0, 1, 0, 1):  # rpm 4, shared
            await p.chat(i, "solo")
            await wait_for(lambda: all(p.state(j).minute_usage(p.runners[j].app[PROXY].config.by_id["solo-1"])[0] >= 1 for j in (0, 1)),
                           "usage to be shared")
        dep = p.runners[1].app[PROXY].config.by_id["solo-1"]
        await wait_for(lambda: p.state(1).minute_usage(dep)[0] == 4, "B to count all four")
        with pytest.raises(openai.RateLimitError):
            await p.chat(1, "solo")


async def test_a_key_rpm_limit_holds_across_both_instances(tmp_path, redis_url):
    while int(time.time()) % 60 > 50:  # limits count per wall-clock minute: start well inside one
        await asyncio.sleep(0.2)
    general = "{master_key: sk-master-key, api_keys: [{name: team, key: sk-team-key-1, rpm_limit: 3}]}"
    async with Pair(tmp_path, redis_url, general=general) as p:
        limits = [r.app[PROXY].limits for r in p.runners]
        minute = int(time.time() // 60)
        for i in (0, 1, 0):  # three requests, through both instances
            await p.chat(i, "pair")
        await wait_for(lambda: limits[1].count("team", minute) == 3, "B to count A's requests too")
        await wait_for(lambda: limits[0].count("team", minute) == 3, "A to count B's request too")
        with pytest.raises(openai.RateLimitError) as info:
            await p.chat(1, "pair")
        assert info.value.body["code"] == "rate_limit_exceeded" and "team" in info.value.body["message"]
        assert 1 <= int(info.value.response.headers["Retry-After"]) <= 60
        with pytest.raises(openai.RateLimitError):
            await p.chat(0, "pair")
        assert sum(s.stats.requests.get("/v1/chat/completions", 0) for s in p.sims) == 3  # the limited ones never left


async def test_round_robin_across_both_instances_stays_fair(tmp_path, redis_url):
    async with Pair(tmp_path, redis_url, extra="routing_strategy: round_robin") as p:
        served = []
        deps = p.runners[0].app[PROXY].config.groups["pair"]
        for n in range(12):
            served.append((await p.chat(n % 2, "pair"))["x-router-deployment"])
            total = n + 1
            await wait_for(lambda: all(sum(p.state(j).picks(d) for d in deps) == total for j in (0, 1)), "counters to sync")
        assert sorted(served.count(d) for d in ("pair-b", "pair-c")) == [6, 6]


async def test_a_cache_entry_written_through_a_is_a_hit_through_b(tmp_path, redis_url):
    async with Pair(tmp_path, redis_url, cache=True) as p:
        first = await p.chat(0, "solo", seed=42)
        await asyncio.gather(*p.runners[0].app[PROXY]._background)
        second = await p.chat(1, "solo", seed=42)
        assert (first["x-router-cache"], second["x-router-cache"]) == ("miss", "hit")
        assert p.sims[0].stats.requests["/v1/chat/completions"] == 1


async def test_keys_are_namespaced_and_all_expire_and_dead_instances_stop_counting(tmp_path, redis_url):
    async with Pair(tmp_path, redis_url) as p:
        await p.chat(0, "pair")
        await p.chat(0, "pair", stream=True)
        client = aioredis.from_url(redis_url)
        try:
            await wait_for(lambda: p.state(1)["pair-b"].picks + p.state(1)["pair-c"].picks == 2, "sync")
            keys = [k async for k in client.scan_iter(match=p.prefix + "*")]
            assert keys and all(k.decode().startswith(p.prefix) for k in keys)
            for k in keys:
                assert await client.ttl(k) > 0, k
            # an instance that died with a request in flight: its count must not stick
            await client.hset(p.prefix + "inflight:pair-b", "deadbeef0000", 5)
            await client.expire(p.prefix + "inflight:pair-b", 30)
            share = p.state(0).share
            rounds = share.rounds
            await wait_for(lambda: share.rounds >= rounds + 2, "two sync rounds")
            assert p.state(0)["pair-b"].remote_in_flight == 0  # no heartbeat key: not counted
            await client.set(p.prefix + "instance:deadbeef0000", 1, ex=5)  # alive again: counted
            await wait_for(lambda: p.state(0)["pair-b"].remote_in_flight == 5, "a live instance's in-flight count")
        finally:
            await client.aclose()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def test_killing_redis_mid_run_loses_no_request_and_sharing_resumes(tmp_path):
    server = shutil.which("redis-server")
    if server is None:
        if os.environ.get("CI"):
            pytest.fail("redis-server binary needed for this test under CI")
        pytest.skip("no redis-server binary")
    port = free_port()
    args = [server, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"redis://127.0.0.1:{port}/0"
    try:
        probe = aioredis.from_url(url)
        await wait_for_async(probe.ping)
        buf = io.StringIO()
        log.configure("human", "info", stream=buf)
        async with asyncio.timeout(90), Pair(tmp_path, url) as p:  # a hang must fail the test, not stall CI
            failures: list[BaseException] = []
            stop = asyncio.Event()

            async def load(i: int) -> None:
                while not stop.is_set():
                    try:
                        await p.chat(i % 2, "pair")
                    except Exception as exc:  # any client-visible failure
                        failures.append(exc)

            workers = [asyncio.create_task(load(i)) for i in range(4)]
            await asyncio.sleep(0.5)
            proc.kill()
            proc.wait()
            await wait_for(lambda: p.state(0).share.healthy is False, "A to notice Redis is gone")
            await asyncio.sleep(1.0)  # keep serving without Redis
            proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            await wait_for(lambda: p.state(0).share.healthy and p.state(1).share.healthy, "sharing to resume", 15)
            stop.set()
            await asyncio.gather(*workers)
            assert failures == []
            p.sims[0].faults.status = 500  # shared cooldowns work again after the restart
            for _ in range(2):
                await p.chat(0, "flaky")
            await wait_for(lambda: p.state(1)["flaky-1"].snapshot()["state"] == "cooldown", "B to see A's cooldown")
        await probe.aclose()
        out = buf.getvalue()
        assert out.count("Redis unavailable") == 2 and out.count("Redis is back") == 2  # once per instance, not per request
    finally:
        log.configure()
        proc.kill()
        proc.wait()


async def wait_for_async(ping, deadline_s: float = 5.0) -> None:
    end = time.monotonic() + deadline_s
    while True:
        try:
            await ping()
            return
        except Exception:
            assert time.monotonic() < end, "redis-server did not start"
            await asyncio.sleep(0.05)


@pytest.mark.parametrize("garbage", ["not json\nbody", "{}", "[1]\nbody", "{\"a\": 1}\nbody", "\xff\xfe", "list"])
async def test_an_unreadable_cache_entry_is_a_miss_and_is_replaced(tmp_path, redis_url, garbage):
    """A corrupted entry was a 500 for that prompt until its TTL ended."""
    buf = io.StringIO()
    log.configure("human", "info", stream=buf)
    client = aioredis.from_url(redis_url)
    try:
        async with Pair(tmp_path, redis_url, cache=True) as p:
            await p.chat(0, "solo", seed=7)
            await asyncio.gather(*p.runners[0].app[PROXY]._background)
            (key,) = [k async for k in client.scan_iter(match=p.prefix + "cache:*")]
            await client.delete(key)
            if garbage == "list":  # another type under the key: WRONGTYPE on GET
                await client.rpush(key, "x")
            else:
                await client.set(key, garbage.encode(), ex=60)
            headers = await p.chat(0, "solo", seed=7)
            assert headers["x-router-cache"] == "miss" and p.sims[0].stats.requests["/v1/chat/completions"] == 2
            await asyncio.gather(*p.runners[0].app[PROXY]._background)
            assert (await client.get(key)).startswith(b"{")  # replaced by the fresh answer
            assert (await p.chat(1, "solo", seed=7))["x-router-cache"] == "hit"
        out = buf.getvalue()
        assert "Unreadable response-cache entry deleted" in out and "body" not in out  # the key, never the value
    finally:
        await client.aclose()
        log.configure()


async def test_each_keys_recent_share_for_the_fair_queue_is_shared(tmp_path, redis_url):
    """The fairness accounting (work served per key, this minute and the last) reaches the
    other instance, which weighs its own queue by it; neither waits on Redis to order."""
    async with Pair(tmp_path, redis_url) as p:
        shares = [p.state(i).admission.shares for i in (0, 1)]
        now = time.time()
        shares[0].served("key:team", 700, now)
        shares[1].served("key:other", 50, now)
        await wait_for(lambda: shares[1].recent("key:team", time.time()) == 700, "B to see A's work for team")
        await wait_for(lambda: shares[0].recent("key:other", time.time()) == 50, "A to see B's work for other")
        assert shares[0].recent("key:team", time.time()) == 700  # its own, not counted twice
