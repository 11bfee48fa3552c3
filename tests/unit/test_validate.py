"""Request body validation: each bad body is a 400 naming the right param; good bodies,
unknown fields included, come back unchanged and in order."""

from __future__ import annotations

import time

import orjson
import pytest

from router.errors import BadRequest
from router.validate import MAX_ITEMS, MAX_MESSAGES, parse_body

HI = [{"role": "user", "content": "Hi"}]
CHAT = {"model": "m", "messages": HI}
COMPLETION = {"model": "m", "prompt": "Once"}
EMBEDDING = {"model": "m", "input": "text"}
BASE = {"chat": CHAT, "completions": COMPLETION, "embeddings": EMBEDDING}


def body(endpoint: str, **fields) -> bytes:
    return orjson.dumps({**BASE[endpoint], **fields})


def bad(endpoint: str, param: str | None, **fields):
    return pytest.param(endpoint, body(endpoint, **fields), param, id=f"{endpoint}-{param}-{sorted(fields)}")


def raw(endpoint: str, data: bytes, param: str | None):
    return pytest.param(endpoint, data, param, id=f"{endpoint}-raw-{data[:30]!r}")


BAD = [
    # the envelope
    raw("chat", b"{not json", None),
    raw("chat", b'["a list"]', None),
    raw("chat", b"", None),
    raw("chat", b'{"model": 1e400, "messages": []}', None),  # orjson: infinity is not JSON
    # model
    raw("chat", b'{"messages": [{"role": "user", "content": "x"}]}', "model"),
    bad("chat", "model", model=7),
    bad("chat", "model", model=["m"]),
    bad("chat", "model", model=True),
    bad("chat", "model", model="x" * 10_000),
    bad("chat", "model", model="a\nb"),
    bad("embeddings", "model", model={"id": "m"}),
    # messages
    raw("chat", b'{"model": "m"}', "messages"),
    bad("chat", "messages", messages=[]),
    bad("chat", "messages", messages="Hi"),
    bad("chat", "messages", messages={"role": "user"}),
    bad("chat", "messages[0]", messages=["Hi"]),
    bad("chat", "messages[1]", messages=HI + [{"content": "no role"}]),
    bad("chat", "messages[0]", messages=[{"role": 1, "content": "x"}]),
    bad("chat", "messages[0].content", messages=[{"role": "user", "content": 5}]),
    bad("chat", "messages[0].content", messages=[{"role": "user", "content": {"type": "text"}}]),
    bad("chat", "messages[0].content[0]", messages=[{"role": "user", "content": ["Hi"]}]),
    bad("chat", "messages[0].content[1]", messages=[{"role": "user", "content": [{"type": "text", "text": "a"}, {"text": "b"}]}]),
    bad("chat", "messages[0].content[0].text", messages=[{"role": "user", "content": [{"type": "text", "text": 3}]}]),
    bad("chat", "messages[0].content[0].image_url", messages=[{"role": "user", "content": [{"type": "image_url", "image_url": {"url": 5}}]}]),
    bad("chat", "messages[0].content[0].image_url", messages=[{"role": "user", "content": [{"type": "image_url"}]}]),
    bad("chat", "messages[0].name", messages=[{"role": "user", "content": "x", "name": 1}]),
    bad("chat", "messages[0].tool_calls", messages=[{"role": "assistant", "tool_calls": {"id": "c"}}]),
    bad("chat", "messages[0].tool_calls[0]", messages=[{"role": "assistant", "tool_calls": ["c"]}]),
    bad("chat", "messages[0].tool_calls[0]", messages=[{"role": "assistant", "tool_calls": [{"function": "f"}]}]),
    bad("chat", "messages", messages=HI * (MAX_MESSAGES + 1)),
    # stream
    bad("chat", "stream", stream="yes"),
    bad("chat", "stream", stream=1),
    bad("completions", "stream", stream="true"),
    bad("chat", "stream_options", stream_options=True),
    bad("chat", "stream_options", stream_options=["include_usage"]),
    # token limits
    bad("chat", "max_tokens", max_tokens=-1),
    bad("chat", "max_tokens", max_tokens=0),
    bad("chat", "max_tokens", max_tokens="10"),
    bad("chat", "max_tokens", max_tokens=10.5),
    bad("chat", "max_tokens", max_tokens=True),
    raw("chat", b'{"model": "m", "messages": [{"role": "user"}], "max_tokens": 18446744073709551616}', "max_tokens"),  # a float to orjson
    bad("completions", "max_tokens", max_tokens=-5),
    bad("chat", "max_completion_tokens", max_completion_tokens=0),
    bad("chat", "max_completion_tokens", max_completion_tokens=-3),
    # n
    bad("chat", "n", n=0),
    bad("chat", "n", n=129),
    bad("chat", "n", n=10 ** 9),
    bad("chat", "n", n=2.0),
    bad("completions", "n", n=-1),
    bad("completions", "best_of", best_of=0),
    bad("completions", "best_of", best_of=1000),
    # sampling numbers
    bad("chat", "temperature", temperature="hot"),
    bad("chat", "temperature", temperature=-0.1),
    bad("chat", "temperature", temperature=2.5),
    bad("chat", "temperature", temperature=False),
    bad("chat", "top_p", top_p=1.5),
    bad("chat", "top_p", top_p=-1),
    bad("chat", "top_p", top_p=[0.5]),
    bad("chat", "presence_penalty", presence_penalty=3),
    bad("chat", "frequency_penalty", frequency_penalty=-2.01),
    bad("completions", "frequency_penalty", frequency_penalty="0"),
    bad("chat", "seed", seed=1.5),
    bad("chat", "seed", seed="42"),
    # stop
    bad("chat", "stop", stop=5),
    bad("chat", "stop", stop=["a", 1]),
    bad("chat", "stop", stop=["a", "b", "c", "d", "e"]),
    bad("chat", "stop", stop={"a": 1}),
    # tools and formats
    bad("chat", "tools", tools={"type": "function"}),
    bad("chat", "tools[0]", tools=["f"]),
    bad("chat", "tools[1]", tools=[{"type": "function", "function": {"name": "f"}}, {"type": "function", "function": "g"}]),
    bad("chat", "tool_choice", tool_choice=1),
    bad("chat", "tool_choice", tool_choice=["auto"]),
    bad("chat", "response_format", response_format="json"),
    bad("chat", "response_format", response_format={}),
    bad("chat", "response_format", response_format={"type": 1}),
    bad("chat", "response_format.json_schema", response_format={"type": "json_schema", "json_schema": "x"}),
    bad("chat", "logit_bias", logit_bias=[1]),
    # misc
    bad("chat", "user", user=1),
    bad("embeddings", "user", user={"id": 1}),
    bad("chat", "logprobs", logprobs=1),
    bad("chat", "top_logprobs", top_logprobs=21),
    bad("chat", "top_logprobs", top_logprobs=-1),
    bad("completions", "logprobs", logprobs=True),
    bad("completions", "logprobs", logprobs=-1),
    bad("completions", "echo", echo="yes"),
    bad("completions", "suffix", suffix=1),
    # prompt
    raw("completions", b'{"model": "m"}', "prompt"),
    bad("completions", "prompt", prompt=None),
    bad("completions", "prompt", prompt=5),
    bad("completions", "prompt", prompt=[]),
    bad("completions", "prompt", prompt={"text": "x"}),
    bad("completions", "prompt", prompt=[True]),
    bad("completions", "prompt", prompt=[1.5]),
    bad("completions", "prompt", prompt=[{"a": 1}]),
    bad("completions", "prompt", prompt=[1, "a"]),
    bad("completions", "prompt", prompt=[1, -2]),
    bad("completions", "prompt[1]", prompt=["a", 1]),
    bad("completions", "prompt[1]", prompt=["a", None]),
    bad("completions", "prompt[1]", prompt=[[1, 2], [3, "x"]]),
    bad("completions", "prompt[1]", prompt=[[1, 2], []]),
    bad("completions", "prompt[1]", prompt=[[1, 2], "x"]),
    bad("completions", "prompt", prompt=["a"] * (MAX_ITEMS + 1)),
    # input
    raw("embeddings", b'{"model": "m"}', "input"),
    bad("embeddings", "input", input=""),
    bad("embeddings", "input", input=[]),
    bad("embeddings", "input", input=7),
    bad("embeddings", "input", input=[1, 2.5]),
    bad("embeddings", "input[2]", input=["a", "b", 3]),
    bad("embeddings", "input[0]", input=[[]]),
    bad("embeddings", "input", input=["a"] * (MAX_ITEMS + 1)),
    bad("embeddings", "input", input=[[1]] * (MAX_ITEMS + 1)),
    bad("embeddings", "encoding_format", encoding_format="int8"),
    bad("embeddings", "encoding_format", encoding_format=1),
    bad("embeddings", "dimensions", dimensions=0),
    bad("embeddings", "dimensions", dimensions="256"),
    bad("embeddings", "dimensions", dimensions=7_029_773),
]


