"""The floor: a bare aiohttp reverse proxy (one ClientSession, the body streamed back).

    .venv/bin/python bench/passthrough.py --upstream http://127.0.0.1:9000 --port 9001

Forwards every request's method, path, body and Content-Type to --upstream and
streams the answer back: no routing, no parsing, no logging. Whatever llm-router
adds on top of this is the cost of being a router rather than a pipe.
"""

from __future__ import annotations

import argparse

import aiohttp
from aiohttp import web

HOP = {"content-length", "transfer-encoding", "connection", "keep-alive", "content-encoding"}


def make_app(upstream: str) -> web.Application:
    app = web.Application()

    async def session_ctx(app: web.Application):  # one pooled session for the whole process
        app["session"] = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0), auto_decompress=False,
                                               timeout=aiohttp.ClientTimeout(total=None))
        yield
        await app["session"].close()

    async def proxy(request: web.Request) -> web.StreamResponse:
        body = await request.read()
        headers = {"Content-Type": request.headers.get("Content-Type", "application/json")}
        async with app["session"].request(request.method, upstream + request.path_qs, data=body, headers=headers) as up:
            out_headers = {k: v for k, v in up.headers.items() if k.lower() not in HOP}
            if up.headers.get("Content-Type", "").startswith("text/event-stream"):
                resp = web.StreamResponse(status=up.status, headers=out_headers)
                await resp.prepare(request)
                async for chunk in up.content.iter_any():
                    await resp.write(chunk)
                await resp.write_eof()
                return resp
            return web.Response(status=up.status, body=await up.read(), headers=out_headers)

    app.cleanup_ctx.append(session_ctx)
    app.router.add_route("*", "/{tail:.*}", proxy)
    return app


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--upstream", required=True, help="e.g. http://127.0.0.1:9000 (paths are appended as received)")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    args = ap.parse_args()
    web.run_app(make_app(args.upstream.rstrip("/")), host=args.host, port=args.port, print=None, access_log=None,
                handler_cancellation=True, backlog=4096)


if __name__ == "__main__":
    main()
