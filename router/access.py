"""Who may do what: client keys, the admin surface, and requests-per-minute limits.

Paths fall in three classes:

- open: liveness/readiness probes, ``/openapi.json``, the status page's shell
  (``/ui``, no data in it) and ``/metrics`` unless ``metrics_require_auth``;
- admin: ``/health``, ``/router/*``, ``/ui/*`` (the page's data) and ``/metrics``
  with ``metrics_require_auth``: the master key only;
- everything else (the OpenAI endpoints, ``/v1/models``): any configured key.

With no key configured at all every path is open (the CLI then refuses to bind
beyond loopback without ``--allow-unauthenticated``). A key is read from
``Authorization: Bearer`` or ``x-api-key`` and compared with every configured key
in constant time (SHA-256 digests, no early exit), so timing tells nothing.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import time
from collections import Counter
from typing import Mapping

from router.config import ApiKey, Config
from router.domain import Deployment
from router.errors import AuthenticationError, PermissionDenied, RequestRateLimited

OPEN_PATHS = frozenset({"/health/liveliness", "/health/readiness", "/health/liveness", "/openapi.json", "/ui"})
ADMIN_PREFIXES = ("/router/", "/ui/")
GLOBAL = "*"  # the name the global limit counts under


def presented_key(headers: Mapping[str, str]) -> str:
    auth = headers.get("Authorization", "")
    if auth[:7].lower() == "bearer ":
        return auth[7:].strip()
    return headers.get("x-api-key", "").strip()


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode("utf-8", "surrogateescape")).digest()


class Access:
    """The keys of one configuration (rebuilt on reload)."""

    def __init__(self, config: Config) -> None:
        self.keys = tuple((_digest(k.key), k) for k in config.api_keys)
        self.metrics_open = not config.limits.metrics_require_auth

    @staticmethod
    def may_use(key: ApiKey | None, dep: Deployment, upstream: str, asked: str | None = None) -> bool:
        """May ``key`` send an attempt to ``dep`` (as ``upstream``)? Yes when one of its
        ``models`` names or globs matches one of the deployment's own names — its
        model_list group (``model_name``), its id (``model_info.id``), and for a catch-all
        or wildcard deployment (which serves whatever name it is handed) the name sent
        upstream — or ``asked``: the name the request routed by (its model, or the
        capability of a capability route). The proxy passes ``asked`` only for the
        deployments that name itself resolved to (an alias's, a capability's, a pattern's)
        and for fallbacks sent that very name, never for other fallbacks: a listed alias or
        capability is usable by that name, not a licence for its members by their own
        names or for what they fall back to."""
        if key is None or key.models is None:
            return True
        return key.allows(dep.model_name, dep.id, upstream if dep.is_dynamic else None, asked)

    @property
    def enabled(self) -> bool:
        return bool(self.keys)

    def identify(self, presented: str) -> ApiKey | None:
        digest = _digest(presented)
        found = None
        for d, key in self.keys:  # every key compared, no early exit
            if hmac.compare_digest(d, digest) and found is None:
                found = key
        return found

    def authorize(self, path: str, headers: Mapping[str, str]) -> ApiKey | None:
        """The caller's key (None where no key is needed); raises 401 / 403."""
        if not self.keys or path in OPEN_PATHS or (path == "/metrics" and self.metrics_open):
            return None
        key = self.identify(presented_key(headers))
        if key is None:
            raise AuthenticationError("Missing or invalid API key: send Authorization: Bearer <key> (or x-api-key: <key>).")
        if not key.admin and (path == "/health" or path == "/metrics" or path.startswith(ADMIN_PREFIXES)):
            raise PermissionDenied(f"The key `{key.name}` may not use {path}: it needs the master key.")
        return key


class RateLimits:
    """Requests per minute, per key name and in total (``GLOBAL``), in fixed
    one-minute windows. ``admit`` is synchronous and never waits; with Redis,
    ``router.shared.RedisShare`` writes ``pending`` and reads the totals of every
    instance back into ``shared`` (eventual, ≤ its sync interval), so a limit holds
    across instances up to what arrives within one sync interval."""

    def __init__(self) -> None:
        self.own: Counter[tuple[str, int]] = Counter()  # (name, minute) -> admitted here
        self.pending: Counter[tuple[str, int]] = Counter()  # not yet written to Redis
        self.flushed: Counter[tuple[str, int]] = Counter()  # written to Redis
        self.shared: dict[tuple[str, int], int] = {}  # Redis totals (ours included)
        self._minute = 0

    def count(self, name: str, minute: int) -> int:
        k = (name, minute)
        return self.own[k] + max(0, self.shared.get(k, 0) - self.flushed[k])

    def admit(self, key: ApiKey | None, global_limit: int | None, now: float | None = None) -> None:
        """Count one request, or raise 429 with the seconds left in this minute."""
        if global_limit is None and (key is None or key.rpm_limit is None):
            return  # nothing limits this request, so nothing to count
        now = time.time() if now is None else now
        minute = int(now // 60)
        if minute != self._minute:
            self._roll(minute)
        names = []
        if global_limit is not None:
            names.append((GLOBAL, global_limit))
        if key is not None and key.rpm_limit is not None:
            names.append((key.name, key.rpm_limit))
        for name, limit in names:
            if self.count(name, minute) >= limit:
                who = "all clients together" if name == GLOBAL else f"the key `{name}`"
                raise RequestRateLimited(f"Rate limit reached: {limit} requests per minute for {who}; retry after the minute turns.",
                                         retry_after=math.ceil((minute + 1) * 60 - now))
        for name, _ in names:
            self.own[(name, minute)] += 1
            self.pending[(name, minute)] += 1

    def _roll(self, minute: int) -> None:
        self._minute = minute
        for table in (self.own, self.flushed, self.shared):
            for k in [k for k in table if k[1] < minute - 1]:
                del table[k]
