"""The Ollama-API front door (``router.doors.ollama``): what a client of Ollama's
``/api/chat``, ``/api/generate``, ``/api/embed`` and ``/api/embeddings`` sees.

Requests are checked as Ollama checks them and translated into OpenAI requests for
vLLM, llama-server and llama-cpp-python; their answers come back in Ollama's exact
wire format, which the ``ollama`` package's own response types must accept. Streams
(an Ollama backend's NDJSON relayed, an OpenAI SSE stream translated) give the same
bytes however the upstream cut them, and never end silently.
"""

from __future__ import annotations

import base64
import json
import os
from datetime import datetime

import ollama
import orjson
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from router.config import Limits
from router.doors.ollama import CHAT, EMBED, EMBEDDINGS, GENERATE, NDJSON, call_id, go_time
from router.errors import BadRequest, UpstreamClientError, UpstreamError
from router.providers.base import Context

FUZZ = settings(max_examples=200, deadline=None, derandomize=bool(os.environ.get("CI")),
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
LIMITS = Limits()
CTX = Context(model="llama3.2", id="chatcmpl-door", created=1721680408)
AT = "2024-07-22T20:33:28Z"  # CTX.created as Go writes it
DOORS = {"chat": CHAT, "generate": GENERATE, "embed": EMBED, "embeddings": EMBEDDINGS}
HI = [{"role": "user", "content": "Why is the sky blue?"}]
BASE = {"chat": {"model": "llama3.2", "messages": HI}, "generate": {"model": "llama3.2", "prompt": "Why?"},
        "embed": {"model": "all-minilm", "input": "text"}, "embeddings": {"model": "all-minilm", "prompt": "text"}}


def image(magic: bytes) -> str:
    return base64.b64encode(magic + bytes(range(40))).decode()


PNG, JPEG, GIF, WEBP = (image(b"\x89PNG\r\n\x1a\n"), image(b"\xff\xd8\xff\xe0"), image(b"GIF89a"),
                        image(b"RIFF\x10\x00\x00\x00WEBPVP8 "))


def parse(door: str, **fields) -> dict:
    return DOORS[door].parse(orjson.dumps({**BASE[door], **fields}), LIMITS)


def pivot(door: str, **fields) -> dict:
    return DOORS[door].to_pivot(parse(door, **fields))


def lines(raw: bytes) -> list[dict]:
    assert raw.endswith(b"\n"), raw
    return [orjson.loads(line) for line in raw.split(b"\n")[:-1]]


def feed(translator, pieces: list[bytes], close: bool = True) -> bytes:
    out = b"".join(translator.feed(p) for p in pieces)
    return out + translator.close() if close else out


# How to cut a byte stream: into single bytes, or at (modulo) positions.
_cuts = st.one_of(st.just("bytes"), st.lists(st.integers(0, 10**6), max_size=25))


def split(raw: bytes, cuts) -> list[bytes]:
    if cuts == "bytes":
        return [raw[i:i + 1] for i in range(len(raw))]
    edges = [0, *sorted({c % (len(raw) + 1) for c in cuts}), len(raw)]
    return [raw[a:b] for a, b in zip(edges, edges[1:]) if b > a]


# ---------------------------------------------------------------------------
# The doors' facts
# ---------------------------------------------------------------------------


def test_doors_name_their_dialect_pivot_and_native_path():
    facts = [(d.name, d.pivot, d.native_path, d.stream_type) for d in DOORS.values()]
    assert facts == [("ollama_chat", "chat", "/api/chat", NDJSON), ("ollama_generate", "completions", "/api/generate", NDJSON),
                     ("ollama_embed", "embeddings", "/api/embed", NDJSON),
                     ("ollama_embeddings", "embeddings", "/api/embeddings", NDJSON)]
    assert CHAT.id_prefix == "chatcmpl-"


@pytest.mark.parametrize("door, stream, expected", [
    ("chat", None, True), ("chat", True, True), ("chat", False, False),
    ("generate", None, True), ("generate", False, False),
    ("embed", True, False), ("embeddings", None, False),
])
def test_ollama_streams_unless_told_not_to_and_never_for_embeddings(door, stream, expected):
    fields = {} if stream is None else {"stream": stream}
    assert DOORS[door].stream(parse(door, **fields)) is expected


# ---------------------------------------------------------------------------
# Validation
# ---------------------------------------------------------------------------


def test_a_valid_body_comes_back_whole_with_unknown_fields_in_order():
    raw = orjson.dumps({"model": "llava", "x_client": 1, "messages": [{"role": "user", "content": "What is this?",
                        "images": [PNG]}], "format": {"type": "object"}, "options": {"temperature": 0.1, "num_ctx": 8192,
                        "some_new_option": "x"}, "keep_alive": "1h30m", "think": "low", "stream": False, "zz": None})
    body = CHAT.parse(raw, LIMITS)
    assert list(body) == ["model", "x_client", "messages", "format", "options", "keep_alive", "think", "stream", "zz"]
    assert orjson.dumps(body) == raw


@pytest.mark.parametrize("door, fields", [
    ("chat", {"messages": []}), ("chat", {"messages": None}), ("generate", {"prompt": ""}), ("generate", {"prompt": None}),
    ("embed", {"input": []}), ("embed", {"input": ""}), ("embeddings", {"prompt": ""}),
    ("chat", {"keep_alive": 0}), ("chat", {"keep_alive": -1}), ("chat", {"keep_alive": "-1m"}), ("chat", {"keep_alive": 300.5}),
    ("chat", {"think": "max"}), ("chat", {"think": False}), ("chat", {"format": ""}), ("chat", {"format": "json"}),
    ("chat", {"options": {"num_predict": 12.0, "stop": [], "seed": None}}),
])
def test_what_ollama_accepts_passes(door, fields):
    assert parse(door, **fields)["model"]


def raw_case(door: str, raw: bytes, param: str | None):
    return pytest.param(door, raw, param, id=f"{door}-raw-{raw[:25]!r}")


def bad(door: str, param: str | None, **fields):
    return pytest.param(door, orjson.dumps({**BASE[door], **fields}), param, id=f"{door}-{param}-{sorted(fields)}")


BAD = [
    raw_case("chat", b"", None),
    raw_case("chat", b"{oops", None),
    raw_case("generate", b"[1, 2]", None),
    raw_case("chat", b'{"messages": []}', "model"),
    bad("chat", "model", model=""),
    bad("embed", "model", model=7),
    bad("embeddings", "model", model="a\nb"),
    bad("generate", "model", model="m" * 600),
    bad("chat", "messages", messages="hi"),
    bad("chat", "messages[0]", messages=["hi"]),
    bad("chat", "messages[0].role", messages=[{"content": "no role"}]),
    bad("chat", "messages[0].content", messages=[{"role": "user", "content": [{"type": "text", "text": "OpenAI parts"}]}]),
    bad("chat", "messages[0].images", messages=[{"role": "user", "content": "x", "images": "not a list"}]),
    bad("chat", "messages[0].images", messages=[{"role": "user", "content": "x", "images": [1]}]),
    bad("chat", "messages[0].thinking", messages=[{"role": "assistant", "content": "", "thinking": 5}]),
    bad("chat", "messages[0].tool_calls", messages=[{"role": "assistant", "tool_calls": {}}]),
    bad("chat", "messages[0].tool_calls[0]", messages=[{"role": "assistant", "tool_calls": [{"name": "f"}]}]),
    bad("chat", "messages[0].tool_calls[0].function.name",
        messages=[{"role": "assistant", "tool_calls": [{"function": {"arguments": {}}}]}]),
    bad("chat", "messages[0].tool_calls[0].function.arguments",
        messages=[{"role": "assistant", "tool_calls": [{"function": {"name": "f", "arguments": '{"a": 1}'}}]}]),
    bad("chat", "messages[0].tool_calls[0].id",
        messages=[{"role": "assistant", "tool_calls": [{"id": 3, "function": {"name": "f"}}]}]),
    bad("chat", "messages[0].tool_name", messages=[{"role": "tool", "content": "1", "tool_name": ["f"]}]),
    bad("chat", "stream", stream="yes"),
    bad("generate", "raw", raw=1),
    bad("chat", "format", format="yaml"),
    bad("chat", "format", format=["json"]),
    bad("chat", "options", options=[]),
    bad("chat", "options.temperature", options={"temperature": "hot"}),
    bad("chat", "options.num_predict", options={"num_predict": True}),
    bad("chat", "options.num_predict", options={"num_predict": 1e300}),
    bad("generate", "options.stop", options={"stop": "\n"}),
    bad("generate", "options.stop", options={"stop": ["a", 1]}),
    bad("chat", "options.use_mmap", options={"use_mmap": "yes"}),
    bad("chat", "keep_alive", keep_alive="5 minutes"),
    bad("chat", "keep_alive", keep_alive="300"),  # Go wants a unit
    bad("chat", "keep_alive", keep_alive=True),
    bad("chat", "think", think="extreme"),
    bad("chat", "think", think=1),
    bad("chat", "tools", tools={"type": "function"}),
    bad("chat", "tools[0]", tools=[{"type": "function", "function": "f"}]),
    bad("chat", "top_logprobs", top_logprobs=21),
    bad("generate", "prompt", prompt=["batch"]),
    bad("generate", "system", system=1),
    bad("generate", "images", images=[None]),
    bad("generate", "context", context=[1, -2]),
    bad("embed", "input", input=[1, 2]),
    bad("embed", "input", input=[["a"]]),
    bad("embed", "input", input={"text": "a"}),
    bad("embed", "dimensions", dimensions=-1),
    bad("embed", "dimensions", dimensions=10**6),
    bad("embed", "truncate", truncate="no"),
    bad("embeddings", "prompt", prompt=["a"]),
]


@pytest.mark.parametrize("door, raw, param", BAD)
def test_bad_bodies_are_refused_naming_the_field(door, raw, param):
    with pytest.raises(BadRequest) as info:
        DOORS[door].parse(raw, LIMITS)
    assert info.value.param == param
    assert info.value.status == 400


def test_a_missing_model_is_refused_in_ollamas_words():
    with pytest.raises(BadRequest, match="^model is required$"):
        CHAT.parse(b'{"messages": []}', LIMITS)


def test_the_message_and_input_caps_come_from_the_limits():
    small = Limits(max_messages=2, max_input_items=2)
    CHAT.parse(orjson.dumps({"model": "m", "messages": HI * 2}), small)
    with pytest.raises(BadRequest) as info:
        CHAT.parse(orjson.dumps({"model": "m", "messages": HI * 3}), small)
    assert info.value.param == "messages"
    with pytest.raises(BadRequest) as info:
        EMBED.parse(orjson.dumps({"model": "m", "input": ["a", "b", "c"]}), small)
    assert info.value.param == "input"


_json = st.recursive(
    st.none() | st.booleans() | st.integers(-2**63, 2**64 - 1) | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=6),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=12,
)
_FIELDS = ["model", "messages", "prompt", "input", "suffix", "system", "template", "raw", "images", "context", "format",
           "options", "keep_alive", "think", "stream", "tools", "truncate", "dimensions", "top_logprobs", "logprobs"]
