"""Probes of the backends themselves: the background monitor, ``/health``, warm-up.

The ``Monitor`` asks every distinct backend server, concurrently, with short
timeouts, for a cheap listing (Ollama ``/api/tags``, OpenAI ``/v1/models``) and
its load and warmth — never a completion, as LiteLLM's ``/health`` does (a paid
generation per deployment; parallel checks that overwhelm Ollama). ``/health``
runs a fresh round and reports it: a deployment is healthy when its server
answers, lists its model (llama.cpp servers serve their one model under any
name, so only the answer counts there) and it is not cooling down. A server on a
unix socket is probed through an aiohttp session of its own (``UnixConnector``
connects to one path): ``UnixSessions``, which lives as long as the app.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any, Callable, Iterable

import aiohttp
import orjson
from aiohttp.client_exceptions import UnixClientConnectorError

from router import log
from router.checks import http_url, shown, unix_socket
from router.backends.base import get_json, root
from router.domain import Deployment
from router.routing.rules import parse_size
from router.health import Transition
from router.state import ServerState, StateTable

MONITOR_INTERVAL = 5.0  # seconds between probes of one backend server
META_TIMEOUT = 2.0


def serves(server: ServerState, d: Deployment) -> bool:
    """Does the server's last listing include ``d``'s model?"""
    backend = d.backend
    if d.is_dynamic or backend.any_name:
        return True
    return any(name in server.models for name in backend.names(d.upstream_model))


def health_rows(deployments: Iterable[Deployment], state: StateTable) -> list[dict[str, Any]]:
    """``/health``: per deployment, what the last probe of its server found, plus its
    health state and counters."""
    rows = []
    for d in deployments:
        server = state.servers.get(d.api_base) or ServerState()
        if d.hosted:  # never probed: healthy unless its answers cooled it down
            healthy, error = state.available(d), None
        else:
            healthy = server.reachable and serves(server, d) and state.available(d)
            error = server.error if not server.reachable else None if serves(server, d) else f"server does not list model {d.upstream_model!r}"
        rows.append({
            "id": d.id,
            "model_name": d.model_name,
            "model": d.upstream_model or "*",
            "provider": d.provider,
            "api_base": shown(d.api_base),
            "healthy": healthy,
            "error": error,
            "probe_latency_ms": server.latency_ms,
            **({"hosted": True} if d.hosted else {}),
            **state[d.id].snapshot(),
        })
    return rows


def disabled_rows(disabled: Iterable[Any]) -> list[dict[str, Any]]:
    """``/health``'s entries for the model_list entries the router cannot serve
    (``router.domain.Disabled``): never healthy, with the reason."""
    return [{"model_name": x.model_name, "model": x.model, "state": "disabled", "healthy": False,
             "error": x.reason, "where": x.where} for x in disabled]


def parse_listing(data: Any, wire: str) -> tuple[set[str], dict[str, float], dict[str, int]]:
    """Model names, sizes (billions) and context lengths from ``/api/tags`` or ``/v1/models``."""
    names: set[str] = set()
    sizes: dict[str, float] = {}
    contexts: dict[str, int] = {}
    items = data.get("models" if wire == "ollama" else "data") if isinstance(data, dict) else None
    for item in items if isinstance(items, list) else []:  # {"data": 5} raised, and ended the monitor
        if not isinstance(item, dict):
            continue
        name = item.get("name") or item.get("model") or item.get("id")
        if not isinstance(name, str):
            continue
        names.add(name)
        details, meta = item.get("details") or {}, item.get("meta") or {}
        try:
            if isinstance(details, dict) and details.get("parameter_size"):
                sizes[name] = parse_size(details["parameter_size"])
            elif isinstance(meta, dict) and isinstance(meta.get("n_params"), (int, float)):
                sizes[name] = meta["n_params"] / 1e9
        except (ValueError, TypeError):
            pass
        ctx = item.get("max_model_len") or (meta.get("n_ctx_train") if isinstance(meta, dict) else None)
        if isinstance(ctx, int):
            contexts[name] = ctx
    return names, sizes, contexts


def _describe(exc: BaseException) -> str:
    if isinstance(exc, asyncio.TimeoutError):
        return f"no answer within {META_TIMEOUT:g} s"
    if isinstance(exc, aiohttp.ClientResponseError):
        return f"HTTP {exc.status} from the model listing"
    if isinstance(exc, UnixClientConnectorError):  # its text names localhost:80, not the socket
        return f"cannot connect to unix socket {exc.path}: {exc.os_error.strerror or exc.os_error}"
    return f"{type(exc).__name__}: {exc}"


async def probe_state(session: aiohttp.ClientSession, d: Deployment, warm_timeout: float) -> ServerState:
    """One probe of ``d``'s server: its models with sizes and contexts, and whatever
    its kind says of load or loaded models (``BackendKind.load_probe``); for a
    ``liveness_only`` kind only whether it answers. For a unix-socket server
    ``session`` must be one connected to that socket."""
    base = http_url(d.api_base)
    backend = d.backend
    headers = dict(d.headers)
    state = ServerState(updated_at=time.time())
    start = time.monotonic()
    if backend.liveness_only:
        try:
            async with session.get(root(base) + "/health", headers=headers,
                                   timeout=aiohttp.ClientTimeout(total=META_TIMEOUT)) as resp:
                await resp.read()
                state.reachable = resp.status < 500
        except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
            state.error = _describe(exc)
        state.latency_ms = round((time.monotonic() - start) * 1000, 1)
        return state
    try:
        listing = await get_json(session, base + backend.listing, META_TIMEOUT, headers)
    except (aiohttp.ClientError, asyncio.TimeoutError, orjson.JSONDecodeError) as exc:
        state.error = _describe(exc)
        return state
    state.latency_ms = round((time.monotonic() - start) * 1000, 1)
    names, state.sizes, state.contexts = parse_listing(listing, d.wire)
    state.models, state.reachable = frozenset(names), True
    if backend.load_probe is not None:
        try:
            await backend.load_probe(session, base, headers, warm_timeout, state)
        except (aiohttp.ClientError, asyncio.TimeoutError, orjson.JSONDecodeError, AttributeError):
            pass  # load and warmth stay unknown; the listing answered, so the server is reachable
    return state


class Monitor:
    """Probes every backend server every ``interval`` seconds, one probe in flight
    per server, and stores what it learned in ``StateTable.servers``. A server
    that answers ends its deployments' cooldowns early (they go half-open: the
    next request is a trial)."""

    def __init__(self, session: aiohttp.ClientSession, deployments: Iterable[Deployment], state: StateTable,
                 interval: float = MONITOR_INTERVAL, warm_timeout: float = 0.1,
                 on_transition: Callable[[Deployment, Transition], None] | None = None,
                 unix_sessions: UnixSessions | None = None) -> None:
        self.session = session
        self.unix_sessions = unix_sessions if unix_sessions is not None else UnixSessions()
        self.state = state
        self.interval = interval
        self.warm_timeout = warm_timeout
        self.on_transition = on_transition
        self._targets: dict[str, Deployment] = {}
        self._members: dict[str, list[Deployment]] = {}
        self._round: asyncio.Future[None] | None = None
        for d in deployments:
            if d.hosted:
                continue  # a cloud API: its answers tell its health (failures cool it down), not probes
            self._targets.setdefault(d.api_base, d)
            self._members.setdefault(d.api_base, []).append(d)

    async def probe_all(self) -> None:
        """One fresh round over every server, after the one under way if any (never
        two at once: ``/health`` asks for rounds too)."""
        if self._round is not None and not self._round.done():
            with contextlib.suppress(Exception):
                await asyncio.shield(self._round)
        if self._round is None or self._round.done():
            self._round = asyncio.ensure_future(self._probe_all())
        await asyncio.shield(self._round)

    async def _probe_all(self) -> None:
        results = await asyncio.gather(*(probe_state(self._session_for(d), d, self.warm_timeout) for d in self._targets.values()))
        now = time.time()
        for base, server in zip(self._targets, results):
            self.state.servers[base] = server
            for d in self._members[base]:
                self.state.probed(d, server)
                t = self.state[d.id].health.probe(now, server.reachable)
                if t is not None and self.on_transition is not None:
                    self.on_transition(d, t)

    async def stop_round(self) -> None:
        """Cancel the round under way, if any (it is shielded from its callers: stopping
        the monitor alone left it running into the closed session, and an unretrieved
        "Session is closed" error in the log at every shutdown)."""
        r, self._round = self._round, None
        if r is not None and not r.done():
            r.cancel()
            await asyncio.wait({r})  # our own cancellation still propagates
        if r is not None and r.done() and not r.cancelled():
            r.exception()  # retrieved: no "exception was never retrieved" at shutdown

    async def run(self) -> None:
        """A round every ``interval``, for good: a round that fails unexpectedly (an answer
        no parser foresaw) is logged, once per kind of failure, and the rounds go on,
        further apart while they keep failing (an ended monitor froze every health
        state until a restart)."""
        failures = 0
        logged: set[str] = set()
        while True:
            try:
                await self.probe_all()
                failures = 0
            except Exception as exc:  # noqa: BLE001 - the loop must outlive any one round
                failures += 1
                kind = f"{type(exc).__name__}: {exc}"[:300]
                if kind not in logged and len(logged) < 100:
                    logged.add(kind)
                    log.get("HEALTH").exception("A health-probe round failed; the probes go on", error=kind)
            await asyncio.sleep(self.interval * min(2 ** failures, 8))

    def _session_for(self, d: Deployment) -> aiohttp.ClientSession:
        sock = unix_socket(d.api_base)
        return self.session if sock is None else self.unix_sessions.get(sock)


class UnixSessions:
    """One aiohttp session per unix socket, made at first use (aiohttp's UnixConnector
    connects to a single path). Kept across reloads, closed with the app: a monitor
    round under way when a reload replaces its monitor keeps a working session."""

    def __init__(self) -> None:
        self._sessions: dict[str, aiohttp.ClientSession] = {}

    def get(self, sock: str) -> aiohttp.ClientSession:
        session = self._sessions.get(sock)
        if session is None or session.closed:
            session = self._sessions[sock] = aiohttp.ClientSession(
                connector=aiohttp.UnixConnector(path=sock, keepalive_timeout=30), skip_auto_headers=("User-Agent",),
                timeout=aiohttp.ClientTimeout(total=None))
        return session

    async def close(self) -> None:
        sessions, self._sessions = list(self._sessions.values()), {}
        for session in sessions:
            await session.close()


async def warm_up(session: aiohttp.ClientSession, d: Deployment, model: str) -> bool:
    """Make ``d`` load ``model`` without generating anything; True when it did (only a
    kind with a ``warm_up_path`` can: Ollama loads a model on a generate request with
    no prompt; the others keep theirs loaded)."""
    path = d.backend.warm_up_path
    if path is None:
        return False
    try:
        async with session.post(d.api_base + path, data=orjson.dumps({"model": model}),
                                timeout=aiohttp.ClientTimeout(total=max(d.timeout or 600, 60))) as resp:
            await resp.read()
            return resp.status == 200
    except (aiohttp.ClientError, asyncio.TimeoutError):
        return False
