"""One attempt at one deployment: open the upstream request, wait for the first
chunk, then relay the bytes to the client.

``call(...)`` returns the client's response, or raises a ``RouterError`` while
nothing has reached the client yet — the point of no return is the first
chunk, so the caller may still fall back. After that, every failure ends the
stream with an OpenAI-style error event. The HTTP client's (``router.h1``) and
asyncio's exceptions are turned into ``RouterError``s here, where they arise.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections import deque
from dataclasses import dataclass
from typing import Any, Callable

from aiohttp import web

from router.checks import shown
from router.domain import Deployment
from router.h1 import ConnectError, ConnectTimeout, Disconnected, HTTPError, NoAnswer, Pool, PoolTimeout, Response
from router.errors import (RouterError, UpstreamError, UpstreamRateLimited, UpstreamTimeout, UpstreamUnavailable,
                           upstream_error)
from router.costs import cost
from router.providers.base import Adapter, Context, StreamTranslator, error_event
from router.usage import Usage, from_body, from_counts, from_sse_tail

CONNECT_TIMEOUT = 10.0  # seconds to open a TCP connection; loopback backends refuse or accept at once
POOL_WAIT = 30.0  # seconds a streaming request may wait for a free pooled connection to its backend
ERROR_BODY_LIMIT = 64 * 1024
SSE_HEADERS = {"Content-Type": "text/event-stream; charset=utf-8", "Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
_FINISHED = re.compile(rb'"finish_reason"\s*:\s*"')  # a string value, not null
# The end of an OpenAI stream: at a line's start, since a model may well write "data: [DONE]"
# in its answer (it arrives inside a JSON string, where a line break is escaped).
_DONE = re.compile(rb"[\r\n]data: ?\[DONE\]")
_EVENT_END = (b"\n\n", b"\r\r", b"\r\n\r\n")
LINE_LIMIT = 64 * 1024  # bytes of an unfinished SSE line held back before it is relayed anyway (bounds a slow stream)


class EventStream(web.StreamResponse):
    """An SSE response whose headers go out with its first bytes, not in a write of
    their own (aiohttp's ``web.Response`` does the same for whole bodies; the class
    attribute is aiohttp's, and without it headers are simply sent at ``prepare``).
    A stream that arrives whole then leaves in one write: headers, events, end."""

    _send_headers_immediately = False


OVERHEAD_HEADER = "x-router-overhead-ms"  # time in the proxy before the response (streams: before the first byte)
COST_HEADER = "x-litellm-response-cost"  # LiteLLM's: USD of a whole answer, where known (router.costs)
USAGE_WINDOW = 8 * 1024  # bytes of a relayed stream's end kept for its final usage event (router.usage)


@dataclass(slots=True)
class Attempt:
    """What one attempt did: for the log line, the state table and the caller."""

    deployment: Deployment
    status: int = 0  # 200 once the client has our response headers
    ttft: float | None = None
    error: RouterError | None = None  # for a stream: what ended it early, after the 200
    client_gone: bool = False
    tokens: int = 0  # total, where known (streams from OpenAI-compatible servers without usage: an estimate of the output)
    prompt_tokens: int = 0
    usage: Usage | None = None  # what the backend reported, never an estimate (None: it reported nothing)
    cost: float | None = None  # USD, once ``priced`` (router.costs; None: unknown)
    priced: bool = False  # ``cost`` is set (a whole answer's, for its header): the log line need not compute it again
    capture: bytearray | None = None  # what the client got, kept for the response cache (bounded)
    capture_limit: int = 0
    upstream: float = 0.0  # seconds spent waiting for the backend (to its whole answer, or a stream's first chunk)
    overhead: float | None = None  # seconds in the proxy before the response went out, waits excluded
    via: str | None = None  # a front door's request: "native" (passed through) or "translated"

    def used(self, usage: Usage | None) -> None:
        """The backend reported ``usage`` (``None``: nothing): the counts replace the estimate."""
        self.usage = usage
        if usage is not None:
            self.prompt_tokens = usage.prompt or 0
            self.tokens = usage.total if usage.total is not None else self.prompt_tokens + (usage.completion or 0)

    def captured(self, data: bytes) -> None:
        if self.capture is not None:
            if len(self.capture) + len(data) > self.capture_limit:
                self.capture = None  # too big to cache: stop keeping it
            else:
                self.capture += data


@dataclass(slots=True)  # not frozen: a frozen dataclass pays a __setattr__ per field, per request
class Call:
    """Everything one attempt needs, built by the proxy."""

    request: web.Request
    endpoint: str
    url: str
    payload: bytes
    headers: dict[str, str]  # upstream request headers
    response_headers: dict[str, str]  # x-request-id and x-router-* for the client
    stream: bool
    ctx: Context
    adapter: Adapter  # the deployment's wire adapter, or a front door's (router.doors.adapter)
    deadline: float  # loop time by which the answer (or, streaming, the first chunk) must be there
    loop: asyncio.AbstractEventLoop
    log_exception: Callable[[str], None]
    started: float = 0.0  # perf_counter() when the request arrived
    waited: float = 0.0  # seconds the request already spent waiting (earlier attempts, backoff, queue)

    def overhead(self, upstream: float) -> float:
        """Seconds spent in the proxy so far, waits excluded."""
        return max(0.0, time.perf_counter() - self.started - self.waited - upstream)


async def call(pool: Pool, c: Call, attempt: Attempt) -> web.StreamResponse:
    dep = attempt.deployment
    loop = c.loop
    remaining = c.deadline - loop.time()
    if remaining <= 0:
        raise UpstreamTimeout("the request's deadline passed before this attempt")
    if c.stream:
        return await _stream(pool, c, attempt, remaining)
    limit = min(dep.timeout or remaining, remaining)
    sent = time.perf_counter()
    resp: Response | None = None
    try:
        async with UpstreamErrors(dep, limit):
            resp = await pool.request("POST", c.url, c.headers.items(), c.payload, connect_timeout=min(CONNECT_TIMEOUT, limit),
                                      deadline=loop.time() + limit)
            if resp.status >= 400:
                raise upstream_error(resp.status, await resp.read_some(ERROR_BODY_LIMIT), dep.provider,
                                     resp.headers.get("retry-after"), dep.secrets)
            raw = await resp.read()
    finally:
        attempt.upstream = time.perf_counter() - sent
        if resp is not None:
            resp.release()  # reused when read to the end, else closed
    body = c.adapter.response_body(c.endpoint, raw, c.ctx, dep.provider)
    attempt.status = 200
    attempt.used(usage := from_body(raw))  # the backend's own counts: what it bills by
    attempt.overhead = c.overhead(attempt.upstream)
    headers = {**c.response_headers, OVERHEAD_HEADER: f"{attempt.overhead * 1000:.2f}"}
    spent = cost(dep, usage.prompt, usage.completion) if usage is not None else cost(dep, None, None)
    attempt.cost, attempt.priced = spent, True
    if spent is not None:
        # as LiteLLM's str(float), less noise: 2.3e-05, not 2.2999999999999997e-05
        headers[COST_HEADER] = "0.0" if spent == 0 else repr(float(f"{spent:.12g}"))
    return web.Response(body=body, status=200, content_type="application/json", headers=headers)


async def _stream(pool: Pool, c: Call, attempt: Attempt, remaining: float) -> web.StreamResponse:
    dep = attempt.deployment
    idle = dep.stream_timeout or dep.timeout
    # No total limit: a stream may run long. ``idle`` bounds the silence between
    # chunks (and before the first), the pool wait and the connect have their own
    # bounds, and the request's deadline bounds the time to the first chunk.
    adapter = c.adapter
    translator = adapter.translator(c.endpoint, c.ctx)
    guard = UpstreamErrors(dep, min(idle or remaining, remaining))
    sent = time.perf_counter()
    resp: Response | None = None
    complete = False
    try:
        async with guard:
            resp = await pool.request("POST", c.url, c.headers.items(), c.payload, pool_timeout=min(POOL_WAIT, idle or POOL_WAIT),
                                      connect_timeout=min(CONNECT_TIMEOUT, idle or CONNECT_TIMEOUT), idle_timeout=idle,
                                      deadline=c.loop.time() + remaining)
            await _check_stream(resp, adapter, dep)
            chunk = await _first(resp, translator, dep)
        resp.deadline = None  # the first output is in: from here on only the idle bound applies
        attempt.ttft = attempt.upstream = time.perf_counter() - sent
        attempt.overhead = c.overhead(attempt.upstream)
        out = EventStream(status=200, headers={**SSE_HEADERS, "Content-Type": adapter.stream_type, **c.response_headers,
                                               OVERHEAD_HEADER: f"{attempt.overhead * 1000:.2f}"})
        await out.prepare(c.request)
        attempt.status = 200
        # From here on the client has our 200: every failure must end the stream
        # with an error event, never a second response or a silent stop.
        guard.limit = idle
        complete = await _deliver(out, resp, chunk, translator, guard, attempt, c)
        return out
    finally:
        if attempt.status != 200:
            attempt.upstream = time.perf_counter() - sent  # a failed attempt: all of it was waiting
        if resp is not None:
            if complete:
                resp.release()
            else:
                resp.close()  # client gone or upstream broken: drop the upstream connection now


async def _check_stream(resp: Response, adapter: Any, dep: Deployment) -> None:
    """Raise (so the caller may fall back) unless ``resp`` is the start of a stream."""
    if resp.status >= 400:
        raise upstream_error(resp.status, await resp.read_some(ERROR_BODY_LIMIT), dep.provider,
                             resp.headers.get("retry-after"), dep.secrets)
    content_type = resp.headers.get("content-type", "")
    if not adapter.is_stream(content_type):
        snippet = (await resp.read_some(200)).decode("utf-8", "replace")
        raise UpstreamError(f"{dep.provider} answered a streaming request with "
                            f"{content_type or 'no content type'}: {snippet!r}")


async def _deliver(out: web.StreamResponse, resp: Response, chunk: bytes, translator: StreamTranslator | None,
                   guard: UpstreamErrors, attempt: Attempt, c: Call) -> bool:
    """Relay the rest of a stream whose 200 the client has, and end it: with the
    upstream's end, or an error event. True when the upstream's answer was complete."""
    complete = False
    try:
        end = await _relay(out, resp, chunk, translator, guard, attempt)
        complete = attempt.error is None
    except RouterError as exc:
        end, attempt.error = c.adapter.stream_error(exc, translator), exc
    except ConnectionResetError:
        attempt.client_gone = True
        return False
    except Exception:
        c.log_exception("Internal error while relaying a stream")
        attempt.error = RouterError("internal error while relaying the stream")
        end = c.adapter.stream_error(attempt.error, translator)
    try:
        attempt.captured(end)
        await out.write_eof(end)  # the last bytes and the chunked terminator in one write
    except ConnectionResetError:
        attempt.client_gone = True
    return complete


_DATA_LINE = re.compile(rb"(?:^|[\r\n])data:([^\r\n]*)[\r\n]")  # a complete data line
_ERROR_DATA = re.compile(rb'\s*\{\s*"error"\s*:|\s*\[DONE\]')  # its value: an error object, or the end already
_EVENT_ERROR = re.compile(rb"(?:^|[\r\n])event: ?error\r?[\r\n]")
_BOM = b"\xef\xbb\xbf"


async def _first(resp: Response, translator: StreamTranslator | None, dep: Deployment) -> bytes:
    """Read until there is something the client can use: for a translated stream its
    first non-empty output; for a relayed one its first complete ``data:`` line (comments,
    ``id:``/``retry:`` fields and blank lines before it carry no output and are held
    with it, a leading BOM is dropped). Nothing has reached the client yet, so an upstream
    that ends first, or whose first data is an error or ``[DONE]``, raises (and the caller
    may fall back): the point of no return is the first translated, non-empty output,
    not the upstream's status line."""
    if translator is not None:
        while True:
            chunk = await resp.readany()
            data = translator.feed(chunk) if chunk else translator.close()
            if translator.failed:  # before any output: the caller may fall back
                if getattr(translator, "rate_limited", False):  # Anthropic's in-stream overloaded_error: as its 529
                    raise UpstreamRateLimited(f"{dep.provider} is overloaded: {translator.error}")
                raise UpstreamError(f"{dep.provider}: {translator.error}")
            if data or not chunk:
                return data
    chunk = await resp.readany()
    if chunk[:5] == b"data:" and b"\n" in chunk and not _ERROR_DATA.match(chunk, 5):
        return chunk  # the usual case: a whole first data line, not an error
    buf = b""
    while True:
        if not chunk:
            raise UpstreamError(f"{dep.provider} ended the stream before sending any data")
        buf += chunk
        if buf[:3] == _BOM:
            buf = buf[3:]
        elif len(buf) < 3 and _BOM.startswith(buf):
            chunk = await resp.readany()
            continue
        m = _DATA_LINE.search(buf)
        if m is None:
            if len(buf) > LINE_LIMIT:  # that much without data: relay it rather than hold more
                return buf
            chunk = await resp.readany()
            continue
        event = max(buf.rfind(sep, 0, m.start() + 1) for sep in (b"\n\n", b"\r\r", b"\r\n\r\n"))
        if _ERROR_DATA.match(m.group(1)) or _EVENT_ERROR.search(buf, max(0, event), m.start() + 1):
            raise UpstreamError(f"{dep.provider} began the stream with an error or its end, before any output: "
                                f"{buf[max(0, event):m.end()].strip()[:300].decode('utf-8', 'replace')}")
        return buf


async def _relay(out: web.StreamResponse, resp: Response, first: bytes, translator: StreamTranslator | None,
                 guard: UpstreamErrors, attempt: Attempt) -> bytes:
    """Copy chunks until the upstream ends; return the bytes that close the stream.
    ``first`` is what ``_first`` read: raw bytes to relay, or output already translated."""
    if translator is None:  # OpenAI-compatible: bytes pass through untouched
        return await _relay_sse(out, resp, first, guard, attempt)
    data = first
    while True:
        if data:
            await out.write(data)
            attempt.captured(data)
        if translator.finished:
            break
        async with guard:
            chunk = await resp.readany()
        if not chunk:
            break
        data = translator.feed(chunk)
    end = translator.close()
    if translator.usage:
        attempt.used(from_counts(translator.usage))
    if translator.failed:
        attempt.error = UpstreamError(translator.error or f"{attempt.deployment.provider}: the stream failed")
    return end


def _whole_lines(held: bytearray, chunk: bytes) -> bytes:
    """Add ``chunk`` to ``held`` and take out what ends in a line ending (or, past
    ``LINE_LIMIT`` without one, all of it): the rest waits for its end."""
    start = len(held)
    held += chunk
    cut = max(held.rfind(b"\n", start), held.rfind(b"\r", start)) + 1
    if not cut and len(held) > LINE_LIMIT:
        cut = len(held)
    data = bytes(held[:cut])
    del held[:cut]
    return data


async def _cut_short(out: web.StreamResponse, data: bytes, edge: bytes, attempt: Attempt) -> bytes:
    """The upstream said [DONE] without a finish_reason: relay ``data`` (what came before
    it) and return the error event that ends the stream."""
    if data:
        await out.write(data)
        edge = data if len(data) >= 4 else (edge + data)[-4:]
    attempt.error = UpstreamError(f"{attempt.deployment.provider} ended the stream without a finish_reason "
                                  "(cut short, e.g. by a concurrent request)")
    return _separator(edge) + error_event(attempt.error.message, attempt.error.type, "stream_truncated")


async def _relay_sse(out: web.StreamResponse, resp: Response, chunk: bytes, guard: UpstreamErrors,
                     attempt: Attempt) -> bytes:
    """The OpenAI-compatible relay: the upstream's bytes, in order and unchanged.

    Only cheap byte scans per chunk: was a finish_reason sent, and is this the end? A
    stream that says [DONE] without ever giving a finish_reason was cut short
    (llama-cpp-python does that when a second request interrupts it): the client gets
    an error event instead of a silently truncated answer. A chunk's unfinished last
    line waits for its line ending (no client can use half a line), so a stream that
    breaks off mid-event still ends with an error event an SSE client can read.
    For the answer's usage (``router.usage.from_sse_tail``, once, at the end), the chunks
    from the one before the first finish_reason on are kept, by reference: the final
    usage event comes after the finish_reason (or rides with it). Of those, the fewest
    that hold ``USAGE_WINDOW`` bytes (less than that plus one piece); before the
    finish_reason, only the last chunk.
    """
    tail = b"\n"  # the last bytes seen, for matches across chunks (the stream starts at a line start)
    edge = b"\n\n"  # the last bytes written (at least 4 of them)
    held = bytearray()  # the start of a line whose end has not arrived
    last = b""  # bytes that arrived with the upstream's end: they leave with our end, in one write
    prev = b""  # the chunk before this one (none yet: b"")
    kept: deque[bytes] | None = None  # from the finish_reason on: the chunks the final usage event is in
    kept_bytes = 0
    from_start = True  # ``kept`` begins with the stream's first chunk
    events = 0
    finished = done = False
    while chunk:
        window = tail + chunk
        if not done:
            finished = finished or _FINISHED.search(window) is not None
            m = _DONE.search(window) if b"[DONE]" in window else None
            if m is not None and not finished:
                data = bytes(held) + chunk
                return await _cut_short(out, data[: max(0, len(data) - (len(window) - m.start() - 1))], edge, attempt)
            done = m is not None
        events += window.count(b"data:", max(0, len(tail) - 4))  # each once, also when split across chunks
        if kept is not None:
            kept.append(chunk)
            kept_bytes += len(chunk)
            while kept_bytes - len(kept[0]) >= USAGE_WINDOW:  # the oldest is not needed to hold the window
                kept_bytes -= len(kept.popleft())
                from_start = False
        elif finished:  # its event may have begun in the chunk before (b"" if none: then kept starts the stream)
            kept, kept_bytes, from_start = deque((prev, chunk)), len(prev) + len(chunk), not prev
        else:
            prev = chunk
        tail = window[-40:]
        # the usual case: whole lines, relayed as they came
        data = chunk if not held and chunk[-1:] == b"\n" else _whole_lines(held, chunk)
        if data:
            if resp.at_eof():  # nothing more will come (no waiting is involved in holding these)
                last = data
            else:
                await out.write(data)
                attempt.captured(data)
            edge = data if len(data) >= 4 else (edge + data)[-4:]
        try:
            async with guard:
                chunk = await resp.readany()
        except RouterError as exc:  # the connection broke: end the stream here
            attempt.error = exc
            return _separator(edge) + error_event(exc.message, exc.type, exc.code)
    attempt.tokens = max(0, events - 3)  # about one token per event, less role, finish and [DONE]
    if done:  # whatever followed [DONE], and a blank line if the upstream left its last event open
        if kept is not None:
            attempt.used(from_sse_tail(b"".join(kept), from_start))
        rest = bytes(held)
        return last + rest + _separator(edge + rest)
    attempt.error = UpstreamError(f"{attempt.deployment.provider} ended the stream before [DONE]")
    return last + _separator(edge) + error_event(attempt.error.message, attempt.error.type, attempt.error.code)


def _separator(written: bytes) -> bytes:
    """What ends the event the client's stream stops inside, if it does."""
    return b"" if written.endswith(_EVENT_END) else b"\n\n"


class UpstreamErrors:
    """Translate the client's and asyncio's failures of one upstream call into RouterErrors."""

    __slots__ = ("dep", "limit")

    def __init__(self, dep: Deployment, limit: float | None) -> None:
        self.dep, self.limit = dep, limit

    async def __aenter__(self) -> None:
        return None

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: Any) -> bool:
        if exc is None or isinstance(exc, (RouterError, asyncio.CancelledError)):
            return False
        where = f"{self.dep.provider} ({shown(self.dep.api_base)})"
        if isinstance(exc, PoolTimeout):
            raise UpstreamTimeout(f"{where}: {exc}") from None
        if isinstance(exc, ConnectTimeout):
            err = UpstreamTimeout(f"cannot connect to {where}: {exc}")
            err.unreachable = True
            raise err from None
        if isinstance(exc, TimeoutError):
            raise UpstreamTimeout(f"{where} did not answer within {self.limit:g} s" if self.limit else f"{where} timed out") from None
        if isinstance(exc, ConnectError):
            raise UpstreamUnavailable(f"cannot connect to {where}: {exc}") from None
        if isinstance(exc, NoAnswer):
            err = UpstreamError(f"{where} closed the connection without answering")
            err.unreachable = True
            raise err from None
        if isinstance(exc, Disconnected):
            raise UpstreamError(f"{where} dropped the connection mid-response") from None
        if isinstance(exc, HTTPError):
            raise UpstreamError(f"{where}: {exc}") from None
        return False
