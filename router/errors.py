"""One error vocabulary: every failure the client can see is a ``RouterError``.

Each class knows its HTTP status, OpenAI error ``type`` and ``code``, and whether
another deployment might succeed where this one failed (``retryable``). aiohttp
errors are translated into these at the edge (``router.proxy``), so the rest of
the code never handles transport exceptions.
"""

from __future__ import annotations

import math
import time
from datetime import timezone
from email.utils import parsedate_to_datetime
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import orjson

if TYPE_CHECKING:
    from router.domain import Deployment

# The longest a backend's Retry-After is believed: a larger value is clamped to this,
# both for the deployment's cooldown and for what the client is told.
MAX_RETRY_AFTER = 3600.0


def retry_after(seconds: float) -> dict[str, str]:
    """``Retry-After`` in whole seconds, rounded up, between 1 and ``MAX_RETRY_AFTER``
    (nan counts as 1)."""
    if not 1 <= seconds <= MAX_RETRY_AFTER:  # also nan and ±inf
        seconds = MAX_RETRY_AFTER if seconds > MAX_RETRY_AFTER else 1
    return {"Retry-After": str(max(1, math.ceil(seconds)))}


class RouterError(Exception):
    status = 500
    type = "api_error"
    code: str | None = None
    retryable = False  # may another attempt (another deployment, a retry) succeed?
    counts = False  # does it count against the deployment's health?
    unreachable = False  # the server could not be reached (refused, connect timeout, reset before any answer)
    attempts: tuple[tuple[str, str, str], ...] = ()  # (deployment id, error class, message) per attempt, when several failed

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None, status: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code
        if status is not None:
            self.status = status

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def to_bytes(self) -> bytes:
        return orjson.dumps(self.body())

    def headers(self) -> dict[str, str]:
        """Extra response headers (``Retry-After`` where it applies)."""
        return {}

    @property
    def error_class(self) -> str:
        """Short label for logs and metrics."""
        return type(self).__name__


class BadRequest(RouterError):
    status = 400
    type = "invalid_request_error"


class AuthenticationError(RouterError):
    status = 401
    type = "authentication_error"
    code = "invalid_api_key"


class PermissionDenied(RouterError):
    """A valid key that may not do this (use that model, reach the admin surface)."""

    status = 403
    type = "permission_error"
    code = "permission_denied"


