"""The response cache (``litellm_settings.cache: true``), local or in Redis.

The key is a SHA-256 of the model name, the endpoint, whether it streams, and
every request field except the few known not to change the answer (``IGNORED``:
``user``, ``metadata``, ...) serialised with sorted keys — so two bodies that
differ only in key order or in those fields share an entry, and any other
difference (``guided_choice``, ``grammar``, ``think``, ...) is another entry. Entries are
scoped per client key by default (its name, or its ``tenant``), so one tenant never
gets another's answer; ``cache_params.scope: shared`` shares them on purpose. Only complete, successful answers are stored: a streamed answer once
it ended properly, never a partial one, and never one over ``max_entry_bytes``.

Per request: ``Cache-Control: no-cache`` (or LiteLLM's body field
``cache: {"no-cache": true}``) skips the lookup; ``no-store`` skips storing.
The response says ``x-router-cache: hit | miss | skip``.
"""

from __future__ import annotations

import hashlib
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Protocol

import orjson
import redis.asyncio as aioredis
from redis.exceptions import RedisError, ResponseError

from router import log
from router.config import ApiKey
from router.shared import REDIS_CLIENT_INFO

# Body fields known not to change the answer; every other field is part of the key
# (a field we do not know — guided_choice, grammar, think, ... — might change it).
# ``model``: the requested name is already in the key; ``stream``: so is whether
# it streams; ``cache``: the per-request cache control (popped before the key is
# made anyway); ``user``, ``metadata``: bookkeeping the backends do not answer by.
IGNORED = frozenset({"model", "stream", "cache", "user", "metadata"})


def cache_key(group: str, endpoint: str, stream: bool, body: dict[str, Any], scope: str = "") -> str:
    """SHA-256 of the model name, endpoint, streaming or not, and every body field
    but ``IGNORED``, with sorted keys. ``stream_options`` counts only for streams
    (``include_usage`` adds a chunk to a stream; a JSON answer ignores it). ``scope``
    (``scope_of``) keeps tenants apart: "" is the one shared scope."""
    relevant = {k: v for k, v in body.items() if k not in IGNORED and (stream or k != "stream_options")}
    parts = [group, endpoint, stream, relevant] + ([scope] if scope else [])
    raw = orjson.dumps(parts, option=orjson.OPT_SORT_KEYS)
    return hashlib.sha256(raw).hexdigest()


def scope_of(key: ApiKey | None, setting: str) -> str:
    """The cache scope of a request: the client key's (``ApiKey.cache_scope``: its
    tenant, else its name) with ``cache_params.scope: key``, the default; "" — one scope
    for everybody — with ``scope: shared`` or when no key is needed (nothing tells the
    clients apart then)."""
    return "" if key is None or setting == "shared" else key.cache_scope


@dataclass(frozen=True, slots=True)
class Entry:
    body: bytes
    headers: dict[str, str]  # x-router-* of the response that was stored

    def encode(self) -> bytes:
        return orjson.dumps(self.headers) + b"\n" + self.body

    @staticmethod
    def decode(raw: bytes) -> Entry:
        """The entry ``encode`` wrote; ``ValueError`` for anything else (garbage, a
        truncated value, another program's value under our key)."""
        head, sep, body = raw.partition(b"\n")
        headers = orjson.loads(head)  # orjson.JSONDecodeError is a ValueError
        if not sep or not body or not isinstance(headers, dict) \
                or not all(isinstance(k, str) and isinstance(v, str) for k, v in headers.items()):
            raise ValueError("not a cache entry")
        return Entry(body, headers)


class Cache(Protocol):
    ttl: float
    max_entry_bytes: int

    async def get(self, key: str) -> Entry | None: ...
    async def set(self, key: str, entry: Entry) -> None: ...
    async def close(self) -> None: ...


