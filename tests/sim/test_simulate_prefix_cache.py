"""The simulators' prompt cache (router.simulate.prefix): a conversation's next turn finds
its earlier turn's blocks, is faster by the prefill it skips, and says so in its server's
own usage fields; LRU eviction, block granularity, the last-token rule, stats, the CLI.

Timing assertions are lower bounds plus generous relative margins (a cached turn against
an uncached one of nearly the same length), never bare sleeps."""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any

import aiohttp
import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families
from hypothesis import example, given, settings
from hypothesis import strategies as st

from router.simulate import SimulatedBackend
from router.simulate.core import messages_text
from router.simulate.prefix import BlockCache, LastPrompt, Prompt, block_hashes
from router.simulate.tools import ToolSpec

MODEL = "llama3.1:8b"
DEFAULT_MODELS = [MODEL]
BLOCK = 16
#: Prefill speed in the timing tests: a 324-token first turn costs 0.324 s, a cached turn ~0.03 s.
RATE = 1000.0
SYSTEM = " ".join(f"rule{i}" for i in range(320))
TURN1 = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "hello there"}]
PROPS = settings(max_examples=200, deadline=None, derandomize=bool(os.environ.get("CI")))
E2E_PROPS = settings(max_examples=20, deadline=None, derandomize=bool(os.environ.get("CI")))


def most(tokens: int, block: int = 1) -> int:
    """What a server may serve from cache of a ``tokens``-long prompt: all but its last token
    (every server evaluates it to sample), in whole blocks."""
    return max(tokens - 1, 0) // block * block


async def until(condition: Any, timeout: float = 3.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.005)


async def post(b: SimulatedBackend, path: str, body: dict[str, Any]) -> tuple[dict[str, Any], float]:
    """The JSON answer and how long it took."""
    started = time.monotonic()
    async with aiohttp.ClientSession() as s, s.post(b.base_url + path, json=body) as r:
        assert r.status == 200, await r.text()
        data = await r.json(content_type=None)
    return data, time.monotonic() - started


async def stream_lines(b: SimulatedBackend, path: str, body: dict[str, Any]) -> list[bytes]:
    """The non-empty lines of a streamed answer (SSE ``data:`` lines, NDJSON lines)."""
    async with aiohttp.ClientSession() as s, s.post(b.base_url + path, json=body) as r:
        assert r.status == 200
        return [line for line in (await r.read()).split(b"\n") if line.strip()]


def sse_json(lines: list[bytes]) -> list[dict[str, Any]]:
    return [orjson.loads(line[6:]) for line in lines if line.startswith(b"data: {")]


def next_turn(messages: list[dict], answer: str) -> list[dict]:
    return [*messages, {"role": "assistant", "content": answer}, {"role": "user", "content": "tell me more"}]


def text_of(data: dict[str, Any]) -> str:
    """The answer's text (Ollama's native shape or the OpenAI one)."""
    return data["choices"][0]["message"]["content"] if "choices" in data else data["message"]["content"]


async def two_turns(b: SimulatedBackend, path: str) -> tuple[tuple[dict, float], tuple[dict, float]]:
    """Turn 1 of a conversation with a long system prompt, then turn 2 (turn 1 + answer + a question)."""
    first = await post(b, path, {"model": MODEL, "messages": TURN1, "stream": False})
    second = await post(b, path, {"model": MODEL, "messages": next_turn(TURN1, text_of(first[0])),
                                  "stream": False})
    return first, second


def cached_backend_kw(**kw: Any) -> dict[str, Any]:
    return {"prefix_cache_tokens": 1 << 16, "prefill_tokens_per_s": RATE, "ttft": 0, "tokens_per_s": 0, **kw}


def assert_faster_by_prefill(first: float, second: float, n1: int) -> None:
    assert first >= n1 / RATE - 0.01  # the whole first prompt was prefilled
    assert second < first - 0.6 * n1 / RATE  # the second skipped most of that


# ---------------------------------------------------------------- the second turn, per kind


