"""Fidelity tests of router.simulate against the official openai and ollama clients."""

from __future__ import annotations

import asyncio
import time

import aiohttp
import httpx
import ollama
import openai
import orjson
import pytest

from router.simulate import Faults, SimulatedBackend, generate, run_simulators

pytestmark = pytest.mark.asyncio

OPENAI_KINDS = ["vllm", "llama_cpp_python", "llama_cpp_native", "openai", "ollama"]
USAGE_KINDS = {"vllm", "llama_cpp_native", "openai", "ollama"}  # honour stream_options.include_usage
MODEL = "llama3.1:8b"
MESSAGES = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Tell me about routers"}]


DEFAULT_MODELS = [MODEL, "qwen2.5-coder:7b"]  # what the shared ``sim`` fixture starts backends with


async def raw(b: SimulatedBackend, method: str, path: str, **kw) -> tuple[int, dict, bytes]:
    async with aiohttp.ClientSession() as s, s.request(method, b.base_url + path, **kw) as r:
        return r.status, dict(r.headers), await r.read()


# ---------------------------------------------------------------- OpenAI-compatible kinds


@pytest.mark.parametrize("kind", OPENAI_KINDS)
async def test_chat_non_stream_is_deterministic_with_usage(sim, kind):
    b = await sim.backend(kind)
    client = sim.openai(b)
    first = await client.chat.completions.create(model=MODEL, messages=MESSAGES, seed=7)
    again = await client.chat.completions.create(model=MODEL, messages=MESSAGES, seed=7)
    other = await client.chat.completions.create(model=MODEL, messages=MESSAGES, seed=8)
    text = first.choices[0].message.content
    assert first.model == MODEL
    assert first.choices[0].finish_reason == "stop"
    assert 8 <= len(text.split()) <= 24
    assert first.usage.completion_tokens == len(text.split())
    assert first.usage.prompt_tokens == len("system: Be brief.\nuser: Tell me about routers".split())
    assert first.usage.total_tokens == first.usage.prompt_tokens + first.usage.completion_tokens
    assert again.choices[0].message.content == text
    assert other.choices[0].message.content != text
    assert b.stats.last_body["seed"] == 8
    assert b.stats.requests["/v1/chat/completions"] == 3


@pytest.mark.parametrize("kind", OPENAI_KINDS)
async def test_chat_stream_matches_non_stream(sim, kind):
    b = await sim.backend(kind)
    client = sim.openai(b)
    full = await client.chat.completions.create(model=MODEL, messages=MESSAGES)
    stream = await client.chat.completions.create(
        model=MODEL, messages=MESSAGES, stream=True, stream_options={"include_usage": True}
    )
    parts, finishes, usage = [], [], None
    async for chunk in stream:
        assert chunk.object == "chat.completion.chunk" and chunk.model == MODEL
        if chunk.usage is not None:
            usage = chunk.usage
            assert chunk.choices == []
        for choice in chunk.choices:
            parts.append(choice.delta.content or "")
            if choice.finish_reason:
                finishes.append(choice.finish_reason)
    text = "".join(parts)
    assert text == full.choices[0].message.content
    assert finishes == ["stop"]
    if kind in USAGE_KINDS:
        assert usage.completion_tokens == len(text.split())
        assert usage.prompt_tokens == full.usage.prompt_tokens
    else:  # llama-cpp-python ignores include_usage
        assert usage is None


@pytest.mark.parametrize("kind", OPENAI_KINDS)
async def test_max_tokens_gives_length(sim, kind):
    b = await sim.backend(kind)
    client = sim.openai(b)
    resp = await client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=3)
    assert resp.choices[0].finish_reason == "length"
    assert resp.usage.completion_tokens == 3 == len(resp.choices[0].message.content.split())
    comp = await client.completions.create(model=MODEL, prompt="Once upon a time", max_tokens=4)
    assert comp.choices[0].finish_reason == "length"
    assert len(comp.choices[0].text.split()) == 4 == comp.usage.completion_tokens


@pytest.mark.parametrize("kind", OPENAI_KINDS)
async def test_completions_stream(sim, kind):
    b = await sim.backend(kind)
    client = sim.openai(b)
    full = await client.completions.create(model=MODEL, prompt="Once upon a time")
    stream = await client.completions.create(model=MODEL, prompt="Once upon a time", stream=True)
    text, finish = "", None
    async for chunk in stream:
        for choice in chunk.choices:
            text += choice.text
            finish = choice.finish_reason or finish
    assert text == full.choices[0].text and finish == "stop"
    assert full.usage.prompt_tokens == 4


