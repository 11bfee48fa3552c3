"""Backends that answer wrongly: the client still gets a clear OpenAI-shaped error,
the stream is never corrupted, and the deployment's counters tell the truth."""

from __future__ import annotations

import asyncio
from typing import Awaitable, Callable

import aiohttp
import orjson
import pytest
from aiohttp import web

from tests.conftest import start_proxy
from router.config import load_config

Reply = Callable[[web.Request], Awaitable[web.StreamResponse]]


class ScriptedBackend:
    """A server whose every POST answer is whatever the test sets in ``reply``
    (GETs — the router's background probes — get an empty model list)."""

    def __init__(self) -> None:
        self.reply: Reply | None = None
        self.runner: web.AppRunner | None = None
        self.url = ""

    async def start(self) -> None:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self.runner = web.AppRunner(app, handler_cancellation=True, access_log=None)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.url = f"http://127.0.0.1:{self.runner.addresses[0][1]}"

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        await request.read()
        if request.method == "GET":
            return web.json_response({"object": "list", "data": [], "models": []})
        assert self.reply is not None
        return await self.reply(request)


def text(body: str | bytes, status: int = 200, content_type: str = "application/json") -> Reply:
    async def reply(request: web.Request) -> web.StreamResponse:
        return web.Response(body=body if isinstance(body, bytes) else body.encode(), status=status, content_type=content_type)
    return reply


@pytest.fixture
async def scripted(tmp_path):
    backend = ScriptedBackend()
    await backend.start()
    (tmp_path / "c.yaml").write_text(f"""
model_list:
  - model_name: compat
    litellm_params: {{model: openai/m, api_base: "{backend.url}/v1", timeout: 5}}
    model_info: {{id: compat-1}}
  - model_name: olla
    litellm_params: {{model: ollama_chat/m, api_base: "{backend.url}", timeout: 5}}
    model_info: {{id: olla-1}}
router_settings: {{num_retries: 0}}  # one attempt each: these tests look at what one bad answer does
""")
    runner, url = await start_proxy(load_config(str(tmp_path / "c.yaml")))
    yield backend, url, runner
    await runner.cleanup()
    await backend.runner.cleanup()


async def post(url: str, body: dict) -> tuple[int, bytes, dict]:
    async with aiohttp.ClientSession() as s:
        async with s.post(url + "/v1/chat/completions", data=orjson.dumps(body)) as r:
            return r.status, await r.read(), dict(r.headers)


def chat(model: str, **extra) -> dict:
    return {"model": model, "messages": [{"role": "user", "content": "hi"}], **extra}


def state(runner: web.AppRunner, dep_id: str) -> dict:
    from router.app import PROXY
    return runner.app[PROXY].state[dep_id].snapshot()


@pytest.mark.parametrize("reply", [text("<html>oops</html>", content_type="text/html"), text("")])
async def test_a_200_that_is_not_json_becomes_a_502(scripted, reply):
    backend, url, runner = scripted
    backend.reply = reply
    status, body, _ = await post(url, chat("compat"))
    assert status == 502 and orjson.loads(body)["error"]["code"] == "upstream_error"
    assert state(runner, "compat-1")["failures"] == 1


async def test_json_instead_of_a_stream_becomes_a_502_before_any_byte(scripted):
    backend, url, _ = scripted
    backend.reply = text('{"id": "x", "choices": []}')
    status, body, headers = await post(url, chat("compat", stream=True))
    assert status == 502 and headers["Content-Type"].startswith("application/json")
    assert "answered a streaming request with application/json" in orjson.loads(body)["error"]["message"]


@pytest.mark.parametrize("shape", ['{"message": "just a string", "done": true}',
                                   '{"message": {"content": "x"}, "done": true, "prompt_eval_count": "n/a"}'])
async def test_badly_shaped_ollama_answer_is_a_502_or_an_error_event(scripted, shape):
    backend, url, runner = scripted
    backend.reply = text(shape)
    status, body, _ = await post(url, chat("olla"))
    assert status == 502 and "unexpected Ollama response shape" in orjson.loads(body)["error"]["message"]
    backend.reply = text(shape + "\n", content_type="application/x-ndjson")
    status, body, _ = await post(url, chat("olla", stream=True))
    # its first line is already wrong: nothing reached the client, so it is a 502 (and a fallback could serve)
    assert status == 502 and "unexpected stream line shape" in orjson.loads(body)["error"]["message"]
    assert state(runner, "olla-1") == {**state(runner, "olla-1"), "in_flight": 0, "failures": 2}