async def test_vllm_second_turn_reports_cached_tokens_in_prompt_tokens_details_and_is_faster(sim):
    b = await sim.backend("vllm", **cached_backend_kw())
    (one, t1), (two, t2) = await two_turns(b, "/v1/chat/completions")
    n1 = one["usage"]["prompt_tokens"]
    assert one["usage"]["prompt_tokens_details"] is None  # nothing cached: vLLM leaves the details unset
    assert two["usage"]["prompt_tokens_details"] == {"cached_tokens": n1 // BLOCK * BLOCK}
    assert two["usage"]["prompt_tokens"] > n1  # prompt_tokens stays the whole prompt
    assert_faster_by_prefill(t1, t2, n1)


async def test_llama_server_second_turn_reports_cache_n_and_cached_tokens_and_is_faster(sim):
    b = await sim.backend("llama_cpp_native", **cached_backend_kw())
    (one, t1), (two, t2) = await two_turns(b, "/v1/chat/completions")
    n1, n2 = one["usage"]["prompt_tokens"], two["usage"]["prompt_tokens"]
    cached = n1 // BLOCK * BLOCK
    assert one["timings"]["cache_n"] == 0 and one["timings"]["prompt_n"] == n1
    assert one["usage"]["prompt_tokens_details"] == {"cached_tokens": 0}
    assert two["timings"]["cache_n"] == cached and two["timings"]["prompt_n"] == n2 - cached
    assert two["usage"]["prompt_tokens_details"] == {"cached_tokens": cached}
    assert two["timings"]["prompt_ms"] < one["timings"]["prompt_ms"] / 2  # the prefill it timed
    assert_faster_by_prefill(t1, t2, n1)


async def test_ollama_second_turn_counts_the_whole_prompt_and_is_faster_in_prompt_eval_duration(sim):
    b = await sim.backend("ollama", loaded=[MODEL], **cached_backend_kw())
    (one, t1), (two, t2) = await two_turns(b, "/api/chat")
    n1 = one["prompt_eval_count"]
    cached = n1 // BLOCK * BLOCK
    assert two["prompt_eval_count"] > n1  # the whole prompt: Ollama's count ignores the cache
    assert one["prompt_eval_duration"] >= n1 / RATE * 1e9 * 0.99
    assert two["prompt_eval_duration"] == pytest.approx((two["prompt_eval_count"] - cached) / RATE * 1e9, rel=0.01)
    assert b.stats.cached_tokens == cached
    assert_faster_by_prefill(t1, t2, n1)


async def test_ollama_generate_and_v1_report_the_whole_prompt_too(sim):
    b = await sim.backend("ollama", loaded=[MODEL], **cached_backend_kw())
    one, t1 = await post(b, "/api/generate", {"model": MODEL, "prompt": SYSTEM, "stream": False})
    two, t2 = await post(b, "/api/generate", {"model": MODEL, "prompt": SYSTEM + " and then", "stream": False})
    assert two["prompt_eval_count"] == one["prompt_eval_count"] + 2
    assert_faster_by_prefill(t1, t2, one["prompt_eval_count"])
    v1, _ = await post(b, "/v1/chat/completions", {"model": MODEL, "messages": next_turn(TURN1, "ok")})
    assert v1["usage"]["prompt_tokens"] == len(messages_text(next_turn(TURN1, "ok")).split())


@pytest.mark.parametrize("path", ["/api/chat", "/v1/chat/completions"])
async def test_ollama_0_30_0_counted_only_the_uncached_tokens(sim, path):
    """0.30.0 ran llama-server and passed its prompt_n on as prompt_eval_count; 0.30.1 added cache_n back."""
    b = await sim.backend("ollama", loaded=[MODEL], version="0.30.0", **cached_backend_kw())
    (one, _), (two, _) = await two_turns(b, path)

    def count(data: dict[str, Any]) -> int:
        return data["prompt_eval_count"] if path == "/api/chat" else data["usage"]["prompt_tokens"]

    n1, n2 = count(one), len(messages_text(next_turn(TURN1, text_of(one))).split())
    assert count(two) == n2 - n1 // BLOCK * BLOCK


async def test_llama_cpp_python_reports_the_whole_prompt_and_keeps_only_its_last_prompt(sim):
    b = await sim.backend("llama_cpp_python", **cached_backend_kw())
    (one, t1), (two, t2) = await two_turns(b, "/v1/chat/completions")
    n1 = one["usage"]["prompt_tokens"]
    assert set(two["usage"]) == {"prompt_tokens", "completion_tokens", "total_tokens"}
    assert two["usage"]["prompt_tokens"] > n1
    assert b.stats.cached_tokens == n1  # token-granular: the whole previous prompt
    assert_faster_by_prefill(t1, t2, n1)
    other = [{"role": "user", "content": "another tenant " + SYSTEM}]  # shares not even the first token
    await post(b, "/v1/chat/completions", {"model": MODEL, "messages": other})
    before = b.stats.cached_tokens
    _, t3 = await post(b, "/v1/chat/completions", {"model": MODEL, "messages": next_turn(TURN1, "ok")})
    assert b.stats.cached_tokens == before  # the other prompt replaced it, whatever the capacity
    assert t3 >= n1 / RATE


# ---------------------------------------------------------------- streams and doors


async def test_vllm_stream_final_usage_chunk_carries_cached_tokens(sim):
    b = await sim.backend("vllm", **cached_backend_kw())
    body = {"model": MODEL, "messages": TURN1, "stream": True, "stream_options": {"include_usage": True}}
    first = sse_json(await stream_lines(b, "/v1/chat/completions", body))[-1]
    assert first["choices"] == [] and "prompt_tokens_details" not in first["usage"]  # exclude_none
    second = sse_json(await stream_lines(b, "/v1/chat/completions", body))[-1]
    assert second["usage"]["prompt_tokens_details"] == {"cached_tokens": first["usage"]["prompt_tokens"] // BLOCK * BLOCK}


async def test_vllm_stream_through_the_official_client_reads_cached_tokens(sim):
    b = await sim.backend("vllm", **cached_backend_kw())
    client = sim.openai(b)
    usages = []
    for _ in range(2):
        stream = await client.chat.completions.create(model=MODEL, messages=TURN1, stream=True,
                                                      stream_options={"include_usage": True})
        usages += [chunk.usage async for chunk in stream if chunk.usage is not None]
    assert usages[0].prompt_tokens_details is None
    assert usages[1].prompt_tokens_details.cached_tokens == usages[0].prompt_tokens // BLOCK * BLOCK


async def test_llama_server_stream_final_chunk_carries_timings_and_usage(sim):
    b = await sim.backend("llama_cpp_native", **cached_backend_kw())
    body = {"model": MODEL, "messages": TURN1, "stream": True, "stream_options": {"include_usage": True}}
    await stream_lines(b, "/v1/chat/completions", body)
    last = sse_json(await stream_lines(b, "/v1/chat/completions", body))[-1]
    cached = last["usage"]["prompt_tokens"] // BLOCK * BLOCK
    assert last["timings"]["cache_n"] == cached and last["usage"]["prompt_tokens_details"] == {"cached_tokens": cached}
    no_usage = sse_json(await stream_lines(b, "/v1/chat/completions", {**body, "stream_options": None}))[-1]
    assert no_usage["timings"]["cache_n"] == cached  # the finish chunk carries the timings without include_usage


async def test_ollama_stream_final_line_counts_the_whole_prompt(sim):
    b = await sim.backend("ollama", loaded=[MODEL], **cached_backend_kw())
    body = {"model": MODEL, "messages": TURN1}
    one = orjson.loads((await stream_lines(b, "/api/chat", body))[-1])
    two = orjson.loads((await stream_lines(b, "/api/chat", body))[-1])
    assert one["done"] and two["done"] and two["prompt_eval_count"] == one["prompt_eval_count"]
    assert two["prompt_eval_duration"] < one["prompt_eval_duration"] / 4


async def test_completions_are_cached_too(sim):
    b = await sim.backend("vllm", **cached_backend_kw())
    one, t1 = await post(b, "/v1/completions", {"model": MODEL, "prompt": SYSTEM})
    two, t2 = await post(b, "/v1/completions", {"model": MODEL, "prompt": SYSTEM + " continue"})
    assert two["usage"]["prompt_tokens_details"] == {"cached_tokens": 320}
    assert_faster_by_prefill(t1, t2, one["usage"]["prompt_tokens"])


async def test_vllm_messages_door_reports_cache_read_input_tokens_on_the_cached_turn(sim):
    b = await sim.backend("vllm", **cached_backend_kw())
    body = {"model": MODEL, "max_tokens": 50, "system": SYSTEM, "messages": [{"role": "user", "content": "hello"}]}
    one, _ = await post(b, "/v1/messages", body)
    n = one["usage"]["input_tokens"]
    assert one["usage"] == {"input_tokens": n, "output_tokens": one["usage"]["output_tokens"]}  # unknown: absent
    two, _ = await post(b, "/v1/messages", body)
    cached = most(n, BLOCK)
    assert two["usage"] == {"input_tokens": n - cached, "output_tokens": two["usage"]["output_tokens"],
                            "cache_creation_input_tokens": 0, "cache_read_input_tokens": cached}
    lines = await stream_lines(b, "/v1/messages", {**body, "stream": True})
    events = [orjson.loads(line[6:]) for line in lines if line.startswith(b"data: ")]
    start, delta = events[0], next(e for e in events if e["type"] == "message_delta")
    assert start["message"]["usage"]["input_tokens"] == n  # built before the usage carries the details
    assert delta["usage"]["cache_read_input_tokens"] == cached and delta["usage"]["input_tokens"] == n - cached


async def test_llama_server_messages_door_reports_cache_read_input_tokens_always(sim):
    b = await sim.backend("llama_cpp_native", **cached_backend_kw())
    body = {"model": MODEL, "max_tokens": 50, "system": SYSTEM, "messages": [{"role": "user", "content": "hello"}]}
    one, _ = await post(b, "/v1/messages", body)
    assert one["usage"]["cache_read_input_tokens"] == 0
    n = one["usage"]["input_tokens"]
    lines = await stream_lines(b, "/v1/messages", {**body, "stream": True})
    start = orjson.loads(lines[1][6:])
    assert start["type"] == "message_start"
    assert start["message"]["usage"] == {"cache_read_input_tokens": most(n, BLOCK),
                                         "input_tokens": n - most(n, BLOCK), "output_tokens": 0}


# ---------------------------------------------------------------- the cache model


async def test_a_third_conversation_evicts_the_least_recently_used_first(sim):
    words = 6 * BLOCK - 3  # "system:" + words + "user: hi" = 6 blocks exactly
    convs = {name: [{"role": "system", "content": " ".join(f"{name}{i}" for i in range(words))},
                    {"role": "user", "content": "hi"}] for name in "ABC"}
    assert len(messages_text(convs["A"]).split()) == 6 * BLOCK
    b = await sim.backend("vllm", **cached_backend_kw(prefix_cache_tokens=12 * BLOCK))  # room for two
    firsts = {name: (await post(b, "/v1/chat/completions", {"model": MODEL, "messages": msgs}))[0]
              for name, msgs in convs.items()}
    assert b.stats_dict()["prefix_cache_blocks"] == 12

    async def second_turn(name: str) -> int:
        msgs = next_turn(convs[name], firsts[name]["choices"][0]["message"]["content"])
        usage = (await post(b, "/v1/chat/completions", {"model": MODEL, "messages": msgs}))[0]["usage"]
        return (usage["prompt_tokens_details"] or {}).get("cached_tokens", 0)

    assert await second_turn("B") == 6 * BLOCK  # still there
    assert await second_turn("A") == 0  # evicted by C


async def test_cached_tokens_are_block_granular_and_never_the_whole_prompt(sim):
    b = await sim.backend("vllm", **cached_backend_kw())
    words = [f"w{i}" for i in range(40)]

    async def cached(prompt: list[str]) -> int:
        usage = (await post(b, "/v1/completions", {"model": MODEL, "prompt": " ".join(prompt)}))[0]["usage"]
        return (usage["prompt_tokens_details"] or {}).get("cached_tokens", 0)

    assert await cached(words) == 0
    assert await cached(words[:20] + ["other"] * 20) == 16  # 20 shared tokens: one whole block
    assert await cached(words[:15] + ["other"] * 20) == 0  # less than a block
    assert await cached(words) == 32  # the same 40 tokens: two whole blocks, not the partial third
    assert await cached(words[:33]) == 32  # 33 tokens: all but the last, in whole blocks
    assert await cached(words[:32]) == 16  # 32 tokens: the last one is always evaluated


async def test_tools_are_rendered_before_the_messages(sim):
    b = await sim.backend("vllm", **cached_backend_kw())
    tool = {"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}}
    other = {"type": "function", "function": {"name": "search", "parameters": {"type": "object"}}}

    async def cached(tools: list[dict]) -> int:
        body = {"model": MODEL, "messages": TURN1, "tools": tools, "tool_choice": "none"}
        usage = (await post(b, "/v1/chat/completions", body))[0]["usage"]
        return (usage["prompt_tokens_details"] or {}).get("cached_tokens", 0)

    assert await cached([tool]) == 0
    assert await cached([other]) == 0  # other tools: a different prefix from the start
    assert await cached([tool]) > 0


async def test_the_prefill_happens_in_the_seat(sim):
    b = await sim.backend("vllm", max_num_seqs=1, **cached_backend_kw(prefill_tokens_per_s=RATE / 2))
    first = asyncio.create_task(post(b, "/v1/chat/completions", {"model": MODEL, "messages": TURN1}))
    await until(lambda: b.scheduler.running)
    second = asyncio.create_task(post(b, "/v1/chat/completions", {"model": MODEL, "messages": TURN1[1:]}))
    await until(lambda: b.scheduler.waiting)
    assert len(b.scheduler.running) == 1  # the first is prefilling, the second waits for its seat
    (_, t1), (_, t2) = await first, await second
    assert t2 >= t1 - 0.05


async def test_stats_count_prompt_and_cached_tokens_and_reset(sim):
    b = await sim.backend("vllm", **cached_backend_kw())
    (one, _), (two, _) = await two_turns(b, "/v1/chat/completions")
    async with aiohttp.ClientSession() as s:
        async with s.get(b.base_url + "/__sim/stats") as r:
            stats = await r.json()
        assert stats["prompt_tokens"] == one["usage"]["prompt_tokens"] + two["usage"]["prompt_tokens"]
        assert stats["cached_tokens"] == two["usage"]["prompt_tokens_details"]["cached_tokens"]
        assert stats["prefix_cache_blocks"] == two["usage"]["prompt_tokens"] // BLOCK
        async with s.post(b.base_url + "/__sim/stats/reset") as r:
            reset = await r.json()
    assert reset["prompt_tokens"] == reset["cached_tokens"] == 0
    assert reset["prefix_cache_blocks"] == stats["prefix_cache_blocks"]  # the cache itself stays
    await post(b, "/v1/embeddings", {"model": MODEL, "input": SYSTEM})
    assert b.stats.prompt_tokens == 0  # embeddings are not prompts of the cache model


async def test_vllm_metrics_give_the_cache_size_and_its_hits(sim):
    b = await sim.backend("vllm", **cached_backend_kw(prefix_cache_tokens=1000))
    (one, _), (two, _) = await two_turns(b, "/v1/chat/completions")
    async with aiohttp.ClientSession() as s, s.get(b.base_url + "/metrics") as r:
        text = await r.text()
    values = {(m.name, tuple(sorted(m.labels.items()))): m.value
              for family in text_string_to_metric_families(text) for m in family.samples}
    labels = (("engine", "0"), ("model_name", MODEL))
    assert values[("vllm:prefix_cache_queries_total", labels)] == one["usage"]["prompt_tokens"] + two["usage"]["prompt_tokens"]
    assert values[("vllm:prefix_cache_hits_total", labels)] == two["usage"]["prompt_tokens_details"]["cached_tokens"]
    info = (("block_size", "16"), ("enable_prefix_caching", "True"), ("engine", "0"), ("num_gpu_blocks", "62"))
    assert values[("vllm:cache_config_info", info)] == 1.0  # 1000 // 16 blocks of 16 tokens


@pytest.mark.parametrize("kind", ["vllm", "llama_cpp_native", "ollama", "llama_cpp_python"])
async def test_without_a_cache_nothing_is_cached_and_nothing_waits(sim, kind):
    b = await sim.backend(kind, loaded=[MODEL] if kind == "ollama" else (), ttft=0, tokens_per_s=0,
                          prefill_tokens_per_s=10.0)  # would be 32 s per turn if it counted
    path = "/api/chat" if kind == "ollama" else "/v1/chat/completions"
    (_, t1), (two, t2) = await two_turns(b, path)
    assert t1 < 2 and t2 < 2
    assert b.stats.cached_tokens == 0 and b.stats.prompt_tokens > 0
    assert b.stats_dict()["prefix_cache_blocks"] is None
    if kind == "vllm":
        async with aiohttp.ClientSession() as s, s.get(b.base_url + "/metrics") as r:
            assert "prefix_cache" not in await r.text()  # no cache model: /metrics as before
    if kind == "vllm":
        assert two["usage"]["prompt_tokens_details"] is None
    if kind == "llama_cpp_native":
        assert two["timings"]["cache_n"] == 0 and two["usage"]["prompt_tokens_details"] == {"cached_tokens": 0}


def test_the_hosted_kinds_model_no_cache():
    for kind in ("openai", "anthropic"):
        assert SimulatedBackend(kind, prefix_cache_tokens=4096).prefix_cache is None
    assert isinstance(SimulatedBackend("llama_cpp_python", prefix_cache_tokens=0).prefix_cache, LastPrompt)
    with pytest.raises(ValueError):
        SimulatedBackend("vllm", cache_block_tokens=0)


# ---------------------------------------------------------------- properties


ids = st.lists(st.integers(0, 50), max_size=120)


@PROPS
@given(history=st.lists(st.tuples(st.integers(0, 120), ids), min_size=1, max_size=8), block=st.sampled_from([1, 4, 16]))
def test_without_eviction_cached_is_the_longest_block_aligned_common_prefix(history, block):
    """Prompts share a stem cut at drawn split points; with room for all, a prompt's cached
    tokens are its longest common prefix with any earlier prompt, in whole blocks, short of its end."""
    stem = [7] * 60 + list(range(60))
    cache, seen = BlockCache(1 << 20, block), []
    for split, tail in history:
        prompt = Prompt(tuple(stem[:split] + tail))
        best = max((common_prefix(prompt.ids, earlier) for earlier in seen), default=0)
        cached, key = cache.lookup(prompt)
        assert cached == min(best // block * block, most(len(prompt.ids), block))
        assert 0 <= cached < max(len(prompt.ids), 1)
        cache.insert(key)
        seen.append(prompt.ids)


@PROPS
@given(history=st.lists(st.tuples(st.integers(0, 120), ids), min_size=1, max_size=12),
       capacity=st.integers(0, 20), block=st.sampled_from([2, 4, 16]))
def test_with_eviction_cached_is_the_leading_run_still_in_the_cache(history, capacity, block):
    stem = [3] * 40 + list(range(80))
    cache = BlockCache(capacity * block, block)
    for split, tail in history:
        prompt = Prompt(tuple(stem[:split] + tail))
        hashes = block_hashes(prompt, block)
        held = next((i for i, h in enumerate(hashes) if h not in cache), len(hashes))
        cached, key = cache.lookup(prompt)
        assert cached == min(held * block, most(len(prompt.ids), block)) and cached < max(len(prompt.ids), 1)
        cache.insert(key)
        assert cache.blocks <= capacity
        again, _ = cache.lookup(prompt)  # its head is the most recent: evicted last
        assert again == min(min(len(hashes), capacity) * block, most(len(prompt.ids), block))


@PROPS
@given(prompts=st.lists(ids, min_size=1, max_size=6))
def test_last_prompt_matches_the_previous_prompt_only(prompts):
    cache, previous = LastPrompt(), None
    for tokens in prompts:
        prompt = Prompt(tuple(tokens))
        cached, key = cache.lookup(prompt)
        expected = common_prefix(prompt.ids, previous) if previous is not None else 0
        assert cached == min(expected, most(len(prompt.ids)))
        cache.insert(key)
        previous = prompt.ids


message = st.fixed_dictionaries({"role": st.sampled_from(["system", "user", "assistant", "tool"]),
                                 "content": st.text(alphabet=st.sampled_from("ab c\n\t"), max_size=30)})


@PROPS
@given(messages=st.lists(message, min_size=1, max_size=6), cut=st.integers(0, 6))
def test_rendering_is_prefix_stable(messages, cut):
    earlier = Prompt.of(messages_text(messages[:cut])).ids
    assert Prompt.of(messages_text(messages)).ids[:len(earlier)] == earlier
    tools = [ToolSpec("f", {"type": "object"})]
    assert Prompt.of(messages_text(messages), tools).seed != Prompt.of(messages_text(messages)).seed


@E2E_PROPS
@given(length=st.integers(1, 90), split=st.integers(0, 90), extra=st.integers(0, 30))
@example(length=32, split=32, extra=0)  # the same prompt again: all but its last block
@example(length=40, split=20, extra=20)
def test_a_vllm_server_reports_the_block_aligned_common_prefix(length, split, extra):
    """Through HTTP: a prompt, then one that shares its first ``split`` tokens."""
    first = [f"t{i}" for i in range(length)]
    second = first[:split] + [f"u{i}" for i in range(extra)]

    async def run() -> int:
        b = SimulatedBackend("vllm", [MODEL], prefix_cache_tokens=4096)
        await b.start()
        try:
            for words in (first, second):
                usage = (await post(b, "/v1/completions", {"model": MODEL, "prompt": " ".join(words) or "x"}))[0]["usage"]
            return (usage["prompt_tokens_details"] or {}).get("cached_tokens", 0)
        finally:
            await b.stop()

    shared = common_prefix(first, second) if second else 0
    n = max(len(second), 1)
    expected = min(shared // BLOCK * BLOCK, most(n, BLOCK))
    assert asyncio.run(run()) == expected


def common_prefix(a: tuple | list, b: tuple | list) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


# ---------------------------------------------------------------- command line


def test_cli_passes_the_cache_flags_to_the_simulators(monkeypatch, tmp_path):
    from router import __main__ as cli
    import router.simulate

    seen: dict[str, Any] = {}

    async def fake(specs, **kw):
        seen.update(kw)

    monkeypatch.setattr(router.simulate, "run_simulators", fake)
    monkeypatch.setattr(cli.log, "configure", lambda *a, **k: None)  # leave the process's logging alone
    cfg = tmp_path / "litellm.yaml"
    cfg.write_text("model_list:\n  - model_name: m\n    litellm_params: {model: hosted_vllm/m, api_base: "
                   "\"http://127.0.0.1:1/v1\"}\n")
    args = cli.parser().parse_args(["simulate", "--config", str(cfg), "--prefix-cache-tokens", "65536",
                                    "--prefill-tokens-per-s", "4000", "--cache-block-tokens", "32"])
    assert cli.cmd_simulate(args) == 0
    assert seen["prefix_cache_tokens"] == 65536 and seen["prefill_tokens_per_s"] == 4000.0
    assert seen["cache_block_tokens"] == 32
    defaults = cli.parser().parse_args(["simulate"])
    assert (defaults.prefix_cache_tokens, defaults.prefill_tokens_per_s, defaults.cache_block_tokens) == (None, 0.0, 16)
    with pytest.raises(SystemExit):
        cli.parser().parse_args(["simulate", "--prefix-cache-tokens", "-1"])
