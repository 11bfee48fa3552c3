"""A client that reads slowly behind a fast backend: how much of the stream the proxy
holds for it (issue 14). Not RSS: the stream's bytes that left the backend's socket
buffers and have not reached the client's, i.e. all that is inside the proxy process,
counted exactly once the whole pipeline has stalled."""

from __future__ import annotations

import asyncio
import fcntl
import socket
import struct
import termios

import orjson
import pytest
import uvloop

from router import h1
from router.app import PROXY
from router.config import load_config
from tests.conftest import start_proxy

# What the README promises per slow stream (288 KiB): below READ_HIGH + READ_SIZE (64 + 64 KiB)
# unread from the backend, one PIECE (16 KiB) in the relay's hands, and what waits on the
# client's transport: up to its high-water mark (64 KiB), plus aiohttp's 64 KiB between
# drains, plus a piece. Before the fix a stalled stream held more than 256 KiB unread alone
# (pausing at 256 KiB, reads of up to 256 KiB) besides over 64 KiB on the client's transport.
BOUND = 288 * 1024

_EVENT = b"data: " + orjson.dumps({"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "m",
                                   "choices": [{"index": 0, "delta": {"content": "x" * 200}, "finish_reason": None}]}) + b"\n\n"
_BATCH = _EVENT * (65536 // len(_EVENT))
_FRAMED = b"%x\r\n%s\r\n" % (len(_BATCH), _BATCH)


def queued(sock: socket.socket, what: int) -> int:
    """Bytes in a TCP socket's kernel queue: termios.FIONREAD (unread) or TIOCOUTQ (unsent)."""
    return struct.unpack("i", fcntl.ioctl(sock.fileno(), what, b"\0\0\0\0"))[0]


class Firehose(asyncio.Protocol):
    """An upstream that streams SSE for as long as, and as fast as, its peer reads (64 MB at most)."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.sent = 0  # stream bytes handed to our transport (body only, without the chunk framing)
        self.paused = False
        self.streaming = False
        self.buf = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.buf += data
        head, sep, _ = self.buf.partition(b"\r\n\r\n")
        if not sep or self.streaming or self.transport is None:
            return
        if not head.startswith(b"POST"):
            self.transport.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}")
            self.buf = b""
            return
        self.streaming = True
        self.transport.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n")
        self.pump()

    def pause_writing(self) -> None:
        self.paused = True

    def resume_writing(self) -> None:
        self.paused = False
        self.pump()

    def pump(self) -> None:
        while not self.paused and self.transport is not None and not self.transport.is_closing() and self.sent < 64 << 20:
            self.transport.write(_FRAMED)
            self.sent += len(_BATCH)


@pytest.mark.parametrize("loop_factory", [asyncio.new_event_loop, uvloop.new_event_loop], ids=["asyncio", "uvloop"])
def test_a_slow_reader_costs_the_proxy_a_bounded_part_of_a_fast_stream(tmp_path, loop_factory):
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        runner.run(slow_reader(tmp_path))


async def slow_reader(tmp_path) -> None:
    loop = asyncio.get_running_loop()
    upstreams: list[Firehose] = []

    def make() -> Firehose:
        upstreams.append(Firehose())
        return upstreams[-1]

    backend = await loop.create_server(make, "127.0.0.1", 0)
    port = backend.sockets[0].getsockname()[1]
    (tmp_path / "c.yaml").write_text(f"""
model_list:
  - model_name: fast
    litellm_params: {{model: openai/m, api_base: "http://127.0.0.1:{port}/v1", stream_timeout: 60}}
router_settings: {{num_retries: 0}}
""")
    runner, url = await start_proxy(load_config(str(tmp_path / "c.yaml")))
    pool = runner.app[PROXY].pool
    responses: list[h1.Response] = []
    request = pool.request

    async def recording(*args, **kwargs) -> h1.Response:
        responses.append(await request(*args, **kwargs))
        return responses[-1]

    pool.request = recording  # type: ignore[method-assign]
    client = socket.socket()
    client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # before connect: a small window, as slow clients have
    client.setblocking(False)
    try:
        await loop.sock_connect(client, ("127.0.0.1", int(url.rsplit(":", 1)[1])))
        body = orjson.dumps({"model": "fast", "messages": [{"role": "user", "content": "hi"}], "stream": True})
        await loop.sock_sendall(client, b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                                        b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
        head = await asyncio.wait_for(loop.sock_recv(client, 512), 10)  # the client reads this much, then stops
        assert head.startswith(b"HTTP/1.1 200")
        read = len(head)
        handler = runner.server.connections[0]  # type: ignore[union-attr]

        up: Firehose | None = None
        worst = 0
        for _ in range(6):  # six stalls, each after the client read enough for the proxy to move again
            # The pipeline stalls: the backend's writes are held back, the proxy stopped reading
            # it and waits for the client. From then on nothing moves until the client reads.
            async with asyncio.timeout(20):
                while not (responses and responses[0]._conn.paused and handler.writing_paused
                           and any(u.streaming and u.paused for u in upstreams)):
                    await asyncio.sleep(0.01)
            up = next(u for u in upstreams if u.streaming)  # (the others are the router's health probes)
            assert up.transport is not None
            backend_sock = up.transport.get_extra_info("socket")
            upstream_sock = responses[0]._conn.transport.get_extra_info("socket")  # type: ignore[union-attr]
            downstream_sock = handler.transport.get_extra_info("socket")  # type: ignore[union-attr]
            left_backend = up.sent - up.transport.get_write_buffer_size() - queued(backend_sock, termios.TIOCOUTQ)
            reached_proxy = left_backend - queued(upstream_sock, termios.FIONREAD)  # what the proxy read from its socket
            reached_client = read + queued(downstream_sock, termios.TIOCOUTQ) + queued(client, termios.FIONREAD)
            worst = max(worst, reached_proxy - reached_client)  # give or take a few bytes of framing and headers
            async with asyncio.timeout(20):
                while handler.writing_paused:  # read until the proxy's buffer for the client drained
                    read += len(await loop.sock_recv(client, 65536))
        assert 0 < worst <= BOUND, f"{worst} bytes of the stream were inside the proxy (bound {BOUND})"
        assert up is not None and up.sent < 64 << 20  # the backend was held back, not read to its end
    finally:
        client.close()
        await runner.cleanup()
        backend.close()
