"""Anthropic's Messages stream as the OpenAI chunk stream a chat or completions client reads.

Anthropic sends named server-sent events (``event: X`` / ``data: {...}`` / blank line):
``message_start`` (the message, its input usage), per content block
``content_block_start`` / ``content_block_delta`` / ``content_block_stop``, ``ping``s,
``message_delta`` (``stop_reason``, final usage), ``message_stop``; or an ``error`` event
at any point (``overloaded_error``, as a 529 would say before the stream began). The
client gets ``data: {chunk}`` lines and ``data: [DONE]``:

* a role chunk first, written with the first output rather than at ``message_start``:
  until then nothing has reached the client, so an error event right after
  ``message_start`` (Anthropic's overload) still lets the router try another deployment;
* ``text_delta`` as ``content``, ``thinking_delta`` as ``reasoning_content``; each
  ``tool_use`` block starts a tool call (its own ``index``, counted over the tool calls;
  ``id``, ``type``, ``name``, ``arguments: ""``) whose ``input_json_delta`` fragments are
  its arguments; other blocks (server tools, redacted thinking) and deltas (signatures,
  citations) have no chat form and are left out;
* the ``finish_reason`` chunk at the ``message_delta`` that says why it stopped; at
  ``message_stop`` the usage chunk (empty ``choices``, OpenAI's shape) when the client
  asked for ``stream_options.include_usage``, then ``[DONE]``.

A legacy completion gets ``text_completion`` chunks of the text alone. An ``error`` event,
an event that is not JSON, and an end before ``message_stop`` end the client's stream
with an OpenAI error event (``failed``), never a silent ``[DONE]``.
"""

from __future__ import annotations

from typing import Any

import orjson

from router.errors import RouterError
from router.providers.base import Context, error_event, sse

# One SSE line held while its end has not arrived, and one event's data: as
# router.doors.base.MAX_LINE (which cannot be imported here: router.doors imports this package).
MAX_LINE = 16 * 1024 * 1024
DONE = b"data: [DONE]\n\n"

# stop_reason -> finish_reason. LiteLLM's map_finish_reason, and the inverse of
# router.doors.anthropic.STOP_REASONS; pause_turn (a server tool's turn paused) is a stop,
# model_context_window_exceeded a truncation. Anything else: "stop", as LiteLLM defaults.
FINISH_REASONS = {"end_turn": "stop", "stop_sequence": "stop", "pause_turn": "stop", "max_tokens": "length",
                  "model_context_window_exceeded": "length", "tool_use": "tool_calls", "refusal": "content_filter"}
# Anthropic's error type in a stream -> OpenAI's error type for the client's error event
_ERROR_TYPES = {"invalid_request_error": "invalid_request_error", "authentication_error": "authentication_error",
                "permission_error": "permission_error", "not_found_error": "invalid_request_error",
                "rate_limit_error": "rate_limit_error"}


def finish_reason(stop_reason: Any) -> str:
    return FINISH_REASONS.get(stop_reason, "stop") if isinstance(stop_reason, str) else "stop"


def _count(value: Any) -> int:
    """A token count from Anthropic: a non-negative int, anything else (null) 0."""
    return value if type(value) is int and value > 0 else 0


def usage(raw: Any) -> dict[str, Any]:
    """OpenAI's usage for Anthropic's: the prompt counts the tokens read from and written
    to the prompt cache too (they were all prompt), the read ones also apart."""
    raw = raw if isinstance(raw, dict) else {}
    prompt = sum(_count(raw.get(k)) for k in ("input_tokens", "cache_read_input_tokens", "cache_creation_input_tokens"))
    completion = _count(raw.get("output_tokens"))
    out: dict[str, Any] = {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}
    if "cache_read_input_tokens" in raw:
        out["prompt_tokens_details"] = {"cached_tokens": _count(raw.get("cache_read_input_tokens"))}
    return out


