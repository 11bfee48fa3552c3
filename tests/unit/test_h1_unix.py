"""router.h1 over unix sockets (``http+unix://`` URLs, what a ``unix:///…sock`` api_base
becomes): what only a unix socket has. Everything else in test_h1.py runs over a unix
socket too (its ``transport`` fixture)."""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import tempfile
from typing import Iterator
from urllib.parse import quote

import pytest
import uvloop

from router import h1
from router.h1 import ConnectError, Disconnected, Pool

from test_h1 import JSON_OK, Handler, Server, keepalive_server


@pytest.fixture(params=["asyncio", "uvloop"], autouse=True)
def event_loop_policy(request: pytest.FixtureRequest) -> asyncio.AbstractEventLoopPolicy:
    return uvloop.EventLoopPolicy() if request.param == "uvloop" else asyncio.DefaultEventLoopPolicy()


@pytest.fixture
def sock() -> Iterator[str]:
    """A socket path in a fresh short directory (tmp_path can exceed the 107-byte limit)."""
    d = tempfile.mkdtemp(prefix="h1u-")
    yield os.path.join(d, "b.sock")
    shutil.rmtree(d, ignore_errors=True)


class UnixServer(Server):
    """test_h1's Server, listening on a unix socket."""

    def __init__(self, handler: Handler, path: str) -> None:
        super().__init__(handler)
        self.path = path

    async def __aenter__(self) -> UnixServer:
        self.server = await asyncio.start_unix_server(self._serve, self.path)
        return self

    @property
    def url(self) -> str:
        return f"http+unix://{quote(self.path, safe='')}/v1/chat/completions"


def test_unix_targets() -> None:
    t = h1.target("http+unix://%2Frun%2Fllm%2Fv%20llm.sock/v1/models?x=1")
    assert (t.unix, t.host_header, t.path, t.tls) == ("/run/llm/v llm.sock", "localhost", "/v1/models?x=1", False)
    assert t.key == ("http+unix", "/run/llm/v llm.sock", 0)
    assert h1.target("http+unix://%2Fa.sock/v1").key != h1.target("http+unix://%2Fb.sock/v1").key
    with pytest.raises(ValueError):
        h1.target("http+unix://relative.sock/v1")


async def test_two_sockets_get_two_pools(sock: str) -> None:
    other = sock.replace("b.sock", "c.sock")
    async with UnixServer(keepalive_server(JSON_OK), sock) as a, UnixServer(keepalive_server(JSON_OK), other) as b:
        pool = Pool(limit=1)
        for srv in (a, b, a, b):
            resp = await pool.request("POST", srv.url, [], b"{}", pool_timeout=1)
            assert await resp.read() == b'{"ok": true}'
            resp.release()
        await pool.close()
    assert (a.connections, len(a.requests), b.connections, len(b.requests)) == (1, 2, 1, 2)


async def test_a_missing_socket_or_one_nobody_listens_on_is_a_connect_error(sock: str) -> None:
    pool = Pool()
    url = f"http+unix://{quote(sock, safe='')}/v1/models"
    with pytest.raises(ConnectError, match="No such file"):
        await pool.request("GET", url, [])
    s = socket.socket(socket.AF_UNIX)  # bound, not listening: a dead server's leftover file
    s.bind(sock)
    try:
        with pytest.raises(ConnectError, match="refused"):
            await pool.request("GET", url, [])
    finally:
        s.close()
    assert all(o.count == 0 for o in pool._origins.values())  # the slots were given back
    await pool.close()


async def test_a_server_that_never_accepts_fails_fast_instead_of_hanging(sock: str) -> None:
    """A listener whose backlog is full (a stuck server): Linux answers a unix connect at
    once with EAGAIN where TCP would leave it pending. uvloop reports a ConnectError;
    asyncio takes EAGAIN for "in progress" and the first write fails (Disconnected).
    Either way it fails within the bounds, and the slot is given back."""
    s = socket.socket(socket.AF_UNIX)
    s.bind(sock)
    s.listen(0)
    fillers = []
    try:
        for _ in range(8):  # fill the backlog (its size differs between kernels)
            f = socket.socket(socket.AF_UNIX)
            f.setblocking(False)
            try:
                f.connect(sock)
            except BlockingIOError:
                f.close()
                break
            fillers.append(f)
        else:
            pytest.skip("this kernel's backlog did not fill")
        pool = Pool()
        with pytest.raises((ConnectError, Disconnected, TimeoutError)):
            await pool.request("GET", f"http+unix://{quote(sock, safe='')}/v1/models", [], connect_timeout=0.5)
        assert all(o.count == 0 for o in pool._origins.values())
        await pool.close()
    finally:
        for f in fillers:
            f.close()
        s.close()
