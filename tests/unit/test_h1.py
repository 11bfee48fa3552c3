"""router.h1, the upstream HTTP/1.1 client, against raw asyncio servers that send
exactly the bytes each test names (keep-alive, chunked, close-delimited bodies,
servers that misbehave)."""

from __future__ import annotations

import asyncio
import os
import ssl
import subprocess
import tempfile
from typing import Awaitable, Callable, Iterator
from urllib.parse import quote

import pytest
import uvloop

from router import h1
from router.h1 import BadResponse, ConnectError, Disconnected, Pool, PoolTimeout, ResponseTooLarge

@pytest.fixture(params=["asyncio", "uvloop"], autouse=True)
def event_loop_policy(request: pytest.FixtureRequest) -> asyncio.AbstractEventLoopPolicy:
    """Every test on both loops: the proxy runs on uvloop, whose transports differ in the details."""
    return uvloop.EventLoopPolicy() if request.param == "uvloop" else asyncio.DefaultEventLoopPolicy()


@pytest.fixture(params=["tcp", "unix"], autouse=True)
def transport(request: pytest.FixtureRequest) -> Iterator[str]:
    """Every test over TCP and over a unix socket (a ``unix:///…sock`` api_base): the same
    pool, cap, timeouts and keep-alive rules apply to both."""
    global _TRANSPORT
    _TRANSPORT = request.param
    yield request.param
    _TRANSPORT = "tcp"


