"""A lean HTTP/1.1 client for the hot path: one keep-alive pool per backend server.

Why not aiohttp's client here: profiled at 16 concurrent requests, it was a third
of the proxy's CPU per request (URL objects, multidicts, cookie jar, tracing
hooks, timers, payload registry), more than all of the routing, state, metrics and
logging together. Calling a backend needs little of that: send one prebuilt
request, read the status and a few headers, then the body as it arrives. The
response is parsed by ``httptools`` (llhttp, Node's parser; what uvicorn uses), so
Content-Length, chunked bodies and bodies that end with the connection are read
the way a browser would.

Shape (httpcore's, simplified):

- ``Pool.request(...)`` takes a connection to the URL's server (an idle one, a new
  one while fewer than ``limit`` are open, or waits for one), writes the request and
  returns a ``Response`` once the status line and headers are in.
- ``Response.read()`` / ``readany()`` give the body; ``release()`` hands a fully read
  connection back for reuse, ``close()`` drops it (a client gone mid-stream, an
  error, a timeout: the backend sees the connection close at once).
- A reused connection the server closed while it sat idle (a keep-alive timeout
  racing our request) fails before any byte of an answer; such a request is sent
  once more on a new connection. Nothing else is retried here.
- Failures are ``ConnectError`` (could not connect), ``Disconnected`` (the
  connection ended early), ``BadResponse`` (not HTTP), ``ResponseTooLarge``, and
  the builtin ``TimeoutError``; ``router.upstream`` turns them into ``RouterError``s.
- Reading pauses while more than ``READ_HIGH`` bytes wait unread, so a slow client
  slows the backend down instead of filling memory. ``read()`` (the whole body at
  once) never pauses: it is bounded by its ``limit`` instead.
- A response head (status line, headers, any 1xx before them) larger than
  ``MAX_HEAD`` bytes, a header line over ``MAX_HEADER_LINE`` or more than
  ``MAX_HEADERS`` headers is a ``BadResponse`` and the connection is closed.
- Resending (the rule): a request is sent a second time only when it went out on a
  reused connection and the connection ended before a single byte of an answer came
  back, within ``RESEND_WINDOW`` of sending: the server closed it while it sat idle
  and never read our request. (A server that read it, worked and then died is not
  sent the request again.)
- Bytes after the end of an answer (a second answer nobody asked for, junk) are a
  ``BadResponse`` for nothing already complete: the connection is closed, never
  reused, so they cannot become part of the next request's answer. To keep
  that race rare, a connection idle longer than ``keepalive`` (default
  ``KEEPALIVE``, under uvicorn's and llama-server's 5 s; a server's own
  ``Keep-Alive: timeout=N`` shortens it to N - 1) is never reused. Every resend is
  reported to ``Pool.on_resend``.
"""

from __future__ import annotations

import asyncio
import ssl
from collections import deque
from dataclasses import dataclass
from functools import lru_cache
from typing import Callable, Iterable
from urllib.parse import unquote, urlsplit

import httptools

READ_HIGH = 64 * 1024  # unread body bytes at which reading from the socket pauses
READ_LOW = 16 * 1024  # ... and below which it resumes
READ_SIZE = 64 * 1024  # the most one socket read takes: unread bytes stay below READ_HIGH + READ_SIZE
PIECE = 16 * 1024  # the most readany() returns at once
MAX_BODY = 512 * 1024 * 1024  # a whole (non-streamed) answer larger than this is refused
MAX_HEAD = 64 * 1024  # bytes of a response head (with any 1xx answers before it)
MAX_HEADER_LINE = 8190  # bytes of one header's name and value (aiohttp's line limit)
MAX_HEADERS = 128  # headers in one response head
RESEND_WINDOW = 0.5  # seconds after sending within which a close of a reused connection counts as the keep-alive race
KEEPALIVE = 4.0  # seconds an idle connection may be reused: under the 5 s of uvicorn (vLLM, llama-cpp-python) and llama-server


class HTTPError(Exception):
    """Base of this client's failures."""


class ConnectError(HTTPError):
    """The TCP (or TLS, or unix socket) connection could not be opened."""


class Disconnected(HTTPError):
    """The connection ended before the response did."""


class NoAnswer(Disconnected):
    """The connection ended before a single byte of an answer (refused work, a reset)."""


class BadResponse(HTTPError):
    """The server's bytes are not a valid HTTP/1.x response."""


class ResponseTooLarge(HTTPError):
    """A body read whole was larger than the limit."""


