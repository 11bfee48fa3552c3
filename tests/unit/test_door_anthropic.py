"""The Anthropic Messages front door (``router.doors.anthropic``), as a client sees it.

Requests are checked as Anthropic checks them (each rejection names its field) and
translated into the OpenAI chat requests vLLM, llama-server and our Ollama adapter take;
answers and streams of the shapes those servers send come back as Anthropic writes
them, checked against the official ``anthropic`` package's own types and stream
accumulator. A native Anthropic stream is relayed byte for byte. Properties: a tool
call survives Anthropic -> chat -> Anthropic (whole and streamed), streamed text
reassembles however it is cut, and no request makes the checks raise anything but a
``BadRequest``.
"""

from __future__ import annotations

import os
import string
from typing import Any

import anthropic
import orjson
import pytest
from aiohttp import web
from anthropic.types import (Message, RawContentBlockDeltaEvent, RawContentBlockStartEvent, RawContentBlockStopEvent,
                             RawMessageDeltaEvent, RawMessageStartEvent, RawMessageStopEvent)
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from router.config import Limits
from router.domain import Deployment
from router.doors.anthropic import COUNT_TOKENS, MESSAGES, CountTokens, Messages
from router.errors import (AuthenticationError, BadRequest, NoCapableDeployment, NotFound, PermissionDenied,
                           RequestRateLimited, RouterError, UpstreamError, UpstreamTimeout)
from router.providers import ollama
from router.providers.base import Context