_message = st.fixed_dictionaries({}, optional={k: _json for k in ["role", "content", "images", "tool_calls", "tool_name",
                                                                 "thinking", "tool_call_id"]})
_bodies = st.fixed_dictionaries({"model": st.just("m") | _json}, optional={
    **{k: _json for k in _FIELDS[1:]}, "messages": st.lists(_message, max_size=3) | _json,
    "options": st.dictionaries(st.sampled_from(["num_predict", "temperature", "stop", "top_k", "seed", "use_mmap", "x"]), _json,
                               max_size=3) | _json})


@FUZZ
@given(door=st.sampled_from(sorted(DOORS)), body=_bodies | _json)
@example(door="chat", body={"model": "m", "messages": [{"role": "user", "images": ["!!!!"]}]})
@example(door="chat", body={"model": "m", "messages": [{"role": "user", "images": ["ïmage"]}]})
@example(door="generate", body={"model": "m", "options": {"num_predict": 1e300, "seed": 2**64 - 1}})
def test_validation_raises_only_bad_request_on_any_json(door, body):
    """A body is accepted or refused with a 400, whatever it holds; and an accepted one is
    translated (or refused) with a 400 too, never a crash."""
    try:
        parsed = DOORS[door].parse(orjson.dumps(body), LIMITS)
    except BadRequest:
        return
    try:
        out = DOORS[door].to_pivot(parsed)
    except BadRequest:
        return
    assert out["model"] == parsed["model"]
    orjson.dumps(out)


# ---------------------------------------------------------------------------
# Native pass-through
# ---------------------------------------------------------------------------


def test_a_native_backend_gets_the_body_untouched_but_for_the_model():
    body = parse("chat", messages=[{"role": "user", "content": "?", "images": [PNG]}], options={"num_ctx": 8192, "seed": 1},
                 keep_alive="10m", think="high", format="json", x_extra=[1])
    sent = orjson.loads(CHAT.native_request(body, None, "llama3.2:3b-instruct-q4_K_M"))  # type: ignore[arg-type]
    assert sent == {**body, "model": "llama3.2:3b-instruct-q4_K_M"}
    assert list(sent) == list(body)


def test_check_native_passes_an_answer_unchanged_and_refuses_errors_and_garbage():
    answer = b'{"model":"llama3.2","created_at":"2025-07-07T20:22:19.184789Z","message":{"role":"assistant","content":"Hi"},"done":true}'
    assert CHAT.check_native(answer, "ollama") is answer
    for raw, words in [(b'{"error":"model \'x\' not found"}', "ollama: model 'x' not found"), (b"<html>", "not JSON"),
                       (b"[1]", "not an object")]:
        with pytest.raises(UpstreamError, match=words):
            CHAT.check_native(raw, "ollama")


