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
from dataclasses import dataclass
from typing import Any, Iterable

import aiohttp
import orjson

from router.domain import Deployment

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