@pytest.mark.parametrize("kind", OPENAI_KINDS)
async def test_embeddings_and_models(sim, kind):
    b = await sim.backend(kind)
    client = sim.openai(b)
    emb = await client.embeddings.create(model=MODEL, input=["alpha", "beta"])
    assert [d.index for d in emb.data] == [0, 1]
    assert all(len(d.embedding) == 16 for d in emb.data)
    assert emb.data[0].embedding != emb.data[1].embedding
    single = await client.embeddings.create(model=MODEL, input="alpha")
    assert single.data[0].embedding == emb.data[0].embedding
    models = await client.models.list()
    assert [m.id for m in models.data] == [MODEL, "qwen2.5-coder:7b"]


async def test_per_kind_models_shapes(sim):
    v = await sim.backend("vllm")
    _, _, body = await raw(v, "GET", "/v1/models")
    card = orjson.loads(body)["data"][0]
    assert card["owned_by"] == "vllm" and card["root"] == MODEL and card["max_model_len"] == 8192
    assert card["parent"] is None and card["permission"][0]["object"] == "model_permission"
    n = await sim.backend("llama_cpp_native")
    _, _, body = await raw(n, "GET", "/v1/models")
    data = orjson.loads(body)
    assert data["data"][0]["owned_by"] == "llamacpp" and "n_ctx_train" in data["data"][0]["meta"]
    assert data["models"][0]["name"] == MODEL
    p = await sim.backend("llama_cpp_python")
    _, _, body = await raw(p, "GET", "/v1/models")
    assert orjson.loads(body)["data"][0] == {"id": MODEL, "object": "model", "owned_by": "me", "permissions": []}


async def test_health_per_kind(sim):
    v = await sim.backend("vllm")
    assert (await raw(v, "GET", "/health"))[0::2] == (200, b"")
    n = await sim.backend("llama_cpp_native")
    assert (await raw(n, "GET", "/health"))[0::2] == (200, b'{"status":"ok"}')
    p = await sim.backend("llama_cpp_python")
    assert (await raw(p, "GET", "/health"))[0::2] == (404, b'{"detail":"Not Found"}')
    o = await sim.backend("ollama")
    assert (await raw(o, "GET", "/"))[0::2] == (200, b"Ollama is running")
    assert (await raw(o, "HEAD", "/"))[0] == 200
    assert orjson.loads((await raw(o, "GET", "/api/version"))[2]) == {"version": "0.12.6"}


async def test_unknown_model_per_kind(sim):
    v = await sim.backend("vllm")
    with pytest.raises(openai.NotFoundError) as err:
        await sim.openai(v).chat.completions.create(model="nope", messages=MESSAGES)
    assert err.value.body["message"] == "The model `nope` does not exist."
    assert err.value.body["type"] == "NotFoundError" and err.value.body["code"] == 404
    legacy = await sim.backend("vllm", legacy_errors=True)
    status, _, body = await raw(legacy, "POST", "/v1/chat/completions", json={"model": "nope", "messages": MESSAGES})
    assert status == 404 and orjson.loads(body) == {
        "object": "error", "message": "The model `nope` does not exist.", "type": "NotFoundError", "param": None,
        "code": 404,
    }
    for kind in ("llama_cpp_python", "llama_cpp_native"):  # any name is served and echoed
        b = await sim.backend(kind)
        resp = await sim.openai(b).chat.completions.create(model="whatever-name", messages=MESSAGES)
        assert resp.model == "whatever-name"