def test_errors_are_written_in_ollamas_shape():
    assert orjson.loads(CHAT.error_body(BadRequest("model is required", param="model"))) == {"error": "model is required"}
    assert EMBED.error_body(UpstreamClientError("too long", status=400, raw=b'{"error":{"message":"x"}}')) == b'{"error":"too long"}'
    assert GENERATE.error_event(UpstreamError("vllm returned HTTP 500")) == b'{"error":"vllm returned HTTP 500"}\n'


# An Ollama (>= 0.12) chat stream as it writes it: Go's field order, created_at to the nanosecond.
OLLAMA_STREAM = (
    b'{"model":"llama3.2","created_at":"2025-07-07T20:22:19.184789Z","message":{"role":"assistant","content":"The"},"done":false}\n'
    b'{"model":"llama3.2","created_at":"2025-07-07T20:22:19.20314Z","message":{"role":"assistant","content":" sky \xc3\xa9"},"done":false}\n'
    b'{"model":"llama3.2","created_at":"2025-07-07T20:22:19.21314Z","message":{"role":"assistant","content":"","tool_calls":'
    b'[{"id":"call_k3b9x2qa","function":{"index":0,"name":"get_weather","arguments":{"city":"Tokyo"}}}]},"done":false}\n'
    b'{"model":"llama3.2","created_at":"2025-07-07T20:22:19.19314Z","message":{"role":"assistant","content":""},"done":true,'
    b'"done_reason":"stop","total_duration":4883583458,"load_duration":1334875,"prompt_eval_count":26,'
    b'"prompt_eval_duration":342546000,"eval_count":282,"eval_duration":4535599000}\n'
)


def test_the_real_shaped_ollama_stream_is_what_the_ollama_client_reads():
    for line in lines(OLLAMA_STREAM):
        ollama.ChatResponse.model_validate(line)


@FUZZ
@given(cuts=_cuts)
def test_watch_relays_an_ollama_stream_byte_for_byte_for_any_split(cuts):
    watch = CHAT.watch(CTX)
    assert feed(watch, split(OLLAMA_STREAM, cuts)) == OLLAMA_STREAM
    assert (watch.finished, watch.failed) == (True, False)
    assert watch.usage == {"prompt_tokens": 26, "completion_tokens": 282, "total_tokens": 308}


def test_watch_stops_at_the_done_line():
    watch = GENERATE.watch(CTX)
    done = b'{"model":"m","created_at":"2025-01-01T00:00:00Z","response":"","done":true,"done_reason":"stop","prompt_eval_count":3}\n'
    assert watch.feed(done + b'{"model":"m","response":"late"}\n') == done
    assert watch.finished and not watch.failed
    assert watch.feed(b"more\n") == b"" and watch.close() == b""
    assert watch.usage == {"prompt_tokens": 3, "completion_tokens": 0, "total_tokens": 3}


def test_watch_finishes_a_load_only_answer_without_usage():
    watch = CHAT.watch(CTX)
    load = b'{"model":"llama3.2","created_at":"2025-07-07T20:22:19.1Z","message":{"role":"assistant","content":""},"done":true,"done_reason":"load"}\n'
    assert watch.feed(load) == load
    assert watch.finished and not watch.failed and watch.usage is None


def test_watch_relays_an_error_line_then_stops_failed():
    watch = CHAT.watch(CTX)
    first, error = OLLAMA_STREAM.split(b"\n")[0] + b"\n", b'{"error":"an error was encountered while running the model: CUDA error"}\n'
    assert watch.feed(first + error + first) == first + error
    assert watch.finished and watch.failed
    assert watch.error == "an error was encountered while running the model: CUDA error"
    assert watch.close() == b""


_LINE_ENDS = [i for i, byte in enumerate(OLLAMA_STREAM) if byte == ord("\n")]


@FUZZ
@given(cut=st.integers(0, _LINE_ENDS[-1] - 1), cuts=_cuts)
@example(cut=_LINE_ENDS[1], cuts=[])  # a whole line, only its newline missing
@example(cut=_LINE_ENDS[1] - 1, cuts=[])  # a line cut after a "}" of its own
def test_watch_ends_an_early_end_with_its_own_error_line(cut, cuts):
    """Cut anywhere before the done line's end: the lines before the cut (the last one
    too if only its newline is missing), then an error line of Ollama's shape; never a
    silent end, never half a line."""
    watch = CHAT.watch(CTX)
    out = feed(watch, split(OLLAMA_STREAM[:cut], cuts))
    assert watch.failed and watch.error == "Ollama ended the stream before it was done"
    relayed = OLLAMA_STREAM[:cut + 1] if cut in _LINE_ENDS else OLLAMA_STREAM[:OLLAMA_STREAM[:cut].rfind(b"\n") + 1]
    assert out == relayed + b'{"error":"Ollama ended the stream before it was done"}\n'


def test_watch_finishes_on_a_done_line_without_its_newline():
    watch = CHAT.watch(CTX)
    assert feed(watch, [OLLAMA_STREAM[:-1]]) == OLLAMA_STREAM
    assert watch.finished and not watch.failed


def test_watch_holds_no_line_past_16_mib():
    watch = CHAT.watch(CTX)
    assert watch.feed(b'{"model":"m","message":{"content":"' + b"x" * (16 * 1024 * 1024)) == (
        b'{"error":"Ollama sent a stream line longer than 16 MiB"}\n')
    assert watch.failed


def test_watch_fails_on_a_line_that_is_not_json():
    watch = CHAT.watch(CTX)
    assert watch.feed(b"<html>oops</html>\n") == b'{"error":"Ollama sent a stream line that is not a JSON object"}\n'
    assert watch.failed


# ---------------------------------------------------------------------------
# to_pivot: chat
# ---------------------------------------------------------------------------


def test_a_chat_becomes_an_openai_chat_that_streams_with_usage():
    assert pivot("chat") == {"model": "llama3.2", "messages": HI, "stream": True, "stream_options": {"include_usage": True}}
    assert pivot("chat", stream=False) == {"model": "llama3.2", "messages": HI, "stream": False}


@pytest.mark.parametrize("picture, media", [(PNG, "image/png"), (JPEG, "image/jpeg"), (GIF, "image/gif"), (WEBP, "image/webp"),
                                            (image(b"BM"), "image/bmp"), (image(b"\x00\x00\x01\x00"), "image/jpeg")])
def test_images_become_data_url_parts_typed_by_their_first_bytes(picture, media):
    out = pivot("chat", messages=[{"role": "user", "content": "What is in this picture?", "images": [picture]}])
    assert out["messages"] == [{"role": "user", "content": [
        {"type": "text", "text": "What is in this picture?"},
        {"type": "image_url", "image_url": {"url": f"data:{media};base64,{picture}"}}]}]


