"""The conformance suite's parts: exact upstream bytes, a raw server that sends them,
and the two ways of fetching them (a reference client straight from the server, a
client through the proxy) with the comparison of what each saw.

A ``Reply`` is the server's side of one exchange: byte pieces written in order
(each a TCP write, with a gap before it), then the connection closed, kept for
the next request, or held open. A ``Shape`` is one case of the corpus: a reply,
which wire format and mode it is asked in, the deployment's timeouts and what a
client of the proxy must see.
"""

from __future__ import annotations

import asyncio
import io
import random
import textwrap
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import aiohttp
import orjson

from router import log
from router.config import load_config
from router.providers import OpenAICompatible
from router.providers.base import Context
from router.providers.ollama import StreamTranslator, chat_response

SSE_CT = b"text/event-stream"
NDJSON_CT = b"application/x-ndjson"
JSON_CT = b"application/json"
OPENAI_MODEL = "conf-openai"
OLLAMA_MODEL = "conf-ollama"
SHAPE_PATHS = (b"/v1/chat/completions", b"/api/chat")


# ---------------------------------------------------------------------------
# Bodies of an exact size
# ---------------------------------------------------------------------------

_TEXT = bytes(range(0x30, 0x3A)) + bytes(range(0x41, 0x5B)) + bytes(range(0x61, 0x7B))  # [0-9A-Za-z]
_TABLE = bytes(_TEXT[i % len(_TEXT)] for i in range(256))


def text(n: int, seed: int = 0) -> bytes:
    """``n`` printable bytes that never repeat with a short period (a reordered or
    doubled piece shows), safe inside a JSON string."""
    return random.Random(seed ^ n).randbytes(n).translate(_TABLE)


_COMPLETION = (b'{"id":"chatcmpl-c","object":"chat.completion","created":1,"model":"m","choices":[{"index":0,'
               b'"message":{"role":"assistant","content":"%s"},"logprobs":null,"finish_reason":"stop"}],'
               b'"usage":{"prompt_tokens":3,"completion_tokens":5,"total_tokens":8}}')


def openai_json(n: int) -> bytes:
    """A chat.completion of exactly ``n`` bytes (0: empty; 1: ``{``; small: ``{ ... }``)."""
    if n == 0:
        return b""
    if n == 1:
        return b"{"
    base = len(_COMPLETION) - 2
    if n < base:
        return b"{" + b" " * (n - 2) + b"}"
    return _COMPLETION % text(n - base)


def _sse_chunk(content: bytes) -> bytes:
    return (b'data: {"id":"c","object":"chat.completion.chunk","created":1,"model":"m","choices":[{"index":0,'
            b'"delta":{"content":"' + content + b'"},"logprobs":null,"finish_reason":null}]}\n\n')


_SSE_FINISH = (b'data: {"id":"c","object":"chat.completion.chunk","created":1,"model":"m","choices":[{"index":0,'
               b'"delta":{},"logprobs":null,"finish_reason":"stop"}]}\n\n')
_SSE_DONE = b"data: [DONE]\n\n"
SSE_MIN = len(_SSE_FINISH) + len(_SSE_DONE)


def openai_sse(n: int, event: int = 4096, crlf: bool = False) -> bytes:
    """A complete OpenAI chat stream of exactly ``n`` bytes (at least ``SSE_MIN``):
    content events carrying ``event`` bytes each, padding, the finish event, [DONE]."""
    assert n >= SSE_MIN, n
    out = []
    rest = n - SSE_MIN
    over = len(_sse_chunk(b""))
    seed = 0
    while rest >= 2 * over + event:
        out.append(_sse_chunk(text(event, seed)))
        rest -= over + event
        seed += 1
    if rest >= over:
        out.append(_sse_chunk(text(rest - over, seed)))
    elif rest >= 3:
        out.append(b":" + b"p" * (rest - 3) + b"\n\n")  # an SSE comment
    else:
        out.append(b"\n" * rest)
    out += [_SSE_FINISH, _SSE_DONE]
    body = b"".join(out)
    if crlf:  # same events, CRLF line ends (more bytes)
        body = body.replace(b"\n", b"\r\n")
    return body


