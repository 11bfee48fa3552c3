"""The read-only half of Ollama's API on the router's port: ``/api/version``,
``/api/tags``, ``/api/ps`` and ``/api/show``, for clients (Open WebUI, the
``ollama`` libraries, editor plugins) that list and inspect models before they chat.

The fleet is one Ollama to them:

* ``/api/tags``: every name a client can ask for (model groups, aliases, exact
  matches) and, behind a catch-all or wildcard deployment, what its server lists;
  the names a key may not use are left out.
* ``/api/ps``: those of them loaded now: on an Ollama server, what its ``/api/ps``
  said at the last probe; a server that holds its model while it runs (vLLM,
  llama.cpp) while it is reachable.
* ``/api/show``: an Ollama deployment's own answer (asked of its server, under the
  upstream name); for other kinds what the configuration says (``model_info``:
  ``supports_vision``, ``supports_function_calling``, ``mode``, context length) and
  the monitor learnt (size, context). Nothing is invented: a field we do not know
  is left out.
* ``/api/version``: ``OLLAMA_API_VERSION``, the version of Ollama's API this door
  follows (clients check it is there, some that it is recent enough).

Sizes, digests and dates Ollama lists per model file are not known for a
deployment: they are 0, "" and the router's start time.
"""

from __future__ import annotations

import datetime
from typing import Any

import aiohttp
import orjson
from aiohttp import web

from router.backends.base import root
from router.validate import decode_object
from router.errors import BadRequest, ModelNotFound, PermissionDenied, UpstreamError
from router.exchange import CLIENT_KEY
from router.domain import Deployment

OLLAMA_API_VERSION = "0.14.0"  # /v1/messages appeared in 0.14; the door follows that API
SHOW_TIMEOUT = 10.0


def _json(data: Any, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(data), status=status, content_type="application/json")


def _stamp(t: float) -> str:
    return datetime.datetime.fromtimestamp(t, datetime.timezone.utc).isoformat().replace("+00:00", "Z")


def _details(size_b: float | None) -> dict[str, Any]:
    details: dict[str, Any] = {"parent_model": "", "format": "", "family": "", "families": None,
                               "parameter_size": "", "quantization_level": ""}
    if size_b:
        details["parameter_size"] = f"{size_b:.1f}B" if size_b < 10 else f"{size_b:.0f}B"
    return details


class Fleet:
    """What the listings are made of: the configuration and the monitor's state."""

    def __init__(self, proxy: Any, started: float) -> None:
        self.proxy, self.started = proxy, started

    def names(self) -> dict[str, Deployment]:
        """Each name a client may ask for, and a deployment that serves it."""
        config, state = self.proxy.config, self.proxy.state
        seen: dict[str, Deployment] = {}
        for name, deps in config.groups.items():
            seen[name] = deps[0]
        for alias, deps in config.aliases.items():
            seen.setdefault(alias, deps[0])
        for d in config.deployments:
            if d.is_dynamic:  # a catch-all or a wildcard: what its server lists
                server = state.servers.get(d.api_base)
                for m in sorted(server.models) if server is not None else ():
                    if d.wildcard is None or _wildcard_ok(d.wildcard, m, d):
                        seen.setdefault(m, d)
        return seen

    def size(self, d: Deployment, name: str) -> float | None:
        server = self.proxy.state.servers.get(d.api_base)
        return server.sizes.get(d.upstream_model or name) if server is not None else None

    def context(self, d: Deployment, name: str) -> int | None:
        info = d.model_info.get("max_input_tokens") or d.model_info.get("max_tokens")
        if isinstance(info, int):
            return info
        server = self.proxy.state.servers.get(d.api_base)
        return server.contexts.get(d.upstream_model or name) if server is not None else None

    def loaded(self, d: Deployment, name: str) -> bool:
        server = self.proxy.state.servers.get(d.api_base)
        if server is None or not server.reachable:
            return False
        if server.loaded is None:
            return d.backend.always_warm
        upstream = d.upstream_model or name
        return any(n in server.loaded for n in d.backend.names(upstream))

    def entry(self, name: str, d: Deployment) -> dict[str, Any]:
        return {"name": name, "model": name, "modified_at": _stamp(self.started), "size": 0, "digest": "",
                "details": _details(self.size(d, name))}


