"""Issue 15: a keyless router on loopback is reachable by any web page the operator
opens (DNS rebinding, cross-site requests), and compressed request bodies are a
decompression bomb. These run the real server (``Runner``) in-process."""

from __future__ import annotations

import asyncio
import json
import resource
import time
import zlib

import aiohttp
import pytest

from router.config import ConfigError
from tests.conftest import stack_config

CHAT = json.dumps({"model": "llama3.1:8b", "messages": [{"role": "user", "content": "Hi"}]})


def gzip_bomb(inflated_mb: int) -> bytes:
    z = zlib.compressobj(9, zlib.DEFLATED, 31)
    zeros = bytes(1 << 20)
    return b"".join(z.compress(zeros) for _ in range(inflated_mb)) + z.flush()


@pytest.fixture(scope="module")
def bomb() -> bytes:
    return gzip_bomb(1024)  # 1 GB of zeros in ~1 MB


async def raw_post(url: str, path: str, head: dict, body: bytes) -> tuple[int, bytes, float]:
    host, p = url.split("//")[1].split(":")
    started = time.monotonic()
    reader, writer = await asyncio.open_connection(host, int(p))
    lines = [f"POST {path} HTTP/1.1", f"Host: {host}:{p}", f"Content-Length: {len(body)}"] + [f"{k}: {v}" for k, v in head.items()]
    writer.write(("\r\n".join(lines) + "\r\n\r\n").encode() + body)
    try:
        status_line = await asyncio.wait_for(reader.readline(), 30)
        rest = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 30)
        length = int(next(x.split(b":")[1] for x in rest.split(b"\r\n") if x.lower().startswith(b"content-length")))
        payload = await asyncio.wait_for(reader.readexactly(length), 30)
        return int(status_line.split()[1]), payload, time.monotonic() - started
    finally:
        writer.close()


@pytest.mark.parametrize("encoding", ["gzip", "deflate", "br", "GZIP", "gzip, identity"])
async def test_a_compressed_request_body_is_refused_with_415_and_never_inflated(make_stack, bomb, encoding):
    stack = await make_stack(extra_general="max_request_size_mb: 64")
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    slowest = 0.0
    done = asyncio.Event()

    async def probe() -> None:  # another connection, meanwhile
        nonlocal slowest
        async with aiohttp.ClientSession() as s:
            for _ in range(200):
                if done.is_set():
                    break
                t = time.monotonic()
                async with s.get(stack.url + "/health/liveliness") as r:
                    assert r.status == 200
                slowest = max(slowest, time.monotonic() - t)
                await asyncio.sleep(0.005)

    prober = asyncio.create_task(probe())
    await asyncio.sleep(0.05)
    results = await asyncio.gather(*(raw_post(stack.url, "/v1/chat/completions",
                                              {"Content-Type": "application/json", "Content-Encoding": encoding}, bomb)
                                     for _ in range(4)))
    done.set()
    await prober
    for status, payload, elapsed in results:
        assert status == 415, payload[:300]
        error = json.loads(payload)["error"]
        assert error["code"] == "unsupported_content_encoding" and error["type"] == "invalid_request_error"
        assert elapsed < 2.0
    assert slowest < 0.25, slowest
    grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert grown_mb < 100, grown_mb
    # identity is what every client sends (or nothing at all)
    status, payload, _ = await raw_post(stack.url, "/v1/chat/completions",
                                        {"Content-Type": "application/json", "Content-Encoding": "identity"}, CHAT.encode())
    assert status == 200, payload[:300]