@pytest.mark.parametrize("endpoint, data, param", BAD)
def test_bad_bodies_are_400s_naming_the_param(endpoint, data, param):
    with pytest.raises(BadRequest) as info:
        parse_body(endpoint, data)
    err = info.value
    assert err.status == 400
    assert err.param == param
    shape = err.body()["error"]
    assert shape["type"] == "invalid_request_error" and shape["param"] == param
    assert isinstance(shape["message"], str) and shape["message"]


GOOD = [
    ("chat", CHAT),
    ("chat", {"messages": HI, "model": "m", "stream": True, "stream_options": {"include_usage": True}}),
    ("chat", {**CHAT, "max_tokens": 1, "max_completion_tokens": 100, "n": 128, "temperature": 0, "top_p": 1,
              "presence_penalty": -2, "frequency_penalty": 2.0, "seed": -1, "user": "u", "logprobs": True,
              "top_logprobs": 20, "stop": ["a", "b", "c", "d"], "logit_bias": {"50256": -100}}),
    ("chat", {**CHAT, "temperature": None, "top_p": None, "max_tokens": None, "n": None, "stop": None, "stream": None,
              "stream_options": None, "tools": None, "tool_choice": None, "response_format": None, "user": None}),
    ("chat", {**CHAT, "stop": "\n"}),
    ("chat", {"model": "m", "messages": [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": [{"type": "text", "text": "what is this?"},
                                     {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA", "detail": "low"}},
                                     {"type": "input_audio", "input_audio": {"data": "...", "format": "wav"}}]},
        {"role": "assistant", "content": None, "tool_calls": [{"id": "c1", "type": "function",
                                                              "function": {"name": "f", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "c1", "name": "f", "content": "42"},
        {"role": "assistant"},
        {"role": "whatever-a-backend-accepts", "content": ""},
    ]}),
    ("chat", {**CHAT, "tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}],
              "tool_choice": "auto"}),
    ("chat", {**CHAT, "tool_choice": {"type": "function", "function": {"name": "f"}}}),
    ("chat", {**CHAT, "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object"}}}}),
    ("chat", {**CHAT, "response_format": {"type": "json_object"}}),
    ("chat", {"model": "m", "messages": HI * MAX_MESSAGES}),
    # unknown fields pass through, in order, whatever their type
    ("chat", {"zzz": 1, **CHAT, "top_k": 40, "options": {"num_ctx": 4096}, "metadata": {"a": [1, {"b": None}]},
              "keep_alive": "5m", "think": False, "repetition_penalty": 1.1, "aaa": None, "cache": {"no-cache": True}}),
    ("completions", COMPLETION),
    ("completions", {**COMPLETION, "prompt": ""}),
    ("completions", {**COMPLETION, "prompt": ["a", "b", ""]}),
    ("completions", {**COMPLETION, "prompt": [1, 2, 3]}),
    ("completions", {**COMPLETION, "prompt": [[1, 2], [3]]}),
    ("completions", {**COMPLETION, "prompt": list(range(20_000))}),  # one prompt as token ids: not a batch
    ("completions", {**COMPLETION, "prompt": ["a"] * MAX_ITEMS}),
    ("completions", {**COMPLETION, "max_tokens": 0, "echo": True, "logprobs": 5, "best_of": 2, "suffix": "end"}),
    ("completions", {**COMPLETION, "stream": True, "stop": ["x"], "n": 2, "seed": 2 ** 63}),
    ("embeddings", EMBEDDING),
    ("embeddings", {**EMBEDDING, "input": ["a", "b"], "encoding_format": "base64", "dimensions": 256, "user": "u"}),
    ("embeddings", {**EMBEDDING, "input": [1, 2, 3], "encoding_format": "float"}),
    ("embeddings", {**EMBEDDING, "input": [[1, 2], [3]]}),
    ("embeddings", {**EMBEDDING, "input": [""] * MAX_ITEMS, "truncate": True}),
    # sampling fields mean nothing to embeddings and are left to the backend
    ("embeddings", {**EMBEDDING, "temperature": 9}),
]