_OLLAMA_DONE = (b'{"model":"m","created_at":"2024-01-01T00:00:00Z","message":{"role":"assistant","content":"%s"},'
                b'"done":true,"done_reason":"stop","prompt_eval_count":3,"eval_count":5}')
OLLAMA_JSON_MIN = len(_OLLAMA_DONE) - 2


def ollama_json(n: int) -> bytes:
    """An Ollama /api/chat answer of exactly ``n`` bytes (below ``OLLAMA_JSON_MIN``: not valid)."""
    if n < OLLAMA_JSON_MIN:
        return (b"{" * min(n, 1)) + b" " * max(0, n - 1)
    return _OLLAMA_DONE % text(n - OLLAMA_JSON_MIN)


def _ndjson_line(content: bytes) -> bytes:
    return b'{"model":"m","created_at":"2024-01-01T00:00:00Z","message":{"role":"assistant","content":"' + content + b'"},"done":false}\n'


_NDJSON_LAST = (_OLLAMA_DONE % b"") + b"\n"
NDJSON_MIN = len(_NDJSON_LAST)


def ollama_ndjson(n: int, line: int = 4096) -> bytes:
    """A complete Ollama chat stream of exactly ``n`` bytes (at least ``NDJSON_MIN``)."""
    assert n >= NDJSON_MIN, n
    out = []
    rest = n - NDJSON_MIN
    over = len(_ndjson_line(b""))
    seed = 0
    while rest >= 2 * over + line:
        out.append(_ndjson_line(text(line, seed)))
        rest -= over + line
        seed += 1
    if rest >= over:
        out.append(_ndjson_line(text(rest - over, seed)))
    else:
        out.append(b"\n" * rest)  # blank lines, which Ollama's clients skip
    out.append(_NDJSON_LAST)
    return b"".join(out)


# ---------------------------------------------------------------------------
# Framing
# ---------------------------------------------------------------------------


def head(status: bytes = b"200 OK", headers: list[bytes] | None = None, version: bytes = b"HTTP/1.1") -> bytes:
    return version + b" " + status + b"\r\n" + b"".join(h + b"\r\n" for h in headers or []) + b"\r\n"


def framed(framing: str, body: bytes, content_type: bytes, *, chunk: int = 65536, status: bytes = b"200 OK",
           extra: list[bytes] | None = None, trailers: list[bytes] | None = None,
           version: bytes = b"HTTP/1.1") -> tuple[bytes, bytes]:
    """(head, rest): the answer in ``framing`` — "length", "chunked" (``chunk``-byte
    chunks) or "close" (no length: the body ends with the connection)."""
    headers = [b"Content-Type: " + content_type] + (extra or [])
    if framing == "length":
        return head(status, headers + [b"Content-Length: %d" % len(body)], version), body
    if framing == "close":
        return head(status, headers, version), body
    assert framing == "chunked"
    parts = [b"%x\r\n%s\r\n" % (len(body[i:i + chunk]), body[i:i + chunk]) for i in range(0, len(body), chunk)]
    end = b"0\r\n" + b"".join(t + b"\r\n" for t in trailers or []) + b"\r\n"
    return head(status, headers + [b"Transfer-Encoding: chunked"], version), b"".join(parts) + end


# ---------------------------------------------------------------------------
# The raw server
# ---------------------------------------------------------------------------


@dataclass
class Reply:
    """The server's answer: ``pieces`` written in order, ``gaps[i]`` seconds before
    piece i (missing: none), then ``after``: "close", "keep" (serve the next request
    on the connection) or "hold" (say nothing more until the client closes)."""

    pieces: list[bytes]
    gaps: list[float] = field(default_factory=list)
    after: str = "close"

    @property
    def data(self) -> bytes:
        return b"".join(self.pieces)


