"""Health checks against the backends themselves.

``check_all`` asks every distinct backend server once, concurrently, with a
short timeout, using a cheap listing endpoint (Ollama ``/api/tags``, OpenAI
``/v1/models``) instead of a real completion as LiteLLM's ``/health`` does (a
paid generation per deployment; parallel checks that overwhelm Ollama). A
deployment is healthy when its server answers and lists its model (llama.cpp
servers serve whatever model they loaded under any name, so only the answer
counts there).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterable

import aiohttp
import orjson

from router.domain import Deployment
from router.routing.rules import parse_size
from router.health import Transition
from router.state import ServerState, StateTable

PROBE_TIMEOUT = 2.0
_LISTING = {"ollama": "/api/tags", "openai": "/models"}  # under the deployment's api_base
_ANY_NAME = {"llama_cpp_python", "llama_cpp_native"}


@dataclass(frozen=True, slots=True)
class ServerStatus:
    reachable: bool
    models: frozenset[str] = frozenset()
    error: str | None = None
    latency_ms: float | None = None


async def probe_server(session: aiohttp.ClientSession, api_base: str, wire: str, api_key: str | None = None) -> ServerStatus:
    loop = asyncio.get_running_loop()
    start = loop.time()
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    try:
        async with session.get(api_base + _LISTING[wire], headers=headers, timeout=aiohttp.ClientTimeout(total=PROBE_TIMEOUT)) as resp:
            raw = await resp.read()
            latency = round((loop.time() - start) * 1000, 1)
            if resp.status != 200:
                return ServerStatus(False, error=f"HTTP {resp.status} from {_LISTING[wire]}", latency_ms=latency)
    except asyncio.TimeoutError:
        return ServerStatus(False, error=f"no answer within {PROBE_TIMEOUT:g} s")
    except aiohttp.ClientError as exc:
        return ServerStatus(False, error=f"{type(exc).__name__}: {exc}")
    return ServerStatus(True, _model_names(raw, wire), latency_ms=latency)


def _model_names(raw: bytes, wire: str) -> frozenset[str]:
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return frozenset()
    items = data.get("models" if wire == "ollama" else "data") if isinstance(data, dict) else None
    names: set[str] = set()
    for item in items or []:
        if isinstance(item, dict):
            for key in ("name", "model", "id"):
                if isinstance(item.get(key), str):
                    names.add(item[key])
    return frozenset(names)


def _serves(status: ServerStatus, dep: Deployment) -> bool:
    if dep.is_dynamic or dep.kind in _ANY_NAME:
        return True
    name = dep.upstream_model
    # Ollama lists "llama3.1:8b" and, for untagged pulls, "name:latest".
    return name in status.models or f"{name}:latest" in status.models


async def check_all(session: aiohttp.ClientSession, deployments: Iterable[Deployment]) -> list[dict[str, Any]]:
    """One probe per (api_base, wire); one result row per deployment."""
    deployments = list(deployments)
    servers: dict[tuple[str, str], Deployment] = {}
    for d in deployments:
        servers.setdefault((d.api_base, d.wire), d)
    results = await asyncio.gather(*(probe_server(session, base, wire, d.api_key) for (base, wire), d in servers.items()))
    by_server = dict(zip(servers, results))
    rows = []
    for d in deployments:
        status = by_server[(d.api_base, d.wire)]
        healthy = status.reachable and _serves(status, d)
        error = status.error if not status.reachable else None if healthy else f"server does not list model {d.upstream_model!r}"
        rows.append({
            "id": d.id,
            "model_name": d.model_name,
            "model": d.upstream_model or "*",
            "provider": d.provider,
            "api_base": d.api_base,
            "healthy": healthy,
            "error": error,
            "probe_latency_ms": status.latency_ms,
        })
    return rows


# ---------------------------------------------------------------------------
# Background monitor: what each backend says about its models, load and warmth
# ---------------------------------------------------------------------------

MONITOR_INTERVAL = 5.0  # seconds between probes of one backend server
META_TIMEOUT = 2.0


def parse_prometheus_sum(text: str, metric: str) -> float | None:
    """Sum of every sample of ``metric`` (any labels) in Prometheus text format."""
    total, seen = 0.0, False
    for line in text.splitlines():
        if line.startswith(metric) and (len(line) == len(metric) or line[len(metric)] in "{ "):
            try:
                total += float(line.rsplit(" ", 1)[-1])
                seen = True
            except ValueError:
                continue
    return total if seen else None


def parse_slots(data: Any) -> tuple[int, int] | None:
    """llama.cpp ``/slots``: (slots, busy). Newer servers say ``is_processing``, older ``state`` != 0."""
    if not isinstance(data, list):
        return None
    busy = sum(1 for s in data if isinstance(s, dict) and (s.get("is_processing") or s.get("state", 0) != 0))
    return len(data), busy


def parse_listing(data: Any, wire: str) -> tuple[set[str], dict[str, float], dict[str, int]]:
    """Model names, sizes (billions) and context lengths from ``/api/tags`` or ``/v1/models``."""
    names: set[str] = set()
    sizes: dict[str, float] = {}
    contexts: dict[str, int] = {}
    items = data.get("models" if wire == "ollama" else "data") if isinstance(data, dict) else None
    for item in items or []:
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
        except ValueError:
            pass
        ctx = item.get("max_model_len") or (meta.get("n_ctx_train") if isinstance(meta, dict) else None)
        if isinstance(ctx, int):
            contexts[name] = ctx
    return names, sizes, contexts


def _root(api_base: str) -> str:
    return api_base[: -len("/v1")] if api_base.endswith("/v1") else api_base


async def _get_json(session: aiohttp.ClientSession, url: str, timeout: float, headers: dict[str, str]) -> Any:
    async with session.get(url, headers=headers, timeout=aiohttp.ClientTimeout(total=timeout)) as resp:
        if resp.status != 200:
            raise aiohttp.ClientResponseError(resp.request_info, (), status=resp.status)
        return orjson.loads(await resp.read())


async def probe_state(session: aiohttp.ClientSession, d: Deployment, warm_timeout: float) -> ServerState:
    """One probe of ``d``'s server: its models with sizes and contexts, and where the
    server says so, its load (vLLM /metrics, llama.cpp /slots) and loaded models (Ollama /api/ps)."""
    headers = {"Authorization": f"Bearer {d.api_key}"} if d.api_key else {}
    state = ServerState(updated_at=time.time())
    try:
        listing = await _get_json(session, d.api_base + _LISTING[d.wire], META_TIMEOUT, headers)
    except (aiohttp.ClientError, asyncio.TimeoutError, orjson.JSONDecodeError):
        return state
    names, state.sizes, state.contexts = parse_listing(listing, d.wire)
    state.models, state.reachable = frozenset(names), True
    try:
        if d.kind == "ollama":
            ps = await _get_json(session, d.api_base + "/api/ps", warm_timeout, headers)
            loaded = [m for m in (ps.get("models") or []) if isinstance(m, dict)]
            state.loaded = frozenset(str(m.get("name") or m.get("model")) for m in loaded)
            for m in loaded:
                if isinstance(m.get("context_length"), int):
                    state.contexts.setdefault(str(m.get("name")), m["context_length"])
        elif d.kind == "llama_cpp_native":
            slots = parse_slots(await _get_json(session, _root(d.api_base) + "/slots", warm_timeout, headers))
            if slots:
                state.slots, state.running = slots
                state.waiting = 0
        elif d.kind == "vllm":
            async with session.get(_root(d.api_base) + "/metrics", headers=headers,
                                   timeout=aiohttp.ClientTimeout(total=warm_timeout)) as resp:
                text = (await resp.read()).decode("utf-8", "replace") if resp.status == 200 else ""
            running = parse_prometheus_sum(text, "vllm:num_requests_running")
            if running is not None:
                state.running = int(running)
                state.waiting = int(parse_prometheus_sum(text, "vllm:num_requests_waiting") or 0)
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
                 on_transition: Callable[[Deployment, Transition], None] | None = None) -> None:
        self.session = session
        self.state = state
        self.interval = interval
        self.warm_timeout = warm_timeout
        self.on_transition = on_transition
        self._targets: dict[str, Deployment] = {}
        self._members: dict[str, list[Deployment]] = {}
        for d in deployments:
            self._targets.setdefault(d.api_base, d)
            self._members.setdefault(d.api_base, []).append(d)

    async def probe_all(self) -> None:
        results = await asyncio.gather(*(probe_state(self.session, d, self.warm_timeout) for d in self._targets.values()))
        now = time.time()
        for base, server in zip(self._targets, results):
            self.state.servers[base] = server
            for d in self._members[base]:
                t = self.state[d.id].health.probe(now, server.reachable)
                if t is not None and self.on_transition is not None:
                    self.on_transition(d, t)

    async def run(self) -> None:
        while True:
            await self.probe_all()
            await asyncio.sleep(self.interval)


async def warm_up(session: aiohttp.ClientSession, d: Deployment, model: str) -> bool:
    """Make ``d`` load ``model`` without generating anything; True when it did. Ollama
    loads a model on a generate request with no prompt; OpenAI-compatible servers
    keep theirs loaded."""
    if d.wire != "ollama":
        return False
    try:
        async with session.post(d.api_base + "/api/generate", data=orjson.dumps({"model": model}),
                                timeout=aiohttp.ClientTimeout(total=max(d.timeout or 600, 60))) as resp:
            await resp.read()
            return resp.status == 200
    except (aiohttp.ClientError, asyncio.TimeoutError):
        return False
