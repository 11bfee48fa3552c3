"""Cache-aware routing and session affinity through the proxy, against simulated servers,
with the official openai and anthropic clients: multi-turn conversations stay where
their prompt is cached, the load bound holds under a burst, sessions stick and move
when their deployment fails, and /router/explain shows the index's view."""

from __future__ import annotations

import asyncio
from collections import Counter, defaultdict

import aiohttp
import anthropic
import openai
import pytest

from router.config import load_config
from router.simulate import SimulatedBackend
from tests.conftest import start_proxy

N = 4


@pytest.fixture
async def sims():
    started = [SimulatedBackend("vllm", ["m"]) for _ in range(N)]
    for s in started:
        await s.start()
    yield started
    for s in started:
        await s.stop()


async def proxy_for(tmp_path, sims, router: str, extra: str = ""):
    lines = ["model_list:"]
    for i, sim in enumerate(sims):
        lines.append(f"  - {{model_name: grp, litellm_params: {{model: hosted_vllm/m, api_base: '{sim.base_url}/v1'}}, "
                     f"model_info: {{id: d{i}}}}}")
    lines.append(f"router_settings: {{{router}}}")
    (tmp_path / "c.yaml").write_text("\n".join(lines) + "\n" + extra)
    runner, url = await start_proxy(load_config(str(tmp_path / "c.yaml")))
    return runner, url


def system_prompt(tenant: int) -> str:
    return f"You are the assistant of tenant {tenant}. " + " ".join(f"Rule {tenant}.{i}: be precise." for i in range(150))


async def converse(client: openai.AsyncOpenAI, tenant: int, turns: int, **kw) -> list[tuple[str, str]]:
    """One conversation; (deployment, route) per turn."""
    messages = [{"role": "system", "content": system_prompt(tenant)}]
    seen = []
    for turn in range(turns):
        messages.append({"role": "user", "content": f"Question {turn} of conversation {tenant}?"})
        raw = await client.chat.completions.with_raw_response.create(model="grp", messages=messages, max_tokens=8, **kw)
        answer = raw.parse().choices[0].message.content
        messages.append({"role": "assistant", "content": answer})
        seen.append((raw.headers["x-router-deployment"], raw.headers["x-router-route"]))
    return seen


async def test_each_conversation_stays_on_one_server_and_tenants_spread(tmp_path, sims):
    runner, url = await proxy_for(tmp_path, sims, "routing_strategy: cache-aware")
    client = openai.AsyncOpenAI(base_url=url + "/v1", api_key="x", max_retries=0)
    try:
        homes = {}
        for tenant in range(12):
            seen = await converse(client, tenant, 5)
            assert {d for d, _ in seen} == {seen[0][0]}, seen  # every turn where the first went
            assert {r for _, r in seen} == {"cache"}
            homes[tenant] = seen[0][0]
        assert len(set(homes.values())) >= 3, homes  # twelve tenants are not all on one or two servers
        # a second conversation of a tenant starts where its system prompt already is
        again = await converse(client, 5, 2)
        assert {d for d, _ in again} == {homes[5]}
    finally:
        await client.close()
        await runner.cleanup()


async def test_round_robin_scatters_the_same_conversations(tmp_path, sims):
    """The control: without cache-aware routing, turns hop between servers."""
    runner, url = await proxy_for(tmp_path, sims, "routing_strategy: round_robin")
    client = openai.AsyncOpenAI(base_url=url + "/v1", api_key="x", max_retries=0)
    try:
        seen = await converse(client, 1, 4)
        assert len({d for d, _ in seen}) == 4
    finally:
        await client.close()
        await runner.cleanup()


