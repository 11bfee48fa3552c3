"""``anthropic/`` deployments (``router.providers.anthropic``), as an OpenAI client sees them.

OpenAI chat and completions requests become the Messages requests Anthropic takes (what
LiteLLM sends, where the module docstring does not say otherwise); Messages answers and
streams come back as OpenAI answers and chunks, checked against the ``openai`` package's
own types. Streams: a recorded-shape Anthropic stream translates the same however its
bytes are cut (every single cut, hypothesis-drawn cuts, CRLF); errors mid-stream and an
early end become error events. Property: a conversation survives OpenAI -> Anthropic
(this adapter) -> OpenAI (the Anthropic front door's translation).
"""

from __future__ import annotations

import os
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from openai.types import Completion
from openai.types.chat import ChatCompletion, ChatCompletionChunk

from router.backends.base import auth_headers
from router.config import Limits
from router.domain import Deployment
from router.doors.anthropic import STOP_REASONS, check_request
from router.doors.anthropic import chat_request as door_chat_request
from router.errors import BadRequest, UpstreamError, UpstreamTimeout
from router.providers import ADAPTERS, SSE_TYPE
from router.providers import anthropic_stream
from router.providers.anthropic import DUMMY_TOOL, FINISH_REASONS, Anthropic, chat_request, messages_url
from router.providers.base import Context

