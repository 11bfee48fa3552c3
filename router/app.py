"""``create_app(config)``: routes, middlewares and the shared upstream session."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import ipaddress
import time
from fnmatch import fnmatchcase
from functools import lru_cache
from urllib.parse import unquote_plus, urlsplit
from typing import Any, AsyncIterator, Awaitable, Callable

import aiohttp
import orjson
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST

from router import __version__, log
from router.admission import PRIORITY_HEADERS, asked_of, classify
from router.config import Config, ConfigError, WebAccess, load_config
from router.errors import BadRequest, NotFound, PermissionDenied, RouterError
from router.h1 import Pool
from router.domain import RequestFacts
from router.probes import Monitor, UnixSessions, disabled_rows, health_rows
from router.attempt import transition
from router.exchange import CLIENT_KEY, CORS_ORIGIN, assign_request_id, cors_grant
from router.proxy import Proxy, Routing
from router.routing.engine import Engine
from router.cache import Cache, LocalCache, RedisCache
from router import doors, openapi
from router.doors import ollama_api
from router import ui
from router.shared import RedisShare, redis_url
from router.state import StateTable

PROXY = web.AppKey("proxy", Proxy)
MONITOR = web.AppKey("monitor", dict)  # {"task": the running monitor task}
STARTED = web.AppKey("started", float)
SUPERVISOR_LINK = web.AppKey("supervisor_link", object)  # a worker's router.workers.SupervisorLink
BIND_HOST = web.AppKey("bind_host", str)  # what `serve --host` bound to (set by router.server.run)
RELOADING = web.AppKey("reloading", asyncio.Lock)  # one reload at a time

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _json(data: Any, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(data), status=status, content_type="application/json")


def _error(exc: RouterError, rid: str, path: str = "") -> web.Response:
    """``exc`` for the client, in the dialect of the door at ``path`` (OpenAI's elsewhere)."""
    door = doors.for_path(path)
    return web.Response(body=exc.to_bytes() if door is None else door.error_body(exc), status=exc.status,
                        content_type="application/json", headers={"x-request-id": rid, **exc.headers()})


# Bodies a web page can send to another origin without asking first (a "simple" request).
SIMPLE_TYPES = {"text/plain", "application/x-www-form-urlencoded", "multipart/form-data"}


def _split_host(value: str) -> str:
    """The host of a ``Host`` header or an origin's netloc, lower-cased, without port,
    brackets or a trailing dot."""
    v = value.strip().lower()
    if v.startswith("["):
        return v[1:v.find("]")] if "]" in v else v
    if v.count(":") == 1:
        v = v.partition(":")[0]
    return v.rstrip(".")


@lru_cache(maxsize=1024)  # per request on a keyless router: parsing an address costs microseconds
def _is_loopback(host: str) -> bool:
    """``localhost``, ``*.localhost`` (RFC 6761: browsers never ask DNS for them, so no
    page can rebind them), 127.0.0.0/8, ::1."""
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def host_allowed(header: str | None, web_access: WebAccess, bound: str | None) -> bool:
    """May a keyless router answer a request sent to ``Host: header``? Loopback names
    and addresses, the address it is bound to, and ``allowed_hosts``. Any other name
    is how a DNS-rebinding page reaches it (evil.example resolving to 127.0.0.1)."""
    if not header:
        return True  # no Host (HTTP/1.0): not a browser, browsers always send it
    host = _split_host(header)
    if _is_loopback(host):
        return True
    bound = _split_host(bound) if bound else None
    if bound is not None and host == bound:
        return True
    if bound in ("0.0.0.0", "::", ""):  # --allow-unauthenticated on every address: an address is fine, a name is not
        try:
            ipaddress.ip_address(host)
            return True
        except ValueError:
            pass
    return any(fnmatchcase(host, pattern) for pattern in web_access.allowed_hosts)


def origin_allowed(origin: str, host: str | None, web_access: WebAccess) -> bool:
    """May the web page of ``origin`` call a keyless router? Its own pages (same host),
    pages on loopback (as Ollama), and ``allowed_origins``. ``null`` (sandboxed frames,
    file://) only when configured: any page can make one."""
    origin = origin.strip().lower()
    if any(fnmatchcase(origin, pattern) for pattern in web_access.allowed_origins):
        return True
    scheme, sep, netloc = origin.partition("://")
    if not sep or scheme not in ("http", "https") or "/" in netloc:
        return False
    if host is not None and netloc == host.strip().lower():
        return True
    return _is_loopback(_split_host(netloc))


@lru_cache(maxsize=1024)
def _host_ok(header: str | None, allowed_hosts: tuple[str, ...], bound: str | None) -> bool:
    """``host_allowed``, remembered: a keyless router asks it per request, with the same
    few Host values over and over (the key is strings and a tuple: cheap to hash)."""
    return host_allowed(header, WebAccess(allowed_hosts=allowed_hosts), bound)


def web_guard(request: web.Request, config: Config) -> str | None:
    """A router without any key is a service on loopback that web pages in the
    operator's browser can reach. Refuse what only a page would send: a foreign Host
    (DNS rebinding), a foreign Origin (cross-site requests), and a form or text body
    from a browser (the requests a page may send cross-site without a preflight).
    Returns the allowed cross-origin page to grant the answer to (CORS), if any."""
    headers = request.headers
    host = headers.get("Host")
    if not _host_ok(host, config.web.allowed_hosts, request.app.get(BIND_HOST)):
        raise PermissionDenied(f"Host `{host}` is not allowed: llm-router has no key, so it answers only to loopback "
                               "names and general_settings.allowed_hosts (a protection against DNS rebinding).",
                               code="host_not_allowed")
    origin = headers.get("Origin")
    if origin is not None:
        if not origin_allowed(origin, host, config.web):
            raise PermissionDenied(f"Origin `{origin}` is not allowed: llm-router has no key, so only pages on loopback "
                                   "and general_settings.allowed_origins (or LLM_ROUTER_ORIGINS) may call it.",
                                   code="origin_not_allowed")
    grant = None
    if origin is not None and (host is None or origin.strip().lower().partition("://")[2] != host.strip().lower()):
        request[CORS_ORIGIN] = grant = origin  # (the refusal below is granted too: the page may read why)
    if request.method == "POST" and (origin is not None or "Sec-Fetch-Mode" in headers) \
            and request.content_type in SIMPLE_TYPES:
        raise BadRequest(f"Content-Type `{request.content_type}` is not accepted from a web page; send "
                         "application/json.", status=415, code="unsupported_media_type")
    return grant


def _listed_origin(request: web.Request, web_access: WebAccess) -> str | None:
    """With a key configured the key is the protection: a page listed in
    ``allowed_origins`` gets a CORS grant (browser apps that send the key), no other does."""
    origin = request.headers["Origin"]
    if any(fnmatchcase(origin.strip().lower(), pattern) for pattern in web_access.allowed_origins):
        request[CORS_ORIGIN] = origin
        return origin
    return None


def _preflight(request: web.Request) -> web.Response:
    """A CORS preflight from an allowed page: granted (GET and POST, the headers it asks for)."""
    return web.Response(status=204, headers={
        "Access-Control-Allow-Origin": request[CORS_ORIGIN],
        "Access-Control-Allow-Methods": "GET, POST",
        "Access-Control-Allow-Headers": request.headers.get("Access-Control-Request-Headers", ""),
        "Access-Control-Max-Age": "600",
        "Vary": "Origin"})


def _encoding_refused(request: web.Request) -> RouterError | None:
    """A compressed request body is refused, never inflated (a few MB of gzip inflate
    to gigabytes, on the event loop); LiteLLM's server does not decode them either.
    aiohttp's own inflating is off (``router.server.runner_options``). Every
    ``Content-Encoding`` header counts (``identity`` then ``gzip`` is gzip), and so does a
    transfer coding other than ``chunked`` (``gzip, chunked``: aiohttp would pass the
    gzip bytes on as the body)."""
    headers = request.headers
    codings = [c.strip().lower() for v in headers.getall("Content-Encoding", ()) for c in v.split(",")]
    encoding = ", ".join(c for c in codings if c not in ("identity", ""))
    if encoding:
        return BadRequest(f"Content-Encoding `{encoding[:64]}` is not supported: send the request body uncompressed.",
                          status=415, code="unsupported_content_encoding")
    codings = [c.strip().lower() for v in headers.getall("Transfer-Encoding", ()) for c in v.split(",")]
    encoding = ", ".join(c for c in codings if c not in ("chunked", ""))
    if encoding:
        return BadRequest(f"Transfer-Encoding `{encoding[:64]}` is not supported: send the request body uncompressed "
                          "(chunked is fine).", status=415, code="unsupported_transfer_encoding")
    return None


@web.middleware
async def errors_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Keys (``router.access``), the keyless guard, OpenAI-shaped errors for
    everything (404s, 405s, bugs), x-request-id, and CORS grants."""
    rid = assign_request_id(request)
    routing = request.app[PROXY].routing
    grant = None
    try:
        if not routing.config.api_keys:
            grant = web_guard(request, routing.config)
            if grant is not None and request.method == "OPTIONS" and "Access-Control-Request-Method" in request.headers:
                return _preflight(request)
        elif routing.config.web.allowed_origins and "Origin" in request.headers:
            grant = _listed_origin(request, routing.config.web)  # with a key: CORS for the listed pages only
            if grant is not None and request.method == "OPTIONS" and "Access-Control-Request-Method" in request.headers:
                return _preflight(request)  # a preflight carries no key: granted before the key check
        request[CLIENT_KEY] = routing.access.authorize(request.path, request.headers)
    except RouterError as exc:
        log.get("ROUTER").warning("Rejected request: " + ("missing or wrong API key" if exc.status == 401 else exc.message),
                                  request_id=rid, path=request.path, status=exc.status)
        response = _error(exc, rid, request.path)
        if "Origin" in request.headers and CORS_ORIGIN in request:
            response.headers.update(cors_grant(request[CORS_ORIGIN]))
        return response
    headers = request.headers
    refused = _encoding_refused(request) if "Content-Encoding" in headers or "Transfer-Encoding" in headers else None
    try:
        if refused is not None:
            log.get("ROUTER").warning("Rejected request: " + refused.message, request_id=rid, path=request.path, status=415)
            raise refused  # aiohttp then discards the unread body as it is (never inflated)
        response = await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        message = f"{request.method} {request.path}: {exc.reason}"
        code = exc.reason.lower().replace(" ", "_")
        err = NotFound(message) if exc.status == 404 else BadRequest(message, status=exc.status, code=code)
        log.get("ROUTER").warning("Rejected request", request_id=rid, path=request.path, status=exc.status, detail=exc.reason)
        response = _error(err, rid, request.path)
    except RouterError as exc:
        response = _error(exc, rid, request.path)
    except Exception:
        log.get("ROUTER").exception("Unhandled error", request_id=rid, path=request.path, status=500)
        response = _error(RouterError("Internal error in llm-router; see its log for this request id."), rid,
                          request.path)
    if not response.prepared:
        if "x-request-id" not in response.headers:
            response.headers["x-request-id"] = rid
        if grant is not None and "Access-Control-Allow-Origin" not in response.headers:
            response.headers.update(cors_grant(grant))
    return response


def _endpoint(name: str) -> Handler:
    async def handle(request: web.Request) -> web.StreamResponse:
        return await request.app[PROXY].handle(request, name)

    handle.__name__ = f"handle_{name}"
    return handle


def _model_entries(app: web.Application) -> list[dict[str, Any]]:
    """Every name a client can ask for by name: model groups, aliases, exact matches."""
    config = app[PROXY].config
    seen: dict[str, str] = {}
    for name, deps in config.groups.items():
        seen[name] = deps[0].provider
    for alias, deps in config.aliases.items():
        seen.setdefault(alias, deps[0].provider)
    for name, spec in config.mappings.exact_matches.items():
        seen.setdefault(name, spec.provider)
    created = int(app[STARTED])
    return [{"id": name, "object": "model", "created": created, "owned_by": provider} for name, provider in seen.items()]


async def list_models(request: web.Request) -> web.Response:
    """The models the caller's key may use."""
    key = request.get(CLIENT_KEY)
    return _json({"object": "list", "data": [m for m in _model_entries(request.app) if key is None or key.allows(m["id"])]})


async def get_model(request: web.Request) -> web.Response:
    model = request.match_info["model"]
    key = request.get(CLIENT_KEY)
    for item in _model_entries(request.app):
        if item["id"] == model:
            if key is not None and not key.allows(model):
                raise PermissionDenied(f"The key `{key.name}` may not use the model `{model}`.", param="model")
            return _json(item)
    raise NotFound(f"The model `{model}` does not exist.")


async def liveliness(request: web.Request) -> web.Response:
    return _json("I'm alive!")


async def readiness(request: web.Request) -> web.Response:
    config = request.app[PROXY].config
    return _json({"status": "healthy", "version": __version__, "deployments": len(config.deployments),
                  "uptime_s": round(time.time() - request.app[STARTED], 1)})


async def health(request: web.Request) -> web.Response:
    """Per-deployment status: a live probe of every backend server plus our counters."""
    config = request.app[PROXY].config
    proxy = request.app[PROXY]
    await request.app[MONITOR]["monitor"].probe_all()  # a fresh round (or the one under way)
    rows = health_rows(config.all_deployments(), proxy.state)
    healthy = [r for r in rows if r["healthy"]]
    unhealthy = [r for r in rows if not r["healthy"]]
    out = {"healthy_count": len(healthy), "unhealthy_count": len(unhealthy),
           "healthy_endpoints": healthy, "unhealthy_endpoints": unhealthy}
    if config.disabled:  # configured, never served (a provider we do not speak): listed apart, with the reason
        out.update(disabled_count=len(config.disabled), disabled_endpoints=disabled_rows(config.disabled))
    out["queue"] = proxy.state.admission.snapshot()  # requests waiting for a slot, by class and key
    return _json(out)


def facts_from_query(query: Any) -> RequestFacts:
    """``/router/explain`` parameters: model, capability, stream, batch_size, endpoint,
    and ``header=Name: value`` (repeatable, like curl's -H)."""
    headers = {}
    for h in query.getall("header", []):
        name, _, value = h.partition(":")
        headers[name.strip().lower()] = value.strip()
    try:
        batch = int(query.get("batch_size", "1"))
    except ValueError:
        raise BadRequest("batch_size must be an integer.", param="batch_size") from None
    endpoint = query.get("endpoint", "chat")
    if endpoint not in ("chat", "completions", "embeddings") and endpoint not in doors.DOORS:
        raise BadRequest(f"endpoint must be chat, completions, embeddings or a front door's ({', '.join(doors.DOORS)}).",
                         param="endpoint")
    return RequestFacts(model=query.get("model") or None, endpoint=endpoint,
                        stream=query.get("stream", "").lower() in ("1", "true", "yes"), batch_size=batch,
                        capability=query.get("capability") or headers.pop("x-capability", None), headers=headers,
                        session=query.get("session") or None)


async def explain(request: web.Request) -> web.Response:
    """What the router would do with a request, without sending anything. ``POST`` takes
    the request's own body (and headers: X-Capability, a session's): cache-aware routing
    then sees its prompt, as the proxy would."""
    proxy = request.app[PROXY]
    facts = facts_from_query(request.query)
    body: dict[str, Any] | None = None
    if request.method == "POST":
        try:
            body = orjson.loads(await request.read())
        except orjson.JSONDecodeError as exc:
            raise BadRequest(f"The body is not valid JSON: {exc}.") from None
        if not isinstance(body, dict) or not isinstance(body.get("model", ""), str) or \
                not isinstance(body.get("n", 1), int):
            raise BadRequest("The body must be a JSON object, the request you would send (model a string, n an integer).")
        door = doors.DOORS.get(facts.endpoint)
        facts = proxy.facts(request, facts.endpoint, body, proxy.engine, door, request.get(CLIENT_KEY))
    if facts.model is None and facts.capability is None:
        raise BadRequest("Give model= (and/or capability=).", param="model")
    decision = proxy.engine.decide(facts, proxy.state)
    if decision is None:
        disabled = proxy.config.disabled_reason(facts.model)
        raise NotFound(f"No route for model `{facts.model}`" + (f": disabled, {disabled}." if disabled else "."))
    out = decision.explain()
    out["priority"] = _explain_priority(request, proxy, decision, body)
    return _json(out)


def _explain_priority(request: web.Request, proxy: Proxy, decision: Any, body: dict[str, Any] | None) -> dict[str, Any]:
    """The class the request would get and why (``?key=NAME``: as that key would send it;
    the priority headers, as ``header=`` or the explain request's own, and the body's
    ``priority`` / ``metadata.priority``), and whether it would wait for a slot now."""
    config = proxy.config
    settings = config.router.priority
    name = request.query.get("key")
    key = None
    if name is not None:
        key = next((k for k in config.api_keys if k.name == name), None)
        if key is None:
            raise BadRequest(f"No key named `{name[:64]}` is configured.", param="key")
    headers = {h.partition(":")[0].strip().lower(): h.partition(":")[2].strip() for h in request.query.getall("header", [])}
    for h in PRIORITY_HEADERS:
        if h in request.headers:
            headers.setdefault(h, request.headers[h])
    asked = asked_of(headers, body)
    found = classify(settings, key.name, key.priority, key.max_priority, asked) if key is not None \
        else classify(settings, None, None, None, asked)
    if found is None:
        raise BadRequest(f"Unknown priority {str(asked[1])[:64]!r} in the {asked[0]}." if asked else "Unknown priority.",
                         param="priority", code="invalid_priority")
    rank, why = found
    deps = decision.candidates or decision.last_resort
    would_wait = bool(deps) and not any(proxy.state.room(d, rank) for d in deps)
    ahead = sum(proxy.state.admission.waiting(d.id) for d in deps)
    return {"class": settings.classes[rank], "why": why, "would_wait": would_wait, "waiting_for_these": ahead,
            "classes": list(settings.classes)}


async def metrics(request: web.Request) -> web.Response:
    """Prometheus text format; the deployment state gauges are brought up to date first
    (a cooldown ends by time, not by an event)."""
    proxy = request.app[PROXY]
    m = proxy.metrics
    m.states(proxy.config.all_deployments(), proxy.config.groups, proxy.state, time.time())
    m.flush()  # on the loop, where the metrics are written...
    body = await asyncio.get_running_loop().run_in_executor(None, m.sample_and_generate)  # .../proc and the text, off it
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


async def router_stats(request: web.Request) -> web.Response:
    return _json(request.app[PROXY].stats.snapshot())


async def _http_clients(app: web.Application) -> AsyncIterator[None]:
    """The connections to the backends: the request pool, the probes' session, and
    the probes' sessions for unix sockets."""
    proxy = app[PROXY]
    config = proxy.config
    # No global cap, a cap per backend server: one stuck backend can hold at most its
    # own connections and never starve the others (aiohttp's default is 100 in total).
    connector = aiohttp.TCPConnector(limit=0, limit_per_host=config.router.max_connections_per_backend,
                                     keepalive_timeout=30, ttl_dns_cache=300)
    proxy.session = aiohttp.ClientSession(connector=connector, skip_auto_headers=("User-Agent",),
                                          timeout=aiohttp.ClientTimeout(total=None))  # probes and warm-ups
    app[MONITOR]["unix"] = UnixSessions()  # probes of backends on unix sockets
    proxy.loop = asyncio.get_running_loop()
    proxy.pool = Pool(limit=config.router.max_connections_per_backend)  # the requests themselves
    proxy.pool.on_resend = proxy.resent
    try:
        yield
    finally:
        await proxy.session.close()
        await app[MONITOR]["unix"].close()
        await proxy.pool.close()


async def _sharing(app: web.Application) -> AsyncIterator[None]:
    """State shared with other instances through Redis, when configured."""
    proxy = app[PROXY]
    config = proxy.config
    url = redis_url(config.router)
    if url:
        share = RedisShare(url, proxy.state, config.all_deployments(), config.router.redis_key_prefix, config.router.redis_password)
        share.limits = proxy.limits
        share.shares = proxy.state.admission.shares
        share.on_health = proxy.metrics.sharing
        proxy.metrics.sharing(False)  # until the first sync round works
        await share.start()
        proxy.state.share = share
        log.get("SHARED").info("Sharing state through Redis", redis=_redact(url), prefix=config.router.redis_key_prefix)
    try:
        yield
    finally:
        if proxy.state.share is not None:
            await proxy.state.share.stop()
            proxy.state.share = None


async def _responses(app: web.Application) -> AsyncIterator[None]:
    """The response cache, and the proxy's own background work (warm-ups): ended
    before the connections they use."""
    proxy = app[PROXY]
    proxy.cache = make_cache(proxy.config)
    try:
        yield
    finally:
        await proxy.close()


async def _health_monitor(app: web.Application) -> AsyncIterator[None]:
    _start_monitor(app)
    try:
        yield
    finally:
        await _stop_monitor(app)


async def _process_metrics(app: web.Application) -> AsyncIterator[None]:
    """A worker's own /proc sampler (multiprocess mode)."""
    proxy = app[PROXY]
    proxy.metrics.start()
    try:
        yield
    finally:
        await proxy.metrics.stop()


def make_cache(config: Config) -> Cache | None:
    c = config.cache
    if not c.enabled:
        return None
    if c.type == "redis" and c.url:
        return RedisCache(c.url, c.password, c.namespace, c.ttl, c.max_entry_bytes)
    return LocalCache(c.ttl, c.max_bytes, c.max_entry_bytes)


_SECRET_PARAM_PARTS = ("pass", "pwd", "user", "auth", "token", "secret", "cred", "key")


def _redact(url: str) -> str:
    """A Redis URL (redis, rediss, unix) without its credentials, for logs: the password
    of ``user:pw@`` (a lone ``token@`` entirely), and the value of every query parameter
    whose name looks like a credential (``password``, ``username``, ``auth``, ``token``,
    ...: any name containing pass, pwd, user, auth, token, secret, cred or key)."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparseable Redis URL>"
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, _, host = netloc.rpartition("@")  # the last @: a password may contain one
        user, colon, _ = userinfo.partition(":")
        netloc = (f"{user}:***" if colon else "***") + "@" + host
    query = "&".join(
        f"{item.partition('=')[0]}=***" if any(w in unquote_plus(item.partition("=")[0]).lower() for w in _SECRET_PARAM_PARTS)
        else item for item in parts.query.split("&")) if parts.query else ""
    fragment = "***" if parts.fragment else ""
    return parts._replace(netloc=netloc, query=query, fragment=fragment).geturl()


def _start_monitor(app: web.Application) -> None:
    proxy = app[PROXY]
    config = proxy.config
    monitor = Monitor(proxy.session, config.all_deployments(), proxy.state,
                      interval=config.router.monitor_interval,
                      warm_timeout=max(config.mappings.warm_check_timeout_ms, 1) / 1000, on_transition=functools.partial(transition, proxy),
                      unix_sessions=app[MONITOR]["unix"])
    app[MONITOR]["monitor"] = monitor
    app[MONITOR]["task"] = asyncio.create_task(monitor.run())


async def _stop_monitor(app: web.Application) -> None:
    task = app[MONITOR].pop("task", None)
    if task is not None:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await app[MONITOR]["monitor"].stop_round()


async def reload_config(app: web.Application, snapshot: str | None = None, generation: int | None = None) -> tuple[bool, str]:
    """Load both files again (``snapshot``: their bytes as the supervisor read them, see
    ``router.workers``) and switch to them atomically. An invalid configuration is
    refused and the old one keeps serving; requests in flight finish on the
    configuration they started with; runtime state of unchanged deployments is kept."""
    async with app[RELOADING]:  # two at once each stopped the one monitor and started their own: one leaked
        return await _reload(app, snapshot, generation)


async def _reload(app: web.Application, snapshot: str | None, generation: int | None) -> tuple[bool, str]:
    proxy = app[PROXY]
    old = proxy.config
    logger = log.get("CONFIG")

    def load() -> Config:
        if snapshot is None:
            return load_config(old.file, old.mappings_file)
        from router.workers import read_snapshot

        return load_config(old.file, old.mappings_file, files=read_snapshot(snapshot))

    try:
        new = await asyncio.get_running_loop().run_in_executor(None, load)
    except ConfigError as exc:
        for issue in exc.issues:
            logger.error(f"Reload refused: {issue}")
        return False, "\n".join(map(str, exc.issues))
    proxy.routing = Routing.build(new)
    proxy.state.policy = new.health_policy()
    proxy.state.admission.configure(new.router.priority)
    for d in new.all_deployments():  # a limit raised, a reservation dropped: the waiters get the room now
        if d.id in proxy.state.admission.by_dep:
            proxy.state.dispatch(d)
    if proxy.state.share is not None:
        proxy.state.share.ids = sorted({d.id for d in new.all_deployments()})
    if new.cache != old.cache:
        if proxy.cache is not None:
            await proxy.cache.close()
        proxy.cache = make_cache(new)
    await _stop_monitor(app)
    _start_monitor(app)
    for w in new.warnings:
        logger.warning(str(w))
    proxy.metrics.reloaded(generation)
    logger.info("Configuration reloaded", config=new.file, summary=new.summary())
    return True, new.summary()


async def reload(request: web.Request) -> web.Response:
    link = request.app.get(SUPERVISOR_LINK)
    if link is not None:  # --workers: every worker reloads, not just the one that got this request
        return await _reload_all(link)
    ok, detail = await reload_config(request.app)
    if not ok:
        raise BadRequest(f"The new configuration is invalid; the old one keeps serving.\n{detail}", code="invalid_config")
    return _json({"status": "reloaded", "summary": detail})


async def _reload_all(link: Any) -> web.Response:
    """200 once every worker has switched; 400 (with the file:line problems) when every
    worker refused the file; 503 when some did not switch (or did not answer in time)."""
    rows = await link.reload_all()
    if rows is None:
        raise RouterError("The supervisor did not answer the reload request; the workers may serve different "
                          "configurations. Send SIGHUP to the supervisor, or restart.", status=503, code="reload_incomplete")
    if rows and all(r["ok"] for r in rows):
        return _json({"status": "reloaded", "summary": rows[0]["detail"], "workers": len(rows)})
    if rows and all(r["refused"] for r in rows):
        raise BadRequest(f"The new configuration is invalid; the old one keeps serving.\n{rows[0]['detail']}",
                         code="invalid_config")
    done = sum(r["ok"] for r in rows)
    problems = "; ".join(f"worker {r['worker']}: {r['detail']}" for r in rows if not r["ok"])
    raise RouterError(f"The configuration was reloaded in {done} of {len(rows)} workers ({problems}); the workers may "
                      "serve different configurations.", status=503, code="reload_incomplete")


def create_app(config: Config) -> web.Application:
    app = web.Application(middlewares=[errors_middleware], client_max_size=int(config.limits.max_request_size_mb * 1024 * 1024))
    app[STARTED] = time.time()
    app[RELOADING] = asyncio.Lock()
    app[MONITOR] = {}
    app[PROXY] = Proxy(config, Engine(config), None, StateTable(config.health_policy()))  # session set at start-up
    app[PROXY].state.admission.configure(config.router.priority)
    # One context per resource: started in this order, ended in the reverse one, each
    # ended even when a later one failed to start.
    app.cleanup_ctx.extend([_http_clients, _sharing, _responses, _health_monitor, _process_metrics])
    for prefix in ("/v1", ""):
        app.router.add_post(f"{prefix}/chat/completions", _endpoint("chat"))
        app.router.add_post(f"{prefix}/completions", _endpoint("completions"))
        app.router.add_post(f"{prefix}/embeddings", _endpoint("embeddings"))
        app.router.add_get(f"{prefix}/models", list_models)
        app.router.add_get(f"{prefix}/models/{{model:.+}}", get_model)
    # front doors (router.doors): Anthropic Messages, OpenAI Responses, rerank, Ollama's API
    for path, name in (("/v1/messages", "messages"), ("/v1/messages/count_tokens", "count_tokens"),
                       ("/anthropic/v1/messages", "messages"), ("/anthropic/v1/messages/count_tokens", "count_tokens"),
                       ("/v1/responses", "responses"), ("/responses", "responses"),
                       ("/v1/rerank", "rerank"), ("/rerank", "rerank"),
                       ("/api/chat", "ollama_chat"), ("/api/generate", "ollama_generate"),
                       ("/api/embed", "ollama_embed"), ("/api/embeddings", "ollama_embeddings")):
        app.router.add_post(path, _endpoint(name))
    ollama_api.add_routes(app, PROXY, STARTED)
    app.router.add_get("/health/liveliness", liveliness)
    app.router.add_get("/health/liveness", liveliness)
    app.router.add_get("/health/readiness", readiness)
    app.router.add_get("/health", health)
    app.router.add_get("/router/explain", explain)
    app.router.add_post("/router/explain", explain)
    app.router.add_get("/router/stats", router_stats)
    app.router.add_get("/metrics", metrics)
    app.router.add_post("/router/reload", reload)
    ui.add_routes(app, PROXY)
    openapi.add_routes(app)
    return app
