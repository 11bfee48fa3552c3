"""OpenAI ⇄ Ollama translation, both ways, including the NDJSON → SSE stream."""

from __future__ import annotations

import orjson
import pytest

from router.errors import BadRequest, UpstreamError
from router.providers import ollama
from router.providers.base import Context
from router.providers.ollama import StreamTranslator

CTX = Context(model="llama3.1:8b", id="chatcmpl-1", created=1700000000)


def test_chat_request_maps_openai_parameters_to_options():
    body = {"model": "x", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5, "temperature": 0.2,
            "top_p": 0.9, "stop": "END", "seed": 42, "response_format": {"type": "json_object"}, "stream": True}
    out = ollama.chat_request(body, "llama3.1:8b")
    assert out == {"model": "llama3.1:8b", "stream": True, "format": "json",
                   "messages": [{"role": "user", "content": "hi"}],
                   "options": {"num_predict": 5, "temperature": 0.2, "top_p": 0.9, "seed": 42, "stop": ["END"]}}


def test_chat_request_is_explicitly_non_streaming_when_the_client_did_not_ask():
    # Ollama streams by default; an OpenAI client that omits "stream" wants one JSON body.
    assert ollama.chat_request({"messages": [{"role": "user", "content": "x"}]}, "m")["stream"] is False


def test_chat_request_converts_content_parts_images_and_tool_call_arguments():
    body = {"messages": [
        {"role": "user", "content": [{"type": "text", "text": "what is "}, {"type": "text", "text": "this?"},
                                     {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}]},
        {"role": "assistant", "content": None, "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{\"a\": 1}"}}]},
        {"role": "tool", "name": "f", "content": "42", "tool_call_id": "c1"},
    ], "tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}]}
    out = ollama.chat_request(body, "m", default_max_tokens=64)
    assert out["messages"][0] == {"role": "user", "content": "what is this?", "images": ["AAAA"]}
    assert out["messages"][1] == {"role": "assistant", "content": "", "tool_calls": [{"function": {"name": "f", "arguments": {"a": 1}}}]}
    assert out["messages"][2] == {"role": "tool", "content": "42", "tool_name": "f"}
    assert out["tools"] == body["tools"] and out["options"] == {"num_predict": 64}


def test_unsupported_shapes_are_client_errors():
    with pytest.raises(BadRequest):
        ollama.chat_request({"messages": [{"role": "user", "content": "x"}], "n": 2}, "m")
    with pytest.raises(BadRequest):
        ollama.generate_request({"prompt": ["a", "b"]}, "m")
    with pytest.raises(BadRequest):
        ollama.chat_request({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "https://x/y.png"}}]}]}, "m")


