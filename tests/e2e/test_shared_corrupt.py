"""Values in Redis that do not parse (another version's layout, a hand edit) never stop sharing."""

from __future__ import annotations

import asyncio
import io
import re
import time

import redis.asyncio as aioredis

from router import log
from tests.e2e.test_shared import Pair, redis_url, wait_for  # noqa: F401  (redis_url: the fixture)


async def test_every_kind_of_unreadable_shared_value_is_skipped_logged_once_and_sharing_goes_on(tmp_path, redis_url):
    while int(time.time()) % 60 > 45:  # per-minute keys: stay inside one minute
        await asyncio.sleep(0.5)
    buf = io.StringIO()
    log.configure("human", "info", stream=buf)
    try:
        async with asyncio.timeout(60), Pair(tmp_path, redis_url) as p:
            await p.chat(0, "pair")
            await wait_for(lambda: p.state(1)["pair-b"].picks + p.state(1)["pair-c"].picks == 1, "first sync")
            minute = int(time.time() // 60)
            k = p.prefix
            client = aioredis.from_url(redis_url)
            bad = {  # key -> how it is corrupted
                f"{k}rr:pair-b": lambda c, key: c.set(key, "not-a-number", ex=60),
                f"{k}rr:solo-1": lambda c, key: c.hset(key, "x", 1),  # wrong type: INCRBY and GET fail
                f"{k}usage:pair-b:{minute}": lambda c, key: c.hset(key, mapping={"req": "many", "tok": "1e3"}),
                f"{k}usage:solo-1:{minute}": lambda c, key: c.set(key, "7"),  # a string, not a hash
                f"{k}fails:pair-c:{minute}": lambda c, key: c.set(key, "1.5"),
                f"{k}rr:pair-c": lambda c, key: c.set(key, str(1 << 62), ex=60),  # no router counts that far
                f"{k}inflight:pair-c": lambda c, key: c.hset(key, "feedfacefeed", "lots"),
                f"{k}ttft:pair-b": lambda c, key: c.rpush(key, "nan", "fast", "-1", "0.5"),
                f"{k}latency:pair-c": lambda c, key: c.set(key, "0.5"),  # a string, not a list
                f"{k}cooldown:pair-b": lambda c, key: c.set(key, "soon", ex=60),  # not JSON
                f"{k}cooldown:pair-c": lambda c, key: c.set(key, '{"until": "later", "by": "v9"}', ex=60),
                f"{k}cooldown:solo-1": lambda c, key: c.set(key, "[1, 2]", ex=60),  # JSON, not an object
                f"{k}rpm:{minute}": lambda c, key: c.hset(key, mapping={"team": "x", b"\xff\xfe": 1}),
            }
            await client.set(f"{k}instance:feedfacefeed", 1, ex=30)  # the foreign in-flight count is "alive"
            for key, corrupt in bad.items():
                await corrupt(client, key)
            await client.hset(f"{k}usage:pair-c:{minute}", mapping={"req": "-5", "tok": "9" * 30})  # out of range
            for message in ("garbage", "1", '{"id": "pair-b"}', '{"id": "pair-b", "until": "x"}', '{"id": 5}'):
                await client.publish(f"{k}events", message)
            shares = [p.state(i).share for i in (0, 1)]
            rounds = [s.rounds for s in shares]
            await wait_for(lambda: all(s.rounds >= r + 4 for s, r in zip(shares, rounds)), "the sync loops to go on")
            for i, s in enumerate(shares):
                assert s.healthy is True
                assert await client.ttl(f"{k}instance:{s.iid}") > 0  # heartbeats keep refreshing
                assert not any(t.done() for t in s._tasks), "a sharing task ended"
            # sharing still works: A's picks reach B, and a later cooldown through A reaches B
            before = p.state(1)["flaky-1"].picks
            p.sims[0].faults.status = 500
            for _ in range(2):
                await p.chat(0, "flaky")
            await wait_for(lambda: p.state(1)["flaky-1"].picks >= before + 1, "B to see A's picks")
            await wait_for(lambda: p.state(1)["flaky-1"].snapshot()["state"] == "cooldown", "B to see A's cooldown")
            assert p.state(1)["pair-c"].remote_in_flight == 0  # "lots" counted as nothing
            assert p.state(1)["pair-c"].minute_tokens < 1000 and p.state(1)["pair-c"].picks < 1000
            assert p.state(1)["pair-b"].shared_ttft is not None and list(p.state(1)["pair-b"].shared_ttft) == [0.5]
            await client.aclose()
        out = buf.getvalue()
        for key in bad:
            n = len(re.findall(r"does not parse.*key=" + re.escape(key) + r"\b", out))
            assert 1 <= n <= 2, (key, n, out[-3000:])  # once per instance that read it, not once per round
        assert 1 <= out.count(f"key={k}events") <= 2 * 5
        for field in ("req", "tok"):
            assert 1 <= out.count(f'key="{k}usage:pair-c:{minute} {field}"') <= 2, field
        assert "Traceback" not in out
    finally:
        log.configure()
