"""Half-open trials are always released, and a probe ends only the cooldowns that
unreachability caused (issue 14). Faults as in test_faults.py: a vLLM primary with a
LiteLLM fallback to a llama-cpp-python backup."""

from __future__ import annotations

import asyncio

import openai
import pytest

from router.app import PROXY
from tests.e2e.test_faults import CHAT_PATHS, Faulty, chats


async def _cool_down(f: Faulty) -> None:
    f.primary.faults.status = 500
    for _ in range(2):  # allowed_fails 1: the second failure within a minute cools it down
        assert (await f.chat())["x-router-deployment"] == "backup-1"
    assert f.health("primary-1")["state"] == "cooldown"
    f.primary.faults.clear()
    f.primary.faults.paths = CHAT_PATHS


async def _until_half_open(f: Faulty) -> None:
    while f.health("primary-1")["state"] != "half_open":  # cooldown_time 0.5 s
        await asyncio.sleep(0.02)


async def test_a_trial_answered_with_a_passed_through_4xx_leaves_the_next_request_a_trial(tmp_path):
    async with Faulty(tmp_path) as f:
        await _cool_down(f)
        await _until_half_open(f)
        f.primary.faults.status, f.primary.faults.status_count = 400, 1
        with pytest.raises(openai.BadRequestError):  # the client's fault: passed through, no verdict on the backend
            await f.chat()
        assert f.health("primary-1")["state"] == "half_open"
        for _ in range(3):  # the primary answers again: the next request is the trial, and it recovers
            assert (await f.chat())["x-router-deployment"] == "primary-1"
        assert f.health("primary-1")["state"] == "healthy"


async def test_a_trial_whose_client_leaves_leaves_the_next_request_a_trial(tmp_path):
    async with Faulty(tmp_path) as f:
        await _cool_down(f)
        await _until_half_open(f)
        f.primary.faults.first_byte_delay = 5.0
        trial = asyncio.ensure_future(f.chat())
        while chats(f.primary) < 3:  # two failures, then the trial arrived
            await asyncio.sleep(0.01)
        trial.cancel()  # the client hangs up during the trial
        with pytest.raises(asyncio.CancelledError):
            await trial
        proxy = f.runner.app[PROXY]
        while proxy.state["primary-1"].in_flight:  # the proxy saw the client go
            await asyncio.sleep(0.01)
        f.primary.faults.first_byte_delay = 0.0
        assert (await f.chat())["x-router-deployment"] == "primary-1"
        assert f.health("primary-1")["state"] == "healthy"


async def test_a_probe_does_not_cut_short_a_cooldown_for_server_errors(tmp_path):
    """The server answers its listing but every completion fails: a listing proves only
    that it is reachable, so the configured 30 s rest holds."""
    async with Faulty(tmp_path, cooldown_time=30, monitor_interval=0.05) as f:
        f.primary.faults.status = 500
        for _ in range(2):
            assert (await f.chat())["x-router-deployment"] == "backup-1"
        state = f.runner.app[PROXY].state
        base = f.primary.base_url + "/v1"
        seen = set()
        while len(seen) < 4:  # several probe rounds reached the server
            server = state.servers.get(base)
            if server is not None and server.reachable:
                seen.add(server.updated_at)
            await asyncio.sleep(0.01)
        health = f.health("primary-1")
        assert health["state"] == "cooldown" and health["cooldown_left_s"] > 25
        assert (await f.chat())["x-router-deployment"] == "backup-1"
        assert chats(f.primary) == 2  # it rests: no trial every probe interval


async def test_a_probe_ends_a_cooldown_caused_by_refused_connections(tmp_path):
    async with Faulty(tmp_path, cooldown_time=60, monitor_interval=0.05) as f:
        await f.primary.pause_listening()
        for _ in range(2):
            assert (await f.chat())["x-router-deployment"] == "backup-1"
        assert f.health("primary-1")["state"] == "cooldown"
        await f.primary.resume_listening()
        while f.health("primary-1")["state"] != "half_open":  # well before 60 s
            await asyncio.sleep(0.02)
        assert (await f.chat())["x-router-deployment"] == "primary-1"


async def test_when_every_candidate_is_rate_limited_the_429_carries_the_smallest_retry_after(tmp_path):
    async with Faulty(tmp_path, cooldown_time=60) as f:
        (a, b), waits = f.pair, {}
        a.faults.status, a.faults.retry_after = 429, 30
        b.faults.status, b.faults.retry_after = 429, 20
        with pytest.raises(openai.RateLimitError) as info:
            await f.chat("pair")
        headers = info.value.response.headers
        assert headers["x-router-attempts"] == "2" and headers["retry-after"] == "20"
        assert info.value.code == "rate_limited" and "All 2 attempts failed" in info.value.message
        # both rest now: a request meanwhile is told when the first one is back, not "1"
        for dep in ("pair-a", "pair-b"):
            waits[dep] = f.health(dep)["cooldown_left_s"]
        assert 15 < min(waits.values()) <= 20 and max(waits.values()) > 25