@pytest.mark.parametrize("endpoint, payload", GOOD)
def test_good_bodies_pass_unchanged_and_in_order(endpoint, payload):
    data = orjson.dumps(payload)
    got = parse_body(endpoint, data)
    assert got == payload
    assert list(got) == list(payload)
    assert orjson.dumps(got) == data


def test_model_is_optional_with_a_capability_and_then_removed():
    assert parse_body("chat", orjson.dumps({"messages": HI}), model_optional=True) == {"messages": HI}
    assert parse_body("chat", orjson.dumps({"model": "", "messages": HI}), model_optional=True) == {"messages": HI}
    with pytest.raises(BadRequest) as info:
        parse_body("chat", orjson.dumps({"model": 3, "messages": HI}), model_optional=True)
    assert info.value.param == "model"


def test_caps_are_keyword_arguments():
    three = orjson.dumps({"model": "m", "messages": HI * 3})
    assert parse_body("chat", three, max_messages=3)
    with pytest.raises(BadRequest) as info:
        parse_body("chat", three, max_messages=2)
    assert info.value.param == "messages"
    batch = orjson.dumps({"model": "m", "input": ["a", "b", "c"]})
    assert parse_body("embeddings", batch, max_items=3)
    with pytest.raises(BadRequest) as info:
        parse_body("embeddings", batch, max_items=2)
    assert info.value.param == "input"
    with pytest.raises(BadRequest) as info:
        parse_body("completions", orjson.dumps({"model": "m", "prompt": [[1], [2], [3]]}), max_items=2)
    assert info.value.param == "prompt"


def test_validation_is_cheap_on_a_typical_request():
    data = orjson.dumps({"model": "llama3.1:8b", "messages": [{"role": "system", "content": "s"}] + HI * 20,
                         "temperature": 0.7, "top_p": 0.9, "max_tokens": 256, "stream": True, "stop": ["\n"],
                         "tools": [{"type": "function", "function": {"name": "f"}}] * 5})
    parse_body("chat", data)
    start = time.perf_counter()
    for _ in range(2000):
        parse_body("chat", data)
    per_request = (time.perf_counter() - start) / 2000
    assert per_request < 200e-6, f"{per_request * 1e6:.1f} µs per request"


def test_content_parts_over_all_messages_are_capped():
    part = {"type": "text", "text": "x"}
    body = {"model": "m", "messages": [{"role": "user", "content": [part] * 3}, {"role": "user", "content": [part] * 3}]}
    parse_body("chat", orjson.dumps(body), max_messages=6)
    with pytest.raises(BadRequest) as info:
        parse_body("chat", orjson.dumps(body), max_messages=5)
    assert info.value.param == "messages[1].content"
