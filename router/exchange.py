"""What the HTTP layer knows about one request, apart from its body: its id, its
caller's key and the CORS grant of its answer. Set by ``router.app``'s middleware,
read by the proxy and the attempt that answers."""

from __future__ import annotations

import itertools
import os

from aiohttp import web

REQUEST_ID = web.RequestKey("request_id", str)
CLIENT_KEY = web.RequestKey("client_key", object)  # the caller's ApiKey, None where no key is needed
CORS_ORIGIN = web.RequestKey("cors_origin", str)  # the allowed cross-origin page this answer is granted to (router.app)
CORS_EXPOSE = "x-request-id, x-router-deployment, x-router-provider, x-router-route, x-router-attempts, " \
              "x-router-fallback, x-router-overhead-ms, x-litellm-response-cost, retry-after"


def cors_grant(origin: str) -> dict[str, str]:
    """The headers that let an allowed page read an answer (``router.app.web_guard``)."""
    return {"Access-Control-Allow-Origin": origin, "Access-Control-Expose-Headers": CORS_EXPOSE, "Vary": "Origin"}


def granted(request: web.Request, headers: dict[str, str]) -> dict[str, str]:
    """``headers`` plus the CORS grant of an answer the handler sends itself (a stream);
    the middleware adds it to the others. Only pages send ``Origin``: one lookup else."""
    if "Origin" in request.headers and CORS_ORIGIN in request:
        headers.update(cors_grant(request[CORS_ORIGIN]))
    return headers


_ID_PREFIX = os.urandom(5).hex()  # per process
_ids = itertools.count(1)


def new_id() -> str:
    """A unique id (32 hex characters, like a uuid4's), without a uuid4's cost on every request:
    random per process, then a counter."""
    return f"{_ID_PREFIX}{next(_ids):022x}"


def assign_request_id(request: web.Request) -> str:
    """Fix the request's id: the client's ``x-request-id`` if it is sane, else a new one
    (the middleware does it first thing, so later reads find it without a miss)."""
    given = request.headers.get("x-request-id", "")
    rid = request[REQUEST_ID] = given if 0 < len(given) <= 128 and given.isprintable() else new_id()
    return rid


def request_id(request: web.Request) -> str:
    """The request's id (assigned on first use)."""
    try:
        return request[REQUEST_ID]
    except KeyError:
        return assign_request_id(request)
