"""Load generator for the harness: a lean HTTP/1.1 keep-alive client on raw asyncio
Protocols (much cheaper per request than aiohttp's client, so that on a small
machine the load generator is not what limits the proxies).

    # closed loop: C connections, each sends its next request when the last ended
    .venv/bin/python bench/loadgen.py --url http://127.0.0.1:4000/v1/chat/completions -c 16 --duration 10 [--stream]
    .venv/bin/python bench/loadgen.py --url ... -c 16 --requests 200000 --progress      # a fixed count (soak)
    # open loop at a fixed rate (latency counted from the scheduled send time)
    .venv/bin/python bench/loadgen.py --url ... --rate 200 --duration 10 [--stream]

Prints one JSON line: rps, requests, errors (by kind), latency p50/p90/p99/p99.9/max
in ms and, per request, the time to the first body byte (TTFB: for a stream, its
first SSE chunk). A stream counts as an error unless it ends with ``data: [DONE]``.
With --progress it also prints ``{"progress": n, "t": seconds}`` lines every second.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections import Counter
from pathlib import Path
from urllib.parse import urlsplit

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.common import pct  # noqa: E402

now = time.perf_counter
HEAD, BODY_LEN, CHUNK_SIZE, CHUNK_DATA, CHUNK_CRLF, TRAILER, BODY_EOF, IDLE = range(8)


class HttpConn(asyncio.Protocol):
    """One keep-alive connection; ``request(raw)`` returns a future of
    (status, first body byte time, end time, body tail)."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.state = IDLE
        self.fut: asyncio.Future | None = None
        self.first_fut: asyncio.Future | None = None
        self.closed = False
        self.must_close = False

    @classmethod
    async def open(cls, host: str, port: int) -> HttpConn:
        _, conn = await asyncio.get_running_loop().create_connection(cls, host, port)
        return conn

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()

    def request(self, raw: bytes) -> asyncio.Future:
        loop = asyncio.get_running_loop()
        self.fut, self.first_fut = loop.create_future(), loop.create_future()
        self.state, self.first, self.tail, self.status, self.remaining = HEAD, 0.0, b"", 0, 0
        self.must_close = False
        assert self.transport is not None
        self.transport.write(raw)
        return self.fut

    def _body(self, data: bytes | bytearray) -> None:
        if not self.first and data:
            self.first = now()
            if self.first_fut is not None and not self.first_fut.done():
                self.first_fut.set_result(self.first)
        self.tail = (self.tail + bytes(data[-32:]))[-32:]

    def _finish(self) -> None:
        self.state = IDLE
        if self.fut is not None and not self.fut.done():
            t = now()
            self.fut.set_result((self.status, self.first or t, t, self.tail))

    def data_received(self, data: bytes) -> None:
        buf = self.buf
        buf += data
        while buf:
            st = self.state
            if st == HEAD:
                end = buf.find(b"\r\n\r\n")
                if end < 0:
                    return
                head = bytes(buf[:end]).lower()
                del buf[:end + 4]
                self.status = int(head[9:12])
                if b"\r\nconnection: close" in head:
                    self.must_close = True
                i = head.find(b"\r\ncontent-length:")
                if i >= 0:
                    j = head.find(b"\r\n", i + 2)
                    self.remaining = int(head[i + 17:j if j > 0 else None])
                    self.state = BODY_LEN
                    if self.remaining == 0:
                        self._finish()
                elif b"\r\ntransfer-encoding: chunked" in head:
                    self.state = CHUNK_SIZE
                else:
                    self.state = BODY_EOF
                    self.must_close = True
            elif st == BODY_LEN or st == CHUNK_DATA:
                n = min(len(buf), self.remaining)
                self._body(buf[:n])
                del buf[:n]
                self.remaining -= n
                if self.remaining == 0:
                    if st == BODY_LEN:
                        self._finish()
                    else:
                        self.state = CHUNK_CRLF
            elif st == CHUNK_SIZE:
                end = buf.find(b"\r\n")
                if end < 0:
                    return
                size = int(bytes(buf[:end]).split(b";")[0], 16)
                del buf[:end + 2]
                if size == 0:
                    self.state = TRAILER
                else:
                    self.state, self.remaining = CHUNK_DATA, size
            elif st == CHUNK_CRLF:
                if len(buf) < 2:
                    return
                del buf[:2]
                self.state = CHUNK_SIZE
            elif st == TRAILER:
                end = buf.find(b"\r\n")
                if end < 0:
                    return
                del buf[:end + 2]
                if end == 0:
                    self._finish()
            elif st == BODY_EOF:
                self._body(buf)
                buf.clear()
            else:  # bytes nobody asked for
                buf.clear()

    def eof_received(self) -> bool:
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.transport = None
        if self.state == BODY_EOF:
            self._finish()
        elif self.fut is not None and not self.fut.done():
            self.fut.set_exception(ConnectionError(f"connection lost ({exc or 'closed by peer'})"))
        if self.first_fut is not None and not self.first_fut.done():
            self.first_fut.set_exception(ConnectionError("connection lost before the first byte"))
            self.first_fut.exception()  # mark retrieved


