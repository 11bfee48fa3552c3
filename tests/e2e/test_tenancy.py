"""Tenants stay apart: a key's `models` holds for every deployment an attempt reaches
(fallbacks and capabilities included), and the response cache is scoped per key."""

from __future__ import annotations

import asyncio
import io

import aiohttp
import openai
import pytest

from router import log
from router.app import PROXY
from router.config import load_config
from router.simulate import SimulatedBackend
from tests.conftest import start_proxy

HI = [{"role": "user", "content": "Hi"}]
MASTER = "sk-master-key-123"
CHEAP = "sk-cheap-only-456"  # may use `cheap` only
CHAT = "sk-chat-capability-789"  # may use the capability `chat`
KEYS = (f"{{master_key: {MASTER}, api_keys: [{{name: cheap-only, key: {CHEAP}, models: [cheap]}}, "
        f"{{name: chat-cap, key: {CHAT}, models: [chat]}}]}}")


@pytest.fixture
async def tenants(tmp_path):
    """`cheap` (deployment cheap-1) falls back to `expensive` (exp-1); alias `fast` -> cheap;
    capability `chat` prefers both."""
    sims = {name: SimulatedBackend("vllm", [name]) for name in ("cheap", "expensive")}
    for sim in sims.values():
        await sim.start()
    (tmp_path / "c.yaml").write_text(f"""
model_list:
  - {{model_name: cheap, litellm_params: {{model: hosted_vllm/cheap, api_base: "{sims['cheap'].base_url}/v1"}}, model_info: {{id: cheap-1}}}}
  - {{model_name: expensive, litellm_params: {{model: hosted_vllm/expensive, api_base: "{sims['expensive'].base_url}/v1"}}, model_info: {{id: exp-1}}}}
router_settings:
  num_retries: 0
  debug_router: true
  fallbacks: [{{cheap: [expensive]}}]
  model_group_alias: {{fast: cheap}}
general_settings: {KEYS}
""")
    (tmp_path / "model-mappings.yaml").write_text("capabilities: {chat: {preferred_models: [cheap, expensive]}}\n")
    buf = io.StringIO()
    log.configure("human", "info", stream=buf)
    runner, url = await start_proxy(load_config(str(tmp_path / "c.yaml")))
    clients: list[openai.AsyncOpenAI] = []

    def client(key: str) -> openai.AsyncOpenAI:
        clients.append(openai.AsyncOpenAI(base_url=url + "/v1", api_key=key, max_retries=0, timeout=30))
        return clients[-1]

    yield url, sims, buf, client
    for c in clients:
        await c.close()
    await runner.cleanup()
    log.configure()
    for sim in sims.values():
        await sim.stop()


def chats(sim: SimulatedBackend) -> int:
    return sim.stats.requests["/v1/chat/completions"]


async def test_a_fallback_the_key_may_not_use_is_skipped(tenants):
    url, sims, buf, client = tenants
    sims["cheap"].faults.status = 503
    with pytest.raises(openai.APIStatusError) as info:
        await client(CHEAP).chat.completions.create(model="cheap", messages=HI)
    assert info.value.status_code == 502 and "503" in info.value.message  # cheap's failure, not a 200 from expensive
    assert chats(sims["expensive"]) == 0
    assert "may not use fallback exp-1: skipped" in buf.getvalue()  # debug_router says why
    raw = await client(MASTER).chat.completions.with_raw_response.create(model="cheap", messages=HI)
    assert raw.headers["x-router-deployment"] == "exp-1"  # the master key does fall back
    assert chats(sims["expensive"]) == 1


async def test_a_capability_reaches_only_deployments_the_key_may_use(tenants):
    url, sims, buf, client = tenants
    served = []
    async with aiohttp.ClientSession() as s:
        for _ in range(12):
            async with s.post(url + "/v1/chat/completions", json={"messages": HI},
                              headers={"Authorization": f"Bearer {CHEAP}", "x-capability": "chat"}) as r:
                assert r.status == 200, await r.text()
                served.append(r.headers["x-router-deployment"])
    assert set(served) == {"cheap-1"} and chats(sims["expensive"]) == 0
    assert "may not use exp-1: skipped" in buf.getvalue()
    async with aiohttp.ClientSession() as s:  # a key that lists the capability may use all it routes to
        for _ in range(12):
            async with s.post(url + "/v1/chat/completions", json={"messages": HI},
                              headers={"Authorization": f"Bearer {CHAT}", "x-capability": "chat"}) as r:
                assert r.status == 200, await r.text()
    assert chats(sims["expensive"]) > 0
    with pytest.raises(openai.PermissionDeniedError):  # ...but not the models by their own names
        await client(CHAT).chat.completions.create(model="expensive", messages=HI)


