"""The corpus: every upstream answer shape the suite sends, and what a client of the
proxy must see for it.

``expect`` is one of:
- "same": what the reference client got, relayed (OpenAI-compatible: the same status
  and body bytes, or the same SSE events) or translated (Ollama: the reference bytes
  translated in one go, id/created aside);
- "502" / "504": an OpenAI error ``upstream_error`` / ``upstream_timeout`` before any
  byte (the reference client fails or times out too, or the answer is not usable);
- "broken": a 200 stream whose events are a prefix of the intended stream's, ending
  with an error event (``code`` when given) — never a silent stop;
- "4xx": the backend's client error passed through with its status.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import orjson
from typing import Callable

from router.h1 import PIECE, READ_HIGH, READ_LOW, READ_SIZE
from router.upstream import ERROR_BODY_LIMIT, LINE_LIMIT
from tests.conformance.kit import (JSON_CT, NDJSON_CT, NDJSON_MIN, SSE_CT, SSE_MIN, Reply, Seen, comparable, error_of,
                                   events, framed, head, ollama_json, ollama_ndjson, ollama_reference, openai_json,
                                   openai_sse, split, _without_ids)

KiB, MiB = 1024, 1024 * 1024


@dataclass(frozen=True)
class Shape:
    id: str
    wire: str  # "openai" (openai/ deployment) or "ollama" (ollama_chat/)
    stream: bool
    build: Callable[[], Reply] = field(repr=False)
    expect: str = "same"
    timeout: float = 2.0  # the deployment's (whole non-streamed answer): loopback answers take milliseconds
    stream_timeout: float = 2.0  # the deployment's (silence in a stream)
    within: float | None = None  # seconds the proxy may take (default: see test_corpus.limit)
    at_least: float = 0.0  # ... and must take at least (a timeout may not fire early)
    code: str | None = None  # the error code expected ("broken": in the error event)
    intended: Callable[[], bytes] | None = field(default=None, repr=False)  # "broken": the whole stream meant
    big: bool = False  # run on one loop only (time)
    repeat: int = 1  # requests made one after another through the proxy (keep-alive shapes)
    request: int = 0  # the size of the request payload the backend must receive (0: a small one)


def body_for(wire: str, stream: bool, n: int) -> tuple[bytes, bytes]:
    """(body of about ``n`` bytes, content type) for the wire and mode: exactly ``n``
    where the minimum allows."""
    if wire == "openai":
        return (openai_sse(max(n, SSE_MIN)), SSE_CT) if stream else (openai_json(n), JSON_CT)
    return (ollama_ndjson(max(n, NDJSON_MIN)), NDJSON_CT) if stream else (ollama_json(n), JSON_CT)


def answer(framing: str, wire: str, stream: bool, n: int, **kw) -> bytes:
    body, ct = body_for(wire, stream, n)
    h, rest = framed(framing, body, ct, **kw)
    return h + rest


MODES = [("openai", False), ("openai", True), ("ollama", False), ("ollama", True)]
FRAMINGS = ["length", "chunked", "close"]


def _mode_id(wire: str, stream: bool) -> str:
    return f"{wire}-{'sse' if stream else 'json'}" if wire == "openai" else f"ollama-{'ndjson' if stream else 'json'}"


# Sizes just under and over every buffer threshold in the code, whatever their values
# today: h1.READ_LOW and h1.PIECE (16 KiB), h1.READ_HIGH, h1.READ_SIZE and
# upstream.LINE_LIMIT (64 KiB: also the request write split, asyncio's stream limit and
# ERROR_BODY_LIMIT), 256000 (uvloop's read size), 256 KiB (asyncio's read size, the old
# READ_HIGH), 512 KiB (where the old stall showed), 1 MiB (the old LINE_LIMIT).
THRESHOLDS = sorted({READ_LOW, PIECE, READ_SIZE, READ_HIGH, 256000, 256 * KiB, 512 * KiB, LINE_LIMIT, MiB})
SIZES = [0, 1] + [s for t in THRESHOLDS for s in (t - 1, t + 1)] + [MiB]
BIG = [16 * MiB, 64 * MiB]


def _sizes() -> list[Shape]:
    out = []
    for wire, stream in MODES:
        for framing in FRAMINGS:
            for n in SIZES + BIG:
                big = n in BIG
                if stream and n < (SSE_MIN if wire == "openai" else NDJSON_MIN) and n > 1:
                    continue
                if stream and n <= 1:  # an empty or one-newline stream: nothing usable, before any byte
                    data = framed(framing, b"\n" * n, SSE_CT if wire == "openai" else NDJSON_CT)
                    build = (lambda d=data: Reply([d[0] + d[1]]))
                    expect = "502"
                else:
                    chunk = MiB if big else 65536
                    build = (lambda f=framing, w=wire, s=stream, n=n, c=chunk: Reply([answer(f, w, s, n, chunk=c)]))
                    expect = "same"
                    if not stream and (n == 0 or (wire == "ollama" and n == 1)):
                        expect = "502"  # empty, or "{": not a JSON object
                out.append(Shape(f"size-{_mode_id(wire, stream)}-{framing}-{n}", wire, stream, build, expect,
                                 timeout=8.0 if big else 2.0, stream_timeout=8.0 if big else 2.0, big=big,
                                 code="upstream_error" if expect == "502" else None))
    return out


def _chunk_sizes() -> list[Shape]:
    out = []
    for wire, stream in MODES:
        for chunk, n in dict.fromkeys([(1, 3000), (2, 5000), (7, 20000), (4096, 300 * KiB), (65535, 600 * KiB), (65537, 600 * KiB),
                                       (READ_HIGH + 1, 600 * KiB), (256 * KiB + 1, 600 * KiB), (MiB, 3 * MiB)]):
            out.append(Shape(f"chunk-{_mode_id(wire, stream)}-{chunk}B-of-{n}", wire, stream,
                             lambda w=wire, s=stream, n=n, c=chunk: Reply([answer("chunked", w, s, n, chunk=c)])))
    return out


def _at(data: bytes, marker: bytes, offset: int, start: int = 0) -> int:
    i = data.index(marker, start)
    return i + offset


def _splits() -> list[Shape]:
    """One answer written in several TCP writes, cut at the awkward places."""
    out = []
    for wire, stream in MODES:
        mid = _mode_id(wire, stream)
        n = 200 * KiB

        def chunked(w=wire, s=stream, n=n) -> bytes:
            return answer("chunked", w, s, n, chunk=65536, trailers=[])

        def length(w=wire, s=stream, n=n) -> bytes:
            return answer("length", w, s, n)

        cases: dict[str, tuple[Callable[[], bytes], Callable[[bytes], list[int]]]] = {
            "in-status-line": (length, lambda d: [5]),
            "status-line-cr-lf": (length, lambda d: [_at(d, b"\r\n", 1)]),
            "in-header-name": (length, lambda d: [_at(d, b"Content-", 4)]),
            "head-end-cr-lf": (length, lambda d: [_at(d, b"\r\n\r\n", 3)]),
            "between-head-and-body": (length, lambda d: [_at(d, b"\r\n\r\n", 4)]),
            "every-header-line": (length, lambda d: [i + 1 for i in range(_at(d, b"\r\n\r\n", 0)) if d[i:i + 1] == b"\n"]),
            "in-chunk-size-line": (chunked, lambda d: [_at(d, b"\r\n\r\n", 4) + 2]),  # "10000" cut after "10"
            "chunk-size-cr-lf": (chunked, lambda d: [_at(d, b"\r\n", 1, _at(d, b"\r\n\r\n", 4))]),
            "chunk-data-end-cr-lf": (chunked, lambda d: [_at(d, b"\r\n\r\n", 4) + 7 + 65536 + 1]),
            "before-chunk-data-end": (chunked, lambda d: [_at(d, b"\r\n\r\n", 4) + 7 + 65536]),
            "in-last-chunk": (chunked, lambda d: [len(d) - 4, len(d) - 2, len(d) - 1]),
            "in-body-many": (chunked, lambda d: list(range(_at(d, b"\r\n\r\n", 4), len(d), 9973))),
        }
        if stream:
            end = b"\n\n" if wire == "openai" else b"}\n"
            cases["event-end"] = (length, lambda d, end=end: [_at(d, end, 1, _at(d, b"\r\n\r\n", 4))])
            cases["in-done-line"] = (length, lambda d: [len(d) - 8] if wire == "openai" else [len(d) - 20])
        for name, (make, cuts) in cases.items():
            out.append(Shape(f"split-{mid}-{name}", wire, stream,
                             lambda make=make, cuts=cuts: (lambda d: split(d, cuts(d)))(make())))
        if wire == "openai" and stream:
            crlf = lambda: (lambda d: split(d, [i + 1 for i in range(len(d)) if d[i:i + 2] == b"\r\n"][8:40]))(
                b"".join(framed("length", openai_sse(20 * KiB, event=300, crlf=True), SSE_CT)))
            out.append(Shape(f"split-{mid}-crlf-events-between-cr-and-lf", wire, stream, crlf))
        # every byte of a small answer in a write of its own
        out.append(Shape(f"split-{mid}-byte-by-byte", wire, stream,
                         lambda w=wire, s=stream: (lambda d: split(d, list(range(1, len(d))), gap=0.0005))(
                             answer("chunked", w, s, 600 if s else 300, chunk=50))))
    return out


def _timings() -> list[Shape]:
    """Drips just inside the idle bound, and silences just past it."""
    out = []
    for wire, stream in MODES:
        mid = _mode_id(wire, stream)
        data = answer("chunked", wire, stream, 40 * KiB, chunk=10 * KiB)
        body_at = data.index(b"\r\n\r\n") + 4
        pieces = [body_at, body_at + 10 * KiB + 8, body_at + 20 * KiB + 16, len(data) - 5]
        if stream:
            # each piece 0.4 s after the last: inside stream_timeout 0.7 (slack for a loaded CI)
            out.append(Shape(f"time-{mid}-drip-inside-stream-timeout", wire, stream,
                             lambda d=data, p=pieces: split(d, p, gap=0.4), stream_timeout=0.7, timeout=0.7, within=4.0))
            # the first events, then silence past stream_timeout: the stream ends with an error event
            out.append(Shape(f"time-{mid}-silence-after-first-event", wire, stream,
                             lambda d=data, p=pieces: Reply([d[:p[1]], d[p[1]:]], [0.0, 2.0]),
                             expect="broken", code="upstream_timeout", stream_timeout=0.5, timeout=0.5,
                             within=0.5 + 1.2, at_least=0.5, intended=lambda w=wire, s=stream: body_for(w, s, 40 * KiB)[0]))
            # the head, then silence before any body byte: nothing was sent, so a 504
            out.append(Shape(f"time-{mid}-silence-before-first-byte", wire, stream,
                             lambda d=data, b=body_at: Reply([d[:b], d[b:]], [0.0, 2.0]),
                             expect="504", code="upstream_timeout", stream_timeout=0.5, timeout=0.5,
                             within=0.5 + 1.2, at_least=0.5))
        else:
            # the whole answer in 4 pieces 0.25 s apart: inside the 1.5 s total
            out.append(Shape(f"time-{mid}-drip-inside-timeout", wire, stream,
                             lambda d=data, p=pieces: split(d, p, gap=0.25), timeout=1.5, stream_timeout=1.5, within=3.0))
            # every gap is short, the total is not: timeout bounds the whole answer
            out.append(Shape(f"time-{mid}-drip-past-timeout", wire, stream,
                             lambda d=data, p=pieces: split(d, p, gap=0.35), expect="504", code="upstream_timeout",
                             timeout=0.8, stream_timeout=0.8, within=0.8 + 1.2, at_least=0.8))
        out.append(Shape(f"time-{mid}-head-late", wire, stream,
                         lambda d=data: Reply([d[:10], d[10:]], [0.0, 2.0]),
                         expect="504", code="upstream_timeout", timeout=0.5, stream_timeout=0.5, within=0.5 + 1.2, at_least=0.5))
        out.append(Shape(f"time-{mid}-no-answer", wire, stream, lambda: Reply([], after="hold"),
                         expect="504", code="upstream_timeout", timeout=0.5, stream_timeout=0.5, within=0.5 + 1.2, at_least=0.5))
    return out


def _protocol() -> list[Shape]:
    """HTTP features and misbehaviour."""
    out = []
    for wire, stream in MODES:
        mid = _mode_id(wire, stream)
        body, ct = body_for(wire, stream, 2000)

        def one(h: bytes, rest: bytes = b"") -> Callable[[], Reply]:
            return lambda: Reply([h + rest])

        h_len, rest = framed("length", body, ct)
        h_chk, rest_chk = framed("chunked", body, ct, chunk=700, trailers=[b"X-Trailer: t", b"X-Checksum: 42"])
        out += [
            Shape(f"proto-{mid}-trailers", wire, stream, one(h_chk, rest_chk)),
            Shape(f"proto-{mid}-100-continue", wire, stream, one(b"HTTP/1.1 100 Continue\r\n\r\n" + h_len, rest)),
            Shape(f"proto-{mid}-103-early-hints", wire, stream,
                  one(b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n\r\n" + h_len, rest)),
            Shape(f"proto-{mid}-100-then-103-split", wire, stream,
                  lambda h=h_len, r=rest: split(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n"
                                                + h + r, [20, 30, 60])),
            Shape(f"proto-{mid}-connection-close", wire, stream,
                  one(*framed("length", body, ct, extra=[b"Connection: close"]))),
            Shape(f"proto-{mid}-http10-length", wire, stream, one(*framed("length", body, ct, version=b"HTTP/1.0"))),
            Shape(f"proto-{mid}-http10-close-delimited", wire, stream, one(*framed("close", body, ct, version=b"HTTP/1.0"))),
            Shape(f"proto-{mid}-204", wire, stream, one(head(b"204 No Content", [b"Content-Type: " + ct])),
                  expect="502", code="upstream_error"),
            Shape(f"proto-{mid}-100KB-header-line", wire, stream,
                  one(*framed("length", body, ct, extra=[b"X-Big: " + b"b" * (100 * KiB)])), expect="502", code="upstream_error"),
            Shape(f"proto-{mid}-10000-headers", wire, stream,
                  one(*framed("length", body, ct, extra=[b"X-H%d: v" % i for i in range(10000)])),
                  expect="502", code="upstream_error"),
            Shape(f"proto-{mid}-not-http", wire, stream, one(b"SSH-2.0-OpenSSH_9.2\r\n\r\n"), expect="502", code="upstream_error"),
            Shape(f"proto-{mid}-closed-before-answer", wire, stream, lambda: Reply([]), expect="502", code="upstream_error"),
            Shape(f"proto-{mid}-keepalive-closed-while-idle", wire, stream, one(h_len, rest), repeat=3),
            Shape(f"proto-{mid}-keepalive-kept", wire, stream, lambda h=h_len, r=rest: Reply([h + r], after="keep"), repeat=3),
            # bytes after the answer (the start of a second one, nobody asked for): never part of this
            # answer nor of the next request's, whose connection must be a fresh one
            Shape(f"proto-{mid}-junk-after-answer", wire, stream, lambda h=h_len, r=rest: Reply(
                [h + r + b"HTTP/1.1 429 Too Many Requests\r\nRetry-After: 3600\r\nX-J: "], after="keep"), repeat=3),
        ]
        # the server closes mid-body
        big_body, _ = body_for(wire, stream, 100 * KiB)
        hl, bl = framed("length", big_body, ct)
        hc, bc = framed("chunked", big_body, ct, chunk=4096)
        mid_expect = "broken" if stream else "502"
        for name, data in [("length", hl + bl[: len(bl) // 2]), ("chunked-in-data", hc + bc[: len(bc) // 2]),
                           ("chunked-in-size-line", hc + bc[: bc.index(b"\r\n", len(bc) // 2) - 1]),
                           ("length-after-head", hl), ("length-all-but-1", hl + bl[:-1]),
                           ("length-first-partial-line", hl + bl[:30]),
                           ("chunked-before-terminator", hc + bc[:-5])]:
            exp = mid_expect
            if name == "length-after-head":
                exp = "502"  # nothing of the body arrived: nothing reached the client either
            if name == "length-first-partial-line":
                exp = "502"  # a first piece with no whole line: nothing the client can use had arrived
            if name == "chunked-before-terminator" and stream:
                exp = "broken-or-complete"  # the whole stream arrived; only the framing's end is missing
            out.append(Shape(f"proto-{mid}-closed-mid-body-{name}", wire, stream, lambda d=data: Reply([d]),
                             expect=exp, code="upstream_error" if exp == "502" else None, intended=lambda b=big_body: b))
        # the server closes mid-body, then also on the next connection: a hold (no close, no end)
        out.append(Shape(f"proto-{mid}-stalls-mid-body", wire, stream, lambda d=hl + bl[:5000]: Reply([d], after="hold"),
                         expect="broken" if stream else "504", code="upstream_timeout", timeout=0.5, stream_timeout=0.5,
                         within=0.5 + 1.2, at_least=0.5, intended=lambda b=big_body: b))
    # error answers around ERROR_BODY_LIMIT, streamed and not
    for wire, stream in MODES:
        mid = _mode_id(wire, stream)
        for n in (ERROR_BODY_LIMIT - 1, ERROR_BODY_LIMIT + 1, 5 * ERROR_BODY_LIMIT):
            msg = b'{"error":{"message":"' + b"e" * (n - 76) + b'","type":"server_error","param":null,"code":null}}'
            for framing in ("length", "chunked"):
                out.append(Shape(f"err-{mid}-500-{framing}-{n}", wire, stream,
                                 lambda m=msg, f=framing: Reply([b"".join(framed(f, m, JSON_CT, status=b"500 Internal Server Error"))]),
                                 expect="502", code="upstream_error"))
                bad = msg.replace(b"server_error", b"invalid_request_error")
                out.append(Shape(f"err-{mid}-400-{framing}-{n}", wire, stream,
                                 lambda m=bad, f=framing: Reply([b"".join(framed(f, m, JSON_CT, status=b"400 Bad Request"))]),
                                 expect="4xx"))
    # OpenAI stream specifics: an event line longer than upstream.LINE_LIMIT; a stream without [DONE]
    out.append(Shape("sse-line-over-LINE_LIMIT", "openai", True,
                     lambda: Reply([b"".join(framed("chunked", openai_sse(LINE_LIMIT + 4 * KiB, event=LINE_LIMIT + KiB), SSE_CT))])))
    out.append(Shape("sse-line-at-LINE_LIMIT-split", "openai", True,
                     lambda: (lambda d: split(d, list(range(300, len(d), 100_000))))(
                         b"".join(framed("length", openai_sse(LINE_LIMIT + 200, event=LINE_LIMIT - 170), SSE_CT)))))
    out.append(Shape("sse-no-done-close-delimited", "openai", True,
                     lambda: Reply([b"".join(framed("close", openai_sse(3000)[:-len(b"data: [DONE]\n\n")], SSE_CT))]),
                     expect="broken", intended=lambda: openai_sse(3000)))
    out.append(Shape("ndjson-line-just-under-MAX_LINE", "ollama", True,
                     lambda: Reply([b"".join(framed("chunked", ollama_ndjson(16 * MiB - 10, line=16 * MiB - 300), NDJSON_CT,
                                                    chunk=MiB))]), big=True, timeout=8, stream_timeout=8))
    return out


def _requests() -> list[Shape]:
    """Request bodies around the 65536-byte point where h1 writes head and body apart."""
    out = []
    for n in (65535, 65536, 65537, 300 * KiB):
        out.append(Shape(f"request-body-{n}", "openai", False, lambda: Reply([answer("length", "openai", False, 500)]),
                         request=n))
    return out


CORPUS: list[Shape] = _sizes() + _chunk_sizes() + _splits() + _timings() + _protocol() + _requests()
import collections as _c; _dups = [k for k, v in _c.Counter(s.id for s in CORPUS).items() if v > 1]
assert not _dups, _dups


# ---------------------------------------------------------------------------
# What a client of the proxy must see
# ---------------------------------------------------------------------------


def limit(shape: Shape) -> float:
    """Seconds the proxy may take: the shape's own bound, else its deployment timeout
    and some slack (an answer that stalls until the deadline fails on its status)."""
    return shape.within if shape.within is not None else max(shape.timeout, shape.stream_timeout) + 1.5


def check(shape: Shape, ref: Seen, got: Seen, why: str) -> None:
    assert got.error is None, "the proxy's client did not get a whole HTTP answer" + why
    assert got.elapsed <= limit(shape), f"took {got.elapsed:.2f} s, more than {limit(shape):.2f} s" + why
    assert got.elapsed >= shape.at_least, f"gave up after {got.elapsed:.2f} s, before {shape.at_least} s" + why
    expect = shape.expect
    if expect == "502-or-error-only":  # nothing usable arrived: a 502, or (tolerated) a 200 with only an error event
        if got.status == 200:
            evs = events(got.body)
            assert len(evs) == 1 and isinstance(orjson.loads(evs[0]).get("error"), dict), why
            return
        expect = "502"
    if expect in ("502", "504"):
        err = error_of(got)
        assert (got.status, err and err.get("code")) == (int(expect), shape.code), \
            f"expected {expect} {shape.code} before any byte" + why
        return
    if expect == "4xx":
        assert got.status == ref.status and error_of(got) is not None, why
        if len(ref.body) <= ERROR_BODY_LIMIT:
            assert got.body == ref.body, "a small OpenAI-shaped 4xx is passed through as is" + why
        return
    if expect == "same":
        assert ref.error is None, "the corpus is wrong: the reference failed" + why
        if not shape.stream:
            assert got.status == ref.status == 200, why
            if shape.wire == "openai":
                assert got.body == ref.body, "the body is not relayed byte for byte" + why
            else:
                assert _without_ids(orjson.loads(got.body)) == ollama_reference(ref.body, False), why
            return
        assert got.status == 200 and got.headers.get("Content-Type", "").startswith("text/event-stream"), why
        if shape.wire == "openai":
            assert events(got.body) == events(ref.body), "the events differ" + why
        else:
            assert [comparable(e) for e in events(got.body)] == ollama_reference(ref.body, True), why
        return
    # a stream that broke after it started: a prefix of the intended events, then an error event
    assert expect in ("broken", "broken-or-complete"), expect
    assert got.status == 200, "expected the stream to have started" + why
    intended = shape.intended()  # type: ignore[misc]
    whole = events(intended) if shape.wire == "openai" else ollama_reference(intended, True)
    evs = events(got.body)
    mine = evs if shape.wire == "openai" else [comparable(e) for e in evs]
    if expect == "broken-or-complete" and mine == whole:
        return
    assert evs, "an empty stream" + why
    last = orjson.loads(evs[-1]) if evs[-1] != b"[DONE]" else None
    assert isinstance(last, dict) and isinstance(last.get("error"), dict), "the stream stopped without an error event" + why
    if shape.code is not None:
        assert last["error"].get("code") == shape.code, why
    assert mine[:-1] == whole[: len(mine) - 1], "what came before the error is not a prefix of the stream" + why
