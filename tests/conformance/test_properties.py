"""Hypothesis draws the answers the corpus did not list: body sizes (around every
buffer threshold and anywhere up to 600 KB), chunk sizes, TCP write splits (at any
offset and between any \\r and \\n of the framing) and small gaps between writes; and
answers cut off at any byte. Each is fetched straight (the reference) and through
the proxy, and judged as the corpus is (tests/conformance/corpus.py: ``check``).

Random exploration locally; the same examples every run under CI (env CI set).
"""

from __future__ import annotations

import asyncio
import os
from dataclasses import dataclass
from typing import AsyncIterator

import aiohttp
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from router import log
from tests.conformance.corpus import FRAMINGS, MODES, THRESHOLDS, Shape, body_for, check
from tests.conformance.kit import (NDJSON_MIN, OLLAMA_JSON_MIN, OLLAMA_MODEL, OPENAI_MODEL, SSE_MIN, RawServer, Reply, fetch, framed,
                                   request_payload, split, start)

TIMEOUT = 1.0  # the deployment's timeout and stream_timeout: loopback answers of < 1 MB take milliseconds
# Shrinking replays failing examples, each up to TIMEOUT (a stall): minutes. Off unless asked for
# (CONFORMANCE_SHRINK=1) — the failing example is printed either way.
PHASES = tuple(Phase) if os.environ.get("CONFORMANCE_SHRINK") else (Phase.explicit, Phase.reuse, Phase.generate)
PROPERTY = settings(max_examples=30, deadline=None, derandomize=bool(os.environ.get("CI")), print_blob=True,
                    phases=PHASES, report_multiple_bugs=False, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture,
                                           HealthCheck.data_too_large])


@dataclass
class Proxied:
    raw: RawServer
    url: str
    ref: aiohttp.ClientSession
    client: aiohttp.ClientSession
    logs: object

    async def both(self, shape: Shape, reply: Reply):
        """Serve ``reply``; fetch it straight and through the proxy."""
        self.raw.reply = reply
        model = OPENAI_MODEL if shape.wire == "openai" else OLLAMA_MODEL
        payload = request_payload(model, shape.stream)
        direct = self.raw.base + ("/v1/chat/completions" if shape.wire == "openai" else "/api/chat")
        start = len(self.logs.getvalue())  # type: ignore[attr-defined]
        ref, got = await asyncio.gather(fetch(self.ref, direct, payload, 5), fetch(self.client, self.url + "/v1/chat/completions", payload, 5))
        why = f"\nreference: {ref!r}\nproxy: {got!r}\nproxy log: {self.logs.getvalue()[start:][-1500:]}"  # type: ignore[attr-defined]
        return ref, got, why


@pytest.fixture
async def proxied(raw: RawServer, tmp_path) -> AsyncIterator[Proxied]:
    """One proxy for all of a property's examples (each example sets the server's reply)."""
    runner, url, logs = await start(tmp_path, raw, TIMEOUT, TIMEOUT)
    async with aiohttp.ClientSession() as ref, aiohttp.ClientSession() as client:
        yield Proxied(raw, url, ref, client, logs)
    await runner.cleanup()
    log.configure()


sizes = st.one_of(st.integers(0, 3000),
                  st.sampled_from(THRESHOLDS).flatmap(lambda t: st.integers(t - 64, t + 64)),
                  st.integers(0, 600_000))
chunks = st.one_of(st.integers(1, 64), st.integers(65, 1 << 20))


def _crlfs(data: bytes, body_at: int, framing: str) -> list[int]:
    """Offsets between a \\r and its \\n in the framing (the head, chunk-size lines)."""
    out, i = [], data.find(b"\r\n")
    while i >= 0 and len(out) < 2000:
        if i < body_at or framing == "chunked":
            out.append(i + 1)
        i = data.find(b"\r\n", i + 1)
    return out


@PROPERTY
@given(mode=st.sampled_from(MODES), framing=st.sampled_from(FRAMINGS), size=sizes, chunk=chunks,
       cuts=st.lists(st.integers(0, 1 << 30), max_size=6), at_crlf=st.lists(st.integers(0, 1 << 30), max_size=4),
       gap=st.sampled_from([0.0, 0.001, 0.01]))
async def test_any_split_of_any_answer_is_relayed_unchanged(proxied: Proxied, mode, framing, size, chunk, cuts, at_crlf,
                                                            gap) -> None:
    wire, stream = mode
    if stream:
        size = max(size, SSE_MIN if wire == "openai" else NDJSON_MIN)
    body, ct = body_for(wire, stream, size)
    chunk = max(chunk, len(body) // 4000)  # at most ~4000 chunks: the time goes to the bytes, not the callbacks
    h, rest = framed(framing, body, ct, chunk=chunk)
    data = h + rest
    crlfs = _crlfs(data, len(h), framing)
    offsets = [c % len(data) for c in cuts] + ([crlfs[c % len(crlfs)] for c in at_crlf] if crlfs else [])
    expect = "same"
    if not stream and (size == 0 or (wire == "ollama" and size < OLLAMA_JSON_MIN)):
        expect = "502"
    shape = Shape("drawn", wire, stream, lambda: Reply([]), expect, TIMEOUT, TIMEOUT, within=TIMEOUT + 1.5,
                  code="upstream_error" if expect == "502" else None)
    ref, got, why = await proxied.both(shape, split(data, offsets, gap=gap))
    check(shape, ref, got, why)


def _delivered(framing: str, body: bytes, chunk: int, head_len: int, cut: int) -> bytes:
    """The body bytes a decoder has whole when the answer stops after ``cut`` bytes."""
    if framing == "length":
        return body[: max(0, cut - head_len)]
    at, got = head_len, 0
    while got < len(body):
        n = min(chunk, len(body) - got)
        data_at = at + len(b"%x\r\n" % n)
        if cut <= data_at:
            break
        take = min(n, cut - data_at)
        got += take
        if take < n:
            break
        at = data_at + n + 2
    return body[:got]


@PROPERTY
@given(mode=st.sampled_from(MODES), framing=st.sampled_from(["length", "chunked"]), size=st.integers(0, 40_000),
       chunk=st.integers(1, 9000), cut=st.integers(0, 1 << 30))
async def test_an_answer_cut_anywhere_is_an_error_never_a_silent_stop(proxied: Proxied, mode, framing, size, chunk,
                                                                      cut) -> None:
    """The server closes the connection after any byte short of the end."""
    wire, stream = mode
    if stream:
        size = max(size, SSE_MIN if wire == "openai" else NDJSON_MIN)
    body, ct = body_for(wire, stream, size)
    chunk = max(chunk, len(body) // 2000)
    h, rest = framed(framing, body, ct, chunk=chunk)
    data = h + rest
    cut = cut % len(data)  # 0 .. len - 1: never the whole answer
    got_body = _delivered(framing, body, chunk, len(h), cut)
    whole_event = (b"}\n\n" if wire == "openai" else b"}\n") in got_body  # blank padding lines make no event
    if not stream:
        expect = "502"
    elif not whole_event:  # nothing the client could use arrived (the corpus holds the strict 502 for this)
        expect = "502-or-error-only"
    else:
        expect = "broken-or-complete"
    shape = Shape("cut", wire, stream, lambda: Reply([]), expect, TIMEOUT, TIMEOUT, within=TIMEOUT + 1.5,
                  code="upstream_error" if expect.startswith("502") else None, intended=lambda: body)
    ref, got, why = await proxied.both(shape, Reply([data[:cut]]))
    check(shape, ref, got, why)