async def test_an_alias_or_a_deployment_id_of_an_allowed_group_is_allowed(tenants):
    url, sims, _, client = tenants
    cheap = client(CHEAP)
    for name in ("cheap", "fast", "cheap-1"):
        raw = await cheap.chat.completions.with_raw_response.create(model=name, messages=HI)
        assert raw.headers["x-router-deployment"] == "cheap-1", name
    for name in ("expensive", "exp-1", "no-such-model"):
        with pytest.raises(openai.PermissionDeniedError) as info:
            await cheap.chat.completions.create(model=name, messages=HI)
        assert "cheap-only" in info.value.body["message"] and CHEAP not in info.value.body["message"]
    assert chats(sims["expensive"]) == 0


# -- the response cache is scoped per key ------------------------------------------------------

A, B, A2 = "sk-tenant-a-0001", "sk-tenant-b-0002", "sk-tenant-a-0003"  # A and A2: the same tenant


async def cache_stack(tmp_path, scope: str = ""):
    sim = SimulatedBackend("vllm", ["m"])
    await sim.start()
    (tmp_path / "c.yaml").write_text(f"""
model_list:
  - {{model_name: m, litellm_params: {{model: hosted_vllm/m, api_base: "{sim.base_url}/v1"}}}}
router_settings: {{num_retries: 0}}
litellm_settings: {{cache: true, cache_params: {{type: local, ttl: 60{scope}}}}}
general_settings:
  master_key: {MASTER}
  api_keys:
    - {{name: a, key: {A}, tenant: acme}}
    - {{name: a2, key: {A2}, tenant: acme}}
    - {{name: b, key: {B}}}
""")
    (tmp_path / "model-mappings.yaml").write_text("{}\n")
    runner, url = await start_proxy(load_config(str(tmp_path / "c.yaml")))
    return sim, runner, url


async def ask(url: str, key: str, prompt: str) -> tuple[str, str]:
    async with aiohttp.ClientSession() as s:
        async with s.post(url + "/v1/chat/completions", headers={"Authorization": f"Bearer {key}"},
                          json={"model": "m", "messages": [{"role": "user", "content": prompt}]}) as r:
            assert r.status == 200, await r.text()
            return r.headers["x-router-cache"], (await r.json())["id"]


async def settled(runner) -> None:
    await asyncio.gather(*runner.app[PROXY]._background)


async def test_one_tenant_never_gets_another_tenants_cached_answer(tmp_path):
    sim, runner, url = await cache_stack(tmp_path)
    try:
        state, first = await ask(url, A, "secret plan")
        await settled(runner)
        assert state == "miss"
        assert (await ask(url, A, "secret plan")) == ("hit", first)  # the same key: a hit
        state, other = await ask(url, B, "secret plan")  # another key: its own entry
        assert state == "miss" and other != first
        assert (await ask(url, MASTER, "secret plan"))[0] == "miss"  # the master key too
        assert (await ask(url, A2, "secret plan")) == ("hit", first)  # a key of the same tenant shares
        assert sim.stats.requests["/v1/chat/completions"] == 3
    finally:
        await runner.cleanup()
        await sim.stop()


async def test_a_shared_cache_scope_shares_on_purpose(tmp_path):
    sim, runner, url = await cache_stack(tmp_path, ", scope: shared")
    try:
        _, first = await ask(url, A, "common question")
        await settled(runner)
        assert (await ask(url, B, "common question")) == ("hit", first)
        assert sim.stats.requests["/v1/chat/completions"] == 1
    finally:
        await runner.cleanup()
        await sim.stop()


def test_the_cache_scope_is_checked_and_part_of_the_key(tmp_path):
    from router.cache import cache_key, scope_of
    from router.config import ApiKey, ConfigError
    body = {"messages": HI}
    a, b = ApiKey("a", "sk-aaaaaaaa"), ApiKey("b", "sk-bbbbbbbb")
    keys = {cache_key("m", "chat", False, body, scope_of(k, "key")) for k in (a, b, None)}
    assert len(keys) == 3 and cache_key("m", "chat", False, body, scope_of(None, "key")) == cache_key("m", "chat", False, body)
    assert scope_of(a, "shared") == scope_of(b, "shared") == ""
    assert scope_of(ApiKey("x", "sk-xxxxxxxx", tenant="t"), "key") == scope_of(ApiKey("y", "sk-yyyyyyyy", tenant="t"), "key")
    assert scope_of(ApiKey("master", "sk-mmmmmmmm", admin=True), "key") != scope_of(ApiKey("master", "sk-nnnnnnnn"), "key")
    (tmp_path / "c.yaml").write_text("model_list: []\nlitellm_settings: {cache: true, cache_params: {scope: everyone}}\n")
    (tmp_path / "model-mappings.yaml").write_text("{}\n")
    with pytest.raises(ConfigError, match="scope"):
        load_config(str(tmp_path / "c.yaml"))


