"""Issue 15: a keyless router on loopback is reachable by any web page the operator
opens (DNS rebinding, cross-site requests), and compressed request bodies are a
decompression bomb. These run the real server (``Runner``) in-process."""

from __future__ import annotations

import asyncio
import gzip
import json
import resource
import time
import zlib

import aiohttp
import pytest

from router.config import ConfigError
from tests.conftest import stack_config

MASTER = "sk-master-key-123"
CHAT = json.dumps({"model": "llama3.1:8b", "messages": [{"role": "user", "content": "Hi"}]})


async def send(url: str, method: str = "GET", path: str = "/v1/models", headers: dict | None = None,
               data: str | bytes | None = None) -> tuple[int, dict, dict]:
    async with aiohttp.ClientSession(auto_decompress=False) as s:
        async with s.request(method, url + path, headers=headers or {}, data=data) as r:
            raw = await r.read()
            body = json.loads(raw) if r.content_type == "application/json" and raw else raw
            return r.status, body, dict(r.headers)


def port(stack) -> str:
    return stack.url.rsplit(":", 1)[1]


async def test_keyless_router_refuses_a_foreign_host_dns_rebinding(make_stack):
    stack = await make_stack(extra_general="allowed_hosts: [my-box.lan, '*.internal.example']")
    p = port(stack)
    for host in (f"evil.example:{p}", "evil.example", f"localhost.evil.example:{p}", f"127.0.0.1.nip.io:{p}",
                 f"my-box.lan.evil.example:{p}", "internal.example"):
        for method, path, data in (("GET", "/v1/models", None), ("POST", "/v1/chat/completions", CHAT),
                                   ("POST", "/router/reload", None), ("GET", "/ui/data", None)):
            status, body, _ = await send(stack.url, method, path, {"Host": host, "Content-Type": "application/json"}, data)
            assert status == 403, (host, path)
            assert body["error"]["type"] == "permission_error" and body["error"]["code"] == "host_not_allowed"
    for host in (f"localhost:{p}", f"127.0.0.1:{p}", "127.0.0.2", f"[::1]:{p}", f"app.localhost:{p}", "LOCALHOST.",
                 f"my-box.lan:{p}", "gpu.internal.example"):
        assert (await send(stack.url, headers={"Host": host}))[0] == 200, host
    status, _, _ = await send(stack.url, "POST", "/v1/chat/completions", {"Host": f"localhost:{p}",
                                                                          "Content-Type": "application/json"}, CHAT)
    assert status == 200


async def test_with_a_key_host_and_origin_are_not_checked(make_stack):
    stack = await make_stack(extra_general=f"master_key: {MASTER}")
    headers = {"Host": "evil.example", "Origin": "https://evil.example", "Authorization": f"Bearer {MASTER}",
               "Content-Type": "text/plain"}
    assert (await send(stack.url, "POST", "/v1/chat/completions", headers, CHAT))[0] == 200
    assert (await send(stack.url, headers={"Host": "evil.example"}))[0] == 401  # as before: the key decides