async def test_sse_framing(sim):
    p = await sim.backend("llama_cpp_python")
    body = {"model": MODEL, "messages": MESSAGES, "stream": True}
    _, headers, data = await raw(p, "POST", "/v1/chat/completions", json=body)
    assert headers["Content-Type"].startswith("text/event-stream")
    assert data.endswith(b"data: [DONE]\n\n") and b"\r\n" not in data
    assert data.startswith(b'data: {"id": "chatcmpl-')  # json.dumps separators
    crlf = await sim.backend("llama_cpp_python", sse_newline="\r\n")  # pre-2024 llama-cpp-python
    _, _, data = await raw(crlf, "POST", "/v1/chat/completions", json=body)
    assert data.endswith(b"data: [DONE]\r\n\r\n")
    stream = await sim.openai(crlf).chat.completions.create(model=MODEL, messages=MESSAGES, stream=True)
    text = "".join([c.choices[0].delta.content or "" async for c in stream])
    assert text == (await sim.openai(p).chat.completions.create(model=MODEL, messages=MESSAGES)).choices[0].message.content
    v = await sim.backend("vllm")
    _, _, data = await raw(v, "POST", "/v1/chat/completions", json=body)
    events = data.split(b"\n\n")
    first = orjson.loads(events[0][6:])
    assert first["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert orjson.loads(events[-3][6:])["choices"][0]["finish_reason"] == "stop"  # rides on the last token


# ---------------------------------------------------------------- Ollama native API


async def test_ollama_chat_generate_and_stream(sim):
    b = await sim.backend("ollama")
    client = sim.ollama(b)
    resp = await client.chat(model=MODEL, messages=MESSAGES)
    assert resp.done and resp.done_reason == "stop" and resp.model == MODEL
    assert resp.eval_count == len(resp.message.content.split())
    assert resp.prompt_eval_count and resp.total_duration >= resp.load_duration
    parts = [part async for part in await client.chat(model=MODEL, messages=MESSAGES, stream=True)]
    assert "".join(p.message.content for p in parts) == resp.message.content
    assert [p.done for p in parts] == [False] * (len(parts) - 1) + [True]
    assert parts[-1].done_reason == "stop" and parts[-1].message.content == ""
    gen = await client.generate(model=MODEL, prompt="Why is the sky blue?", options={"num_predict": 5, "seed": 1})
    assert gen.done_reason == "length" and gen.eval_count == 5 and len(gen.response.split()) == 5
    assert gen.context
    again = await client.generate(model=MODEL, prompt="Why is the sky blue?", options={"num_predict": 5, "seed": 1})
    assert again.response == gen.response


async def test_ollama_stream_defaults_to_true_ndjson(sim):
    b = await sim.backend("ollama")
    status, headers, data = await raw(b, "POST", "/api/chat", json={"model": MODEL, "messages": MESSAGES})
    assert status == 200 and headers["Content-Type"] == "application/x-ndjson"
    lines = [orjson.loads(line) for line in data.splitlines()]
    assert len(lines) > 2 and lines[-1]["done"] is True and not lines[0]["done"]
    assert set(lines[-1]) >= {"done_reason", "total_duration", "load_duration", "prompt_eval_count",
                              "prompt_eval_duration", "eval_count", "eval_duration", "created_at"}
    assert lines[-1]["eval_count"] == len(lines) - 1


async def test_stop_sequences(sim):
    expected = generate(MODEL, "user: hi").text  # what the simulator answers without a stop
    stop_word = expected.split()[3]
    cut = expected[: expected.index(stop_word)]
    b = await sim.backend("ollama")
    resp = await sim.ollama(b).chat(model=MODEL, messages=[{"role": "user", "content": "hi"}], options={"stop": [stop_word]})
    assert (resp.done_reason, resp.message.content) == ("stop", cut)
    v = await sim.backend("vllm")
    body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "stop": [stop_word]}
    _, _, data = await raw(v, "POST", "/v1/chat/completions", json=body)
    choice = orjson.loads(data)["choices"][0]
    assert (choice["message"]["content"], choice["finish_reason"], choice["stop_reason"]) == (cut, "stop", stop_word)


async def test_ollama_embed_list_ps_show(sim):
    b = await sim.backend("ollama", loaded=(MODEL,))
    client = sim.ollama(b)
    emb = await client.embed(model=MODEL, input=["one", "two"])
    assert len(emb.embeddings) == 2 and len(emb.embeddings[0]) == 16
    single = await client.embed(model=MODEL, input="one")
    assert single.embeddings[0] == emb.embeddings[0]
    legacy = await client.embeddings(model=MODEL, prompt="one")
    assert len(legacy.embedding) == 16
    tags = await client.list()
    assert [m.model for m in tags.models] == [MODEL, "qwen2.5-coder:7b"]
    assert tags.models[0].details.parameter_size == "8.0B"  # Ollama's HumanNumber of 8030261248
    ps = await client.ps()
    assert [m.model for m in ps.models] == [MODEL]
    await client.chat(model="qwen2.5-coder:7b", messages=MESSAGES)  # first use loads it
    assert {m.model for m in (await client.ps()).models} == {MODEL, "qwen2.5-coder:7b"}
    await client.generate(model="qwen2.5-coder:7b", prompt="", keep_alive=0)  # unload
    assert [m.model for m in (await client.ps()).models] == [MODEL]
    show = await client.show(MODEL)
    assert show.details.family == "llama" and "completion" in show.capabilities


