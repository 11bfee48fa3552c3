"""Hostile clients against the real server process (`llm-router serve`): each row of
the table gets its status (an OpenAI-shaped body where the server can answer at
all), and the proxy serves a normal request right after every one of them."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import AsyncIterator

import aiohttp
import orjson
import pytest
import pytest_asyncio

from router.server import MAX_LINGERING
from router.simulate import SimulatedBackend
from tests.e2e.test_cli import ROOT, free_ports, wait_until_up

READ_TIMEOUT = 1.5  # general_settings.client_read_timeout of the proxy under test
MAX_CONNECTIONS = 300
CHAT = "/v1/chat/completions"
GOOD = orjson.dumps({"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2})


@dataclass
class Proxy:
    port: int
    proc: subprocess.Popen
    sim: SimulatedBackend

    def open_fds(self) -> int:
        return len(os.listdir(f"/proc/{self.proc.pid}/fd"))


pytestmark = pytest.mark.asyncio(loop_scope="module")  # one proxy process for the whole table


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def proxy(tmp_path_factory) -> AsyncIterator[Proxy]:
    sim = SimulatedBackend("vllm", ["m"])
    await sim.start()
    tmp: Path = tmp_path_factory.mktemp("hostile")
    (tmp / "c.yaml").write_text(f"""
model_list:
  - {{model_name: m, litellm_params: {{model: hosted_vllm/m, api_base: "{sim.base_url}/v1"}}}}
general_settings:
  max_request_size_mb: 1
  max_json_depth: 32
  client_read_timeout: {READ_TIMEOUT}
  max_connections: {MAX_CONNECTIONS}
router_settings: {{num_retries: 0, monitor_interval: 60}}
""")
    (tmp / "model-mappings.yaml").write_text("{}\n")
    port, = free_ports(1)
    proc = subprocess.Popen([sys.executable, "-m", "router", "serve", "--config", str(tmp / "c.yaml"), "--port", str(port)],
                            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        async with aiohttp.ClientSession() as s:
            await wait_until_up(s, f"http://127.0.0.1:{port}/health/liveliness", proc)
        yield Proxy(port, proc, sim)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
        proc.stderr.close()
        await sim.stop()


async def exchange(port: int, data: bytes | list[bytes], pause: float = 0.0, timeout: float = 10.0) -> tuple[int | None, dict, bytes]:
    """Send raw bytes (a list: pieces with ``pause`` between them), read the response.
    Status None: the server closed the connection without answering."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        for i, piece in enumerate([data] if isinstance(data, bytes) else data):
            if i and pause:
                await asyncio.sleep(pause)  # a slow client, on purpose
            try:
                writer.write(piece)
                await writer.drain()
            except ConnectionError:
                break
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout)
        except (asyncio.IncompleteReadError, ConnectionError):
            return None, {}, b""
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:] if line)}
        body = await asyncio.wait_for(reader.readexactly(int(headers.get("content-length", 0))), timeout)
        return status, headers, body
    finally:
        writer.close()


def post(body: bytes, content_type: str = "application/json", extra: str = "") -> bytes:
    return (f"POST {CHAT} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: {content_type}\r\nContent-Length: {len(body)}\r\n{extra}"
            "Connection: close\r\n\r\n").encode() + body


def chat(**fields) -> bytes:
    return orjson.dumps({"model": "m", "messages": [{"role": "user", "content": "hi"}], **fields})


def nested(depth: int) -> bytes:
    return b'{"model": "m", "messages": [{"role": "user", "content": "hi"}], "metadata": ' + b"[" * depth + b"]" * depth + b"}"


def deflate_bomb(inflated_mb: int) -> bytes:
    z = zlib.compressobj(9)
    zeros = bytes(1 << 20)
    return b"".join(z.compress(zeros) for _ in range(inflated_mb)) + z.flush()