_TRANSPORT = "tcp"
Handler = Callable[["Server", asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


class Server:
    """A server running ``handler`` per connection, on TCP or (as the ``transport``
    fixture says) a unix socket in a short temporary directory; counts connections and
    requests."""

    def __init__(self, handler: Handler) -> None:
        self.transport = _TRANSPORT
        self.path = ""  # the socket's path (unix)
        self.handler = handler
        self.connections = 0
        self.requests: list[bytes] = []
        self.closed = asyncio.Event()  # set when a connection ends (the client closed it)
        self.server: asyncio.Server | None = None
        self.port = 0

    async def __aenter__(self) -> Server:
        if self.transport == "unix":
            self.path = os.path.join(tempfile.mkdtemp(prefix="h1u-"), "b.sock")  # tmp_path can exceed 107 bytes
            self.server = await asyncio.start_unix_server(self._serve, self.path)
        else:
            self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
            self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()
        # the handlers of still-open connections end when the test's pool closes them
        # (a unix socket's file stays, as a dead server's would: refused, not missing)

    @property
    def url(self) -> str:
        if self.transport == "unix":
            return f"http+unix://{quote(self.path, safe='')}/v1/chat/completions"
        return f"http://127.0.0.1:{self.port}/v1/chat/completions"

    @property
    def host_header(self) -> str:
        return "localhost" if self.transport == "unix" else f"127.0.0.1:{self.port}"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            await self.handler(self, reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()
            self.closed.set()

    async def read_request(self, reader: asyncio.StreamReader) -> bytes | None:
        """One request (head and Content-Length body), or None at EOF."""
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError:
            return None
        length = 0
        for line in head.split(b"\r\n"):
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":")[1])
        body = await reader.readexactly(length)
        self.requests.append(head + body)
        return head + body


def keepalive_server(response: bytes) -> Handler:
    """Answers every request on a connection with ``response``."""
    async def handler(srv: Server, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while await srv.read_request(reader) is not None:
            writer.write(response)
            await writer.drain()
    return handler


JSON_OK = b'HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 12\r\n\r\n{"ok": true}'


async def test_keep_alive_reuses_one_connection_and_sends_a_well_formed_request() -> None:
    async with Server(keepalive_server(JSON_OK)) as srv:
        pool = Pool()
        for _ in range(5):
            resp = await pool.request("POST", srv.url, [("Content-Type", "application/json"), ("x-request-id", "r1")], b'{"a":1}')
            assert resp.status == 200
            assert resp.headers["content-type"] == "application/json"
            assert await resp.read() == b'{"ok": true}'
            resp.release()
        await pool.close()
    assert srv.connections == 1
    assert len(srv.requests) == 5
    assert srv.requests[0] == (f"POST /v1/chat/completions HTTP/1.1\r\nHost: {srv.host_header}\r\n"
                               "Content-Type: application/json\r\nx-request-id: r1\r\nContent-Length: 7\r\n\r\n{\"a\":1}").encode()


async def test_chunked_body_is_decoded_and_the_connection_reused() -> None:
    resp_bytes = (b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
                  b"8\r\ndata: 1\n\r\na\r\n\ndata: 2\n\n\r\n0\r\n\r\n")
    async with Server(keepalive_server(resp_bytes)) as srv:
        pool = Pool()
        for _ in range(2):
            resp = await pool.request("POST", srv.url, [], b"{}")
            got = b""
            while chunk := await resp.readany():
                got += chunk
            assert got == b"data: 1\n\ndata: 2\n\n"
            resp.release()
        await pool.close()
    assert srv.connections == 1


async def test_a_body_without_length_ends_with_the_connection() -> None:
    async def handler(srv: Server, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await srv.read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n\r\ndata: x\n\n")
        await writer.drain()
        writer.write(b"data: [DONE]\n\n")
        await writer.drain()
    async with Server(handler) as srv:
        pool = Pool()
        resp = await pool.request("POST", srv.url, [], b"{}")
        assert await resp.read() == b"data: x\n\ndata: [DONE]\n\n"
        resp.release()
        resp = await pool.request("POST", srv.url, [], b"{}")  # the first connection is not reused
        assert await resp.read() == b"data: x\n\ndata: [DONE]\n\n"
        await pool.close()
    assert srv.connections == 2


async def test_connection_closed_mid_body_is_disconnected() -> None:
    async def handler(srv: Server, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await srv.read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly part")
        await writer.drain()
    async with Server(handler) as srv:
        pool = Pool()
        resp = await pool.request("POST", srv.url, [], b"{}")
        with pytest.raises(Disconnected):
            await resp.read()
        resp.close()
        await pool.close()


async def test_a_stale_idle_connection_is_retried_once_on_a_new_one() -> None:
    """The server closes a kept-alive connection after one answer (as a keep-alive
    timeout would, racing the next request): the next request goes out again."""
    async def handler(srv: Server, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await srv.read_request(reader)
        writer.write(JSON_OK)  # says keep-alive, then closes without reading more
        await writer.drain()
    async with Server(handler) as srv:
        pool = Pool()
        resp = await pool.request("POST", srv.url, [], b"{}")
        assert await resp.read() == b'{"ok": true}'
        resp.release()
        await srv.closed.wait()  # the server has closed it; the pool may not know yet
        resp = await pool.request("POST", srv.url, [], b"{}")
        assert resp.status == 200 and await resp.read() == b'{"ok": true}'
        resp.release()
        await pool.close()
    assert srv.connections == 2


async def test_a_kept_connection_closed_under_us_is_not_used() -> None:
    """The transport of an idle connection is closing but its connection_lost has not
    run yet (the window in which a write would raise): the request still goes out."""
    async with Server(keepalive_server(JSON_OK)) as srv:
        pool = Pool()
        resp = await pool.request("POST", srv.url, [], b"{}")
        await resp.read()
        resp.release()
        (origin,) = pool._origins.values()
        (conn,) = origin.idle
        conn.transport.close()  # no await: connection_lost is still pending
        resp = await pool.request("POST", srv.url, [], b"{}")
        assert resp.status == 200 and await resp.read() == b'{"ok": true}'
        resp.release()
        await pool.close()
    assert srv.connections == 2


async def test_a_new_connection_closed_before_answering_is_not_retried() -> None:
    async def handler(srv: Server, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await srv.read_request(reader)  # and close without a word
    async with Server(handler) as srv:
        pool = Pool()
        with pytest.raises(Disconnected):
            await pool.request("POST", srv.url, [], b"{}")
        await pool.close()
    assert len(srv.requests) == 1


async def test_interim_100_continue_is_skipped() -> None:
    resp_bytes = b"HTTP/1.1 100 Continue\r\n\r\n" + JSON_OK
    async with Server(keepalive_server(resp_bytes)) as srv:
        pool = Pool()
        resp = await pool.request("POST", srv.url, [], b"{}")
        assert resp.status == 200 and await resp.read() == b'{"ok": true}'
        resp.release()
        await pool.close()


async def test_garbage_is_a_bad_response() -> None:
    async with Server(keepalive_server(b"SSH-2.0-OpenSSH_9.2\r\n\r\n")) as srv:
        pool = Pool()
        with pytest.raises(BadResponse):
            await pool.request("POST", srv.url, [], b"{}")
        await pool.close()


async def test_refused_connection_is_a_connect_error() -> None:
    pool = Pool()
    async with Server(keepalive_server(JSON_OK)) as srv:
        url = srv.url
    await asyncio.sleep(0)  # the listening socket is closed
    with pytest.raises(ConnectError):
        await pool.request("POST", url, [], b"{}")
    assert all(o.count == 0 for o in pool._origins.values())  # the slot was given back
    await pool.close()


async def test_silent_server_times_out_and_the_connection_is_dropped() -> None:
    async def handler(srv: Server, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await srv.read_request(reader)
        await reader.read()  # never answers; returns when the client closes
    async with Server(handler) as srv:
        pool = Pool()
        with pytest.raises(TimeoutError):
            await pool.request("POST", srv.url, [], b"{}", idle_timeout=0.2)
        await asyncio.wait_for(srv.closed.wait(), 5)  # the server saw the connection close
        await pool.close()


async def test_idle_timeout_between_chunks() -> None:
    async def handler(srv: Server, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await srv.read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nfirst\r\n")
        await writer.drain()
        await reader.read()
    async with Server(handler) as srv:
        pool = Pool()
        resp = await pool.request("POST", srv.url, [], b"{}", idle_timeout=0.2)
        assert await resp.readany() == b"first"
        with pytest.raises(TimeoutError):
            await resp.readany()
        resp.close()
        await asyncio.wait_for(srv.closed.wait(), 5)
        await pool.close()


async def test_pool_limit_queues_then_times_out() -> None:
    gate = asyncio.Event()

    async def handler(srv: Server, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while await srv.read_request(reader) is not None:
            await gate.wait()
            writer.write(JSON_OK)
            await writer.drain()
    async with Server(handler) as srv:
        pool = Pool(limit=2)
        first = [asyncio.ensure_future(pool.request("POST", srv.url, [], b"{}")) for _ in range(2)]
        while len(srv.requests) < 2:
            await asyncio.sleep(0.01)
        with pytest.raises(PoolTimeout):  # a third waits for a connection, and gives up
            await pool.request("POST", srv.url, [], b"{}", pool_timeout=0.1)
        third = asyncio.ensure_future(pool.request("POST", srv.url, [], b"{}", pool_timeout=5))
        gate.set()
        for f in first:
            resp = await f
            await resp.read()
            resp.release()
        resp = await third  # got one of the two freed connections
        assert await resp.read() == b'{"ok": true}'
        resp.release()
        await pool.close()
    assert srv.connections == 2


async def test_a_closed_connection_frees_its_slot_for_a_waiter() -> None:
    async def handler(srv: Server, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while await srv.read_request(reader) is not None:
            writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nx\r\n")
            await writer.drain()
    async with Server(handler) as srv:
        pool = Pool(limit=1)
        resp = await pool.request("POST", srv.url, [], b"{}")
        waiting = asyncio.ensure_future(pool.request("POST", srv.url, [], b"{}", pool_timeout=5))
        await asyncio.sleep(0.05)
        assert not waiting.done()
        resp.close()  # mid-body: dropped, and its slot goes to the waiter
        second = await waiting
        assert await second.readany() == b"x"
        second.close()
        await pool.close()
    assert srv.connections == 2


async def test_reading_pauses_while_the_reader_lags() -> None:
    """A backend streaming faster than we read is held back by TCP, not buffered without end."""
    sent = 0
    stopped = asyncio.Event()

    async def handler(srv: Server, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal sent
        await srv.read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        block = b"%x\r\n%s\r\n" % (65536, b"x" * 65536)
        try:
            for _ in range(1000):  # 64 MB if nothing held it back
                writer.write(block)
                await asyncio.wait_for(writer.drain(), 0.5)
                sent += 65536
        except asyncio.TimeoutError:
            stopped.set()
    async with Server(handler) as srv:
        pool = Pool()
        resp = await pool.request("POST", srv.url, [], b"{}")
        await asyncio.wait_for(stopped.wait(), 30)  # the server's writes stalled
        assert resp._size <= h1.READ_HIGH + 65536 * 2
        assert sent < 64 * 1024 * 1024
        got = len(await resp.readany())
        assert got > 0
        resp.close()
        await pool.close()


async def test_whole_body_over_the_limit_is_refused() -> None:
    body = b"x" * 5000
    resp_bytes = b"HTTP/1.1 200 OK\r\nContent-Length: 5000\r\n\r\n" + body
    async with Server(keepalive_server(resp_bytes)) as srv:
        pool = Pool()
        resp = await pool.request("POST", srv.url, [], b"{}")
        with pytest.raises(ResponseTooLarge):
            await resp.read(limit=1000)
        resp.close()
        await pool.close()


async def test_header_injection_is_refused() -> None:
    pool = Pool()
    with pytest.raises(ValueError):
        await pool.request("POST", "http://127.0.0.1:1/x", [("Authorization", "Bearer k\r\nX-Evil: 1")], b"")
    await pool.close()


def test_targets(transport: str) -> None:
    if transport == "unix":
        pytest.skip("no server involved")
    t = h1.target("http://[::1]:8000/v1/chat/completions?x=1")
    assert (t.host, t.port, t.host_header, t.path, t.tls) == ("::1", 8000, "[::1]:8000", "/v1/chat/completions?x=1", False)
    t = h1.target("https://api.example.com/v1")
    assert (t.port, t.host_header, t.tls) == (443, "api.example.com", True)
    with pytest.raises(ValueError):
        h1.target("ftp://x/y")


async def test_https_with_certificate_checks(tmp_path, transport: str) -> None:
    """An https api_base: TLS with the server's certificate checked against the trust store
    (here one holding only a self-signed certificate made for this test); a server whose
    certificate is not trusted is a ConnectError, never a silent plain-text fallback."""
    if transport == "unix":
        pytest.skip("TLS is for TCP backends")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True)
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(cert, key)
    srv = Server(keepalive_server(JSON_OK))

    async def tls_serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await srv._serve(reader, writer)

    server = await asyncio.start_server(tls_serve, "127.0.0.1", 0, ssl=server_ctx)
    url = f"https://127.0.0.1:{server.sockets[0].getsockname()[1]}/v1/chat/completions"
    try:
        trusting = Pool(ssl_context=ssl.create_default_context(cafile=str(cert)))
        for _ in range(2):
            resp = await trusting.request("POST", url, [], b"{}")
            assert resp.status == 200 and await resp.read() == b'{"ok": true}'
            resp.release()
        await trusting.close()
        assert srv.connections == 1 and srv.requests[0].startswith(b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1:")
        with pytest.raises(ConnectError):  # the default trust store does not know this certificate
            await Pool().request("POST", url, [], b"{}")
    finally:
        server.close()


@pytest.mark.parametrize("framing", ["length", "chunked", "close"])
@pytest.mark.parametrize("size", [h1.READ_HIGH, h1.READ_HIGH + 1, 530_000, 4 * 1024 * 1024])
async def test_a_whole_body_larger_than_the_pause_threshold_arrives(framing: str, size: int) -> None:
    """read() must not stall once more than READ_HIGH bytes wait unread (it did: reading
    paused at READ_HIGH and only a consumer of the buffer resumed it, so an answer over
    ~512 KB waited for the deadline)."""
    body = b"{" + b"x" * (size - 2) + b"}"
    if framing == "length":
        raw = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % size + body
    elif framing == "chunked":
        raw = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + b"".join(
            b"%x\r\n%s\r\n" % (len(body[i:i + 70000]), body[i:i + 70000]) for i in range(0, size, 70000)) + b"0\r\n\r\n"
    else:
        raw = b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n" + body

    async def handler(srv: Server, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await srv.read_request(reader)
        writer.write(raw)
        await writer.drain()
        if framing == "close":
            return
        await reader.read()
    async with Server(handler) as srv:
        pool = Pool()
        resp = await pool.request("POST", srv.url, [], b"{}", idle_timeout=5)
        assert await asyncio.wait_for(resp.read(), 10) == body
        resp.release()
        await pool.close()


@pytest.mark.parametrize("head, why", [
    (b"HTTP/1.1 200 OK\r\nX-Big: " + b"a" * 8200 + b"\r\nContent-Length: 2\r\n\r\n{}", "header line is longer than 8190"),
    (b"HTTP/1.1 200 OK\r\n" + b"".join(b"X-%d: v\r\n" % i for i in range(129)) + b"Content-Length: 2\r\n\r\n{}", "more than 128 headers"),
    (b"HTTP/1.1 200 OK\r\n" + b"".join(b"X-%d: %s\r\n" % (i, b"v" * 1000) for i in range(70)) + b"Content-Length: 2\r\n\r\n{}",
     "head is larger than 65536"),
    (b"HTTP/1.1 100 Continue\r\n\r\n" * 20_000 + b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}", "head is larger than 65536"),
])
async def test_an_oversized_head_says_which_limit_it_broke(head: bytes, why: str) -> None:
    async with Server(keepalive_server(head)) as srv:
        pool = Pool()
        with pytest.raises(BadResponse, match=why):
            await pool.request("POST", srv.url, [], b"{}", idle_timeout=5)
        await pool.close()


@pytest.mark.parametrize("extra", [
    b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nJUNK!",  # a whole second answer nobody asked for
    b"HTTP/1.1 429 Too Many Requests\r\nRetry-After: 3600\r\nX-J: ",  # the start of one
    b"garbage",
])
async def test_bytes_after_a_complete_answer_never_reach_it_or_the_next_request(extra: bytes) -> None:
    """llhttp parses on past the end of a message: those bytes must not be fed into the
    answer just read, nor left for the next request on the connection (which would get
    a 429 it never had): the connection is dropped instead of reused."""
    async def handler(srv: Server, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while await srv.read_request(reader) is not None:
            writer.write(JSON_OK + (extra if len(srv.requests) == 1 else b""))  # in one write with the first answer
            await writer.drain()
    async with Server(handler) as srv:
        pool = Pool()
        for _ in range(3):
            resp = await pool.request("POST", srv.url, [], b"{}", idle_timeout=5)
            assert resp.status == 200 and await resp.read() == b'{"ok": true}'
            resp.release()
        await pool.close()
    assert srv.connections == 2  # the junked one was not reused; the next one was


async def test_a_reused_connection_closed_after_the_server_worked_on_the_request_is_not_resent() -> None:
    """Not the keep-alive race: the server read the request, worked, and died. Sending it
    again would run it twice."""
    async def handler(srv: Server, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await srv.read_request(reader)
        writer.write(JSON_OK)
        await writer.drain()
        await srv.read_request(reader)
        await asyncio.sleep(h1.RESEND_WINDOW + 0.2)  # works on it, then crashes without a word
    async with Server(handler) as srv:
        pool = Pool()
        resp = await pool.request("POST", srv.url, [], b"{}")
        await resp.read()
        resp.release()
        with pytest.raises(Disconnected):
            await pool.request("POST", srv.url, [], b"{}", idle_timeout=5)
        await pool.close()
    assert len(srv.requests) == 2 and pool.resends == 0


async def test_a_content_length_over_the_limit_is_refused_at_once() -> None:
    async def handler(srv: Server, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await srv.read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 1000000000000\r\n\r\n{")
        await writer.drain()
        await reader.read()
    async with Server(handler) as srv:
        pool = Pool()
        resp = await pool.request("POST", srv.url, [], b"{}")
        with pytest.raises(ResponseTooLarge):
            await asyncio.wait_for(resp.read(), 2)  # no waiting for bytes that cannot fit
        resp.close()
        await pool.close()


@pytest.mark.parametrize("head", [
    b"HTTP/1.1 200 OK\r\nX-Big: " + b"a" * 100_000 + b"\r\nContent-Length: 2\r\n\r\n{}",  # one oversized line
    b"HTTP/1.1 200 OK\r\n" + b"".join(b"X-%d: v\r\n" % i for i in range(10_000)) + b"Content-Length: 2\r\n\r\n{}",
    b"HTTP/1.1 200 OK\r\n" + b"".join(b"X-%d: %s\r\n" % (i, b"v" * 8000) for i in range(100)) + b"Content-Length: 2\r\n\r\n{}",
    b"HTTP/1.1 100 Continue\r\n\r\n" * 20_000 + b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}",  # endless interim answers
    b"HTTP/1.1 200 " + b"O" * 100_000 + b"\r\nContent-Length: 2\r\n\r\n{}",  # an endless reason phrase
])
async def test_an_oversized_response_head_is_a_bad_response_and_closes_the_connection(head: bytes) -> None:
    async def handler(srv: Server, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await srv.read_request(reader)
        writer.write(head)
        await writer.drain()
        await reader.read()  # returns when the client closes
    async with Server(handler) as srv:
        pool = Pool()
        with pytest.raises(BadResponse):
            await pool.request("POST", srv.url, [], b"{}", idle_timeout=5)
        await asyncio.wait_for(srv.closed.wait(), 5)  # the connection was closed
        assert all(o.count == 0 for o in pool._origins.values())
        await pool.close()


async def test_a_head_just_within_the_limits_is_read() -> None:
    headers = b"".join(b"X-%03d: %s\r\n" % (i, b"v" * 400) for i in range(h1.MAX_HEADERS - 1))
    raw = b"HTTP/1.1 200 OK\r\n" + headers + b"Content-Length: 2\r\n\r\n{}"
    async with Server(keepalive_server(raw)) as srv:
        pool = Pool()
        resp = await pool.request("POST", srv.url, [], b"{}")
        assert resp.status == 200 and await resp.read() == b"{}" and resp.headers["x-000"] == "v" * 400
        resp.release()
        await pool.close()


async def test_cancelled_and_timed_out_connects_keep_the_cap_exact() -> None:
    """A connect cancelled (or timed out) at any point, including after connection_made
    but before create_connection returns, frees its slot exactly once: afterwards the
    origin counts exactly the connections it holds, and the cap still holds."""
    async with Server(keepalive_server(JSON_OK)) as srv:
        pool = Pool(limit=3)
        for spins in range(40):
            tasks = [asyncio.ensure_future(pool.request("POST", srv.url, [], b"{}")) for _ in range(5)]
            for _ in range(spins):
                await asyncio.sleep(0)
            for t in tasks:
                t.cancel()
            for t in tasks:
                try:
                    (await t).close()
                except (asyncio.CancelledError, PoolTimeout, Disconnected):
                    pass
        for _ in range(20):  # let every connection_lost run
            await asyncio.sleep(0)
        (origin,) = pool._origins.values()
        open_conns = [c for c in origin.idle if not c.closed]
        assert origin.count == len(open_conns), (origin.count, len(open_conns))
        # and the cap is exactly 3: three requests held open, a fourth waits
        held = [await pool.request("POST", srv.url, [], b"{}") for _ in range(3)]
        with pytest.raises(PoolTimeout):
            await pool.request("POST", srv.url, [], b"{}", pool_timeout=0.05)
        for r in held:
            await r.read()
            r.release()
        await pool.close()


async def test_a_connection_idle_past_the_keepalive_bound_is_not_reused() -> None:
    async with Server(keepalive_server(JSON_OK)) as srv:
        pool = Pool()
        resp = await pool.request("POST", srv.url, [], b"{}")
        await resp.read()
        resp.release()
        (origin,) = pool._origins.values()
        origin.idle[0].idle_since -= h1.KEEPALIVE + 0.1  # it sat idle longer than a backend keeps it
        resp = await pool.request("POST", srv.url, [], b"{}")
        assert await resp.read() == b'{"ok": true}'
        resp.release()
        await pool.close()
    assert srv.connections == 2 and pool.resends == 0


async def test_a_servers_keep_alive_timeout_shortens_reuse() -> None:
    answer = b'HTTP/1.1 200 OK\r\nKeep-Alive: timeout=2, max=100\r\nContent-Length: 12\r\n\r\n{"ok": true}'
    async with Server(keepalive_server(answer)) as srv:
        pool = Pool()
        resp = await pool.request("POST", srv.url, [], b"{}")
        await resp.read()
        resp.release()
        (origin,) = pool._origins.values()
        assert origin.idle[0].idle_limit == 1.0
        origin.idle[0].idle_since -= 1.1
        resp = await pool.request("POST", srv.url, [], b"{}")
        await resp.read()
        resp.release()
        await pool.close()
    assert srv.connections == 2


async def test_a_resend_is_counted_and_reported() -> None:
    async def handler(srv: Server, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await srv.read_request(reader)
        writer.write(JSON_OK)  # says keep-alive, then closes without reading more
        await writer.drain()
    seen: list[h1.Target] = []
    async with Server(handler) as srv:
        pool = Pool()
        pool.on_resend = seen.append
        resp = await pool.request("POST", srv.url, [], b"{}")
        await resp.read()
        resp.release()
        await srv.closed.wait()
        resp = await pool.request("POST", srv.url, [], b"{}")
        await resp.read()
        resp.release()
        await pool.close()
    assert pool.resends == 1 and [t.host_header for t in seen] == [srv.host_header]
