"""What every front door shares: the ``Door`` protocol, and the two stream helpers
a door's translators are built from.

A front door is one client dialect (Anthropic Messages, OpenAI Responses, Ollama's
``/api/*``, rerank). It parses its dialect's request, tells the engine the facts it
routes by, and then, per deployment, either

* passes the body through to a backend that serves the dialect natively
  (``native_request``; the answer is relayed unchanged, a stream through ``watch``,
  which only looks for the stream's end and its errors), or
* translates it into an OpenAI request (``to_pivot``: chat, completions or
  embeddings), which the deployment's wire adapter (``router.providers``) then sends
  as it sends any OpenAI request, and translates the OpenAI answer back
  (``from_pivot``; a stream through ``pivot_stream``, which reads OpenAI SSE).

Errors, before the answer and inside a stream, are rendered in the dialect
(``error_body``, ``error_event``). Everything here is pure: no I/O, no clock except
what ``Context`` carries.
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from collections.abc import Iterator
from typing import Any, Protocol

import orjson

from router.config import Limits
from router.domain import Deployment
from router.errors import RouterError
from router.providers.base import Context, StreamTranslator

MAX_LINE = 16 * 1024 * 1024  # one stream line (SSE data or NDJSON) held while its end has not arrived


class Door(Protocol):
    """One client dialect. ``name`` labels the endpoint in logs, metrics and cache keys."""

    name: str  # e.g. "messages"
    pivot: str | None  # the OpenAI endpoint it translates through ("chat", "completions", "embeddings"); None: native only
    native_path: str  # the path a native backend serves it at, under the server's root, e.g. "/v1/messages"
    stream_type: str  # the Content-Type of a stream to the client
    id_prefix: str  # of the ids it writes into translated answers ("msg_", "resp_", ...)

    def parse(self, raw: bytes, limits: Limits) -> dict[str, Any]:
        """Decode and check a request body; raise ``BadRequest`` (with ``param``) for what
        no backend should see. Unknown fields stay, in order."""
        ...

    def stream(self, body: dict[str, Any]) -> bool:
        """Does this request ask for a stream? (Ollama's default is yes.)"""
        ...

    def native_request(self, body: dict[str, Any], deployment: Deployment, model: str) -> bytes:
        """The body for a backend that serves the dialect, sending ``model``."""
        ...

    def check_native(self, raw: bytes, provider: str) -> bytes:
        """A native backend's whole (non-stream) answer, unchanged; raise ``UpstreamError``
        when it is not an answer (not JSON, an error object under a 200)."""
        ...

    def watch(self, ctx: Context) -> StreamTranslator:
        """Relays a native stream's bytes unchanged (whole lines), finishing at the
        dialect's end event and failing (with an error event of its own) on an error or
        an early end."""
        ...

    def to_pivot(self, body: dict[str, Any]) -> dict[str, Any]:
        """The OpenAI request (of ``pivot``) that asks the same. A stream asks for
        ``stream_options.include_usage``. May raise ``BadRequest``."""
        ...

    def from_pivot(self, data: dict[str, Any], ctx: Context) -> dict[str, Any]:
        """The dialect's answer for an OpenAI answer ``data`` (id ``ctx.id``, model
        ``ctx.model``, time ``ctx.created``)."""
        ...

    def pivot_stream(self, ctx: Context) -> StreamTranslator:
        """Turns OpenAI SSE bytes (of ``pivot``), split anywhere, into the dialect's stream."""
        ...

    def error_body(self, exc: RouterError) -> bytes:
        """The whole error response body in the dialect (status and headers are ``exc``'s)."""
        ...

    def error_event(self, exc: RouterError) -> bytes:
        """What ends a stream that failed after its start, in the dialect."""
        ...


class Lines:
    """Splits a byte stream, cut anywhere, into whole lines (without their ``\\r\\n`` /
    ``\\n``); holds at most ``MAX_LINE`` bytes of an unfinished one."""

    __slots__ = ("_buf",)

    def __init__(self) -> None:
        self._buf = b""

    def feed(self, chunk: bytes) -> list[bytes]:
        """The lines ``chunk`` completes. Raises ``ValueError`` past ``MAX_LINE``."""
        if b"\n" not in chunk:
            self._buf += chunk
            if len(self._buf) > MAX_LINE:
                raise ValueError("a stream line longer than 16 MiB")
            return []
        *lines, self._buf = (self._buf + chunk).split(b"\n")
        return [line[:-1] if line[-1:] == b"\r" else line for line in lines]

    def rest(self) -> bytes:
        """What is left after the stream ended (a last line without a line ending)."""
        rest, self._buf = self._buf, b""
        return rest.rstrip(b"\r")


_DATA = re.compile(rb"data: ?")


class OpenAIEvents:
    """Reads an OpenAI SSE stream (chat or completions chunks), cut anywhere: ``feed``
    gives the JSON objects of its ``data:`` lines, in order. ``done`` turns true at
    ``data: [DONE]``. An error object (``{"error": ...}``, as servers and our Ollama
    translator send mid-stream) is given like any other object: the caller checks
    ``"error" in obj``. A line that is not JSON raises ``ValueError``."""

    __slots__ = ("_lines", "done")

    def __init__(self) -> None:
        self._lines = Lines()
        self.done = False

    def feed(self, chunk: bytes) -> Iterator[dict[str, Any]]:
        return self._objects(self._lines.feed(chunk))

    def close(self) -> Iterator[dict[str, Any]]:
        """Objects of a last line that came without its line ending."""
        rest = self._lines.rest()
        return self._objects([rest] if rest else [])

    def _objects(self, lines: list[bytes]) -> Iterator[dict[str, Any]]:
        for line in lines:
            if self.done or not line.startswith(b"data:"):
                continue  # blank lines, comments, event:/id:/retry: fields
            value = line[_DATA.match(line).end():].strip()  # type: ignore[union-attr]
            if value == b"[DONE]":
                self.done = True
                return
            try:
                obj = orjson.loads(value)
            except orjson.JSONDecodeError:
                raise ValueError(f"a stream line that is not JSON: {value[:100]!r}") from None
            if not isinstance(obj, dict):
                raise ValueError(f"a stream line that is not a JSON object: {value[:100]!r}")
            yield obj


class FromOpenAI(ABC):
    """The frame of a door's ``pivot_stream``: ``feed`` reads the OpenAI SSE stream
    (``OpenAIEvents``) and hands each JSON object to ``_object``, the stream's ``[DONE]``
    to ``_done`` and a line that is not JSON (or too long) to ``_malformed``; each returns
    the bytes the client gets. A subclass sets ``finished`` when its dialect's stream is
    over, and writes its own ``close`` (streams differ in what an end without ``[DONE]``
    means)."""

    finished: bool
    _events: OpenAIEvents

    def feed(self, chunk: bytes) -> bytes:
        if self.finished:
            return b""
        out = bytearray()
        try:
            for obj in self._events.feed(chunk):
                out += self._object(obj)
                if self.finished:
                    return bytes(out)
            if self._events.done:
                out += self._done()
        except ValueError as exc:
            out += self._malformed(exc)
        return bytes(out)

    @abstractmethod
    def _object(self, obj: dict[str, Any]) -> bytes:
        """The client's bytes for one OpenAI chunk (or error object)."""

    @abstractmethod
    def _done(self) -> bytes:
        """The client's bytes at the stream's ``[DONE]``."""

    @abstractmethod
    def _malformed(self, exc: ValueError) -> bytes:
        """The client's bytes for a line that is not JSON, or one too long."""


def sse_event(event: str, obj: dict[str, Any]) -> bytes:
    """A named SSE event (``event: X`` then ``data: {...}``), as Anthropic and the
    Responses API write them."""
    return b"event: " + event.encode() + b"\ndata: " + orjson.dumps(obj) + b"\n\n"
