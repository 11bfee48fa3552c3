"""The :class:`SimulatedBackend` server: lifecycle, fault hooks, pacing and streaming."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

import orjson
from aiohttp import web

from .core import ClientGone, Faults, ModelMeta, Stats, model_meta
from .doors import make_doors
from .load import Scheduler
from .prefix import Prefill, Prompt, prompt_cache

log = logging.getLogger(__name__)

KINDS: tuple[str, ...] = ("ollama", "vllm", "llama_cpp_python", "llama_cpp_native", "openai", "anthropic")

_REQ_GONE = web.RequestKey("sim_client_gone", bool)
_REQ_DROPPED = web.RequestKey("sim_dropped", bool)
_REQ_CUT = web.RequestKey("sim_cut", bool)
_REQ_BODY: web.RequestKey[Any] = web.RequestKey("sim_body", object)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class _Drop(Exception):
    """Internal: the ``drop_after_chunks`` fault fired."""


class SimulatedBackend:
    """A fake inference server speaking one real server's wire format.

    ``kind`` is one of :data:`KINDS`. ``models`` are the served model names
    (Ollama: the pulled models; vLLM and the hosted Anthropic API: the served names,
    others answer 404; llama.cpp kinds: listed, but any name is served). ``ttft`` is the delay in
    seconds before the first token, ``tokens_per_s`` the generation speed
    (0 = as fast as possible). For Ollama, ``loaded`` models start loaded
    (``/api/ps``); any other model becomes loaded on first use after an extra
    ``load_time`` seconds.

    Extra keyword options: ``embedding_dim`` (16), ``max_model_len`` (vLLM's
    ``max_model_len``, llama-server's per-slot ``n_ctx``; 8192), ``legacy_errors``
    (vLLM < 0.10.1 flat error bodies), ``sse_newline`` (override the SSE line
    terminator), ``version`` (reported by Ollama/vLLM), ``api_key`` (the key the
    hosted Anthropic API wants in ``x-api-key``; ``None``: any key is taken).

    Load: ``max_num_seqs`` (vLLM, default ``None`` = no limit) and ``slots``
    (llama-server's ``--parallel``, default 4 as its "auto" since late 2025;
    ``None`` = no limit) cap how many generation requests run at once; the
    rest wait in arrival order and show as ``vllm:num_requests_waiting`` /
    ``llamacpp:requests_deferred``. :attr:`scheduler` holds the live state.
    ``model_meta`` maps a model name to overrides of what is otherwise derived
    from its size tag (see :func:`~router.simulate.core.model_meta`), e.g.
    ``{"llama3.1:8b": {"parameter_size": "13B", "context_length": 4096}}``.

    Prompt cache (:mod:`router.simulate.prefix`): with ``prefix_cache_tokens`` set,
    the server keeps one prompt cache — an LRU of ``prefix_cache_tokens //
    cache_block_tokens`` blocks of ``cache_block_tokens`` simulated tokens
    (llama-cpp-python: its previous prompt only, whatever the capacity) — and a
    generation request's uncached tokens cost ``uncached / prefill_tokens_per_s``
    seconds of prefill (when that is > 0) before the first token, on top of
    ``ttft``, while the request holds its seat. Its answer reports the cached
    tokens in the kind's native form; :attr:`stats` adds them up. ``None`` (the
    default): no cache model and no prefill delay. The hosted kinds (``openai``,
    ``anthropic``) model no cache.

    ``ttft``, ``tokens_per_s`` and ``prefill_tokens_per_s`` may be changed on a
    running backend; the next request (and the next token of a running stream)
    uses the new values.

    Faults: :attr:`faults` (see :class:`~router.simulate.core.Faults`), plus
    :meth:`pause_listening` / :meth:`resume_listening` to play a killed and
    restarted server (connections refused in between, same port after).
    """

    def __init__(
        self,
        kind: str,
        models: Iterable[str] | None = None,
        *,
        ttft: float = 0.0,
        tokens_per_s: float = 0.0,
        loaded: Iterable[str] = (),
        load_time: float = 0.0,
        embedding_dim: int = 16,
        max_model_len: int = 8192,
        legacy_errors: bool = False,
        sse_newline: str | None = None,
        version: str | None = None,
        max_num_seqs: int | None = None,
        slots: int | None = 4,
        model_meta: dict[str, dict[str, Any]] | None = None,
        api_key: str | None = None,
        prefix_cache_tokens: int | None = None,
        prefill_tokens_per_s: float = 0.0,
        cache_block_tokens: int = 16,
    ) -> None:
        if kind not in KINDS:
            raise ValueError(f"unknown simulator kind {kind!r}; expected one of {KINDS}")
        if cache_block_tokens < 1 or (prefix_cache_tokens is not None and prefix_cache_tokens < 0) \
                or prefill_tokens_per_s < 0:
            raise ValueError("cache_block_tokens must be at least 1; prefix_cache_tokens and "
                             "prefill_tokens_per_s must not be negative")
        self.kind = kind
        self.models: list[str] = list(models or [])
        if not self.models and kind != "ollama":
            self.models = ["sim-model"]
        self.ttft = ttft
        self.tokens_per_s = tokens_per_s
        self.load_time = load_time
        self.embedding_dim = embedding_dim
        self.max_model_len = max_model_len
        self.legacy_errors = legacy_errors
        self.sse_newline = sse_newline
        self.version = version
        self.api_key = api_key
        self.model_meta = dict(model_meta or {})
        capacity = {"vllm": max_num_seqs, "llama_cpp_native": slots}.get(kind)
        if capacity is not None and capacity < 1:
            raise ValueError("max_num_seqs and slots must be at least 1 (or None for no limit)")
        self.scheduler = Scheduler(capacity)
        self.prefill_tokens_per_s = prefill_tokens_per_s
        #: The prompt cache (``None``: no cache model); see :mod:`router.simulate.prefix`.
        self.prefix_cache = prompt_cache(kind, prefix_cache_tokens, cache_block_tokens)
        self.faults = Faults()
        self.stats = Stats()
        self.loaded: dict[str, float] = {}  # ollama: canonical name -> expires at (time.time())
        self.created = int(time.time())
        self._runner: web.AppRunner | None = None
        self._site: web.BaseSite | None = None
        self._inflight: dict[int, web.Request] = {}  # id(request) -> open request (not /__sim/*)
        self._stopping = False
        self.host = "127.0.0.1"
        self.port = 0
        self._api = self._make_api()
        self._doors = make_doors(self, self._api)
        for name in loaded:
            self._api.preload(name)

    def meta(self, name: str) -> ModelMeta:
        """:class:`~router.simulate.core.ModelMeta` of ``name`` (``model_meta`` overrides applied)."""
        override = self.model_meta.get(name)
        if override is None and name.endswith(":latest"):
            override = self.model_meta.get(name[: -len(":latest")])
        return model_meta(name, override)

    def _make_api(self) -> Any:
        if self.kind == "ollama":
            from .ollama import OllamaAPI

            return OllamaAPI(self)
        if self.kind == "anthropic":
            from .anthropic_api import AnthropicAPI

            return AnthropicAPI(self)
        from .openai_compat import OpenAICompatAPI

        return OpenAICompatAPI(self)

    # ------------------------------------------------------------------ lifecycle

    @property
    def base_url(self) -> str:
        """``http://HOST:PORT`` of the started server, or ``unix:///PATH`` on a unix socket
        (an OpenAI-compatible api_base as written: the HTTP paths are ``/v1/...`` on it)."""
        return f"unix://{self.host}" if self.unix else f"http://{self.host}:{self.port}"

    @property
    def unix(self) -> bool:
        """Listening on a unix socket (``host`` is its path)."""
        return self.host.startswith("/")

    def _new_site(self, runner: web.AppRunner, host: str, port: int) -> web.BaseSite:
        return web.UnixSite(runner, host) if host.startswith("/") else web.TCPSite(runner, host, port)

    def make_app(self) -> web.Application:
        """A fresh aiohttp application serving this backend (run it with any runner)."""
        app = web.Application(middlewares=[self._middleware])
        app.router.add_get("/__sim/faults", self._get_faults)
        app.router.add_post("/__sim/faults", self._post_faults)
        app.router.add_get("/__sim/stats", self._get_stats)
        app.router.add_post("/__sim/stats/reset", self._reset_stats)
        self._api.add_routes(app.router)
        for door in self._doors:
            door.add_routes(app.router)
        app.router.add_route("*", "/{tail:.*}", self._api.not_found)
        return app

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> None:
        """Serve on ``host:port`` (``port=0`` picks a free port, see :attr:`port`), or,
        when ``host`` is an absolute path, on a unix socket there (as llama-server's
        ``--host /path.sock`` does; a stale socket file is replaced)."""
        self._stopping = False
        runner = web.AppRunner(self.make_app(), handler_cancellation=True, access_log=None)
        await runner.setup()
        site = self._new_site(runner, host, port)
        try:
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner, self._site = runner, site
        self.host = host
        self.port = 0 if host.startswith("/") else runner.addresses[0][1]

    async def stop(self) -> None:
        """Stop serving (open requests are cut off at once, not counted as disconnects).

        Held requests (``hang``, ``hang_after_chunks``) are cut too, so stopping
        never waits for aiohttp's graceful-shutdown timeout.
        """
        self._stopping = True
        if self._runner is not None:
            runner, self._runner = self._runner, None
            if self._site is not None:
                site, self._site = self._site, None
                await _close_site(site)
            await self._cut_connections(runner)
            await runner.cleanup()
            if self.unix:
                with contextlib.suppress(OSError):
                    os.unlink(self.host)  # Python 3.11's unix server leaves its socket file behind

    @property
    def listening(self) -> bool:
        """Whether the server accepts connections (started and not paused)."""
        return self._site is not None

    async def pause_listening(self) -> None:
        """Play a killed server: close the listening socket and cut every open connection.

        New connections to :attr:`port` are refused until :meth:`resume_listening`.
        Every open connection is aborted, idle keep-alive ones included (so a
        client's connection pool cannot reach the "dead" server) and in-flight
        requests and streams, which the client sees end abruptly (reset / server
        disconnected). Those requests count in ``stats.cut``, not in
        ``stats.disconnects``. Returns once their handlers have finished (at most
        about a second). The application state (faults, stats, loaded models) is kept.
        """
        if self._runner is None:
            raise RuntimeError("the simulated backend is not started")
        if self._site is None:
            return
        site, self._site = self._site, None
        await _close_site(site)  # accepted connections stay open: cut below
        for request in self._inflight.values():
            if not request.get(_REQ_CUT):
                request[_REQ_CUT] = True
                self.stats.cut += 1
        await self._cut_connections(self._runner)

    async def _cut_connections(self, runner: web.AppRunner) -> None:
        """Abort every accepted connection and wait (up to about a second) for the open requests to end.

        Call it after :func:`_close_site`: connections accepted just before then
        register with the server within a loop turn or two, so none escapes.
        """
        server = runner.server
        if server is None:
            return
        for _ in range(4):
            await asyncio.sleep(0)
        for handler in server.connections:
            transport = handler.transport
            if transport is not None:
                transport.abort()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 1.0
        while self._inflight and loop.time() < deadline:  # aborted transports cancel their handlers
            await asyncio.sleep(0.005)

    async def resume_listening(self) -> None:
        """Play the restarted server: listen again on the same host and port.

        The port is re-bound with SO_REUSEADDR (asyncio's default on POSIX, which
        aiohttp keeps), so connections of the previous "life" lingering in
        TIME_WAIT do not block it. Raises ``OSError`` if another process took the
        port in the meantime.
        """
        if self._runner is None:
            raise RuntimeError("the simulated backend is not started")
        if self._site is not None:
            return
        site = self._new_site(self._runner, self.host, self.port)
        await site.start()
        self._site = site

    async def __aenter__(self) -> SimulatedBackend:
        if self._runner is None:
            await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # ------------------------------------------------------------------ pacing

    def first_token_delay(self, extra: float = 0.0) -> float:
        return self.ttft + extra

    def token_interval(self) -> float:
        return 1.0 / self.tokens_per_s if self.tokens_per_s > 0 else 0.0

    def admit(self, prompt: Prompt | None, tokens: int) -> Prefill:
        """A generation request takes its seat: look its prompt up in the cache (touching
        what it hits) and count it in :attr:`stats`. ``prompt`` ``None``: a request the
        cache model ignores (rerank, the hosted kinds' own paths), not counted."""
        if prompt is None:
            return Prefill(tokens)
        cache = self.prefix_cache
        cached, key = cache.lookup(prompt) if cache is not None else (0, None)
        cached = min(cached, tokens)
        self.stats.prompt_tokens += tokens
        self.stats.cached_tokens += cached
        rate = self.prefill_tokens_per_s
        seconds = (tokens - cached) / rate if cache is not None and rate > 0 else 0.0
        return Prefill(tokens, cached, seconds, key)

    def prefilled(self, prefill: Prefill | None) -> None:
        """The prefill is done: the prompt's blocks are now in the cache."""
        if prefill is not None and prefill.key is not None and self.prefix_cache is not None:
            self.prefix_cache.insert(prefill.key)

    async def compute(self, request: web.Request, prefill: Prefill | None, *, extra_delay: float = 0.0,
                      decode: float = 0.0) -> None:
        """Take as long as a non-streamed answer does: the first-token delay (``ttft`` plus
        ``extra_delay``) and the prefill, then ``decode`` seconds for the other tokens."""
        await self.pause(request, self.first_token_delay(extra_delay) + (prefill.seconds if prefill else 0.0))
        self.prefilled(prefill)
        await self.pause(request, decode)

    async def pause(self, request: web.Request, seconds: float) -> None:
        """Sleep, raising :class:`ClientGone` as soon as the client disconnects."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + max(0.0, seconds)
        while True:
            if _client_gone(request):
                raise ClientGone("client disconnected")
            left = deadline - loop.time()
            if left <= 0:
                return
            await asyncio.sleep(min(left, 0.05))

    # ------------------------------------------------------------------ responses

    def json(
        self,
        obj: Any,
        status: int = 200,
        *,
        content_type: str = "application/json",
        headers: dict[str, str] | None = None,
    ) -> web.Response:
        """A JSON response serialised compactly (like Go, nlohmann and FastAPI do)."""
        return web.Response(
            body=orjson.dumps(obj), status=status, headers={"Content-Type": content_type, **(headers or {})}
        )

    async def stream(
        self,
        request: web.Request,
        events: Iterable[tuple[bool | int, bytes]],
        *,
        content_type: str,
        extra_delay: float = 0.0,
        headers_early: bool = True,
        headers: dict[str, str] | None = None,
        prefill: Prefill | None = None,
    ) -> web.StreamResponse:
        """Send pre-encoded ``events`` with simulated timing and the stream faults.

        Each event is ``(is_token, data)``: nothing is sent before the TTFT (plus
        ``extra_delay`` and the ``prefill``'s seconds) has passed, and every token after the first waits one
        token interval. ``is_token`` may be a count instead of a bool, for an
        event a server sends only after generating several tokens (Ollama's whole
        tool call): it waits for all of them. With ``headers_early`` the headers
        go out at once (as Starlette does); otherwise with the first event (as Go
        and llama-server do).
        """
        resp = web.StreamResponse(headers={"Content-Type": content_type, **(headers or {})})
        faulty = self.faults.applies_to(request.path)
        drop_at = self.faults.take_drop() if faulty else None
        hang_at = self.faults.take_hang_after() if faulty else None
        sent = 0
        tokens = 0
        try:
            if headers_early:
                await resp.prepare(request)
            await self.pause(request, self.first_token_delay(extra_delay) + (prefill.seconds if prefill else 0.0))
            self.prefilled(prefill)
            for is_token, data in events:
                weight = int(is_token)
                if weight:
                    await self.pause(request, self.token_interval() * (weight if tokens else weight - 1))
                    tokens += weight
                if drop_at is not None and sent >= drop_at:
                    raise _Drop
                if hang_at is not None and sent >= hang_at:
                    hang_at = None
                    await self._stall(request)
                if not resp.prepared:
                    await resp.prepare(request)
                await resp.write(data)
                sent += 1
        except _Drop:
            await self._drop(request, resp)
        except ConnectionResetError:  # includes ClientGone and aiohttp's ClientConnectionResetError
            request[_REQ_GONE] = True
        return resp

    async def _stall(self, request: web.Request) -> None:
        """The ``hang_after_chunks`` fault: send nothing while it stays set (or until the client leaves)."""
        self.stats.hangs += 1
        while self.faults.hang_after_chunks is not None and self.faults.applies_to(request.path):
            await self.pause(request, 0.02)

    async def _garbage(self, request: web.Request, body: Any) -> web.StreamResponse:
        """The ``garbage`` fault: 200 with what a misconfigured reverse proxy sends instead of the API's answer."""
        self.stats.garbage += 1
        path = request.path
        ndjson = self.kind == "ollama" and path.startswith("/api/")  # Ollama's native API streams NDJSON
        if not isinstance(body, dict):
            streaming = False
        elif ndjson and path in ("/api/chat", "/api/generate"):
            streaming = body.get("stream", True) is not False  # Ollama streams unless told not to
        else:
            streaming = bool(body.get("stream"))
        if not streaming:
            return web.Response(body=GARBAGE_HTML, headers={"Content-Type": "text/html", "Server": "nginx"})
        resp = web.StreamResponse(headers={
            "Content-Type": "application/x-ndjson" if ndjson else "text/event-stream", "Server": "nginx"})
        resp.force_close()  # the proxy closes the connection after the broken stream
        await resp.prepare(request)
        await resp.write(GARBAGE_NDJSON if ndjson else GARBAGE_SSE)
        await resp.write_eof()
        return resp

    async def _drop(self, request: web.Request, resp: web.StreamResponse) -> None:
        request[_REQ_DROPPED] = True
        self.stats.drops += 1
        if not resp.prepared:
            with contextlib.suppress(ConnectionError):
                await resp.prepare(request)
        transport = request.transport
        if transport is None:
            return
        for _ in range(100):  # let the chunks already written reach the client first
            if transport.is_closing() or transport.get_write_buffer_size() == 0:
                break
            await asyncio.sleep(0.005)
        transport.abort()

    # ------------------------------------------------------------------ middleware

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        path = request.path
        if path.startswith("/__sim/"):
            return await handler(request)
        stats = self.stats
        stats.requests[path] += 1
        stats.open += 1
        stats.last_path = path
        stats.last_headers = dict(request.headers)
        self._inflight[id(request)] = request
        try:
            body = await read_json(request)
            if isinstance(body, dict):
                stats.last_body = body
            faults = self.faults
            if faults.applies_to(path):
                if faults.first_byte_delay > 0:
                    await self.pause(request, faults.first_byte_delay)
                if faults.take_hang():
                    stats.hangs += 1
                    while faults.hang and faults.applies_to(path):
                        await self.pause(request, 0.02)
                status = faults.take_status()
                if status is not None:
                    resp = self._error_response(request, status, f"simulated failure (HTTP {status})")
                    resp.headers.update(faults.retry_after_header())
                    return resp
                if faults.take_garbage():
                    return await self._garbage(request, body)
            return await handler(request)
        except ConnectionResetError:
            request[_REQ_GONE] = True
            return web.Response(status=499)  # never reaches the client
        except asyncio.CancelledError:
            request[_REQ_GONE] = True
            raise
        finally:
            stats.open -= 1
            self._inflight.pop(id(request), None)
            if request.get(_REQ_CUT):
                request[_REQ_GONE] = False
            if request.get(_REQ_GONE) and not request.get(_REQ_DROPPED) and not self._stopping:
                stats.disconnects += 1
                stats.disconnected.set()

    def _error_response(self, request: web.Request, status: int, message: str) -> web.Response:
        """An injected error in the shape the server writes on that path (a native door's, or its API's)."""
        door = next((d for d in self._doors if d.owns(request.path)), None)
        return door.error(status, message) if door is not None else self._api.error_response(request, status, message)

    # ------------------------------------------------------------------ /__sim control API

    async def _get_faults(self, request: web.Request) -> web.Response:
        return self.json(self.faults.as_dict())

    async def _post_faults(self, request: web.Request) -> web.Response:
        try:
            data = await request.json(loads=orjson.loads)
            if not isinstance(data, dict):
                raise ValueError("expected a JSON object")
            self.faults.update(data)
        except (ValueError, TypeError) as exc:
            return self.json({"error": str(exc)}, status=400)
        return self.json(self.faults.as_dict())

    def stats_dict(self) -> dict[str, Any]:
        """What ``GET /__sim/stats`` answers: :attr:`stats`, and ``prefix_cache_blocks``, the
        full blocks the prompt cache holds now (``None`` without a cache model)."""
        cache = self.prefix_cache
        return {**self.stats.as_dict(), "prefix_cache_blocks": cache.blocks if cache is not None else None}

    async def _get_stats(self, request: web.Request) -> web.Response:
        return self.json(self.stats_dict())

    async def _reset_stats(self, request: web.Request) -> web.Response:
        self.stats.reset()
        return self.json(self.stats_dict())


async def _close_site(site: web.BaseSite) -> None:
    """Stop a site's listening socket(s) without leaking connections that were being accepted.

    Closing an ``asyncio.Server`` while an accepted connection still waits for its
    transport makes CPython 3.11 drop that socket unclosed (``Server._attach``
    asserts the server is open; the error is swallowed). So stop accepting first,
    let the accepts under way finish, then close.
    """
    server = getattr(site, "_server", None)  # the asyncio.Server (aiohttp keeps it there)
    if server is not None:
        loop = asyncio.get_running_loop()
        for sock in server.sockets:
            loop.remove_reader(sock.fileno())
        for _ in range(4):
            await asyncio.sleep(0)
    await site.stop()


def _client_gone(request: web.Request) -> bool:
    transport = request.transport
    return transport is None or transport.is_closing()


async def read_json(request: web.Request) -> Any:
    """The request body parsed as JSON (cached on the request); ``None`` if empty or invalid."""
    if _REQ_BODY not in request:
        body: Any = None
        if request.body_exists:
            raw = await request.read()
            try:
                body = orjson.loads(raw) if raw else None
            except orjson.JSONDecodeError:
                body = _INVALID
        request[_REQ_BODY] = body
    value = request[_REQ_BODY]
    return None if value is _INVALID else value


def body_is_invalid(request: web.Request) -> bool:
    """Whether the request had a body that is not valid JSON."""
    return request.get(_REQ_BODY) is _INVALID


_INVALID = object()

#: What the ``garbage`` fault answers: a reverse proxy's error page (served with status 200) ...
GARBAGE_HTML = b"<html><body>502 Bad Gateway</body></html>"
#: ... or, to a streaming request, one broken event (SSE) or line (Ollama's NDJSON).
GARBAGE_SSE = b"data: {not json\n\n"
GARBAGE_NDJSON = b"{not json\n"


async def run_simulators(
    specs: list[tuple[str, str, int, list[str]]],
    *,
    ready: asyncio.Event | None = None,
    started: list[SimulatedBackend] | None = None,
    **timing: Any,
) -> None:
    """Start one backend per ``(kind, host, port, models)`` and serve until cancelled.

    ``timing`` (``ttft``, ``tokens_per_s``, ``load_time``, ``prefix_cache_tokens``,
    ``prefill_tokens_per_s``, ``cache_block_tokens``, …) is passed to every
    :class:`SimulatedBackend`. Optionally, the started backends are appended to
    ``started`` and ``ready`` is set once all of them listen.
    """
    backends = [SimulatedBackend(kind, models, **timing) for kind, _host, _port, models in specs]
    try:
        for backend, (_kind, host, port, _models) in zip(backends, specs):
            await backend.start(host, port)
            log.debug("simulated %s backend on %s serving %s", backend.kind, backend.base_url, backend.models)
            if started is not None:
                started.append(backend)
        if ready is not None:
            ready.set()
        await asyncio.Event().wait()
    finally:
        for backend in backends:
            await backend.stop()
