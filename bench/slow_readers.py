"""Memory per slow reader: N clients read big, fast streams slowly through llm-router.

    .venv/bin/python bench/slow_readers.py                      # 200 readers, 4 KB buffer, 20 KB/s, 5 MB streams
    .venv/bin/python bench/slow_readers.py --streams 50 --event-bytes 65536 --wire ollama --seconds 20

A fast mock upstream (in this process, raw asyncio, flow-controlled: it writes
whenever the proxy reads) answers every streaming chat request with about
``--stream-mb`` MB of SSE (OpenAI-compatible: a role event, content events with
``--event-bytes`` of text each, a finish_reason event, ``data: [DONE]``) or, with
``--wire ollama``, the same as Ollama NDJSON, which the proxy translates.
llm-router runs as deployed (``python -m router serve``, one worker, a config
pointing at the mock). ``--streams`` clients each set SO_RCVBUF to ``--rcvbuf``
before connecting and read at ``--rate`` bytes/s.

Printed (and, with ``--json``, one JSON line): the proxy's VmRSS idle, at its peak
while every stream is open (sampled every 250 ms over ``--seconds``), and
``--after`` seconds after all clients left; the RSS per stream; and the bytes the
mock sent minus the bytes the clients read, per stream: everything in flight,
kernel socket buffers included (those are not RSS).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import sys
import tempfile
import time
from pathlib import Path

import orjson

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from bench.common import free_port  # noqa: E402
from bench.harness import PY, Server, rss_mb  # noqa: E402

MB = 1024 * 1024
_SSE_HEAD = (b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream; charset=utf-8\r\nCache-Control: no-cache\r\n"
             b"Transfer-Encoding: chunked\r\n\r\n")
_NDJSON_HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: application/x-ndjson\r\nTransfer-Encoding: chunked\r\n\r\n"
_OK = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 15\r\n\r\n{\"status\":\"ok\"}"


def tcp_kernel_mb() -> float:
    """Memory in every TCP socket's kernel buffers on this machine (all processes; not RSS), MB."""
    try:
        for line in Path("/proc/net/sockstat").read_text().splitlines():
            if line.startswith("TCP:"):
                f = line.split()
                return int(f[f.index("mem") + 1]) * os.sysconf("SC_PAGE_SIZE") / MB
    except (OSError, ValueError):
        pass
    return float("nan")