def test_an_image_without_text_has_no_text_part_and_bad_base64_is_refused():
    out = pivot("chat", messages=[{"role": "user", "content": "", "images": [PNG, GIF]}])
    assert [p["image_url"]["url"][:15] for p in out["messages"][0]["content"]] == ["data:image/png;", "data:image/gif;"]
    with pytest.raises(BadRequest) as info:
        pivot("chat", messages=[{"role": "user", "content": "x", "images": [PNG, "data:image/png;base64,iVBOR"]}])
    assert info.value.param == "messages[0].images[1]"


def test_tool_calls_get_stable_ids_and_string_arguments_and_results_pair_with_them():
    messages = [
        {"role": "user", "content": "Weather in Tokyo and Paris? And the time?"},
        {"role": "assistant", "content": "", "thinking": "Two cities.", "tool_calls": [
            {"function": {"name": "get_weather", "arguments": {"city": "Tokyo", "unit": "c"}}},
            {"function": {"name": "get_weather", "arguments": {"city": "Paris"}}},
            {"function": {"name": "get_time", "arguments": {}}}]},
        {"role": "tool", "content": "12:00", "tool_name": "get_time"},
        {"role": "tool", "content": "11 degrees", "tool_name": "get_weather"},
        {"role": "tool", "content": "14 degrees"},
        {"role": "Assistant", "content": "Tokyo 11, Paris 14, noon."},
    ]
    out = pivot("chat", messages=messages)["messages"]
    assert out[1] == {"role": "assistant", "content": "", "tool_calls": [
        {"id": "call_000010000", "type": "function", "function": {"name": "get_weather", "arguments": '{"city":"Tokyo","unit":"c"}'}},
        {"id": "call_000010001", "type": "function", "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'}},
        {"id": "call_000010002", "type": "function", "function": {"name": "get_time", "arguments": "{}"}}]}
    assert out[2:5] == [{"role": "tool", "content": "12:00", "tool_call_id": "call_000010002", "name": "get_time"},
                        {"role": "tool", "content": "11 degrees", "tool_call_id": "call_000010000", "name": "get_weather"},
                        {"role": "tool", "content": "14 degrees", "tool_call_id": "call_000010001"}]
    assert out[5] == {"role": "assistant", "content": "Tokyo 11, Paris 14, noon."}
    assert pivot("chat", messages=messages) == pivot("chat", messages=messages)  # the same prompt every turn
    assert call_id(1, 0)[-9:].isalnum()  # what vLLM's Mistral tokenizer keeps of an id must be alphanumeric


def test_ids_ollama_gave_are_kept_and_answer_by_id():
    messages = [{"role": "assistant", "content": "", "tool_calls": [
        {"id": "call_a", "function": {"index": 0, "name": "f", "arguments": {"x": 1}}},
        {"id": "call_b", "function": {"index": 1, "name": "f", "arguments": {"x": 2}}}]},
        {"role": "tool", "content": "two", "tool_name": "f", "tool_call_id": "call_b"},
        {"role": "tool", "content": "one", "tool_name": "f"}]
    out = pivot("chat", messages=messages)["messages"]
    assert [c["id"] for c in out[0]["tool_calls"]] == ["call_a", "call_b"]
    assert [(m["tool_call_id"], m["content"]) for m in out[1:]] == [("call_b", "two"), ("call_a", "one")]


def test_a_tool_result_with_nothing_to_answer_goes_without_an_id():
    out = pivot("chat", messages=[*HI, {"role": "tool", "content": "42", "tool_name": "f"}])["messages"]
    assert out[1] == {"role": "tool", "content": "42", "name": "f"}


def test_options_become_the_backends_sampling_parameters():
    out = pivot("chat", options={"num_predict": 128, "temperature": 0.2, "top_p": 0.9, "top_k": 40, "min_p": 0.05, "seed": 7,
                                 "stop": ["</s>", "\nUser:"], "frequency_penalty": 0.5, "presence_penalty": -0.5,
                                 "repeat_penalty": 1.1, "typical_p": 0.95, "repeat_last_n": 64, "num_keep": 4,
                                 "num_ctx": 8192, "num_gpu": 99, "num_thread": 8, "use_mmap": False, "mirostat": 2})
    assert {k: v for k, v in out.items() if k not in ("model", "messages", "stream", "stream_options")} == {
        "max_tokens": 128, "temperature": 0.2, "top_p": 0.9, "min_p": 0.05, "frequency_penalty": 0.5, "presence_penalty": -0.5,
        "typical_p": 0.95, "top_k": 40, "seed": 7, "stop": ["</s>", "\nUser:"], "repetition_penalty": 1.1, "repeat_penalty": 1.1,
        "repeat_last_n": 64, "n_keep": 4}


@pytest.mark.parametrize("options, expected", [
    ({"num_predict": -1}, {}), ({"num_predict": -2}, {}), ({"num_predict": 0}, {}), ({"num_predict": 12.7}, {"max_tokens": 12}),
    ({"top_k": 0}, {}), ({"seed": -1}, {}), ({"seed": 0}, {"seed": 0}), ({"temperature": None}, {}), ({"temperature": 0}, {"temperature": 0}),
])
def test_ollamas_no_limit_off_and_random_values_are_left_to_the_backend(options, expected):
    out = pivot("chat", stream=False, options=options)
    assert {k: v for k, v in out.items() if k not in ("model", "messages", "stream")} == expected


def test_format_tools_and_think_translate():
    schema = {"type": "object", "properties": {"age": {"type": "integer"}}, "required": ["age"]}
    tools = [{"type": "function", "function": {"name": "get_weather", "description": "Weather",
                                               "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}]
    assert pivot("chat", format="json")["response_format"] == {"type": "json_object"}
    assert pivot("chat", format=schema)["response_format"] == {"type": "json_schema", "json_schema": {"name": "schema", "schema": schema}}
    assert "response_format" not in pivot("chat", format="")
    assert pivot("chat", tools=tools)["tools"] == tools
    assert pivot("chat", think=False)["chat_template_kwargs"] == {"enable_thinking": False}
    assert pivot("chat", think=True)["chat_template_kwargs"] == {"enable_thinking": True}
    low = pivot("chat", think="low")
    assert (low["chat_template_kwargs"], low["reasoning_effort"]) == ({"enable_thinking": True, "reasoning_effort": "low"}, "low")
    top = pivot("chat", think="max")
    assert (top["chat_template_kwargs"]["reasoning_effort"], top["reasoning_effort"]) == ("max", "high")


def test_what_ollama_alone_knows_is_not_sent():
    out = pivot("chat", keep_alive="1h", truncate=False, shift=True, logprobs=True, top_logprobs=3,
                messages=[{"role": "assistant", "content": "Hi", "thinking": "greet"}, *HI])
    assert set(out) == {"model", "messages", "stream", "stream_options"}
    assert out["messages"][0] == {"role": "assistant", "content": "Hi"}


def test_a_chat_without_messages_only_loads_a_model_and_cannot_be_translated():
    with pytest.raises(BadRequest) as info:
        pivot("chat", messages=[])
    assert info.value.param == "messages"


# ---------------------------------------------------------------------------
# to_pivot: generate, embed, embeddings
# ---------------------------------------------------------------------------


def test_generate_becomes_a_completion():
    assert pivot("generate", suffix="    return x", raw=True, options={"num_predict": 64, "stop": ["\n\n"]}, format="json") == {
        "model": "llama3.2", "prompt": "Why?", "suffix": "    return x", "stream": True, "stream_options": {"include_usage": True},
        "max_tokens": 64, "stop": ["\n\n"], "response_format": {"type": "json_object"}}


def test_generate_without_num_predict_has_no_limit_and_an_empty_prompt_costs_one_token():
    assert pivot("generate", stream=False) == {"model": "llama3.2", "prompt": "Why?", "stream": False, "max_tokens": None}
    assert pivot("generate", prompt="", stream=False)["max_tokens"] == 1
    assert pivot("generate", prompt=None, stream=False)["prompt"] == ""
    assert b'"max_tokens":null' in orjson.dumps(pivot("generate"))  # vLLM's completions default would be 16 tokens


@pytest.mark.parametrize("field, value", [("system", "You are terse."), ("template", "{{ .Prompt }}"), ("images", [PNG]),
                                          ("context", [1, 2, 3])])
def test_generate_refuses_what_needs_ollamas_template(field, value):
    with pytest.raises(BadRequest) as info:
        pivot("generate", **{field: value})
    assert info.value.param == field and "/api/chat" in info.value.message


def test_empty_system_or_images_are_no_reason_to_refuse():
    assert pivot("generate", system="", images=[], context=None)["prompt"] == "Why?"


def test_embed_and_embeddings_become_openai_embeddings():
    assert pivot("embed", input=["a", "b"], dimensions=256, truncate=True, keep_alive="5m", options={"num_ctx": 512}) == {
        "model": "all-minilm", "input": ["a", "b"], "dimensions": 256}
    assert pivot("embed") == {"model": "all-minilm", "input": "text"}
    assert pivot("embeddings", options={"temperature": 0}) == {"model": "all-minilm", "input": "text"}


@pytest.mark.parametrize("door, fields, param", [("embed", {"input": []}, "input"), ("embed", {"input": ""}, "input"),
                                                 ("embed", {"input": None}, "input"), ("embeddings", {"prompt": ""}, "prompt")])
def test_nothing_to_embed_cannot_be_translated(door, fields, param):
    with pytest.raises(BadRequest) as info:
        pivot(door, **fields)
    assert info.value.param == param


# ---------------------------------------------------------------------------
# from_pivot
# ---------------------------------------------------------------------------

VLLM_CHAT = {
    "id": "chatcmpl-9d1", "object": "chat.completion", "created": 1, "model": "meta-llama/Llama-3.2-3B-Instruct",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "Rayleigh scattering.", "refusal": None,
                                         "tool_calls": [], "reasoning_content": None},
                 "logprobs": None, "finish_reason": "stop", "stop_reason": None}],
    "usage": {"prompt_tokens": 26, "total_tokens": 30, "completion_tokens": 4, "prompt_tokens_details": None},
}


def test_a_chat_answer_is_written_as_ollama_writes_it():
    out = CHAT.from_pivot(VLLM_CHAT, CTX)
    assert out == {"model": "llama3.2", "created_at": AT, "message": {"role": "assistant", "content": "Rayleigh scattering."},
                   "done": True, "done_reason": "stop", "prompt_eval_count": 26, "eval_count": 4}
    assert list(out) == ["model", "created_at", "message", "done", "done_reason", "prompt_eval_count", "eval_count"]
    parsed = ollama.ChatResponse.model_validate(out)
    assert (parsed.message.content, parsed.done, parsed.eval_count, parsed.total_duration) == ("Rayleigh scattering.", True, 4, None)


def test_a_chat_answer_with_tool_calls_thinking_and_llama_server_timings():
    data = {"choices": [{"finish_reason": "tool_calls", "index": 0, "message": {
        "role": "assistant", "content": None, "reasoning_content": "Need the weather.",
        "tool_calls": [{"type": "function", "function": {"name": "get_weather", "arguments": '{"city":"Tokyo","days":[1,2]}'},
                        "id": "Xy7kQ2pL9mN0aB1cD3eF5gH7jK9lM1nO"}]}}],
        "created": 1, "model": "qwen3", "object": "chat.completion",
        "usage": {"completion_tokens": 18, "prompt_tokens": 169, "total_tokens": 187}, "id": "chatcmpl-x",
        "timings": {"cache_n": 0, "prompt_n": 169, "prompt_ms": 141.656333, "predicted_n": 18, "predicted_ms": 133.293625}}
    out = CHAT.from_pivot(data, CTX)
    assert out["message"] == {"role": "assistant", "content": "", "thinking": "Need the weather.", "tool_calls": [
        {"id": "Xy7kQ2pL9mN0aB1cD3eF5gH7jK9lM1nO", "function": {"index": 0, "name": "get_weather",
                                                              "arguments": {"city": "Tokyo", "days": [1, 2]}}}]}
    assert {k: out[k] for k in list(out)[3:]} == {"done": True, "done_reason": "stop", "prompt_eval_count": 169,
                                                  "prompt_eval_duration": 141656333, "eval_count": 18, "eval_duration": 133293625}
    parsed = ollama.ChatResponse.model_validate(out)
    assert parsed.message.tool_calls[0].function.arguments == {"city": "Tokyo", "days": [1, 2]}


@pytest.mark.parametrize("finish, reason", [("stop", "stop"), ("length", "length"), ("tool_calls", "stop"),
                                            ("content_filter", "stop"), (None, "stop"), ([1], "stop")])
def test_done_reason_is_ollamas(finish, reason):
    data = {**VLLM_CHAT, "choices": [{**VLLM_CHAT["choices"][0], "finish_reason": finish}]}
    assert CHAT.from_pivot(data, CTX)["done_reason"] == reason


@pytest.mark.parametrize("data", [{}, {"choices": []}, {"choices": ["x"]}, {"choices": [{"message": "hi"}]},
                                  {"choices": [{"message": {"tool_calls": [{"function": {"name": "f", "arguments": "[1]"}}]}}]},
                                  {"choices": [{"message": {"tool_calls": [{"function": {"arguments": "{}"}}]}}]},
                                  {"choices": [{"message": {"tool_calls": ["f"]}}]}])
def test_a_malformed_chat_answer_is_an_upstream_error(data):
    with pytest.raises(UpstreamError):
        CHAT.from_pivot(data, CTX)


_TYPES = {"chat": ollama.ChatResponse, "generate": ollama.GenerateResponse, "embed": ollama.EmbedResponse,
          "embeddings": ollama.EmbeddingsResponse}
_answers = st.fixed_dictionaries({}, optional={
    "choices": st.lists(st.fixed_dictionaries({}, optional={
        "message": st.fixed_dictionaries({}, optional={k: _json for k in ["role", "content", "tool_calls", "reasoning_content"]}) | _json,
        "text": _json, "finish_reason": _json}) | _json, max_size=2) | _json,
    "data": st.lists(st.fixed_dictionaries({}, optional={"index": _json, "embedding": _json}) | _json, max_size=2) | _json,
    "usage": st.fixed_dictionaries({}, optional={"prompt_tokens": _json, "completion_tokens": _json}) | _json,
    "timings": st.fixed_dictionaries({}, optional={"prompt_ms": _json, "predicted_n": _json}) | _json})


@FUZZ
@given(door=st.sampled_from(sorted(DOORS)), data=_answers)
def test_any_backend_answer_is_an_ollama_answer_or_an_upstream_error(door, data):
    try:
        out = DOORS[door].from_pivot(data, CTX)
    except UpstreamError:
        return
    _TYPES[door].model_validate(out)
    orjson.dumps(out)


def test_a_completion_answer_is_an_ollama_generate_answer():
    data = {"id": "cmpl-1", "object": "text_completion", "created": 1, "model": "m",
            "choices": [{"index": 0, "text": " Because of Rayleigh scattering", "logprobs": None, "finish_reason": "length"}],
            "usage": {"prompt_tokens": 3, "total_tokens": 9, "completion_tokens": 6}}
    out = GENERATE.from_pivot(data, CTX)
    assert out == {"model": "llama3.2", "created_at": AT, "response": " Because of Rayleigh scattering", "done": True,
                   "done_reason": "length", "prompt_eval_count": 3, "eval_count": 6}
    assert list(out)[:5] == ["model", "created_at", "response", "done", "done_reason"]
    assert ollama.GenerateResponse.model_validate(out).response == " Because of Rayleigh scattering"
    with pytest.raises(UpstreamError):
        GENERATE.from_pivot({"choices": None}, CTX)


def test_embedding_answers_are_ollamas_in_input_order():
    data = {"object": "list", "model": "m", "data": [{"object": "embedding", "index": 1, "embedding": [0.3, 0.4]},
                                                    {"object": "embedding", "index": 0, "embedding": [0.1, -0.2]}],
            "usage": {"prompt_tokens": 8, "total_tokens": 8}}
    out = EMBED.from_pivot(data, CTX)
    assert out == {"model": "llama3.2", "embeddings": [[0.1, -0.2], [0.3, 0.4]], "prompt_eval_count": 8}
    assert ollama.EmbedResponse.model_validate(out).embeddings == [[0.1, -0.2], [0.3, 0.4]]
    legacy = EMBEDDINGS.from_pivot(data, CTX)
    assert legacy == {"embedding": [0.1, -0.2]}
    assert ollama.EmbeddingsResponse.model_validate(legacy).embedding == [0.1, -0.2]
    for bad_data in [{"data": "x"}, {"data": [{"embedding": "AAAA"}]}, {"data": [{"embedding": [0.1, None]}]}, {}]:
        with pytest.raises(UpstreamError):
            EMBED.from_pivot(bad_data, CTX)
    with pytest.raises(UpstreamError):
        EMBEDDINGS.from_pivot({"data": []}, CTX)


def test_created_at_is_gos_rfc3339_with_nanoseconds():
    assert go_time(1721680408 * 10**9 + 123456789) == "2024-07-22T20:33:28.123456789Z"
    assert go_time(1721680408 * 10**9 + 120000000) == "2024-07-22T20:33:28.12Z"
    assert go_time(1721680408 * 10**9) == AT
    assert datetime.fromisoformat(go_time(1721680408 * 10**9 + 5)).timestamp() == 1721680408


# ---------------------------------------------------------------------------
# pivot_stream: OpenAI SSE -> Ollama NDJSON
# ---------------------------------------------------------------------------


def sse(*objs, done: bool = True, nl: bytes = b"\n") -> bytes:
    out = b"".join(b"data: " + orjson.dumps(o) + nl + nl for o in objs)
    return out + (b"data: [DONE]" + nl + nl if done else b"")


def vllm_chunk(delta, finish=None, **extra):
    choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish, **extra}
    return {"id": "chatcmpl-9d1", "object": "chat.completion.chunk", "created": 1, "model": "m", "choices": [choice]}


