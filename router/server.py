"""The HTTP server around the app, hardened against hostile clients.

aiohttp's ``run_app`` has no cap on open connections and answers malformed HTTP
with plain-text errors; here ``Runner`` (an ``AppRunner``) adds:

- a cap on open client connections (``general_settings.max_connections``): one
  more is answered ``503`` (OpenAI-shaped, ``Retry-After: 1``) and closed;
- a read timeout (``client_read_timeout``): a connection must send a complete
  request head within it, from connecting or from its previous response
  (aiohttp's keep-alive timer, which also runs before the first request); the
  body gets the same time in ``router.proxy`` — so a slowloris client is cut off;
- header limits (``max_header_size_kb`` per line, ``max_headers``): ``431``;
- OpenAI-shaped JSON for every error aiohttp produces itself (bad request line,
  invalid headers, a handler crash outside our middleware), logged once.

``run`` is ``run_app`` with this runner: SIGINT/SIGTERM stop it gracefully.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from typing import Any, Callable

import orjson
from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError, LineTooLong
from aiohttp.web_protocol import RequestHandler

from router import log
from router.config import Limits

REFUSE_LINGER = 1.0  # s a refused connection stays half-open so the client reads the 503...
MAX_LINGERING = 64  # ...but no more than this many at once: in a flood they are closed at once


def error_body(message: str, type_: str, code: str) -> bytes:
    return orjson.dumps({"error": {"message": message, "type": type_, "param": None, "code": code}})


_BUSY = error_body("llm-router has too many open connections; retry shortly.", "server_error", "too_many_connections")
REFUSED = (b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nRetry-After: 1\r\n"
           b"Connection: close\r\nContent-Length: " + str(len(_BUSY)).encode() + b"\r\n\r\n" + _BUSY)


class GuardedHandler(RequestHandler):
    """One client connection (aiohttp's protocol), refused when the server is full."""

    refused = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        server: GuardedServer = self._manager  # type: ignore[assignment]
        if server.open_connections >= server.max_connections:
            self.refused = True
            server.refused_connections += 1
            if server.refused_connections == 1 or server.refused_connections % 1000 == 0:
                log.get("SERVER").warning("Connection limit reached: refusing connections with 503",
                                          max_connections=server.max_connections, refused=server.refused_connections)
            transport.write(REFUSED)  # type: ignore[attr-defined]
            if server.lingering >= MAX_LINGERING:
                transport.close()
                return
            with contextlib.suppress(OSError, RuntimeError):
                transport.write_eof()  # type: ignore[attr-defined]
            server.lingering += 1

            def close() -> None:
                server.lingering -= 1
                transport.close()

            asyncio.get_running_loop().call_later(REFUSE_LINGER, close)
            return
        server.open_connections += 1
        super().connection_made(transport)

    def data_received(self, data: bytes) -> None:
        if not self.refused:
            super().data_received(data)

    def connection_lost(self, exc: BaseException | None) -> None:
        if self.refused:
            return
        server = self._manager
        if isinstance(server, GuardedServer):
            server.open_connections -= 1
        super().connection_lost(exc)

    def handle_error(self, request: Any, status: int = 500, exc: BaseException | None = None,
                     message: str | None = None) -> web.StreamResponse:
        """aiohttp's own errors (malformed requests, crashes outside the middleware), as
        OpenAI-shaped JSON; always closes the connection, like aiohttp's."""
        if request.writer.output_size > 0:
            raise ConnectionError("Response is sent already, cannot send another response with the error message")
        if isinstance(exc, LineTooLong):
            status, text, code = 431, "A request header (or the request line) is too large.", "headers_too_large"
        elif isinstance(exc, HttpProcessingError) and status == 400:
            text, code = f"Malformed HTTP request: {exc.message}", "malformed_request"
        elif status >= 500:
            text, code = "Internal error in llm-router.", "internal_error"
        else:
            text, code = message or "Bad request.", "bad_request"
        if status >= 500:
            log.get("SERVER").error("Unhandled server error", status=status,
                                    error=f"{type(exc).__name__}: {exc}" if exc else None)
        else:
            log.get("SERVER").warning("Rejected malformed request", status=status, detail=text[:200])
        resp = web.Response(status=status, body=error_body(text, "invalid_request_error" if status < 500 else "server_error", code),
                            content_type="application/json")
        resp.force_close()
        return resp


class GuardedServer(web.Server):
    """aiohttp's Server, making ``GuardedHandler`` protocols and counting them."""

    max_connections = 1 << 30
    open_connections = 0
    refused_connections = 0
    lingering = 0  # refused connections waiting for the client to read the 503

    def __call__(self) -> RequestHandler:
        return GuardedHandler(self, loop=self._loop, **self._kwargs)


def runner_options(limits: Limits) -> dict[str, Any]:
    """The handler settings from ``limits``; also what tests start the app with."""
    line = int(limits.max_header_size_kb * 1024)
    # auto_decompress off: aiohttp would inflate a gzip/deflate/br body as it arrives, on
    # the event loop, before any check (a bomb); router.app refuses such bodies (415).
    return {"handler_cancellation": True, "access_log": None, "keepalive_timeout": limits.client_read_timeout,
            "max_line_size": line, "max_field_size": line, "max_headers": limits.max_headers,
            "auto_decompress": False}


class Runner(web.AppRunner):
    def __init__(self, app: web.Application, limits: Limits, **kwargs: Any) -> None:
        super().__init__(app, **runner_options(limits), **kwargs)
        self.limits = limits

    async def _make_server(self) -> web.Server:
        server = await super()._make_server()
        # The app's Server, made ours: same object and state, our protocol factory.
        server.__class__ = GuardedServer
        server.max_connections = self.limits.max_connections  # type: ignore[attr-defined]
        return server


def new_event_loop() -> asyncio.AbstractEventLoop:
    """uvloop where it is installed (measured faster: bench/RESULTS.md), unless
    ``LLM_ROUTER_LOOP=asyncio`` asks for the standard loop."""
    if os.environ.get("LLM_ROUTER_LOOP", "uvloop") != "asyncio":
        try:
            import uvloop
        except ImportError:
            pass
        else:
            return uvloop.new_event_loop()
    return asyncio.new_event_loop()


def run(app: web.Application, limits: Limits, host: str, port: int, *, reuse_port: bool | None,
        shutdown_timeout: float, ready: Callable[[], None], backlog: int = 1024, extra_ports: tuple[int, ...] = ()) -> None:
    """Serve until SIGINT/SIGTERM, then drain (``shutdown_timeout``) and clean up.
    ``extra_ports`` serve the same app (``--ollama-port``: for clients that hard-code 11434)."""

    from router.app import BIND_HOST

    app[BIND_HOST] = host  # a keyless router also answers to the name it was bound to

    async def main() -> None:
        runner = Runner(app, limits, handle_signals=True, shutdown_timeout=shutdown_timeout)
        await runner.setup()
        try:
            for p in (port, *extra_ports):
                await web.TCPSite(runner, host, p, reuse_port=reuse_port, backlog=backlog).start()
            ready()
            while True:
                await asyncio.sleep(3600)
        finally:
            await runner.cleanup()

    loop = new_event_loop()
    asyncio.set_event_loop(loop)
    task = loop.create_task(main())
    try:
        loop.run_until_complete(task)
    except (web.GracefulExit, KeyboardInterrupt):
        pass
    finally:
        try:
            if not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    loop.run_until_complete(task)
        finally:
            pending = asyncio.all_tasks(loop)
            for t in pending:
                t.cancel()
            loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()