HEAD = f"POST {CHAT} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
CASES = {
    "oversized body": (post(b'{"model": "m", "x": "' + b"a" * (2 * 1024 * 1024) + b'"}'), 413, "request_too_large"),
    "JSON deeper than max_json_depth": (post(nested(40)), 400, "json_too_deep"),
    "JSON 100,000 deep": (post(nested(100_000)), 400, None),
    "invalid UTF-8": (post(b'{"model": "m", "messages": [{"role": "user", "content": "\xff\xfe\xc3"}]}'), 400, None),
    "not JSON at all": (post(b"\x00\x01\x02garbage"), 400, None),
    "a form instead of JSON": (post(b"model=m&messages=hi", "application/x-www-form-urlencoded"), 400, None),
    "JSON array body": (post(b"[1, 2, 3]"), 400, None),
    "model with path traversal": (post(chat(model="../../../etc/passwd")), 404, "model_not_found"),
    "model with CRLF": (post(chat(model="m\r\nX-Injected: yes")), 400, None),
    "model 100 KB long": (post(chat(model="m" * 100_000)), 400, None),
    "huge n": (post(chat(n=10_000_000)), 400, None),
    "negative max_tokens": (post(chat(max_tokens=-5)), 400, None),
    "stream not a boolean": (post(chat(stream="yes please")), 400, None),
    "30,000 messages": (post(orjson.dumps({"model": "m", "messages": [{"role": "user", "content": ""}] * 30_000})), 400, None),
    "header line of 64 KB": (post(GOOD, extra="X-Big: " + "a" * 65536 + "\r\n"), 431, "headers_too_large"),
    "500 headers": (post(GOOD, extra="".join(f"X-H{i}: v\r\n" for i in range(500))), 400, None),
    "garbage request line": (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03 TLS hello\r\n\r\n", 400, None),
    "bad Content-Length": (HEAD.encode() + b"Content-Length: -1\r\n\r\n{}", 400, None),
    "GET on a POST endpoint": (f"GET {CHAT} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".encode(), 405, None),
    "DNS rebinding (a foreign Host, no key)": (post(GOOD).replace(b"Host: 127.0.0.1", b"Host: evil.example:4000"), 403, "host_not_allowed"),
    "a page on another site (Origin, no key)": (post(GOOD, extra="Origin: https://evil.example\r\n"), 403, "origin_not_allowed"),
    "a cross-site form post (no key)": (post(GOOD, "text/plain", "Origin: http://localhost:3000\r\n"), 415, "unsupported_media_type"),
    "a deflate bomb (256 MB of zeros)": (post(deflate_bomb(256), extra="Content-Encoding: deflate\r\n"), 415,
                                    "unsupported_content_encoding"),
    "unknown path": (b"POST /v1/../../etc/passwd HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 0\r\nConnection: close\r\n\r\n", 404, None),
}


async def assert_still_serving(proxy: Proxy) -> None:
    status, _, body = await exchange(proxy.port, post(GOOD))
    assert status == 200 and orjson.loads(body)["object"] == "chat.completion"


@pytest.mark.parametrize("case", list(CASES))
async def test_hostile_request_gets_its_status_and_the_proxy_keeps_serving(proxy, case):
    data, expected, code = CASES[case]
    status, headers, body = await exchange(proxy.port, data)
    assert status == expected, (case, status, body[:300])
    assert headers["content-type"].startswith("application/json")
    error = orjson.loads(body)["error"]
    assert isinstance(error["message"], str) and error["message"] and isinstance(error["type"], str)
    if code:
        assert error["code"] == code
    await assert_still_serving(proxy)


async def test_an_unterminated_chunked_body_gets_a_408_after_the_read_timeout(proxy):
    start = asyncio.get_running_loop().time()
    status, _, body = await exchange(proxy.port, [(HEAD + "Transfer-Encoding: chunked\r\n\r\n").encode(), b"5\r\nhello\r\n"])
    assert status == 408 and orjson.loads(body)["error"]["code"] == "request_timeout"
    assert asyncio.get_running_loop().time() - start < READ_TIMEOUT + 3
    await assert_still_serving(proxy)


async def test_a_slowloris_client_is_cut_off_after_the_read_timeout(proxy):
    start = asyncio.get_running_loop().time()
    pieces = [HEAD.encode()] + [f"X-Slow-{i}: 1\r\n".encode() for i in range(40)]  # one header every 0.25 s: 10 s
    status, _, _ = await exchange(proxy.port, pieces, pause=0.25, timeout=15)
    assert status is None  # closed, unanswered
    assert asyncio.get_running_loop().time() - start < READ_TIMEOUT + 3
    await assert_still_serving(proxy)


async def test_ten_thousand_idle_connections_stay_bounded_and_the_proxy_recovers(proxy):
    baseline = proxy.open_fds()
    conns: list[asyncio.StreamWriter] = []
    try:
        for batch, size in enumerate([MAX_CONNECTIONS] + [500] * 20):  # exactly the cap first, then the flood
            opened = await asyncio.gather(*(asyncio.open_connection("127.0.0.1", proxy.port) for _ in range(size)),
                                          return_exceptions=True)
            conns += [w for r in opened if not isinstance(r, BaseException) for w in (r[1],)]
            # The proxy sheds what is over max_connections at once: what it accepted in one go
            # (up to its listen backlog) is down to the cap plus the few refusals it lets the
            # client read (MAX_LINGERING) within moments.
            bound = baseline + MAX_CONNECTIONS + MAX_LINGERING + 20
            deadline = asyncio.get_running_loop().time() + 2
            while proxy.open_fds() > bound:
                assert asyncio.get_running_loop().time() < deadline, (batch, proxy.open_fds())
                await asyncio.sleep(0.02)  # polling the process's descriptors, bounded by the deadline
            if batch == 0:  # the cap is full (just now, well within the read timeout) and nothing was refused
                # yet: one more connection gets a 503 in OpenAI's shape, then is closed
                status, headers, body = await exchange(proxy.port, post(GOOD), timeout=5)
                assert status == 503 and headers["retry-after"] == "1", status
                assert orjson.loads(body)["error"]["code"] == "too_many_connections"
        assert len(conns) >= 9_000
        # The idle ones are closed by the read timeout, so new clients get in again.
        deadline = asyncio.get_running_loop().time() + READ_TIMEOUT + 10
        while True:
            try:
                status, _, _ = await exchange(proxy.port, post(GOOD), timeout=5)
            except (OSError, EOFError):  # refused or reset while the proxy sheds the flood
                status = None
            if status == 200:
                break
            assert asyncio.get_running_loop().time() < deadline, "the proxy did not recover"
            await asyncio.sleep(0.2)  # polling for recovery, bounded by the deadline
    finally:
        for w in conns:
            w.close()
    await assert_still_serving(proxy)
    assert proxy.proc.poll() is None