def llama_chunk(delta, finish=None):
    return {"choices": [{"finish_reason": finish, "index": 0, "delta": delta}], "created": 1, "id": "chatcmpl-abc",
            "model": "m", "system_fingerprint": "b6700", "object": "chat.completion.chunk"}


USAGE = {"prompt_tokens": 26, "completion_tokens": 3, "total_tokens": 29}
VLLM_TEXT = sse(vllm_chunk({"role": "assistant", "content": ""}), vllm_chunk({"content": "The"}),
                vllm_chunk({"content": " sky é"}), vllm_chunk({"content": "!"}, "stop", stop_reason=None),
                {"id": "chatcmpl-9d1", "object": "chat.completion.chunk", "created": 1, "model": "m", "choices": [], "usage": USAGE})
TEXT_LINES = (
    b'{"model":"llama3.2","created_at":"2024-07-22T20:33:28Z","message":{"role":"assistant","content":"The"},"done":false}\n'
    b'{"model":"llama3.2","created_at":"2024-07-22T20:33:28Z","message":{"role":"assistant","content":" sky \xc3\xa9"},"done":false}\n'
    b'{"model":"llama3.2","created_at":"2024-07-22T20:33:28Z","message":{"role":"assistant","content":"!"},"done":false}\n'
    b'{"model":"llama3.2","created_at":"2024-07-22T20:33:28Z","message":{"role":"assistant","content":""},"done":true,'
    b'"done_reason":"stop","prompt_eval_count":26,"eval_count":3}\n'
)


