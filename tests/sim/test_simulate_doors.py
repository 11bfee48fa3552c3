"""The simulator's native dialects — Anthropic Messages, OpenAI Responses, rerank —
and tool calls, driven with the official clients, per server kind; byte-exact
streams against transcripts written from each server's source."""

from __future__ import annotations

import asyncio
import os
import re
import time

import aiohttp
import anthropic
import openai
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from router.simulate import SimulatedBackend
from router.simulate.tools import AUTO, ToolSpec, arguments_for, fragments, plan_call

MODEL = "llama3.1:8b"
DEFAULT_MODELS = [MODEL]
DOOR_KINDS = ["vllm", "llama_cpp_native", "ollama"]
WEATHER_SCHEMA = {"type": "object", "properties": {"city": {"type": "string"}, "days": {"type": "integer"},
                                                    "unit": {"type": "string"}}, "required": ["city", "days"]}
ANTHROPIC_TOOLS = [{"name": "get_weather", "description": "Weather for a city", "input_schema": WEATHER_SCHEMA},
                   {"name": "get_time", "input_schema": {"type": "object", "properties": {"zone": {"type": "string"}},
                                                         "required": ["zone"]}}]
RESPONSE_TOOLS = [{"type": "function", "name": "get_weather", "description": "Weather for a city",
                   "parameters": WEATHER_SCHEMA}]
CHAT_TOOLS = [{"type": "function", "function": {"name": "get_weather", "parameters": WEATHER_SCHEMA}}]
HELLO = [{"role": "user", "content": "Hello"}]
#: What the simulated model says to HELLO, cut at 3 tokens (router.simulate.core.generate).
THREE = ["matrix", " token", " on"]
#: The arguments it calls get_weather with: each required property, deterministic.
WEATHER_ARGS = arguments_for(WEATHER_SCHEMA, f"{MODEL}\x00get_weather")


async def raw(b: SimulatedBackend, method: str, path: str, **kw) -> tuple[int, dict, bytes]:
    async with aiohttp.ClientSession() as s, s.request(method, b.base_url + path, **kw) as r:
        return r.status, dict(r.headers), await r.read()


def anthropic_client(sim, b: SimulatedBackend) -> anthropic.AsyncAnthropic:
    client = anthropic.AsyncAnthropic(base_url=b.base_url, api_key="x", max_retries=0)
    sim.clients.append(client)
    return client


async def chat_usage(sim, b: SimulatedBackend, messages: list[dict]) -> tuple[int, str]:
    """prompt_tokens and text of the same conversation through the server's chat API."""
    resp = await sim.openai(b).chat.completions.create(model=MODEL, messages=messages)
    return resp.usage.prompt_tokens, resp.choices[0].message.content


# ---------------------------------------------------------------- Anthropic Messages


@pytest.mark.parametrize("kind", DOOR_KINDS)
async def test_messages_answer_like_chat_whole_and_streamed(sim, kind):
    b = await sim.backend(kind)
    client = anthropic_client(sim, b)
    msgs = [{"role": "user", "content": "Tell me about routers"}]
    whole = await client.messages.create(model=MODEL, max_tokens=100, system="Be brief.", messages=msgs)
    async with client.messages.stream(model=MODEL, max_tokens=100, system="Be brief.", messages=msgs) as stream:
        streamed = await stream.get_final_message()
    prompt, text = await chat_usage(sim, b, [{"role": "system", "content": "Be brief."}, *msgs])
    assert whole.content[0].text == streamed.content[0].text == text
    assert (whole.stop_reason, streamed.stop_reason) == ("end_turn", "end_turn")
    assert whole.usage.input_tokens == streamed.usage.input_tokens == prompt
    assert whole.usage.output_tokens == len(text.split())
    assert whole.id.startswith({"vllm": "chatcmpl-", "llama_cpp_native": "chatcmpl-", "ollama": "msg_"}[kind])
    assert b.stats.requests["/v1/messages"] == 2


