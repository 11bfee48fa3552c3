"""Stream framing does not depend on how the upstream's bytes are chunked.

The relay in ``router.upstream._relay`` is driven directly, with a fake upstream
response whose ``readany()`` hands out the upstream bytes split at
hypothesis-chosen positions (1-byte pieces, splits inside a UTF-8 code point,
between ``\\r`` and ``\\n``...). Both wire formats: OpenAI-compatible SSE (relayed
as bytes) and Ollama NDJSON (translated to SSE by ``StreamTranslator``).

Properties: every split gives the client the same stream as the unsplit upstream,
ending with ``data: [DONE]``; an upstream cut at any point ends the client's stream
with an OpenAI error event (or, cut after its ``[DONE]``, a proper ending), never
silently, and what came before it is a prefix of the whole stream's events.
"""

from __future__ import annotations

import asyncio
import os
import json
import re

import orjson
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from router.domain import Deployment
from router.errors import RouterError
from router.h1 import Disconnected
from router.providers.base import Context, error_event
from router.providers.ollama import StreamTranslator
from router.upstream import USAGE_WINDOW, Attempt, UpstreamErrors, _first, _relay
from router.usage import Usage

# Random exploration locally (it finds new cases over time); the same examples every time under CI.
FUZZ = settings(max_examples=250, deadline=None, derandomize=bool(os.environ.get("CI")),
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
CTX = Context(model="general_chat", id="chatcmpl-fuzz", created=1700000000, include_usage=True)
OPENAI_DEP = Deployment(id="v", model_name="m", provider="vllm", kind="vllm", upstream_model="m", api_base="http://127.0.0.1:1/v1")
OLLAMA_DEP = Deployment(id="o", model_name="m", provider="ollama", kind="ollama", upstream_model="m", api_base="http://127.0.0.1:2")


# ---------------------------------------------------------------------------
# Driving the relay with a fake upstream
# ---------------------------------------------------------------------------


class _Upstream:
    """``router.h1.Response.readany``: the pieces, then the end (or a broken connection)."""

    def __init__(self, pieces: list[bytes], drop: bool = False) -> None:
        self.pieces, self.drop = list(pieces), drop

    def at_eof(self) -> bool:
        return not self.pieces and not self.drop

    async def readany(self) -> bytes:
        if self.pieces:
            return self.pieces.pop(0)
        if self.drop:  # the connection broke instead of ending
            raise Disconnected("the server closed the connection")
        return b""


class _Client:
    """``web.StreamResponse.write``: what the client receives."""

    def __init__(self) -> None:
        self.body = bytearray()

    async def write(self, data: bytes) -> None:
        self.body += data


def relay(pieces: list[bytes], translator: StreamTranslator | None, drop: bool = False) -> tuple[bytes, Attempt]:
    """What the client gets when the upstream sends ``pieces``, as ``upstream._stream`` does it:
    the first output is read before the relay starts (a failure there is an error before
    any byte: here its event stands for that answer), a RouterError ends the stream with an event."""
    dep = OLLAMA_DEP if translator else OPENAI_DEP
    attempt = Attempt(dep, status=200, capture=bytearray(), capture_limit=1 << 30)
    client, upstream = _Client(), _Upstream(pieces, drop)

    async def run() -> bytes:
        try:
            guard = UpstreamErrors(dep, 5.0)
            async with guard:
                first = await _first(upstream, translator, dep)  # type: ignore[arg-type]
            return await _relay(client, upstream, first, translator, guard, attempt)
        except RouterError as exc:
            attempt.error = exc
            return error_event(exc.message, exc.type, exc.code)

    end = asyncio.run(run())
    attempt.captured(end)  # _stream keeps the closing bytes too (with the upstream's last ones, they go out together)
    return bytes(client.body) + end, attempt


def parse_sse(raw: bytes) -> list[str]:
    """The events an SSE client (per the HTML spec) dispatches: their data fields.
    Any line ending works; an event the stream ends inside is not dispatched."""
    text = raw.decode("utf-8")  # whole events only: never a code point split by the router
    events, data = [], []
    lines = re.split(r"\r\n|\r|\n", text)
    for line in lines[:-1]:  # the last piece has no line ending: discarded
        if line == "":
            if data:
                events.append("\n".join(data))
            data = []
        elif line.startswith(":"):
            continue
        else:
            name, _, value = line.partition(":")
            if name == "data":
                data.append(value[1:] if value.startswith(" ") else value)
    return events


def decoded(events: list[str]) -> list:
    return [e if e == "[DONE]" else json.loads(e) for e in events]


_CALL_ID = re.compile(rb"call_[0-9a-f]{24}")


def same_ids(raw: bytes) -> bytes:
    """Tool call ids Ollama did not send are random: number them in order instead."""
    seen: dict[bytes, bytes] = {}
    return _CALL_ID.sub(lambda m: seen.setdefault(m.group(0), b"call_%024d" % len(seen)), raw)


# How to cut a stream: into single bytes, at random positions, or at awkward ones (inside a
# UTF-8 code point, between \r and \n); positions are taken modulo the stream's length.
_cuts = st.one_of(
    st.just("bytes"),
    st.lists(st.integers(0, 10**6), max_size=30),
    st.tuples(st.just("awkward"), st.lists(st.integers(0, 10**6), min_size=1, max_size=30)),
)


def split(raw: bytes, cuts) -> list[bytes]:
    if cuts == "bytes" or not raw:
        return [raw[i:i + 1] for i in range(len(raw))]
    if isinstance(cuts, tuple):
        awkward = [i for i in range(1, len(raw)) if raw[i] & 0xC0 == 0x80 or raw[i - 1:i + 1] == b"\r\n"] or [len(raw)]
        positions = {awkward[c % len(awkward)] for c in cuts[1]}
    else:
        positions = {c % (len(raw) + 1) for c in cuts}
    edges = [0, *sorted(c for c in positions if 0 < c < len(raw)), len(raw)]
    return [raw[a:b] for a, b in zip(edges, edges[1:])]


# ---------------------------------------------------------------------------
# Realistic upstream streams
# ---------------------------------------------------------------------------

# Text a model may write: multi-byte code points, and SSE look-alikes that must stay inside their event.
_text = st.one_of(
    st.text(max_size=12),
    st.sampled_from(["é", "日本語", "😀👍🏽", "a\u0301", "\u2028", "\r\n", "\n\n", "data: [DONE]", "\n\ndata: [DONE]\n\n",
                     '"finish_reason":"stop"', "[DONE]", "\\", "\x00",
                     '"usage":{"prompt_tokens":1,"completion_tokens":1,"total_tokens":2}',
                     '\n\ndata: {"choices":[],"usage":{"prompt_tokens":3,"completion_tokens":3,"total_tokens":6}}\n\n']),
)
_tool_calls = st.lists(st.fixed_dictionaries({"name": st.sampled_from(["get_weather", "lookup", "ünïcode"]),
                                              "arguments": st.dictionaries(st.text(max_size=5), st.one_of(_text, st.integers(-2**63, 2**63 - 1)), max_size=2)}),
                       min_size=1, max_size=2)


def _dumps(obj, ascii_only: bool) -> bytes:
    return json.dumps(obj, ensure_ascii=True).encode() if ascii_only else orjson.dumps(obj)


@st.composite
def openai_stream(draw) -> bytes:
    """An OpenAI-compatible server's chat stream (vLLM, llama.cpp): role, content and tool call
    deltas, a finish_reason, maybe a usage chunk, keep-alive comments, then [DONE]."""
    nl = draw(st.sampled_from(["\n", "\r\n"])).encode()
    ascii_only = draw(st.booleans())
    base = {"id": "chatcmpl-up", "object": "chat.completion.chunk", "created": 1, "model": "m"}

    def event(choices, **extra) -> bytes:
        space = draw(st.sampled_from([b"data: ", b"data: ", b"data:"]))
        return space + _dumps({**base, "choices": choices, **extra}, ascii_only) + nl + nl

    def delta(d, finish=None) -> bytes:
        return event([{"index": 0, "delta": d, "logprobs": None, "finish_reason": finish}])

    out = [delta({"role": "assistant", "content": ""})]
    for text in draw(st.lists(_text, max_size=6)):
        out.append(delta({"content": text}))
        if draw(st.integers(0, 5)) == 0:
            out.append(b": keep-alive" + nl + nl)
    calls = draw(st.one_of(st.just([]), _tool_calls))
    for i, call in enumerate(calls):
        args = json.dumps(call["arguments"])
        out.append(delta({"tool_calls": [{"index": i, "id": f"call_{i}", "type": "function", "function": {"name": call["name"], "arguments": ""}}]}))
        for j in range(0, len(args), 7):  # arguments arrive in pieces
            out.append(delta({"tool_calls": [{"index": i, "function": {"arguments": args[j:j + 7]}}]}))
    out.append(delta({}, "tool_calls" if calls else draw(st.sampled_from(["stop", "length"]))))
    if draw(st.booleans()):
        out.append(event([], usage={"prompt_tokens": 5, "completion_tokens": 7, "total_tokens": 12}))
    out.append(b"data: [DONE]" + nl + nl)
    return b"".join(out)


@st.composite
def ollama_stream(draw, endpoint: str) -> bytes:
    """Ollama's NDJSON: content (and thinking, tool call) lines, then the done line with counts."""
    nl = draw(st.sampled_from(["\n", "\r\n"])).encode()
    ascii_only = draw(st.booleans())
    lines = []
    for text in draw(st.lists(_text, max_size=6)):
        if endpoint == "chat":
            message = {"role": "assistant", "content": text}
            if draw(st.integers(0, 4)) == 0:
                message["thinking"] = draw(_text)
            lines.append({"model": "m", "created_at": "2024-01-01T00:00:00Z", "message": message, "done": False})
        else:
            lines.append({"model": "m", "response": text, "done": False})
    if endpoint == "chat" and draw(st.booleans()):
        calls = [{"function": c} | ({"id": f"call_{i}"} if draw(st.booleans()) else {}) for i, c in enumerate(draw(_tool_calls))]
        lines.append({"model": "m", "message": {"role": "assistant", "content": "", "tool_calls": calls}, "done": False})
    final = {"model": "m", "done": True, "done_reason": draw(st.sampled_from(["stop", "length", "load"])),
             "total_duration": 123, "prompt_eval_count": draw(st.integers(0, 99)), "eval_count": draw(st.integers(0, 99))}
    final |= {"message": {"role": "assistant", "content": ""}} if endpoint == "chat" else {"response": "", "context": [1, 2, 3]}
    lines.append(final)
    blank = nl if draw(st.booleans()) else b""
    return b"".join(_dumps(line, ascii_only) + nl + blank for line in lines)


# ---------------------------------------------------------------------------
# Properties
# ---------------------------------------------------------------------------


def _sse(*events: bytes, nl: bytes = b"\n") -> bytes:
    return b"".join(b"data: " + e + nl + nl for e in events)


_ROLE = b'{"id":"x","choices":[{"index":0,"delta":{"role":"assistant","content":""},"finish_reason":null}]}'
_SAYS_DONE = b'{"id":"x","choices":[{"index":0,"delta":{"content":"SSE ends with data: [DONE]"},"finish_reason":null}]}'
_STOP = b'{"id":"x","choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}'
_STREAM = _sse(_ROLE, _SAYS_DONE, _STOP, b"[DONE]")


@FUZZ
@given(raw=openai_stream(), cuts=_cuts)
# Regressions. The model writing "data: [DONE]" was taken for the end of a stream cut short: an error event.
@example(raw=_STREAM, cuts=[len(_sse(_ROLE, _SAYS_DONE))])
# The token estimate counted a "data:" split across two chunks zero times.
@example(raw=_STREAM, cuts=[len(_sse(_ROLE)) + 2])
def test_openai_sse_relay_is_independent_of_chunking(raw, cuts):
    whole, whole_attempt = relay([raw], None)
    assert whole == raw and whole_attempt.error is None  # relayed untouched
    events = parse_sse(whole)
    assert events[-1] == "[DONE]" and events.count("[DONE]") == 1
    assert decoded(events)[-2]["choices"] == [] or decoded(events)[-2]["choices"][0]["finish_reason"] is not None
    got, attempt = relay(split(raw, cuts), None)
    assert got == whole
    assert attempt.error is None and attempt.tokens == whole_attempt.tokens
    assert bytes(attempt.capture) == whole
    # the usage is the final event's, whole or split anywhere; none without a usage event
    final = decoded(events)[-2]
    assert attempt.usage == whole_attempt.usage == (Usage(5, 7, 12) if final.get("usage") else None)


_USAGE = b'{"id":"x","choices":[],"usage":{"prompt_tokens":1234,"completion_tokens":56,"total_tokens":1290,' \
         b'"prompt_tokens_details":{"cached_tokens":1024}}}'


_STOP_WITH_USAGE = b'{"id":"x","choices":[{"index":0,"delta":{},"finish_reason":"stop"}],"usage":{"prompt_tokens":9,' \
                   b'"completion_tokens":3,"total_tokens":12},"timings":{"prompt_n":9,"predicted_n":3}}'


@FUZZ
@given(cuts=_cuts, events=st.integers(0, 20))
def test_usage_riding_with_the_finish_event_is_found_or_left_unknown_never_wrong(cuts, events):
    """llama-server's way: the usage is in the finish_reason's own event. Relayed in whole
    events it is found; split anywhere it is found, or (when that event began more than a
    chunk before its finish_reason arrived) unknown, never other counts."""
    content = b'{"id":"x","choices":[{"index":0,"delta":{"content":"w"},"finish_reason":null}]}'
    raw = _sse(_ROLE, *[content] * events, _STOP_WITH_USAGE, b"[DONE]")
    _, whole = relay([_sse(e) for e in (_ROLE, *[content] * events, _STOP_WITH_USAGE, b"[DONE]")], None)
    got, attempt = relay(split(raw, cuts), None)
    assert got == raw and whole.usage == Usage(9, 3, 12)
    assert attempt.usage in (Usage(9, 3, 12), None)


@FUZZ
@given(size=st.integers(0, 3 * USAGE_WINDOW), with_usage=st.booleans(), cuts=_cuts)
def test_the_final_usage_of_a_long_stream_in_small_pieces(size, with_usage, cuts):
    """A stream longer than the kept window, its end (usage event included) in pieces as small
    as one byte: the final event's usage is found whole, or is None when there is none."""
    content = b'{"id":"x","choices":[{"index":0,"delta":{"content":"%s"},"finish_reason":null}]}'
    body = [_ROLE, *(content % (b"w" * n) for n in [200] * (size // 200)), _STOP] + ([_USAGE] if with_usage else [])
    raw = _sse(*body, b"[DONE]")
    end = len(_sse(_STOP, *([_USAGE] if with_usage else []), b"[DONE]"))
    head, rest = raw[:-end], raw[-end:]
    pieces = [head[i:i + 4096] for i in range(0, len(head), 4096)]
    got, attempt = relay(pieces + split(rest, cuts), None)
    assert got == raw and attempt.error is None
    assert attempt.usage == (Usage(1234, 56, 1290, 1024) if with_usage else None)


_NDJSON = b'{"message":{"role":"assistant","content":"\xc3\xa9\xf0\x9f\x98\x80"},"done":false}\r\n' \
          b'{"message":{"role":"assistant","content":""},"done":true,"done_reason":"stop","eval_count":2}\r\n'


@FUZZ
@given(raw=st.sampled_from(["chat", "completions"]).flatmap(lambda e: st.tuples(st.just(e), ollama_stream(e))), cuts=_cuts)
@example(raw=("chat", _NDJSON), cuts=("awkward", list(range(8))))
def test_ollama_ndjson_translation_is_independent_of_chunking(raw, cuts):
    endpoint, raw = raw
    whole, whole_attempt = relay([raw], StreamTranslator(endpoint, CTX))
    assert whole_attempt.error is None
    events = decoded(parse_sse(whole))
    assert events[-1] == "[DONE]" and events.count("[DONE]") == 1
    assert events[-2]["usage"]["total_tokens"] == whole_attempt.tokens and events[-3]["choices"][0]["finish_reason"]
    assert all(e["id"] == CTX.id and e["model"] == CTX.model for e in events[:-1])
    got, attempt = relay(split(raw, cuts), StreamTranslator(endpoint, CTX))
    assert same_ids(got) == same_ids(whole)
    assert attempt.error is None and (attempt.tokens, attempt.prompt_tokens) == (whole_attempt.tokens, whole_attempt.prompt_tokens)


def _check_truncated(got: bytes, attempt: Attempt, whole_events: list[str], done_sent: bool) -> None:
    """Cut short: the client's events are a prefix of the whole stream's, then an error
    event; or, if the upstream's [DONE] got through, the whole stream."""
    events = parse_sse(got)
    assert events, "the client got nothing to read at all"
    if events[-1] == "[DONE]":
        assert done_sent and attempt.error is None
        assert events == whole_events
        return
    error = json.loads(events[-1])
    assert set(error) == {"error"} and error["error"]["message"] and attempt.error is not None, events[-1]
    assert events[:-1] == whole_events[:len(events) - 1], "the events before the error are not the stream's"


@FUZZ
@given(raw=openai_stream(), cut=st.integers(0, 10**6), cuts=_cuts, drop=st.booleans())
# Regressions. Cut inside an event, the error event used to be appended to the half line,
# so an SSE client read one broken event instead of the error.
@example(raw=_STREAM, cut=len(_sse(_ROLE)) + 20, cuts=[], drop=False)
@example(raw=_STREAM, cut=len(_sse(_ROLE)) + 20, cuts=[], drop=True)  # the connection broke there
@example(raw=_STREAM, cut=len(_sse(_ROLE)) - 1, cuts=[], drop=False)  # a whole event, but not its blank line
# Cut after "data: [DONE]" but before its blank line: the client never dispatched [DONE].
@example(raw=_STREAM, cut=len(_STREAM) - 2, cuts=[], drop=False)
def test_openai_sse_stream_cut_anywhere_ends_with_an_error_event_or_done(raw, cut, cuts, drop):
    cut %= len(raw)
    got, attempt = relay(split(raw[:cut], cuts), None, drop=drop)
    done_sent = re.search(rb"(?:^|[\r\n])data: ?\[DONE\]", raw[:cut]) is not None
    _check_truncated(got, attempt, parse_sse(raw), done_sent)


@FUZZ
@given(raw=st.sampled_from(["chat", "completions"]).flatmap(lambda e: st.tuples(st.just(e), ollama_stream(e))),
       cut=st.integers(0, 10**6), cuts=_cuts, drop=st.booleans())
def test_ollama_stream_cut_anywhere_ends_with_an_error_event_or_done(raw, cut, cuts, drop):
    endpoint, raw = raw
    cut %= len(raw)
    whole, _ = relay([raw], StreamTranslator(endpoint, CTX))
    got, attempt = relay(split(raw[:cut], cuts), StreamTranslator(endpoint, CTX), drop=drop)
    # The done line is the last: it got through whole only if just its line ending is missing.
    done_sent = raw[:cut].rstrip().endswith(b"}") and raw[:cut].rstrip().count(b"\n") == raw.rstrip().count(b"\n")
    _check_truncated(same_ids(got), attempt, parse_sse(same_ids(whole)), done_sent)
