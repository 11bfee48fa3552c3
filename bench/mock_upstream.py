"""A lean, fast mock OpenAI-compatible upstream for the benchmarks: raw asyncio.Protocol,
HTTP/1.1 keep-alive, no framework in the request path.

    .venv/bin/python bench/mock_upstream.py --port 9000 [--chunks 16] [--chunk-delay 0] [--ttft 0]

POST /v1/chat/completions (and /chat/completions) answers a valid ``chat.completion``
JSON, or with ``"stream": true`` an SSE stream (chunked transfer encoding): a role
chunk, ``--chunks`` content chunks ``--chunk-delay`` seconds apart, a finish chunk,
a usage chunk if ``stream_options.include_usage``, then ``data: [DONE]``. ``--ttft``
delays the first token (and the whole JSON answer). GET /v1/models, /models and
/health answer 200 so proxies' health probes pass. The model name is echoed.
It is much faster than ``llm-router simulate`` (which reproduces each server's
wire quirks) so that the upstream is never the bottleneck of a proxy benchmark.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import time

import orjson

CREATED = int(time.time())
_JSON_HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n"
_SSE_HEAD = (b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream; charset=utf-8\r\nCache-Control: no-cache\r\n"
             b"Transfer-Encoding: chunked\r\n\r\n")
_MODELS = orjson.dumps({"object": "list", "data": [{"id": "mock", "object": "model", "created": CREATED, "owned_by": "bench"}]})


def _chunked(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


class Mock:
    """Responses, prebuilt per model name (the only thing echoed)."""

    def __init__(self, chunks: int, chunk_delay: float, ttft: float) -> None:
        self.chunks, self.chunk_delay, self.ttft = chunks, chunk_delay, ttft
        self._json: dict[bytes, bytes] = {}
        self._sse: dict[bytes, tuple[bytes, bytes, bytes, bytes]] = {}

    def json_response(self, model: bytes) -> bytes:
        r = self._json.get(model)
        if r is None:
            body = orjson.dumps({
                "id": "chatcmpl-mock", "object": "chat.completion", "created": CREATED, "model": model.decode(),
                "choices": [{"index": 0, "message": {"role": "assistant", "content": "tok " * self.chunks},
                             "logprobs": None, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 8, "completion_tokens": self.chunks, "total_tokens": 8 + self.chunks}})
            r = self._json[model] = _JSON_HEAD % len(body) + body
            if len(self._json) > 64:
                self._json.clear()
        return r

    def sse_parts(self, model: bytes) -> tuple[bytes, bytes, bytes, bytes]:
        """(role chunk, one content chunk, finish chunk + [DONE], usage chunk), each chunk-framed."""
        r = self._sse.get(model)
        if r is None:
            base = {"id": "chatcmpl-mock", "object": "chat.completion.chunk", "created": CREATED, "model": model.decode()}

            def event(delta: dict, finish: str | None) -> bytes:
                return b"data: " + orjson.dumps({**base, "choices": [{"index": 0, "delta": delta, "logprobs": None,
                                                                        "finish_reason": finish}]}) + b"\n\n"
            usage = b"data: " + orjson.dumps({**base, "choices": [], "usage": {
                "prompt_tokens": 8, "completion_tokens": self.chunks, "total_tokens": 8 + self.chunks}}) + b"\n\n"
            r = self._sse[model] = (_chunked(event({"role": "assistant", "content": ""}, None)),
                                    _chunked(event({"content": "tok "}, None)),
                                    _chunked(event({}, "stop")), _chunked(usage))
            if len(self._sse) > 64:
                self._sse.clear()
        return r


class Conn(asyncio.Protocol):
    def __init__(self, mock: Mock) -> None:
        self.mock = mock
        self.buf = bytearray()
        self.busy = False  # a delayed response is being written; later requests wait in buf
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None

    def data_received(self, data: bytes) -> None:
        self.buf += data
        if not self.busy:
            self.process()

    def process(self) -> None:
        buf = self.buf
        while not self.busy and self.transport is not None:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(buf[:end]).lower()
            length = 0
            i = head.find(b"\r\ncontent-length:")
            if i >= 0:
                j = head.find(b"\r\n", i + 2)
                length = int(head[i + 17:j if j > 0 else None])
            elif b"\r\ntransfer-encoding:" in head:
                self.transport.write(b"HTTP/1.1 411 Length Required\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                self.transport.close()
                return
            if len(buf) < end + 4 + length:
                return
            body = bytes(buf[end + 4:end + 4 + length])
            del buf[:end + 4 + length]
            close = b"\r\nconnection: close" in head
            self.handle(head, body)
            if close and self.transport is not None and not self.busy:
                self.transport.close()

    def handle(self, head: bytes, body: bytes) -> None:
        line = head[:head.find(b"\r\n")]  # lower-cased: b"post /v1/chat/completions http/1.1"
        method, _, rest = line.partition(b" ")
        path = rest.partition(b" ")[0].partition(b"?")[0]
        t = self.transport
        assert t is not None
        if method == b"post" and path.endswith(b"/chat/completions"):
            try:
                req = orjson.loads(body)
            except orjson.JSONDecodeError:
                req = None
            if not isinstance(req, dict):
                err = b'{"error":{"message":"invalid JSON body","type":"invalid_request_error"}}'
                t.write(b"HTTP/1.1 400 Bad Request\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
                        % (len(err), err))
                return
            model = str(req.get("model") or "mock").encode()
            m = self.mock
            if req.get("stream"):
                usage = bool((req.get("stream_options") or {}).get("include_usage"))
                role, tok, finish, usage_chunk = m.sse_parts(model)
                if m.ttft <= 0 and m.chunk_delay <= 0:
                    t.write(b"".join((_SSE_HEAD, role, tok * m.chunks, finish, usage_chunk if usage else b"",
                                      _chunked(b"data: [DONE]\n\n"), b"0\r\n\r\n")))
                else:
                    self.busy = True
                    asyncio.ensure_future(self.slow_stream(model, usage))
            elif m.ttft > 0:
                self.busy = True
                asyncio.ensure_future(self.slow_json(model))
            else:
                t.write(m.json_response(model))
        elif method == b"get" and path in (b"/v1/models", b"/models"):
            t.write(_JSON_HEAD % len(_MODELS) + _MODELS)
        elif method == b"get" and path in (b"/health", b"/v1/health", b"/"):
            t.write(_JSON_HEAD % 15 + b'{"status":"ok"}')
        else:
            t.write(b"HTTP/1.1 404 Not Found\r\nContent-Type: application/json\r\nContent-Length: 21\r\n\r\n"
                    b'{"error":"not found"}')

    async def slow_json(self, model: bytes) -> None:
        await asyncio.sleep(self.mock.ttft)
        if self.transport is not None:
            self.transport.write(self.mock.json_response(model))
        self.done()

    async def slow_stream(self, model: bytes, usage: bool) -> None:
        m = self.mock
        role, tok, finish, usage_chunk = m.sse_parts(model)
        try:
            if self.transport is None:
                return
            self.transport.write(_SSE_HEAD + role)
            if m.ttft > 0:
                await asyncio.sleep(m.ttft)
            for i in range(m.chunks):
                if i and m.chunk_delay > 0:
                    await asyncio.sleep(m.chunk_delay)
                if self.transport is None or self.transport.is_closing():
                    return
                self.transport.write(tok)
            if self.transport is not None:
                self.transport.write(finish + (usage_chunk if usage else b"") + _chunked(b"data: [DONE]\n\n") + b"0\r\n\r\n")
        finally:
            self.done()

    def done(self) -> None:
        self.busy = False
        if self.transport is not None and self.buf:
            self.process()


async def serve(host: str, port: int, mock: Mock) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: Conn(mock), host, port, backlog=4096, reuse_address=True)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print(f"mock upstream on http://{host}:{port}/v1 (pid {os.getpid()}): chunks={mock.chunks} "
          f"chunk_delay={mock.chunk_delay} ttft={mock.ttft}", flush=True)
    async with server:
        await stop.wait()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--chunks", type=int, default=16, help="content chunks per stream (and words of the JSON answer)")
    ap.add_argument("--chunk-delay", type=float, default=0.0, help="seconds between content chunks")
    ap.add_argument("--ttft", type=float, default=0.0, help="seconds before the first token")
    args = ap.parse_args()
    asyncio.run(serve(args.host, args.port, Mock(args.chunks, args.chunk_delay, args.ttft)))


if __name__ == "__main__":
    main()
