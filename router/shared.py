"""Shared state between router instances, through Redis.

Without Redis each process keeps its own ``StateTable`` (the in-memory default).
With ``router_settings.redis_host``/``redis_url``, ``RedisShare`` makes several
workers and instances behave as one router — without the request path ever
waiting on Redis:

- the hot path only calls the synchronous ``picked`` / ``finished`` / ``failed``
  / ``cooled`` methods, which add to in-process buffers;
- a background loop, every ``SYNC_INTERVAL`` (0.5 s), writes the buffers in
  one pipeline and reads the shared view back in another, into ``StateTable``;
- cooldowns are also published on a channel, so other instances apply them at
  once (pub/sub), with the polling as the safety net.

Per key (prefix ``llm-router:`` by default, every key has a TTL):

| key | what | consistency |
|---|---|---|
| ``cooldown:{id}`` (TTL = cooldown left) + channel ``events`` | cooldown deadline | pub/sub: immediate; polling: ≤ 0.5 s |
| ``fails:{id}:{minute}`` (120 s) | failures this minute, all instances | eventual, ≤ 0.5 s |
| ``usage:{id}:{minute}`` hash req/tok (120 s) | rpm/tpm usage | eventual, ≤ 0.5 s (limits can overshoot by what arrives in that window) |
| ``rpm:{minute}`` hash key name → requests (120 s) | per-key and global rpm limits | eventual, ≤ 0.5 s (as usage) |
| ``rr:{id}`` (60 s, the seed's periodic reset) | round-robin counter | eventual, ≤ 0.5 s |
| ``inflight:{id}`` hash instance → count (30 s) + ``instance:{iid}`` (5 s) | in-flight per instance | eventual, ≤ 0.5 s; a crashed instance stops counting after 5 s |
| ``ttft:{id}``, ``latency:{id}`` lists, last 100 (600 s) | latency windows | eventual, ≤ 0.5 s |

If Redis is down or restarts, the router serves on its local state, logs the
degradation once, retries with backoff, and resumes sharing when it is back
(in-flight counts are rewritten as absolute values, so nothing drifts).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import Counter, defaultdict, deque
from typing import Any, Iterable

import orjson
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from router import log
from router.domain import Deployment
from router.access import RateLimits
from router.state import WINDOW, StateTable

SYNC_INTERVAL = 0.5
HEARTBEAT_TTL = 5
MAX_BACKOFF = 10.0
STOP_WAIT = 3.0  # seconds stop() waits for the sharing tasks


class RedisShare:
    def __init__(self, url: str, state: StateTable, deployments: Iterable[Deployment], prefix: str = "llm-router:",
                 password: str | None = None, interval: float = SYNC_INTERVAL) -> None:
        self.url, self.password, self.prefix, self.interval = url, password, prefix, interval
        self.state = state
        self.ids = sorted({d.id for d in deployments})
        self.iid = uuid.uuid4().hex[:12]
        self.log = log.get("SHARED")
        self.client: aioredis.Redis | None = None
        self.healthy: bool | None = None
        self.rounds = 0  # completed sync rounds (flush + refresh)
        self._picks: Counter[str] = Counter()
        self._tokens: Counter[str] = Counter()
        self._fails: Counter[str] = Counter()
        self._samples: dict[tuple[str, str], deque[float]] = defaultdict(lambda: deque(maxlen=WINDOW))
        self._cooldowns: dict[str, tuple[float, str]] = {}
        self._wake = asyncio.Event()
        self._own_fails: Counter[tuple[str, int]] = Counter()  # (id, minute) -> failures we saw
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping = False
        self.limits: RateLimits | None = None  # per-key and global requests-per-minute counters

    def key(self, *parts: object) -> str:
        return self.prefix + ":".join(str(p) for p in parts)

    # -- hot path: synchronous, never awaits -------------------------------------------------

    def picked(self, dep_id: str) -> None:
        self._picks[dep_id] += 1

    def finished(self, dep_id: str, tokens: int, ttft: float | None, latency: float | None) -> None:
        if tokens:
            self._tokens[dep_id] += tokens
        if ttft is not None:
            self._samples[(dep_id, "ttft")].append(ttft)
        if latency is not None:
            self._samples[(dep_id, "latency")].append(latency)

    def failed(self, dep_id: str) -> None:
        self._fails[dep_id] += 1
        self._own_fails[(dep_id, int(time.time() // 60))] += 1

    def cooled(self, dep_id: str, until: float, reason: str) -> None:
        self._cooldowns[dep_id] = (until, reason)
        self._wake.set()  # publish now, not at the next tick

    # -- lifecycle ---------------------------------------------------------------------------------

    async def start(self) -> None:
        self.client = aioredis.from_url(self.url, password=self.password, socket_timeout=1.0,
                                        socket_connect_timeout=1.0, health_check_interval=0)
        self._stopping = False
        self._tasks = [asyncio.create_task(self._sync_loop()), asyncio.create_task(self._listen_loop())]

    async def stop(self) -> None:
        # A flag as well as cancel(): redis-py can turn a cancellation that lands inside a
        # command into a connection error, which the loops treat as Redis being down; the
        # flag ends them at their next turn, and the wait for them is bounded.
        self._stopping = True
        self._wake.set()
        for t in self._tasks:
            t.cancel()
        if self._tasks:
            done, pending = await asyncio.wait(self._tasks, timeout=STOP_WAIT)
            for t in done:
                if not t.cancelled():
                    t.exception()  # retrieved: a loop's last error does not matter at shutdown
            if pending:
                self.log.warning("Redis sharing tasks did not stop in time; leaving them to end on their own")
        if self.client is not None:
            try:
                await self._flush()
            except (RedisError, OSError):
                pass
            await self.client.aclose()

    def _down(self, exc: BaseException) -> None:
        if self.healthy is not False:
            self.log.warning("Redis unavailable: sharing paused, serving on local state", error=f"{type(exc).__name__}: {exc}")
        self.healthy = False

    def _up(self) -> None:
        if self.healthy is False:
            self.log.info("Redis is back: sharing resumed")
        self.healthy = True

    async def _sync_loop(self) -> None:
        backoff = self.interval
        while not self._stopping:
            try:
                await self._flush()
                await self._refresh()
                self._up()
                self.rounds += 1
                backoff = self.interval
            except (RedisError, OSError) as exc:
                self._down(exc)
                backoff = min(MAX_BACKOFF, backoff * 2)
            if self._stopping:
                break
            self._wake.clear()
            # asyncio.timeout, not asyncio.wait_for: on 3.11 wait_for swallows a cancellation
            # that arrives as the event is set (a request woke the loop just as stop() cancelled
            # it), and stop() then waited for this loop forever.
            try:
                async with asyncio.timeout(backoff):
                    await self._wake.wait()
            except TimeoutError:
                pass

    async def _listen_loop(self) -> None:
        backoff = self.interval
        while not self._stopping:
            try:
                async with self.client.pubsub() as pubsub:
                    await pubsub.subscribe(self.key("events"))
                    backoff = self.interval
                    async for message in pubsub.listen():
                        if message.get("type") == "message":
                            self._apply_event(message["data"])
            except (RedisError, OSError):
                pass  # the sync loop reports Redis's health; polling covers what pub/sub misses
            await asyncio.sleep(backoff)
            backoff = min(MAX_BACKOFF, backoff * 2)

    # -- writes and reads ---------------------------------------------------------------------

    async def _flush(self) -> None:
        now = time.time()
        minute = int(now // 60)
        picks, tokens, fails = self._picks, self._tokens, self._fails
        samples, cooldowns = self._samples, self._cooldowns
        self._picks, self._tokens, self._fails = Counter(), Counter(), Counter()
        self._samples, self._cooldowns = defaultdict(lambda: deque(maxlen=WINDOW)), {}
        hits = Counter()
        if self.limits is not None:
            hits, self.limits.pending = self.limits.pending, Counter()
        try:
            async with self.client.pipeline(transaction=False) as p:
                p.set(self.key("instance", self.iid), 1, ex=HEARTBEAT_TTL)
                for dep_id in self.ids:
                    in_flight = self.state[dep_id].in_flight
                    p.hset(self.key("inflight", dep_id), self.iid, in_flight)
                    p.expire(self.key("inflight", dep_id), 30)
                for dep_id, n in picks.items():
                    p.incrby(self.key("rr", dep_id), n)
                    p.expire(self.key("rr", dep_id), 60, nx=True)
                    p.hincrby(self.key("usage", dep_id, minute), "req", n)
                    p.expire(self.key("usage", dep_id, minute), 120)
                for dep_id, n in tokens.items():
                    p.hincrby(self.key("usage", dep_id, minute), "tok", n)
                    p.expire(self.key("usage", dep_id, minute), 120)
                for dep_id, n in fails.items():
                    p.incrby(self.key("fails", dep_id, minute), n)
                    p.expire(self.key("fails", dep_id, minute), 120)
                for (dep_id, kind), values in samples.items():
                    p.lpush(self.key(kind, dep_id), *[f"{v:.6f}" for v in values])
                    p.ltrim(self.key(kind, dep_id), 0, WINDOW - 1)
                    p.expire(self.key(kind, dep_id), 600)
                for dep_id, (until, reason) in cooldowns.items():
                    ttl_ms = int((until - now) * 1000)
                    if ttl_ms > 0:
                        p.set(self.key("cooldown", dep_id), orjson.dumps({"until": until, "reason": reason, "by": self.iid}), px=ttl_ms)
                        p.publish(self.key("events"), orjson.dumps({"id": dep_id, "until": until, "reason": reason, "by": self.iid}))
                for (name, m), n in hits.items():
                    p.hincrby(self.key("rpm", m), name, n)
                    p.expire(self.key("rpm", m), 120)
                await p.execute()
            if self.limits is not None:
                self.limits.flushed.update(hits)
        except BaseException:
            # Keep what was not written (bounded: counters per deployment, rings per window).
            self._picks.update(picks)
            self._tokens.update(tokens)
            self._fails.update(fails)
            for k, v in cooldowns.items():
                self._cooldowns.setdefault(k, v)
            if self.limits is not None:
                self.limits.pending.update(hits)
            raise

    async def _refresh(self) -> None:
        now = time.time()
        minute = int(now // 60)
        async with self.client.pipeline(transaction=False) as p:
            for dep_id in self.ids:
                p.get(self.key("rr", dep_id))
                p.hgetall(self.key("usage", dep_id, minute))
                p.get(self.key("fails", dep_id, minute))
                p.hgetall(self.key("inflight", dep_id))
                p.lrange(self.key("ttft", dep_id), 0, WINDOW - 1)
                p.lrange(self.key("latency", dep_id), 0, WINDOW - 1)
                p.get(self.key("cooldown", dep_id))
            p.hgetall(self.key("rpm", minute))
            results = await p.execute()
        if self.limits is not None:
            for name, n in (results[-1] or {}).items():
                self.limits.shared[(name.decode(), minute)] = int(n)
        instances = {f for i in range(len(self.ids)) for f in (results[i * 7 + 3] or {})}
        alive = await self._alive(instances)
        for i, dep_id in enumerate(self.ids):
            rr, usage, fails, inflight, ttft, latency, cooldown = results[i * 7: i * 7 + 7]
            s = self.state[dep_id]
            s.picks = int(rr or 0) + self._picks[dep_id]
            s.minute = minute
            s.minute_requests = int((usage or {}).get(b"req", 0)) + self._picks[dep_id]
            s.minute_tokens = int((usage or {}).get(b"tok", 0)) + self._tokens[dep_id]
            s.remote_fails = max(0, int(fails or 0) - self._own_fails[(dep_id, minute)])
            s.remote_in_flight = sum(int(v) for k, v in (inflight or {}).items() if k != self.iid.encode() and k in alive)
            s.shared_ttft = _floats(ttft)
            s.shared_latency = _floats(latency)
            if cooldown:
                self._apply_cooldown(dep_id, orjson.loads(cooldown))
        for key in [k for k in self._own_fails if k[1] < minute - 1]:
            del self._own_fails[key]

    async def _alive(self, instances: set[bytes]) -> set[bytes]:
        """Which other instances still send heartbeats (a crashed one's counts stop counting)."""
        others = sorted(i for i in instances if i != self.iid.encode())
        if not others:
            return set()
        async with self.client.pipeline(transaction=False) as p:
            for i in others:
                p.exists(self.key("instance", i.decode()))
            found = await p.execute()
        return {i for i, ok in zip(others, found) if ok}

    def _apply_event(self, raw: Any) -> None:
        try:
            event = orjson.loads(raw)
        except orjson.JSONDecodeError:
            return
        if event.get("by") != self.iid and event.get("id") in self.ids:
            self._apply_cooldown(event["id"], event)

    def _apply_cooldown(self, dep_id: str, event: dict[str, Any]) -> None:
        if event.get("by") == self.iid:
            return
        t = self.state[dep_id].health.cooled_elsewhere(time.time(), float(event["until"]), str(event.get("reason", "")))
        if t is not None:
            self.log.warning(f"Deployment {dep_id}: {t.old.value} -> {t.new.value} (shared)", deployment=dep_id,
                             reason=t.reason, for_s=round(float(event["until"]) - time.time(), 1))


def _floats(values: list[bytes] | None) -> deque[float] | None:
    if not values:
        return None
    return deque((float(v) for v in values), maxlen=WINDOW)


def redis_url(router: Any) -> str | None:
    """LiteLLM's settings: ``redis_url``, else ``redis_host`` + ``redis_port``."""
    if router.redis_url:
        return router.redis_url
    if router.redis_host:
        return f"redis://{router.redis_host}:{router.redis_port or 6379}"
    return None
