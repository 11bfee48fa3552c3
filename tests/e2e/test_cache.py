"""The response cache: hits, keys, streams stored only when complete, per-request control."""

from __future__ import annotations

import asyncio

import openai
import orjson
import pytest
from hypothesis import given, strategies as st

from router.app import PROXY
from router.cache import IGNORED, Entry, LocalCache, cache_key
from router.config import load_config
from router.simulate import SimulatedBackend
from tests.conftest import start_proxy

HI = [{"role": "user", "content": "Hi"}]


@pytest.fixture
async def cached(tmp_path):
    sim = SimulatedBackend("vllm", ["m"])
    await sim.start()
    sim.faults.paths = ("/v1/chat/completions",)
    (tmp_path / "c.yaml").write_text(f"""
model_list:
  - {{model_name: m, litellm_params: {{model: hosted_vllm/m, api_base: "{sim.base_url}/v1"}}}}
router_settings: {{num_retries: 0}}
litellm_settings:
  cache: true
  cache_params: {{type: local, ttl: 60}}
""")
    (tmp_path / "model-mappings.yaml").write_text("{}\n")
    runner, url = await start_proxy(load_config(str(tmp_path / "c.yaml")))
    client = openai.AsyncOpenAI(base_url=url + "/v1", api_key="x", max_retries=0, timeout=60)
    yield client, sim, runner
    await client.close()
    await runner.cleanup()
    await sim.stop()


def chats(sim: SimulatedBackend) -> int:
    return sim.stats.requests["/v1/chat/completions"]


async def ask(client, **kw):
    raw = await client.chat.completions.with_raw_response.create(model="m", **{"messages": HI, "max_tokens": 5, **kw})
    return raw.headers, raw.parse()


async def settled(runner) -> None:
    """Wait for the background cache writes to land."""
    await asyncio.gather(*runner.app[PROXY]._background)


async def test_the_same_request_is_answered_from_the_cache(cached):
    client, sim, runner = cached
    h1, first = await ask(client)
    await settled(runner)
    h2, second = await ask(client)
    assert (h1["x-router-cache"], h2["x-router-cache"]) == ("miss", "hit")
    assert second.choices[0].message.content == first.choices[0].message.content and chats(sim) == 1
    assert h2["x-router-deployment"] == h1["x-router-deployment"]


async def test_the_key_ignores_key_order_and_irrelevant_fields_but_not_parameters(cached):
    client, sim, runner = cached
    await ask(client, temperature=0.5, user="alice")
    await settled(runner)
    h, _ = await ask(client, extra_body={"user": "bob"}, temperature=0.5)  # same meaning, other order and user
    assert h["x-router-cache"] == "hit"
    h, _ = await ask(client, temperature=0.7)
    assert h["x-router-cache"] == "miss" and chats(sim) == 2


# Fields the old allow-list left out of the key: each pair must be two cache entries.
CHANGES_THE_ANSWER = {
    "guided_choice": (["yes"], ["no"]),
    "guided_json": ({"type": "integer"}, {"type": "string"}),
    "grammar": ('root ::= "a"', 'root ::= "b"'),
    "json_schema": ({"type": "integer"}, {"type": "string"}),
    "repetition_penalty": (1.0, 1.3),
    "min_tokens": (1, 4),
    "chat_template_kwargs": ({"enable_thinking": True}, {"enable_thinking": False}),
    "reasoning_effort": ("low", "high"),
    "parallel_tool_calls": (True, False),
    "think": (True, False),
}


@pytest.mark.parametrize("field", sorted(CHANGES_THE_ANSWER))
async def test_a_request_differing_in_any_answer_changing_field_is_not_a_hit(cached, field):
    client, sim, runner = cached
    first, second = CHANGES_THE_ANSWER[field]
    h, _ = await ask(client, extra_body={field: first})
    await settled(runner)
    h, _ = await ask(client, extra_body={field: second})  # an answer constrained to ["yes"] is no answer to ["no"]
    assert h["x-router-cache"] == "miss" and chats(sim) == 2
    await settled(runner)
    h, _ = await ask(client, extra_body={field: first})
    assert h["x-router-cache"] == "hit" and chats(sim) == 2