def _wildcard_ok(pattern: str, model: str, d: Deployment) -> bool:
    prefix = pattern.split("/", 1)[1] if "/" in pattern else pattern
    return prefix in ("*", "") or model.startswith(prefix.rstrip("*"))


def _allowed(request: web.Request, names: dict[str, Deployment]) -> dict[str, Deployment]:
    key = request.get(CLIENT_KEY)
    return names if key is None else {n: d for n, d in names.items() if key.allows(n)}


def add_routes(app: web.Application, proxy_key: web.AppKey[Any], started_key: web.AppKey[float]) -> None:
    def fleet(request: web.Request) -> Fleet:
        return Fleet(request.app[proxy_key], request.app[started_key])

    async def version(request: web.Request) -> web.Response:
        return _json({"version": OLLAMA_API_VERSION})

    async def tags(request: web.Request) -> web.Response:
        f = fleet(request)
        return _json({"models": [f.entry(n, d) for n, d in _allowed(request, f.names()).items()]})

    async def ps(request: web.Request) -> web.Response:
        f = fleet(request)
        models = []
        for n, d in _allowed(request, f.names()).items():
            if f.loaded(d, n):
                entry = f.entry(n, d)
                del entry["modified_at"]
                entry.update(expires_at="0001-01-01T00:00:00Z", size_vram=0)
                ctx = f.context(d, n)
                if ctx:
                    entry["context_length"] = ctx
                models.append(entry)
        return _json({"models": models})

    async def show(request: web.Request) -> web.Response:
        body = decode_object(await request.read())
        # Ollama's field is model (name is the older one): one that is there must be a name
        name = body.get("model") if "model" in body else body.get("name")
        if not isinstance(name, str) or not name:
            raise BadRequest("model is required", param="model")
        f = fleet(request)
        key = request.get(CLIENT_KEY)
        if key is not None and not key.allows(name):
            raise PermissionDenied(f"The key `{key.name}` may not use the model `{name}`.", param="model")
        d = f.names().get(name)
        if d is None:
            raise ModelNotFound(f"model '{name}' not found", param="model")
        upstream = d.upstream_model or name
        if d.kind == "ollama" and f.proxy.session is not None:
            return _json(await _ask_ollama(f.proxy.session, d, {**body, "model": upstream}))
        caps = ["embedding"] if d.model_info.get("mode") == "embedding" else ["completion"]
        if d.model_info.get("supports_function_calling"):
            caps.append("tools")
        if d.model_info.get("supports_vision"):
            caps.append("vision")
        info: dict[str, Any] = {}
        size, ctx = f.size(d, name), f.context(d, name)
        if size:
            info["general.parameter_count"] = int(size * 1e9)
        if ctx:
            info["general.context_length"] = ctx
        return _json({"modelfile": "", "parameters": "", "template": "", "details": _details(size),
                      "model_info": info, "capabilities": caps, "modified_at": _stamp(f.started)})

    app.router.add_get("/api/version", version)
    app.router.add_get("/api/tags", tags)
    app.router.add_get("/api/ps", ps)
    app.router.add_post("/api/show", show)


async def _ask_ollama(session: aiohttp.ClientSession, d: Deployment, body: dict[str, Any]) -> Any:
    headers = dict(d.headers)
    try:
        async with session.post(root(d.api_base) + "/api/show", json=body, headers=headers,
                                timeout=aiohttp.ClientTimeout(total=SHOW_TIMEOUT)) as resp:
            data = orjson.loads(await resp.read())
            if resp.status == 404:
                raise ModelNotFound(f"model '{body['model']}' not found on {d.provider}", param="model")
            if resp.status != 200:
                raise UpstreamError(f"{d.provider} answered /api/show with HTTP {resp.status}")
            return data
    except (aiohttp.ClientError, TimeoutError, orjson.JSONDecodeError) as exc:
        raise UpstreamError(f"{d.provider} could not be asked /api/show: {type(exc).__name__}") from None