SPLIT_GAP = 0.003  # seconds between the pieces of a split answer: enough for them to arrive as separate reads


def split(data: bytes, at: list[int], gap: float = SPLIT_GAP, after: str = "close") -> Reply:
    """``data`` written in pieces cut at the offsets ``at``."""
    cuts = sorted({a for a in at if 0 < a < len(data)})
    pieces = [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)])]
    return Reply(pieces, [0.0] + [gap] * (len(pieces) - 1), after)


_OTHER = {  # what the proxy's background probes ask for
    b"/v1/models": b'{"object":"list","data":[{"id":"m","object":"model"}]}',
    b"/api/tags": b'{"models":[{"name":"m","model":"m"}]}',
    b"/api/ps": b'{"models":[{"name":"m","model":"m"}]}',
}


class RawServer:
    """A TCP server answering POSTs to the chat paths with ``reply`` (exact bytes),
    anything else (the proxy's probes) with a small JSON."""

    def __init__(self) -> None:
        self.reply: Reply | Callable[[int], Reply] = Reply([])
        self.requests: list[bytes] = []  # the shape requests: head and body
        self.connections = 0
        self.closed = asyncio.Event()  # a connection ended (ours or the client's doing)
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.port = 0

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        assert self._server is not None
        self._server.close()
        for t in list(self._tasks):
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._tasks.add(asyncio.current_task())  # type: ignore[arg-type]
        self.connections += 1
        try:
            while True:
                try:
                    head_ = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, asyncio.LimitOverrunError):
                    return
                length = 0
                for line in head_.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":")[1])
                body = await reader.readexactly(length)
                path = head_.split(b" ", 2)[1]
                if path not in SHAPE_PATHS:
                    other = _OTHER.get(path, b"{}")
                    writer.write(head(b"200 OK", [b"Content-Type: application/json", b"Content-Length: %d" % len(other),
                                                  b"Connection: close"]) + other)
                    await writer.drain()
                    return
                self.requests.append(head_ + body)
                reply = self.reply(len(self.requests)) if callable(self.reply) else self.reply
                for i, piece in enumerate(reply.pieces):
                    gap = reply.gaps[i] if i < len(reply.gaps) else 0.0
                    if gap:
                        await asyncio.sleep(gap)
                    writer.write(piece)
                    await writer.drain()
                if reply.after == "hold":
                    await reader.read()  # until the client closes
                    return
                if reply.after == "close":
                    return
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()
            self.closed.set()
            self._tasks.discard(asyncio.current_task())  # type: ignore[arg-type]


# ---------------------------------------------------------------------------
# The proxy in front of it
# ---------------------------------------------------------------------------


def write_config(tmp_path: Path, base: str, timeout: float, stream_timeout: float) -> Path:
    path = tmp_path / "litellm.yaml"
    path.write_text(textwrap.dedent(f"""
        model_list:
          - model_name: {OPENAI_MODEL}
            litellm_params: {{model: openai/m, api_base: "{base}/v1", timeout: {timeout}, stream_timeout: {stream_timeout}}}
            model_info: {{id: {OPENAI_MODEL}}}
          - model_name: {OLLAMA_MODEL}
            litellm_params: {{model: ollama_chat/m, api_base: "{base}", timeout: {timeout}, stream_timeout: {stream_timeout}}}
            model_info: {{id: {OLLAMA_MODEL}}}
        router_settings:
          num_retries: 0
          monitor_interval: 3600
          timeout: 120
        general_settings: {{max_request_size_mb: 8}}
        """))
    return path


