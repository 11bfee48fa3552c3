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
| ``share:{minute}`` hash caller → work served (180 s) | each key's recent share, for the fair queue (router.admission) | eventual, ≤ 0.5 s |
| ``rr:{id}`` (60 s, the seed's periodic reset) | round-robin counter | eventual, ≤ 0.5 s |
| ``inflight:{id}`` hash instance → count (30 s) + ``instance:{iid}`` (5 s) | in-flight per instance | eventual, ≤ 0.5 s; a crashed instance stops counting after 5 s |
| ``ttft:{id}``, ``latency:{id}`` lists, last 100 (600 s) | latency windows | eventual, ≤ 0.5 s |

If Redis is down or restarts, the router serves on its local state, logs the
degradation once, retries with backoff, and resumes sharing when it is back
(in-flight counts are rewritten as absolute values, so nothing drifts).

A value that does not parse (another version's format, a hand edit, a key of the
wrong type) is skipped and logged once per key; the rest of the round goes on.
Nothing read from Redis can stop the loops: an unexpected error in a round is
logged once and the next round runs as usual.
"""

from __future__ import annotations

import asyncio
import math
import time
import uuid
from collections import Counter, defaultdict, deque
from typing import Any, Callable, Iterable

import orjson
import redis
import redis.asyncio as aioredis
from redis.exceptions import RedisError, ResponseError

from router import log
from router.domain import Deployment
from router.access import RateLimits
from router.admission import Shares
from router.state import WINDOW, StateTable

SYNC_INTERVAL = 0.5
HEARTBEAT_TTL = 5
MAX_BACKOFF = 10.0
MAX_BAD_KEYS = 1000  # keys remembered as logged (bounded; beyond it they are logged again)
MAX_COUNT = 1 << 40  # the largest shared count believed (requests, tokens per minute, picks, in flight)
STOP_WAIT = 3.0  # seconds stop() waits for the sharing tasks

# What a connection tells the server it is (CLIENT SETINFO). Given here, redis-py does not
# look its own version up in the installed packages' metadata (file reads on the event
# loop) for every new connection.
try:
    from redis.driver_info import DriverInfo  # redis-py 7.1 on; lib_name/lib_version are deprecated there
    REDIS_CLIENT_INFO: dict[str, Any] = {"driver_info": DriverInfo(name="redis-py", lib_version=redis.__version__)}
except ImportError:
    REDIS_CLIENT_INFO = {"lib_name": "redis-py", "lib_version": redis.__version__}


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
        self.shares: Shares | None = None  # each key's recent share of the work served (router.admission)
        self.on_health: Callable[[bool], None] | None = None  # after every round: sharing up or not
        self._bad: set[str] = set()  # keys whose unreadable value was logged
        self._errors: set[str] = set()  # unexpected round errors already logged

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
                                        socket_connect_timeout=1.0, health_check_interval=0, **REDIS_CLIENT_INFO)
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
        self._health(False)

    def _up(self) -> None:
        if self.healthy is False:
            self.log.info("Redis is back: sharing resumed")
        self._health(True)

    def _broken(self, exc: Exception) -> None:
        """A round failed on something other than Redis being unreachable (a bug, or data
        no version check foresaw): logged once per kind of error, and the loop goes on."""
        what = f"{type(exc).__name__}: {exc}"[:200]
        if what not in self._errors and len(self._errors) < MAX_BAD_KEYS:
            self._errors.add(what)
            self.log.exception("Redis sharing round failed; retrying (logged once per error)", error=what)
        self._health(False)

    def _health(self, up: bool) -> None:
        self.healthy = up
        if self.on_health is not None:
            self.on_health(up)

    def _bad_value(self, key: str, raw: Any) -> None:
        """Skip a shared value that does not parse; say so once per key."""
        if key in self._bad:
            return
        if len(self._bad) >= MAX_BAD_KEYS:
            self._bad.clear()
        self._bad.add(key)
        shown = str(raw) if isinstance(raw, Exception) else repr(raw)
        self.log.warning("Skipping a shared value that does not parse (written by another version?)", key=key,
                         value=shown[:100])

    def _int(self, key: str, raw: Any) -> int:
        """A shared count: a whole number from 0 to ``MAX_COUNT``; anything else (a
        negative, or a count no router reaches, that would block a deployment for good)
        is skipped and logged."""
        if raw is None:
            return 0
        try:
            if isinstance(raw, Exception):
                raise ValueError(raw)
            n = int(raw)
            if not 0 <= n <= MAX_COUNT:
                raise ValueError(n)
            return n
        except (TypeError, ValueError):
            self._bad_value(key, raw)
            return 0

    def _hash(self, key: str, raw: Any) -> dict[bytes, Any]:
        if raw is None or isinstance(raw, dict):
            return raw or {}
        self._bad_value(key, raw)
        return {}

    def _counts(self, key: str, raw: Any) -> Iterable[tuple[str, int]]:
        """A hash of name -> count (rpm, share): its names decoded, the ones that are not
        UTF-8 skipped and logged."""
        for name, n in self._hash(key, raw).items():
            try:
                text = name.decode()
            except UnicodeDecodeError:
                self._bad_value(key, name)
                continue
            yield text, self._int(f"{key} {text}", n)

    def _floats(self, key: str, raw: Any) -> deque[float] | None:
        if not raw:
            return None
        if not isinstance(raw, list):
            self._bad_value(key, raw)
            return None
        values: deque[float] = deque(maxlen=WINDOW)
        for v in raw:
            try:
                f = float(v)
            except (TypeError, ValueError):
                f = math.nan
            if math.isfinite(f) and f >= 0:
                values.append(f)
            else:
                self._bad_value(key, v)
        return values or None

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
            except Exception as exc:  # never the end of sharing: see _broken
                self._broken(exc)
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
                            self._apply_event(message.get("data"))
            except (RedisError, OSError):
                pass  # the sync loop reports Redis's health; polling covers what pub/sub misses
            except Exception as exc:  # an event no check foresaw: logged once, listening goes on
                self._broken(exc)
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
        served: Counter[tuple[str, int]] = Counter()
        if self.shares is not None:
            served, self.shares.pending = self.shares.pending, Counter()
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
                for (caller, m), n in served.items():
                    p.hincrby(self.key("share", m), caller, n)
                    p.expire(self.key("share", m), 180)
                # A key of the wrong type (another version's layout) fails its own command
                # only: logged once, the other writes (and the heartbeat) still count.
                keys = _keys(p)
                for key, result in zip(keys, await p.execute(raise_on_error=False)):
                    if isinstance(result, ResponseError):
                        self._bad_value(key, result)
            if self.limits is not None:
                self.limits.flushed.update(hits)
            if self.shares is not None:
                self.shares.flushed.update(served)
        except BaseException:
            # Keep what was not written (bounded: counters per deployment, rings per window).
            self._picks.update(picks)
            self._tokens.update(tokens)
            self._fails.update(fails)
            for k, v in cooldowns.items():
                self._cooldowns.setdefault(k, v)
            if self.limits is not None:
                self.limits.pending.update(hits)
            if self.shares is not None:
                self.shares.pending.update(served)
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
            p.hgetall(self.key("share", minute - 1))
            p.hgetall(self.key("share", minute))
            keys = _keys(p)
            results = await p.execute(raise_on_error=False)  # a wrong-typed key: that value only
        if self.shares is not None:
            for m, key, raw in ((minute - 1, keys[-2], results[-2]), (minute, keys[-1], results[-1])):
                for caller, n in self._counts(key, raw):
                    self.shares.shared[(caller, m)] = n
        keys, results = keys[:-2], results[:-2]
        if self.limits is not None:
            for client, n in self._counts(keys[-1], results[-1]):
                self.limits.shared[(client, minute)] = n
        inflights = [self._hash(keys[i * 7 + 3], results[i * 7 + 3]) for i in range(len(self.ids))]
        alive = await self._alive({f for fields in inflights for f in fields})
        for i, dep_id in enumerate(self.ids):
            rr, usage, fails, _, ttft, latency, cooldown = results[i * 7: i * 7 + 7]
            k = keys[i * 7: i * 7 + 7]
            s = self.state[dep_id]
            usage = self._hash(k[1], usage)
            s.picks = self._int(k[0], rr) + self._picks[dep_id]
            s.minute = minute
            s.minute_requests = self._int(k[1] + " req", usage.get(b"req")) + self._picks[dep_id]
            s.minute_tokens = self._int(k[1] + " tok", usage.get(b"tok")) + self._tokens[dep_id]
            s.remote_fails = max(0, self._int(k[2], fails) - self._own_fails[(dep_id, minute)])
            s.remote_in_flight = sum(max(0, self._int(k[3], v)) for f, v in inflights[i].items()
                                     if f != self.iid.encode() and f in alive)
            s.shared_ttft = self._floats(k[4], ttft)
            s.shared_latency = self._floats(k[5], latency)
            if cooldown:
                self._cooldown_value(dep_id, k[6], cooldown)
        for key in [k for k in self._own_fails if k[1] < minute - 1]:
            del self._own_fails[key]

    async def _alive(self, instances: set[bytes]) -> set[bytes]:
        """Which other instances still send heartbeats (a crashed one's counts stop counting)."""
        others = sorted(i for i in instances if i != self.iid.encode())
        if not others:
            return set()
        async with self.client.pipeline(transaction=False) as p:
            for i in others:
                p.exists(self.key("instance", i.decode(errors="replace")))
            found = await p.execute(raise_on_error=False)
        return {i for i, ok in zip(others, found) if ok is True or (type(ok) is int and ok > 0)}

    def _cooldown_value(self, dep_id: str, key: str, raw: Any) -> None:
        event = _event(raw)
        if event is None or not self._apply_cooldown(dep_id, event):
            self._bad_value(key, raw)

    def _apply_event(self, raw: Any) -> None:
        event = _event(raw)
        if event is None or not isinstance(event.get("id"), str):
            self._bad_value(self.key("events"), raw)
            return
        if event.get("by") != self.iid and event["id"] in self.ids:
            if not self._apply_cooldown(event["id"], event):
                self._bad_value(self.key("events"), raw)

    def _apply_cooldown(self, dep_id: str, event: dict[str, Any]) -> bool:
        """Apply another instance's cooldown; False if the event does not parse."""
        if event.get("by") == self.iid:
            return True
        until = event.get("until")
        if isinstance(until, bool) or not isinstance(until, (int, float)) or not math.isfinite(until):
            return False
        t = self.state[dep_id].health.cooled_elsewhere(time.time(), float(until), str(event.get("reason", "")))
        if t is not None:
            self.log.warning(f"Deployment {dep_id}: {t.old.value} -> {t.new.value} (shared)", deployment=dep_id,
                             reason=t.reason, for_s=round(float(until) - time.time(), 1))
        return True


def _event(raw: Any) -> dict[str, Any] | None:
    """A cooldown's JSON object, or None if ``raw`` is not one."""
    if isinstance(raw, Exception):
        return None
    try:
        event = orjson.loads(raw)
    except (orjson.JSONDecodeError, TypeError):
        return None
    return event if isinstance(event, dict) else None


def _keys(pipeline: Any) -> list[str]:
    """The key of each command queued on a pipeline, in order (to say which value was bad)."""
    return [str(args[1] if len(args) > 1 else args[0]) for args, _ in pipeline.command_stack]


def redis_url(router: Any) -> str | None:
    """LiteLLM's settings: ``redis_url``, else ``redis_host`` + ``redis_port``."""
    if router.redis_url:
        return router.redis_url
    if router.redis_host:
        return f"redis://{router.redis_host}:{router.redis_port or 6379}"
    return None