JSON = st.recursive(st.none() | st.booleans() | st.integers(-2**63, 2**63 - 1) | st.floats(allow_nan=False, allow_infinity=False)
                    | st.text(max_size=8), lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
                    max_leaves=8)


@given(st.text(min_size=1, max_size=20).filter(lambda k: k not in IGNORED), JSON, JSON, st.booleans())
def test_every_field_but_the_ignored_ones_is_in_the_key(field, a, b, stream):
    base = {"model": "m", "messages": HI}
    same = cache_key("m", "chat", stream, {**base, field: a}) == cache_key("m", "chat", stream, {**base, field: b})
    if field == "stream_options" and not stream:
        assert same  # a JSON answer does not depend on stream_options
    else:
        assert same == (orjson.dumps(a, option=orjson.OPT_SORT_KEYS) == orjson.dumps(b, option=orjson.OPT_SORT_KEYS))


def test_the_ignored_fields_do_not_change_the_key():
    base = {"model": "m", "messages": HI}
    key = cache_key("m", "chat", False, base)
    assert IGNORED == {"model", "stream", "cache", "user", "metadata"}
    assert cache_key("m", "chat", False, {**base, "user": "u", "metadata": {"a": 1}, "model": "m", "stream": False}) == key
    assert cache_key("m", "chat", False, {**base, "stream_options": {"include_usage": True}}) == key
    assert cache_key("m", "chat", True, {**base, "stream_options": {"include_usage": True}}) != cache_key("m", "chat", True, base)


async def test_streams_are_replayed_as_well_formed_sse_and_stored_only_when_complete(cached):
    client, sim, runner = cached

    async def stream_text() -> tuple[str, str]:
        raw = await client.chat.completions.with_raw_response.create(model="m", messages=HI, max_tokens=5, stream=True)
        text = "".join([c.choices[0].delta.content or "" async for c in raw.parse() if c.choices])
        return raw.headers["x-router-cache"], text

    sim.faults.drop_after_chunks, sim.faults.drop_count = 2, 1  # the first stream breaks mid-way
    with pytest.raises(openai.APIError):
        await stream_text()
    await settled(runner)
    status, text = await stream_text()
    assert status == "miss" and text and chats(sim) == 2  # the broken stream was not stored
    await settled(runner)
    assert await stream_text() == ("hit", text) and chats(sim) == 2


async def test_cache_control_and_the_litellm_cache_field(cached):
    client, sim, runner = cached
    await ask(client)
    await settled(runner)
    h, _ = await ask(client, extra_headers={"Cache-Control": "no-cache"})
    assert h["x-router-cache"] == "skip" and chats(sim) == 2
    h, _ = await ask(client, extra_body={"cache": {"no-cache": True}})
    assert chats(sim) == 3 and "cache" not in sim.stats.last_body  # never forwarded to the backend
    h, _ = await ask(client, seed=9, extra_headers={"Cache-Control": "no-store"})
    await settled(runner)
    h, _ = await ask(client, seed=9)
    assert h["x-router-cache"] == "miss" and chats(sim) == 5  # the no-store answer was not kept


async def test_local_cache_is_an_lru_with_a_byte_budget():
    cache = LocalCache(ttl=60, max_bytes=3000, max_entry_bytes=1500)
    for i in range(3):
        await cache.set(f"k{i}", Entry(b"x" * 1000, {}))
    assert await cache.get("k0") is None  # evicted: 3 x (1000 + overhead) > 3000
    assert await cache.get("k2") is not None and cache.bytes <= 3000
    await cache.set("big", Entry(b"x" * 2000, {}))  # over max_entry_bytes: not stored
    assert await cache.get("big") is None