async def test_ollama_unknown_model_and_load_time(sim):
    b = await sim.backend("ollama", load_time=0.2)
    client = sim.ollama(b)
    with pytest.raises(ollama.ResponseError) as err:
        await client.chat(model="missing:1b", messages=MESSAGES)
    assert err.value.status_code == 404 and err.value.error == "model 'missing:1b' not found"
    status, _, body = await raw(b, "POST", "/api/embeddings", json={"model": "missing:1b", "prompt": "x"})
    assert (status, orjson.loads(body)) == (404, {"error": 'model "missing:1b" not found, try pulling it first'})
    t0 = time.perf_counter()
    cold = await client.chat(model=MODEL, messages=MESSAGES)
    cold_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    await client.chat(model=MODEL, messages=MESSAGES)
    assert cold_s >= 0.2 > time.perf_counter() - t0
    assert cold.load_duration >= 200_000_000


async def test_ollama_openai_layer_errors(sim):
    b = await sim.backend("ollama")
    with pytest.raises(openai.NotFoundError) as err:
        await sim.openai(b).chat.completions.create(model="missing", messages=MESSAGES)
    assert err.value.body == {"message": "model 'missing' not found", "type": "not_found_error", "param": None,
                              "code": None}


# ---------------------------------------------------------------- timing


async def test_ttft_and_token_rate(sim):
    b = await sim.backend("vllm", ttft=0.1, tokens_per_s=100)
    t0 = time.perf_counter()
    stream = await sim.openai(b).chat.completions.create(model=MODEL, messages=MESSAGES, stream=True, max_tokens=6)
    first_token_at = None
    async for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content and first_token_at is None:
            first_token_at = time.perf_counter() - t0
    total = time.perf_counter() - t0
    assert first_token_at >= 0.1
    assert total >= 0.1 + 5 / 100


# ---------------------------------------------------------------- faults


@pytest.mark.parametrize(
    ("kind", "shape"),
    [
        ("vllm", {"error": {"message": "simulated failure (HTTP 500)", "type": "InternalServerError", "param": None, "code": 500}}),
        ("llama_cpp_native", {"error": {"code": 500, "message": "simulated failure (HTTP 500)", "type": "server_error"}}),
        ("llama_cpp_python", {"error": {"message": "simulated failure (HTTP 500)", "type": "internal_server_error", "param": None, "code": None}}),
        ("ollama", {"error": "simulated failure (HTTP 500)"}),
    ],
)
async def test_status_fault_counts_down(sim, kind, shape):
    b = await sim.backend(kind)
    b.faults.status, b.faults.status_count = 500, 2
    path = "/api/tags" if kind == "ollama" else "/v1/models"
    for _ in range(2):
        status, _, body = await raw(b, "GET", path)
        assert status == 500 and orjson.loads(body) == shape
    assert (await raw(b, "GET", path))[0] == 200
    assert b.stats.requests[path] == 3


async def test_status_fault_with_clients_and_over_http(sim):
    b = await sim.backend("vllm")
    status, _, body = await raw(b, "POST", "/__sim/faults", json={"status": 503})  # always
    assert status == 200 and orjson.loads(body)["status"] == 503
    for _ in range(2):
        with pytest.raises(openai.InternalServerError):
            await sim.openai(b).chat.completions.create(model=MODEL, messages=MESSAGES)
    await raw(b, "POST", "/__sim/faults", json={"clear": True})
    assert b.faults == Faults()
    assert (await sim.openai(b).chat.completions.create(model=MODEL, messages=MESSAGES)).choices
    _, _, stats = await raw(b, "GET", "/__sim/stats")
    assert orjson.loads(stats)["requests"] == {"/v1/chat/completions": 3}
    assert (await raw(b, "POST", "/__sim/faults", json={"bogus": 1}))[0] == 400
    o = await sim.backend("ollama")
    o.faults.status, o.faults.status_count = 429, 1
    with pytest.raises(ollama.ResponseError) as err:
        await sim.ollama(o).chat(model=MODEL, messages=MESSAGES)
    assert err.value.status_code == 429


