"""``GET /openapi.json``: the OpenAPI 3.1 description of every route, as JSON.

The canonical document is ``router/openapi.yaml``, inside the package (so an
installed router serves it too; ``setup.cfg`` ships it as package data), and
``docs/openapi.yaml`` is a symlink to it. It is read with ``yaml.safe_load`` once,
on first use (in a thread), and kept as encoded JSON; ``info.version`` is this router's version.
The path is open (no key): it describes the interface, nothing of the deployment.
"""

from __future__ import annotations

import asyncio
import functools
from pathlib import Path
from typing import Any

import orjson
import yaml
from aiohttp import web

from router import __version__

SPEC_FILE = Path(__file__).with_name("openapi.yaml")


@functools.cache
def spec() -> dict[str, Any]:
    """The document as data (do not modify: it is shared)."""
    with SPEC_FILE.open(encoding="utf-8") as f:
        data = yaml.safe_load(f)
    data["info"]["version"] = __version__
    return data


@functools.cache
def _encoded() -> bytes:
    return orjson.dumps(spec())


async def openapi_json(request: web.Request) -> web.Response:
    # Off the loop: the first call reads and parses the YAML (tens of ms of blocking work).
    body = await asyncio.get_running_loop().run_in_executor(None, _encoded)
    return web.Response(body=body, content_type="application/json")


def add_routes(app: web.Application) -> None:
    app.router.add_get("/openapi.json", openapi_json)
