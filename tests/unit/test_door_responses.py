"""The OpenAI Responses front door: request checks, Responses ⇄ chat translation both
ways (whole answers and streams), and the relay of a native Responses stream.

Every Response object is checked with openai-python's ``Response`` model and every stream
event with its model in the ``ResponseStreamEvent`` union: what the official client parses
is what a user of it sees. The chat streams are shaped as vLLM and llama-server write them.
"""

from __future__ import annotations

import json
import os
import re
import typing

import orjson
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from openai.types.responses import Response, ResponseStreamEvent

from router.config import Limits
from router.doors.base import Door
from router.doors.responses import RESPONSES, Responses, ResponsesContext
from router.errors import BadRequest, UpstreamError, UpstreamRateLimited, UpstreamTimeout
from router.providers.base import Context
from router.validate import validate

FUZZ = settings(max_examples=200, deadline=None, derandomize=bool(os.environ.get("CI")),
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
CTX = Context(model="general_chat", id="resp_abc123", created=1700000000)
LIMITS = Limits()
# openai-python's model of each stream event, by its type: the union's members, told apart by their literal type
EVENTS = {typing.get_args(m.model_fields["type"].annotation)[0]: m
          for m in typing.get_args(typing.get_args(ResponseStreamEvent)[0])}


# ---------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------


def events_of(raw: bytes) -> list[tuple[str, dict]]:
    """The (event name, data) pairs an SSE client dispatches (HTML spec: any line ending,
    an event ends at a blank line; one the stream ends inside is not dispatched)."""
    out, name, data = [], "", []
    for line in re.split(r"\r\n|\r|\n", raw.decode("utf-8"))[:-1]:
        if line == "":
            if data:
                out.append((name, json.loads("\n".join(data))))
            name, data = "", []
        elif line.startswith("event:"):
            name = line[6:].strip()
        elif line.startswith("data:"):
            data.append(line[5:].lstrip(" ") if line[5:6] == " " else line[5:])
    return out


def checked(raw: bytes) -> list[dict]:
    """The events, each named as its type, valid for openai-python, numbered 0, 1, 2, ..."""
    events = events_of(raw)
    for name, obj in events:
        assert name == obj["type"], (name, obj)
        EVENTS[name].model_validate(obj)
    assert [obj["sequence_number"] for _, obj in events] == list(range(len(events)))
    return [obj for _, obj in events]


def types(events: list[dict]) -> list[str]:
    return [e["type"] for e in events]


def run(translator, pieces: list[bytes]) -> bytes:
    out = b"".join(translator.feed(p) for p in pieces)
    return out + translator.close()


def pivot(raw: bytes | list[bytes], ctx: Context = CTX):
    translator = RESPONSES.pivot_stream(ctx)
    out = run(translator, [raw] if isinstance(raw, bytes) else raw)
    return out, translator


def splits(raw: bytes) -> list[list[bytes]]:
    """Every way to cut ``raw`` in two, and into single bytes."""
    return [[raw[:i], raw[i:]] for i in range(1, len(raw))] + [[raw[i:i + 1] for i in range(len(raw))]]


def cut(raw: bytes, positions: list[int]) -> list[bytes]:
    edges = [0, *sorted({p % (len(raw) + 1) for p in positions}), len(raw)]
    return [raw[a:b] for a, b in zip(edges, edges[1:]) if b > a]


# A chat stream as vLLM writes it (role chunk with empty content, usage after the finish chunk when
# stream_options.include_usage is set) and as llama-server writes it (content null in the role chunk,
# tool call id and name first, then argument pieces; usage and timings on its own last chunk).
def vllm(*deltas: dict, finish: str = "stop", usage: dict | None = None, nl: bytes = b"\n") -> bytes:
    base = {"id": "chatcmpl-9f2", "object": "chat.completion.chunk", "created": 1, "model": "Qwen/Qwen3-8B"}

    def chunk(choices, **extra) -> bytes:
        return b"data: " + orjson.dumps({**base, "choices": choices, **extra}) + nl + nl

    out = [chunk([{"index": 0, "delta": {"role": "assistant", "content": ""}, "logprobs": None, "finish_reason": None}])]
    out += [chunk([{"index": 0, "delta": d, "logprobs": None, "finish_reason": None}]) for d in deltas]
    out.append(chunk([{"index": 0, "delta": {"content": ""}, "logprobs": None, "finish_reason": finish,
                       "stop_reason": None}]))
    if usage is not None:
        out.append(chunk([], usage=usage))
    return b"".join(out) + b"data: [DONE]" + nl + nl


def llama(*deltas: dict, finish: str = "stop", usage: dict | None = None) -> bytes:
    def chunk(delta, finish_reason=None, **extra) -> bytes:
        obj = {"choices": [{"finish_reason": finish_reason, "index": 0, "delta": delta}], "created": 1,
               "id": "chatcmpl-Xy", "model": "gpt-3.5-turbo", "system_fingerprint": "b5000-abc",
               "object": "chat.completion.chunk", **extra}
        return b"data: " + orjson.dumps(obj) + b"\n\n"

    out = [chunk({"role": "assistant", "content": None})] + [chunk(d) for d in deltas]
    out.append(chunk({}, finish, **({"usage": usage, "timings": {"predicted_n": 3}} if usage else {})))
    return b"".join(out) + b"data: [DONE]\n\n"


USAGE = {"prompt_tokens": 21, "completion_tokens": 9, "total_tokens": 30,
         "prompt_tokens_details": {"cached_tokens": 16}}


def call_delta(index: int, call_id: str | None = None, name: str | None = None, args: str | None = None) -> dict:
    fn = {k: v for k, v in (("name", name), ("arguments", args)) if v is not None}
    call = {"index": index, **({"id": call_id, "type": "function"} if call_id else {}), "function": fn}
    return {"tool_calls": [call]}


# ---------------------------------------------------------------------------
# The door
# ---------------------------------------------------------------------------


def test_the_door_names_its_dialect_and_paths():
    door: Door = RESPONSES
    assert isinstance(door, Responses)
    assert (door.name, door.pivot, door.native_path, door.stream_type, door.id_prefix) == \
        ("responses", "chat", "/v1/responses", "text/event-stream; charset=utf-8", "resp_")


def test_stream_only_when_asked_for_exactly():
    assert RESPONSES.stream({"stream": True}) is True
    assert RESPONSES.stream({}) is False and RESPONSES.stream({"stream": "true"}) is False


def test_native_request_sends_the_body_unchanged_but_the_model():
    body = RESPONSES.parse(b'{"model":"general","input":"hi","store":false,"x_vendor":{"a":1}}', LIMITS)
    out = RESPONSES.native_request(body, None, "qwen3:8b")  # type: ignore[arg-type]
    assert out == b'{"model":"qwen3:8b","input":"hi","store":false,"x_vendor":{"a":1}}'


def test_check_native_passes_an_answer_and_refuses_errors():
    ok = b'{"id":"resp_1","object":"response","status":"completed","output":[]}'
    assert RESPONSES.check_native(ok, "ollama") is ok
    for raw, words in [(b"<html>502</html>", "not a JSON object"),
                       (b'{"error":{"message":"model not loaded"}}', "model not loaded"),
                       (b' {"error": "boom"}', "boom"),
                       (b'{"id":"resp_1","status":"failed","error":{"code":"server_error","message":"oom"}}', "oom")]:
        with pytest.raises(UpstreamError, match=words):
            RESPONSES.check_native(raw, "vllm")


def test_error_body_is_openais_error_object():
    exc = BadRequest("nope", param="store")
    assert orjson.loads(RESPONSES.error_body(exc)) == \
        {"error": {"message": "nope", "type": "invalid_request_error", "param": "store", "code": None}}


def test_error_event_is_the_apis_error_event():
    raw = RESPONSES.error_event(UpstreamTimeout("vllm timed out"))
    assert raw.startswith(b"event: error\ndata: ") and raw.endswith(b"\n\n")
    [(name, obj)] = events_of(raw)
    assert obj == {"type": "error", "code": "upstream_timeout", "message": "vllm timed out", "param": None,
                   "sequence_number": 0}
    EVENTS["error"].model_validate(obj)


# ---------------------------------------------------------------------------
# Request checks
# ---------------------------------------------------------------------------

_MSG = {"role": "user", "content": "hi"}
REFUSED = [
    ({"input": "hi"}, "model", "model"),
    ({"model": 5, "input": "hi"}, "model", "string"),
    ({"model": "m"}, "input", "input is required"),
    ({"model": "m", "input": []}, "input", "non-empty"),
    ({"model": "m", "input": 5}, "input", "input"),
    ({"model": "m", "input": [5]}, "input[0]", "object"),
    ({"model": "m", "input": [{"content": "x"}]}, "input[0].type", "must be a non-empty string"),
    ({"model": "m", "input": [{"type": ""}]}, "input[0].type", "must be a non-empty string"),
    ({"model": "m", "input": [{"role": "tool", "content": "x"}]}, "input[0].role", "user, assistant, system, developer"),
    ({"model": "m", "input": [{"role": "user", "content": 5}]}, "input[0].content", "string or an array"),
    ({"model": "m", "input": [{"role": "user", "content": [{"type": "input_text"}]}]}, "input[0].content[0].text", "string"),
    ({"model": "m", "input": [_MSG, {"role": "user", "content": [{"type": "input_image", "file_id": "file-1"}]}]},
     "input[1].content[0].file_id", "keeps no files"),
    ({"model": "m", "input": [{"role": "user", "content": [{"type": "input_image"}]}]}, "input[0].content[0].image_url", "URL"),
    ({"model": "m", "input": [{"type": "function_call", "name": "f", "arguments": "{}"}]}, "input[0].call_id", "non-empty"),
    ({"model": "m", "input": [{"type": "function_call", "call_id": "c", "arguments": "{}"}]}, "input[0].name", "non-empty"),
    ({"model": "m", "input": [{"type": "function_call", "call_id": "c", "name": "f", "arguments": {}}]},
     "input[0].arguments", "string"),
    ({"model": "m", "input": [{"type": "function_call_output", "call_id": "c", "output": 5}]}, "input[0].output", "string"),
    ({"model": "m", "input": [{"type": "function_call_output", "output": "x"}]}, "input[0].call_id", "non-empty"),
    ({"model": "m", "input": [_MSG, _MSG, _MSG]}, "input", "at most 2"),
    ({"model": "m", "input": [{"type": "reasoning", "summary": []}]}, "input", "nothing to answer"),
    ({"model": "m", "input": "hi", "instructions": 5}, "instructions", "string"),
    ({"model": "m", "input": "hi", "tools": {}}, "tools", "array"),
    ({"model": "m", "input": "hi", "tools": [{"type": 5}]}, "tools[0].type", "must be a string"),
    ({"model": "m", "input": "hi", "tools": [{"type": "function"}]}, "tools[0].name", "non-empty"),
    ({"model": "m", "input": "hi", "tools": [{"type": "function", "name": "f", "parameters": []}]}, "tools[0].parameters", "object"),
    ({"model": "m", "input": "hi", "tools": [{"type": "function", "name": "f", "strict": "yes"}]}, "tools[0].strict", "boolean"),
    ({"model": "m", "input": "hi", "tool_choice": "any"}, "tool_choice", "auto"),
    ({"model": "m", "input": "hi", "tool_choice": {"type": "web_search_preview"}}, "tool_choice", "no built-in tools"),
    ({"model": "m", "input": "hi", "max_output_tokens": 0}, "max_output_tokens", ">= 1"),
    ({"model": "m", "input": "hi", "max_output_tokens": "5"}, "max_output_tokens", "integer"),
    ({"model": "m", "input": "hi", "temperature": 2.5}, "temperature", "0 to 2"),
    ({"model": "m", "input": "hi", "top_p": 1.5}, "top_p", "0 to 1"),
    ({"model": "m", "input": "hi", "stream": "yes"}, "stream", "boolean"),
    ({"model": "m", "input": "hi", "parallel_tool_calls": 1}, "parallel_tool_calls", "boolean"),
    ({"model": "m", "input": "hi", "user": 5}, "user", "string"),
    ({"model": "m", "input": "hi", "metadata": []}, "metadata", "object"),
    ({"model": "m", "input": "hi", "reasoning": "high"}, "reasoning", "object"),
    ({"model": "m", "input": "hi", "reasoning": {"effort": 1}}, "reasoning.effort", "string"),
    ({"model": "m", "input": "hi", "text": {"format": {"type": "xml"}}}, "text.format.type", "json_schema"),
    ({"model": "m", "input": "hi", "text": {"format": {"type": "json_schema", "schema": {}}}}, "text.format.name", "name"),
    ({"model": "m", "input": "hi", "text": {"format": {"type": "json_schema", "name": "x"}}}, "text.format.schema", "schema"),
    ({"model": "m", "input": "hi", "store": True}, "store", "llm-router keeps no responses: send store: false (or omit it)"),
    ({"model": "m", "input": "hi", "store": "false"}, "store", "boolean"),
    ({"model": "m", "input": "hi", "previous_response_id": "resp_1"}, "previous_response_id", "keeps no responses"),
    ({"model": "m", "input": "hi", "conversation": "conv_1"}, "conversation", "keeps no responses"),
    ({"model": "m", "input": "hi", "background": True}, "background", "background: false"),
    ({"model": "m", "input": "hi", "prompt": {"id": "pmpt_1"}}, "prompt", "keeps no prompts"),
]


@pytest.mark.parametrize(("body", "param", "words"), REFUSED, ids=[f"{p}:{w}" for _, p, w in REFUSED])
def test_parse_refuses_with_a_message_naming_the_field(body, param, words):
    with pytest.raises(BadRequest) as info:
        RESPONSES.parse(orjson.dumps(body), Limits(max_messages=2))
    assert info.value.param == param and info.value.status == 400
    assert words in info.value.message


@pytest.mark.parametrize("raw", [b"{", b"[]", b'"hi"'])
def test_parse_refuses_what_is_not_a_json_object(raw):
    with pytest.raises(BadRequest):
        RESPONSES.parse(raw, LIMITS)


def test_parse_accepts_what_clients_send_without_store_or_with_store_false():
    codex = {  # as Codex and the Agents SDK send it: store false, reasoning, tools, replayed items
        "model": "gpt-oss:20b", "instructions": "You are a coding agent.", "store": False, "stream": True,
        "input": [
            {"type": "message", "role": "developer", "content": [{"type": "input_text", "text": "be brief"}]},
            {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "list files"}]},
            {"type": "reasoning", "id": "rs_1", "summary": [], "encrypted_content": None},
            {"type": "function_call", "id": "fc_1", "call_id": "call_1", "name": "shell", "arguments": '{"cmd":"ls"}'},
            {"type": "function_call_output", "call_id": "call_1", "output": "a.py\nb.py"},
            {"id": "msg_1", "type": "message", "role": "assistant", "status": "completed",
             "content": [{"type": "output_text", "text": "Two files.", "annotations": [], "logprobs": []}]},
        ],
        "tools": [{"type": "function", "name": "shell", "description": "run", "strict": False,
                   "parameters": {"type": "object", "properties": {"cmd": {"type": "string"}}}}],
        "tool_choice": "auto", "parallel_tool_calls": False, "reasoning": {"effort": "medium", "summary": "auto"},
        "include": ["reasoning.encrypted_content"], "prompt_cache_key": "k", "text": {"verbosity": "low"},
    }
    assert RESPONSES.parse(orjson.dumps(codex), LIMITS) == codex
    for extra in ({}, {"store": None}, {"previous_response_id": None}, {"background": False}, {"tools": None}):
        assert RESPONSES.parse(orjson.dumps({"model": "m", "input": "hi", **extra}), LIMITS)


