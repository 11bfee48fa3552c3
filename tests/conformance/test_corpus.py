"""Every shape of the corpus (tests/conformance/corpus.py), fetched straight from the
raw server with aiohttp's client (the reference) and through the proxy: a client of
the proxy sees what the reference saw, relayed or translated, or the documented
error, within the documented time. See tests/conformance/README.md."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest

from router import log
from tests.conformance.corpus import CORPUS, Shape, check, limit
from tests.conformance.kit import OLLAMA_MODEL, OPENAI_MODEL, RawServer, fetch, request_payload, start, upstream_payload

CASES = [pytest.param(s, loop, id=f"{s.id}-{loop}") for s in CORPUS for loop in (["uvloop"] if s.big else ["asyncio", "uvloop"])]


@pytest.mark.parametrize(("shape", "event_loop_policy"), CASES, indirect=["event_loop_policy"])
async def test_shape(shape: Shape, raw: RawServer, tmp_path) -> None:
    raw.reply = shape.build()
    runner, url, logs = await start(tmp_path, raw, shape.timeout, shape.stream_timeout)
    try:
        content = "hi"
        if shape.request:
            content = "x" * (shape.request - len(upstream_payload(OPENAI_MODEL, shape.stream, "")))
        model = OPENAI_MODEL if shape.wire == "openai" else OLLAMA_MODEL
        payload = request_payload(model, shape.stream, content)
        direct = raw.base + ("/v1/chat/completions" if shape.wire == "openai" else "/api/chat")
        bound = limit(shape) + 2
        async with aiohttp.ClientSession() as ref_session, aiohttp.ClientSession() as session:
            ref, got = await asyncio.gather(fetch(ref_session, direct, payload, bound),
                                            fetch(session, url + "/v1/chat/completions", payload, bound))
            seen = [got]
            for _ in range(shape.repeat - 1):
                await _all_closed_or_idle(raw)
                seen.append(await fetch(session, url + "/v1/chat/completions", payload, bound))
        for i, g in enumerate(seen):
            why = f"\nreference: {ref!r}\nproxy[{i}]: {g!r}\nproxy log: {logs.getvalue()[-1500:]}"
            check(shape, ref, g, why)
        if shape.request:
            sent = [r.split(b"\r\n\r\n", 1)[1] for r in raw.requests]
            assert upstream_payload(OPENAI_MODEL, shape.stream, content) in sent and len(sent[-1]) == shape.request
    finally:
        await runner.cleanup()
        log.configure()


async def _all_closed_or_idle(raw: RawServer) -> None:
    """Wait (bounded) until the server has ended every connection it meant to close,
    so the next request meets a pooled connection the server already closed."""
    if raw.reply.after != "close":  # type: ignore[union-attr]
        return
    async with asyncio.timeout(5):
        while raw._tasks:
            await asyncio.sleep(0.005)