class RequestRateLimited(RouterError):
    """The client's key (or everyone together) is over its requests-per-minute limit."""

    status = 429
    type = "rate_limit_error"
    code = "rate_limit_exceeded"

    def __init__(self, message: str, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = retry_after

    def headers(self) -> dict[str, str]:
        return retry_after(self.retry_after)


class QueueFull(RequestRateLimited):
    """The request would wait for a slot, but its class's queue is full (router.admission)."""

    code = "queue_full"


class ModelNotFound(RouterError):
    status = 404
    type = "invalid_request_error"
    code = "model_not_found"


class NotFound(RouterError):
    status = 404
    type = "invalid_request_error"
    code = "not_found"


class CapacityExceeded(RouterError):
    """Every candidate deployment is at its ``max_parallel_requests``."""

    status = 429
    type = "rate_limit_error"
    code = "max_parallel_requests"
    retryable = True

    def __init__(self, message: str, retry_after: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after = retry_after  # seconds until a candidate is expected to take requests again

    def headers(self) -> dict[str, str]:
        return retry_after(self.retry_after)


class UpstreamError(RouterError):
    """The backend answered with a server error or something we cannot parse."""

    status = 502
    type = "api_error"
    code = "upstream_error"
    retryable = True
    counts = True


class UpstreamUnavailable(UpstreamError):
    """Could not connect: refused, reset, DNS failure."""

    code = "upstream_unavailable"
    unreachable = True


class UpstreamTimeout(UpstreamError):
    status = 504
    code = "upstream_timeout"


class UpstreamRateLimited(UpstreamError):
    status = 429
    type = "rate_limit_error"
    code = "rate_limited"

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after

    def headers(self) -> dict[str, str]:
        return retry_after(self.retry_after) if self.retry_after is not None else {}


class NoSuchEndpoint(UpstreamError):
    """The server answered 404 for the path, not for the model: a wrong ``api_base``, or
    a server too old for a front door's native path (``router.doors`` then translates)."""


class UpstreamModelNotFound(ModelNotFound):
    """A backend does not have the model: another deployment may, but it says nothing
    about the backend's health (and a client's typo must not cool a backend down)."""

    retryable = True


class UpstreamClientError(RouterError):
    """The backend rejected the request as the client's fault (4xx): passed through,
    never retried. ``raw`` holds the upstream body when it is already OpenAI-shaped."""

    type = "invalid_request_error"

    def __init__(self, message: str, *, status: int, code: str | None = None, raw: bytes | None = None) -> None:
        super().__init__(message, status=status, code=code)
        self.raw = raw

    def to_bytes(self) -> bytes:
        return self.raw if self.raw is not None else super().to_bytes()


class ContextWindowExceeded(UpstreamClientError):
    """The prompt does not fit the backend's context: ``context_window_fallbacks`` apply."""

    code = "context_length_exceeded"


_CONTEXT_WORDS = ("context length", "context window", "maximum context", "context size", "too many tokens",
                  "exceeds the available context", "prompt is too long")


def _retry_after(value: str | None, now: float | None = None) -> float | None:
    """A backend's ``Retry-After`` in seconds, within [0, MAX_RETRY_AFTER]: delta-seconds
    or an HTTP date (seconds from ``now``; a past date is 0). Anything else (garbage,
    negative, nan, inf, a number too large for a float) is absent: the configured rest
    applies. Never raises."""
    if value is None:
        return None
    text = value.strip()
    try:
        seconds = float(text)
    except ValueError:
        try:
            when = parsedate_to_datetime(text)
        except (TypeError, ValueError, IndexError, OverflowError):
            return None
        try:
            # an HTTP date is GMT; a zone-less one is taken as GMT too
            stamp = when.timestamp() if when.tzinfo is not None else when.replace(tzinfo=timezone.utc).timestamp()
        except (ValueError, OverflowError, OSError):
            return None
        seconds = max(0.0, stamp - (time.time() if now is None else now))
    if not 0.0 <= seconds < math.inf:  # nan, inf, negative
        return None
    return min(seconds, MAX_RETRY_AFTER)


def upstream_error(status: int, body: bytes, provider: str, retry_after: str | None = None,
                   secrets: tuple[bytes, ...] = ()) -> RouterError:
    """Turn an upstream error response (any of the servers' shapes) into our error.

    OpenAI shape ``{"error": {...}}`` is kept as is for 4xx; vLLM's flat
    ``{"object": "error", "message": ...}``, Ollama's ``{"error": "text"}``,
    Anthropic's ``{"type": "error", "error": {...}}`` and llama-cpp-python's
    plain-text 500s are wrapped. ``secrets`` (the deployment's own key and
    headers) are blanked out of it: a server that echoes the key it was sent
    ("invalid api key sk-…") must not put it in the client's error, the log or /health.
    """
    for secret in secrets:
        if secret in body:
            body = body.replace(secret, b"[redacted]")
    message, code, openai_shaped = _extract(body)
    if code == "model_not_found" or (status == 404 and "model" in message.lower()):
        return UpstreamModelNotFound(f"{provider}: {message}" if message else f"{provider}: model not found")
    if status == 404:
        return NoSuchEndpoint(f"{provider} has no such endpoint (HTTP 404; check api_base): {message}")
    if status in (401, 403):
        # Our credentials, not the client's: a client must not think its own key is wrong.
        return UpstreamError(f"{provider} rejected llm-router's credentials (HTTP {status}; check api_key): {message}")
    if status in (429, 529):  # 529: Anthropic's "overloaded", which it asks clients to treat as a rate limit
        return UpstreamRateLimited(f"{provider} is {'overloaded' if status == 529 else 'rate limiting'}: {message}",
                                   _retry_after(retry_after))
    if status == 408:
        return UpstreamTimeout(f"{provider} timed out: {message}")
    if 400 <= status < 500 and any(w in message.lower() for w in _CONTEXT_WORDS):
        return ContextWindowExceeded(message, status=status, code="context_length_exceeded", raw=body if openai_shaped else None)
    if 400 <= status < 500:
        return UpstreamClientError(message or f"{provider} rejected the request", status=status, code=code,
                                   raw=body if openai_shaped else None)
    return UpstreamError(f"{provider} returned HTTP {status}: {message}" if message else f"{provider} returned HTTP {status}")


def _extract(body: bytes) -> tuple[str, str | None, bool]:
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        text = body[:500].decode("utf-8", "replace").strip()
        return text, None, False
    if isinstance(data, dict):
        err = data.get("error")
        if isinstance(err, dict):
            code = err.get("code")
            # Anthropic's {"type": "error", "error": {type, message}} is not OpenAI's: wrapped, not relayed
            return str(err.get("message", "")), code if isinstance(code, str) else None, data.get("type") != "error"
        if isinstance(err, str):
            return err, None, False
        if "message" in data:
            code = data.get("code")
            return str(data["message"]), code if isinstance(code, str) else None, False
        if "detail" in data:
            return str(data["detail"]), None, False
    return str(data)[:500], None, False


class RateLimited(RouterError):
    """Every candidate is over its rpm/tpm limit this minute (the router's own limits)."""

    status = 429
    type = "rate_limit_error"
    code = "rate_limited"
    retryable = True

    def __init__(self, message: str, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = retry_after

    def headers(self) -> dict[str, str]:
        return retry_after(self.retry_after)


class NoCapableDeployment(RouterError):
    status = 503
    type = "api_error"
    code = "no_capable_deployment"


def all_attempts_failed(errors: Sequence[tuple[Deployment, RouterError]]) -> RouterError:
    """The error for a request whose every attempt failed (``errors``: deployment and
    error per attempt, in order). It is the last error, so the client sees that one's
    class, status, type, code and ``retryable``, as with LiteLLM; with several attempts
    its message names each one and ``attempts`` keeps them. A 429 carries the smallest
    ``Retry-After`` any rate-limited attempt gave, so a client waits for the first
    deployment to be free, not for none."""
    last = errors[-1][1]
    if len(errors) == 1:
        return last
    last.attempts = tuple((d.id, e.error_class, e.message) for d, e in errors)
    last.message = f"All {len(errors)} attempts failed: " + "; ".join(f"{d.id}: {e.message}" for d, e in errors)
    waits = [e.retry_after for _, e in errors if isinstance(e, UpstreamRateLimited) and e.retry_after is not None]
    if isinstance(last, UpstreamRateLimited) and waits:
        last.retry_after = min(waits)
    return last