async def test_with_a_key_only_listed_origins_get_cors_grants(make_stack):
    """With a key, a browser app that sends it needs CORS: pages in allowed_origins get
    their grant (the preflight carries no key, so it is answered before the key check);
    others get no Access-Control-* header, and the key still decides."""
    stack = await make_stack(extra_general=f"master_key: {MASTER}, allowed_origins: ['https://chat.corp.example']")
    listed, other = "https://chat.corp.example", "https://evil.example"
    preflight = {"Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "authorization, content-type"}
    status, _, headers = await send(stack.url, "OPTIONS", "/v1/chat/completions", {"Origin": listed, **preflight})
    assert status == 204 and headers["Access-Control-Allow-Origin"] == listed
    auth = {"Authorization": f"Bearer {MASTER}", "Content-Type": "application/json"}
    status, body, headers = await send(stack.url, "POST", "/v1/chat/completions", {"Origin": listed, **auth}, CHAT)
    assert status == 200 and body["choices"] and headers["Access-Control-Allow-Origin"] == listed
    status, _, headers = await send(stack.url, "POST", "/v1/chat/completions", {"Origin": listed}, CHAT)
    assert status == 401 and headers["Access-Control-Allow-Origin"] == listed  # the page can read why
    stream = json.dumps({**json.loads(CHAT), "stream": True})
    status, body, headers = await send(stack.url, "POST", "/v1/chat/completions", {"Origin": listed, **auth}, stream)
    assert status == 200 and b"[DONE]" in body and headers["Access-Control-Allow-Origin"] == listed
    status, _, headers = await send(stack.url, "OPTIONS", "/v1/chat/completions", {"Origin": other, **preflight})
    assert status != 204 and not any(h.lower().startswith("access-control-") for h in headers)
    status, _, headers = await send(stack.url, "POST", "/v1/chat/completions", {"Origin": other, **auth}, CHAT)
    assert status == 200 and not any(h.lower().startswith("access-control-") for h in headers)


async def test_keyless_router_refuses_foreign_origins_and_grants_cors_only_to_allowed_ones(make_stack, monkeypatch):
    monkeypatch.setenv("LLM_ROUTER_ORIGINS", "https://chat.example.lan, http://tool.example:*")
    stack = await make_stack(extra_general="allowed_origins: ['https://*.corp.example']")
    json_ct = {"Content-Type": "application/json"}
    for origin in ("https://evil.example", "null", "http://localhost.evil.example", "https://chat.example.lan.evil.example",
                   "http://chat.example.lan", "file://", "https://corp.example"):
        for method, path, data in (("POST", "/v1/chat/completions", CHAT), ("GET", "/v1/models", None),
                                   ("POST", "/router/reload", None)):
            status, body, headers = await send(stack.url, method, path, {"Origin": origin, **json_ct}, data)
            assert status == 403 and body["error"]["code"] == "origin_not_allowed", (origin, path)
            assert not any(h.lower().startswith("access-control-") for h in headers)
        status, _, headers = await send(stack.url, "OPTIONS", "/v1/chat/completions",  # the preflight
                                        {"Origin": origin, "Access-Control-Request-Method": "POST",
                                         "Access-Control-Request-Headers": "content-type, authorization"})
        assert status == 403 and not any(h.lower().startswith("access-control-") for h in headers)

    for origin in ("http://localhost:3000", "http://127.0.0.1:8080", "http://[::1]:5173", "https://chat.example.lan",
                   "http://tool.example:9000", "https://ui.corp.example", stack.url):
        status, _, headers = await send(stack.url, "OPTIONS", "/v1/chat/completions",
                                        {"Origin": origin, "Access-Control-Request-Method": "POST",
                                         "Access-Control-Request-Headers": "content-type, authorization"})
        if origin == stack.url:  # its own pages: no preflight is ever sent, nothing to grant
            assert status == 405
            continue
        assert status == 204 and headers["Access-Control-Allow-Origin"] == origin, (origin, stack.log_lines()[-5:])
        assert "POST" in headers["Access-Control-Allow-Methods"]
        assert headers["Access-Control-Allow-Headers"] == "content-type, authorization"
        status, body, headers = await send(stack.url, "POST", "/v1/chat/completions", {"Origin": origin, **json_ct}, CHAT)
        assert status == 200 and body["choices"], origin
        assert headers["Access-Control-Allow-Origin"] == origin and "Origin" in headers["Vary"]
    # its own status page (same origin, as the Host) is served, without a CORS grant
    status, _, headers = await send(stack.url, "GET", "/ui/data", {"Origin": stack.url})
    assert status == 200 and "Access-Control-Allow-Origin" not in headers
    # a stream to an allowed page carries the grant too
    stream = json.dumps({**json.loads(CHAT), "stream": True})
    status, body, headers = await send(stack.url, "POST", "/v1/chat/completions",
                                       {"Origin": "http://localhost:3000", **json_ct}, stream)
    assert status == 200 and b"[DONE]" in body and headers["Access-Control-Allow-Origin"] == "http://localhost:3000"


async def test_keyless_router_refuses_form_and_text_bodies_from_browsers(make_stack):
    """The bodies a page may POST cross-site without a preflight. A browser marks the
    request (Origin, Sec-Fetch-*); curl -d (x-www-form-urlencoded, no Origin) still works."""
    stack = await make_stack()
    for ctype in ("text/plain", "text/plain;charset=UTF-8", "application/x-www-form-urlencoded",
                  "multipart/form-data; boundary=x"):
        for extra in ({"Origin": "http://localhost:3000"}, {"Sec-Fetch-Mode": "no-cors", "Sec-Fetch-Site": "cross-site"}):
            for path in ("/v1/chat/completions", "/chat/completions", "/v1/embeddings", "/v1/completions", "/router/reload"):
                status, body, _ = await send(stack.url, "POST", path, {"Content-Type": ctype, **extra}, CHAT)
                assert status == 415 and body["error"]["code"] == "unsupported_media_type", (ctype, extra, path)
    # no browser marks: curl -d, or a script without a content type
    status, body, _ = await send(stack.url, "POST", "/v1/chat/completions",
                                 {"Content-Type": "application/x-www-form-urlencoded"}, CHAT)
    assert status == 200 and body["choices"]
    status, _, _ = await send(stack.url, "POST", "/v1/chat/completions",
                              {"Content-Type": "application/json", "Origin": "http://localhost:3000"}, CHAT)
    assert status == 200


def test_allowed_hosts_and_origins_are_validated_with_file_and_line(tmp_path, backends, monkeypatch):
    bad = ("allowed_hosts: ['http://box.lan', 'box.lan:4000', ok.lan], "
           "allowed_origins: ['https://x.example/path', 'x.example', 'https://ok.example']")
    with pytest.raises(ConfigError) as info:
        stack_config(tmp_path, backends, extra_general=bad)
    text = str(info.value)
    assert len(info.value.issues) == 4, text
    for where in ("allowed_hosts[0]", "allowed_hosts[1]", "allowed_origins[0]", "allowed_origins[1]"):
        assert f"litellm.yaml:" in text and where in text, where
    monkeypatch.setenv("LLM_ROUTER_ORIGINS", "https://fine.example,evil.example/x")
    with pytest.raises(ConfigError) as info:
        stack_config(tmp_path, backends)
    assert "LLM_ROUTER_ORIGINS" in str(info.value) and "evil.example/x" in str(info.value)
    assert len(info.value.issues) == 1
    monkeypatch.setenv("LLM_ROUTER_ORIGINS", "https://fine.example, http://localhost:*")
    config = stack_config(tmp_path, backends, extra_general="allowed_hosts: [Box.LAN]")
    assert config.web.allowed_hosts == ("box.lan",)
    assert config.web.allowed_origins == ("https://fine.example", "http://localhost:*")


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


def test_the_bound_name_is_a_host_and_an_unspecified_bind_allows_addresses_not_names():
    from router.app import host_allowed, origin_allowed
    from router.config import WebAccess

    none = WebAccess()
    assert host_allowed("gpu-box:4000", none, "gpu-box") and host_allowed("GPU-BOX.", none, "gpu-box")
    assert not host_allowed("gpu-box:4000", none, "127.0.0.1")
    assert host_allowed("[fd00::5]:4000", none, "fd00::5") and host_allowed("10.0.0.5:4000", none, "10.0.0.5")
    # `serve --host 0.0.0.0 --allow-unauthenticated`: any address (no page can rebind an address), no foreign names
    assert host_allowed("192.168.1.20:4000", none, "0.0.0.0") and host_allowed("[fd00::5]", none, "::")
    assert not host_allowed("evil.example:4000", none, "0.0.0.0")
    assert host_allowed(None, none, "127.0.0.1")  # no Host at all (HTTP/1.0): no browser sends that
    assert not origin_allowed("null", "127.0.0.1:4000", none) and origin_allowed("null", None, WebAccess(allowed_origins=("null",)))
    assert origin_allowed("*anything*", None, WebAccess(allowed_origins=("*",)))


async def raw_exchange(url: str, head_lines: list[str], body: bytes) -> tuple[int, dict]:
    host, p = url.split("//")[1].split(":")
    reader, writer = await asyncio.open_connection(host, int(p))
    writer.write(("\r\n".join([f"POST /v1/chat/completions HTTP/1.1", f"Host: {host}:{p}", *head_lines]) + "\r\n\r\n").encode() + body)
    try:
        status_line = await asyncio.wait_for(reader.readline(), 30)
        rest = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 30)
        length = int(next(x.split(b":")[1] for x in rest.split(b"\r\n") if x.lower().startswith(b"content-length")))
        return int(status_line.split()[1]), json.loads(await asyncio.wait_for(reader.readexactly(length), 30))
    finally:
        writer.close()