async def test_fault_paths_filter(sim):
    b = await sim.backend("llama_cpp_native")
    b.faults.status, b.faults.paths = 503, ("/v1/chat",)
    assert (await raw(b, "GET", "/health"))[0] == 200
    assert (await raw(b, "POST", "/v1/chat/completions", json={"messages": MESSAGES}))[0] == 503


async def test_hang_until_client_timeout(sim):
    b = await sim.backend("vllm")
    b.faults.hang = True
    with pytest.raises(openai.APITimeoutError):
        await sim.openai(b, timeout=0.3).chat.completions.create(model=MODEL, messages=MESSAGES)
    await asyncio.wait_for(b.stats.disconnected.wait(), 1.0)
    assert b.stats.disconnects == 1 and b.stats.open == 0
    b.faults.clear()
    assert (await sim.openai(b).chat.completions.create(model=MODEL, messages=MESSAGES)).choices


async def test_hang_released_when_cleared(sim):
    b = await sim.backend("ollama")
    b.faults.hang = True
    task = asyncio.create_task(sim.ollama(b).list())
    while b.stats.open == 0:
        await asyncio.sleep(0.01)
    assert not task.done()
    b.faults.hang = False
    assert [m.model for m in (await asyncio.wait_for(task, 1.0)).models] == [MODEL, "qwen2.5-coder:7b"]


@pytest.mark.parametrize("kind", ["vllm", "llama_cpp_native", "ollama"])
async def test_drop_after_chunks(sim, kind):
    b = await sim.backend(kind)
    b.faults.drop_after_chunks, b.faults.drop_count = 3, 1
    stream = await sim.openai(b).chat.completions.create(model=MODEL, messages=MESSAGES, stream=True)
    got = []
    with pytest.raises(openai.APIConnectionError):
        async for chunk in stream:
            got.append(chunk)
    assert len(got) == 3
    assert b.stats.drops == 1 and b.stats.disconnects == 0
    stream = await sim.openai(b).chat.completions.create(model=MODEL, messages=MESSAGES, stream=True)
    assert len([c async for c in stream]) > 3  # drop_count used up


async def test_drop_on_ollama_ndjson(sim):
    b = await sim.backend("ollama")
    b.faults.drop_after_chunks = 2
    parts = []
    with pytest.raises(Exception):
        async for part in await sim.ollama(b).chat(model=MODEL, messages=MESSAGES, stream=True):
            parts.append(part)
    assert len(parts) == 2 and not parts[-1].done


async def test_first_byte_delay(sim):
    b = await sim.backend("llama_cpp_python")
    b.faults.first_byte_delay = 0.2
    t0 = time.perf_counter()
    await sim.openai(b).models.list()
    assert time.perf_counter() - t0 >= 0.2


@pytest.mark.parametrize("kind", ["vllm", "ollama"])
async def test_client_disconnect_mid_stream_is_observed(sim, kind):
    b = await sim.backend(kind, tokens_per_s=5)
    stream = await sim.openai(b).chat.completions.create(model=MODEL, messages=MESSAGES, stream=True)
    got = 0
    async for _chunk in stream:
        got += 1
        if got == 2:
            break
    assert b.stats.open == 1 and not b.stats.disconnected.is_set()
    t0 = time.perf_counter()
    await stream.close()
    await asyncio.wait_for(b.stats.disconnected.wait(), 1.0)
    assert time.perf_counter() - t0 < 1.0
    assert b.stats.disconnects == 1 and b.stats.open == 0


async def test_disconnect_during_non_stream_wait(sim):
    b = await sim.backend("ollama", ttft=5.0)
    with pytest.raises(httpx.ReadTimeout):
        await sim.ollama(b, timeout=0.2).chat(model=MODEL, messages=MESSAGES)
    await asyncio.wait_for(b.stats.disconnected.wait(), 1.0)
    assert b.stats.open == 0


async def test_run_simulators_serves_until_cancelled():
    ready = asyncio.Event()
    specs = [("vllm", "127.0.0.1", 0, ["a"]), ("ollama", "127.0.0.1", 0, ["b:1b"])]
    backends: list[SimulatedBackend] = []
    task = asyncio.create_task(run_simulators(specs, ready=ready, started=backends, tokens_per_s=0))
    await asyncio.wait_for(ready.wait(), 2)
    assert [b.kind for b in backends] == ["vllm", "ollama"]
    assert (await raw(backends[0], "GET", "/health"))[0] == 200
    assert (await raw(backends[1], "GET", "/api/tags"))[0] == 200
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