PROPS = settings(max_examples=200, deadline=None, derandomize=bool(os.environ.get("CI")),
                 suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
ADAPTER = Anthropic()
DEP = Deployment(id="claude", model_name="claude", provider="anthropic", kind="anthropic",
                 upstream_model="claude-sonnet-4-5", api_base="https://api.anthropic.com")
CTX = Context(model="claude", id="chatcmpl-abc", created=1700000000)
USAGE_CTX = Context(model="claude", id="chatcmpl-abc", created=1700000000, include_usage=True)
MODEL = "claude-sonnet-4-5"
HI = [{"role": "user", "content": "Hi"}]


def sent(body: dict[str, Any], endpoint: str = "chat", dep: Deployment = DEP) -> dict[str, Any]:
    """The Messages request body the adapter sends for ``body``."""
    _url, payload = ADAPTER.upstream_request(endpoint, body, dep, MODEL)
    return orjson.loads(payload)


def chat(**extra: Any) -> dict[str, Any]:
    return {"model": "claude", "messages": HI, **extra}


def refused(body: dict[str, Any], endpoint: str = "chat") -> BadRequest:
    with pytest.raises(BadRequest) as info:
        ADAPTER.upstream_request(endpoint, body, DEP, MODEL)
    assert info.value.status == 400
    return info.value


# ---------------------------------------------------------------------------
# The adapter's frame
# ---------------------------------------------------------------------------


def test_the_adapter_is_registered_rewrites_answers_and_streams_openai_sse():
    assert type(ADAPTERS["anthropic"]) is Anthropic
    assert ADAPTER.rewrites is True and ADAPTER.stream_type == SSE_TYPE
    assert ADAPTER.is_stream("text/event-stream; charset=utf-8") and not ADAPTER.is_stream("application/json")


def test_auth_headers_carry_the_key_as_x_api_key_and_always_the_api_version():
    assert auth_headers("anthropic", "sk-ant-1") == {"x-api-key": "sk-ant-1", "anthropic-version": "2023-06-01"}
    assert auth_headers("anthropic", None) == {"anthropic-version": "2023-06-01"}
    assert auth_headers("anthropic", "") == {"anthropic-version": "2023-06-01"}


@pytest.mark.parametrize("api_base, url", [
    ("https://api.anthropic.com", "https://api.anthropic.com/v1/messages"),
    ("https://api.anthropic.com/", "https://api.anthropic.com/v1/messages"),
    ("https://api.anthropic.com/v1/messages", "https://api.anthropic.com/v1/messages"),
    ("https://api.anthropic.com/v1", "https://api.anthropic.com/v1/messages"),
    ("https://gateway.example/anthropic", "https://gateway.example/anthropic/v1/messages"),
    ("http://127.0.0.1:9000", "http://127.0.0.1:9000/v1/messages"),
])
def test_the_messages_url_hangs_off_the_api_base_as_litellm_builds_it(api_base, url):
    assert messages_url(api_base) == url
    dep = Deployment(id="c", model_name="c", provider="anthropic", kind="anthropic", upstream_model="c", api_base=api_base)
    assert ADAPTER.upstream_request("chat", chat(), dep, MODEL)[0] == url


def test_embeddings_are_refused_with_a_400():
    exc = refused({"model": "claude", "input": "hi"}, "embeddings")
    assert exc.message == "anthropic does not serve embeddings"


# ---------------------------------------------------------------------------
# Requests
# ---------------------------------------------------------------------------


def test_a_plain_chat_is_a_messages_request_with_the_model_and_the_default_max_tokens():
    assert sent(chat()) == {"model": MODEL, "max_tokens": 4096, "messages": [{"role": "user", "content": "Hi"}]}


@pytest.mark.parametrize("extra, dep_max, expected", [
    ({}, None, 4096),
    ({}, 1000, 1000),
    ({"max_tokens": 50}, 1000, 50),
    ({"max_completion_tokens": 70}, None, 70),
    ({"max_completion_tokens": 70, "max_tokens": 50}, None, 70),
])
def test_max_tokens_is_the_clients_else_the_deployments_else_4096(extra, dep_max, expected):
    dep = Deployment(id="c", model_name="c", provider="anthropic", kind="anthropic", upstream_model="c",
                     api_base="https://api.anthropic.com", max_tokens=dep_max)
    assert sent(chat(**extra), dep=dep)["max_tokens"] == expected


def test_system_and_developer_messages_are_lifted_into_the_top_level_system():
    one = sent({"model": "c", "messages": [{"role": "system", "content": "Be brief."}, *HI]})
    assert one["system"] == "Be brief." and one["messages"] == [{"role": "user", "content": "Hi"}]
    several = sent({"model": "c", "messages": [
        {"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
        {"role": "developer", "content": [{"type": "text", "text": "Answer in French."}]},
        {"role": "assistant", "content": "Salut"}, {"role": "user", "content": "Encore"}]})
    assert several["system"] == [{"type": "text", "text": "Be brief."}, {"type": "text", "text": "Answer in French."}]
    assert [m["role"] for m in several["messages"]] == ["user", "assistant", "user"]


def test_cache_control_on_a_part_or_a_message_is_kept():
    body = sent({"model": "c", "messages": [
        {"role": "system", "content": [{"type": "text", "text": "Long rules", "cache_control": {"type": "ephemeral"}}]},
        {"role": "user", "content": "Hi", "cache_control": {"type": "ephemeral"}}]})
    assert body["system"] == [{"type": "text", "text": "Long rules", "cache_control": {"type": "ephemeral"}}]
    assert body["messages"] == [{"role": "user", "content": [
        {"type": "text", "text": "Hi", "cache_control": {"type": "ephemeral"}}]}]


def test_empty_system_texts_and_empty_messages_are_left_out():
    body = sent({"model": "c", "messages": [{"role": "system", "content": ""}, {"role": "user", "content": "Hi"},
                                            {"role": "assistant", "content": ""}, {"role": "user", "content": "Again"}]})
    assert "system" not in body
    assert body["messages"] == [{"role": "user", "content": [{"type": "text", "text": "Hi"},
                                                             {"type": "text", "text": "Again"}]}]


def test_a_tool_conversation_becomes_tool_use_and_tool_result_blocks():
    body = sent({"model": "c", "tools": [{"type": "function", "function": {
        "name": "get_weather", "description": "Weather for a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}], "messages": [
        {"role": "user", "content": "Weather in Paris and Rome?"},
        {"role": "assistant", "content": "Checking.", "tool_calls": [
            {"id": "toolu_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}},
            {"id": "toolu_2", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Rome"}'}}]},
        {"role": "tool", "tool_call_id": "toolu_1", "content": "sunny"},
        {"role": "tool", "tool_call_id": "toolu_2", "content": [{"type": "text", "text": "rain"}]},
        {"role": "user", "content": "And tomorrow?"}]})
    assert body["tools"] == [{"name": "get_weather", "description": "Weather for a city",
                              "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}}}]
    assert body["messages"] == [
        {"role": "user", "content": "Weather in Paris and Rome?"},
        {"role": "assistant", "content": [
            {"type": "text", "text": "Checking."},
            {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Paris"}},
            {"type": "tool_use", "id": "toolu_2", "name": "get_weather", "input": {"city": "Rome"}}]},
        {"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": "toolu_1", "content": "sunny"},
            {"type": "tool_result", "tool_use_id": "toolu_2", "content": [{"type": "text", "text": "rain"}]},
            {"type": "text", "text": "And tomorrow?"}]}]


def test_tool_results_lead_the_user_turn_even_after_a_user_text():
    body = sent({"model": "c", "messages": [
        {"role": "user", "content": "Go"},
        {"role": "assistant", "tool_calls": [{"id": "t1", "type": "function", "function": {"name": "f", "arguments": ""}}]},
        {"role": "user", "content": "(while you work)"}, {"role": "tool", "tool_call_id": "t1", "content": "done"}]})
    assert body["messages"][1]["content"] == [{"type": "tool_use", "id": "t1", "name": "f", "input": {}}]
    assert [b["type"] for b in body["messages"][2]["content"]] == ["tool_result", "text"]


def test_a_tool_history_without_tools_gets_litellms_dummy_tool_and_no_tool_choice():
    body = sent({"model": "c", "tool_choice": "auto", "messages": [
        {"role": "user", "content": "Go"},
        {"role": "assistant", "tool_calls": [{"id": "t1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "t1", "content": "done"}]})
    assert body["tools"] == [DUMMY_TOOL] and body["tool_choice"] == {"type": "auto"}
    assert "tools" not in sent(chat(tool_choice="auto")) and "tool_choice" not in sent(chat(tool_choice="auto"))


FN = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]


@pytest.mark.parametrize("choice, parallel, expected", [
    ("auto", None, {"type": "auto"}),
    ("required", None, {"type": "any"}),
    ("none", None, {"type": "none"}),
    ({"type": "function", "function": {"name": "f"}}, None, {"type": "tool", "name": "f"}),
    ("required", False, {"type": "any", "disable_parallel_tool_use": True}),
    (None, False, {"type": "auto", "disable_parallel_tool_use": True}),
    (None, True, {"type": "auto", "disable_parallel_tool_use": False}),
    ("none", False, {"type": "none"}),
    (None, None, None),
])
def test_tool_choice_and_parallel_tool_calls_are_translated_as_litellm_does(choice, parallel, expected):
    body = sent(chat(tools=FN, tool_choice=choice, parallel_tool_calls=parallel))
    assert body.get("tool_choice") == expected


def test_a_tool_already_in_anthropics_shape_passes_and_an_empty_schema_is_an_object():
    native = {"name": "g", "input_schema": {"type": "object"}, "cache_control": {"type": "ephemeral"}}
    body = sent(chat(tools=[native, {"type": "function", "function": {"name": "h"}}]))
    assert body["tools"] == [native, {"name": "h", "input_schema": {"type": "object", "properties": {}}}]


def test_images_become_base64_or_url_sources_and_a_pdf_a_document():
    body = sent({"model": "c", "messages": [{"role": "user", "content": [
        {"type": "text", "text": "What is this?"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}},
        {"type": "image_url", "image_url": {"url": "https://example.com/cat.jpg"}},
        {"type": "file", "file": {"file_data": "data:application/pdf;base64,JVBERi0="}}]}]})
    assert body["messages"][0]["content"] == [
        {"type": "text", "text": "What is this?"},
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}},
        {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.jpg"}},
        {"type": "document", "source": {"type": "base64", "media_type": "application/pdf", "data": "JVBERi0="}}]


@pytest.mark.parametrize("stop, expected", [("END", ["END"]), (["a", "b"], ["a", "b"]), ([], None), (None, None)])
def test_stop_becomes_stop_sequences(stop, expected):
    assert sent(chat(stop=stop)).get("stop_sequences") == expected


def test_sampling_options_user_and_stream_pass_and_openai_only_hints_are_dropped():
    body = sent(chat(temperature=0.3, top_p=0.9, top_k=40, user="alice-42", stream=True,
                     stream_options={"include_usage": True}, presence_penalty=0.5, frequency_penalty=0.5, seed=7,
                     logit_bias={"1": 2}, metadata={"k": "v"}, store=True, service_tier="auto", n=1))
    assert body == {"model": MODEL, "max_tokens": 4096, "messages": HI, "temperature": 0.3, "top_p": 0.9, "top_k": 40,
                    "metadata": {"user_id": "alice-42"}, "stream": True}


@pytest.mark.parametrize("user", ["alice@example.com", "+1 (555) 123-4567"])
def test_a_user_that_is_an_email_or_a_phone_number_is_not_sent(user):
    assert "metadata" not in sent(chat(user=user))


@pytest.mark.parametrize("effort, budget, max_tokens", [("low", 1024, 4096), ("minimal", 1024, 4096),
                                                        ("medium", 2048, 4096), ("high", 4096, 4352)])
def test_reasoning_effort_turns_thinking_on_with_litellms_budgets(effort, budget, max_tokens):
    body = sent(chat(reasoning_effort=effort))
    assert body["thinking"] == {"type": "enabled", "budget_tokens": budget} and body["max_tokens"] == max_tokens
    assert sent(chat(reasoning_effort=effort, max_tokens=9000))["max_tokens"] == 9000


def test_reasoning_effort_none_means_no_thinking_and_a_thinking_object_passes():
    assert "thinking" not in sent(chat(reasoning_effort="none"))
    assert sent(chat(thinking={"type": "enabled", "budget_tokens": 3000}))["thinking"] == {
        "type": "enabled", "budget_tokens": 3000}


def test_signed_thinking_an_assistant_sends_back_leads_its_turn_and_the_last_turns_trailing_space_goes():
    thinking = {"type": "thinking", "thinking": "Let me see", "signature": "sig=="}
    body = sent({"model": "c", "messages": [*HI, {"role": "assistant", "content": "The answer is ",
                                                  "reasoning_content": "Let me see", "thinking_blocks": [thinking]}]})
    assert body["messages"][1] == {"role": "assistant", "content": [thinking, {"type": "text", "text": "The answer is"}]}


@pytest.mark.parametrize("prompt", ["Once upon a time", ["Once upon a time"]])
def test_a_completion_prompt_is_one_user_turn(prompt):
    body = sent({"model": "c", "prompt": prompt, "max_tokens": 20, "stop": ["\n"]}, "completions")
    assert body == {"model": MODEL, "max_tokens": 20, "messages": [{"role": "user", "content": "Once upon a time"}],
                    "stop_sequences": ["\n"]}


@pytest.mark.parametrize("body, param", [
    (chat(n=2), "n"),
    (chat(logprobs=True), "logprobs"),
    (chat(response_format={"type": "json_object"}), "response_format"),
    (chat(response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": {}}}), "response_format"),
    (chat(reasoning_effort="extreme"), "reasoning_effort"),
    (chat(functions=[{"name": "f"}]), "functions"),
    (chat(tools=[{"type": "web_search"}]), "tools[0]"),
    ({"model": "c", "messages": [{"role": "assistant", "tool_calls": [
        {"id": "t", "type": "function", "function": {"name": "f", "arguments": "{not json"}}]}]},
     "messages[0].tool_calls[0].function.arguments"),
    ({"model": "c", "messages": [{"role": "assistant", "tool_calls": [
        {"id": "t", "type": "function", "function": {"name": "f", "arguments": "[1, 2]"}}]}]},
     "messages[0].tool_calls[0].function.arguments"),
    ({"model": "c", "messages": [{"role": "function", "name": "f", "content": "x"}]}, "messages[0].role"),
    ({"model": "c", "messages": [{"role": "tool", "content": "x"}]}, "messages[0].tool_call_id"),
    ({"model": "c", "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "ftp://x/y"}}]}]},
     "messages[0].content[0].image_url"),
    ({"model": "c", "messages": [{"role": "user", "content": [{"type": "input_audio", "input_audio": {}}]}]},
     "messages[0].content[0].type"),
    ({"model": "c", "messages": [{"role": "system", "content": "only rules"}]}, "messages"),
])
def test_what_a_messages_request_cannot_carry_is_a_400_naming_the_field(body, param):
    assert refused(body).param == param


@pytest.mark.parametrize("body, param", [
    ({"model": "c", "prompt": ["one", "two"]}, "prompt"),
    ({"model": "c", "prompt": [1, 2, 3]}, "prompt"),
    ({"model": "c", "prompt": [[1, 2]]}, "prompt"),
    ({"model": "c", "prompt": "x", "echo": True}, "echo"),
    ({"model": "c", "prompt": "x", "suffix": "y"}, "suffix"),
    ({"model": "c", "prompt": "x", "best_of": 3}, "best_of"),
    ({"model": "c", "prompt": "x", "logprobs": 2}, "logprobs"),
])
def test_what_a_completion_cannot_ask_of_an_anthropic_model_is_a_400(body, param):
    exc = refused(body, "completions")
    assert exc.param == param
    if body["prompt"] == ["one", "two"]:
        assert "one text prompt per request" in exc.message


# ---------------------------------------------------------------------------
# Answers
# ---------------------------------------------------------------------------


def answer(content: list[dict[str, Any]], stop_reason: str | None = "end_turn", **usage: int) -> bytes:
    return orjson.dumps({"id": "msg_01XFDUDYJgAACzvnptvVoYEL", "type": "message", "role": "assistant",
                         "model": "claude-sonnet-4-5-20250929", "content": content, "stop_reason": stop_reason,
                         "stop_sequence": None, "usage": {"input_tokens": 12, "output_tokens": 6, **usage}})


def translated(raw: bytes, endpoint: str = "chat") -> dict[str, Any]:
    out = orjson.loads(ADAPTER.response_body(endpoint, raw, CTX, "anthropic"))
    (ChatCompletion if endpoint == "chat" else Completion).model_validate(out)  # the openai package reads it
    return out


def test_a_text_answer_is_a_chat_completion_with_our_id_and_model():
    out = translated(answer([{"type": "text", "text": "Hello"}, {"type": "text", "text": " there"}]))
    assert out == {"id": "chatcmpl-abc", "object": "chat.completion", "created": 1700000000, "model": "claude",
                   "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hello there"},
                                "logprobs": None, "finish_reason": "stop"}],
                   "usage": {"prompt_tokens": 12, "completion_tokens": 6, "total_tokens": 18}}


def test_tool_use_blocks_are_tool_calls_with_the_input_as_json_arguments():
    out = translated(answer([{"type": "text", "text": "Let me check."},
                             {"type": "tool_use", "id": "toolu_01A", "name": "get_weather", "input": {"city": "Paris"}}],
                            "tool_use"))
    choice = out["choices"][0]
    assert choice["finish_reason"] == "tool_calls" and choice["message"]["content"] == "Let me check."
    assert choice["message"]["tool_calls"] == [{"id": "toolu_01A", "type": "function", "function": {
        "name": "get_weather", "arguments": '{"city":"Paris"}'}}]
    only_calls = translated(answer([{"type": "tool_use", "id": "toolu_01B", "name": "f", "input": {}}], "tool_use"))
    assert only_calls["choices"][0]["message"]["content"] is None


def test_thinking_is_reasoning_content_and_the_signed_blocks_come_along():
    thinking = {"type": "thinking", "thinking": "Two and two...", "signature": "EqQB=="}
    out = translated(answer([thinking, {"type": "redacted_thinking", "data": "xyz"}, {"type": "text", "text": "4"}]))
    message = out["choices"][0]["message"]
    assert message["content"] == "4" and message["reasoning_content"] == "Two and two..."
    assert message["thinking_blocks"] == [thinking, {"type": "redacted_thinking", "data": "xyz"}]


@pytest.mark.parametrize("stop_reason, finish", [
    ("end_turn", "stop"), ("stop_sequence", "stop"), ("pause_turn", "stop"), ("max_tokens", "length"),
    ("tool_use", "tool_calls"), ("refusal", "content_filter"), ("model_context_window_exceeded", "length"),
    (None, "stop"), ("something_new", "stop")])
def test_each_stop_reason_has_its_finish_reason(stop_reason, finish):
    assert translated(answer([{"type": "text", "text": "x"}], stop_reason))["choices"][0]["finish_reason"] == finish


def test_the_stop_reasons_are_the_anthropic_doors_read_backwards():
    for openai_reason, stop_reason in STOP_REASONS.items():
        assert FINISH_REASONS[stop_reason] in (openai_reason, "tool_calls" if openai_reason == "function_call" else None)


def test_cached_and_cache_written_prompt_tokens_count_in_the_prompt_and_the_read_ones_apart():
    out = translated(answer([{"type": "text", "text": "x"}], cache_read_input_tokens=100, cache_creation_input_tokens=30))
    assert out["usage"] == {"prompt_tokens": 142, "completion_tokens": 6, "total_tokens": 148,
                            "prompt_tokens_details": {"cached_tokens": 100}}


def test_a_completion_answer_is_a_text_completion():
    out = translated(answer([{"type": "text", "text": " happily ever after."}], "max_tokens"), "completions")
    assert out["object"] == "text_completion" and out["id"] == "chatcmpl-abc"
    assert out["choices"] == [{"index": 0, "text": " happily ever after.", "logprobs": None, "finish_reason": "length"}]


@pytest.mark.parametrize("raw, why", [
    (b'{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}', "Overloaded"),
    (b"<html><body>502 Bad Gateway</body></html>", "not JSON"),
    (b"", "not JSON"),
    (b"[1, 2]", "not a JSON object"),
    (b'{"id":"chatcmpl-1","object":"chat.completion","choices":[]}', "not a Messages answer"),
    (b'{"type":"message","content":[{"type":"tool_use","input":{}}]}', "without an id"),
])
def test_a_body_that_is_not_a_messages_answer_is_an_upstream_error(raw, why):
    with pytest.raises(UpstreamError) as info:
        ADAPTER.response_body("chat", raw, CTX, "anthropic")
    assert why in info.value.message and info.value.message.startswith("anthropic")


# ---------------------------------------------------------------------------
# Streams
# ---------------------------------------------------------------------------


def event(obj: dict[str, Any], *, pad: bool = False) -> bytes:
    data = orjson.dumps(obj)
    if pad:  # the hosted API pads some events' JSON before the closing brace
        data = data[:-1] + b"    }"
    return b"event: " + obj["type"].encode() + b"\ndata: " + data + b"\n\n"


START = event({"type": "message_start", "message": {
    "model": "claude-sonnet-4-5-20250929", "id": "msg_01K2JbSUMYhez5RHoK9ZCj9U", "type": "message", "role": "assistant",
    "content": [], "stop_reason": None, "stop_sequence": None, "usage": {
        "input_tokens": 849, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0,
        "cache_creation": {"ephemeral_5m_input_tokens": 0, "ephemeral_1h_input_tokens": 0}, "output_tokens": 10,
        "service_tier": "standard"}}}, pad=True)
PING = b'event: ping\ndata: {"type": "ping"}\n\n'
# The event sequence of a hosted-API answer that writes a sentence and then calls a tool.
RECORDED = b"".join([
    START,
    event({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}, pad=True),
    PING,
    event({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Okay, let me"}}),
    event({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": " check the weather."}}),
    event({"type": "content_block_stop", "index": 0}),
    event({"type": "content_block_start", "index": 1, "content_block": {
        "type": "tool_use", "id": "toolu_01KFbKqPYSuAKujiL6mTfzYA", "name": "get_weather", "input": {}}}),
    event({"type": "content_block_delta", "index": 1, "delta": {"type": "input_json_delta", "partial_json": ""}}),
    PING,
    event({"type": "content_block_delta", "index": 1, "delta": {"type": "input_json_delta",
                                                                 "partial_json": '{"location": "San Fra'}}),
    event({"type": "content_block_delta", "index": 1, "delta": {"type": "input_json_delta",
                                                                 "partial_json": 'ncisco, CA"}'}}),
    event({"type": "content_block_stop", "index": 1}),
    event({"type": "message_delta", "delta": {"stop_reason": "tool_use", "stop_sequence": None},
           "usage": {"input_tokens": 849, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0,
                     "output_tokens": 47}}),
    event({"type": "message_stop"}),
])


def translate(raw: bytes, ctx: Context = USAGE_CTX, endpoint: str = "chat",
              cuts: list[int] | None = None) -> tuple[bytes, anthropic_stream.StreamTranslator]:
    t = ADAPTER.translator(endpoint, ctx)
    out, last = bytearray(), 0
    for cut in [*(cuts or []), len(raw)]:
        out += t.feed(raw[last:cut])
        last = cut
    return bytes(out + t.close()), t


def chunks(out: bytes) -> list[Any]:
    """The client's chunks (chat chunks checked against the openai package's type; its
    ``Completion`` type wants a finish_reason that streamed chunks have only at the end),
    and "[DONE]"."""
    found: list[Any] = []
    for frame in out.split(b"\n\n"):
        if not frame:
            continue
        assert frame.startswith(b"data: ") and b"\n" not in frame, frame
        value = frame[6:]
        if value == b"[DONE]":
            found.append("[DONE]")
            continue
        obj = orjson.loads(value)
        if obj.get("object") == "chat.completion.chunk":
            ChatCompletionChunk.model_validate(obj)
        found.append(obj)
    return found


def assembled(out: bytes) -> dict[str, Any]:
    """What a client accumulates from a chat stream."""
    text, reasoning, calls, finish, usage = "", "", {}, None, None
    for c in chunks(out):
        if c == "[DONE]" or "error" in c:
            continue
        if c.get("usage"):
            usage = c["usage"]
        for choice in c["choices"]:
            delta = choice["delta"]
            text += delta.get("content") or ""
            reasoning += delta.get("reasoning_content") or ""
            for call in delta.get("tool_calls") or ():
                entry = calls.setdefault(call["index"], {"id": None, "name": None, "arguments": ""})
                entry["id"] = call.get("id") or entry["id"]
                entry["name"] = call.get("function", {}).get("name") or entry["name"]
                entry["arguments"] += call.get("function", {}).get("arguments") or ""
            finish = choice["finish_reason"] or finish
    return {"text": text, "reasoning": reasoning, "calls": calls, "finish": finish, "usage": usage}


def test_a_recorded_stream_of_text_and_a_tool_call_is_openais_chunk_sequence():
    out, t = translate(RECORDED)
    seq = chunks(out)
    assert seq[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert seq[-1] == "[DONE]" and seq[-2]["choices"] == [] and all(c["usage"] is None for c in seq[:-2])
    assert seq[3]["choices"][0]["delta"]["tool_calls"] == [{"index": 0, "id": "toolu_01KFbKqPYSuAKujiL6mTfzYA",
                                                           "type": "function",
                                                           "function": {"name": "get_weather", "arguments": ""}}]
    assert assembled(out) == {"text": "Okay, let me check the weather.", "reasoning": "", "finish": "tool_calls",
                              "calls": {0: {"id": "toolu_01KFbKqPYSuAKujiL6mTfzYA", "name": "get_weather",
                                            "arguments": '{"location": "San Francisco, CA"}'}},
                              "usage": {"prompt_tokens": 849, "completion_tokens": 47, "total_tokens": 896,
                                        "prompt_tokens_details": {"cached_tokens": 0}}}
    assert t.finished and not t.failed
    assert t.usage == {"prompt_tokens": 849, "completion_tokens": 47, "total_tokens": 896, "cached_tokens": 0}


def test_the_usage_chunk_comes_only_when_the_client_asked_for_it():
    out, t = translate(RECORDED, CTX)
    seq = chunks(out)
    assert all("usage" not in c for c in seq[:-1]) and all(c["choices"] for c in seq[:-1])
    assert t.usage["total_tokens"] == 896  # the router counts the tokens either way


def test_a_stream_cut_at_every_byte_translates_the_same():
    whole, _ = translate(RECORDED)
    for cut in range(1, len(RECORDED)):
        assert translate(RECORDED, cuts=[cut])[0] == whole, cut


@PROPS
@given(st.lists(st.integers(0, len(RECORDED)), max_size=40))
def test_a_stream_cut_anywhere_translates_the_same(cuts):
    assert translate(RECORDED, cuts=sorted(cuts))[0] == translate(RECORDED)[0]


def test_crlf_line_endings_translate_the_same():
    assert translate(RECORDED.replace(b"\n", b"\r\n"))[0] == translate(RECORDED)[0]


def test_thinking_streams_as_reasoning_content_before_the_text():
    raw = b"".join([
        START,
        event({"type": "content_block_start", "index": 0, "content_block": {"type": "thinking", "thinking": ""}}),
        event({"type": "content_block_delta", "index": 0, "delta": {"type": "thinking_delta", "thinking": "Hmm, 2+2"}}),
        event({"type": "content_block_delta", "index": 0, "delta": {"type": "signature_delta", "signature": "EqQ=="}}),
        event({"type": "content_block_stop", "index": 0}),
        event({"type": "content_block_start", "index": 1, "content_block": {"type": "text", "text": ""}}),
        event({"type": "content_block_delta", "index": 1, "delta": {"type": "text_delta", "text": "4"}}),
        event({"type": "content_block_stop", "index": 1}),
        event({"type": "message_delta", "delta": {"stop_reason": "max_tokens", "stop_sequence": None},
               "usage": {"output_tokens": 9}}),
        event({"type": "message_stop"})])
    got = assembled(translate(raw)[0])
    assert (got["reasoning"], got["text"], got["finish"]) == ("Hmm, 2+2", "4", "length")


def test_a_completion_streams_text_completion_chunks_of_the_text_alone():
    raw = b"".join([START, event({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
                    event({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": " and"}}),
                    event({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": " so"}}),
                    event({"type": "message_delta", "delta": {"stop_reason": "end_turn"}, "usage": {"output_tokens": 2}}),
                    event({"type": "message_stop"})])
    seq = chunks(translate(raw, CTX, "completions")[0])
    assert [c["choices"] for c in seq[:-1]] == [
        [{"index": 0, "text": " and", "logprobs": None, "finish_reason": None}],
        [{"index": 0, "text": " so", "logprobs": None, "finish_reason": None}],
        [{"index": 0, "text": "", "logprobs": None, "finish_reason": "stop"}]]
    assert all(c["object"] == "text_completion" for c in seq[:-1]) and seq[-1] == "[DONE]"


OVERLOADED = event({"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}})


def test_an_error_event_mid_stream_ends_it_with_an_openai_error_event():
    head = RECORDED[:RECORDED.index(b"event: content_block_stop")]
    out, t = translate(head + OVERLOADED + event({"type": "message_stop"}))
    seq = chunks(out)
    assert seq[-1] == {"error": {"message": "the stream carried an error event: Overloaded (overloaded_error)",
                                 "type": "api_error", "param": None, "code": "overloaded_error"}}
    assert "[DONE]" not in seq and assembled(out)["text"] == "Okay, let me check the weather."
    assert t.failed and t.finished and "Overloaded" in t.error


def test_an_error_right_after_message_start_is_all_the_client_would_get_so_the_router_can_fall_back():
    t = ADAPTER.translator("chat", USAGE_CTX)
    assert t.feed(START + PING) == b""  # no output yet: the attempt is still free to fail over
    out = t.feed(OVERLOADED)
    assert t.failed and list(map(lambda c: "error" in c, chunks(out))) == [True]
    assert t.rate_limited  # the router treats it as Anthropic's 529: a rest for the deployment, a 429 if nothing else serves


def test_an_ordinary_error_event_is_not_a_rate_limit():
    t = ADAPTER.translator("chat", USAGE_CTX)
    t.feed(START + event({"type": "error", "error": {"type": "api_error", "message": "Internal"}}))
    assert t.failed and not t.rate_limited


def test_a_rate_limit_error_event_keeps_its_type():
    out, _ = translate(START + event({"type": "error", "error": {"type": "rate_limit_error", "message": "Slow down"}}))
    assert chunks(out)[-1]["error"]["type"] == "rate_limit_error"


@pytest.mark.parametrize("upto", [b"event: message_stop", b"event: message_delta", b"event: content_block_delta"])
def test_a_stream_that_ends_before_message_stop_ends_with_an_error_event_never_done(upto):
    out, t = translate(RECORDED[:RECORDED.index(upto)])
    seq = chunks(out)
    assert "[DONE]" not in seq and seq[-1]["error"]["message"] == "the stream ended before message_stop"
    assert t.failed and t.close() == b""


def test_a_last_event_without_its_blank_line_still_counts():
    out, t = translate(RECORDED[:-2])
    assert chunks(out)[-1] == "[DONE]" and t.finished and not t.failed


@pytest.mark.parametrize("bad, why", [
    (b"event: content_block_delta\ndata: {not json\n\n", "not JSON"),
    (b"data: [1]\n\n", "not a JSON object"),
    (event({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": 5}}), "unexpected shape"),
    (event({"type": "content_block_start", "index": "0", "content_block": {"type": "text"}}), "unexpected shape"),
])
def test_a_malformed_event_fails_the_stream(bad, why):
    out, t = translate(START + bad + RECORDED[len(START):])
    assert t.failed and why in t.error and "error" in chunks(out)[-1]


def test_nothing_follows_message_stop():
    out, _ = translate(RECORDED + event({"type": "content_block_delta", "index": 0,
                                         "delta": {"type": "text_delta", "text": "late"}}))
    assert chunks(out)[-1] == "[DONE]" and "late" not in assembled(out)["text"]


def test_a_line_longer_than_the_limit_fails(monkeypatch):
    monkeypatch.setattr(anthropic_stream, "MAX_LINE", 64)
    t = ADAPTER.translator("chat", CTX)
    out = t.feed(b"event: ping\ndata: " + b"x" * 100)
    assert t.failed and "longer than" in t.error and "error" in chunks(out)[-1]


def test_a_stream_the_proxy_gives_up_on_ends_with_the_proxys_error():
    t = ADAPTER.translator("chat", CTX)
    t.feed(RECORDED[:RECORDED.index(b"event: content_block_stop")])
    timeout = UpstreamTimeout("anthropic sent nothing for 30 s")
    end = ADAPTER.stream_error(timeout, t)
    assert chunks(end) == [{"error": {"message": timeout.message, "type": timeout.type, "param": None,
                                      "code": timeout.code}}]
    assert t.failed and t.finished and t.feed(b"event: ping\n") == b"" and t.close() == b""


# ---------------------------------------------------------------------------
# Property: OpenAI -> Anthropic (this adapter) -> OpenAI (the front door)
# ---------------------------------------------------------------------------

_text = st.text(min_size=1, max_size=20)
_args = st.dictionaries(st.from_regex(r"[a-z]{1,6}", fullmatch=True),
                        st.none() | st.booleans() | st.integers(-1000, 1000) | st.text(max_size=10), max_size=3)
_name = st.from_regex(r"[a-z_]{1,12}", fullmatch=True)


@st.composite
def conversations(draw: Any) -> list[dict[str, Any]]:
    """A chat as clients send one: user turns, assistant turns of text and/or tool
    calls, each call answered by a tool message, never ending with the assistant."""
    messages: list[dict[str, Any]] = []
    if draw(st.booleans()):
        messages.append({"role": draw(st.sampled_from(["system", "developer"])), "content": draw(_text)})
    messages.append({"role": "user", "content": draw(_text)})
    ids = iter(range(10 ** 6))
    for _ in range(draw(st.integers(0, 3))):
        calls = [{"id": f"toolu_{next(ids)}", "type": "function", "function": {
            "name": draw(_name), "arguments": orjson.dumps(draw(_args)).decode()}} for _ in range(draw(st.integers(0, 2)))]
        text = draw(st.none() | _text) if calls else draw(_text)
        messages.append({"role": "assistant", "content": text, **({"tool_calls": calls} if calls else {})})
        for call in calls:
            messages.append({"role": "tool", "tool_call_id": call["id"], "content": draw(st.text(max_size=20))})
        for _ in range(draw(st.integers(0 if calls else 1, 2))):
            content = draw(_text)
            messages.append({"role": "user", "content": content if draw(st.booleans()) else
                             [{"type": "text", "text": content}]})
    return messages


def flat(messages: list[dict[str, Any]]) -> tuple[str, list[tuple[Any, ...]]]:
    """The system text, and every other message cut into (role, what, ...) items."""
    system, items = [], []
    for m in messages:
        content = m.get("content")
        texts = [content] if isinstance(content, str) else [p["text"] for p in content or ()]
        if m["role"] in ("system", "developer"):
            system.extend(texts)
        elif m["role"] == "tool":
            items.append(("tool", m["tool_call_id"], content))
        else:
            items.extend((m["role"], "text", t) for t in texts if t)
            items.extend((m["role"], "call", c["id"], c["function"]["name"], orjson.loads(c["function"]["arguments"]))
                         for c in m.get("tool_calls") or ())
    return "\n".join(system), items


@PROPS
@given(conversations())
def test_a_conversation_survives_the_adapter_and_the_anthropic_doors_way_back(messages):
    names = sorted({c["function"]["name"] for m in messages for c in m.get("tool_calls") or ()})
    tools = [{"type": "function", "function": {"name": n, "parameters": {"type": "object"}}} for n in names]
    upstream = chat_request({"model": "claude", "messages": messages, **({"tools": tools} if tools else {})}, MODEL)
    check_request(upstream, Limits(), count=False)  # what Anthropic takes, as the door checks it
    back = door_chat_request(upstream)
    assert flat(back["messages"]) == flat(messages)
    assert [t["function"]["name"] for t in back.get("tools", ())] == names


_json = st.recursive(st.none() | st.booleans() | st.integers(-5, 5) | st.text(max_size=5),
                     lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
                     max_leaves=8)
def _mostly(plausible: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """Usually a value a client would send, sometimes any JSON at all."""
    return st.integers(0, 7).flatmap(lambda i: _json if i == 0 else plausible)


_part = st.fixed_dictionaries({"type": _mostly(st.sampled_from(["text", "image_url", "file", "input_audio"]))}, optional={
    "text": _mostly(st.text(max_size=5)), "cache_control": _json,
    "image_url": _mostly(st.fixed_dictionaries({"url": _mostly(st.sampled_from(
        ["data:image/png;base64,AAAA", "https://x.example/a.png", "data:,x", "ftp://x"]))})),
    "file": _mostly(st.fixed_dictionaries({"file_data": st.sampled_from(["data:application/pdf;base64,JVB=",
                                                                         "data:text/plain;base64,eA=="])}))})
_call = st.fixed_dictionaries({"id": _mostly(st.sampled_from(["t1", "t2"])), "type": st.just("function"),
                               "function": _mostly(st.fixed_dictionaries({"name": _mostly(st.sampled_from(["f", "g"])),
                                                                          "arguments": _mostly(st.sampled_from(
                                                                              ["", "{}", '{"a": 1}', "[1]", "{x"]))}))})
_message = st.fixed_dictionaries(
    {"role": _mostly(st.sampled_from(["user", "assistant", "tool", "system", "developer", "function"])),
     "content": _mostly(st.text(min_size=1, max_size=5) | st.lists(_part, min_size=1, max_size=3))},
    optional={
              "tool_calls": _mostly(st.lists(_call, max_size=2)), "tool_call_id": _mostly(st.sampled_from(["t1", "t2"])),
              "thinking_blocks": _mostly(st.just([{"type": "thinking", "thinking": "t", "signature": "s"}])),
              "cache_control": _json, "function_call": _mostly(st.none())})
_fields = {
    "n": _mostly(st.just(1)), "logprobs": _mostly(st.none()), "response_format": _mostly(st.just({"type": "text"})),
    "modalities": _mostly(st.just(["text"])), "audio": _mostly(st.none()), "functions": _mostly(st.none()),
    "tools": _mostly(st.lists(st.fixed_dictionaries({"type": st.just("function"), "function": st.fixed_dictionaries(
        {"name": st.sampled_from(["f", "g"])}, optional={"parameters": _mostly(st.just({"type": "object"})),
                                                        "description": _json})}), max_size=2)),
    "tool_choice": _mostly(st.sampled_from(["auto", "none", "required", {"type": "function", "function": {"name": "f"}}])),
    "parallel_tool_calls": _json, "stop": _mostly(st.sampled_from(["x", ["a", "b"]])), "user": _json,
    "thinking": _mostly(st.just({"type": "enabled", "budget_tokens": 2000})),
    "reasoning_effort": _mostly(st.sampled_from(["none", "low", "high"])), "max_tokens": _json,
    "max_completion_tokens": _json, "temperature": _json, "stream": _json,
    "prompt": _mostly(st.text(max_size=5) | st.lists(st.text(max_size=5), max_size=2)),
    "echo": _mostly(st.just(False)), "suffix": _mostly(st.none()), "best_of": _mostly(st.just(1))}


@PROPS
@given(st.sampled_from(["chat", "completions", "embeddings"]),
       st.fixed_dictionaries({"model": st.just("c"), "messages": _mostly(st.lists(_message, min_size=1, max_size=4)),
                              "prompt": _fields.pop("prompt")}, optional=_fields))
def test_no_request_makes_the_translation_raise_anything_but_bad_request(endpoint, body):
    try:
        url, payload = ADAPTER.upstream_request(endpoint, body, DEP, MODEL)
    except BadRequest:
        return
    assert url.endswith("/v1/messages") and orjson.loads(payload)["model"] == MODEL


_events = st.one_of(
    st.just(START), st.just(PING), st.just(OVERLOADED), st.just(event({"type": "message_stop"})),
    st.builds(lambda i, t: event({"type": "content_block_delta", "index": i, "delta": {"type": "text_delta", "text": t}}),
              st.integers(0, 2), st.text(max_size=5)),
    st.builds(lambda i, kind: event({"type": "content_block_start", "index": i, "content_block": {
        "type": kind, "id": "toolu_1", "name": "f", "input": {}, "text": "", "thinking": ""}}),
        st.integers(0, 2), st.sampled_from(["text", "thinking", "tool_use", "server_tool_use"])),
    st.builds(lambda i, j: event({"type": "content_block_delta", "index": i,
                                  "delta": {"type": "input_json_delta", "partial_json": j}}),
              st.integers(0, 2), st.text(max_size=5)),
    st.builds(lambda r: event({"type": "message_delta", "delta": {"stop_reason": r}, "usage": {"output_tokens": 3}}),
              st.sampled_from([None, "end_turn", "tool_use", "max_tokens"])),
    st.builds(lambda v: b"data: " + orjson.dumps(v) + b"\n\n", _json),
    st.binary(max_size=20))


@PROPS
@given(st.lists(_events, max_size=12), st.sampled_from(["chat", "completions"]), st.data())
def test_whatever_anthropic_streams_the_client_gets_chunks_that_end_in_done_or_an_error(events, endpoint, data):
    raw = b"".join(events)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(raw)), max_size=5)))
    out, t = translate(raw, USAGE_CTX, endpoint, cuts)
    assert t.finished
    seq = chunks(out)
    if t.failed:
        assert "error" in seq[-1] and "[DONE]" not in seq
    else:
        assert seq[-1] == "[DONE]" and seq.count("[DONE]") == 1 and not any("error" in c for c in seq[:-1])
    assert out == translate(raw, USAGE_CTX, endpoint)[0]  # however it was cut
