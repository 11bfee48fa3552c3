"""What every wire-format adapter shares: the ``Adapter`` protocol, the per-request
``Context``, the stream translator's protocol, and the SSE framing of OpenAI
events and error events. A new front door or backend format starts here."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import orjson

from router.domain import Deployment


@dataclass(slots=True)  # built per request: not frozen, which would cost a __setattr__ per field
class Context:
    """Per-request facts the translation needs: the name the client asked for, the
    response id and creation time, and whether the client asked for stream usage."""

    model: str
    id: str
    created: int
    include_usage: bool = False


def sse(obj: dict[str, Any]) -> bytes:
    return b"data: " + orjson.dumps(obj) + b"\n\n"


def error_event(message: str, type_: str = "api_error", code: str | None = "upstream_error") -> bytes:
    return sse({"error": {"message": message, "type": type_, "param": None, "code": code}})


class StreamTranslator(Protocol):
    """Turns an upstream stream's bytes, split anywhere, into the client's SSE bytes
    (``router.upstream`` drives it; ``router.providers.ollama`` has the one we have)."""

    finished: bool  # the upstream said it is done: nothing more is translated
    failed: bool  # the stream broke (``error`` says how); an error event was emitted
    error: str
    usage: dict[str, int] | None  # the upstream's token counts, once known

    def feed(self, chunk: bytes) -> bytes: ...

    def close(self) -> bytes:
        """The upstream ended: whatever is still owed to the client (a final event, [DONE])."""
        ...

    # Optional: ``abort(exc) -> bytes``, the end of a stream the proxy gives up on (a
    # timeout, a broken connection), in step with what was sent (event sequence numbers).


class Adapter(Protocol):
    rewrites: bool  # builds its own response objects (needs a Context with a fresh id); False: bytes pass through
    stream_type: str  # the Content-Type of a stream to the client

    def stream_error(self, exc: Any, translator: StreamTranslator | None = None) -> bytes:
        """What ends the client's stream when ``exc`` (a ``RouterError``) broke it after its
        start; ``translator``, the stream's, may know how (its ``abort``, where it has one)."""
        ...

    def upstream_request(self, endpoint: str, body: dict[str, Any], deployment: Deployment, model: str) -> tuple[str, bytes]:
        """Return the upstream URL and JSON payload for ``body`` (already validated),
        sending ``model`` as the model name. May raise ``BadRequest``."""
        ...

    def response_body(self, endpoint: str, raw: bytes, ctx: Context, provider: str) -> bytes:
        """Turn a successful non-streaming upstream body into the client's body;
        raise ``UpstreamError`` if it is not what the server should send."""
        ...

    def is_stream(self, content_type: str) -> bool:
        """Whether a 200 answer to a streaming request really is a stream."""
        ...

    def translator(self, endpoint: str, ctx: Context) -> StreamTranslator | None:
        """A stream translator, or ``None`` to relay the upstream bytes unchanged."""
        ...