def test_a_vllm_chat_stream_becomes_ollamas_ndjson():
    stream = CHAT.pivot_stream(CTX)
    assert feed(stream, [VLLM_TEXT]) == TEXT_LINES
    assert (stream.finished, stream.failed, stream.usage) == (True, False, USAGE)
    for line in lines(TEXT_LINES):
        ollama.ChatResponse.model_validate(line)


@FUZZ
@given(cuts=_cuts, nl=st.sampled_from([b"\n", b"\r\n"]))
def test_the_same_lines_come_out_for_every_split(cuts, nl):
    raw = VLLM_TEXT.replace(b"\n", nl)
    assert feed(CHAT.pivot_stream(CTX), split(raw, cuts)) == TEXT_LINES


def test_a_llama_server_stream_with_thinking_and_timings():
    timings = {"cache_n": 4, "prompt_n": 22, "prompt_ms": 41.5, "predicted_n": 3, "predicted_ms": 30.25}
    raw = sse(llama_chunk({"role": "assistant", "content": None}), llama_chunk({"reasoning_content": "Hmm"}),
              llama_chunk({"content": "Hi"}), llama_chunk({}, "length"),
              {"choices": [], "created": 1, "id": "chatcmpl-abc", "model": "m", "object": "chat.completion.chunk",
               "usage": USAGE, "timings": timings})
    out = lines(feed(CHAT.pivot_stream(CTX), [raw]))
    assert [line["message"] for line in out] == [{"role": "assistant", "content": "", "thinking": "Hmm"},
                                                 {"role": "assistant", "content": "Hi"}, {"role": "assistant", "content": ""}]
    assert {k: out[-1][k] for k in list(out[-1])[3:]} == {"done": True, "done_reason": "length", "prompt_eval_count": 26,
                                                          "prompt_eval_duration": 41500000, "eval_count": 3,
                                                          "eval_duration": 30250000}