async def test_a_burst_on_one_prefix_never_puts_a_server_above_the_load_bound(tmp_path, sims):
    """Twenty concurrent streams of one tenant: its home server takes what the bound allows
    (1.25 × the mean), the rest spill to the others; all twenty are answered."""
    for s in sims:
        s.tokens_per_s = 20  # 10 tokens: each stream stays open ~0.5 s
    runner, url = await proxy_for(tmp_path, sims, "routing_strategy: cache-aware")
    client = openai.AsyncOpenAI(base_url=url + "/v1", api_key="x", max_retries=0)
    peak = [0] * N
    try:
        await converse(client, 3, 1)  # its prompt is cached somewhere now

        async def one() -> str:
            messages = [{"role": "system", "content": system_prompt(3)}, {"role": "user", "content": "Question 0 of conversation 3?"}]
            raw = await client.chat.completions.with_raw_response.create(model="grp", messages=messages, max_tokens=10,
                                                                         stream=True)
            async for _ in raw.parse():
                for i, s in enumerate(sims):
                    peak[i] = max(peak[i], s.stats.open)
            return raw.headers["x-router-deployment"]

        served = Counter(await asyncio.gather(*(one() for _ in range(20))))
        assert sum(served.values()) == 20
        assert max(peak) <= -(-125 * 20 // (100 * N)), (peak, served)  # ceil(1.25 × 20 / 4) = 7
        assert len(served) >= 3, served
    finally:
        await client.close()
        await runner.cleanup()


@pytest.mark.parametrize("how", ["x-litellm-session-id", "x-claude-code-session-id", "metadata", "prompt_cache_key"])
async def test_a_session_stays_on_one_deployment_under_round_robin(tmp_path, sims, how):
    """LiteLLM's optional_pre_call_checks: [session_affinity] pins a session, named the ways
    clients name it, even under a strategy that would scatter its requests."""
    runner, url = await proxy_for(tmp_path, sims, "routing_strategy: round_robin, optional_pre_call_checks: [session_affinity]")
    client = openai.AsyncOpenAI(base_url=url + "/v1", api_key="x", max_retries=0)
    try:
        served = defaultdict(set)
        for turn in range(6):
            for sid in ("alpha", "beta", "gamma"):
                kw: dict = {}
                if how.startswith("x-"):
                    kw["extra_headers"] = {how: sid}
                elif how == "metadata":
                    kw["extra_body"] = {"metadata": {"session_id": sid}}
                else:
                    kw["extra_body"] = {"prompt_cache_key": sid}
                raw = await client.chat.completions.with_raw_response.create(
                    model="grp", messages=[{"role": "user", "content": f"turn {turn}"}], max_tokens=2, **kw)
                served[sid].add(raw.headers["x-router-deployment"])
                assert raw.headers["x-router-route"] == "session"
        assert all(len(d) == 1 for d in served.values()), served
        # without a session id the strategy decides as before
        plain = await client.chat.completions.with_raw_response.create(
            model="grp", messages=[{"role": "user", "content": "x"}], max_tokens=2)
        assert plain.headers["x-router-route"] == "exact"
    finally:
        await client.close()
        await runner.cleanup()


async def test_a_session_moves_in_one_request_when_its_deployment_fails_and_stays_moved(tmp_path, sims):
    runner, url = await proxy_for(tmp_path, sims, "routing_strategy: round_robin, optional_pre_call_checks: [session_affinity], "
                                                  "allowed_fails: 0, cooldown_time: 60")
    client = openai.AsyncOpenAI(base_url=url + "/v1", api_key="x", max_retries=0)
    headers = {"x-litellm-session-id": "s-1"}
    try:
        first = await client.chat.completions.with_raw_response.create(
            model="grp", messages=[{"role": "user", "content": "a"}], max_tokens=2, extra_headers=headers)
        home = int(first.headers["x-router-deployment"][1:])
        sims[home].faults.status = 500  # it breaks
        moved = await client.chat.completions.with_raw_response.create(
            model="grp", messages=[{"role": "user", "content": "b"}], max_tokens=2, extra_headers=headers)
        assert moved.status_code == 200  # the same request, served elsewhere
        new_home = moved.headers["x-router-deployment"]
        assert new_home != f"d{home}" and moved.headers["x-router-fallback"].startswith(f"d{home},")
        sims[home].faults.status = None  # it recovers, but the session has moved on (its cache is there now)
        for _ in range(3):
            later = await client.chat.completions.with_raw_response.create(
                model="grp", messages=[{"role": "user", "content": "c"}], max_tokens=2, extra_headers=headers)
            assert later.headers["x-router-deployment"] == new_home
    finally:
        await client.close()
        await runner.cleanup()


async def test_deployment_affinity_pins_by_key_and_model_group_affinity_config_scopes_it(tmp_path, sims):
    extra = ("general_settings:\n  master_key: sk-master\n  api_keys:\n"
             "    - {key: sk-alice-0001, name: alice}\n    - {key: sk-bob-00001, name: bob}\n")
    runner, url = await proxy_for(tmp_path, sims, "routing_strategy: round_robin, "
                                                  "model_group_affinity_config: {grp: [deployment_affinity]}", extra)
    try:
        for key in ("sk-alice-0001", "sk-bob-00001"):
            client = openai.AsyncOpenAI(base_url=url + "/v1", api_key=key, max_retries=0)
            served = {(await client.chat.completions.with_raw_response.create(
                model="grp", messages=[{"role": "user", "content": "x"}], max_tokens=2)).headers["x-router-deployment"]
                      for _ in range(5)}
            await client.close()
            assert len(served) == 1, (key, served)
    finally:
        await runner.cleanup()


async def test_anthropic_clients_get_cache_aware_routing_through_the_messages_door(tmp_path, sims):
    runner, url = await proxy_for(tmp_path, sims, "routing_strategy: cache-aware")
    client = anthropic.AsyncAnthropic(base_url=url, api_key="x", max_retries=0)
    try:
        messages: list = []
        served = set()
        for turn in range(4):
            messages.append({"role": "user", "content": f"question {turn}"})
            raw = await client.messages.with_raw_response.create(model="grp", system=system_prompt(9), messages=messages,
                                                                 max_tokens=8)
            messages.append({"role": "assistant", "content": (await raw.parse()).content[0].text or "ok"})
            served.add(raw.headers["x-router-deployment"])
            assert raw.headers["x-router-route"] == "cache"
        assert len(served) == 1
    finally:
        await client.close()
        await runner.cleanup()


async def test_explain_shows_what_the_index_believes_for_a_body(tmp_path, sims):
    runner, url = await proxy_for(tmp_path, sims, "routing_strategy: cache-aware")
    client = openai.AsyncOpenAI(base_url=url + "/v1", api_key="x", max_retries=0)
    try:
        seen = await converse(client, 4, 2)
        home = seen[0][0]
        body = {"model": "grp", "messages": [{"role": "system", "content": system_prompt(4)},
                                             {"role": "user", "content": "Question 0 of conversation 4?"}]}
        async with aiohttp.ClientSession() as http:
            async with http.post(url + "/router/explain", json=body) as resp:
                assert resp.status == 200
                got = await resp.json()
            async with http.post(url + "/router/explain", data=b"{nope") as resp:
                assert resp.status == 400
        assert got["route"] == "cache" and got["candidates"][0]["deployment"] == home
        tokens = got["prompt_cache_tokens"]
        assert tokens[home] > 500 and all(v == 0 for d, v in tokens.items() if d != home)
        assert any(line.startswith(f"cache: {home} holds") for line in got["trace"])
    finally:
        await client.close()
        await runner.cleanup()


async def test_bad_settings_are_located_errors(tmp_path, sims):
    from router.config import ConfigError
    for router, expect in (("routing_strategy: cache-aware, routing_strategy_args: {load_factor: 0.9}",
                            "router_settings.routing_strategy_args.load_factor: must be more than 1"),
                           ("optional_pre_call_checks: [sesion_affinity]",
                            "router_settings.optional_pre_call_checks[0]: unknown check 'sesion_affinity'")):
        (tmp_path / "bad.yaml").write_text(f"model_list:\n  - {{model_name: grp, litellm_params: {{model: hosted_vllm/m, "
                                           f"api_base: '{sims[0].base_url}/v1'}}}}\nrouter_settings: {{{router}}}\n")
        with pytest.raises(ConfigError) as exc:
            load_config(str(tmp_path / "bad.yaml"))
        assert any(expect in str(i) for i in exc.value.issues), exc.value.issues


async def test_the_backends_cached_count_corrects_the_index_when_the_server_evicted(tmp_path):
    """The index believes a big cache; the real server (simulated, 2,500 tokens) evicts behind
    the router's back. The next turn's answer reports the shortfall: the index drops what was
    used before the evicted blocks, counts a correction, and the line shows cached_tokens=."""
    sim = SimulatedBackend("vllm", ["m"], prefix_cache_tokens=2500)
    await sim.start()
    runner, url = await proxy_for(tmp_path, [sim], "routing_strategy: cache-aware, routing_strategy_args: {capacity_tokens: 1000000}")
    client = openai.AsyncOpenAI(base_url=url + "/v1", api_key="x", max_retries=0)
    http = aiohttp.ClientSession()
    try:
        def words(tag: str, n: int) -> str:
            return " ".join(f"{tag}{i}" for i in range(n))

        older = [{"role": "system", "content": words("d", 400)}, {"role": "user", "content": "old question"}]
        await client.chat.completions.create(model="grp", messages=older, max_tokens=4)
        chat = [{"role": "system", "content": words("a", 1500)}, {"role": "user", "content": "first"}]
        first = await client.chat.completions.create(model="grp", messages=chat, max_tokens=4)
        chat += [{"role": "assistant", "content": first.choices[0].message.content}, {"role": "user", "content": "second"}]
        second = await client.chat.completions.create(model="grp", messages=chat, max_tokens=4)
        assert second.usage.prompt_tokens_details.cached_tokens > 1400  # the server had it

        async def explained(messages) -> int:
            async with http.post(url + "/router/explain", json={"model": "grp", "messages": messages}) as resp:
                return (await resp.json())["prompt_cache_tokens"]["d0"]

        assert await explained(older) > 0
        # other traffic straight to the server evicts both conversations there; the router cannot see it
        direct = openai.AsyncOpenAI(base_url=sim.base_url + "/v1", api_key="x", max_retries=0)
        for tag in ("b", "c"):
            await direct.chat.completions.create(model="m", messages=[{"role": "user", "content": words(tag, 2000)}], max_tokens=2)
        await direct.close()
        chat += [{"role": "assistant", "content": second.choices[0].message.content}, {"role": "user", "content": "third"}]
        third = await client.chat.completions.with_raw_response.create(model="grp", messages=chat, max_tokens=4)
        assert third.parse().usage.prompt_tokens_details is None  # vLLM: nothing cached, nothing said
        assert await explained(older) == 0  # used before the evicted blocks: dropped
        assert await explained(chat[:2]) > 0  # the third turn was just served: held again
        async with http.get(url + "/metrics") as resp:
            text = await resp.text()
        assert 'llm_router_prefix_evictions_total{deployment="d0"} 1.0' in text
        assert 'llm_router_cached_prompt_tokens_total{deployment="d0"}' in text
    finally:
        await http.close()
        await client.close()
        await runner.cleanup()
        await sim.stop()
