"""Load, loaded models and model metadata as the simulators expose them (vLLM, llama-server, Ollama)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from datetime import datetime, timezone

import aiohttp
import openai
import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from router.simulate import SimulatedBackend

MODEL = "llama3.1:8b"
MESSAGES = [{"role": "user", "content": "Tell me about routers"}]




async def raw(b: SimulatedBackend, path: str) -> tuple[int, dict, bytes]:
    async with aiohttp.ClientSession() as s, s.get(b.base_url + path) as r:
        return r.status, dict(r.headers), await r.read()


async def until(condition: Callable[[], bool], timeout: float = 2.0) -> None:
    """Poll ``condition`` until it holds; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.005)


def samples(text: bytes) -> dict[tuple[str, tuple], float]:
    """Prometheus text parsed by prometheus_client (a strict reader): (name, sorted labels) -> value."""
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text.decode()) for s in family.samples}


def chat_stream(client: openai.AsyncOpenAI) -> asyncio.Task:
    return asyncio.create_task(client.chat.completions.create(model=MODEL, messages=MESSAGES, stream=True))


# ---------------------------------------------------------------- vLLM


async def test_vllm_metrics_running_and_waiting_beyond_max_num_seqs(sim):
    b = await sim.backend("vllm", max_num_seqs=2, tokens_per_s=2)
    client = sim.openai(b)
    labels = (("engine", "0"), ("model_name", MODEL))
    status, headers, body = await raw(b, "/metrics")
    assert status == 200 and headers["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"
    assert b"# HELP vllm:num_requests_running Number of requests in model execution batches.\n" \
           b"# TYPE vllm:num_requests_running gauge\n" \
           b'vllm:num_requests_running{engine="0",model_name="llama3.1:8b"} 0.0\n' in body
    assert b"# HELP vllm:num_requests_waiting Number of requests waiting to be processed.\n" in body

    streams = [chat_stream(client) for _ in range(3)]
    await until(lambda: len(b.scheduler.running) == 2 and b.scheduler.waiting == 1)
    await until(lambda: sum(t.done() for t in streams) == 2)  # vLLM sends headers at once; the third waits
    m = samples((await raw(b, "/metrics"))[2])
    assert m[("vllm:num_requests_running", labels)] == 2.0
    assert m[("vllm:num_requests_waiting", labels)] == 1.0

    await next(t for t in streams if t.done()).result().close()  # one client leaves: the waiting one runs
    await until(lambda: b.scheduler.waiting == 0 and all(t.done() for t in streams))
    m = samples((await raw(b, "/metrics"))[2])
    assert (m[("vllm:num_requests_running", labels)], m[("vllm:num_requests_waiting", labels)]) == (2.0, 0.0)
    for t in streams:
        await t.result().close()
    await until(lambda: not b.scheduler.running)
    assert samples((await raw(b, "/metrics"))[2])[("vllm:num_requests_running", labels)] == 0.0


async def test_a_freed_seat_admits_exactly_one_waiting_request(sim):
    b = await sim.backend("vllm", max_num_seqs=1, tokens_per_s=2)
    client = sim.openai(b)
    streams = [chat_stream(client) for _ in range(3)]
    await until(lambda: len(b.scheduler.running) == 1 and b.scheduler.waiting == 2 and any(t.done() for t in streams))
    for expected_waiting in (1, 0):
        admitted = next(t for t in streams if t.done())
        streams.remove(admitted)
        await admitted.result().close()
        await until(lambda: b.scheduler.waiting == expected_waiting and any(t.done() for t in streams))
        assert len(b.scheduler.running) == 1
    await streams[0].result().close()


async def test_vllm_token_counters_and_unlimited_by_default(sim):
    b = await sim.backend("vllm")
    assert b.scheduler.capacity is None
    client = sim.openai(b)
    answers = await asyncio.gather(*(client.chat.completions.create(model=MODEL, messages=MESSAGES) for _ in range(5)))
    m = samples((await raw(b, "/metrics"))[2])
    labels = (("engine", "0"), ("model_name", MODEL))
    assert m[("vllm:generation_tokens_total", labels)] == sum(a.usage.completion_tokens for a in answers)
    assert m[("vllm:prompt_tokens_total", labels)] == sum(a.usage.prompt_tokens for a in answers)


async def test_vllm_client_leaving_the_queue_frees_its_place(sim):
    b = await sim.backend("vllm", max_num_seqs=1, tokens_per_s=2)
    first = chat_stream(sim.openai(b))
    await until(lambda: first.done())
    with pytest.raises(openai.APITimeoutError):  # waits for the seat, gives up
        await sim.openai(b, timeout=0.3).chat.completions.create(model=MODEL, messages=MESSAGES)
    await asyncio.wait_for(b.stats.disconnected.wait(), 1.0)
    assert b.scheduler.waiting == 0 and len(b.scheduler.running) == 1
    await first.result().close()
    await until(lambda: not b.scheduler.running)
    assert (await sim.openai(b).completions.create(model=MODEL, prompt="hi", max_tokens=1)).choices


async def test_vllm_max_model_len_from_model_meta(sim):
    b = await sim.backend("vllm", [MODEL, "other"], model_meta={"other": {"context_length": 32768}})
    cards = {c.id: c.model_extra["max_model_len"] for c in (await sim.openai(b).models.list()).data}
    assert cards == {MODEL: 8192, "other": 32768}


# ---------------------------------------------------------------- llama-server


async def test_llama_server_slots_and_metrics_while_busy(sim):
    b = await sim.backend("llama_cpp_native", slots=2, tokens_per_s=2)
    client = sim.openai(b)
    status, headers, body = await raw(b, "/metrics")
    assert status == 200 and headers["Content-Type"] == "text/plain; version=0.0.4"
    assert b"# HELP llamacpp:requests_processing Number of requests processing.\n" \
           b"# TYPE llamacpp:requests_processing gauge\nllamacpp:requests_processing 0\n" in body
    idle = orjson.loads((await raw(b, "/slots"))[2])
    assert idle == [{"id": i, "n_ctx": 8192, "speculative": False, "is_processing": False} for i in range(2)]

    streams = [chat_stream(client) for _ in range(3)]
    await until(lambda: len(b.scheduler.running) == 2 and b.scheduler.waiting == 1)
    slots = orjson.loads((await raw(b, "/slots"))[2])
    assert [s["is_processing"] for s in slots] == [True, True]
    assert {s["id_task"] for s in slots} == {0, 1} and slots[0]["params"]["stream"] is True
    assert slots[0]["next_token"][0]["has_next_token"] is True and slots[0]["next_token"][0]["n_remain"] == -1
    status, _, body = await raw(b, "/slots?fail_on_no_slot=1")
    assert (status, orjson.loads(body)) == (503, {"error": {"code": 503, "message": "no slot available",
                                                            "type": "unavailable_error"}})
    m = samples((await raw(b, "/metrics"))[2])
    assert (m[("llamacpp:requests_processing", ())], m[("llamacpp:requests_deferred", ())]) == (2.0, 1.0)

    await until(lambda: sum(t.done() for t in streams) == 2)  # headers come with the first chunk
    for t in [t for t in streams if t.done()]:
        await t.result().close()
    await until(lambda: all(t.done() for t in streams) and len(b.scheduler.running) == 1)
    slots = orjson.loads((await raw(b, "/slots"))[2])
    assert sorted(s["is_processing"] for s in slots) == [False, True]
    assert all("id_task" in s for s in slots)  # an idle slot still shows its last task
    assert (await raw(b, "/slots?fail_on_no_slot=1"))[0] == 200
    for t in streams:
        await t.result().close()


async def test_llama_server_defaults_props_and_token_metrics(sim):
    b = await sim.backend("llama_cpp_native", ["tiny.gguf"])
    assert len(orjson.loads((await raw(b, "/slots"))[2])) == 4  # --parallel auto = 4
    props = orjson.loads((await raw(b, "/props"))[2])
    assert props["total_slots"] == 4 and props["default_generation_settings"]["n_ctx"] == 8192
    resp = await sim.openai(b).chat.completions.create(model="tiny.gguf", messages=MESSAGES, max_tokens=5)
    body = (await raw(b, "/metrics"))[2]
    m = samples(body)
    assert m[("llamacpp:tokens_predicted_total", ())] == resp.usage.completion_tokens == 5
    assert m[("llamacpp:prompt_tokens_total", ())] == resp.usage.prompt_tokens
    assert b"# TYPE llamacpp:requests_deferred gauge\nllamacpp:requests_deferred 0\n" in body
    slot = orjson.loads((await raw(b, "/slots"))[2])[0]
    assert slot["is_processing"] is False and slot["params"]["n_predict"] == 5
    assert slot["next_token"][0]["n_decoded"] == 5


async def test_llama_server_model_meta_in_v1_models(sim):
    b = await sim.backend("llama_cpp_native", ["qwen2.5-1.5b-instruct-q4_k_m.gguf", "big"],
                          model_meta={"big": {"parameter_size": "13B", "context_length": 4096}})
    _, _, body = await raw(b, "/v1/models")
    metas = {d["id"]: d["meta"] for d in orjson.loads(body)["data"]}
    small, big = metas["qwen2.5-1.5b-instruct-q4_k_m.gguf"], metas["big"]
    assert set(small) == {"vocab_type", "n_vocab", "n_ctx_train", "n_embd", "n_params", "size"}
    assert 1.5e9 <= small["n_params"] < 1.55e9 and small["n_ctx_train"] == 131072
    assert 0.5 < small["size"] / small["n_params"] < 0.7  # Q4_K_M bytes per parameter
    assert (big["n_params"], big["n_ctx_train"]) == (13_000_000_000, 4096)


# ---------------------------------------------------------------- Ollama


async def test_ollama_tags_and_show_parameter_sizes(sim):
    names = ["llama3.1:8b", "qwen2.5:1.5b", "mixtral:8x7b", "nomic-embed-text", "custom:latest"]
    b = await sim.backend("ollama", names, model_meta={"custom": {"parameter_size": "13B", "context_length": 4096}})
    client = sim.ollama(b)
    tags = (await client.list()).models
    assert [m.details.parameter_size for m in tags] == ["8.0B", "1.5B", "56.0B", "7.2B", "13B"]
    assert all(m.details.quantization_level == "Q4_K_M" and m.details.format == "gguf" for m in tags)
    assert tags[0].details.family == "llama" and tags[0].details.families == ["llama"]
    assert 4.5e9 < tags[0].size < 5.0e9  # an 8B Q4_K_M file
    show = await client.show(MODEL)
    assert show.details.parameter_size == "8.0B"
    assert show.modelinfo["general.parameter_count"] == 8_032_000_000
    assert show.modelinfo["llama.context_length"] == 131072
    custom = await client.show("custom")
    assert custom.modelinfo["general.parameter_count"] == 13_000_000_000
    assert custom.modelinfo["custom.context_length"] == 4096


async def test_ollama_ps_lists_models_once_loaded(sim):
    b = await sim.backend("ollama", [MODEL, "qwen2.5:1.5b", "tiny:1b"], load_time=0.15,
                          model_meta={"tiny:1b": {"context_length": 2048}})
    client = sim.ollama(b)
    assert (await client.ps()).models == []
    load = asyncio.create_task(client.chat(model=MODEL, messages=[]))  # the "load" request
    await until(lambda: b.stats.open == 1)
    assert (await client.ps()).models == []  # still loading
    assert (await load).done_reason == "load"
    ps = (await client.ps()).models
    assert [m.model for m in ps] == [MODEL]
    assert ps[0].context_length == 4096 and ps[0].size_vram == ps[0].size > 0
    assert ps[0].details.parameter_size == "8.0B"
    assert 290 < (ps[0].expires_at - datetime.now(timezone.utc)).total_seconds() <= 300  # keep_alive 5m
    t0 = time.perf_counter()
    await client.generate(model=MODEL, prompt="warm now")  # loaded: no load delay
    assert time.perf_counter() - t0 < 0.15

    await client.generate(model="qwen2.5:1.5b", prompt="hi", keep_alive="1h", options={"num_ctx": 8192})
    await client.chat(model="tiny:1b", messages=MESSAGES, options={"num_ctx": 8192})
    ps = {m.model: m for m in (await client.ps()).models}
    assert list(ps) == ["qwen2.5:1.5b", "tiny:1b", MODEL]  # longest remaining keep-alive first
    assert ps["qwen2.5:1.5b"].context_length == 8192 and ps["tiny:1b"].context_length == 2048  # trained cap
    t0 = time.perf_counter()
    await client.generate(model="qwen2.5:1.5b", prompt="hi")  # default num_ctx: a reload
    assert time.perf_counter() - t0 >= 0.15
    assert {m.model: m.context_length for m in (await client.ps()).models}["qwen2.5:1.5b"] == 4096


async def test_ollama_openai_layer_loads_too(sim):
    b = await sim.backend("ollama")
    await sim.openai(b).chat.completions.create(model=MODEL, messages=MESSAGES)
    assert [m.model for m in (await sim.ollama(b).ps()).models] == [MODEL]


# ---------------------------------------------------------------- runtime speed changes


@pytest.mark.parametrize("kind", ["vllm", "llama_cpp_native", "ollama"])
async def test_speed_changes_apply_to_the_next_request(sim, kind):
    b = await sim.backend(kind)
    client = sim.openai(b)

    async def timed(**kw) -> float:
        t0 = time.perf_counter()
        resp = await client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=6, **kw)
        if kw.get("stream"):
            assert len([c async for c in resp if c.choices and c.choices[0].delta.content]) == 6
        return time.perf_counter() - t0

    assert await timed() < 0.1
    b.ttft = 0.1
    assert await timed() >= 0.1
    assert await timed(stream=True) >= 0.1
    b.ttft, b.tokens_per_s = 0.0, 50.0
    await raw(b, "/metrics")  # llama-server: a read empties the throughput bucket
    assert await timed(stream=True) >= 5 / 50
    if kind == "llama_cpp_native":  # the throughput gauge reflects the new speed
        rate = samples((await raw(b, "/metrics"))[2])[("llamacpp:predicted_tokens_seconds", ())]
        assert 35 < rate < 75
    b.tokens_per_s = 0.0
    assert await timed() < 0.1
