"""The simulator kind ``anthropic``: the hosted Messages API as the official ``anthropic``
client sees it (whole and streamed answers, tool use, models, token counting), its key
and version checks and its error bodies; then the router's ``anthropic`` adapter driven
against it, so the adapter's requests are ones the API takes and its translations read
what the API sends."""

from __future__ import annotations

import asyncio
import re
from typing import Any

import aiohttp
import anthropic
import orjson
import pytest
from openai.types.chat import ChatCompletion, ChatCompletionChunk

from router.backends.base import auth_headers
from router.domain import Deployment
from router.providers import ADAPTERS
from router.providers.base import Context
from router.simulate import SimulatedBackend, run_simulators
from router.simulate.tools import arguments_for

MODEL = "claude-sonnet-4-5"
DEFAULT_MODELS = [MODEL]
KEY = "sk-ant-test-0123"
HELLO = [{"role": "user", "content": "Hello"}]
WEATHER_SCHEMA = {"type": "object", "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
                  "required": ["city", "days"]}
TOOLS = [{"name": "get_weather", "description": "Weather for a city", "input_schema": WEATHER_SCHEMA},
         {"name": "get_time", "input_schema": {"type": "object", "properties": {"zone": {"type": "string"}},
                                               "required": ["zone"]}}]
WEATHER_ARGS = arguments_for(WEATHER_SCHEMA, f"{MODEL}\x00get_weather")
HEADERS = {"x-api-key": KEY, "anthropic-version": "2023-06-01"}


async def api(sim, **kw: Any) -> SimulatedBackend:
    return await sim.backend("anthropic", api_key=KEY, **kw)


def client(sim, b: SimulatedBackend, key: str = KEY) -> anthropic.AsyncAnthropic:
    c = anthropic.AsyncAnthropic(base_url=b.base_url, api_key=key, max_retries=0)
    sim.clients.append(c)
    return c


def lower(headers: Any) -> dict[str, str]:
    """Headers by lower-case name."""
    return {k.lower(): v for k, v in headers.items()}


async def raw(b: SimulatedBackend, method: str, path: str, **kw: Any) -> tuple[int, dict[str, str], bytes]:
    async with aiohttp.ClientSession() as s, s.request(method, b.base_url + path, **kw) as r:
        return r.status, lower(r.headers), await r.read()


def event_names(body: bytes) -> list[str]:
    return re.findall(r"^event: (\w+)$", body.decode(), re.M)


# ---------------------------------------------------------------------------
# The official client
# ---------------------------------------------------------------------------


async def test_a_message_whole_and_streamed_with_the_key(sim):
    b = await api(sim)
    c = client(sim, b)
    whole = await c.messages.create(model=MODEL, max_tokens=100, system="Be brief.", messages=HELLO)
    async with c.messages.stream(model=MODEL, max_tokens=100, system="Be brief.", messages=HELLO) as stream:
        streamed = await stream.get_final_message()
    assert whole.content[0].text == streamed.content[0].text and whole.content[0].text
    assert (whole.stop_reason, streamed.stop_reason) == ("end_turn", "end_turn")
    assert whole.usage.input_tokens == streamed.usage.input_tokens > 0
    assert whole.usage.output_tokens == streamed.usage.output_tokens == len(whole.content[0].text.split())
    assert re.fullmatch(r"msg_01[A-Za-z0-9]{22}", whole.id) and whole.model == MODEL
    assert b.stats.requests["/v1/messages"] == 2
    sent = lower(b.stats.last_headers)
    assert sent["authorization"] == f"Bearer {KEY}" and sent["anthropic-version"]  # the SDK's way, its version
    assert b.stats.last_body["system"] == "Be brief."


async def test_the_stream_is_the_hosted_apis_event_sequence(sim):
    b = await api(sim)
    status, headers, body = await raw(b, "POST", "/v1/messages", headers=HEADERS,
                                      json={"model": MODEL, "max_tokens": 3, "messages": HELLO, "stream": True})
    assert status == 200 and headers["content-type"] == "text/event-stream; charset=utf-8"
    assert event_names(body) == ["message_start", "content_block_start", "ping", "content_block_delta",
                                 "content_block_delta", "content_block_delta", "content_block_stop", "message_delta",
                                 "message_stop"]
    assert b'event: ping\ndata: {"type": "ping"}\n\n' in body
    start = orjson.loads(body.split(b"\n")[1][6:])
    assert start["message"]["usage"]["output_tokens"] == 1 and start["message"]["content"] == []
    delta = orjson.loads(body.split(b"event: message_delta\ndata: ")[1].split(b"\n")[0])
    assert delta["delta"]["stop_reason"] == "max_tokens" and delta["usage"]["output_tokens"] == 3