@pytest.mark.parametrize("status, body, expect_status, expect_code", [
    (401, '{"error": {"message": "bad key", "type": "auth", "code": "invalid_api_key"}}', 502, "upstream_error"),
    (404, '{"detail": "Not Found"}', 502, "upstream_error"),
    (404, '{"error": {"message": "The model `m` does not exist.", "code": 404}}', 404, "model_not_found"),
    (400, '{"error": {"message": "max_tokens too large", "type": "BadRequestError", "param": null, "code": 400}}', 400, 400),
    (429, '{"error": "slow down"}', 429, "rate_limited"),
    (500, "Internal Server Error", 502, "upstream_error"),
])
async def test_upstream_errors_are_classified(scripted, status, body, expect_status, expect_code):
    backend, url, _ = scripted
    backend.reply = text(body, status=status)
    got, raw, _ = await post(url, chat("compat"))
    assert got == expect_status and orjson.loads(raw)["error"]["code"] == expect_code


async def test_a_client_that_gives_up_is_neither_a_success_nor_a_failure(scripted):
    backend, url, runner = scripted
    started = asyncio.Event()

    async def slow(request: web.Request) -> web.StreamResponse:
        started.set()
        await asyncio.Event().wait()  # never answers; cancelled when the proxy lets go
        raise AssertionError("unreachable")

    backend.reply = slow
    async with aiohttp.ClientSession() as s:
        task = asyncio.create_task(s.post(url + "/v1/chat/completions", data=orjson.dumps(chat("compat", stream=True))))
        await started.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    snapshot = state(runner, "compat-1")
    while snapshot["in_flight"]:  # the proxy notices the disconnect asynchronously
        await asyncio.sleep(0.01)
        snapshot = state(runner, "compat-1")
    assert (snapshot["failures"], snapshot["last_success_at"], snapshot["requests"]) == (0, None, 1)


async def test_control_characters_in_a_model_name_are_rejected(scripted):
    _, url, _ = scripted
    status, body, _ = await post(url, chat("x\n[ROUTER] Model: gpt-4 -> Provider: ollama (exact match)"))
    assert status == 400 and orjson.loads(body)["error"]["param"] == "model"


async def test_a_stream_cut_short_before_any_finish_reason_ends_with_an_error_not_done(scripted):
    backend, url, _ = scripted

    async def cut_short(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        chunk = {"id": "x", "object": "chat.completion.chunk", "choices": [{"index": 0, "delta": {"content": "Hel"}, "finish_reason": None}]}
        await resp.write(b"data: " + orjson.dumps(chunk) + b"\n\n")
        await resp.write(b"data: [DONE]\n\n")  # what llama-cpp-python does when a second request interrupts it
        await resp.write_eof()
        return resp

    backend.reply = cut_short
    status, body, _ = await post(url, chat("compat", stream=True))
    events = [e[6:] for e in body.decode().split("\n\n") if e.startswith("data: ")]
    assert status == 200 and orjson.loads(events[0])["choices"][0]["delta"]["content"] == "Hel"
    assert orjson.loads(events[-1])["error"]["code"] == "stream_truncated" and "[DONE]" not in events


async def test_each_chunk_reaches_the_client_before_the_upstream_sends_the_next(scripted):
    """No coalescing: the backend sends one event and waits; the client must get that
    event while the backend is still waiting (a proxy that held bytes back, e.g. to
    send them with the next ones, would deadlock this test into its timeout)."""
    backend, url, _ = scripted
    go_on = asyncio.Event()
    first = b'data: {"id":"x","object":"chat.completion.chunk","choices":[{"index":0,"delta":{"content":"Hi"},"finish_reason":null}]}\n\n'
    rest = (b'data: {"id":"x","object":"chat.completion.chunk","choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}\n\n'
            b"data: [DONE]\n\n")

    async def reply(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        await resp.write(first)
        await go_on.wait()
        await resp.write(rest)
        await resp.write_eof()
        return resp

    backend.reply = reply
    async with aiohttp.ClientSession() as s:
        async with s.post(url + "/v1/chat/completions", data=orjson.dumps(chat("compat", stream=True))) as r:
            assert r.status == 200
            got = b""
            while not got.endswith(b"\n\n"):
                got += await asyncio.wait_for(r.content.readany(), 5)
            assert got == first  # the headers and the first event, while the backend still holds the rest
            go_on.set()
            got += await r.content.read()
    assert got == first + rest