PROPERTY = settings(max_examples=200, deadline=None, derandomize=bool(os.environ.get("CI")),
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
LIMITS = Limits()
CTX = Context(model="claude-local", id="msg_0123456789abcdef", created=1700000000)
DEP = Deployment(id="v", model_name="claude-local", provider="vllm", kind="vllm", upstream_model="qwen3",
                 api_base="http://127.0.0.1:1/v1")
SDK_EVENTS = {"message_start": RawMessageStartEvent, "message_delta": RawMessageDeltaEvent,
              "message_stop": RawMessageStopEvent, "content_block_start": RawContentBlockStartEvent,
              "content_block_delta": RawContentBlockDeltaEvent, "content_block_stop": RawContentBlockStopEvent}


def request(**extra: Any) -> dict[str, Any]:
    return {"model": "claude-local", "max_tokens": 256, "messages": [{"role": "user", "content": "Hi"}], **extra}


def parse(body: Any, door: Messages = MESSAGES, limits: Limits = LIMITS) -> dict[str, Any]:
    return door.parse(orjson.dumps(body), limits)


# ---------------------------------------------------------------------------
# Stream helpers
# ---------------------------------------------------------------------------


def sse(*objs: dict[str, Any], done: bool = True) -> bytes:
    return b"".join(b"data: " + orjson.dumps(o) + b"\n\n" for o in objs) + (b"data: [DONE]\n\n" if done else b"")


def run(translator: Any, raw: bytes, cuts: list[int] | tuple[int, ...] = ()) -> bytes:
    """What the client gets when the upstream sends ``raw`` cut at ``cuts``."""
    bounds = [0, *sorted(cuts), len(raw)]
    out = b"".join(translator.feed(raw[a:b]) for a, b in zip(bounds, bounds[1:]) if b > a)
    return out + translator.close()


def events(raw: bytes) -> list[tuple[str, dict[str, Any]]]:
    """Anthropic SSE as (event, data) pairs; each event's name is its data's type, and
    each event the ``anthropic`` package types parses as one of them."""
    assert raw.endswith(b"\n\n"), raw[-80:]
    out = []
    for block in raw[:-2].split(b"\n\n"):
        name, data = block.split(b"\n")
        assert name.startswith(b"event: ") and data.startswith(b"data: "), block
        obj = orjson.loads(data[6:])
        assert obj["type"] == name[7:].decode()
        if obj["type"] not in ("ping", "error"):
            SDK_EVENTS[obj["type"]].model_validate(obj)
        out.append((obj["type"], obj))
    return out


def assemble(evs: list[tuple[str, dict[str, Any]]]) -> list[dict[str, Any]]:
    """The content blocks a client builds from the events."""
    blocks: list[dict[str, Any]] = []
    partial: dict[int, str] = {}
    for kind, e in evs:
        if kind == "content_block_start":
            assert e["index"] == len(blocks)
            blocks.append(dict(e["content_block"]))
        elif kind == "content_block_delta":
            block, delta = blocks[e["index"]], e["delta"]
            if delta["type"] == "text_delta":
                block["text"] += delta["text"]
            elif delta["type"] == "thinking_delta":
                block["thinking"] += delta["thinking"]
            else:
                partial[e["index"]] = partial.get(e["index"], "") + delta["partial_json"]
        elif kind == "content_block_stop" and e["index"] in partial:
            blocks[e["index"]]["input"] = orjson.loads(partial[e["index"]])
    return blocks


async def sdk_client(aiohttp_server: Any, status: int, body: bytes, content_type: str) -> anthropic.AsyncAnthropic:
    """The official client, talking to a server that answers ``/v1/messages`` with ``body``."""
    async def answer(request: web.Request) -> web.Response:
        return web.Response(status=status, body=body, headers={"Content-Type": content_type})

    app = web.Application()
    app.router.add_post("/v1/messages", answer)
    server = await aiohttp_server(app)
    return anthropic.AsyncAnthropic(api_key="k", base_url=str(server.make_url("")), max_retries=0)


async def sdk_message(aiohttp_server: Any, raw: bytes) -> Any:
    """The message the official client builds from a stream we answered with."""
    async with await sdk_client(aiohttp_server, 200, raw, "text/event-stream; charset=utf-8") as client:
        async with client.messages.stream(model="claude-local", max_tokens=64,
                                          messages=[{"role": "user", "content": "x"}]) as stream:
            return await stream.get_final_message()


def vllm_chunk(delta: dict[str, Any], finish: str | None = None, stop_reason: Any = None) -> dict[str, Any]:
    choice: dict[str, Any] = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
    if finish is not None:
        choice["stop_reason"] = stop_reason
    return {"id": "chatcmpl-9f2c", "object": "chat.completion.chunk", "created": 1700000000, "model": "qwen3",
            "choices": [choice]}


def llama_chunk(delta: dict[str, Any], finish: str | None = None, **extra: Any) -> dict[str, Any]:
    return {"choices": [{"finish_reason": finish, "index": 0, "delta": delta}], "created": 1700000000,
            "id": "chatcmpl-Jx7", "model": "gpt-3.5-turbo", "system_fingerprint": "b6123-1a2b3c",
            "object": "chat.completion.chunk", **extra}


VLLM_USAGE = {"id": "chatcmpl-9f2c", "object": "chat.completion.chunk", "created": 1700000000, "model": "qwen3",
              "choices": [], "usage": {"prompt_tokens": 31, "total_tokens": 40, "completion_tokens": 9}}
LLAMA_USAGE = {"completion_tokens": 12, "prompt_tokens": 25, "total_tokens": 37}
LLAMA_TIMINGS = {"prompt_n": 25, "prompt_ms": 40.1, "predicted_n": 12, "predicted_ms": 150.2}

VLLM_TEXT = sse(vllm_chunk({"role": "assistant", "content": ""}), vllm_chunk({"content": "Hello"}),
                vllm_chunk({"content": " there!"}), vllm_chunk({"content": ""}, "stop"), VLLM_USAGE)
VLLM_TOOL = sse(
    vllm_chunk({"role": "assistant", "content": ""}),
    vllm_chunk({"tool_calls": [{"id": "chatcmpl-tool-8e1", "type": "function", "index": 0,
                                "function": {"name": "get_weather"}}]}),
    vllm_chunk({"tool_calls": [{"index": 0, "function": {"arguments": '{"city": "'}}]}),
    vllm_chunk({"tool_calls": [{"index": 0, "function": {"arguments": "Par"}}]}),
    vllm_chunk({"tool_calls": [{"index": 0, "function": {"arguments": 'is", "unit": "C"}'}}]}),
    vllm_chunk({"content": ""}, "tool_calls"), VLLM_USAGE)
VLLM_REASONING = sse(vllm_chunk({"role": "assistant", "content": ""}), vllm_chunk({"reasoning": "The user"}),
                     vllm_chunk({"reasoning": " greets me."}), vllm_chunk({"content": "Hi!"}),
                     vllm_chunk({"content": ""}, "stop"), VLLM_USAGE)
LLAMA_TEXT_TWO_TOOLS = sse(
    llama_chunk({"role": "assistant", "content": None}),
    llama_chunk({"reasoning_content": "Two cities."}),
    llama_chunk({"content": "Checking both."}),
    llama_chunk({"tool_calls": [{"index": 0, "id": "Fz8kq", "type": "function",
                                 "function": {"name": "get_weather", "arguments": ""}}]}),
    llama_chunk({"tool_calls": [{"index": 0, "function": {"arguments": '{"city":'}}]}),
    llama_chunk({"tool_calls": [{"index": 0, "function": {"arguments": '"Oslo"}'}}]}),
    llama_chunk({"tool_calls": [{"index": 1, "id": "Qa1Lm", "type": "function",
                                 "function": {"name": "get_weather", "arguments": '{"city":"Rome"}'}}]}),
    llama_chunk({}, "tool_calls", usage=LLAMA_USAGE, timings=LLAMA_TIMINGS))


def message_start(input_tokens: int = 0) -> tuple[str, dict[str, Any]]:
    return ("message_start", {"type": "message_start", "message": {
        "model": "claude-local", "id": "msg_0123456789abcdef", "type": "message", "role": "assistant", "content": [],
        "stop_reason": None, "stop_sequence": None,
        "usage": {"input_tokens": input_tokens, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0,
                  "output_tokens": 0}}})


PING = ("ping", {"type": "ping"})


def start(index: int, block: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    return ("content_block_start", {"type": "content_block_start", "index": index, "content_block": block})


def delta(index: int, d: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    return ("content_block_delta", {"type": "content_block_delta", "index": index, "delta": d})


def stop(index: int) -> tuple[str, dict[str, Any]]:
    return ("content_block_stop", {"type": "content_block_stop", "index": index})


def ending(reason: str, prompt: int, completion: int, sequence: str | None = None) -> list[tuple[str, dict[str, Any]]]:
    return [("message_delta", {"type": "message_delta", "delta": {"stop_reason": reason, "stop_sequence": sequence},
                               "usage": {"input_tokens": prompt, "cache_creation_input_tokens": 0,
                                         "cache_read_input_tokens": 0, "output_tokens": completion}}),
            ("message_stop", {"type": "message_stop"})]


TEXT = {"type": "text", "text": ""}
THINKING = {"type": "thinking", "thinking": "", "signature": ""}


# ---------------------------------------------------------------------------
# Request checks
# ---------------------------------------------------------------------------

IMG = {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}


def _user(*blocks: Any) -> dict[str, Any]:
    return request(messages=[{"role": "user", "content": list(blocks)}])


def _assistant(*blocks: Any) -> dict[str, Any]:
    return request(messages=[{"role": "user", "content": "go"}, {"role": "assistant", "content": list(blocks)}])


REJECTED = [
    ({"max_tokens": 5, "messages": []}, "model"),
    (request(model=7), "model"),
    (request(model="bad\x00name"), "model"),
    ({"model": "m", "messages": [{"role": "user", "content": "x"}]}, "max_tokens"),
    (request(max_tokens=0), "max_tokens"),
    (request(max_tokens=True), "max_tokens"),
    (request(max_tokens=2.5), "max_tokens"),
    (request(messages=[]), "messages"),
    (request(messages={"role": "user"}), "messages"),
    (request(messages=["hi"]), "messages[0]"),
    (request(messages=[{"role": "tool", "content": "x"}]), "messages[0].role"),
    (request(messages=[{"role": "system", "content": "x"}]), "messages"),
    (request(messages=[{"role": "system", "content": [{"type": "image", "source": IMG}]}]), "messages[0].content[0]"),
    (request(messages=[{"role": "user", "content": 5}]), "messages[0].content"),
    (request(messages=[{"role": "user"}]), "messages[0].content"),
    (_user({"text": "no type"}), "messages[0].content[0]"),
    (_user({"type": "text", "text": 5}), "messages[0].content[0].text"),
    (_user({"type": "image"}), "messages[0].content[0].source"),
    (_user({"type": "image", "source": {"type": "base64", "data": "AA=="}}), "messages[0].content[0].source.media_type"),
    (_user({"type": "image", "source": {"type": "base64", "media_type": "image/png"}}), "messages[0].content[0].source.data"),
    (_user({"type": "image", "source": {"type": "url"}}), "messages[0].content[0].source.url"),
    (_user({"type": "document", "source": {"type": "text", "media_type": "text/plain"}}),
     "messages[0].content[0].source.data"),
    (_user({"type": "tool_use", "id": "t", "name": "f", "input": {}}), "messages[0].content[0]"),
    (_assistant({"type": "tool_use", "name": "f", "input": {}}), "messages[1].content[0].id"),
    (_assistant({"type": "tool_use", "id": "t", "name": "", "input": {}}), "messages[1].content[0].name"),
    (_assistant({"type": "tool_use", "id": "t", "name": "f", "input": "{}"}), "messages[1].content[0].input"),
    (_assistant({"type": "tool_result", "tool_use_id": "t", "content": "x"}), "messages[1].content[0]"),
    (_user({"type": "tool_result", "content": "x"}), "messages[0].content[0].tool_use_id"),
    (_user({"type": "tool_result", "tool_use_id": "t", "content": 5}), "messages[0].content[0].content"),
    (_user({"type": "tool_result", "tool_use_id": "t", "content": [{"type": "text"}]}),
     "messages[0].content[0].content[0].text"),
    (_user({"type": "tool_result", "tool_use_id": "t", "is_error": "yes"}), "messages[0].content[0].is_error"),
    (_assistant({"type": "thinking", "signature": "s"}), "messages[1].content[0].thinking"),
    (_assistant({"type": "thinking", "thinking": "t", "signature": 5}), "messages[1].content[0].signature"),
    (_assistant({"type": "redacted_thinking"}), "messages[1].content[0].data"),
    (request(system=5), "system"),
    (request(system=[{"type": "image", "source": IMG}]), "system[0]"),
    (request(tools={"name": "f"}), "tools"),
    (request(tools=["f"]), "tools[0]"),
    (request(tools=[{"input_schema": {}}]), "tools[0].name"),
    (request(tools=[{"name": "f"}]), "tools[0].input_schema"),
    (request(tools=[{"name": "f", "input_schema": {}, "description": 1}]), "tools[0].description"),
    (request(tools=[{"type": 3, "name": "f"}]), "tools[0].type"),
    (request(tool_choice="auto"), "tool_choice.type"),
    (request(tool_choice={"type": "sometimes"}), "tool_choice.type"),
    (request(tool_choice={"type": "tool"}), "tool_choice.name"),
    (request(tool_choice={"type": "auto", "disable_parallel_tool_use": "no"}), "tool_choice.disable_parallel_tool_use"),
    (request(stop_sequences="END"), "stop_sequences"),
    (request(stop_sequences=["END", 1]), "stop_sequences"),
    (request(temperature=1.5), "temperature"),
    (request(temperature="0.5"), "temperature"),
    (request(top_p=-0.1), "top_p"),
    (request(top_k=-1), "top_k"),
    (request(top_k=1.5), "top_k"),
    (request(stream="yes"), "stream"),
    (request(metadata=["u"]), "metadata"),
    (request(metadata={"user_id": 5}), "metadata.user_id"),
    (request(thinking={"type": "on"}), "thinking.type"),
    (request(thinking={"type": "enabled"}), "thinking.budget_tokens"),
    (request(thinking={"type": "enabled", "budget_tokens": 0}), "thinking.budget_tokens"),
]


@pytest.mark.parametrize("body, param", REJECTED)
def test_a_request_anthropic_would_refuse_is_refused_naming_the_field(body, param):
    with pytest.raises(BadRequest) as caught:
        parse(body)
    assert caught.value.param == param
    assert caught.value.status == 400


@pytest.mark.parametrize("raw", [b"{not json", b"[1, 2]", b'"text"'])
def test_a_body_that_is_not_a_json_object_is_refused(raw):
    with pytest.raises(BadRequest):
        MESSAGES.parse(raw, LIMITS)


def test_more_messages_than_the_limit_are_refused():
    with pytest.raises(BadRequest) as caught:
        parse(request(messages=[{"role": "user", "content": "a"}] * 3), limits=Limits(max_messages=2))
    assert caught.value.param == "messages"


FULL = request(
    system=[{"type": "text", "text": "Be brief.", "cache_control": {"type": "ephemeral"}}],
    messages=[
        {"role": "user", "content": [{"type": "text", "text": "Weather?"}, {"type": "image", "source": IMG},
                                     {"type": "image", "source": {"type": "url", "url": "https://x.test/a.png"}},
                                     {"type": "document", "source": {"type": "text", "media_type": "text/plain",
                                                                     "data": "notes"}}]},
        {"role": "assistant", "content": [{"type": "thinking", "thinking": "Use the tool.", "signature": "c2ln"},
                                          {"type": "redacted_thinking", "data": "b3BhcXVl"},
                                          {"type": "tool_use", "id": "toolu_1", "name": "get_weather",
                                           "input": {"city": "Oslo"}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": "-3 C",
                                      "is_error": False},
                                     {"type": "search_result", "source": "https://x.test", "title": "t", "content": []}]},
    ],
    tools=[{"name": "get_weather", "description": "Weather now", "input_schema": {"type": "object"}},
           {"type": "web_search_20250305", "name": "web_search", "max_uses": 3}],
    tool_choice={"type": "auto", "disable_parallel_tool_use": True}, stop_sequences=["END"], temperature=0.2,
    top_p=0.9, top_k=40, stream=True, metadata={"user_id": "u-1"}, thinking={"type": "enabled", "budget_tokens": 2048},
    service_tier="auto", container=None,
)


def test_a_full_request_passes_with_unknown_fields_kept_in_order():
    body = parse(FULL)
    assert body == FULL
    assert list(body) == list(FULL)


def test_null_counts_as_absent_for_optional_fields():
    body = request(system=None, tools=None, tool_choice=None, stop_sequences=None, temperature=None, top_p=None,
                   top_k=None, stream=None, metadata=None, thinking=None)
    assert parse(body) == body


def test_count_tokens_needs_no_max_tokens_but_takes_no_stream():
    body = {"model": "claude-local", "messages": [{"role": "user", "content": "Hi"}]}
    assert parse(body, COUNT_TOKENS) == body
    with pytest.raises(BadRequest) as caught:
        parse({**body, "stream": False}, COUNT_TOKENS)
    assert caught.value.param == "stream"
    with pytest.raises(BadRequest) as caught:
        parse({**body, "max_tokens": 0}, COUNT_TOKENS)
    assert caught.value.param == "max_tokens"


def test_the_doors_say_who_they_are():
    assert (MESSAGES.name, MESSAGES.pivot, MESSAGES.native_path, MESSAGES.stream_type, MESSAGES.id_prefix) == \
        ("messages", "chat", "/v1/messages", "text/event-stream; charset=utf-8", "msg_")
    assert isinstance(COUNT_TOKENS, CountTokens)
    assert (COUNT_TOKENS.name, COUNT_TOKENS.pivot, COUNT_TOKENS.native_path, COUNT_TOKENS.id_prefix) == \
        ("count_tokens", "chat", "/v1/messages/count_tokens", "msg_")


def test_only_stream_true_asks_for_a_stream():
    assert MESSAGES.stream(request(stream=True)) is True
    assert MESSAGES.stream(request(stream=False)) is False
    assert MESSAGES.stream(request()) is False
    assert COUNT_TOKENS.stream(request()) is False


def test_count_tokens_never_streams():
    with pytest.raises(TypeError):
        COUNT_TOKENS.watch(CTX)
    with pytest.raises(TypeError):
        COUNT_TOKENS.pivot_stream(CTX)


# ---------------------------------------------------------------------------
# Native backends
# ---------------------------------------------------------------------------


def test_a_native_backend_gets_the_body_with_its_model_name_and_nothing_else_changed():
    body = parse(FULL)
    sent = MESSAGES.native_request(body, DEP, "Qwen/Qwen3-8B")
    assert orjson.loads(sent) == {**FULL, "model": "Qwen/Qwen3-8B"}
    assert list(orjson.loads(sent)) == list(FULL)


NATIVE_ANSWER = orjson.dumps({"id": "msg_1", "type": "message", "role": "assistant", "model": "qwen3",
                              "content": [{"type": "text", "text": "Hi"}], "stop_reason": "end_turn",
                              "stop_sequence": None, "usage": {"input_tokens": 3, "output_tokens": 1}})


def test_a_native_answer_is_passed_on_unchanged():
    assert MESSAGES.check_native(NATIVE_ANSWER, "vllm") is NATIVE_ANSWER
    assert COUNT_TOKENS.check_native(b'{"input_tokens": 14}', "vllm") == b'{"input_tokens": 14}'


@pytest.mark.parametrize("raw", [
    b'{"type":"error","error":{"type":"api_error","message":"boom"}}',
    b'  { "type" : "error", "error": {}}',
    b'{"error": {"message": "model not loaded"}}',
    b"<html>502 Bad Gateway</html>",
    b'{"id": "msg_1", "content": [',
    b"",
])
def test_a_native_200_that_is_not_an_answer_is_an_upstream_error(raw):
    with pytest.raises(UpstreamError):
        MESSAGES.check_native(raw, "vllm")


# ---------------------------------------------------------------------------
# Anthropic request -> OpenAI chat request
# ---------------------------------------------------------------------------


def test_the_system_prompt_leads_and_claude_codes_billing_header_is_dropped():
    body = parse(request(system=[{"type": "text", "text": "x-anthropic-billing-header: cc_version=2.1; cch=9f3a;"},
                                 {"type": "text", "text": "You are a coding agent."},
                                 {"type": "text", "text": "Be brief."}]))
    assert MESSAGES.to_pivot(body)["messages"][0] == {"role": "system", "content": "You are a coding agent.\nBe brief."}
    assert MESSAGES.to_pivot(parse(request(system="Be kind.")))["messages"][0] == {"role": "system", "content": "Be kind."}
    assert MESSAGES.to_pivot(parse(request(system="")))["messages"] == [{"role": "user", "content": "Hi"}]


CLAUDE_CODE = {  # the shape of what Claude Code 2.1.332 sends (tests/e2e/test_agent_cli.py recorded it)
    "model": "claude-local", "max_tokens": 32000, "stream": True,
    "system": [{"type": "text", "text": "x-anthropic-billing-header: cc_version=2.1.332; cc_entrypoint=sdk-cli;"},
               {"type": "text", "text": "You are Claude Code.", "cache_control": {"type": "ephemeral"}}],
    "messages": [{"role": "user", "content": [{"type": "text", "text": "Read a.txt"}]},
                 {"role": "system", "content": "Today is Tuesday."},
                 {"role": "user", "content": [{"type": "text", "text": "please", "cache_control": {"type": "ephemeral"}}]}],
    "tools": [{"name": "DeferredToolPlaceholder", "description": "d", "input_schema": {"type": "object"},
               "defer_loading": True},
              {"name": "Read", "description": "Read a file", "input_schema": {"type": "object", "properties": {
                  "file_path": {"type": "string"}}, "required": ["file_path"]}}],
    "thinking": {"type": "adaptive"}, "context_management": {"edits": []}, "output_config": {"effort": "high"},
    "metadata": {"user_id": "user_abc_account__session_123"},
}


def test_a_claude_code_request_passes_and_its_system_messages_join_the_system_prompt():
    pivot = MESSAGES.to_pivot(parse(CLAUDE_CODE))
    assert pivot["messages"] == [{"role": "system", "content": "You are Claude Code.\nToday is Tuesday."},
                                 {"role": "user", "content": "Read a.txt"}, {"role": "user", "content": "please"}]
    assert [t["function"]["name"] for t in pivot["tools"]] == ["Read"]  # the deferred placeholder is left out
    assert (pivot["max_tokens"], pivot["user"], pivot["stream"], "think" in pivot) == \
        (32000, "user_abc_account__session_123", True, False)


@pytest.mark.parametrize("role", ["ctx", "msg"])
def test_claude_codes_other_names_for_a_user_turn_are_user_turns(role):
    body = parse(request(messages=[{"role": role, "content": [{"type": "text", "text": "context"}]}]))
    assert MESSAGES.to_pivot(body)["messages"] == [{"role": "user", "content": "context"}]


def test_content_blocks_become_openai_content_parts():
    body = parse(_user({"type": "text", "text": "What is in these?"}, {"type": "image", "source": IMG},
                       {"type": "image", "source": {"type": "url", "url": "https://x.test/cat.jpg"}},
                       {"type": "document", "source": {"type": "text", "media_type": "text/plain", "data": "memo"}},
                       {"type": "document", "source": {"type": "content", "content": [
                           {"type": "text", "text": "page 1"}, {"type": "image", "source": IMG}]}}))
    assert MESSAGES.to_pivot(body)["messages"] == [{"role": "user", "content": [
        {"type": "text", "text": "What is in these?"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}},
        {"type": "image_url", "image_url": {"url": "https://x.test/cat.jpg"}},
        {"type": "text", "text": "memo"},
        {"type": "text", "text": "page 1"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}},
    ]}]


def test_a_lone_text_block_is_sent_as_a_plain_string():
    assert MESSAGES.to_pivot(parse(_user({"type": "text", "text": "Hi"})))["messages"] == [{"role": "user", "content": "Hi"}]


def test_a_tool_conversation_is_in_the_order_openai_requires():
    body = parse(request(messages=[
        {"role": "user", "content": "Weather in Oslo and Rome?"},
        {"role": "assistant", "content": [
            {"type": "thinking", "thinking": "Two calls.", "signature": "EqQB"},
            {"type": "redacted_thinking", "data": "b3BhcXVl"},
            {"type": "text", "text": "Checking."},
            {"type": "tool_use", "id": "toolu_A", "name": "get_weather", "input": {"city": "Oslo"}},
            {"type": "tool_use", "id": "toolu_B", "name": "get_weather", "input": {"city": "Rome", "unit": "C"}}]},
        {"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": "toolu_A", "content": "-3 C"},
            {"type": "tool_result", "tool_use_id": "toolu_B", "is_error": True, "content": [
                {"type": "text", "text": "timeout"}, {"type": "text", "text": "retry later"},
                {"type": "image", "source": IMG}]},
            {"type": "text", "text": "And tomorrow?"}]},
    ]))
    assert MESSAGES.to_pivot(body)["messages"] == [
        {"role": "user", "content": "Weather in Oslo and Rome?"},
        {"role": "assistant", "content": "Checking.", "reasoning_content": "Two calls.", "reasoning": "Two calls.",
         "tool_calls": [
             {"id": "toolu_A", "type": "function", "function": {"name": "get_weather", "arguments": '{"city":"Oslo"}'}},
             {"id": "toolu_B", "type": "function",
              "function": {"name": "get_weather", "arguments": '{"city":"Rome","unit":"C"}'}}]},
        {"role": "tool", "tool_call_id": "toolu_A", "content": "-3 C"},
        {"role": "tool", "tool_call_id": "toolu_B", "content": "timeout\nretry later"},
        {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}},
                                     {"type": "text", "text": "And tomorrow?"}]},
    ]