class StreamTranslator:
    """Feeds on Anthropic SSE bytes split anywhere (``\\n`` or ``\\r\\n`` line endings),
    returns OpenAI SSE bytes. ``finished`` after ``message_stop`` (or a failure), ``failed``
    and ``error`` when the stream broke, ``usage`` (the router's token counts: prompt,
    completion, total, and cached when Anthropic says) from ``message_start`` on."""

    __slots__ = ("endpoint", "ctx", "finished", "failed", "error", "rate_limited", "usage", "_object", "_buf", "_event", "_data",
                 "_size", "_counts", "_started", "_finished_reason", "_blocks", "_tools")

    def __init__(self, endpoint: str, ctx: Context) -> None:
        self.endpoint = endpoint
        self.ctx = ctx
        self.finished = False
        self.failed = False
        self.error = ""
        self.rate_limited = False  # the error event said overloaded / rate limited (as a 529 / 429 would)
        self.usage: dict[str, int] | None = None
        self._object = "chat.completion.chunk" if endpoint == "chat" else "text_completion"
        self._buf = b""  # an unfinished line
        self._event = b""  # the current event's name
        self._data: list[bytes] = []  # its data lines
        self._size = 0
        self._counts: dict[str, Any] = {}  # Anthropic's usage fields as last reported
        self._started = False  # the role chunk is out
        self._finished_reason: str | None = None  # the finish chunk is out
        self._blocks: dict[int, Any] = {}  # content block index -> "text", "thinking", a tool call index, or None
        self._tools = 0

    # -- bytes in, bytes out

    def feed(self, chunk: bytes) -> bytes:
        if self.finished:
            return b""
        out = bytearray()
        if b"\n" in chunk:
            *lines, self._buf = (self._buf + chunk).split(b"\n")
            for line in lines:
                out += self._line(line[:-1] if line[-1:] == b"\r" else line)
                if self.finished:
                    return bytes(out)
        else:
            self._buf += chunk
        if len(self._buf) > MAX_LINE:
            self._buf = b""
            out += self._fail("anthropic sent a stream line longer than 16 MiB")
        return bytes(out)

    def close(self) -> bytes:
        """The upstream ended: an unterminated last line and event are taken as they are;
        without ``message_stop`` by then, an error event."""
        if self.finished:
            return b""
        rest, self._buf = self._buf.rstrip(b"\r"), b""
        out = self._line(rest) if rest else b""
        if not self.finished:
            out += self._line(b"")
        if self.finished:
            return out
        return out + self._fail("the stream ended before message_stop")

    def abort(self, exc: RouterError) -> bytes:
        """The end of a stream the proxy gives up on (a timeout, a broken connection): every
        event written so far is whole, so the error event simply follows."""
        if self.finished:
            return b""
        self.finished = self.failed = True
        self.error = exc.message
        return error_event(exc.message, exc.type, exc.code)

    def _fail(self, message: str, type_: str = "api_error", code: str | None = "upstream_error") -> bytes:
        self.finished = self.failed = True
        self.error = message
        return error_event(message, type_, code)

    # -- SSE framing

    def _line(self, line: bytes) -> bytes:
        if not line:
            return self._dispatch()
        if line.startswith(b"data:"):
            value = line[6:] if line[5:6] == b" " else line[5:]
            self._size += len(value)
            if self._size > MAX_LINE:
                return self._fail("anthropic sent a stream event longer than 16 MiB")
            self._data.append(value)
        elif line.startswith(b"event:"):
            self._event = line[6:].strip()
        return b""  # comments (":"), id: and retry: fields carry nothing here

    def _dispatch(self) -> bytes:
        data, event = b"\n".join(self._data), self._event
        self._data, self._event, self._size = [], b"", 0
        if not data:
            return b""
        try:
            obj = orjson.loads(data)
        except orjson.JSONDecodeError:
            return self._fail(f"anthropic sent a stream event that is not JSON: {data[:100]!r}")
        if not isinstance(obj, dict):
            return self._fail(f"anthropic sent a stream event that is not a JSON object: {data[:100]!r}")
        kind = obj.get("type") if isinstance(obj.get("type"), str) else event.decode("utf-8", "replace")
        try:
            return self._handle(kind, obj)
        except (AttributeError, TypeError, KeyError, ValueError) as exc:
            return self._fail(f"anthropic sent a {kind} event of an unexpected shape ({exc!r})")

    # -- events

    def _handle(self, kind: str, obj: dict[str, Any]) -> bytes:
        if kind == "content_block_delta":
            return self._delta(obj["index"], obj["delta"])
        if kind == "content_block_start":
            return self._block(obj["index"], obj["content_block"])
        if kind == "message_start":
            self._note_usage(obj["message"].get("usage"))
            return b""
        if kind == "message_delta":
            self._note_usage(obj.get("usage"))
            reason = (obj.get("delta") or {}).get("stop_reason")
            if reason is None or self._finished_reason is not None:
                return b""
            return self._finish(reason)
        if kind == "message_stop":
            return self._stop()
        if kind == "error":
            err = obj.get("error")
            etype = err.get("type") if isinstance(err, dict) else None
            message = err.get("message") if isinstance(err, dict) else err
            self.rate_limited = etype in ("overloaded_error", "rate_limit_error")
            return self._fail(f"the stream carried an error event: {message} ({etype})",
                              _ERROR_TYPES.get(etype, "api_error"), etype if isinstance(etype, str) else "upstream_error")
        return b""  # ping, content_block_stop, and event types Anthropic may add

    def _block(self, index: Any, block: dict[str, Any]) -> bytes:
        if type(index) is not int:
            raise TypeError(f"index {index!r}")
        kind = block["type"]
        if kind in ("text", "thinking"):
            self._blocks[index] = kind
            first = block.get(kind)
            return self._text(kind, first) if isinstance(first, str) and first else b""
        if kind != "tool_use" or self.endpoint != "chat":
            self._blocks[index] = None
            return b""
        if not isinstance(block.get("id"), str) or not isinstance(block.get("name"), str):
            raise TypeError("a tool_use block without a string id and name")
        call, self._tools = self._tools, self._tools + 1
        self._blocks[index] = call
        given = block.get("input")
        arguments = orjson.dumps(given).decode() if isinstance(given, dict) and given else ""
        return self._choice({"tool_calls": [{"index": call, "id": block["id"], "type": "function",
                                             "function": {"name": block["name"], "arguments": arguments}}]})

    def _delta(self, index: Any, delta: dict[str, Any]) -> bytes:
        kind = delta["type"]
        if kind == "text_delta":
            return self._text("text", delta["text"])
        if kind == "thinking_delta":
            return self._text("thinking", delta["thinking"])
        if kind == "input_json_delta":
            call = self._blocks.get(index)
            fragment = delta["partial_json"]
            if not isinstance(fragment, str):
                raise TypeError(f"partial_json {fragment!r}")
            if type(call) is not int or not fragment:
                return b""
            return self._choice({"tool_calls": [{"index": call, "function": {"arguments": fragment}}]})
        return b""  # signature_delta, citations_delta: no chat form

    def _text(self, kind: str, text: Any) -> bytes:
        if not isinstance(text, str):
            raise TypeError(f"{kind} {text!r}")
        if not text:
            return b""
        if self.endpoint != "chat":
            if kind != "text":
                return b""
            return self._chunk({"index": 0, "text": text, "logprobs": None, "finish_reason": None})
        return self._choice({"content": text} if kind == "text" else {"reasoning_content": text})

    def _finish(self, reason: Any) -> bytes:
        self._finished_reason = finish_reason(reason)
        if self.endpoint != "chat":
            return self._chunk({"index": 0, "text": "", "logprobs": None, "finish_reason": self._finished_reason})
        return self._choice({}, self._finished_reason)

    def _stop(self) -> bytes:
        out = b"" if self._finished_reason is not None else self._finish(None)
        if self.ctx.include_usage:
            out += sse({"id": self.ctx.id, "object": self._object, "created": self.ctx.created, "model": self.ctx.model,
                        "choices": [], "usage": usage(self._counts)})
        self.finished = True
        return out + DONE

    def _note_usage(self, raw: Any) -> None:
        if not isinstance(raw, dict):
            return
        self._counts.update((k, v) for k, v in raw.items() if type(v) is int)
        counted = usage(self._counts)
        self.usage = {k: counted[k] for k in ("prompt_tokens", "completion_tokens", "total_tokens")}
        if "prompt_tokens_details" in counted:
            self.usage["cached_tokens"] = counted["prompt_tokens_details"]["cached_tokens"]

    # -- chunks

    def _choice(self, delta: dict[str, Any], finish: str | None = None) -> bytes:
        """A chat chunk of one choice, after the role chunk if this is the first output."""
        out = b""
        if not self._started:
            self._started = True
            out = self._chunk({"index": 0, "delta": {"role": "assistant", "content": ""}, "logprobs": None,
                               "finish_reason": None})
        return out + self._chunk({"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish})

    def _chunk(self, choice: dict[str, Any]) -> bytes:
        obj: dict[str, Any] = {"id": self.ctx.id, "object": self._object, "created": self.ctx.created,
                               "model": self.ctx.model, "choices": [choice]}
        if self.ctx.include_usage:
            obj["usage"] = None
        return sse(obj)
