"""Metrics noted on the request path reach prometheus_client at the end of the loop
turn, or before a scrape, with the same result as direct calls."""

from __future__ import annotations

import asyncio

from prometheus_client import CollectorRegistry, Histogram, generate_latest

from router.metrics import OVERHEAD_BUCKETS, Metrics

VALUES = [0.0, 4e-5, 5e-5, 5.00001e-5, 1e-4, 3e-4, 0.0009, 0.002, 0.5, 7.0]  # on, under and over bucket bounds


async def scrape(m: Metrics) -> bytes:
    """As ``router.app.metrics`` does: apply what is noted on the loop, the text off it."""
    m.flush()
    return await asyncio.to_thread(m.sample_and_generate)


def _lines(text: bytes, prefix: str) -> list[str]:
    return [line for line in text.decode().splitlines() if line.startswith(prefix) and "_created" not in line]


async def test_batched_histogram_equals_direct_observes() -> None:
    m = Metrics()
    for v in VALUES:
        m.observe(m.overhead, v)  # all noted, applied together by render()
    reference = CollectorRegistry()
    h = Histogram("llm_router_overhead_seconds", "x", buckets=OVERHEAD_BUCKETS, registry=reference)
    for v in VALUES:
        h.observe(v)
    ours = _lines(await scrape(m), "llm_router_overhead_seconds")
    assert ours == _lines(generate_latest(reference), "llm_router_overhead_seconds")
    assert 'llm_router_overhead_seconds_count 10.0' in ours


async def test_noted_changes_apply_at_the_end_of_the_loop_turn_and_before_a_scrape() -> None:
    m = Metrics()
    requests = m.child(m.requests, "g", "d", "p", "exact", "200")
    in_flight = m.child(m.in_flight, "d")
    m.add(requests)
    m.add(in_flight)
    m.add(in_flight)
    m.add(in_flight, -1)
    m.set(m.child(m.effectiveness, "g"), 0.5)
    assert requests._value.get() == 0  # noted, not yet applied
    assert b'llm_router_requests_total{deployment="d",model_group="g",provider="p",route="exact",status="200"} 1.0' in await scrape(m)
    m.add(requests)
    await asyncio.sleep(0)  # the loop turn ends
    assert requests._value.get() == 2
    assert in_flight._value.get() == 1
    assert m.child(m.effectiveness, "g")._value.get() == 0.5


async def test_the_process_sampler_outlives_a_failing_sample(monkeypatch):
    """A worker's /proc sampler ended at its first exception, and its process metrics
    froze for the rest of its life; now a failed sample is logged once and the next comes."""
    import asyncio

    from router import metrics as metrics_module

    monkeypatch.setattr(metrics_module, "PROCESS_SAMPLE_INTERVAL", 0.001)
    m = Metrics()
    samples = 0

    def flaky() -> None:
        nonlocal samples
        samples += 1
        if samples <= 2:
            raise OSError("/proc/self/stat: unreadable for a moment")

    m._process = {"x": None}  # as in a worker (multiprocess mode): the sampler runs
    monkeypatch.setattr(m, "sample_process", flaky)
    m.start()
    try:
        while samples < 5:
            await asyncio.sleep(0.005)
            assert not m._sampler.done(), m._sampler.exception()
    finally:
        await m.stop()
