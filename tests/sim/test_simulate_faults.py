"""Fault hooks of router.simulate for the router's reliability tests.

Retry-After on injected statuses, stream stalls (``hang_after_chunks``), garbage
answers, count-limited hangs, and a killed/restarted backend (pause/resume listening).
"""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections.abc import Callable

import aiohttp
import openai
import orjson
import pytest

from router.simulate import Faults, SimulatedBackend, generate
from router.simulate.core import messages_text

MODEL = "llama3.1:8b"
MESSAGES = [{"role": "user", "content": "Tell me about routers"}]
#: What a reliability test sets so the router's background probes are not affected.
CHAT_PATHS = ("/v1/chat/completions", "/api/chat")
PROBES = {
    "vllm": ["/v1/models", "/health", "/metrics"],
    "llama_cpp_native": ["/v1/models", "/health", "/slots", "/metrics"],
    "ollama": ["/api/tags", "/api/ps", "/v1/models"],
}




async def raw(b: SimulatedBackend, method: str, path: str, **kw) -> tuple[int, dict, bytes]:
    async with aiohttp.ClientSession() as s, s.request(method, b.base_url + path, **kw) as r:
        return r.status, dict(r.headers), await r.read()


async def until(condition: Callable[[], bool], timeout: float = 2.0) -> None:
    """Poll ``condition`` until it holds; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.005)


async def probes_ok(b: SimulatedBackend) -> None:
    for path in PROBES[b.kind]:
        status, _, _ = await raw(b, "GET", path)
        assert status == 200, path


#: The (deterministic) answer to MESSAGES.
TEXT = generate(MODEL, messages_text(MESSAGES)).text


# ---------------------------------------------------------------- retry_after


async def test_retry_after_header_on_injected_status(sim):
    b = await sim.backend("vllm")
    b.faults.status, b.faults.status_count, b.faults.retry_after = 429, 1, 1.2
    b.faults.paths = CHAT_PATHS
    await probes_ok(b)  # GET probes neither fail nor consume the count
    with pytest.raises(openai.RateLimitError) as err:
        await sim.openai(b).chat.completions.create(model=MODEL, messages=MESSAGES)
    assert err.value.response.headers["retry-after"] == "2"  # whole seconds, rounded up
    assert err.value.body["type"] == "TooManyRequestsError"  # the server's own error shape
    assert (await sim.openai(b).chat.completions.create(model=MODEL, messages=MESSAGES)).choices

    o = await sim.backend("ollama")  # over HTTP, on Ollama's native API, any status
    status, _, body = await raw(o, "POST", "/__sim/faults",
                                json={"status": 503, "retry_after": 3, "paths": list(CHAT_PATHS)})
    assert status == 200 and orjson.loads(body)["retry_after"] == 3
    status, headers, body = await raw(o, "POST", "/api/chat", json={"model": MODEL, "messages": MESSAGES})
    assert (status, headers["Retry-After"], orjson.loads(body)) == (503, "3", {"error": "simulated failure (HTTP 503)"})
    await raw(o, "POST", "/__sim/faults", json={"retry_after": None})
    status, headers, _ = await raw(o, "POST", "/api/chat", json={"model": MODEL, "messages": MESSAGES})
    assert status == 503 and "Retry-After" not in headers


# ---------------------------------------------------------------- hang_after_chunks


@pytest.mark.parametrize("kind", ["vllm", "ollama"])
async def test_hang_after_chunks_until_client_timeout(sim, kind):
    b = await sim.backend(kind)
    b.faults.hang_after_chunks, b.faults.paths = 3, CHAT_PATHS
    client = sim.openai(b, timeout=0.25)
    full = await client.chat.completions.create(model=MODEL, messages=MESSAGES)  # non-streaming: unaffected
    assert full.choices[0].message.content == TEXT
    stream = await client.chat.completions.create(model=MODEL, messages=MESSAGES, stream=True)
    got = []
    with pytest.raises(openai.APITimeoutError):
        async for chunk in stream:
            got.append(chunk)
    assert len(got) == 3 and all(c.choices[0].finish_reason is None for c in got)
    await asyncio.wait_for(b.stats.disconnected.wait(), 1.0)
    assert (b.stats.hangs, b.stats.disconnects, b.stats.drops, b.stats.open) == (1, 1, 0, 0)


@pytest.mark.parametrize("kind", ["llama_cpp_native", "ollama"])
async def test_hang_after_chunks_resumes_when_cleared(sim, kind):
    b = await sim.backend(kind)
    b.faults.update({"hang_after_chunks": 2, "hang_after_count": 1, "paths": list(CHAT_PATHS)})
    client = sim.openai(b)
    stream = await client.chat.completions.create(model=MODEL, messages=MESSAGES, stream=True)
    chunks = aiter(stream)
    got = [await anext(chunks), await anext(chunks)]
    nxt = asyncio.create_task(anext(chunks))
    await until(lambda: b.stats.hangs == 1)
    await probes_ok(b)  # the stall holds only the stream, not the probes
    other = await client.chat.completions.create(model=MODEL, messages=MESSAGES, stream=True)
    assert "".join([c.choices[0].delta.content or "" async for c in other if c.choices]) == TEXT
    assert not nxt.done() and b.stats.open == 1
    b.faults.clear()
    got.append(await asyncio.wait_for(nxt, 1.0))
    got += [c async for c in chunks]
    assert "".join(c.choices[0].delta.content or "" for c in got if c.choices) == TEXT
    assert b.stats.hangs == 1 and b.stats.disconnects == 0


# ---------------------------------------------------------------- garbage


async def test_garbage_answers_break_the_openai_client(sim):
    b = await sim.backend("vllm")
    b.faults.garbage, b.faults.garbage_count, b.faults.paths = True, 4, CHAT_PATHS
    await probes_ok(b)
    status, headers, body = await raw(b, "POST", "/v1/chat/completions", json={"model": MODEL, "messages": MESSAGES})
    assert (status, headers["Content-Type"], body) == (200, "text/html", b"<html><body>502 Bad Gateway</body></html>")
    strict = sim.openai(b, _strict_response_validation=True)
    with pytest.raises(openai.APIResponseValidationError):
        await strict.chat.completions.create(model=MODEL, messages=MESSAGES)
    lenient = await sim.openai(b).chat.completions.create(model=MODEL, messages=MESSAGES)
    assert lenient == "<html><body>502 Bad Gateway</body></html>"  # the lenient client hands back the text
    stream = await strict.chat.completions.create(model=MODEL, messages=MESSAGES, stream=True)
    assert stream.response.headers["content-type"] == "text/event-stream"
    with pytest.raises(json.JSONDecodeError):
        async for _chunk in stream:
            pass
    assert b.stats.garbage == 4
    assert (await strict.chat.completions.create(model=MODEL, messages=MESSAGES)).choices  # count used up


@pytest.mark.parametrize("stream", [False, True])
async def test_garbage_on_ollama_native(sim, stream):
    b = await sim.backend("ollama")
    await raw(b, "POST", "/__sim/faults", json={"garbage": True, "garbage_count": 1})
    with pytest.raises(json.JSONDecodeError):
        answer = await sim.ollama(b).chat(model=MODEL, messages=MESSAGES, stream=stream)
        if stream:
            async for _part in answer:
                pass
    assert (await sim.ollama(b).chat(model=MODEL, messages=MESSAGES)).message.content == TEXT


# ---------------------------------------------------------------- hang_count


async def test_hang_count_holds_only_the_next_request(sim):
    b = await sim.backend("llama_cpp_native")
    b.faults.hang, b.faults.hang_count, b.faults.paths = True, 1, CHAT_PATHS
    client = sim.openai(b)
    first = asyncio.create_task(client.chat.completions.create(model=MODEL, messages=MESSAGES))
    await until(lambda: b.stats.hangs == 1)
    await probes_ok(b)
    second = await client.chat.completions.create(model=MODEL, messages=MESSAGES)
    assert second.choices[0].message.content == TEXT
    assert not first.done() and b.faults.as_dict()["hang_count"] == 0
    b.faults.clear()  # releases the held request, which is then answered normally
    assert (await asyncio.wait_for(first, 1.0)).choices[0].message.content == TEXT
    assert b.stats.hangs == 1 and b.stats.disconnects == 0


async def test_new_faults_over_http_and_clear(sim):
    b = await sim.backend("vllm")
    new = {"retry_after": 2.5, "hang": True, "hang_count": 2, "hang_after_chunks": 4, "hang_after_count": 1,
           "garbage": True, "garbage_count": 3, "paths": list(CHAT_PATHS)}
    status, _, body = await raw(b, "POST", "/__sim/faults", json=new)
    assert status == 200 and orjson.loads(body).items() >= new.items()
    assert b.faults.paths == CHAT_PATHS
    await probes_ok(b)
    await raw(b, "POST", "/__sim/faults", json={"clear": True})
    assert b.faults == Faults()
    stats = orjson.loads((await raw(b, "GET", "/__sim/stats"))[2])
    assert {k: stats[k] for k in ("hangs", "garbage", "cut")} == {"hangs": 0, "garbage": 0, "cut": 0}


# ---------------------------------------------------------------- pause / resume listening


def refused(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1.0):
            return False
    except ConnectionRefusedError:
        return True


async def test_pause_and_resume_listening_on_the_same_port(sim):
    b = await sim.backend("vllm", tokens_per_s=50)
    port = b.port
    client = sim.openai(b)
    assert (await client.models.list()).data  # leaves a keep-alive connection in the client's pool
    stream = await client.chat.completions.create(model=MODEL, messages=MESSAGES, stream=True)
    chunks = aiter(stream)
    await anext(chunks)
    assert b.stats.open == 1

    await b.pause_listening()  # a killed server: the stream is cut, the pooled connection too
    assert not b.listening and b.stats.open == 0
    assert (b.stats.cut, b.stats.disconnects) == (1, 0)
    with pytest.raises(openai.APIConnectionError):
        async for _chunk in chunks:
            pass
    with pytest.raises(openai.APIConnectionError) as err:
        await client.models.list()
    assert not isinstance(err.value, openai.APITimeoutError)
    assert await asyncio.to_thread(refused, port)

    await b.resume_listening()  # restarted: same port, same client, served again
    assert b.listening and b.port == port and b.base_url.endswith(f":{port}")
    full = await client.chat.completions.create(model=MODEL, messages=MESSAGES)
    assert full.choices[0].message.content == TEXT
    assert b.stats.disconnects == 0