async def start(tmp_path: Path, server: RawServer, timeout: float, stream_timeout: float):
    """The proxy (in-process) for ``server``; returns (runner, url, its log)."""
    from tests.conftest import start_proxy

    buf = io.StringIO()
    log.configure("human", "info", stream=buf)
    config = load_config(str(write_config(tmp_path, server.base, timeout, stream_timeout)))
    runner, url = await start_proxy(config)
    return runner, url, buf


# ---------------------------------------------------------------------------
# Fetching and comparing
# ---------------------------------------------------------------------------


@dataclass
class Seen:
    """What one client saw: the status (0: none), the body bytes it got, the error
    that ended the exchange (None: it ended cleanly) and the seconds it took."""

    status: int = 0
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    error: str | None = None
    elapsed: float = 0.0

    def __repr__(self) -> str:
        body = self.body if len(self.body) <= 300 else self.body[:150] + b"..." + self.body[-150:]
        return f"Seen(status={self.status}, {len(self.body)} B {body!r}, error={self.error!r}, {self.elapsed:.2f} s)"


async def fetch(session: aiohttp.ClientSession, url: str, payload: bytes, limit: float) -> Seen:
    """POST ``payload``; read the whole answer (as it arrives) within ``limit`` seconds."""
    seen = Seen()
    start = time.perf_counter()
    try:
        async with asyncio.timeout(limit):
            async with session.post(url, data=payload, headers={"Content-Type": "application/json"}) as resp:
                seen.status, seen.headers = resp.status, dict(resp.headers)
                buf = bytearray()
                try:
                    async for data in resp.content.iter_any():
                        buf += data
                finally:
                    seen.body = bytes(buf)
    except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
        seen.error = f"{type(exc).__name__}: {exc}"[:300]
    seen.elapsed = time.perf_counter() - start
    return seen


def request_payload(model: str, stream: bool, content: str = "hi") -> bytes:
    return orjson.dumps({"model": model, "messages": [{"role": "user", "content": content}], "stream": stream})


def upstream_payload(model: str, stream: bool, content: str = "hi") -> bytes:
    """The bytes the proxy sends an OpenAI-compatible backend for ``request_payload``."""
    from router.domain import Deployment
    dep = Deployment(id="x", model_name=model, provider="openai", kind="openai", upstream_model="m", api_base="http://x/v1")
    return OpenAICompatible().upstream_request("chat", orjson.loads(request_payload(model, stream, content)), dep, "m")[1]


def events(body: bytes) -> list[bytes]:
    """The data of each SSE event in ``body`` (comments and empty events dropped; an
    unfinished last event counts, as the OpenAI SDK's decoder flushes it)."""
    text_ = body.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
    out = []
    for block in text_.split(b"\n\n"):
        data = [line[5:].removeprefix(b" ") for line in block.split(b"\n") if line.startswith(b"data:")]
        if data:
            out.append(b"\n".join(data))
    return out


def _without_ids(obj):
    if isinstance(obj, dict):
        return {k: _without_ids(v) for k, v in obj.items() if k not in ("id", "created")}
    if isinstance(obj, list):
        return [_without_ids(v) for v in obj]
    return obj


def comparable(event: bytes):
    """An event's JSON without the id/created fields the proxy makes up (Ollama)."""
    if event == b"[DONE]":
        return event
    return _without_ids(orjson.loads(event))


def ollama_reference(body: bytes, stream: bool) -> list | dict:
    """What the proxy should make of an Ollama body, translated in one go."""
    ctx = Context(OLLAMA_MODEL, "x", 0)
    if stream:
        t = StreamTranslator("chat", ctx)
        return [comparable(e) for e in events(t.feed(body) + t.close())]
    return _without_ids(chat_response(orjson.loads(body), ctx))


def error_of(seen: Seen) -> dict | None:
    """The OpenAI error object of a whole-body error answer, if it is one."""
    try:
        obj = orjson.loads(seen.body)
    except orjson.JSONDecodeError:
        return None
    err = obj.get("error") if isinstance(obj, dict) else None
    return err if isinstance(err, dict) else None