def test_chat_response_uses_client_model_name_usage_and_done_reason():
    data = {"model": "llama3.1:8b", "message": {"role": "assistant", "content": "Hello"}, "done": True,
            "done_reason": "length", "prompt_eval_count": 7, "eval_count": 3}
    out = ollama.chat_response(data, Context("general_chat", "chatcmpl-9", 5))
    assert out == {"id": "chatcmpl-9", "object": "chat.completion", "created": 5, "model": "general_chat",
                   "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hello"}, "logprobs": None, "finish_reason": "length"}],
                   "usage": {"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10}}


def test_chat_response_tool_calls_become_openai_tool_calls():
    data = {"message": {"role": "assistant", "content": "", "tool_calls": [{"function": {"name": "f", "arguments": {"a": 1}}}]},
            "done": True, "done_reason": "stop"}
    choice = ollama.chat_response(data, CTX)["choices"][0]
    call = choice["message"]["tool_calls"][0]
    assert choice["finish_reason"] == "tool_calls"
    assert call["type"] == "function" and call["id"].startswith("call_")
    assert call["function"] == {"name": "f", "arguments": '{"a":1}'}


def test_generate_and_embed_responses():
    gen = ollama.generate_response({"response": "abc", "done": True, "done_reason": "stop", "prompt_eval_count": 1, "eval_count": 2,
                                    "context": [1, 2, 3]}, CTX)
    assert gen["object"] == "text_completion" and gen["choices"][0]["text"] == "abc" and gen["usage"]["total_tokens"] == 3
    emb = ollama.embed_response({"embeddings": [[0.1, 0.2], [0.3, 0.4]], "prompt_eval_count": 4}, CTX)
    assert [d["index"] for d in emb["data"]] == [0, 1] and emb["data"][1]["embedding"] == [0.3, 0.4]
    assert emb["usage"] == {"prompt_tokens": 4, "total_tokens": 4} and emb["model"] == "llama3.1:8b"
    with pytest.raises(UpstreamError):
        ollama.chat_response({"error": "model is loading"}, CTX)


def _events(raw: bytes) -> list:
    assert raw.endswith(b"\n\n")
    out = []
    for block in raw.split(b"\n\n")[:-1]:
        assert block.startswith(b"data: ")
        payload = block[6:]
        out.append(payload.decode() if payload == b"[DONE]" else orjson.loads(payload))
    return out


NDJSON = b"".join(orjson.dumps(x) + b"\n" for x in [
    {"model": "m", "message": {"role": "assistant", "content": "Hel"}, "done": False},
    {"model": "m", "message": {"role": "assistant", "content": "lo"}, "done": False},
    {"model": "m", "message": {"role": "assistant", "content": ""}, "done": True, "done_reason": "stop",
     "prompt_eval_count": 4, "eval_count": 2},
])


@pytest.mark.parametrize("split", [1, 3, 7, 64, len(NDJSON)])
def test_stream_translation_is_independent_of_how_bytes_are_split(split):
    tr = StreamTranslator("chat", Context("llama3.1:8b", "chatcmpl-1", 1, include_usage=True))
    raw = b"".join(tr.feed(NDJSON[i:i + split]) for i in range(0, len(NDJSON), split)) + tr.close()
    events = _events(raw)
    assert events[0]["choices"][0]["delta"] == {"role": "assistant", "content": "Hel"}
    assert events[1]["choices"][0]["delta"] == {"content": "lo"}
    assert events[2]["choices"][0] == {"index": 0, "delta": {}, "logprobs": None, "finish_reason": "stop"}
    assert events[3]["choices"] == [] and events[3]["usage"] == {"prompt_tokens": 4, "completion_tokens": 2, "total_tokens": 6}
    assert events[4] == "[DONE]" and len(events) == 5
    assert all(e["model"] == "llama3.1:8b" and e["object"] == "chat.completion.chunk" for e in events[:4])
    assert tr.finished and not tr.failed


def test_stream_without_include_usage_has_no_usage_chunk():
    tr = StreamTranslator("chat", CTX)
    events = _events(tr.feed(NDJSON))
    assert [e for e in events if e != "[DONE]" and "usage" in e] == []
    assert events[-1] == "[DONE]"


def test_generate_stream_becomes_text_completion_chunks():
    lines = b'{"response":"a","done":false}\n{"response":"b","done":false}\n{"response":"","done":true,"done_reason":"length"}\n'
    events = _events(StreamTranslator("completions", CTX).feed(lines))
    assert [e["choices"][0]["text"] for e in events[:2]] == ["a", "b"]
    assert events[2]["choices"][0]["finish_reason"] == "length" and events[2]["object"] == "text_completion"


def test_stream_that_ends_early_or_errors_ends_with_an_error_event():
    tr = StreamTranslator("chat", CTX)
    first = tr.feed(NDJSON.split(b"\n")[0] + b"\n")
    assert _events(first)[0]["choices"][0]["delta"]["content"] == "Hel"
    tail = _events(tr.close())
    assert tail[0]["error"]["message"] == "Ollama ended the stream before it was done" and tr.failed
    tr2 = StreamTranslator("chat", CTX)
    err = _events(tr2.feed(b'{"error":"out of memory"}\n'))
    assert err == [{"error": {"message": "Ollama: out of memory", "type": "api_error", "param": None, "code": "upstream_error"}}]