class ConnectTimeout(TimeoutError):
    """Opening the connection took longer than its timeout (the server is unreachable)."""


class PoolTimeout(TimeoutError):
    """Every connection to the server stayed busy for the whole wait."""


@dataclass(frozen=True, slots=True)
class Target:
    """A URL split into what the pool and the request line need."""

    key: tuple[str, str, int]  # (scheme, host, port): one pool per key
    host: str  # for connecting (no brackets around IPv6)
    port: int
    tls: bool
    host_header: str
    path: str
    unix: str | None = None  # the socket's path, for an http+unix URL


@lru_cache(maxsize=4096)
def target(url: str) -> Target:
    """Split ``url`` once per distinct URL: http, https, or ``http+unix://`` with the
    socket's path percent-encoded in place of host:port (``http+unix://%2Frun%2Fvllm.sock/v1/models``,
    requests-unixsocket's form), sent with ``Host: localhost``."""
    u = urlsplit(url)
    if u.scheme == "http+unix":
        sock = unquote(u.netloc)
        if not sock.startswith("/"):
            raise ValueError(f"not an absolute socket path: {url!r}")
        path = (u.path or "/") + (f"?{u.query}" if u.query else "")
        return Target(("http+unix", sock, 0), "localhost", 0, False, "localhost", path, sock)
    if u.scheme not in ("http", "https") or not u.hostname:
        raise ValueError(f"not an http(s) URL: {url!r}")
    tls = u.scheme == "https"
    port = u.port or (443 if tls else 80)
    host = u.hostname
    shown = f"[{host}]" if ":" in host else host
    host_header = shown if port == (443 if tls else 80) else f"{shown}:{port}"
    path = (u.path or "/") + (f"?{u.query}" if u.query else "")
    return Target((u.scheme, host, port), host, port, tls, host_header, path)


def _check_header(name: str, value: str) -> None:
    if "\r" in value or "\n" in value or "\0" in value or "\r" in name or "\n" in name or ":" in name:
        raise ValueError(f"header {name!r} has a line break or control character")