def chunked(data: bytes) -> bytes:
    return f"{len(data):x}\r\n".encode() + data + b"\r\n0\r\n\r\n"


async def test_every_content_and_transfer_coding_header_counts(make_stack):
    """`identity` then `gzip` in two Content-Encoding headers, or `Transfer-Encoding: gzip,
    chunked`, reached the JSON parser as gzip bytes (a 400 about JSON); both are refused
    as compressed bodies. Plain chunked uploads are fine."""
    stack = await make_stack()
    gz = gzip.compress(CHAT.encode())
    ct = "Content-Type: application/json"
    cases = [
        ([ct, "Content-Encoding: identity", "Content-Encoding: gzip", f"Content-Length: {len(gz)}"], gz, "unsupported_content_encoding"),
        ([ct, "Content-Encoding: identity, gzip", f"Content-Length: {len(gz)}"], gz, "unsupported_content_encoding"),
        ([ct, "Transfer-Encoding: gzip, chunked"], chunked(gz), "unsupported_transfer_encoding"),
    ]
    for head, body, code in cases:
        status, answer = await raw_exchange(stack.url, head, body)
        assert (status, answer["error"]["code"]) == (415, code), (head, answer)
    # two Transfer-Encoding headers: the HTTP parser refuses the request itself
    status, answer = await raw_exchange(stack.url, [ct, "Transfer-Encoding: gzip", "Transfer-Encoding: chunked"], chunked(gz))
    assert (status, answer["error"]["code"]) == (400, "malformed_request"), answer
    status, answer = await raw_exchange(stack.url, [ct, "Transfer-Encoding: chunked"], chunked(CHAT.encode()))
    assert status == 200 and answer["choices"], answer
    status, answer = await raw_exchange(stack.url, [ct, "Content-Encoding: identity", f"Content-Length: {len(CHAT)}"],
                                        CHAT.encode())
    assert status == 200 and answer["choices"], answer