# -- Redis credentials never reach the log -----------------------------------------------------

def closed_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("fmt", ["human", "json"])
@pytest.mark.parametrize("form", [
    "redis://127.0.0.1:{port}/15?password=hunter2-pw",
    "redis://127.0.0.1:{port}/15?db=15&username=hunter2-user&password=hunter2-pw",
    "redis://alice:hunter2-pw@127.0.0.1:{port}/15",
    "rediss://:hunter2-pw@127.0.0.1:{port}/15?ssl_cert_reqs=none",
    "redis://hunter2-token@127.0.0.1:{port}/15",
])
async def test_the_start_up_log_masks_every_redis_credential(tmp_path, fmt, form):
    url = form.format(port=closed_port())  # nothing listens: sharing is paused, the log line is written
    (tmp_path / "c.yaml").write_text(f"""
model_list: []
router_settings: {{redis_url: "{url}", redis_key_prefix: "tenancy-test:"}}
""")
    (tmp_path / "model-mappings.yaml").write_text("{}\n")
    buf = io.StringIO()
    log.configure(fmt, "info", stream=buf)
    try:
        runner, _ = await start_proxy(load_config(str(tmp_path / "c.yaml")))
        await runner.cleanup()
    finally:
        log.configure()
    out = buf.getvalue()
    line = next(x for x in out.splitlines() if "Sharing state through Redis" in x)
    assert "hunter2" not in out, out
    assert "***" in line and "127.0.0.1" in line, line


@pytest.mark.parametrize("url, shown", [
    ("redis://h:6379/0?password=s3cr3t", "redis://h:6379/0?password=***"),
    ("redis://h/0?db=1&Password=s3cr3t&username=s3cr3t&auth=s3cr3t", "redis://h/0?db=1&Password=***&username=***&auth=***"),
    ("redis://u:s3cr3t@h:1/0", "redis://u:***@h:1/0"),
    ("redis://u:s3c@r3t@h:1/0", "redis://u:***@h:1/0"),  # an @ in the password
    ("rediss://:s3cr3t@[::1]:6380/2?ssl_cert_reqs=none", "rediss://:***@[::1]:6380/2?ssl_cert_reqs=none"),
    ("unix://:s3cr3t@/run/redis.sock?db=0&password=s3cr3t", "unix://:***@/run/redis.sock?db=0&password=***"),
    ("redis://s3cr3t@h", "redis://***@h"),
    ("redis://h:6379", "redis://h:6379"),
])
def test_redact_masks_every_credential_form(url, shown):
    from router.app import _redact
    assert _redact(url) == shown


async def test_a_context_window_fallback_the_key_may_not_use_is_skipped(tmp_path):
    from aiohttp import web

    async def too_long(request: web.Request) -> web.Response:
        await request.read()
        return web.json_response({"error": {"message": "This model's maximum context length is 4096 tokens.",
                                            "type": "BadRequestError", "param": None, "code": 400}}, status=400)

    small = web.Application()
    small.router.add_post("/v1/chat/completions", too_long)
    small_runner = web.AppRunner(small)
    await small_runner.setup()
    await web.TCPSite(small_runner, "127.0.0.1", 0).start()
    big = SimulatedBackend("vllm", ["m"])
    await big.start()
    (tmp_path / "c.yaml").write_text(f"""
model_list:
  - {{model_name: small, litellm_params: {{model: hosted_vllm/m, api_base: "http://127.0.0.1:{small_runner.addresses[0][1]}/v1"}}}}
  - {{model_name: big, litellm_params: {{model: hosted_vllm/m, api_base: "{big.base_url}/v1"}}}}
router_settings: {{context_window_fallbacks: [{{small: [big]}}]}}
general_settings: {{master_key: {MASTER}, api_keys: [{{name: small-only, key: {CHEAP}, models: [small]}}]}}
""")
    (tmp_path / "model-mappings.yaml").write_text("{}\n")
    runner, url = await start_proxy(load_config(str(tmp_path / "c.yaml")))
    try:
        async with aiohttp.ClientSession() as s:
            async with s.post(url + "/v1/chat/completions", json={"model": "small", "messages": HI},
                              headers={"Authorization": f"Bearer {CHEAP}"}) as r:
                assert r.status == 400 and "maximum context length" in (await r.json())["error"]["message"]
            assert chats(big) == 0  # not served by `big`, which the key may not use
            async with s.post(url + "/v1/chat/completions", json={"model": "small", "messages": HI},
                              headers={"Authorization": f"Bearer {MASTER}"}) as r:
                assert r.status == 200 and chats(big) == 1  # the master key does fall back
    finally:
        await runner.cleanup()
        await small_runner.cleanup()
        await big.stop()