class Response:
    """An answer whose status and headers are in; the body follows on demand."""

    __slots__ = ("_conn", "_loop", "status", "headers", "_raw", "_chunks", "_size", "_waiter", "_error",
                 "complete", "_until_close", "idle_timeout", "deadline", "_whole")

    def __init__(self, conn: _Connection) -> None:
        self._conn = conn
        self._loop = conn.loop
        self.status = 0
        self.headers: dict[str, str] = {}  # lower-case names; a repeated header keeps its last value
        self._raw: list[tuple[bytes, bytes]] = []
        self._chunks: deque[bytes] = deque()
        self._size = 0  # bytes in _chunks
        self._waiter: asyncio.Future[None] | None = None
        self._error: BaseException | None = None
        self.complete = False  # the whole body has arrived
        self._until_close = False  # no length given: the body ends with the connection
        self.idle_timeout: float | None = None  # seconds any one wait for bytes may take
        self.deadline: float | None = None  # loop time by which every wait must be over
        self._whole = False  # read whole (read / read_some): never pause, the caller's limit bounds it

    # -- reading (the caller) -------------------------------------------------------------------

    async def readany(self, limit: int = PIECE) -> bytes:
        """Buffered body bytes, at most ``limit`` of them (waiting for some if none are); b"" at
        the end. Bounded so that a relay holds one piece at a time, not everything buffered."""
        while not self._chunks:
            if self.complete:
                return b""
            await self._wait()
        chunks = self._chunks
        data = chunks.popleft()
        if len(data) > limit:  # one socket read larger than a piece: the rest stays first in line
            chunks.appendleft(data[limit:])
            data = data[:limit]
        elif chunks and len(data) + len(chunks[0]) <= limit:
            parts, n = [data], len(data)
            while chunks and n + len(chunks[0]) <= limit:
                parts.append(chunks.popleft())
                n += len(parts[-1])
            data = b"".join(parts)
        self._consumed(len(data))
        return data

    async def read(self, limit: int = MAX_BODY) -> bytes:
        """The whole body (``ResponseTooLarge`` beyond ``limit`` bytes, at once when its
        Content-Length says so)."""
        length = self.headers.get("content-length", "")
        if length.isdigit() and int(length) > limit:
            raise ResponseTooLarge(f"the response body is {length} bytes, more than the {limit} allowed")
        self._read_whole()
        while not self.complete:
            if self._size > limit:
                raise ResponseTooLarge(f"the response body is larger than {limit} bytes")
            await self._wait()
        if self._size > limit:
            raise ResponseTooLarge(f"the response body is larger than {limit} bytes")
        data = b"".join(self._chunks)
        self._chunks.clear()
        self._consumed(len(data))
        return data

    async def read_some(self, n: int) -> bytes:
        """Up to ``n`` bytes of the body: for an error message or a snippet, never more."""
        self._read_whole()
        while self._size < n and not self.complete:
            await self._wait()
        data = b"".join(self._chunks)[:n]
        self._chunks.clear()
        self._consumed(self._size)
        return data

    def _read_whole(self) -> None:
        """Reading everything up to a limit: the unread bytes are the point, so the
        socket must not pause at READ_HIGH (nothing would resume it)."""
        self._whole = True
        self._conn.resume()

    def at_eof(self) -> bool:
        """The whole body has arrived and been read: nothing more will come."""
        return self.complete and not self._chunks

    def release(self) -> None:
        """Done with it: a connection whose response was read to the end is reused."""
        self._conn.finished(self)

    def close(self) -> None:
        """Done with it, whatever remains unread: the connection is closed now."""
        self._conn.abort()

    async def _wait(self) -> None:
        if self._error is not None:
            raise self._error
        fut = self._waiter = self._loop.create_future()
        timer = self._arm(fut)
        try:
            await fut
        finally:
            self._waiter = None
            if timer is not None:
                timer.cancel()

    def _arm(self, fut: asyncio.Future[None]) -> asyncio.TimerHandle | None:
        """A timer that fails ``fut`` with TimeoutError when the idle bound or the deadline
        (whichever comes first) passes; None when neither is set."""
        delay = self.idle_timeout
        if self.deadline is not None:
            left = self.deadline - self._loop.time()
            delay = left if delay is None else min(delay, left)
        return self._loop.call_later(max(0.0, delay), _expire, fut) if delay is not None else None

    def _consumed(self, n: int) -> None:
        self._size -= n
        if self._size < READ_LOW:
            self._conn.resume()

    # -- feeding (the connection) -----------------------------------------------------------------

    def _wake(self) -> None:
        w = self._waiter
        if w is not None and not w.done():
            w.set_result(None)

    def _feed(self, data: bytes) -> None:
        self._chunks.append(data)
        self._size += len(data)
        if self._size > READ_HIGH and not self._whole:
            self._conn.pause()
        self._wake()

    def _fail(self, exc: BaseException) -> None:
        if self._error is None and not self.complete:
            self._error = exc
            w = self._waiter
            if w is not None and not w.done():
                w.set_exception(exc)