class Stream:
    """One answer's bytes, made once: (head, first events, one content event, last events),
    each already chunk-framed, and how many content events make the stream."""

    def __init__(self, wire: str, stream_bytes: int, event_bytes: int) -> None:
        text = "x" * event_bytes
        if wire == "ollama":
            def line(obj: dict) -> bytes:
                return orjson.dumps({"model": "mock", "created_at": "2026-01-01T00:00:00Z", **obj}) + b"\n"
            self.head = _NDJSON_HEAD
            first = b""
            event = line({"message": {"role": "assistant", "content": text}, "done": False})
            last = line({"message": {"role": "assistant", "content": ""}, "done": True, "done_reason": "stop",
                         "prompt_eval_count": 8, "eval_count": 1})
        else:
            base = {"id": "chatcmpl-mock", "object": "chat.completion.chunk", "created": 1, "model": "mock"}

            def line(delta: dict, finish: str | None) -> bytes:  # type: ignore[misc]
                return b"data: " + orjson.dumps({**base, "choices": [{"index": 0, "delta": delta, "logprobs": None,
                                                                        "finish_reason": finish}]}) + b"\n\n"
            self.head = _SSE_HEAD
            first = line({"role": "assistant", "content": ""}, None)
            event = line({"content": text}, None)
            last = line({}, "stop") + b"data: [DONE]\n\n"
        # content events go out in chunk-framed batches of about 64 KiB (what a fast server's writes look like)
        per = max(1, 65536 // len(event))
        self.batch_events = per
        self.batch = b"%x\r\n%s\r\n" % (len(event) * per, event * per)
        self.events = max(1, stream_bytes // len(event))
        self.first = b"%x\r\n%s\r\n" % (len(first), first) if first else b""
        self.last = b"%x\r\n%s\r\n0\r\n\r\n" % (len(last), last)
        self.single = b"%x\r\n%s\r\n" % (len(event), event)


class MockConn(asyncio.Protocol):
    """Answers health checks and streams; writes a stream as fast as the peer reads it."""

    def __init__(self, mock: Mock) -> None:
        self.mock = mock
        self.buf = bytearray()
        self.transport: asyncio.Transport | None = None
        self.left = 0  # content events still to send
        self.paused = False
        self.streaming = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        transport.set_write_buffer_limits(high=256 * 1024)  # type: ignore[attr-defined]

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None

    def data_received(self, data: bytes) -> None:
        self.buf += data
        self.process()

    def process(self) -> None:
        while not self.streaming and self.transport is not None:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(self.buf[:end]).lower()
            i = head.find(b"\r\ncontent-length:")
            length = int(head[i + 17:head.find(b"\r\n", i + 2) if head.find(b"\r\n", i + 2) > 0 else None]) if i >= 0 else 0
            if len(self.buf) < end + 4 + length:
                return
            del self.buf[:end + 4 + length]
            if head.startswith(b"post"):
                s = self.mock.stream
                self.streaming, self.left = True, s.events
                self.send(s.head + s.first)
                self.pump()
            else:
                self.send(_OK)

    def send(self, data: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)
            self.mock.sent += len(data)

    def pause_writing(self) -> None:
        self.paused = True

    def resume_writing(self) -> None:
        self.paused = False
        self.pump()

    def pump(self) -> None:
        s = self.mock.stream
        while self.streaming and not self.paused and self.transport is not None:
            if self.left >= s.batch_events:
                self.left -= s.batch_events
                self.send(s.batch)
            elif self.left > 0:
                self.left -= 1
                self.send(s.single)
            else:
                self.send(s.last)
                self.streaming = False
                self.process()


class Mock:
    def __init__(self, stream: Stream) -> None:
        self.stream = stream
        self.sent = 0  # bytes written to the proxy, all connections

    async def start(self, port: int) -> asyncio.AbstractServer:
        return await asyncio.get_running_loop().create_server(lambda: MockConn(self), "127.0.0.1", port, backlog=4096)


class Reader:
    """A slow client: a small receive buffer, reading at most ``rate`` bytes/s."""

    def __init__(self) -> None:
        self.read = 0
        self.first = asyncio.get_running_loop().create_future()
        self.done = False
        self.error: str | None = None
        self.sock: socket.socket | None = None

    async def run(self, port: int, request: bytes, rcvbuf: int, rate: float, tick: float, until: float) -> None:
        loop = asyncio.get_running_loop()
        sock = self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)  # before connect: the window is set from it
        sock.setblocking(False)
        tail = b""
        try:
            await loop.sock_connect(sock, ("127.0.0.1", port))
            await loop.sock_sendall(sock, request)
            budget = 0.0
            last = time.monotonic()
            while not self.done and time.monotonic() < until:
                now = time.monotonic()
                budget = min(budget + (now - last) * rate, rate * tick * 2)
                last = now
                while budget >= 1:
                    try:
                        data = sock.recv(int(budget))
                    except BlockingIOError:
                        break
                    if not data:
                        self.done = True
                        break
                    if not self.first.done():
                        self.first.set_result(None)
                    self.read += len(data)
                    budget -= len(data)
                    tail = (tail + data)[-64:]
                    if b"data: [DONE]" in tail and tail.endswith(b"0\r\n\r\n"):
                        self.done = True
                        break
                await asyncio.sleep(tick)
        except OSError as exc:
            self.error = type(exc).__name__
        finally:
            if not self.first.done():
                self.first.set_result(None)

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()


async def amain(a: argparse.Namespace) -> dict:
    stream = Stream(a.wire, int(a.stream_mb * MB), a.event_bytes)
    mock = Mock(stream)
    mock_port = free_port()
    mock_server = await mock.start(mock_port)
    tmp = Path(tempfile.mkdtemp(prefix="slow-readers-"))
    cfg = tmp / "router.yaml"
    model = "ollama_chat/mock" if a.wire == "ollama" else "openai/mock"
    base = f"http://127.0.0.1:{mock_port}" + ("" if a.wire == "ollama" else "/v1")
    cfg.write_text("model_list:\n  - model_name: bench\n"
                   f"    litellm_params: {{model: {model}, api_base: '{base}', api_key: sk-bench, stream_timeout: 600}}\n"
                   "router_settings: {max_connections_per_backend: 100000, num_retries: 0}\n")
    port = free_port()
    env = dict(kv.split("=", 1) for kv in a.env)
    if a.loop == "asyncio":
        env["LLM_ROUTER_LOOP"] = "asyncio"
    srv = Server("llm-router", [PY, "-m", "router", "serve", "--config", str(cfg), "--host", "127.0.0.1", "--port", str(port),
                                "--workers", "1", "--log-level", "warning"], port, "/health/readiness", tmp,
                 cwd=a.root, env=env)
    body = orjson.dumps({"model": "bench", "messages": [{"role": "user", "content": "Hi"}], "stream": True})
    request = (f"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n"
               f"Content-Length: {len(body)}\r\n\r\n").encode() + body
    out: dict = {"streams": a.streams, "wire": a.wire, "stream_mb": a.stream_mb, "event_bytes": a.event_bytes,
                 "rcvbuf": a.rcvbuf, "rate": a.rate, "loop": a.loop, "env": a.env}
    srv.start()
    try:
        if not await srv.ready():
            raise SystemExit(f"llm-router did not start: {srv.error}")
        # one stream read at full speed first: imports and first-use allocations are in "idle"
        warm = Reader()
        await warm.run(port, request, 1 << 20, 1e9, 0.001, time.monotonic() + 30)
        warm.close()
        if not warm.done:
            raise SystemExit(f"the warm-up stream did not finish ({warm.error}; read {warm.read} bytes)")
        await asyncio.sleep(1.0)
        out["rss_idle"] = idle = rss_mb(srv.pid)
        kernel0 = tcp_kernel_mb()
        sent0 = mock.sent
        t0 = time.monotonic()
        until = t0 + a.seconds
        readers = [Reader() for _ in range(a.streams)]
        tasks = [asyncio.ensure_future(r.run(port, request, a.rcvbuf, a.rate, a.tick, until)) for r in readers]
        try:
            await asyncio.wait_for(asyncio.gather(*(r.first for r in readers)), a.seconds)
        except asyncio.TimeoutError:
            pass
        out["first_byte_s"] = round(time.monotonic() - t0, 2)
        peak, samples, kernel = 0.0, [], 0.0
        while time.monotonic() < until - 0.5 and not all(r.done for r in readers):
            v = rss_mb(srv.pid)
            samples.append(v)
            peak = max(peak, v)
            kernel = max(kernel, tcp_kernel_mb() - kernel0)
            await asyncio.sleep(0.25)
        read = sum(r.read for r in readers)
        inflight = mock.sent - sent0 - read
        open_ = sum(1 for r in readers if not r.done and r.error is None and r.read)
        errors, finished = sum(1 for r in readers if r.error), sum(1 for r in readers if r.done)
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for r in readers:
            r.close()
        await asyncio.sleep(a.after)
        out.update(rss_peak=peak, rss_last=samples[-1] if samples else float("nan"), rss_after=rss_mb(srv.pid), open_at_end=open_,
                   finished=finished, errors=errors,
                   held_s=round(time.monotonic() - t0 - a.after, 1), mock_sent_mb=(mock.sent - sent0) / MB,
                   client_read_mb=read / MB, inflight_kb_per_stream=inflight / 1024 / a.streams,
                   rss_kb_per_stream=(peak - idle) * 1024 / a.streams, tcp_kernel_kb_per_stream=kernel * 1024 / a.streams)
    finally:
        srv.stop()
        mock_server.close()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--streams", type=int, default=200)
    ap.add_argument("--rate", type=float, default=20_000, help="bytes/s each client reads (default 20000)")
    ap.add_argument("--rcvbuf", type=int, default=4096, help="each client's SO_RCVBUF, set before connect (default 4096)")
    ap.add_argument("--stream-mb", type=float, default=5.0, help="MB per upstream stream (default 5)")
    ap.add_argument("--event-bytes", type=int, default=200, help="text per content event (default 200; try 65536 or 2000000)")
    ap.add_argument("--wire", choices=("openai", "ollama"), default="openai", help="the mock's protocol (ollama: NDJSON)")
    ap.add_argument("--seconds", type=float, default=30.0, help="the readers' whole time (default 30)")
    ap.add_argument("--after", type=float, default=3.0, help="seconds after the readers left before the last RSS sample")
    ap.add_argument("--tick", type=float, default=0.05, help="seconds between a reader's reads")
    ap.add_argument("--loop", choices=("uvloop", "asyncio"), default="uvloop", help="the proxy's event loop")
    ap.add_argument("--env", action="append", default=[], metavar="K=V", help="extra environment for the proxy "
                    "(e.g. MALLOC_ARENA_MAX=2)")
    ap.add_argument("--root", type=lambda p: Path(p).resolve(), default=ROOT, help="the llm-router checkout to run")
    ap.add_argument("--json", action="store_true", help="also print the figures as one JSON line")
    a = ap.parse_args()
    r = asyncio.run(amain(a))
    print(f"{r['streams']} slow readers ({a.wire}, {a.stream_mb:g} MB streams, {a.event_bytes} B events, SO_RCVBUF "
          f"{a.rcvbuf}, {a.rate / 1000:g} KB/s, {a.loop}{', ' + ' '.join(a.env) if a.env else ''}): "
          f"all had a first byte after {r['first_byte_s']} s, held {r['held_s']} s")
    print(f"  RSS MB: idle {r['rss_idle']:.1f}, peak {r['rss_peak']:.1f} (last sample {r['rss_last']:.1f}), "
          f"{a.after:g} s after all left {r['rss_after']:.1f}")
    print(f"  per stream: RSS {r['rss_kb_per_stream']:.0f} KB (peak - idle); in flight {r['inflight_kb_per_stream']:.0f} KB "
          f"(mock sent {r['mock_sent_mb']:.1f} MB, clients read {r['client_read_mb']:.1f} MB; kernel buffers included); "
          f"TCP socket buffers, all processes: {r['tcp_kernel_kb_per_stream']:.0f} KB (kernel memory, not RSS)")
    print(f"  streams still open at the end {r['open_at_end']}, finished {r['finished']}, errors {r['errors']}")
    if a.json:
        print(orjson.dumps(r).decode())


if __name__ == "__main__":
    main()