class LocalCache:
    """An LRU bounded by a byte budget; entries also expire after ``ttl``."""

    def __init__(self, ttl: float, max_bytes: int, max_entry_bytes: int) -> None:
        self.ttl, self.max_bytes, self.max_entry_bytes = ttl, max_bytes, max_entry_bytes
        self._entries: OrderedDict[str, tuple[float, Entry, int]] = OrderedDict()
        self.bytes = 0

    async def get(self, key: str) -> Entry | None:
        item = self._entries.get(key)
        if item is None:
            return None
        expires, entry, _ = item
        if expires < time.monotonic():
            self._drop(key)
            return None
        self._entries.move_to_end(key)
        return entry

    async def set(self, key: str, entry: Entry) -> None:
        size = len(entry.body) + 256
        if size > self.max_entry_bytes or size > self.max_bytes:
            return
        if key in self._entries:
            self._drop(key)
        self._entries[key] = (time.monotonic() + self.ttl, entry, size)
        self.bytes += size
        while self.bytes > self.max_bytes:
            self._drop(next(iter(self._entries)))

    def _drop(self, key: str) -> None:
        _, _, size = self._entries.pop(key)
        self.bytes -= size

    async def close(self) -> None:
        self._entries.clear()
        self.bytes = 0


class RedisCache:
    """Entries under ``{namespace}cache:{key}`` with the TTL; a Redis failure is a miss
    (logged once), never a failed request. So is an entry that cannot be read
    (garbage, or not a string): it is deleted, and the first one is logged at
    warning (its key, never its value)."""

    def __init__(self, url: str, password: str | None, namespace: str, ttl: float, max_entry_bytes: int) -> None:
        self.ttl, self.max_entry_bytes, self.namespace = ttl, max_entry_bytes, namespace
        self.client = aioredis.from_url(url, password=password, socket_timeout=1.0, socket_connect_timeout=1.0,
                                        **REDIS_CLIENT_INFO)
        self._ok = True
        self.corrupt = 0  # unreadable entries found (and deleted)
        self.log = log.get("CACHE")

    def _failed(self, exc: BaseException) -> None:
        if self._ok:
            self.log.warning("Redis cache unavailable: requests go to the backends", error=f"{type(exc).__name__}: {exc}")
        self._ok = False

    async def get(self, key: str) -> Entry | None:
        name = self.namespace + "cache:" + key
        try:
            raw = await self.client.get(name)
        except ResponseError as exc:  # WRONGTYPE: something else lives under our key
            return await self._unreadable(name, exc)
        except (RedisError, OSError) as exc:
            self._failed(exc)
            return None
        if not self._ok:
            self.log.info("Redis cache is back")
            self._ok = True
        if not raw:
            return None
        try:
            return Entry.decode(raw)
        except ValueError as exc:
            return await self._unreadable(name, exc)

    async def _unreadable(self, name: str, exc: BaseException) -> None:
        """A miss; the entry is deleted so that the answer about to be stored replaces it."""
        self.corrupt += 1
        (self.log.warning if self.corrupt == 1 else self.log.debug)(
            "Unreadable response-cache entry deleted (a miss)", key=name, error=type(exc).__name__)
        try:
            await self.client.delete(name)
        except (RedisError, OSError) as err:
            self._failed(err)
        return None

    async def set(self, key: str, entry: Entry) -> None:
        raw = entry.encode()
        if len(raw) > self.max_entry_bytes:
            return
        try:
            await self.client.set(self.namespace + "cache:" + key, raw, px=int(self.ttl * 1000))
        except (RedisError, OSError) as exc:
            self._failed(exc)

    async def close(self) -> None:
        await self.client.aclose()


def cache_control(headers: Any, body: dict[str, Any]) -> tuple[bool, bool]:
    """(may read, may store) for this request. Pops LiteLLM's ``cache`` body field,
    which must not reach the backend."""
    read = write = True
    for part in (headers.get("Cache-Control") or "").lower().split(","):
        part = part.strip()
        if part == "no-cache":
            read = False
        elif part == "no-store":
            write = False
    field = body.pop("cache", None) if "cache" in body else None
    if isinstance(field, dict):
        if field.get("no-cache"):
            read = False
        if field.get("no-store"):
            write = False
    return read, write