def build_request(url: str, body: bytes) -> tuple[str, int, bytes]:
    u = urlsplit(url)
    host, port = u.hostname or "127.0.0.1", u.port or 80
    path = (u.path or "/") + (f"?{u.query}" if u.query else "")
    head = (f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUser-Agent: llm-router-bench\r\nAccept: */*\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n")
    return host, port, head.encode() + body


def chat_body(model: str, stream: bool, max_tokens: int = 16) -> bytes:
    return orjson.dumps({"model": model, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": max_tokens,
                         "stream": stream})


class Recorder:
    def __init__(self, stream: bool) -> None:
        self.stream = stream
        self.lat: list[float] = []
        self.ttfb: list[float] = []
        self.errors: Counter[str] = Counter()
        self.done = 0

    def result(self, t0: float, res: tuple, record: bool, stream: bool | None = None) -> bool:
        status, first, end, tail = res
        self.done += 1
        if not record:
            return True
        if status != 200:
            self.errors[f"HTTP {status}"] += 1
        elif (self.stream if stream is None else stream) and b"[DONE]" not in tail:
            self.errors["stream without [DONE]"] += 1
        else:
            self.lat.append(end - t0)
            self.ttfb.append(first - t0)
            return True
        return False

    def summary(self, seconds: float) -> dict:
        lat, ttfb = self.lat, self.ttfb
        lat.sort()
        ttfb.sort()
        n_err = sum(self.errors.values())
        return {"requests": len(lat) + n_err, "ok": len(lat), "seconds": round(seconds, 3),
                "rps": (len(lat) + n_err) / seconds if seconds > 0 else 0.0, "errors": n_err, "error_kinds": dict(self.errors),
                "p50": pct(lat, 50), "p90": pct(lat, 90), "p99": pct(lat, 99), "p999": pct(lat, 99.9),
                "max": lat[-1] * 1000 if lat else float("nan"), "mean": sum(lat) / len(lat) * 1000 if lat else float("nan"),
                "ttfb_p50": pct(ttfb, 50), "ttfb_p90": pct(ttfb, 90), "ttfb_p99": pct(ttfb, 99)}


async def closed_loop(url: str, body: bytes, stream: bool, concurrency: int, duration: float | None = None,
                      warmup: float = 0.0, requests: int | None = None, timeout: float = 60.0,
                      progress: bool = False, mixed_body: bytes | None = None) -> dict:
    """C connections, each sending back to back: a fixed number of requests, or
    time-boxed: the requests that end inside a window of `duration` seconds count,
    the window opening once `warmup` seconds have passed *and* every connection has
    finished a request (so a slow target's first round, all C requests in flight at
    once, is not what gets measured). With mixed_body (a streaming request), each
    connection alternates body and it."""
    host, port, raw = build_request(url, body)
    raws = [(raw, stream)] + ([(build_request(url, mixed_body)[2], True)] if mixed_body is not None else [])
    rec = Recorder(stream)
    began = now()
    left = requests if requests is not None else -1
    inf = float("inf")
    win = [inf, inf] if requests is None else [-inf, inf]  # [start, end], set once all connections are warm
    cold = concurrency

    def warm_one() -> None:
        nonlocal cold
        cold -= 1
        if cold == 0 and requests is None:
            win[0] = max(now(), began + warmup)
            win[1] = win[0] + (duration or 0.0)

    async def worker(k: int) -> None:
        nonlocal left
        conn: HttpConn | None = None
        first = True
        while True:
            k += 1
            raw, is_stream = raws[k % len(raws)]
            if requests is not None:
                if left <= 0:
                    break
                left -= 1
            elif now() >= win[1]:
                break
            if conn is None or conn.closed:
                try:
                    conn = await asyncio.wait_for(HttpConn.open(host, port), timeout)
                except (OSError, asyncio.TimeoutError) as exc:
                    if win[0] <= now() <= win[1]:
                        rec.errors[f"connect: {type(exc).__name__}"] += 1
                    if first:
                        first = False
                        warm_one()
                    await asyncio.sleep(0.05)
                    continue
            t0 = now()
            try:
                res = await asyncio.wait_for(conn.request(raw), timeout)
            except (ConnectionError, OSError, asyncio.TimeoutError) as exc:
                if win[0] <= now() <= win[1]:
                    rec.errors[type(exc).__name__] += 1
                conn.close()
                conn = None
                res = None
            if res is not None:
                rec.result(t0, res, win[0] <= res[2] <= win[1], is_stream)
                if conn is not None and conn.must_close:
                    conn.close()
                    conn = None
            if first:
                first = False
                warm_one()
        if conn is not None:
            conn.close()

    async def report() -> None:
        while True:
            await asyncio.sleep(1.0)
            print(orjson.dumps({"progress": rec.done, "t": round(now() - began, 3)}).decode(), flush=True)

    reporter = asyncio.ensure_future(report()) if progress else None
    await asyncio.gather(*(worker(k) for k in range(concurrency)))
    if reporter is not None:
        reporter.cancel()
    seconds = (now() - began) if requests is not None else (duration or 0.0)
    out = rec.summary(seconds)
    out.update(mode="closed", concurrency=concurrency, stream="mixed" if mixed_body is not None else stream)
    return out


async def fixed_rate(url: str, body: bytes, stream: bool, rate: float, duration: float, warmup: float = 0.0,
                     max_conns: int = 512, timeout: float = 60.0) -> dict:
    """Open loop: request i is due at start + i / rate whatever happened before;
    latency runs from that due time (no coordinated omission). Connections are
    reused when idle, opened when not, up to max_conns (then requests queue)."""
    host, port, raw = build_request(url, body)
    rec = Recorder(stream)
    idle: asyncio.Queue[HttpConn] = asyncio.Queue()
    opened = 0
    start = now() + 0.01
    win_start, win_end = start + warmup, start + warmup + duration

    async def one(due: float) -> None:
        nonlocal opened
        record = due >= win_start
        conn = None
        while conn is None or conn.closed:
            if not idle.empty() or opened >= max_conns:
                conn = await idle.get()
                if conn.closed:
                    opened -= 1
                    conn = None
                continue
            opened += 1
            try:
                conn = await asyncio.wait_for(HttpConn.open(host, port), timeout)
            except (OSError, asyncio.TimeoutError) as exc:
                opened -= 1
                if record:
                    rec.errors[f"connect: {type(exc).__name__}"] += 1
                return
        try:
            res = await asyncio.wait_for(conn.request(raw), timeout)
        except (ConnectionError, OSError, asyncio.TimeoutError) as exc:
            if record:
                rec.errors[type(exc).__name__] += 1
            conn.close()
            opened -= 1
            return
        rec.result(due, res, record)
        if conn.must_close:
            conn.close()
            opened -= 1
        else:
            idle.put_nowait(conn)

    tasks = []
    i = 0
    while (due := start + i / rate) < win_end:
        delay = due - now()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.ensure_future(one(due)))
        i += 1
    await asyncio.gather(*tasks)
    while not idle.empty():
        idle.get_nowait().close()
    out = rec.summary(duration)
    out.update(mode="rate", rate=rate, stream=stream, connections=opened)
    return out


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], exit_on_error=False)
    ap.add_argument("--url")
    ap.add_argument("--model", default="bench")
    ap.add_argument("--max-tokens", type=int, default=16)
    ap.add_argument("--stream", action="store_true")
    ap.add_argument("--mixed", action="store_true", help="closed loop: alternate JSON and streaming requests")
    ap.add_argument("-c", "--concurrency", type=int, default=16)
    ap.add_argument("--duration", type=float, help="seconds measured (closed loop or fixed rate)")
    ap.add_argument("--warmup", type=float, default=0.0, help="seconds of load before the measured window")
    ap.add_argument("--requests", type=int, help="closed loop: this many requests instead of --duration")
    ap.add_argument("--rate", type=float, help="open loop: requests per second")
    ap.add_argument("--max-conns", type=int, default=512)
    ap.add_argument("--timeout", type=float, default=60.0)
    ap.add_argument("--progress", action="store_true")
    ap.add_argument("--serve", action="store_true",
                    help="stay up: read one run's arguments per line of stdin (JSON list of these options), "
                         "answer each with its result line (the harness uses this: one pinned process, no start-up per run)")
    return ap


async def run(args: argparse.Namespace) -> dict:
    if not args.url:
        raise ValueError("--url is required")
    body = chat_body(args.model, args.stream, args.max_tokens)
    if args.rate:
        return await fixed_rate(args.url, body, args.stream, args.rate, args.duration or 10.0, args.warmup, args.max_conns,
                                args.timeout)
    if args.requests is None and args.duration is None:
        raise ValueError("give --duration or --requests")
    return await closed_loop(args.url, body, args.stream, args.concurrency, args.duration, args.warmup, args.requests,
                             args.timeout, args.progress, chat_body(args.model, True, args.max_tokens) if args.mixed else None)


async def serve(ap: argparse.ArgumentParser) -> None:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while line := await reader.readline():
        try:
            out = await run(ap.parse_args(orjson.loads(line)))
        except SystemExit:  # argparse has printed why on stderr
            out = {"failed": "bad run arguments (see the load generator's stderr)"}
        except (ValueError, argparse.ArgumentError, orjson.JSONDecodeError) as exc:
            out = {"failed": f"bad run arguments: {exc}"}
        print(orjson.dumps(out).decode(), flush=True)


def main() -> None:
    ap = parser()
    args = ap.parse_args()
    if args.serve:
        asyncio.run(serve(ap))
        return
    try:
        print(orjson.dumps(asyncio.run(run(args))).decode(), flush=True)
    except ValueError as exc:
        ap.error(str(exc))


if __name__ == "__main__":
    main()