# ---------------------------------------------------------------------------
# Responses request -> chat request
# ---------------------------------------------------------------------------


def test_to_pivot_maps_a_string_input_and_every_setting():
    body = {"model": "general", "instructions": "Answer in French.", "input": "Hello",
            "max_output_tokens": 64, "temperature": 0.2, "top_p": 0.9, "parallel_tool_calls": False, "user": "u1",
            "metadata": {"k": "v"}, "reasoning": {"effort": "low"}, "stream": True,
            "tools": [{"type": "function", "name": "get_weather", "description": "Weather", "strict": True,
                       "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}],
            "tool_choice": {"type": "function", "name": "get_weather"},
            "text": {"format": {"type": "json_schema", "name": "answer", "strict": True,
                                "schema": {"type": "object", "properties": {"a": {"type": "string"}}}}}}
    assert RESPONSES.to_pivot(RESPONSES.parse(orjson.dumps(body), LIMITS)) == {
        "model": "general",
        "messages": [{"role": "system", "content": "Answer in French."}, {"role": "user", "content": "Hello"}],
        "tools": [{"type": "function", "function": {
            "name": "get_weather", "description": "Weather", "parameters": body["tools"][0]["parameters"], "strict": True}}],
        "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
        "max_tokens": 64, "temperature": 0.2, "top_p": 0.9, "parallel_tool_calls": False, "user": "u1",
        "response_format": {"type": "json_schema", "json_schema": {
            "name": "answer", "schema": body["text"]["format"]["schema"], "strict": True}},
        "reasoning_effort": "low", "stream": True, "stream_options": {"include_usage": True},
    }


def test_to_pivot_maps_every_input_item_kind():
    body = {"model": "m", "input": [
        {"role": "developer", "content": "Be terse."},
        {"type": "message", "role": "user", "content": [
            {"type": "input_text", "text": "What is in "}, {"type": "input_text", "text": "this picture?"},
            {"type": "input_image", "image_url": "data:image/png;base64,iVBORw0KGgo=", "detail": "low"},
            {"type": "input_image", "image_url": "https://example.com/cat.png", "detail": "original"}]},
        {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "A cat.", "annotations": []}]},
        {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "Weather in Paris and Rome?"}]},
        {"type": "reasoning", "id": "rs_1", "summary": [{"type": "summary_text", "text": "two calls"}]},
        {"type": "message", "role": "assistant", "content": "Checking."},
        {"type": "function_call", "call_id": "call_1", "name": "get_weather", "arguments": '{"city":"Paris"}'},
        {"type": "function_call", "id": "fc_2", "call_id": "call_2", "name": "get_weather", "arguments": '{"city":"Rome"}'},
        {"type": "function_call_output", "call_id": "call_1", "output": "18C"},
        {"type": "function_call_output", "call_id": "call_2", "output": [{"type": "input_text", "text": "21C"}]},
        {"type": "function_call", "call_id": "call_3", "name": "done", "arguments": ""},
        {"type": "message", "role": "assistant", "content": [{"type": "refusal", "refusal": "I cannot."}]},
        {"role": "system", "content": "Stay polite."},
    ]}
    paris, rome = ('{"city":"Paris"}', '{"city":"Rome"}')
    assert RESPONSES.to_pivot(RESPONSES.parse(orjson.dumps(body), LIMITS))["messages"] == [
        {"role": "system", "content": "Be terse."},  # developer: chat templates know no such role
        {"role": "user", "content": [
            {"type": "text", "text": "What is in "}, {"type": "text", "text": "this picture?"},
            {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo=", "detail": "low"}},
            {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}}]},
        {"role": "assistant", "content": "A cat."},
        {"role": "user", "content": "Weather in Paris and Rome?"},
        {"role": "assistant", "content": "Checking.", "tool_calls": [  # the calls join the turn's text
            {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": paris}},
            {"id": "call_2", "type": "function", "function": {"name": "get_weather", "arguments": rome}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "18C"},
        {"role": "tool", "tool_call_id": "call_2", "content": "21C"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_3", "type": "function", "function": {"name": "done", "arguments": ""}}]},
        {"role": "assistant", "content": "I cannot."},
        {"role": "system", "content": "Stay polite."},
    ]


def test_to_pivot_maps_json_object_and_leaves_text_and_non_streams_alone():
    out = RESPONSES.to_pivot({"model": "m", "input": "x", "text": {"format": {"type": "json_object"}}, "stream": False})
    assert out == {"model": "m", "messages": [{"role": "user", "content": "x"}], "response_format": {"type": "json_object"}}
    assert RESPONSES.to_pivot({"model": "m", "input": "x", "text": {"format": {"type": "text"}}, "tool_choice": "required"}) == \
        {"model": "m", "messages": [{"role": "user", "content": "x"}], "tool_choice": "required"}


# ---------------------------------------------------------------------------
# chat.completion -> Response
# ---------------------------------------------------------------------------


def completion(message: dict, finish: str = "stop", usage: dict | None = USAGE) -> dict:
    return {"id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": "Qwen/Qwen3-8B",
            "choices": [{"index": 0, "message": {"role": "assistant", **message}, "logprobs": None,
                         "finish_reason": finish}], **({"usage": usage} if usage else {})}


def test_from_pivot_writes_a_response_as_openai_does():
    out = RESPONSES.from_pivot(completion({"content": "Bonjour", "reasoning_content": "French, then."}), CTX)
    Response.model_validate(out)
    assert out == {
        "id": "resp_abc123", "object": "response", "created_at": 1700000000, "status": "completed",
        "background": False, "error": None, "incomplete_details": None, "model": "general_chat",
        "output": [
            {"id": "rs_abc123_0", "type": "reasoning", "summary": [],
             "content": [{"type": "reasoning_text", "text": "French, then."}], "status": "completed"},
            {"id": "msg_abc123_1", "type": "message", "status": "completed", "role": "assistant",
             "content": [{"type": "output_text", "text": "Bonjour", "annotations": [], "logprobs": []}]}],
        "instructions": None, "max_output_tokens": None, "parallel_tool_calls": True, "previous_response_id": None,
        "reasoning": None, "store": False, "temperature": None, "text": {"format": {"type": "text"}},
        "tool_choice": "auto", "tools": [], "top_p": None, "truncation": "disabled", "user": None, "metadata": {},
        "usage": {"input_tokens": 21, "input_tokens_details": {"cached_tokens": 16, "cache_write_tokens": 0},
                  "output_tokens": 9, "output_tokens_details": {"reasoning_tokens": 0}, "total_tokens": 30},
    }
    assert Response.model_validate(out).output_text == "Bonjour"


def test_from_pivot_gives_each_tool_call_as_a_function_call_item():
    calls = [{"id": "chatcmpl-tool-1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}},
             {"id": "chatcmpl-tool-2", "type": "function", "function": {"name": "get_time", "arguments": "{}"}}]
    out = RESPONSES.from_pivot(completion({"content": None, "tool_calls": calls}, "tool_calls"), CTX)
    Response.model_validate(out)
    assert out["output"] == [
        {"id": "fc_abc123_0", "type": "function_call", "status": "completed", "arguments": '{"city": "Paris"}',
         "call_id": "chatcmpl-tool-1", "name": "get_weather"},
        {"id": "fc_abc123_1", "type": "function_call", "status": "completed", "arguments": "{}",
         "call_id": "chatcmpl-tool-2", "name": "get_time"}]


def test_from_pivot_marks_a_cut_answer_incomplete_and_echoes_the_request():
    request = {"model": "general", "input": "hi", "instructions": "Be brief.", "max_output_tokens": 9,
               "temperature": 0.3, "tools": [{"type": "function", "name": "f"}], "tool_choice": "none",
               "text": {"format": {"type": "json_object"}}, "metadata": {"ticket": "7"}}
    ctx = ResponsesContext(model="general", id="resp_x", created=5, request=request)
    out = RESPONSES.from_pivot(completion({"content": '{"a":'}, "length", usage=None), ctx)
    Response.model_validate(out)
    assert out["status"] == "incomplete" and out["incomplete_details"] == {"reason": "max_output_tokens"}
    assert out["output"][0]["status"] == "incomplete" and out["usage"] is None
    assert {k: out[k] for k in ("instructions", "max_output_tokens", "temperature", "tools", "tool_choice", "text",
                                "metadata")} == \
        {"instructions": "Be brief.", "max_output_tokens": 9, "temperature": 0.3, "tools": request["tools"],
         "tool_choice": "none", "text": {"format": {"type": "json_object"}}, "metadata": {"ticket": "7"}}


def test_from_pivot_gives_an_empty_message_for_an_empty_answer():
    out = RESPONSES.from_pivot(completion({"content": ""}), CTX)
    assert [i["type"] for i in out["output"]] == ["message"] and Response.model_validate(out).output_text == ""


@pytest.mark.parametrize("data", [[], {"error": {"message": "oom"}}, {"choices": []}, {"choices": [{"message": "x"}]},
                                  completion({"tool_calls": [{"id": "c"}]})])
def test_from_pivot_refuses_what_is_not_a_chat_completion(data):
    with pytest.raises(UpstreamError):
        RESPONSES.from_pivot(data, CTX)


# ---------------------------------------------------------------------------
# chat SSE -> Responses events
# ---------------------------------------------------------------------------

TEXT = vllm({"content": "Hel"}, {"content": "lo é"}, usage={"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8})


def test_pivot_stream_of_text_is_the_event_sequence_openai_sends():
    out, translator = pivot(TEXT)
    events = checked(out)
    assert types(events) == [
        "response.created", "response.in_progress", "response.output_item.added", "response.content_part.added",
        "response.output_text.delta", "response.output_text.delta", "response.output_text.done",
        "response.content_part.done", "response.output_item.done", "response.completed"]
    assert events[0]["response"]["status"] == "in_progress" and events[0]["response"]["output"] == []
    assert events[2]["item"] == {"id": "msg_abc123_0", "type": "message", "status": "in_progress", "role": "assistant",
                                 "content": []}
    assert events[4] == {"type": "response.output_text.delta", "item_id": "msg_abc123_0", "output_index": 0,
                         "content_index": 0, "delta": "Hel", "logprobs": [], "sequence_number": 4}
    assert events[6]["text"] == "Hello é" and events[7]["part"]["text"] == "Hello é"
    final = Response.model_validate(events[-1]["response"])
    assert final.status == "completed" and final.output_text == "Hello é" and final.id == CTX.id
    assert final.usage is not None and (final.usage.input_tokens, final.usage.output_tokens) == (5, 3)
    assert translator.finished and not translator.failed
    assert translator.usage == {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8}


def test_pivot_stream_of_a_tool_call_in_fragments():
    raw = llama(call_delta(0, "tZq1", "get_weather", ""), call_delta(0, args='{"ci'), call_delta(0, args='ty":"Paris"}'),
                finish="tool_calls", usage={"prompt_tokens": 40, "completion_tokens": 12, "total_tokens": 52})
    events = checked(pivot(raw)[0])
    assert types(events) == [
        "response.created", "response.in_progress", "response.output_item.added",
        "response.function_call_arguments.delta", "response.function_call_arguments.delta",
        "response.function_call_arguments.done", "response.output_item.done", "response.completed"]
    assert events[2]["item"] == {"id": "fc_abc123_0", "type": "function_call", "status": "in_progress", "arguments": "",
                                 "call_id": "tZq1", "name": "get_weather"}
    assert [e["delta"] for e in events[3:5]] == ['{"ci', 'ty":"Paris"}']
    assert events[5]["arguments"] == events[6]["item"]["arguments"] == '{"city":"Paris"}'
    assert events[-1]["response"]["output"] == [events[6]["item"]]
    assert events[-1]["response"]["usage"]["total_tokens"] == 52


def test_pivot_stream_of_reasoning_text_and_two_tool_calls():
    raw = vllm({"reasoning_content": "User wants "}, {"reasoning_content": "two cities."}, {"content": "Checking both."},
               call_delta(0, "chatcmpl-tool-a", "get_weather"), call_delta(0, args='{"city": "Paris"}'),
               call_delta(1, "chatcmpl-tool-b", "get_weather"), call_delta(1, args='{"city": '), call_delta(1, args='"Rome"}'),
               finish="tool_calls", usage=USAGE)
    events = checked(pivot(raw)[0])
    assert types(events) == [
        "response.created", "response.in_progress",
        "response.output_item.added", "response.content_part.added", "response.reasoning_text.delta",
        "response.reasoning_text.delta", "response.reasoning_text.done", "response.content_part.done",
        "response.output_item.done",
        "response.output_item.added", "response.content_part.added", "response.output_text.delta",
        "response.output_text.done", "response.content_part.done", "response.output_item.done",
        "response.output_item.added", "response.function_call_arguments.delta", "response.function_call_arguments.done",
        "response.output_item.done",
        "response.output_item.added", "response.function_call_arguments.delta", "response.function_call_arguments.delta",
        "response.function_call_arguments.done", "response.output_item.done", "response.completed"]
    final = events[-1]["response"]
    assert [(i["type"], i["id"]) for i in final["output"]] == [
        ("reasoning", "rs_abc123_0"), ("message", "msg_abc123_1"), ("function_call", "fc_abc123_2"),
        ("function_call", "fc_abc123_3")]
    assert final["output"][0]["content"] == [{"type": "reasoning_text", "text": "User wants two cities."}]
    assert [(i["call_id"], i["arguments"]) for i in final["output"][2:]] == \
        [("chatcmpl-tool-a", '{"city": "Paris"}'), ("chatcmpl-tool-b", '{"city": "Rome"}')]
    assert [e["output_index"] for e in events if e["type"] == "response.output_item.done"] == [0, 1, 2, 3]


def test_pivot_stream_waits_for_the_usage_chunk_after_the_finish_chunk():
    finish_at = TEXT.index(b'"finish_reason":"stop"')
    head = TEXT[:TEXT.index(b"\n\n", finish_at) + 2]
    translator = RESPONSES.pivot_stream(CTX)
    first = translator.feed(head)
    assert b"response.completed" not in first and not translator.finished
    rest = translator.feed(TEXT[len(head):])
    assert translator.finished and translator.close() == b""
    assert checked(first + rest)[-1]["response"]["usage"]["total_tokens"] == 8


def test_pivot_stream_cut_by_max_tokens_is_incomplete():
    events = checked(pivot(vllm({"content": "Once upon a"}, finish="length", usage=USAGE))[0])
    assert types(events)[-2:] == ["response.output_item.done", "response.incomplete"]
    assert events[-2]["item"]["status"] == "incomplete"
    final = Response.model_validate(events[-1]["response"])
    assert final.status == "incomplete" and final.incomplete_details is not None
    assert final.incomplete_details.reason == "max_output_tokens"


def test_pivot_stream_without_output_gives_an_empty_message_as_the_whole_answer_does():
    events = checked(pivot(vllm())[0])
    assert types(events) == ["response.created", "response.in_progress", "response.output_item.added",
                             "response.content_part.added", "response.output_text.done", "response.content_part.done",
                             "response.output_item.done", "response.completed"]
    assert events[-1]["response"]["usage"] is None


def test_pivot_stream_echoes_the_request_it_answers():
    ctx = ResponsesContext(model="general", id="resp_q", created=9,
                           request={"model": "general", "input": "x", "instructions": "Hi.", "top_p": 0.5})
    events = checked(pivot(TEXT, ctx)[0])
    for e in (events[0], events[-1]):
        assert (e["response"]["instructions"], e["response"]["top_p"], e["response"]["model"]) == ("Hi.", 0.5, "general")


@pytest.mark.parametrize("raw", [TEXT, vllm(call_delta(0, "c", "f", '{"a": "日本"}'), finish="tool_calls", nl=b"\r\n")])
def test_pivot_stream_gives_the_same_bytes_for_every_split(raw):
    whole = pivot(raw)[0]
    for pieces in splits(raw):
        assert pivot(pieces)[0] == whole


def test_pivot_stream_error_mid_stream_ends_with_error_then_response_failed():
    raw = TEXT[:TEXT.index(b"data:", 300)] + b'data: {"error":{"message":"CUDA out of memory","type":"InternalServerError","code":500}}\n\n'
    out, translator = pivot(raw)
    events = checked(out)
    assert types(events)[-3:] == ["response.output_text.delta", "error", "response.failed"]
    assert events[-2]["message"] == "the backend sent an error mid-stream: CUDA out of memory"
    failed = Response.model_validate(events[-1]["response"])
    assert failed.status == "failed" and failed.error is not None and failed.error.code == "server_error"
    assert "CUDA out of memory" in failed.error.message and failed.id == CTX.id
    assert translator.failed and translator.finished and "CUDA out of memory" in translator.error


@pytest.mark.parametrize(("raw", "words"), [
    (TEXT[:TEXT.index(b"[DONE]")], "ended the stream before [DONE]"),
    (TEXT.replace(b'"finish_reason":"stop"', b'"finish_reason":null'), "without a finish_reason"),
    (TEXT.replace(b'"content":"lo \xc3\xa9"', b'"content":lo'), "malformed"),
    (b'data: {"object":"error","message":"The model does not exist.","type":"NotFoundError","code":404}\n\n', "does not exist"),
    (vllm({"content": 5}), "unexpected chunk shape"),
])
def test_pivot_stream_failures_end_with_error_then_response_failed(raw, words):
    out, translator = pivot(raw)
    events = checked(out)
    assert types(events)[-2:] == ["error", "response.failed"]
    assert words in events[-2]["message"] and translator.failed and words in translator.error
    assert translator.feed(b"data: [DONE]\n\n") == b"" and translator.close() == b""


def test_pivot_stream_abort_numbers_its_end_after_what_was_sent():
    translator = RESPONSES.pivot_stream(CTX)
    head = translator.feed(TEXT[:TEXT.index(b"data:", 300)])
    end = translator.abort(UpstreamRateLimited("vllm is rate limiting"))
    events = checked(head + end)
    assert types(events)[-2:] == ["error", "response.failed"] and events[-2]["code"] == "rate_limited"
    assert events[-1]["response"]["error"] == {"code": "rate_limit_exceeded", "message": "vllm is rate limiting"}
    assert translator.failed and translator.abort(UpstreamTimeout("x")) == b""


# ---------------------------------------------------------------------------
# A native Responses stream, relayed
# ---------------------------------------------------------------------------


def native(*events: dict, nl: bytes = b"\n") -> bytes:
    """Events as Ollama and vLLM write them: ``event: <type>`` then one data line."""
    return b"".join(b"event: " + e["type"].encode() + nl + b"data: " + orjson.dumps(e) + nl + nl for e in events)


_R = {"id": "resp_up", "object": "response", "created_at": 1, "status": "in_progress", "model": "qwen3:8b", "output": [],
      "parallel_tool_calls": True, "tool_choice": "auto", "tools": [], "usage": None}
_MSG_ITEM = {"id": "msg_1", "type": "message", "status": "completed", "role": "assistant",
             "content": [{"type": "output_text", "text": "Hi", "annotations": [], "logprobs": []}]}
HEAD = [{"type": "response.created", "response": _R, "sequence_number": 0},
        {"type": "response.in_progress", "response": _R, "sequence_number": 1},
        {"type": "response.output_item.added", "output_index": 0, "sequence_number": 2,
         "item": {**_MSG_ITEM, "status": "in_progress", "content": []}},
        {"type": "response.output_text.delta", "item_id": "msg_1", "output_index": 0, "content_index": 0,
         "delta": "Hi", "logprobs": [], "sequence_number": 3}]
COMPLETED = {"type": "response.completed", "sequence_number": 4, "response": {
    **_R, "status": "completed", "output": [_MSG_ITEM],
    "usage": {"input_tokens": 11, "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
              "output_tokens": 2, "output_tokens_details": {"reasoning_tokens": 0}, "total_tokens": 13}}}
NATIVE = native(*HEAD, COMPLETED)


def watch(pieces: list[bytes]):
    translator = RESPONSES.watch(CTX)
    return run(translator, pieces), translator


@pytest.mark.parametrize("nl", [b"\n", b"\r\n"])
def test_watch_relays_the_stream_unchanged_for_every_split(nl):
    raw = native(*HEAD, COMPLETED, nl=nl)
    for pieces in splits(raw):
        out, translator = watch(pieces)
        assert out == raw
        assert translator.finished and not translator.failed
        assert translator.usage == {"prompt_tokens": 11, "completion_tokens": 2, "total_tokens": 13}


def test_watch_stops_at_response_completed_and_closes_its_event():
    translator = RESPONSES.watch(CTX)
    # the completed event's data line arrives without the blank line that dispatches it; [DONE] follows (vLLM)
    out = translator.feed(NATIVE[:-1])
    assert translator.finished and out == NATIVE  # the blank line is ours
    assert translator.feed(b"\ndata: [DONE]\n\n") == b"" and translator.close() == b""
    assert [e["type"] for e in checked(out)][-1] == "response.completed"


def test_watch_finishes_at_response_incomplete():
    incomplete = {**COMPLETED, "type": "response.incomplete",
                  "response": {**COMPLETED["response"], "status": "incomplete",
                               "incomplete_details": {"reason": "max_output_tokens"}}}
    out, translator = watch([native(*HEAD, incomplete)])
    assert translator.finished and not translator.failed and translator.usage["total_tokens"] == 13


def test_watch_fails_on_response_failed():
    failed = {"type": "response.failed", "sequence_number": 4,
              "response": {**_R, "status": "failed", "error": {"code": "server_error", "message": "model crashed"}}}
    raw = native(*HEAD, failed)
    out, translator = watch([raw])
    assert out == raw and translator.failed and translator.finished and "model crashed" in translator.error


def test_watch_relays_an_error_event_and_the_response_failed_after_it():
    error = {"type": "error", "code": "server_is_overloaded", "message": "Overloaded", "param": None, "sequence_number": 4}
    failed = {"type": "response.failed", "sequence_number": 5,
              "response": {**_R, "status": "failed", "error": {"code": "server_error", "message": "Overloaded"}}}
    translator = RESPONSES.watch(CTX)
    first = translator.feed(native(*HEAD, error))
    assert translator.failed and not translator.finished and "Overloaded" in translator.error
    rest = translator.feed(native(failed)) + translator.close()
    assert first + rest == native(*HEAD, error, failed) and translator.finished


def test_watch_error_event_without_response_failed_gets_ours():
    error = {"type": "error", "code": "server_error", "message": "boom", "param": None, "sequence_number": 4}
    out, translator = watch([native(*HEAD, error)])
    events = checked(out)
    assert types(events)[-2:] == ["error", "response.failed"] and events[-1]["response"]["id"] == "resp_up"
    assert translator.failed and translator.finished


@pytest.mark.parametrize("end", [len(native(*HEAD)), len(native(*HEAD)) - 1, len(native(*HEAD)) - 30, 5])
def test_watch_early_end_gets_our_error_and_response_failed_numbered_after_the_backends(end):
    out, translator = watch([NATIVE[:end]])
    events = checked(out)  # every event dispatched, numbered on from the backend's
    assert translator.failed and translator.finished and "before response.completed" in translator.error
    assert types(events)[-1] in ("error", "response.failed")
    error = next(e for e in events if e["type"] == "error")
    assert error["message"] == "the backend ended the stream before response.completed"
    assert out.startswith(NATIVE[:NATIVE.rfind(b"\n", 0, end) + 1])  # whole lines relayed unchanged


def test_watch_abort_after_the_backends_events():
    translator = RESPONSES.watch(CTX)
    head = translator.feed(native(*HEAD))
    events = checked(head + translator.abort(UpstreamTimeout("ollama timed out")))
    assert types(events)[-2:] == ["error", "response.failed"] and events[-2]["code"] == "upstream_timeout"


def test_watch_numbers_its_own_events_after_deltas_it_relayed_without_reading_them():
    """Deltas arrive a chunk each and go out as they came (the fast path reads no line of
    them); an abort is still numbered after the last of them."""
    translator = RESPONSES.watch(CTX)
    head = native(*HEAD)
    out = b"".join(translator.feed(event + b"\n\n") for event in head.split(b"\n\n") if event)
    assert out == head
    events = checked(out + translator.abort(UpstreamTimeout("ollama timed out")))
    assert types(events)[-2:] == ["error", "response.failed"]


# ---------------------------------------------------------------------------
# Properties
# ---------------------------------------------------------------------------

# Text a model may write: multi-byte code points, and SSE look-alikes that must stay inside their event.
_text = st.one_of(st.text(max_size=12), st.sampled_from(
    ["é", "日本語", "😀👍🏽", "\u2028", "\r\n", "\n\n", "data: [DONE]", "event: error\ndata: {}\n\n", "\\", '"']))
_calls = st.lists(st.fixed_dictionaries({
    "call_id": st.text(st.characters(codec="ascii", exclude_categories=("Cc",)), min_size=1, max_size=12),
    "name": st.sampled_from(["get_weather", "lookup", "ünïcode_tool"]),
    "arguments": st.one_of(st.just(""), st.dictionaries(st.text(max_size=5), st.one_of(_text, st.integers()), max_size=2)
                           .map(lambda d: json.dumps(d, ensure_ascii=False)))}), min_size=1, max_size=3,
    unique_by=lambda c: c["call_id"])
_cuts = st.lists(st.integers(0, 10**6), max_size=12)


def _chat_stream(calls: list[dict], piece: int, server: str) -> bytes:
    """The calls streamed back as vLLM or llama-server would, arguments in pieces of ``piece``."""
    deltas = []
    for i, c in enumerate(calls):
        deltas.append(call_delta(i, c["call_id"], c["name"], "" if server == "llama" else None))
        deltas += [call_delta(i, args=c["arguments"][j:j + piece]) for j in range(0, len(c["arguments"]), piece)]
    maker = llama if server == "llama" else vllm
    return maker(*deltas, finish="tool_calls", usage=USAGE)


@FUZZ
@given(calls=_calls, piece=st.integers(1, 9), server=st.sampled_from(["vllm", "llama"]), cuts=_cuts)
@example(calls=[{"call_id": "c1", "name": "f", "arguments": '{"a": "\\u00e9\\n"}'}], piece=1, server="vllm", cuts=[1, 2, 3])
def test_a_function_call_survives_responses_to_chat_and_back(calls, piece, server, cuts):
    items = [{"type": "function_call", **c} for c in calls]
    body = RESPONSES.parse(orjson.dumps({"model": "m", "input": [{"role": "user", "content": "go"}, *items]}), LIMITS)
    chat = RESPONSES.to_pivot(body)
    validate("chat", chat)
    tool_calls = chat["messages"][-1]["tool_calls"]
    assert [(t["id"], t["function"]["name"], t["function"]["arguments"]) for t in tool_calls] == \
        [(c["call_id"], c["name"], c["arguments"]) for c in calls]
    want = [(c["call_id"], c["name"], c["arguments"]) for c in calls]
    # not streamed
    answer = RESPONSES.from_pivot(completion({"content": None, "tool_calls": tool_calls}, "tool_calls"), CTX)
    Response.model_validate(answer)
    assert [(i["call_id"], i["name"], i["arguments"]) for i in answer["output"]] == want
    # streamed, cut anywhere
    raw = _chat_stream(calls, piece, server)
    events = checked(pivot(cut(raw, cuts))[0])
    final = events[-1]["response"]
    assert events[-1]["type"] == "response.completed"
    assert [(i["call_id"], i["name"], i["arguments"]) for i in final["output"]] == want
    assert final["output"] == answer["output"]  # the same items, ids and all, as the whole answer


@FUZZ
@given(texts=st.lists(_text, max_size=8), server=st.sampled_from(["vllm", "llama"]), cuts=_cuts,
       crlf=st.booleans())
@example(texts=["日本語"], server="vllm", cuts=[len(vllm()) // 2 + 1, len(vllm()) // 2 + 2], crlf=False)
def test_text_reassembles_for_any_split(texts, server, cuts, crlf):
    deltas = [{"content": t} for t in texts]
    raw = llama(*deltas) if server == "llama" else vllm(*deltas, nl=b"\r\n" if crlf else b"\n")
    whole = pivot(raw)[0]
    got, translator = pivot(cut(raw, cuts))
    assert got == whole and translator.finished and not translator.failed
    events = checked(got)
    text = "".join(texts)
    assert "".join(e["delta"] for e in events if e["type"] == "response.output_text.delta") == text
    assert Response.model_validate(events[-1]["response"]).output_text == text
    assert RESPONSES.from_pivot(completion({"content": text}), CTX)["output"] == events[-1]["response"]["output"]


@FUZZ
@given(texts=st.lists(_text, max_size=4), cut_at=st.integers(0, 10**6), cuts=_cuts)
def test_a_chat_stream_cut_anywhere_ends_failed_or_whole(texts, cut_at, cuts):
    raw = vllm(*[{"content": t} for t in texts], usage=USAGE)
    whole = checked(pivot(raw)[0])
    cut_at %= len(raw)
    events = checked(pivot(cut(raw[:cut_at], cuts))[0])
    if events and events[-1]["type"] == "response.completed":  # only [DONE]'s own line ending was missing
        assert events == whole
        return
    assert types(events)[-2:] == ["error", "response.failed"]
    assert events[:-2] == whole[:len(events) - 2]


@FUZZ
@given(events=st.lists(st.sampled_from(HEAD[2:]), max_size=4), cuts=_cuts, crlf=st.booleans())
def test_watch_relays_any_stream_unchanged_for_any_split(events, cuts, crlf):
    nl = b"\r\n" if crlf else b"\n"
    raw = native(*HEAD[:2], *events, COMPLETED, nl=nl) + b"data: [DONE]" + nl + nl
    out, translator = watch(cut(raw, cuts))
    assert out == native(*HEAD[:2], *events, COMPLETED, nl=nl)
    assert translator.finished and not translator.failed and translator.usage["total_tokens"] == 13


_json = st.recursive(st.none() | st.booleans() | st.integers(-3, 3) | st.floats(allow_nan=False) | st.text(max_size=5),
                     lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
                     max_leaves=8)
_items = st.lists(st.one_of(
    _text.map(lambda t: {"role": "user", "content": t}),
    st.just({"type": "message", "role": "developer", "content": [{"type": "input_text", "text": "terse"}]}),
    st.just({"role": "user", "content": [{"type": "input_image", "image_url": "data:image/png;base64,AA", "detail": "high"},
                                         {"type": "input_text", "text": "?"}]}),
    st.just({"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "ok", "annotations": []}]}),
    st.just({"type": "function_call", "call_id": "c1", "name": "f", "arguments": "{}"}),
    st.just({"type": "function_call_output", "call_id": "c1", "output": "1"}),
    st.just({"type": "reasoning", "id": "rs_1", "summary": []})), min_size=1, max_size=5)
# A request a client may send; then some of its fields (or its items' fields) replaced by any JSON at all.
_request = st.fixed_dictionaries({"model": st.just("m"), "input": st.one_of(_text, _items)}, optional={
    "instructions": _text, "max_output_tokens": st.integers(1, 10**6), "temperature": st.floats(0, 2),
    "top_p": st.floats(0, 1), "stream": st.booleans(), "parallel_tool_calls": st.booleans(), "user": _text,
    "store": st.sampled_from([False, None]), "metadata": st.dictionaries(st.text(max_size=3), st.text(max_size=3), max_size=2),
    "tools": st.lists(st.sampled_from([{"type": "function", "name": "f"}, {"type": "function", "name": "g", "strict": True,
                                       "description": "d", "parameters": {"type": "object"}}]), max_size=2),
    "tool_choice": st.sampled_from(["auto", "none", "required", {"type": "function", "name": "f"}]),
    "text": st.sampled_from([{"format": {"type": "text"}}, {"format": {"type": "json_object"}},
                             {"format": {"type": "json_schema", "name": "x", "schema": {}, "strict": False}}]),
    "reasoning": st.sampled_from([{"effort": "low"}, {"effort": None, "summary": "auto"}]),
})
_FIELDS = ["model", "input", "instructions", "tools", "tool_choice", "max_output_tokens", "temperature", "top_p",
           "stream", "text", "store", "previous_response_id", "conversation", "background", "prompt",
           "parallel_tool_calls", "metadata", "user", "reasoning"]


@FUZZ
@given(body=_request, data=st.data())
def test_parse_raises_only_bad_request_and_what_it_accepts_translates(body, data):
    for key in data.draw(st.lists(st.sampled_from(_FIELDS), max_size=2)):
        body[key] = data.draw(_json)
    if type(body.get("input")) is list and body["input"] and type(body["input"][0]) is dict and data.draw(st.booleans()):
        item = body["input"][0] = dict(body["input"][0])
        item[data.draw(st.sampled_from(["type", "role", "content", "call_id", "name", "arguments", "output"]))] = \
            data.draw(_json)
    try:
        parsed = RESPONSES.parse(orjson.dumps(body), LIMITS)
    except BadRequest as exc:
        assert exc.param and exc.message
        return
    chat = RESPONSES.to_pivot(parsed)
    validate("chat", chat)  # a chat request the chat endpoint itself accepts
    assert RESPONSES.stream(parsed) == (chat.get("stream") is True)


def test_watch_takes_a_last_event_whose_line_ending_never_came():
    raw = NATIVE.rstrip(b"\n")  # the server closed right after response.completed's data
    out, translator = watch([raw])
    assert out == NATIVE and translator.finished and not translator.failed


@FUZZ
@given(cut_at=st.integers(0, 10**6), cuts=_cuts, crlf=st.booleans())
@example(cut_at=len(native(*HEAD)) - 30, cuts=[], crlf=False)  # inside a data line: dropped, not relayed in half
def test_watch_cut_anywhere_relays_whole_events_then_ends_failed(cut_at, cuts, crlf):
    raw = native(*HEAD, COMPLETED, nl=b"\r\n" if crlf else b"\n")
    cut_at %= len(raw)
    out, translator = watch(cut(raw[:cut_at], cuts))
    events = checked(out)
    whole = checked(raw)
    if translator.failed:  # our error, and response.failed once the backend had named its response
        ours = ["error", "response.failed"] if "response.created" in types(events) else ["error"]
        assert types(events)[-len(ours):] == ours
        assert events[:-len(ours)] == whole[:len(events) - len(ours)]
    else:
        assert events == whole and translator.finished


def test_hosted_and_client_tool_kinds_pass_natively_and_are_left_out_of_a_chat_translation():
    """Codex sends web_search (by default) and namespace tools: accepted; a chat model cannot call them."""
    from router.config import Limits
    body = RESPONSES.parse(orjson.dumps({"model": "m", "input": "hi", "tools": [
        {"type": "web_search", "external_web_access": False},
        {"type": "function", "name": "f", "parameters": {"type": "object"}},
        {"type": "namespace", "name": "multi_agent_v1", "tools": []}]}), Limits())
    assert [t["function"]["name"] for t in RESPONSES.to_pivot(body)["tools"]] == ["f"]
    only_hosted = RESPONSES.parse(orjson.dumps({"model": "m", "input": "hi", "tools": [{"type": "web_search"}]}), Limits())
    assert "tools" not in RESPONSES.to_pivot(only_hosted)


@pytest.mark.parametrize("body, param", [
    ({"model": "m", "input": [{"type": "item_reference", "id": "msg_1"}]}, "input[0].type"),
    ({"model": "m", "input": [_MSG, {"type": "custom_tool_call", "call_id": "ct", "name": "apply_patch", "input": "x"}]},
     "input[1].type"),
    ({"model": "m", "input": [{"role": "user", "content": [{"type": "input_file", "file_id": "f"}]}]},
     "input[0].content[0].type"),
])
def test_codex_item_kinds_pass_the_checks_for_a_native_server_and_are_refused_only_in_a_translation(body, param):
    """Codex sends back custom_tool_call, item_reference, ... items a Responses server wrote:
    a server that speaks Responses takes them; chat cannot say them (found by the tester)."""
    from router.config import Limits
    parsed = RESPONSES.parse(orjson.dumps(body), Limits())
    assert RESPONSES.native_request(parsed, None, "real")  # passed through as it is
    with pytest.raises(BadRequest) as info:
        RESPONSES.to_pivot(parsed)
    assert info.value.param == param and "cannot be translated to chat" in info.value.message
