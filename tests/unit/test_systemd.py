"""router.systemd: the sd_notify datagram protocol against a fake NOTIFY_SOCKET."""

from __future__ import annotations

import asyncio
import os
import socket
import tempfile
import time
import uuid
from pathlib import Path
from typing import Iterator

import pytest

from router import systemd


def _receiver(address: str) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(address)
    sock.setblocking(False)
    return sock


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """No systemd variables from the environment the tests happen to run in."""
    for name in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


@pytest.fixture
def path_socket(clean_env: pytest.MonkeyPatch) -> Iterator[socket.socket]:
    """A datagram socket bound to a file (short path: sun_path holds 108 bytes)."""
    with tempfile.TemporaryDirectory(prefix="sdn-") as d:
        path = os.path.join(d, "notify")
        sock = _receiver(path)
        clean_env.setenv("NOTIFY_SOCKET", path)
        yield sock
        sock.close()


@pytest.fixture
def abstract_socket(clean_env: pytest.MonkeyPatch) -> Iterator[socket.socket]:
    """A datagram socket in the abstract namespace: NOTIFY_SOCKET=@name."""
    name = f"llm-router-test-{uuid.uuid4().hex}"
    sock = _receiver("\0" + name)
    clean_env.setenv("NOTIFY_SOCKET", "@" + name)
    yield sock
    sock.close()


async def recv(sock: socket.socket, timeout: float = 5.0) -> str:
    loop = asyncio.get_running_loop()
    return (await asyncio.wait_for(loop.sock_recv(sock, 4096), timeout)).decode()


def pending(sock: socket.socket) -> list[str]:
    out = []
    while True:
        try:
            out.append(sock.recv(4096).decode())
        except BlockingIOError:
            return out


async def test_ready_with_status_reaches_a_path_socket(path_socket):
    assert systemd.ready("listening on http://127.0.0.1:4000")
    assert await recv(path_socket) == "READY=1\nSTATUS=listening on http://127.0.0.1:4000"


async def test_abstract_namespace_socket(abstract_socket):
    assert systemd.notify("READY=1")
    assert await recv(abstract_socket) == "READY=1"


async def test_reloading_then_ready_and_stopping(path_socket):
    before = time.monotonic_ns() // 1000
    assert systemd.reloading("reloading configuration")
    assert systemd.ready()
    assert systemd.stopping("draining")
    reload_msg = (await recv(path_socket)).split("\n")
    assert reload_msg[0] == "RELOADING=1"
    fields = dict(line.split("=", 1) for line in reload_msg)
    assert before <= int(fields["MONOTONIC_USEC"]) <= time.monotonic_ns() // 1000
    assert fields["STATUS"] == "reloading configuration"
    assert await recv(path_socket) == "READY=1"
    assert await recv(path_socket) == "STOPPING=1\nSTATUS=draining"


async def test_a_status_stays_one_line(path_socket):
    systemd.ready("two\nlines")
    assert await recv(path_socket) == "READY=1\nSTATUS=two lines"


def test_unset_socket_is_a_no_op(clean_env):
    assert systemd.notify("READY=1") is False
    assert systemd.ready("x") is False
    assert systemd.reloading() is False
    assert systemd.stopping() is False


@pytest.mark.parametrize("value", ["", "relative/path", "vsock:2:1234"])
def test_unsupported_address_is_a_no_op(clean_env, value):
    clean_env.setenv("NOTIFY_SOCKET", value)
    assert systemd.notify("READY=1") is False


def test_nobody_listening_is_not_an_error(clean_env):
    with tempfile.TemporaryDirectory(prefix="sdn-") as d:
        clean_env.setenv("NOTIFY_SOCKET", os.path.join(d, "gone"))
        assert systemd.notify("READY=1") is False


def test_watchdog_interval(clean_env):
    assert systemd.watchdog_interval() is None
    clean_env.setenv("WATCHDOG_USEC", "30000000")
    assert systemd.watchdog_interval() == 30.0
    clean_env.setenv("WATCHDOG_PID", str(os.getpid()))
    assert systemd.watchdog_interval() == 30.0
    for bad in ("0", "-5", "soon", ""):
        clean_env.setenv("WATCHDOG_USEC", bad)
        assert systemd.watchdog_interval() is None


def test_watchdog_pid_of_another_process_disables_it(clean_env):
    clean_env.setenv("WATCHDOG_USEC", "200000")
    clean_env.setenv("WATCHDOG_PID", str(os.getpid() + 1))
    assert systemd.watchdog_interval() is None
    clean_env.setenv("WATCHDOG_PID", "not-a-pid")
    assert systemd.watchdog_interval() is None


async def test_watchdog_loop_pings_every_half_interval(path_socket, clean_env):
    clean_env.setenv("WATCHDOG_USEC", "200000")  # pings every 0.1 s
    task = asyncio.create_task(systemd.watchdog_loop())
    try:
        stamps = []
        for _ in range(6):
            assert await recv(path_socket, timeout=2) == "WATCHDOG=1"
            stamps.append(time.monotonic())
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    gaps = [b - a for a, b in zip(stamps, stamps[1:])]
    assert 0.05 < sum(gaps) / len(gaps) < 0.2, gaps
    assert max(gaps) < 0.5, gaps  # far inside the 0.2 s WatchdogSec on an idle loop


async def test_a_blocked_loop_stops_the_pings(path_socket, clean_env):
    clean_env.setenv("WATCHDOG_USEC", "200000")
    task = asyncio.create_task(systemd.watchdog_loop())
    try:
        assert await recv(path_socket) == "WATCHDOG=1"
        time.sleep(0.5)  # the event loop is stuck: no ping may be sent meanwhile
        assert pending(path_socket) == []
        assert await recv(path_socket, timeout=2) == "WATCHDOG=1"  # and they resume with it
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


async def test_watchdog_loop_returns_at_once_without_a_watchdog(path_socket, clean_env):
    await asyncio.wait_for(systemd.watchdog_loop(), 1)  # no WATCHDOG_USEC
    clean_env.setenv("WATCHDOG_USEC", "200000")
    clean_env.setenv("WATCHDOG_PID", "1")
    await asyncio.wait_for(systemd.watchdog_loop(), 1)  # another process's watchdog
    assert pending(path_socket) == []


async def test_watchdog_loop_without_socket_returns(clean_env):
    clean_env.setenv("WATCHDOG_USEC", "200000")
    await asyncio.wait_for(systemd.watchdog_loop(), 1)


async def test_watchdog_loop_explicit_interval(path_socket):
    task = asyncio.create_task(systemd.watchdog_loop(0.1))
    try:
        assert await recv(path_socket) == "WATCHDOG=1"
        assert await recv(path_socket) == "WATCHDOG=1"
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


def test_module_has_no_dependencies_beyond_the_standard_library():
    source = Path(systemd.__file__).read_text()
    imports = {line.split()[1].split(".")[0] for line in source.splitlines() if line.startswith(("import ", "from "))}
    assert imports <= {"__future__", "asyncio", "os", "socket", "time"}