async def test_a_cached_answer_from_a_deployment_the_key_may_not_use_is_a_miss(tmp_path):
    """Two keys of one tenant share cache entries, but not their permissions: an answer a
    tenant-mate got from a fallback this key may not use is not handed to it."""
    cheap, expensive = SimulatedBackend("vllm", ["m"]), SimulatedBackend("vllm", ["m"])
    for sim in (cheap, expensive):
        await sim.start()
        sim.faults.paths = ("/v1/chat/completions",)
    (tmp_path / "c.yaml").write_text(f"""
model_list:
  - {{model_name: cheap, litellm_params: {{model: hosted_vllm/m, api_base: "{cheap.base_url}/v1"}}, model_info: {{id: cheap-1}}}}
  - {{model_name: expensive, litellm_params: {{model: hosted_vllm/m, api_base: "{expensive.base_url}/v1"}}, model_info: {{id: exp-1}}}}
router_settings: {{num_retries: 0, allowed_fails: 100, fallbacks: [{{cheap: [expensive]}}]}}
litellm_settings: {{cache: true, cache_params: {{type: local, ttl: 60}}}}
general_settings:
  master_key: {MASTER}
  api_keys:
    - {{name: small, key: {A}, models: [cheap], tenant: acme}}
    - {{name: big, key: {A2}, models: [cheap, expensive], tenant: acme}}
""")
    (tmp_path / "model-mappings.yaml").write_text("{}\n")
    runner, url = await start_proxy(load_config(str(tmp_path / "c.yaml")))
    try:
        async def ask_cheap(key: str) -> tuple[str, str]:
            async with aiohttp.ClientSession() as s:
                async with s.post(url + "/v1/chat/completions", headers={"Authorization": f"Bearer {key}"},
                                  json={"model": "cheap", "messages": [{"role": "user", "content": "plan"}]}) as r:
                    assert r.status == 200, await r.text()
                    return r.headers["x-router-cache"], r.headers["x-router-deployment"]

        cheap.faults.status = 500
        assert await ask_cheap(A2) == ("miss", "exp-1")  # the big key's answer came from the fallback
        await settled(runner)
        cheap.faults.status = None
        assert await ask_cheap(A2) == ("hit", "exp-1")  # shared within the tenant, for a key that may use it
        assert await ask_cheap(A) == ("miss", "cheap-1")  # the small key may not use exp-1: not its answer
    finally:
        await runner.cleanup()
        for sim in (cheap, expensive):
            await sim.stop()


async def test_many_tenants_at_once_each_get_only_their_own_cached_answers(tmp_path):
    """Twelve tenants ask the same prompts concurrently, twice over: every answer a tenant
    gets (hit or not) is one it was served itself, never another tenant's."""
    sim = SimulatedBackend("vllm", ["m"])
    await sim.start()
    keys = [f"sk-tenant-{i:04d}-xxxx" for i in range(12)]
    (tmp_path / "c.yaml").write_text(f"""
model_list:
  - {{model_name: m, litellm_params: {{model: hosted_vllm/m, api_base: "{sim.base_url}/v1"}}}}
router_settings: {{num_retries: 0}}
litellm_settings: {{cache: true, cache_params: {{type: local, ttl: 60}}}}
general_settings:
  master_key: {MASTER}
  api_keys: [{", ".join(f"{{name: t{i}, key: {k}}}" for i, k in enumerate(keys))}]
""")
    (tmp_path / "model-mappings.yaml").write_text("{}\n")
    runner, url = await start_proxy(load_config(str(tmp_path / "c.yaml")))
    try:
        seen: dict[str, set[str]] = {k: set() for k in keys}

        async def round_() -> list[tuple[str, str, str]]:
            asks = [(k, p) for k in keys for p in ("alpha", "beta", "gamma")]
            got = await asyncio.gather(*(ask(url, k, p) for k, p in asks))
            return [(k, state, rid) for (k, _), (state, rid) in zip(asks, got)]

        first = await round_()
        for k, state, rid in first:
            assert state == "miss"
            seen[k].add(rid)
        await settled(runner)
        second = await round_()
        assert all(state == "hit" for _, state, _ in second)
        for k, _, rid in second:
            assert rid in seen[k]  # its own earlier answer
        owners = {rid: k for k, _, rid in first}
        assert len(owners) == len(first)  # every tenant's answers were its own generations
    finally:
        await runner.cleanup()
        await sim.stop()