async def test_tool_use_whole_streamed_and_the_answer_after_the_result(sim):
    b = await api(sim)
    c = client(sim, b)
    ask = [{"role": "user", "content": "Weather in Paris?"}]
    async with c.messages.stream(model=MODEL, max_tokens=100, messages=ask, tools=TOOLS) as stream:
        first = await stream.get_final_message()
    (use,) = first.content
    assert (first.stop_reason, use.type, use.name, use.input) == ("tool_use", "tool_use", "get_weather", WEATHER_ARGS)
    assert re.fullmatch(r"toolu_01[A-Za-z0-9]{22}", use.id)
    named = await c.messages.create(model=MODEL, max_tokens=100, messages=ask, tools=TOOLS,
                                    tool_choice={"type": "tool", "name": "get_time"})
    assert named.content[0].name == "get_time" and named.stop_reason == "tool_use"
    answer = await c.messages.create(model=MODEL, max_tokens=100, tools=TOOLS, messages=[
        *ask, {"role": "assistant", "content": [use.model_dump(include={"type", "id", "name", "input"})]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": use.id, "content": "Sunny, 24 C"}]}])
    assert answer.stop_reason == "end_turn" and answer.content[0].text.startswith("I got the tool result: Sunny, 24 C")


async def test_a_stop_sequence_says_which(sim):
    b = await api(sim)
    text = (await client(sim, b).messages.create(model=MODEL, max_tokens=100, messages=HELLO)).content[0].text
    word = text.split()[2]
    stopped = await client(sim, b).messages.create(model=MODEL, max_tokens=100, messages=HELLO, stop_sequences=[word])
    assert (stopped.stop_reason, stopped.stop_sequence) == ("stop_sequence", word)
    assert word not in stopped.content[0].text.split()


async def test_models_and_token_counting(sim):
    b = await api(sim, models=[MODEL, "claude-haiku-4-5"])
    c = client(sim, b)
    page = await c.models.list()
    assert [m.id for m in page.data] == [MODEL, "claude-haiku-4-5"] and page.has_more is False
    assert (await c.models.retrieve("claude-haiku-4-5")).type == "model"
    counted = await c.messages.count_tokens(model=MODEL, system="Be brief.", messages=HELLO)
    whole = await c.messages.create(model=MODEL, max_tokens=5, system="Be brief.", messages=HELLO)
    assert counted.input_tokens == whole.usage.input_tokens


async def test_llm_router_simulate_serves_the_kind_of_an_anthropic_api_base():
    ready, backends = asyncio.Event(), []
    task = asyncio.create_task(run_simulators([("anthropic", "127.0.0.1", 0, [MODEL])], ready=ready, started=backends))
    try:
        await asyncio.wait_for(ready.wait(), 2)
        c = anthropic.AsyncAnthropic(base_url=backends[0].base_url, api_key="any", max_retries=0)
        assert (await c.models.list()).data[0].id == MODEL  # no key configured: any key is taken
        await c.close()
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


# ---------------------------------------------------------------------------
# Keys, versions, errors
# ---------------------------------------------------------------------------


async def test_a_wrong_or_missing_key_is_a_401_authentication_error(sim):
    b = await api(sim)
    with pytest.raises(anthropic.AuthenticationError) as err:
        await client(sim, b, key="sk-ant-wrong").messages.create(model=MODEL, max_tokens=5, messages=HELLO)
    assert err.value.body["error"] == {"type": "authentication_error", "message": "invalid x-api-key"}
    status, headers, body = await raw(b, "POST", "/v1/messages", headers={"anthropic-version": "2023-06-01"},
                                      json={"model": MODEL, "max_tokens": 5, "messages": HELLO})
    data = orjson.loads(body)
    assert status == 401 and data["error"] == {"type": "authentication_error", "message": "x-api-key header is required"}
    assert re.fullmatch(r"req_01[A-Za-z0-9]{22}", data["request_id"]) and headers["request-id"] == data["request_id"]


async def test_without_a_configured_key_any_key_is_taken(sim):
    b = await sim.backend("anthropic")
    assert (await client(sim, b, key="anything").messages.create(model=MODEL, max_tokens=5, messages=HELLO)).content


async def test_the_api_version_header_is_required(sim):
    b = await api(sim)
    status, _, body = await raw(b, "POST", "/v1/messages", headers={"x-api-key": KEY},
                                json={"model": MODEL, "max_tokens": 5, "messages": HELLO})
    assert status == 400 and orjson.loads(body)["error"] == {"type": "invalid_request_error",
                                                             "message": "anthropic-version: header is required"}


@pytest.mark.parametrize("body, status, message", [
    ({"model": MODEL, "messages": HELLO}, 400, "max_tokens: Field required"),
    ({"model": MODEL, "max_tokens": 5, "messages": []}, 400, "messages: at least one message is required"),
    ({"model": "claude-nope", "max_tokens": 5, "messages": HELLO}, 404, "model: claude-nope"),
])
async def test_a_bad_request_is_answered_in_anthropics_error_shape(sim, body, status, message):
    b = await api(sim)
    got, _, raw_body = await raw(b, "POST", "/v1/messages", headers=HEADERS, json=body)
    error = orjson.loads(raw_body)["error"]
    assert got == status and error["message"] == message
    assert error["type"] == ("not_found_error" if status == 404 else "invalid_request_error")


async def test_an_injected_529_is_overloaded_error(sim):
    b = await api(sim)
    b.faults.status, b.faults.status_count = 529, 1
    with pytest.raises(anthropic.OverloadedError) as err:
        await client(sim, b).messages.create(model=MODEL, max_tokens=5, messages=HELLO)
    assert err.value.status_code == 529
    assert err.value.body["type"] == "error"
    assert err.value.body["error"] == {"type": "overloaded_error", "message": "Overloaded"}
    assert (await client(sim, b).messages.create(model=MODEL, max_tokens=5, messages=HELLO)).content  # only once


async def test_an_injected_429_is_a_rate_limit_error_that_says_when_to_retry(sim):
    b = await api(sim)
    b.faults.status = 429
    status, headers, body = await raw(b, "POST", "/v1/messages", headers=HEADERS,
                                      json={"model": MODEL, "max_tokens": 5, "messages": HELLO})
    assert status == 429 and headers["retry-after"] == "1" and orjson.loads(body)["error"]["type"] == "rate_limit_error"
    b.faults.retry_after = 7.5
    with pytest.raises(anthropic.RateLimitError) as err:
        await client(sim, b).messages.create(model=MODEL, max_tokens=5, messages=HELLO)
    assert err.value.response.headers["retry-after"] == "8"


# ---------------------------------------------------------------------------
# The router's adapter against the simulated API
# ---------------------------------------------------------------------------


def deployment(b: SimulatedBackend, key: str | None = KEY) -> Deployment:
    return Deployment(id="claude", model_name="claude", provider="anthropic", kind="anthropic", upstream_model=MODEL,
                      api_base=b.base_url, api_key=key)


async def send(b: SimulatedBackend, endpoint: str, body: dict[str, Any], key: str | None = KEY) -> tuple[int, bytes]:
    adapter = ADAPTERS["anthropic"]
    url, payload = adapter.upstream_request(endpoint, body, deployment(b, key), MODEL)
    headers = {"Content-Type": "application/json", "x-request-id": "r1", **auth_headers("anthropic", key)}
    async with aiohttp.ClientSession() as s, s.post(url, data=payload, headers=headers) as r:
        return r.status, await r.read()


async def test_the_adapters_chat_request_is_taken_and_its_answer_translated(sim):
    b = await api(sim)
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello"}]
    status, body = await send(b, "chat", {"model": "claude", "messages": messages, "max_tokens": 50})
    assert status == 200
    assert b.stats.last_body["system"] == "Be brief." and b.stats.last_body["messages"] == HELLO
    sent = lower(b.stats.last_headers)
    assert sent["x-api-key"] == KEY and sent["anthropic-version"] == "2023-06-01" and "authorization" not in sent
    ctx = Context(model="claude", id="chatcmpl-1", created=1)
    answer = ChatCompletion.model_validate(orjson.loads(ADAPTERS["anthropic"].response_body("chat", body, ctx, "anthropic")))
    direct = await client(sim, b).messages.create(model=MODEL, max_tokens=50, system="Be brief.", messages=HELLO)
    assert answer.choices[0].message.content == direct.content[0].text
    assert answer.usage.prompt_tokens == direct.usage.input_tokens


async def test_the_adapters_stream_of_a_tool_call_reads_as_openai_chunks(sim):
    b = await api(sim)
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": WEATHER_SCHEMA}}]
    status, body = await send(b, "chat", {"model": "claude", "stream": True, "tools": tools,
                                          "messages": [{"role": "user", "content": "Weather in Paris?"}]})
    assert status == 200
    t = ADAPTERS["anthropic"].translator("chat", Context(model="claude", id="chatcmpl-1", created=1, include_usage=True))
    out = t.feed(body) + t.close()
    frames = [f[6:] for f in out.split(b"\n\n") if f]
    assert frames[-1] == b"[DONE]" and t.finished and not t.failed
    chunks = [ChatCompletionChunk.model_validate(orjson.loads(f)) for f in frames[:-1]]
    arguments = "".join(c.choices[0].delta.tool_calls[0].function.arguments or ""
                        for c in chunks if c.choices and c.choices[0].delta.tool_calls)
    assert orjson.loads(arguments) == WEATHER_ARGS
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "tool_calls"
    assert chunks[-1].usage.total_tokens == t.usage["total_tokens"] > 0


async def test_the_adapter_without_the_key_is_refused_and_a_completion_works(sim):
    b = await api(sim)
    status, body = await send(b, "chat", {"model": "claude", "messages": HELLO}, key=None)
    assert status == 401 and orjson.loads(body)["error"]["type"] == "authentication_error"
    status, body = await send(b, "completions", {"model": "claude", "prompt": "Once upon a time", "max_tokens": 4})
    ctx = Context(model="claude", id="cmpl-1", created=1)
    answer = orjson.loads(ADAPTERS["anthropic"].response_body("completions", body, ctx, "anthropic"))
    assert status == 200 and answer["choices"][0]["finish_reason"] == "length"
    assert len(answer["choices"][0]["text"].split()) == 4