TOOL_STREAM = sse(
    vllm_chunk({"role": "assistant", "content": ""}),
    vllm_chunk({"tool_calls": [{"id": "chatcmpl-tool-3f2", "type": "function", "index": 0, "function": {"name": "get_weather"}}]}),
    vllm_chunk({"tool_calls": [{"index": 0, "function": {"arguments": '{"city": "To'}}]}),
    vllm_chunk({"tool_calls": [{"index": 0, "function": {"arguments": 'kyo"}'}}]}),
    vllm_chunk({"tool_calls": [{"id": "chatcmpl-tool-9aa", "type": "function", "index": 1,
                                "function": {"name": "get_time", "arguments": ""}}]}),
    vllm_chunk({"content": ""}, "tool_calls"),
    {"id": "chatcmpl-9d1", "object": "chat.completion.chunk", "created": 1, "model": "m", "choices": [], "usage": USAGE},
)


def test_tool_call_fragments_arrive_whole_in_one_line():
    out = feed(CHAT.pivot_stream(CTX), [TOOL_STREAM])
    assert out == (
        b'{"model":"llama3.2","created_at":"2024-07-22T20:33:28Z","message":{"role":"assistant","content":"","tool_calls":['
        b'{"id":"chatcmpl-tool-3f2","function":{"index":0,"name":"get_weather","arguments":{"city":"Tokyo"}}},'
        b'{"id":"chatcmpl-tool-9aa","function":{"index":1,"name":"get_time","arguments":{}}}]},"done":false}\n'
        b'{"model":"llama3.2","created_at":"2024-07-22T20:33:28Z","message":{"role":"assistant","content":""},"done":true,'
        b'"done_reason":"stop","prompt_eval_count":26,"eval_count":3}\n')
    calls = ollama.ChatResponse.model_validate(lines(out)[0]).message.tool_calls
    assert [(c.function.name, c.function.arguments) for c in calls] == [("get_weather", {"city": "Tokyo"}), ("get_time", {})]


def test_a_completions_stream_becomes_ollamas_generate_ndjson():
    chunk = lambda text, finish=None: {"id": "cmpl-1", "object": "text_completion", "created": 1, "model": "m",  # noqa: E731
                                       "choices": [{"index": 0, "text": text, "logprobs": None, "finish_reason": finish}]}
    raw = sse(chunk(" Because"), chunk(""), chunk(" light", "length"), {**chunk("", None), "choices": [], "usage": USAGE})
    stream = GENERATE.pivot_stream(CTX)
    out = feed(stream, split(raw, "bytes"))
    assert out == (
        b'{"model":"llama3.2","created_at":"2024-07-22T20:33:28Z","response":" Because","done":false}\n'
        b'{"model":"llama3.2","created_at":"2024-07-22T20:33:28Z","response":" light","done":false}\n'
        b'{"model":"llama3.2","created_at":"2024-07-22T20:33:28Z","response":"","done":true,"done_reason":"length",'
        b'"prompt_eval_count":26,"eval_count":3}\n')
    for line in lines(out):
        ollama.GenerateResponse.model_validate(line)
    assert stream.usage == USAGE


def test_usage_after_the_finish_is_waited_for_until_done():
    stream = CHAT.pivot_stream(CTX)
    head, usage_and_done = VLLM_TEXT.split(b"data: {\"id\":\"chatcmpl-9d1\",\"object\":\"chat.completion.chunk\",\"created\":1,"
                                           b"\"model\":\"m\",\"choices\":[],")
    assert stream.feed(head) == TEXT_LINES.rsplit(b"\n", 2)[0] + b"\n"  # content, but no done line yet
    assert not stream.finished
    assert stream.feed(b"data: {\"id\":\"chatcmpl-9d1\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"m\","
                       b"\"choices\":[]," + usage_and_done).endswith(b'"prompt_eval_count":26,"eval_count":3}\n')
    assert stream.finished and stream.close() == b""


def test_an_end_after_the_finish_without_done_still_ends_properly():
    raw = sse(vllm_chunk({"content": "Hi"}), vllm_chunk({}, "stop"), done=False)
    stream = CHAT.pivot_stream(CTX)
    out = lines(feed(stream, [raw]))
    assert out[-1]["done"] is True and out[-1]["done_reason"] == "stop" and not stream.failed
    assert list(out[-1]) == ["model", "created_at", "message", "done", "done_reason"]  # no counts were given
    assert stream.usage is None


@pytest.mark.parametrize("tail, message", [
    (b'data: {"error": {"message": "The model crashed", "type": "InternalServerError", "code": 500}}\n\n', "The model crashed"),
    (b'data: {"object": "error", "error": "boom"}\n\n', "boom"),
    (b"data: <html>\n\n", "not JSON"),
    (b"data: [1, 2]\n\n", "not a JSON object"),
    (b'data: {"id": "x"}\n\n', "without choices"),
    (b'data: {"choices": [{"delta": {"content": 5}}]}\n\n', "not a string"),
    (b'data: {"choices": [{"delta": {"tool_calls": [{"index": "0"}]}}]}\n\n', "integer index"),
    (b'data: {"choices": [{"delta": {"tool_calls": [{"index": 0, "function": {"name": "f", "arguments": "[1"}}]},'
     b' "finish_reason": "tool_calls"}]}\n\n', "not a JSON object"),
])
def test_errors_inside_the_stream_end_it_with_an_ollama_error_line(tail, message):
    stream = CHAT.pivot_stream(CTX)
    first = sse(vllm_chunk({"content": "Hi"}), done=False)
    out = stream.feed(first + tail + sse(vllm_chunk({"content": "late"})))
    head, _, last = out.rstrip(b"\n").rpartition(b"\n")
    assert lines(head + b"\n")[0]["message"]["content"] == "Hi"
    assert list(orjson.loads(last)) == ["error"] and message in orjson.loads(last)["error"]
    assert stream.failed and stream.finished and message in stream.error
    assert stream.feed(b"data: [DONE]\n\n") == b"" and stream.close() == b""