def test_an_assistant_turn_of_tool_calls_only_has_null_content_and_a_user_turn_of_results_only_adds_no_user_message():
    body = parse(request(messages=[
        {"role": "user", "content": "go"},
        {"role": "assistant", "content": [{"type": "tool_use", "id": "t1", "name": "ls", "input": {}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t1"}]},
        {"role": "assistant", "content": [{"type": "thinking", "thinking": "done", "signature": ""}]},
    ]))
    assert MESSAGES.to_pivot(body)["messages"][1:] == [
        {"role": "assistant", "content": None,
         "tool_calls": [{"id": "t1", "type": "function", "function": {"name": "ls", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "t1", "content": ""},
        {"role": "assistant", "content": "", "reasoning_content": "done", "reasoning": "done"},
    ]


def test_block_types_without_an_openai_form_are_left_out():
    body = parse(_user({"type": "text", "text": "a"}, {"type": "search_result", "source": "s", "title": "t", "content": []},
                       {"type": "thinking", "thinking": "user-side thinking is nobody's", "signature": ""}))
    assert MESSAGES.to_pivot(body)["messages"] == [{"role": "user", "content": "a"}]


@pytest.mark.parametrize("block, param", [
    ({"type": "document", "source": {"type": "base64", "media_type": "application/pdf", "data": "JVBERi0="}},
     "messages[0].content[0].source.type"),
    ({"type": "document", "source": {"type": "url", "url": "https://x.test/a.pdf"}}, "messages[0].content[0].source.type"),
    ({"type": "image", "source": {"type": "file", "file_id": "file_01"}}, "messages[0].content[0].source.type"),
    ({"type": "tool_result", "tool_use_id": "t", "content": [{"type": "image", "source": {"type": "file", "file_id": "f"}}]},
     "messages[0].content[0].content[0].source.type"),
])
def test_what_a_chat_request_cannot_carry_is_refused_at_translation(block, param):
    body = parse(_user(block))  # a native backend may take it
    with pytest.raises(BadRequest) as caught:
        MESSAGES.to_pivot(body)
    assert caught.value.param == param


def test_a_server_tool_passes_the_checks_and_is_left_out_of_a_translation():
    """Anthropic runs server tools; a chat model behind a translation could only name them."""
    body = parse(request(tools=[{"name": "f", "input_schema": {"type": "object"}},
                                {"type": "web_search_20250305", "name": "web_search"}]))
    assert [t["function"]["name"] for t in MESSAGES.to_pivot(body)["tools"]] == ["f"]
    only = parse(request(tools=[{"type": "web_search_20250305", "name": "web_search"}], tool_choice={"type": "auto"}))
    assert "tools" not in MESSAGES.to_pivot(only) and "tool_choice" not in MESSAGES.to_pivot(only)


def test_tools_become_functions_with_their_input_schema_as_parameters():
    schema = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
    body = parse(request(tools=[{"name": "get_weather", "description": "Weather now", "input_schema": schema,
                                 "cache_control": {"type": "ephemeral"}},
                                {"type": "custom", "name": "noop", "input_schema": {"type": "object"}}]))
    pivot = MESSAGES.to_pivot(body)
    assert pivot["tools"] == [
        {"type": "function", "function": {"name": "get_weather", "description": "Weather now", "parameters": schema}},
        {"type": "function", "function": {"name": "noop", "parameters": {"type": "object"}}}]
    assert "tool_choice" not in pivot and "parallel_tool_calls" not in pivot


TOOLS = [{"name": "get_weather", "input_schema": {"type": "object"}}]


@pytest.mark.parametrize("choice, expected", [
    ({"type": "auto"}, {"tool_choice": "auto"}),
    ({"type": "any"}, {"tool_choice": "required"}),
    ({"type": "none"}, {"tool_choice": "none"}),
    ({"type": "tool", "name": "get_weather"}, {"tool_choice": {"type": "function", "function": {"name": "get_weather"}}}),
    ({"type": "any", "disable_parallel_tool_use": True}, {"tool_choice": "required", "parallel_tool_calls": False}),
    ({"type": "auto", "disable_parallel_tool_use": False}, {"tool_choice": "auto"}),
])
def test_tool_choice_is_translated(choice, expected):
    pivot = MESSAGES.to_pivot(parse(request(tools=TOOLS, tool_choice=choice)))
    assert {k: pivot[k] for k in ("tool_choice", "parallel_tool_calls") if k in pivot} == expected


def test_a_tool_choice_without_tools_is_not_sent():
    assert "tool_choice" not in MESSAGES.to_pivot(parse(request(tool_choice={"type": "none"})))


def test_sampling_options_stop_sequences_user_and_stream_are_translated():
    body = parse(request(stop_sequences=["END", "###"], temperature=0.3, top_p=0.95, top_k=20,
                         metadata={"user_id": "user-42"}, stream=True, service_tier="auto"))
    assert MESSAGES.to_pivot(body) == {
        "model": "claude-local", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 256,
        "temperature": 0.3, "top_p": 0.95, "top_k": 20, "stop": ["END", "###"], "user": "user-42",
        "stream": True, "stream_options": {"include_usage": True}}


@pytest.mark.parametrize("thinking, think", [
    ({"type": "enabled", "budget_tokens": 1024}, True),
    ({"type": "disabled"}, False),
    ({"type": "adaptive"}, None),
])
def test_thinking_reaches_ollama_as_think_and_openai_servers_as_the_template_switch(thinking, think):
    pivot = MESSAGES.to_pivot(parse(request(thinking=thinking, top_k=7)))
    assert "think" not in pivot  # not an OpenAI parameter: vLLM and llama.cpp would ignore it
    assert pivot.get("chat_template_kwargs") == (None if think is None else {"enable_thinking": think})
    sent = ollama.chat_request(pivot, "qwen3:8b")
    assert sent.get("think") is think
    assert sent["options"]["top_k"] == 7 and sent["options"]["num_predict"] == 256


def test_count_tokens_asks_the_backend_for_one_token_of_the_same_prompt():
    body = parse({"model": "claude-local", "system": "Be brief.", "messages": [{"role": "user", "content": "Hi"}],
                  "tools": TOOLS, "tool_choice": {"type": "any", "disable_parallel_tool_use": True}}, COUNT_TOKENS)
    assert COUNT_TOKENS.to_pivot(body) == {
        "model": "claude-local", "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}],
        "tools": [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}],
        "max_tokens": 1}


def test_count_tokens_reports_the_backends_prompt_tokens():
    answer = {"choices": [{"index": 0, "message": {"role": "assistant", "content": "Hel"}, "finish_reason": "length"}],
              "usage": {"prompt_tokens": 42, "completion_tokens": 1, "total_tokens": 43}}
    assert COUNT_TOKENS.from_pivot(answer, CTX) == {"input_tokens": 42}
    with pytest.raises(UpstreamError):
        COUNT_TOKENS.from_pivot({"choices": answer["choices"]}, CTX)


# ---------------------------------------------------------------------------
# OpenAI chat answer -> Anthropic message
# ---------------------------------------------------------------------------

VLLM_ANSWER = {
    "id": "chatcmpl-b1", "object": "chat.completion", "created": 1700000000, "model": "qwen3",
    "choices": [{"index": 0, "message": {
        "role": "assistant", "content": "Let me check.", "refusal": None, "annotations": None, "audio": None,
        "function_call": None, "reasoning": "Need the weather tool.",
        "tool_calls": [{"id": "chatcmpl-tool-1", "type": "function",
                        "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'}}]},
        "logprobs": None, "finish_reason": "tool_calls", "stop_reason": None, "token_ids": None}],
    "service_tier": None, "system_fingerprint": None,
    "usage": {"prompt_tokens": 120, "total_tokens": 150, "completion_tokens": 30,
              "prompt_tokens_details": {"cached_tokens": 96}},
    "prompt_logprobs": None, "kv_transfer_params": None,
}


def test_a_vllm_answer_becomes_an_anthropic_message():
    out = MESSAGES.from_pivot(VLLM_ANSWER, CTX)
    assert out == {
        "model": "claude-local", "id": "msg_0123456789abcdef", "type": "message", "role": "assistant",
        "content": [{"type": "thinking", "thinking": "Need the weather tool.", "signature": ""},
                    {"type": "text", "text": "Let me check."},
                    {"type": "tool_use", "id": "chatcmpl-tool-1", "name": "get_weather", "input": {"city": "Oslo"}}],
        "stop_reason": "tool_use", "stop_sequence": None,
        "usage": {"input_tokens": 24, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 96,
                  "output_tokens": 30}}
    assert list(out) == ["model", "id", "type", "role", "content", "stop_reason", "stop_sequence", "usage"]
    Message.model_validate(out)


def test_a_llama_server_answer_with_reasoning_content_becomes_an_anthropic_message():
    answer = {"choices": [{"finish_reason": "stop", "index": 0, "message": {
        "role": "assistant", "reasoning_content": "Simple greeting.", "content": "Hello!"}}],
        "created": 1700000000, "model": "gpt-3.5-turbo", "system_fingerprint": "b6123", "object": "chat.completion",
        "usage": {"completion_tokens": 8, "prompt_tokens": 10, "total_tokens": 18}, "id": "chatcmpl-x",
        "timings": LLAMA_TIMINGS}
    out = MESSAGES.from_pivot(answer, CTX)
    assert out["content"] == [{"type": "thinking", "thinking": "Simple greeting.", "signature": ""},
                              {"type": "text", "text": "Hello!"}]
    assert (out["stop_reason"], out["usage"]["input_tokens"], out["usage"]["output_tokens"]) == ("end_turn", 10, 8)
    Message.model_validate(out)


@pytest.mark.parametrize("finish, stop_reason, calls, expected", [
    ("stop", None, False, ("end_turn", None)),
    ("length", None, False, ("max_tokens", None)),
    ("content_filter", None, False, ("refusal", None)),
    ("tool_calls", None, True, ("tool_use", None)),
    ("stop", None, True, ("tool_use", None)),  # vLLM with a forced tool choice
    ("stop", "###", False, ("stop_sequence", "###")),  # vLLM names the stop string that matched
    ("stop", 128001, False, ("end_turn", None)),  # ... or the stop token id
    (None, None, False, ("end_turn", None)),
])
def test_finish_reasons_become_stop_reasons(finish, stop_reason, calls, expected):
    message: dict[str, Any] = {"role": "assistant", "content": "x"}
    if calls:
        message["tool_calls"] = [{"id": "c", "type": "function", "function": {"name": "f", "arguments": "{}"}}]
    out = MESSAGES.from_pivot({"choices": [{"index": 0, "message": message, "finish_reason": finish,
                                            "stop_reason": stop_reason}]}, CTX)
    assert (out["stop_reason"], out["stop_sequence"]) == expected
    Message.model_validate(out)


def test_an_answer_without_usage_reports_zero_tokens_and_an_empty_one_has_no_blocks():
    out = MESSAGES.from_pivot({"choices": [{"index": 0, "message": {"role": "assistant", "content": ""},
                                            "finish_reason": "stop"}]}, CTX)
    assert out["content"] == []
    assert out["usage"] == {"input_tokens": 0, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0,
                            "output_tokens": 0}


@pytest.mark.parametrize("data", [
    {"choices": []},
    {"choices": [{"index": 0}]},
    {"object": "error", "message": "boom"},
    {"choices": [{"index": 0, "message": {"tool_calls": [{"function": {"name": "f", "arguments": '{"a": '}}]}}]},
    {"choices": [{"index": 0, "message": {"tool_calls": [{"function": {"name": "f", "arguments": "[1, 2]"}}]}}]},
    {"choices": [{"index": 0, "message": {"tool_calls": [{"function": {"arguments": "{}"}}]}}]},
    {"choices": [{"index": 0, "message": {"tool_calls": "f()"}}]},
])
def test_a_malformed_backend_answer_is_an_upstream_error(data):
    with pytest.raises(UpstreamError):
        MESSAGES.from_pivot(data, CTX)


# ---------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------


class _Status(RouterError):
    def __init__(self, status: int) -> None:
        super().__init__("nope", status=status)


@pytest.mark.parametrize("exc, kind", [
    (BadRequest("bad"), "invalid_request_error"),
    (AuthenticationError("who"), "authentication_error"),
    (PermissionDenied("no"), "permission_error"),
    (NotFound("where"), "not_found_error"),
    (_Status(413), "request_too_large"),
    (_Status(422), "invalid_request_error"),
    (RequestRateLimited("slow down", 2.0), "rate_limit_error"),
    (RouterError("bug"), "api_error"),
    (UpstreamError("backend broke"), "api_error"),
    (NoCapableDeployment("none free"), "overloaded_error"),
    (UpstreamTimeout("slow backend"), "timeout_error"),
    (_Status(529), "overloaded_error"),
])
def test_errors_have_anthropics_shape_and_type_for_their_status(exc, kind):
    assert orjson.loads(MESSAGES.error_body(exc)) == {"type": "error", "error": {"type": kind, "message": exc.message}}
    assert MESSAGES.error_event(exc) == (b"event: error\ndata: " + orjson.dumps(
        {"type": "error", "error": {"type": kind, "message": exc.message}}) + b"\n\n")


def test_an_error_that_knows_its_request_id_carries_it_at_the_top_level():
    exc = UpstreamError("backend broke")
    exc.request_id = "req_abc"  # type: ignore[attr-defined]
    assert orjson.loads(MESSAGES.error_body(exc)) == {"type": "error", "error": {"type": "api_error",
                                                                                 "message": "backend broke"},
                                                      "request_id": "req_abc"}


@pytest.mark.parametrize("exc, sdk_error", [
    (BadRequest("max_tokens: Field required"), anthropic.BadRequestError),
    (NoCapableDeployment("none free"), anthropic.InternalServerError),
    (RequestRateLimited("slow down", 2.0), anthropic.RateLimitError),
])
async def test_the_official_client_reads_our_error_bodies(exc, sdk_error, aiohttp_server):
    async with await sdk_client(aiohttp_server, exc.status, MESSAGES.error_body(exc), "application/json") as client:
        with pytest.raises(sdk_error) as caught:
            await client.messages.create(model="claude-local", max_tokens=8,
                                         messages=[{"role": "user", "content": "x"}])
    assert caught.value.status_code == exc.status
    assert caught.value.body == orjson.loads(MESSAGES.error_body(exc))


# ---------------------------------------------------------------------------
# OpenAI chat stream -> Anthropic stream
# ---------------------------------------------------------------------------


def translate(raw: bytes, cuts: tuple[int, ...] = ()) -> tuple[list[tuple[str, dict[str, Any]]], Any]:
    t = MESSAGES.pivot_stream(CTX)
    out = run(t, raw, cuts)
    return events(out), t


def test_a_vllm_text_stream_is_anthropics_event_sequence():
    evs, t = translate(VLLM_TEXT)
    assert evs == [message_start(), PING, start(0, TEXT), delta(0, {"type": "text_delta", "text": "Hello"}),
                   delta(0, {"type": "text_delta", "text": " there!"}), stop(0), *ending("end_turn", 31, 9)]
    assert (t.finished, t.failed, t.usage) == (True, False, {"prompt_tokens": 31, "total_tokens": 40})


def test_a_vllm_tool_call_streams_its_arguments_as_they_come():
    evs, t = translate(VLLM_TOOL)
    assert evs == [message_start(), PING,
                   start(0, {"type": "tool_use", "id": "chatcmpl-tool-8e1", "name": "get_weather", "input": {}}),
                   delta(0, {"type": "input_json_delta", "partial_json": '{"city": "'}),
                   delta(0, {"type": "input_json_delta", "partial_json": "Par"}),
                   delta(0, {"type": "input_json_delta", "partial_json": 'is", "unit": "C"}'}),
                   stop(0), *ending("tool_use", 31, 9)]
    assert assemble(evs) == [{"type": "tool_use", "id": "chatcmpl-tool-8e1", "name": "get_weather",
                              "input": {"city": "Paris", "unit": "C"}}]


def test_vllm_reasoning_streams_as_a_thinking_block_before_the_text():
    evs, _ = translate(VLLM_REASONING)
    assert evs == [message_start(), PING, start(0, THINKING),
                   delta(0, {"type": "thinking_delta", "thinking": "The user"}),
                   delta(0, {"type": "thinking_delta", "thinking": " greets me."}), stop(0),
                   start(1, TEXT), delta(1, {"type": "text_delta", "text": "Hi!"}), stop(1), *ending("end_turn", 31, 9)]


def test_a_llama_server_stream_of_thinking_text_and_two_tool_calls():
    evs, t = translate(LLAMA_TEXT_TWO_TOOLS)
    assert evs == [message_start(), PING,
                   start(0, THINKING), delta(0, {"type": "thinking_delta", "thinking": "Two cities."}), stop(0),
                   start(1, TEXT), delta(1, {"type": "text_delta", "text": "Checking both."}), stop(1),
                   start(2, {"type": "tool_use", "id": "Fz8kq", "name": "get_weather", "input": {}}),
                   delta(2, {"type": "input_json_delta", "partial_json": '{"city":'}),
                   delta(2, {"type": "input_json_delta", "partial_json": '"Oslo"}'}), stop(2),
                   start(3, {"type": "tool_use", "id": "Qa1Lm", "name": "get_weather", "input": {}}),
                   delta(3, {"type": "input_json_delta", "partial_json": '{"city":"Rome"}'}), stop(3),
                   *ending("tool_use", 25, 12)]
    assert t.usage == {"prompt_tokens": 25, "total_tokens": 37}


async def test_the_official_client_builds_the_message_from_our_stream(aiohttp_server):
    message = await sdk_message(aiohttp_server, run(MESSAGES.pivot_stream(CTX), LLAMA_TEXT_TWO_TOOLS))
    assert [b.type for b in message.content] == ["thinking", "text", "tool_use", "tool_use"]
    assert (message.content[1].text, message.content[2].input, message.content[3].input) == \
        ("Checking both.", {"city": "Oslo"}, {"city": "Rome"})
    assert (message.id, message.stop_reason, message.usage.input_tokens, message.usage.output_tokens) == \
        ("msg_0123456789abcdef", "tool_use", 25, 12)


def test_the_message_ends_only_when_the_usage_after_the_finish_has_come():
    t = MESSAGES.pivot_stream(CTX)
    head = t.feed(sse(vllm_chunk({"role": "assistant", "content": ""}), vllm_chunk({"content": "Hi"}),
                      vllm_chunk({"content": ""}, "stop"), done=False))
    assert b"message_delta" not in head and not t.finished
    tail = t.feed(sse(VLLM_USAGE, done=False))
    assert [k for k, _ in events(tail)] == ["content_block_stop", "message_delta", "message_stop"]
    assert t.finished and t.feed(b"data: [DONE]\n\n") == b"" and t.close() == b""


def test_a_stream_without_usage_ends_at_done():
    evs, t = translate(sse(vllm_chunk({"content": "Hi"}), vllm_chunk({}, "length")))
    assert evs[-2:] == [("message_delta", {"type": "message_delta",
                                           "delta": {"stop_reason": "max_tokens", "stop_sequence": None},
                                           "usage": {"output_tokens": 0}}), ("message_stop", {"type": "message_stop"})]
    assert t.usage is None and not t.failed


def test_a_stream_stopped_by_a_stop_sequence_says_which():
    evs, _ = translate(sse(vllm_chunk({"content": "a"}), vllm_chunk({"content": ""}, "stop", "END"), VLLM_USAGE))
    assert evs[-2][1]["delta"] == {"stop_reason": "stop_sequence", "stop_sequence": "END"}


def test_cached_prompt_tokens_are_reported_apart():
    usage = {**VLLM_USAGE, "usage": {**VLLM_USAGE["usage"], "prompt_tokens_details": {"cached_tokens": 16}}}
    evs, t = translate(sse(vllm_chunk({"content": "a"}), vllm_chunk({}, "stop"), usage))
    assert evs[-2][1]["usage"] == {"input_tokens": 15, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 16,
                                   "output_tokens": 9}
    assert t.usage == {"prompt_tokens": 31, "total_tokens": 40}


STREAMS = {"vllm_text": VLLM_TEXT, "vllm_tool": VLLM_TOOL, "vllm_reasoning": VLLM_REASONING,
           "llama_tools": LLAMA_TEXT_TWO_TOOLS}


@pytest.mark.parametrize("name", list(STREAMS))
def test_a_stream_cut_at_any_byte_translates_the_same(name):
    raw = STREAMS[name]
    whole = run(MESSAGES.pivot_stream(CTX), raw)
    for cut in range(1, len(raw)):
        assert run(MESSAGES.pivot_stream(CTX), raw, (cut,)) == whole, cut


def test_an_error_object_mid_stream_ends_the_stream_with_an_error_event():
    raw = sse(vllm_chunk({"content": "Hel"}), {"error": {"message": "CUDA out of memory", "type": "InternalServerError",
                                                         "code": 500}}, vllm_chunk({"content": "lo"}))
    evs, t = translate(raw)
    assert [k for k, _ in evs] == ["message_start", "ping", "content_block_start", "content_block_delta", "error"]
    assert evs[-1][1]["error"]["type"] == "api_error" and "CUDA out of memory" in evs[-1][1]["error"]["message"]
    assert t.failed and t.finished and "CUDA out of memory" in t.error


def test_an_error_before_any_output_yields_only_the_error_so_the_router_can_fall_back():
    t = MESSAGES.pivot_stream(CTX)
    out = t.feed(sse({"error": {"message": "model is loading"}}, done=False))
    assert [k for k, _ in events(out)] == ["error"]
    assert t.failed


@pytest.mark.parametrize("raw, why", [
    (b'data: {"choices": [{"index": 0, "delta": {"content": "a"}}]}\n\ndata: <html>\n\n', "not JSON"),
    (b'data: {"choices": [{"index": 0, "delta": {"content": "a"}}]}\n\ndata: [1, 2]\n\n', "not a JSON object"),
    (b'data: {"choices": [{"index": 0, "delta": {"content": "a"}}]}\n\ndata: {"choices": ["x"]}\n\n', "unexpected shape"),
    (sse(vllm_chunk({"tool_calls": [{"index": "0", "function": {"name": "f"}}]})), "unexpected shape"),
    (sse(vllm_chunk({"content": "Hi"})), "without a finish_reason"),
    (sse(vllm_chunk({"content": "Hi"}), done=False), "before it finished"),
    (b"", "before it finished"),
])
def test_a_broken_or_early_ended_stream_fails_with_an_error_event(raw, why):
    evs, t = translate(raw)
    assert evs[-1][0] == "error" and t.failed and why in t.error
    assert "message_stop" not in [k for k, _ in evs]


def test_a_stream_whose_done_was_lost_after_the_finish_still_completes():
    evs, t = translate(sse(vllm_chunk({"content": "Hi"}), vllm_chunk({}, "stop"), done=False))
    assert evs[-1][0] == "message_stop" and not t.failed


def test_arguments_for_a_tool_call_after_the_next_began_fail_rather_than_get_lost():
    raw = sse(vllm_chunk({"tool_calls": [{"index": 0, "id": "a", "function": {"name": "f", "arguments": "{"}}]}),
              vllm_chunk({"tool_calls": [{"index": 1, "id": "b", "function": {"name": "g", "arguments": "{}"}}]}),
              vllm_chunk({"tool_calls": [{"index": 0, "function": {"arguments": "}"}}]}), vllm_chunk({}, "tool_calls"))
    evs, t = translate(raw)
    assert evs[-1][0] == "error" and t.failed


# ---------------------------------------------------------------------------
# A native Anthropic stream, watched
# ---------------------------------------------------------------------------

ANTHROPIC_STREAM = b"".join(b"event: " + e.encode() + b"\ndata: " + d + b"\n\n" for e, d in [
    ("message_start", b'{"type":"message_start","message":{"model":"qwen3","id":"msg_01UodR8c3ezAK8rAfi8HAs8g",'
                      b'"type":"message","role":"assistant","content":[],"stop_reason":null,"stop_sequence":null,'
                      b'"usage":{"input_tokens":29,"cache_creation_input_tokens":0,"cache_read_input_tokens":64,'
                      b'"output_tokens":1}}}'),
    ("content_block_start", b'{"type":"content_block_start","index":0,"content_block":{"type":"thinking",'
                            b'"thinking":"","signature":""}}'),
    ("ping", b'{"type": "ping"}'),
    ("content_block_delta", b'{"type":"content_block_delta","index":0,"delta":{"type":"thinking_delta",'
                            b'"thinking":"An error message_start? No."}}'),
    ("content_block_delta", b'{"type":"content_block_delta","index":0,"delta":{"type":"signature_delta",'
                            b'"signature":"EqQBCgIYAhIM"}}'),
    ("content_block_stop", b'{"type":"content_block_stop","index":0}'),
    ("content_block_start", b'{"type":"content_block_start","index":1,"content_block":{"type":"text","text":""}}'),
    ("content_block_delta", b'{"type":"content_block_delta","index":1,"delta":{"type":"text_delta","text":"Hello"}}'),
    ("content_block_stop", b'{"type":"content_block_stop","index":1}'),
    ("content_block_start", b'{"type":"content_block_start","index":2,"content_block":{"type":"tool_use",'
                            b'"id":"toolu_01","name":"get_weather","input":{}}}'),
    ("content_block_delta", b'{"type":"content_block_delta","index":2,"delta":{"type":"input_json_delta",'
                            b'"partial_json":"{\\"city\\": \\"Oslo\\"}"}}'),
    ("content_block_stop", b'{"type":"content_block_stop","index":2}'),
    ("message_delta", b'{"type":"message_delta","delta":{"stop_reason":"tool_use","stop_sequence":null},'
                      b'"usage":{"input_tokens":29,"cache_creation_input_tokens":0,"cache_read_input_tokens":64,'
                      b'"output_tokens":41}}'),
    ("message_stop", b'{"type":"message_stop"}'),
])
ERROR_EVENT = b'event: error\ndata: {"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}\n\n'


def watch(raw: bytes, cuts: tuple[int, ...] | list[int] = ()) -> tuple[bytes, Any]:
    t = MESSAGES.watch(CTX)
    return run(t, raw, cuts), t


def test_a_native_stream_is_relayed_byte_for_byte_and_finishes_at_message_stop():
    out, t = watch(ANTHROPIC_STREAM)
    assert out == ANTHROPIC_STREAM
    assert (t.finished, t.failed) == (True, False)
    assert t.usage == {"prompt_tokens": 93, "total_tokens": 134}


async def test_the_official_client_reads_the_relayed_native_stream(aiohttp_server):
    message = await sdk_message(aiohttp_server, watch(ANTHROPIC_STREAM, (100, 700))[0])
    assert [b.type for b in message.content] == ["thinking", "text", "tool_use"]
    assert (message.content[0].signature, message.content[2].input, message.usage.output_tokens) == \
        ("EqQBCgIYAhIM", {"city": "Oslo"}, 41)


def test_a_native_stream_cut_at_any_byte_is_relayed_the_same():
    for cut in range(1, len(ANTHROPIC_STREAM)):
        out, t = watch(ANTHROPIC_STREAM, (cut,))
        assert out == ANTHROPIC_STREAM and t.finished and not t.failed, cut


def test_a_native_stream_with_crlf_line_endings_is_relayed_unchanged():
    raw = ANTHROPIC_STREAM.replace(b"\n", b"\r\n")
    for cut in (len(raw) - 1, len(raw) - 2, len(raw) - 3, len(raw) // 2):
        out, t = watch(raw, (cut,))
        assert out == raw and t.finished, cut


def test_only_whole_lines_are_relayed():
    t = MESSAGES.watch(CTX)
    assert t.feed(b"event: ping\ndata: {\"ty") == b"event: ping\n"
    assert t.feed(b"pe\": \"ping\"}\n\n") == b'data: {"type": "ping"}\n\n'


def test_what_follows_message_stop_is_not_relayed():
    out, t = watch(ANTHROPIC_STREAM + b"event: ping\ndata: {}\n\n")
    assert out == ANTHROPIC_STREAM and t.finished


def test_an_error_event_is_relayed_and_ends_the_stream_as_failed():
    cut = ANTHROPIC_STREAM.index(b"event: content_block_stop")
    raw = ANTHROPIC_STREAM[:cut] + ERROR_EVENT + ANTHROPIC_STREAM[cut:]
    for split in (0, cut + 5, cut + len(ERROR_EVENT) - 1, len(raw) - 1):
        out, t = watch(raw, (split,) if split else ())
        assert out == ANTHROPIC_STREAM[:cut] + ERROR_EVENT, split
        assert t.failed and t.finished and "Overloaded" in t.error


def test_a_native_stream_that_begins_with_an_error_fails_at_once():
    """(so the router still falls back: ``router.upstream`` checks ``failed`` before relaying)"""
    t = MESSAGES.watch(CTX)
    assert t.feed(ERROR_EVENT) == ERROR_EVENT
    assert t.failed


@pytest.mark.parametrize("upto", [b"event: content_block_stop", b'index":2,"delta', b"event: message_stop",
                                  b'{"type":"message_stop"}'])
def test_a_native_stream_that_ends_early_fails_with_an_error_event_of_its_own(upto):
    out, t = watch(ANTHROPIC_STREAM[:ANTHROPIC_STREAM.index(upto)])
    assert t.failed and "before message_stop" in t.error
    relayed, own = out[:out.index(b"event: error")], out[out.index(b"event: error"):]
    assert own == MESSAGES.error_event(UpstreamError(t.error))
    assert relayed.endswith(b"\n\n")  # the error event stands alone, whatever event was unfinished
    assert ANTHROPIC_STREAM.startswith(relayed) or ANTHROPIC_STREAM.startswith(relayed[:-1])


def test_a_native_stream_the_proxy_gives_up_on_ends_with_an_error_event_that_stands_alone():
    t = MESSAGES.watch(CTX)
    head = t.feed(ANTHROPIC_STREAM[:ANTHROPIC_STREAM.index(b"event: content_block_stop")] +
                  b'event: content_block_delta\ndata: {"type":"content_block_delta","index":0,"delta":'
                  b'{"type":"thinking_delta","thinking":"more"}}\n')
    timeout = UpstreamTimeout("the backend sent nothing for 30 s")
    tail = t.abort(timeout)
    assert tail == b"\n" + MESSAGES.error_event(timeout)
    assert events(head + tail)[-1] == ("error", {"type": "error", "error": {"type": "timeout_error",
                                                                            "message": timeout.message}})
    assert t.failed and t.close() == b"" and t.feed(b"event: ping\n") == b""


def test_a_native_line_longer_than_the_limit_fails(monkeypatch):
    monkeypatch.setattr("router.doors.anthropic.MAX_LINE", 64)
    t = MESSAGES.watch(CTX)
    out = t.feed(b"event: ping\ndata: " + b"x" * 100)
    assert out == b"event: ping\n\n" + MESSAGES.error_event(UpstreamError(t.error))
    assert t.failed and t.finished and "longer than" in t.error


def test_a_translated_line_longer_than_the_limit_fails(monkeypatch):
    monkeypatch.setattr("router.doors.base.MAX_LINE", 64)
    t = MESSAGES.pivot_stream(CTX)
    out = t.feed(sse(vllm_chunk({"content": "Hi"}), done=False)) + t.feed(b"data: " + b"x" * 100)
    assert [k for k, _ in events(out)][-1] == "error" and t.failed and "16 MiB" in t.error


# ---------------------------------------------------------------------------
# Properties
# ---------------------------------------------------------------------------

_json = st.recursive(
    st.none() | st.booleans() | st.integers(-(2 ** 53), 2 ** 53) | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12)
_ids = st.text(string.ascii_letters + string.digits + "_-", min_size=1, max_size=40)
_names = st.from_regex(r"[A-Za-z_][A-Za-z0-9_.-]{0,40}", fullmatch=True)


def _cuts(data: st.DataObject, n: int, most: int = 8) -> list[int]:
    return sorted(set(data.draw(st.lists(st.integers(0, n), max_size=most))))


def _pieces(text: str, cuts: list[int]) -> list[str]:
    bounds = [0, *cuts, len(text)]
    return [text[a:b] for a, b in zip(bounds, bounds[1:]) if b > a]


@PROPERTY
@given(tool_id=_ids, name=_names, arguments=st.dictionaries(st.text(max_size=8), _json, max_size=5), data=st.data())
@example(tool_id="toolu_01A", name="get_weather", arguments={"city": "Zürich", "days": [1, 2.5, None]}, data=None)
def test_a_tool_call_survives_anthropic_to_chat_and_back(tool_id, name, arguments, data):
    block = {"type": "tool_use", "id": tool_id, "name": name, "input": arguments}
    pivot = MESSAGES.to_pivot(parse(request(messages=[{"role": "user", "content": "go"},
                                                      {"role": "assistant", "content": [block]}])))
    call = pivot["messages"][-1]["tool_calls"][0]
    answer = {"choices": [{"index": 0, "message": {"role": "assistant", "content": None, "tool_calls": [call]},
                           "finish_reason": "tool_calls"}], "usage": {"prompt_tokens": 5, "completion_tokens": 3}}
    assert MESSAGES.from_pivot(answer, CTX)["content"] == [block]

    text = call["function"]["arguments"]
    fragments = _pieces(text, _cuts(data, len(text)) if data else [1, len(text) // 2])
    raw = sse(vllm_chunk({"role": "assistant", "content": ""}),
              vllm_chunk({"tool_calls": [{"index": 0, "id": call["id"], "type": "function",
                                          "function": {"name": call["function"]["name"], "arguments": ""}}]}),
              *(vllm_chunk({"tool_calls": [{"index": 0, "function": {"arguments": f}}]}) for f in fragments),
              vllm_chunk({}, "tool_calls"), VLLM_USAGE)
    evs, t = translate(raw, tuple(_cuts(data, len(raw))) if data else ())
    assert assemble(evs) == [block]
    assert evs[-2][1]["delta"]["stop_reason"] == "tool_use" and not t.failed


@PROPERTY
@given(text=st.text(min_size=1), data=st.data())
def test_streamed_text_cut_anywhere_reassembles(text, data):
    deltas = _pieces(text, _cuts(data, len(text)))
    raw = sse(llama_chunk({"role": "assistant", "content": None}), *(llama_chunk({"content": d}) for d in deltas),
              llama_chunk({}, "stop", usage=LLAMA_USAGE))
    evs, t = translate(raw, tuple(_cuts(data, len(raw))))
    assert assemble(evs) == [{"type": "text", "text": text}]
    assert t.finished and not t.failed


_BLOCK_TYPES = ["text", "image", "document", "tool_use", "tool_result", "thinking", "redacted_thinking", "search_result"]
_junk = _json | st.sampled_from(["", "x", 0, 1, -1, 0.5, 2, True, [], {}, "base64", "url", "text", "content", "file"])


def _mostly(valid: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """``valid`` three times in four, else junk: deep enough into a request to reach the translation."""
    return st.sampled_from([True, True, True, False]).flatmap(lambda ok: valid if ok else _junk)


_s = st.text(max_size=6)
_source = st.fixed_dictionaries({"type": _mostly(st.sampled_from(["base64", "url", "text", "content", "file"]))},
                                optional={"media_type": _mostly(st.just("image/png")), "data": _mostly(_s),
                                          "url": _mostly(_s), "content": _mostly(_s)})
_inner = st.fixed_dictionaries({"type": _mostly(st.sampled_from(["text", "image", "document"]))},
                               optional={"text": _mostly(_s), "source": _mostly(_source)})
_block = st.fixed_dictionaries({"type": _mostly(st.sampled_from(_BLOCK_TYPES))}, optional={
    "text": _mostly(_s), "source": _mostly(_source), "id": _mostly(_s), "name": _mostly(_s),
    "input": _mostly(st.dictionaries(_s, _json, max_size=3)), "tool_use_id": _mostly(_s),
    "content": _mostly(_s | st.lists(_inner, max_size=3)), "is_error": _mostly(st.booleans()),
    "thinking": _mostly(_s), "signature": _mostly(_s), "data": _mostly(_s)})
_message = st.fixed_dictionaries({"role": _mostly(st.sampled_from(["user", "assistant", "system", "ctx"])),
                                  "content": _mostly(_s | st.lists(_block, max_size=4))})
_tool = st.fixed_dictionaries({"name": _mostly(_s)}, optional={
    "type": _mostly(st.sampled_from(["custom", "web_search_20250305"])), "description": _mostly(_s),
    "input_schema": _mostly(st.dictionaries(_s, _json, max_size=2))})
_bodies = st.fixed_dictionaries({
    "model": _mostly(st.just("m")), "max_tokens": _mostly(st.integers(1, 5)),
    "messages": _mostly(st.lists(_message, min_size=1, max_size=4))}, optional={
    "system": _mostly(_s | st.lists(st.fixed_dictionaries({"type": _mostly(st.just("text")), "text": _mostly(_s)}))),
    "tools": _mostly(st.lists(_tool, max_size=3)),
    "tool_choice": _mostly(st.fixed_dictionaries({"type": _mostly(st.sampled_from(["auto", "any", "tool", "none"]))},
                                                 optional={"name": _mostly(_s),
                                                           "disable_parallel_tool_use": _mostly(st.booleans())})),
    "stop_sequences": _mostly(st.lists(_s)), "temperature": _mostly(st.floats(0, 1)), "top_p": _mostly(st.floats(0, 1)),
    "top_k": _mostly(st.integers(0, 50)), "stream": _mostly(st.booleans()),
    "metadata": _mostly(st.fixed_dictionaries({}, optional={"user_id": _mostly(_s)})),
    "thinking": _mostly(st.fixed_dictionaries({"type": _mostly(st.sampled_from(["enabled", "disabled", "adaptive"]))},
                                              optional={"budget_tokens": _mostly(st.integers(1, 4096))}))})


@PROPERTY
@given(body=_bodies | _json, door=st.sampled_from([MESSAGES, COUNT_TOKENS]))
def test_no_request_makes_the_checks_or_the_translation_raise_anything_but_bad_request(body, door):
    try:
        parsed = door.parse(orjson.dumps(body), LIMITS)
        pivot = door.to_pivot(parsed)
    except BadRequest as exc:
        assert exc.status == 400
        return
    assert pivot["messages"] and all(m["role"] in ("system", "user", "assistant", "tool") for m in pivot["messages"])
    orjson.dumps(pivot)


_chunk_objects = st.lists(st.one_of(
    st.builds(vllm_chunk, st.fixed_dictionaries({}, optional={
        "content": _junk, "reasoning": _junk, "reasoning_content": _junk,
        "tool_calls": st.lists(st.fixed_dictionaries({"index": st.integers(0, 2) | _junk}, optional={
            "id": _junk, "function": st.fixed_dictionaries({}, optional={"name": _junk, "arguments": _junk})}),
            max_size=2) | _junk}), st.sampled_from([None, "stop", "length", "tool_calls"]) | _junk),
    st.just(VLLM_USAGE), st.just({"error": {"message": "boom"}}), _json), max_size=8)


@PROPERTY
@given(objs=_chunk_objects, done=st.booleans(), data=st.data())
def test_whatever_a_backend_streams_the_client_gets_events_that_end_in_message_stop_or_an_error(objs, done, data):
    raw = b"".join(b"data: " + orjson.dumps(o) + b"\n\n" for o in objs) + (b"data: [DONE]\n\n" if done else b"")
    evs, t = translate(raw, tuple(_cuts(data, len(raw))))
    assert t.finished and evs[-1][0] in ("message_stop", "error")
    assert (evs[-1][0] == "error") == t.failed
    assert [k for k, _ in evs].count("message_start") <= 1


_WATCH_LINES = [*ANTHROPIC_STREAM.split(b"\n"), *ERROR_EVENT.split(b"\n"), b"event: message_start", b"event: error",
                b'data: {"type":"message_start","message":"x"}', b'data: {"type":"message_start","message":{"usage":7}}',
                b'data: {"type":"message_delta","usage":{"output_tokens":"5"}}', b'data: {"type":"error","error":"x"}',
                b"data: not json", b'data: {"usage":{"input_tokens":3}}', b": comment", b"\r"]


@PROPERTY
@given(raw=st.binary(max_size=300) | st.lists(st.sampled_from(_WATCH_LINES), max_size=16).map(b"\n".join),
       data=st.data())
def test_whatever_a_native_backend_streams_watch_relays_a_prefix_of_it_and_ends_it(raw, data):
    out, t = watch(raw, _cuts(data, len(raw)))
    assert t.finished
    own = MESSAGES.error_event(UpstreamError(t.error)) if t.failed else b""
    relayed = out[:-len(own)] if own and out.endswith(own) else out
    # what came from upstream, plus at most the line ending that closes its last event
    assert any(raw.startswith(relayed[:len(relayed) - k]) for k in (0, 1, 2))
    assert t.failed or b"message_stop" in relayed


@pytest.mark.parametrize("first", [
    b'data: {"error": {"message": "CUDA out of memory", "type": "InternalServerError"}}\n\n',
    b'data: {"error": "model runner has unexpectedly stopped"}\n\n',
])
def test_watch_fails_on_an_openai_shaped_error_a_native_server_writes_first(first):
    """A server's middleware may write an OpenAI error object into an Anthropic stream: the
    stream failed before any output, so the router may still fall back (found by the tester)."""
    watch = MESSAGES.watch(Context("m", "msg_1", 0))
    watch.feed(first)
    assert watch.failed and watch.finished
    assert "out of memory" in watch.error or "unexpectedly stopped" in watch.error