def _expire(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_exception(TimeoutError())


class _Connection(asyncio.BufferedProtocol):
    """One keep-alive connection: at most one request on it at a time. Each socket read
    goes into the pool's buffer, so it is at most ``READ_SIZE`` bytes (the loop's own
    buffer would take up to 256 KB at once: a reader that lags then holds that much)."""

    def __init__(self, origin: _Origin, loop: asyncio.AbstractEventLoop) -> None:
        self.origin = origin
        self.loop = loop
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.response: Response | None = None
        self.head: asyncio.Future[None] | None = None  # done when the current response's headers are in
        self.closed = False
        self.counted = False  # holds one of the origin's slots until it closes (from when _connect hands it out)
        self.paused = False
        self.received = False  # any byte of the current response arrived
        self.reused = False  # has served an earlier request
        self.idle_since = 0.0
        self.idle_limit = origin.pool.keepalive  # seconds it may sit idle and still be reused
        self.head_bytes = 0  # bytes received for the current response while its head was incomplete
        self.head_parsed = 0  # bytes of its head (and of any 1xx before it) parsed so far
        self._bad: str | None = None  # why a parser callback refused the bytes (httptools wraps its exception)
        self.sent_at = 0.0  # loop time the current request went out
        self.header_count = 0
        self.interim = False  # parsing a 1xx answer, which precedes the real one
        self.keep_alive = False  # the current response allows reuse (llhttp forgets once the message is complete)
        self.buffer = origin.pool.buffer

    # -- the pool's side -------------------------------------------------------------------------

    def send(self, data: bytes | list[bytes]) -> Response:
        assert self.transport is not None and self.response is None
        self.response = Response(self)
        self.head = self.loop.create_future()
        self.received = False
        self.sent_at = self.loop.time()
        self.head_bytes = self.head_parsed = self.header_count = 0
        try:
            if isinstance(data, list):
                self.transport.writelines(data)
            else:
                self.transport.write(data)
        except (RuntimeError, OSError):  # closed under us, before connection_lost was delivered
            self.abort()
        return self.response

    def finished(self, resp: Response) -> None:
        if self.response is not resp:
            return
        if resp.complete and not self.closed and not resp._chunks and self.keep_alive:
            self.response = None
            self.reused = True
            self.origin.put_back(self)
        else:
            self.abort()

    def abort(self) -> None:
        if not self.closed:
            self.closed = True
            if self.transport is not None:
                self.transport.abort()
        self._gone(Disconnected("the connection was closed"))

    def pause(self) -> None:
        if not self.paused and not self.closed and self.transport is not None:
            self.paused = True
            self.transport.pause_reading()

    def resume(self) -> None:
        if self.paused and not self.closed and self.transport is not None:
            self.paused = False
            self.transport.resume_reading()

    def _gone(self, exc: BaseException) -> None:
        resp = self.response
        if resp is not None:
            resp._fail(exc)
        if self.head is not None and not self.head.done():
            self.head.set_exception(exc)
        if self.counted:
            self.counted = False
            self.origin.lost(self)

    # -- asyncio.Protocol -------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def get_buffer(self, sizehint: int) -> memoryview:
        return self.buffer

    def buffer_updated(self, nbytes: int) -> None:
        self.data_received(self.buffer[:nbytes])  # body bytes leave the parser as copies: the buffer is free again

    def data_received(self, data: bytes | memoryview) -> None:
        if self.response is None:  # bytes nobody asked for: this connection is out of step
            self.abort()
            return
        self.received = True
        head = self.head
        in_head = head is not None and not head.done()
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._protocol_error("the server switched protocols")
        except httptools.HttpParserError as exc:  # also what a callback below raised, wrapped
            self._protocol_error(self._bad or f"not a valid HTTP response ({exc})")
        except BadResponse as exc:
            self._protocol_error(str(exc))
        else:
            if in_head and not head.done():  # type: ignore[union-attr]
                self.head_bytes += len(data)
                if self.head_bytes > MAX_HEAD + 65536:  # httptools would buffer a header of any length
                    self._protocol_error(f"the response head is larger than {MAX_HEAD} bytes")

    def eof_received(self) -> bool:
        self.closed = True  # the server is done with this connection: never hand it out again
        return False  # close the transport; connection_lost follows

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        resp = self.response
        if resp is not None and resp._until_close and self.head is not None and self.head.done() and not resp.complete:
            resp.complete = True  # a body without a length ends with the connection
            resp._wake()
        self._gone(Disconnected("the server closed the connection" + (f" ({exc})" if exc else "")))

    def _protocol_error(self, message: str) -> None:
        err = BadResponse(message)
        if self.response is not None:
            self.response._fail(err)
        if self.head is not None and not self.head.done():
            self.head.set_exception(err)
        self.abort()

    # -- httptools callbacks ----------------------------------------------------------------------

    def on_message_begin(self) -> None:
        resp = self.response
        if resp is None or resp.complete:
            # bytes after a complete answer (a second answer nobody asked for, junk): they
            # must never become part of this answer or the next request's: drop the connection
            self._bad = "the server sent bytes after the end of its answer"
            raise BadResponse(self._bad)

    def _head_grew(self, n: int) -> None:
        """Count ``n`` parsed bytes of the head (a head may arrive whole in one read)."""
        self.head_parsed += n
        if self.head_parsed > MAX_HEAD:
            self._bad = f"the response head is larger than {MAX_HEAD} bytes"
            raise BadResponse(self._bad)

    def on_status(self, status: bytes) -> None:
        self._head_grew(len(status) + 16)

    def on_header(self, name: bytes, value: bytes) -> None:
        self.header_count += 1
        if len(name) + len(value) > MAX_HEADER_LINE:
            self._bad = f"a response header line is longer than {MAX_HEADER_LINE} bytes"
            raise BadResponse(self._bad)
        if self.header_count > MAX_HEADERS:
            self._bad = f"the response has more than {MAX_HEADERS} headers"
            raise BadResponse(self._bad)
        self._head_grew(len(name) + len(value) + 4)
        self.response._raw.append((name, value))  # type: ignore[union-attr]

    def on_headers_complete(self) -> None:
        resp = self.response
        assert resp is not None
        status = self.parser.get_status_code()
        if 100 <= status < 200:  # 100 Continue and friends: the real answer follows
            self.interim = True
            self.header_count = 0
            resp._raw.clear()
            return
        resp.status = status
        self.keep_alive = self.parser.should_keep_alive()
        headers = resp.headers
        for name, value in resp._raw:
            headers[name.decode("latin-1").lower()] = value.decode("latin-1")
        resp._raw.clear()
        hint = headers.get("keep-alive")
        if hint is not None:
            self._keep_alive_hint(hint)
        if ("content-length" not in headers and "chunked" not in headers.get("transfer-encoding", "").lower()
                and status not in (204, 304)):
            resp._until_close = True
        if self.head is not None and not self.head.done():
            self.head.set_result(None)

    def _keep_alive_hint(self, value: str) -> None:
        """``Keep-Alive: timeout=N``: the server closes idle connections after N s; reuse
        ours for at most N - 1 (never longer than the pool's own bound)."""
        for part in value.split(","):
            name, _, number = part.strip().partition("=")
            if name.strip().lower() == "timeout":
                try:
                    seconds = float(number)
                except ValueError:
                    return
                if seconds == seconds:  # not NaN
                    self.idle_limit = max(0.0, min(self.origin.pool.keepalive, seconds - 1.0))
                return

    def on_body(self, body: bytes) -> None:
        self.response._feed(body)  # type: ignore[union-attr]

    def on_message_complete(self) -> None:
        if self.interim:
            self.interim = False
            return
        resp = self.response
        assert resp is not None
        resp.complete = True
        resp._wake()


class _Origin:
    """The connections to one server: idle ones (most recent last), a cap, waiters."""

    def __init__(self, pool: Pool, t: Target) -> None:
        self.pool = pool
        self.target = t
        self.idle: list[_Connection] = []
        self.count = 0  # open or opening connections
        self.waiters: deque[asyncio.Future[_Connection | None]] = deque()

    async def acquire(self, loop: asyncio.AbstractEventLoop, timeout: float | None, connect_timeout: float) -> _Connection:
        """A connection that is ours until released or closed."""
        now = loop.time()
        while True:
            while self.idle:
                conn = self.idle.pop()
                if conn.closed or conn.transport is None or conn.transport.is_closing():
                    continue
                if now - conn.idle_since > conn.idle_limit:  # the server may be closing it right now
                    conn.abort()
                    continue
                return conn
            if self.count < self.pool.limit:
                self.count += 1
                return await self._connect(loop, connect_timeout if timeout is None else min(timeout, connect_timeout))
            fut: asyncio.Future[_Connection | None] = loop.create_future()
            self.waiters.append(fut)
            try:
                async with asyncio.timeout(timeout):
                    conn = await fut
            except BaseException as exc:
                if not fut.done():
                    fut.cancel()
                elif not fut.cancelled():  # handed a connection or a slot just as we gave up: pass it on
                    given = fut.result()
                    if given is not None:
                        self.put_back(given)
                    else:
                        self._wake_one()
                if isinstance(exc, TimeoutError):
                    raise PoolTimeout(f"all {self.pool.limit} connections stayed busy for {timeout:g} s") from None
                raise
            if conn is not None and not conn.closed:
                return conn
            now = loop.time()  # a slot was freed (conn None): loop to take it

    async def _connect(self, loop: asyncio.AbstractEventLoop, timeout: float) -> _Connection:
        """Open a connection for the slot the caller took. The slot is freed here on any
        failure, and only here: the connection holds it (``counted``, freed when it is
        lost) from the moment it is handed out, never while it is still being opened
        (a cancel or timeout after connection_made would otherwise free it twice)."""
        t = self.target
        try:
            async with asyncio.timeout(timeout):
                if t.unix is not None:
                    _, conn = await loop.create_unix_connection(lambda: _Connection(self, loop), t.unix)
                else:
                    _, conn = await loop.create_connection(lambda: _Connection(self, loop), t.host, t.port,
                                                           ssl=self.pool.ssl_context() if t.tls else None,
                                                           server_hostname=t.host if t.tls else None)
        except TimeoutError:
            self._slot_freed()
            raise ConnectTimeout(f"connecting took longer than {timeout:g} s") from None
        except OSError as exc:
            self._slot_freed()
            raise ConnectError(exc.strerror or str(exc) or type(exc).__name__) from None
        except BaseException:
            self._slot_freed()
            raise
        if conn.closed:  # lost between opening and now: its slot was never its own
            self._slot_freed()
            raise ConnectError("the connection closed as soon as it opened")
        conn.counted = True
        return conn

    def put_back(self, conn: _Connection) -> None:
        while self.waiters:
            w = self.waiters.popleft()
            if not w.done():
                w.set_result(conn)
                return
        conn.idle_since = conn.loop.time()
        self.idle.append(conn)
        oldest = self.idle[0]
        if conn.idle_since - oldest.idle_since > self.pool.keepalive:  # one stale connection closed per release
            oldest.abort()

    def lost(self, conn: _Connection) -> None:
        try:
            self.idle.remove(conn)
        except ValueError:
            pass
        self._slot_freed()

    def _slot_freed(self) -> None:
        self.count -= 1
        self._wake_one()

    def _wake_one(self) -> None:
        while self.waiters:
            w = self.waiters.popleft()
            if not w.done():
                w.set_result(None)
                return


class Pool:
    """Keep-alive connections per server, at most ``limit`` open to each."""

    def __init__(self, limit: int = 256, keepalive: float = KEEPALIVE, ssl_context: ssl.SSLContext | None = None) -> None:
        self.limit = limit
        self.keepalive = keepalive  # seconds an idle connection is kept
        self._origins: dict[tuple[str, str, int], _Origin] = {}
        self._ssl = ssl_context  # None: the system's trust store, made at the first https request
        self._loop: asyncio.AbstractEventLoop | None = None  # the one loop this pool serves (found at first use)
        self.resends = 0  # requests sent a second time (see the module's resend rule)
        self.on_resend: Callable[[Target], None] | None = None  # told of each resend
        self.buffer = memoryview(bytearray(READ_SIZE))  # every connection's socket reads (each used at once, then free)

    def ssl_context(self) -> ssl.SSLContext:
        if self._ssl is None:
            self._ssl = ssl.create_default_context()
        return self._ssl

    async def request(self, method: str, url: str, headers: Iterable[tuple[str, str]], body: bytes = b"", *,
                      connect_timeout: float = 10.0, pool_timeout: float | None = None,
                      idle_timeout: float | None = None, deadline: float | None = None) -> Response:
        """Send a request; return once the status and headers are in.

        ``pool_timeout`` bounds the wait for a free connection, ``connect_timeout``
        opening one; ``idle_timeout`` bounds every wait for bytes (the headers, then
        each read of the body) and ``deadline`` (loop time) all of them together.
        """
        t = target(url)
        lines = [f"{method} {t.path} HTTP/1.1\r\nHost: {t.host_header}\r\n"]
        for name, value in headers:
            _check_header(name, value)
            lines.append(f"{name}: {value}\r\n")
        lines.append(f"Content-Length: {len(body)}\r\n\r\n")
        head = "".join(lines).encode()
        data: bytes | list[bytes] = head + body if len(body) < 65536 else [head, body]
        origin = self._origins.get(t.key)
        if origin is None:
            origin = self._origins[t.key] = _Origin(self, t)
        loop = self._loop
        if loop is None:
            loop = self._loop = asyncio.get_running_loop()
        for _ in range(2):
            wait = pool_timeout
            if deadline is not None:
                left = max(0.0, deadline - loop.time())
                wait = left if wait is None else min(wait, left)
            conn = await origin.acquire(loop, wait, connect_timeout)
            resp = conn.send(data)
            resp.idle_timeout, resp.deadline = idle_timeout, deadline
            try:
                await _head(conn, resp)
            except Disconnected as exc:
                conn.abort()
                if conn.reused and not conn.received and loop.time() - conn.sent_at < RESEND_WINDOW:
                    # the server closed it while idle, before reading our request: once more, on a new one
                    self.resends += 1
                    if self.on_resend is not None:
                        self.on_resend(t)
                    continue
                if not conn.received:
                    raise NoAnswer(str(exc)) from None
                raise
            except BaseException:
                conn.abort()
                raise
            return resp
        raise NoAnswer("the server closed the connection before answering")

    async def close(self) -> None:
        for origin in self._origins.values():
            for conn in list(origin.idle):
                conn.abort()
            origin.idle.clear()
        self._origins.clear()


async def _head(conn: _Connection, resp: Response) -> None:
    """Wait for the status line and headers (within the response's timeouts)."""
    head = conn.head
    assert head is not None
    if head.done():
        head.result()
        return
    timer = resp._arm(head)
    try:
        await head
    finally:
        if timer is not None:
            timer.cancel()