@FUZZ
@given(cut=st.integers(0, len(VLLM_TEXT)), cuts=_cuts)
@example(cut=VLLM_TEXT.index(b"\n\n", VLLM_TEXT.index(b'"finish_reason":"stop"')) + 2, cuts=[])  # before the usage
@example(cut=VLLM_TEXT.index(b'"finish_reason":"stop"'), cuts=[])  # inside the finish chunk
def test_an_early_end_fails_unless_the_finish_came(cut, cuts):
    """Cut anywhere: before the finish chunk the stream fails with an error line, never
    silently; after it, the answer is whole and ends with the done line."""
    stream = CHAT.pivot_stream(CTX)
    out = feed(stream, split(VLLM_TEXT[:cut], cuts))
    got = lines(out) if out else []
    finish_at = VLLM_TEXT.index(b'"finish_reason":"stop"')
    complete = VLLM_TEXT.find(b"\n", finish_at) <= cut  # the finish chunk is whole, its line ending or not
    assert stream.finished
    assert stream.failed is not complete
    if complete:
        assert got[-1]["done"] is True and got[-1]["done_reason"] == "stop"
    else:
        assert got[-1] == {"error": "the backend ended the stream before it finished"}
    content = [line for line in got if line.get("done") is False]
    assert content == lines(TEXT_LINES)[:len(content)]


@FUZZ
@given(door=st.sampled_from(["chat", "generate"]), objs=st.lists(_answers | st.builds(
    lambda delta, finish: {"choices": [{"index": 0, "delta": delta, "text": delta, "finish_reason": finish}]},
    _json, st.sampled_from([None, "stop", "length", "tool_calls"]) | _json), max_size=5), done=st.booleans(), cuts=_cuts)
def test_any_backend_stream_ends_in_ollama_lines_or_an_error_line(door, objs, done, cuts):
    """Whatever a backend streams, the client gets whole NDJSON lines the ``ollama`` client
    reads, ending in the done line or an error line, never an exception or silence."""
    stream = DOORS[door].pivot_stream(CTX)
    got = lines(feed(stream, split(sse(*objs, done=done), cuts)))
    assert stream.finished
    assert ("error" in got[-1]) is stream.failed
    assert got[-1].get("done") is True or stream.failed
    for line in got[:-1] if stream.failed else got:
        _TYPES[door].model_validate(line)


def test_an_embedding_door_has_no_stream():
    with pytest.raises(TypeError):
        EMBED.pivot_stream(CTX)


# ---------------------------------------------------------------------------
# Round trips
# ---------------------------------------------------------------------------

_texts = st.one_of(st.text(max_size=10), st.sampled_from(["é", "日本語", "😀👍🏽", "\n", "\r\n", "data: [DONE]", '"done":true', "\\", "\x00"]))
_args = st.dictionaries(st.text(max_size=6), st.recursive(
    st.none() | st.booleans() | st.integers(-2**63, 2**63 - 1) | st.floats(allow_nan=False, allow_infinity=False) | _texts,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3), max_leaves=8), max_size=4)


@FUZZ
@given(texts=st.lists(_texts, max_size=8), cuts=_cuts, nl=st.sampled_from([b"\n", b"\r\n"]))
def test_text_reassembles_for_any_split(texts, cuts, nl):
    raw = sse(vllm_chunk({"role": "assistant", "content": ""}), *[vllm_chunk({"content": t}) for t in texts],
              vllm_chunk({}, "stop"), nl=nl)
    whole = feed(CHAT.pivot_stream(CTX), [raw])
    assert feed(CHAT.pivot_stream(CTX), split(raw, cuts)) == whole
    got = lines(whole)
    assert "".join(line["message"]["content"] for line in got) == "".join(texts)
    assert got[-1]["done"] is True and all(line["done"] is False for line in got[:-1])
    for line in got:
        ollama.ChatResponse.model_validate(line)


@FUZZ
@given(name=st.sampled_from(["get_weather", "lookup", "ünïcode_tool"]), arguments=_args, streamed=st.booleans(),
       fragments=st.lists(st.integers(0, 10**4), max_size=8), cuts=_cuts, llama=st.booleans())
def test_a_tool_call_survives_ollama_to_openai_and_back(name, arguments, streamed, fragments, cuts, llama):
    """An Ollama client's tool call, sent in the history to an OpenAI backend, and the same
    call made by that backend (its arguments string cut into fragments when streamed)
    come back to the client with the same name and arguments object."""
    history = [*HI, {"role": "assistant", "content": "", "tool_calls": [{"function": {"name": name, "arguments": arguments}}]},
               {"role": "tool", "content": "done", "tool_name": name}]
    sent = pivot("chat", messages=history, stream=streamed)
    call = sent["messages"][1]["tool_calls"][0]
    assert sent["messages"][2]["tool_call_id"] == call["id"]
    assert orjson.loads(call["function"]["arguments"]) == arguments
    text = call["function"]["arguments"]
    if streamed:
        edges = [0, *sorted({f % (len(text) + 1) for f in fragments}), len(text)]
        pieces = [text[a:b] for a, b in zip(edges, edges[1:])]
        chunk = llama_chunk if llama else vllm_chunk
        raw = sse(chunk({"role": "assistant", "content": None if llama else ""}),
                  chunk({"tool_calls": [{"index": 0, "id": call["id"], "type": "function", "function": {"name": name, "arguments": ""}}]}),
                  *[chunk({"tool_calls": [{"index": 0, "function": {"arguments": p}}]}) for p in pieces if p],
                  chunk({}, "tool_calls"))
        stream = CHAT.pivot_stream(CTX)
        got = lines(feed(stream, split(raw, cuts)))
        assert not stream.failed
        message = ollama.ChatResponse.model_validate(got[0]).message
    else:
        answer = {"choices": [{"index": 0, "finish_reason": "tool_calls", "message": {
            "role": "assistant", "content": None, "tool_calls": [{"id": call["id"], "type": "function", "function": call["function"]}]}}]}
        message = ollama.ChatResponse.model_validate(CHAT.from_pivot(answer, CTX)).message
    assert [(c.function.name, json.loads(json.dumps(c.function.arguments))) for c in message.tool_calls] == [(name, arguments)]


@pytest.mark.parametrize("body", [{"model": "m"}, {"model": "m", "prompt": ""}, {"model": "m", "stream": True},
                                  {"model": "m", "prompt": None}])
def test_a_generate_that_only_loads_the_model_is_answered_whole_not_streamed(body):
    """Ollama answers a generate without a prompt with one JSON object, even when it streams
    (server/routes.go); the door asks a translated backend the same way (found by the fuzzer)."""
    from router.doors.ollama import GENERATE
    assert GENERATE.stream(body) is False
    assert GENERATE.to_pivot(body)["stream"] is False