@pytest.mark.parametrize("kind", DOOR_KINDS)
async def test_messages_tool_use_round_trip(sim, kind):
    b = await sim.backend(kind)
    client = anthropic_client(sim, b)
    ask = [{"role": "user", "content": "Weather in Paris?"}]
    async with client.messages.stream(model=MODEL, max_tokens=100, messages=ask, tools=ANTHROPIC_TOOLS) as stream:
        first = await stream.get_final_message()
    (use,) = first.content
    assert (first.stop_reason, use.type, use.name, use.input) == ("tool_use", "tool_use", "get_weather", WEATHER_ARGS)
    assert use.id.startswith("call_") if kind == "ollama" else use.id
    again = await client.messages.create(model=MODEL, max_tokens=100, messages=ask, tools=ANTHROPIC_TOOLS)
    assert again.content[0].input == WEATHER_ARGS and again.stop_reason == "tool_use"
    answer = await client.messages.create(model=MODEL, max_tokens=100, tools=ANTHROPIC_TOOLS, messages=[
        *ask, {"role": "assistant", "content": [use.model_dump(include={"type", "id", "name", "input"})]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": use.id, "content": "Sunny, 24 C"}]}])
    assert answer.stop_reason == "end_turn"
    assert answer.content[0].text.startswith("I got the tool result: Sunny, 24 C")


async def test_messages_named_tool_choice(sim):
    v = await sim.backend("vllm")
    named = await anthropic_client(sim, v).messages.create(
        model=MODEL, max_tokens=50, messages=HELLO, tools=ANTHROPIC_TOOLS, tool_choice={"type": "tool", "name": "get_time"})
    assert named.content[0].name == "get_time"
    assert named.stop_reason == "end_turn"  # vLLM: guided decoding finishes "stop", mapped to end_turn
    n = await sim.backend("llama_cpp_native")  # llama-server makes a named tool "required": the model picks
    picked = await anthropic_client(sim, n).messages.create(
        model=MODEL, max_tokens=50, messages=HELLO, tools=ANTHROPIC_TOOLS, tool_choice={"type": "tool", "name": "get_time"})
    assert picked.content[0].name == "get_weather" and picked.stop_reason == "tool_use"


@pytest.mark.parametrize("kind", ["vllm", "llama_cpp_native"])
async def test_count_tokens_equals_chat_prompt_tokens(sim, kind):
    b = await sim.backend(kind)
    msgs = [{"role": "user", "content": [{"type": "text", "text": "Tell me"}, {"type": "text", "text": "about routers"}]}]
    counted = await anthropic_client(sim, b).messages.count_tokens(model=MODEL, system="Be brief.", messages=msgs)
    prompt, _ = await chat_usage(sim, b, [{"role": "system", "content": "Be brief."},
                                          {"role": "user", "content": [{"type": "text", "text": "Tell me"},
                                                                       {"type": "text", "text": "about routers"}]}])
    assert counted.input_tokens == prompt == 8


async def test_messages_errors_in_each_servers_shape(sim):
    v = await sim.backend("vllm")
    with pytest.raises(anthropic.NotFoundError) as err:
        await anthropic_client(sim, v).messages.create(model="nope", max_tokens=5, messages=HELLO)
    assert err.value.body == {"type": "error", "error": {"type": "NotFoundError",
                                                         "message": "The model `nope` does not exist."}}
    status, _, body = await raw(v, "POST", "/v1/messages", json={"model": MODEL, "messages": HELLO})
    assert status == 400 and orjson.loads(body)["error"]["type"] == "Bad Request"  # FastAPI validation, OpenAI shape
    o = await sim.backend("ollama")
    status, headers, body = await raw(o, "POST", "/v1/messages", json={"model": "missing:1b", "max_tokens": 5,
                                                                       "messages": HELLO})
    assert (status, headers["Content-Type"]) == (404, "application/json") and body.endswith(b"}\n")
    data = orjson.loads(body)
    assert re.fullmatch(r"req_[0-9a-f]{24}", data.pop("request_id"))
    assert data == {"type": "error", "error": {"type": "not_found_error", "message": "model 'missing:1b' not found"}}
    status, headers, body = await raw(o, "POST", "/v1/messages", json={"model": MODEL, "messages": HELLO})
    assert (status, headers["Content-Type"]) == (400, "application/json; charset=utf-8")
    assert orjson.loads(body)["error"] == {"type": "invalid_request_error",
                                           "message": "max_tokens is required and must be positive"}
    n = await sim.backend("llama_cpp_native")
    status, _, body = await raw(n, "POST", "/v1/messages", json={"model": MODEL})
    assert (status, orjson.loads(body)) == (500, {"error": {"code": 500, "message": "'messages' is required",
                                                            "type": "server_error"}})


# Byte-exact streams. Each transcript is written from the server's source (ids
# replaced by <ID>); the simulated model answers HELLO with THREE, max_tokens 3.

VLLM_MESSAGES_STREAM = (  # vllm/entrypoints/anthropic/serving.py message_stream_converter, exclude_unset dumps
    b'event: message_start\ndata: {"type":"message_start","message":{"id":"<ID>","content":[],'
    b'"model":"llama3.1:8b","stop_reason":null,"stop_sequence":null,"usage":{"input_tokens":2,"output_tokens":0}}}\n\n'
    b'event: content_block_start\ndata: {"type":"content_block_start","content_block":{"type":"text","text":""},'
    b'"index":0}\n\n'
    b'event: content_block_delta\ndata: {"type":"content_block_delta","delta":{"type":"text_delta","text":"matrix"},'
    b'"index":0}\n\n'
    b'event: content_block_delta\ndata: {"type":"content_block_delta","delta":{"type":"text_delta","text":" token"},'
    b'"index":0}\n\n'
    b'event: content_block_delta\ndata: {"type":"content_block_delta","delta":{"type":"text_delta","text":" on"},'
    b'"index":0}\n\n'
    b'event: content_block_stop\ndata: {"type":"content_block_stop","index":0}\n\n'
    b'event: message_delta\ndata: {"type":"message_delta","delta":{"stop_reason":"max_tokens"},'
    b'"usage":{"input_tokens":2,"output_tokens":3}}\n\n'
    b'event: message_stop\ndata: {"type":"message_stop"}\n\n'
)
LLAMA_MESSAGES_STREAM = (  # tools/server/server-task.cpp to_json_anthropic (partial) / to_json_anthropic_stream (final)
    b'event: message_start\ndata: {"type":"message_start","message":{"id":"<ID>","type":"message","role":"assistant",'
    b'"content":[],"model":"llama3.1:8b","stop_reason":null,"stop_sequence":null,'
    b'"usage":{"cache_read_input_tokens":0,"input_tokens":2,"output_tokens":0}}}\n\n'
    b'event: content_block_start\ndata: {"type":"content_block_start","index":0,'
    b'"content_block":{"type":"text","text":""}}\n\n'
    b'event: content_block_delta\ndata: {"type":"content_block_delta","index":0,'
    b'"delta":{"type":"text_delta","text":"matrix"}}\n\n'
    b'event: content_block_delta\ndata: {"type":"content_block_delta","index":0,'
    b'"delta":{"type":"text_delta","text":" token"}}\n\n'
    b'event: content_block_delta\ndata: {"type":"content_block_delta","index":0,'
    b'"delta":{"type":"text_delta","text":" on"}}\n\n'
    b'event: content_block_stop\ndata: {"type":"content_block_stop","index":0}\n\n'
    b'event: message_delta\ndata: {"type":"message_delta","delta":{"stop_reason":"max_tokens","stop_sequence":null},'
    b'"usage":{"output_tokens":3}}\n\n'
    b'event: message_stop\ndata: {"type":"message_stop"}\n\n'
)
OLLAMA_MESSAGES_STREAM = (  # anthropic/anthropic.go StreamConverter.Process; input_tokens first estimated: 9 chars / 4
    b'event: message_start\ndata: {"type":"message_start","message":{"id":"<ID>","type":"message","role":"assistant",'
    b'"model":"llama3.1:8b","content":[],"usage":{"input_tokens":2,"output_tokens":0}}}\n\n'
    b'event: content_block_start\ndata: {"type":"content_block_start","index":0,'
    b'"content_block":{"type":"text","text":""}}\n\n'
    b'event: content_block_delta\ndata: {"type":"content_block_delta","index":0,'
    b'"delta":{"type":"text_delta","text":"matrix"}}\n\n'
    b'event: content_block_delta\ndata: {"type":"content_block_delta","index":0,'
    b'"delta":{"type":"text_delta","text":" token"}}\n\n'
    b'event: content_block_delta\ndata: {"type":"content_block_delta","index":0,'
    b'"delta":{"type":"text_delta","text":" on"}}\n\n'
    b'event: content_block_stop\ndata: {"type":"content_block_stop","index":0}\n\n'
    b'event: message_delta\ndata: {"type":"message_delta","delta":{"stop_reason":"max_tokens"},'
    b'"usage":{"input_tokens":2,"output_tokens":3}}\n\n'
    b'event: message_stop\ndata: {"type":"message_stop"}\n\n'
)


@pytest.mark.parametrize(("kind", "transcript", "id_pattern", "content_type"), [
    ("vllm", VLLM_MESSAGES_STREAM, rb"chatcmpl-[0-9a-f]{32}", "text/event-stream; charset=utf-8"),
    ("llama_cpp_native", LLAMA_MESSAGES_STREAM, rb"chatcmpl-[A-Za-z0-9]{32}", "text/event-stream"),
    ("ollama", OLLAMA_MESSAGES_STREAM, rb"msg_[0-9a-f]{24}", "text/event-stream"),
])
async def test_messages_stream_bytes(sim, kind, transcript, id_pattern, content_type):
    b = await sim.backend(kind)
    status, headers, data = await raw(b, "POST", "/v1/messages", json={
        "model": MODEL, "max_tokens": 3, "messages": HELLO, "stream": True})
    ids = set(re.findall(id_pattern, data))
    assert status == 200 and headers["Content-Type"] == content_type and len(ids) == 1
    assert data.replace(ids.pop(), b"<ID>") == transcript


# ---------------------------------------------------------------- OpenAI Responses


@pytest.mark.parametrize("kind", DOOR_KINDS)
async def test_responses_answer_like_chat(sim, kind):
    b = await sim.backend(kind)
    client = sim.openai(b)
    whole = await client.responses.create(model=MODEL, input="Tell me about routers", instructions="Be brief.")
    prompt, text = await chat_usage(sim, b, [{"role": "system", "content": "Be brief."},
                                             {"role": "user", "content": "Tell me about routers"}])
    assert whole.output_text == text and whole.status == "completed"
    assert (whole.usage.input_tokens, whole.usage.output_tokens) == (prompt, len(text.split()))
    events = [e async for e in await client.responses.create(model=MODEL, input="Tell me about routers",
                                                             instructions="Be brief.", stream=True)]
    kinds = [e.type for e in events]
    assert kinds[:2] == ["response.created", "response.in_progress"] and kinds[-1] == "response.completed"
    assert "".join(e.delta for e in events if e.type == "response.output_text.delta") == text
    assert events[-1].response.output[0].content[0].text == text
    if kind != "llama_cpp_native":  # llama-server's events carry no sequence_number
        assert [e.sequence_number for e in events] == list(range(len(events)))


@pytest.mark.parametrize("kind", DOOR_KINDS)
async def test_responses_function_call_round_trip(sim, kind):
    b = await sim.backend(kind)
    client = sim.openai(b)
    events = [e async for e in await client.responses.create(model=MODEL, input="Weather in Paris?",
                                                             tools=RESPONSE_TOOLS, stream=True)]
    deltas = [e.delta for e in events if e.type == "response.function_call_arguments.delta"]
    call = events[-1].response.output[0]
    assert call.type == "function_call" and call.name == "get_weather"
    assert orjson.loads(call.arguments) == WEATHER_ARGS == orjson.loads("".join(deltas))
    assert len(deltas) == (1 if kind == "ollama" else len(fragments(call.arguments)))  # Ollama: the whole call at once
    whole = await client.responses.create(model=MODEL, input="Weather in Paris?", tools=RESPONSE_TOOLS)
    assert orjson.loads(whole.output[0].arguments) == WEATHER_ARGS
    answer = await client.responses.create(model=MODEL, tools=RESPONSE_TOOLS, input=[
        {"role": "user", "content": "Weather in Paris?"},
        {"type": "function_call", "call_id": call.call_id, "name": call.name, "arguments": call.arguments},
        {"type": "function_call_output", "call_id": call.call_id, "output": "Sunny, 24 C"}])
    assert answer.output_text.startswith("I got the tool result: Sunny, 24 C")


OLLAMA_RESPONSES_STREAM_HEAD = (  # openai/responses.go ResponsesStreamConverter: Go maps, keys sorted
    b'event: response.created\ndata: {"response":{"background":false,"completed_at":null,"created_at":<T>,'
    b'"error":null,"frequency_penalty":0,"id":"<RESP>","incomplete_details":null,"instructions":null,'
    b'"max_output_tokens":3,"max_tool_calls":null,"metadata":{},"model":"llama3.1:8b","object":"response",'
    b'"output":[],"parallel_tool_calls":true,"presence_penalty":0,"previous_response_id":null,'
    b'"prompt_cache_key":null,"reasoning":null,"safety_identifier":null,"service_tier":"default",'
    b'"status":"in_progress","store":false,"temperature":1,"text":{"format":{"type":"text"}},"tool_choice":"auto",'
    b'"tools":[],"top_logprobs":0,"top_p":1,"truncation":"disabled","usage":null},"sequence_number":0,'
    b'"type":"response.created"}\n\n'
)
OLLAMA_RESPONSES_STREAM_ITEMS = (
    b'event: response.output_item.added\ndata: {"item":{"content":[],"id":"<MSG>","role":"assistant",'
    b'"status":"in_progress","type":"message"},"output_index":0,"sequence_number":2,'
    b'"type":"response.output_item.added"}\n\n'
    b'event: response.content_part.added\ndata: {"content_index":0,"item_id":"<MSG>","output_index":0,'
    b'"part":{"annotations":[],"logprobs":[],"text":"","type":"output_text"},"sequence_number":3,'
    b'"type":"response.content_part.added"}\n\n'
    b'event: response.output_text.delta\ndata: {"content_index":0,"delta":"matrix","item_id":"<MSG>","logprobs":[],'
    b'"output_index":0,"sequence_number":4,"type":"response.output_text.delta"}\n\n'
)


async def test_ollama_responses_stream_bytes(sim):
    b = await sim.backend("ollama")
    status, headers, data = await raw(b, "POST", "/v1/responses", json={
        "model": MODEL, "input": "Hello", "max_output_tokens": 3, "stream": True})
    assert status == 200 and headers["Content-Type"] == "text/event-stream"
    (resp_id,) = set(re.findall(rb"resp_\d+", data))
    (msg_id,) = set(re.findall(rb"msg_\d+", data))
    final = orjson.loads(data.split(b"\n\n")[-2].split(b"data: ", 1)[1])
    data = re.sub(rb'"created_at":\d+', b'"created_at":<T>', data).replace(resp_id, b"<RESP>").replace(msg_id, b"<MSG>")
    events = data.split(b"\n\n")
    assert events[0] + b"\n\n" == OLLAMA_RESPONSES_STREAM_HEAD
    assert b"\n\n".join(events[2:5]) + b"\n\n" == OLLAMA_RESPONSES_STREAM_ITEMS
    assert final["type"] == "response.completed" and final["sequence_number"] == 10
    assert final["response"]["usage"] == {"input_tokens": 2, "input_tokens_details": {"cached_tokens": 0},
                                          "output_tokens": 3, "output_tokens_details": {"reasoning_tokens": 0},
                                          "total_tokens": 5}
    assert data.endswith(b'"type":"response.completed"}\n\n')  # no [DONE]


async def test_responses_errors(sim):
    v = await sim.backend("vllm")
    with pytest.raises(openai.NotFoundError) as err:
        await sim.openai(v).responses.create(model="nope", input="hi")
    assert err.value.body["type"] == "NotFoundError"
    o = await sim.backend("ollama")
    status, _, body = await raw(o, "POST", "/v1/responses", json={"model": "missing:1b", "input": "hi"})
    assert (status, body) == (404, b'{"error":{"message":"model \'missing:1b\' not found","type":"not_found_error",'
                                   b'"param":null,"code":null}}\n')
    n = await sim.backend("llama_cpp_native")
    status, _, body = await raw(n, "POST", "/v1/responses", json={"input": "hi", "tools": [{"type": "web_search"}]})
    assert (status, orjson.loads(body)["error"]["message"]) == (400, "'type' of tool must be 'function'")
    assert (await raw(n, "POST", "/responses", json={"input": "hi"}))[0] == 200  # llama-server's second path


# ---------------------------------------------------------------- rerank

DOCS = ["Paris is the capital of France", "Berlin has many parks", "The capital city of France is Paris, in Europe"]
QUERY = "capital of France"


@pytest.mark.parametrize("path", ["/rerank", "/v1/rerank", "/v2/rerank"])
async def test_vllm_rerank(sim, path):
    b = await sim.backend("vllm")
    status, _, body = await raw(b, "POST", path, json={"model": MODEL, "query": QUERY, "documents": DOCS, "top_n": 2})
    data = orjson.loads(body)
    assert status == 200 and re.fullmatch(r"rerank-[0-9a-f]{32}", data.pop("id"))
    assert data == {"model": MODEL, "usage": {"total_tokens": 3 * 3 + 6 + 4 + 9}, "results": [
        {"index": 0, "document": {"text": DOCS[0], "multi_modal": None}, "relevance_score": 0.9820137900379085},
        {"index": 2, "document": {"text": DOCS[2], "multi_modal": None}, "relevance_score": 0.9820137900379085}]}
    every = orjson.loads((await raw(b, "POST", path, json={"query": QUERY, "documents": DOCS}))[2])
    assert [r["index"] for r in every["results"]] == [0, 2, 1]  # top_n 0: all; ties keep request order
    assert every["results"][2]["relevance_score"] == pytest.approx(0.0179862)


@pytest.mark.parametrize("path", ["/rerank", "/reranking", "/v1/rerank", "/v1/reranking"])
async def test_llama_server_rerank(sim, path):
    b = await sim.backend("llama_cpp_native")
    status, headers, body = await raw(b, "POST", path, json={"model": "reranker", "query": QUERY, "documents": DOCS,
                                                             "top_n": 2, "return_documents": True})
    assert (status, headers["Content-Type"]) == (200, "application/json; charset=utf-8")
    assert body == (b'{"model":"reranker","object":"list","usage":{"prompt_tokens":28,"total_tokens":28},'
                    b'"results":[{"index":0,"relevance_score":4.0},{"index":2,"relevance_score":4.0}]}')
    status, _, body = await raw(b, "POST", path, json={"query": QUERY, "documents": []})
    assert (status, orjson.loads(body)["error"]["message"]) == (400, '"documents" must be a non-empty string array')


@pytest.mark.parametrize(("kind", "method", "path", "status", "body"), [
    ("ollama", "POST", "/v1/rerank", 404, b"404 page not found"),
    ("ollama", "POST", "/rerank", 404, b"404 page not found"),
    ("ollama", "POST", "/v1/messages/count_tokens", 404, b"404 page not found"),
    ("llama_cpp_python", "POST", "/v1/rerank", 404, b'{"detail":"Not Found"}'),
    ("llama_cpp_python", "POST", "/v1/messages", 404, b'{"detail":"Not Found"}'),
    ("llama_cpp_python", "POST", "/v1/responses", 404, b'{"detail":"Not Found"}'),
    ("vllm", "POST", "/reranking", 404, b'{"detail":"Not Found"}'),
])
async def test_routes_the_real_server_lacks_answer_its_404(sim, kind, method, path, status, body):
    b = await sim.backend(kind)
    assert (await raw(b, method, path, json={"model": MODEL, "query": "q", "documents": ["d"]}))[0::2] == (status, body)


# ---------------------------------------------------------------- tool calls in chat


@pytest.mark.parametrize("kind", ["vllm", "llama_cpp_native", "openai", "ollama"])
async def test_chat_stream_tool_call_in_fragments(sim, kind):
    b = await sim.backend(kind)
    client = sim.openai(b)
    stream = await client.chat.completions.create(model=MODEL, messages=HELLO, tools=CHAT_TOOLS, stream=True)
    names, pieces, finishes = [], [], []
    async for chunk in stream:
        for choice in chunk.choices:
            for call in choice.delta.tool_calls or []:
                names += [call.function.name] if call.function.name else []
                pieces.append(call.function.arguments or "")
            finishes += [choice.finish_reason] if choice.finish_reason else []
    assert names == ["get_weather"] and finishes == ["tool_calls"]
    assert orjson.loads("".join(pieces)) == WEATHER_ARGS
    assert len([p for p in pieces if p]) == (1 if kind == "ollama" else len(fragments("".join(pieces))))
    whole = await client.chat.completions.create(model=MODEL, messages=HELLO, tools=CHAT_TOOLS)
    (call,) = whole.choices[0].message.tool_calls
    assert whole.choices[0].finish_reason == "tool_calls" and orjson.loads(call.function.arguments) == WEATHER_ARGS
    answer = await client.chat.completions.create(model=MODEL, tools=CHAT_TOOLS, messages=[
        *HELLO, whole.choices[0].message.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": call.id, "content": "Sunny"}])
    assert answer.choices[0].message.content.startswith("I got the tool result: Sunny")


async def test_ollama_api_chat_whole_tool_calls(sim):
    b = await sim.backend("ollama")
    client = sim.ollama(b)
    parts = [p async for p in await client.chat(model=MODEL, messages=HELLO, tools=CHAT_TOOLS, stream=True)]
    assert [len(p.message.tool_calls or []) for p in parts] == [1, 0]  # the whole call in one message
    call = parts[0].message.tool_calls[0]
    assert (call.function.name, dict(call.function.arguments)) == ("get_weather", WEATHER_ARGS)
    assert parts[-1].done_reason == "stop" and parts[-1].eval_count == len(fragments('{"city":"light","days":59}'))
    whole = await client.chat(model=MODEL, messages=HELLO, tools=CHAT_TOOLS)
    assert whole.done_reason == "stop" and whole.message.tool_calls[0].function.name == "get_weather"
    status, _, body = await raw(b, "POST", "/api/chat", json={"model": MODEL, "messages": HELLO, "tools": CHAT_TOOLS,
                                                             "stream": False})
    tool_call = orjson.loads(body)["message"]["tool_calls"][0]
    assert re.fullmatch(r"call_[a-z0-9]{8}", tool_call.pop("id"))
    assert tool_call == {"function": {"index": 0, "name": "get_weather", "arguments": WEATHER_ARGS}}


async def test_llama_cpp_python_calls_only_a_named_tool(sim):
    b = await sim.backend("llama_cpp_python")
    client = sim.openai(b)
    auto = await client.chat.completions.create(model=MODEL, messages=HELLO, tools=CHAT_TOOLS)
    assert auto.choices[0].message.tool_calls is None and auto.choices[0].finish_reason == "stop"
    named = await client.chat.completions.create(model=MODEL, messages=HELLO, tools=CHAT_TOOLS,
                                                 tool_choice={"type": "function", "function": {"name": "get_weather"}})
    (call,) = named.choices[0].message.tool_calls
    assert call.id == f"call__0_get_weather_{named.id[len('chat'):]}"
    assert orjson.loads(call.function.arguments) == WEATHER_ARGS


# ---------------------------------------------------------------- faults, load and pacing


async def test_faults_take_the_doors_shape_and_count(sim):
    v = await sim.backend("vllm")
    v.faults.status, v.faults.status_count, v.faults.paths = 503, 1, ("/v1/messages",)
    with pytest.raises(anthropic.InternalServerError) as err:
        await anthropic_client(sim, v).messages.create(model=MODEL, max_tokens=5, messages=HELLO)
    assert err.value.body == {"type": "error", "error": {"type": "ServiceUnavailableError",
                                                         "message": "simulated failure (HTTP 503)"}}
    o = await sim.backend("ollama")
    o.faults.drop_after_chunks, o.faults.drop_count = 2, 1
    with pytest.raises(Exception, match="incomplete|closed|Connection"):  # the client's transport error
        async with anthropic_client(sim, o).messages.stream(model=MODEL, max_tokens=50, messages=HELLO) as stream:
            await stream.get_final_message()
    assert o.stats.drops == 1 and o.stats.requests["/v1/messages"] == 1
    n = await sim.backend("llama_cpp_native")
    n.faults.garbage, n.faults.paths = True, ("/v1/rerank",)
    status, headers, body = await raw(n, "POST", "/v1/rerank", json={"query": "q", "documents": ["d"]})
    assert (status, headers["Content-Type"], n.stats.garbage) == (200, "text/html", 1)


async def test_doors_wait_for_a_seat_and_pace_tokens(sim):
    b = await sim.backend("vllm", max_num_seqs=1, ttft=0.05, tokens_per_s=50)
    client = anthropic_client(sim, b)
    t0 = time.perf_counter()
    first = asyncio.create_task(client.messages.create(model=MODEL, max_tokens=5, messages=HELLO))
    while not b.scheduler.running:
        await asyncio.sleep(0.005)
    second = asyncio.create_task(sim.openai(b).responses.create(model=MODEL, input="Hello", max_output_tokens=5))
    while b.scheduler.waiting == 0:
        await asyncio.sleep(0.005)
    await asyncio.gather(first, second)
    assert time.perf_counter() - t0 >= 2 * (0.05 + 4 / 50)  # one after the other, each TTFT + 4 intervals


# ---------------------------------------------------------------- the tool-argument builder

SCHEMA_TYPES = {"string": str, "integer": int, "number": float, "boolean": bool, "array": list, "object": dict}


@settings(max_examples=100, deadline=None, derandomize=bool(os.environ.get("CI")))
@given(props=st.dictionaries(st.sampled_from(["a", "b", "city", "n", "flag"]), st.sampled_from(sorted(SCHEMA_TYPES)),
                             max_size=5),
       required=st.sets(st.sampled_from(["a", "b", "city", "n", "flag"])))
def test_arguments_cover_the_required_properties_with_their_types(props, required):
    schema = {"type": "object", "properties": {k: {"type": t} for k, t in props.items()},
              "required": sorted(required)}
    args = arguments_for(schema, "seed")
    assert list(args) == [k for k in props if k in required]
    assert all(isinstance(args[k], SCHEMA_TYPES[props[k]]) for k in args)
    assert args == arguments_for(schema, "seed")
    call = plan_call(MODEL, [ToolSpec("t", schema)], AUTO, after_result=False)
    assert call is not None and "".join(fragments(call.compact_json())) == call.compact_json()


MALFORMED = [
    [],
    {"model": MODEL, "max_tokens": 5, "messages": [{"role": "user", "content": [{"type": "text", "text": {"x": 1}}]}]},
    {"model": MODEL, "max_tokens": 5, "system": [{"type": "text", "text": 7}], "messages": [
        {"role": "assistant", "content": [{"type": "tool_use", "id": 1, "name": None, "input": [1 << 70]}]},
        {"role": "user", "content": [{"type": "tool_result", "content": [{"type": "text", "text": None}]}]}]},
    {"model": MODEL, "input": [{"type": "function_call_output", "call_id": 3, "output": {"a": 1}}],
     "temperature": {"x": 1}, "tools": [{"type": "function", "name": "f", "parameters": [1]}]},
    {"model": MODEL, "query": {"q": 1}, "documents": [{"text": 5}, None], "top_n": "two"},
]


@pytest.mark.parametrize("kind", DOOR_KINDS)
@pytest.mark.parametrize("path", ["/v1/messages", "/v1/messages/count_tokens", "/v1/responses", "/v1/rerank"])
async def test_malformed_bodies_get_the_servers_own_error_not_a_crash(sim, kind, path):
    b = await sim.backend(kind)
    for body in MALFORMED:
        status, headers, data = await raw(b, "POST", path, json=body)
        assert b"Server got itself in trouble" not in data, (body, status)  # aiohttp's page for a handler crash
        assert status < 500 or headers["Content-Type"].startswith("application/json"), (body, status, data)
