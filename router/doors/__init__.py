"""Front doors: the client dialects besides OpenAI's, one module each, found
through a registry (like the strategies, the wire adapters and the backend kinds).

``DOORS`` maps a door's name (the ``endpoint`` the proxy is called with) to its
``Door`` (``router.doors.base``). ``adapter(door, deployment)`` is what one attempt
sends and relays through, with the ``router.providers`` adapter protocol:

* ``Native``: the deployment's server speaks the dialect (its kind says so, or
  ``model_info.native_apis``): the body goes to ``door.native_path`` with only the
  model name changed, and the answer comes back unchanged (a stream through the
  door's ``watch``, which only looks for its end and its errors);
* ``Translated``: the door turns the request into an OpenAI one (``door.pivot``),
  the deployment's wire adapter sends it as it sends any OpenAI request (to
  ``/v1/chat/completions``, or to Ollama's ``/api/chat``, ...), and the door turns
  the answer back (a stream through the wire adapter's translator, if any, then the
  door's ``pivot_stream``);
* a door without a pivot (rerank) and a deployment that does not serve it
  natively: ``NotServed``, a retryable error that sends the plan to the next
  candidate without counting against the deployment's health.

The OpenAI endpoints (chat, completions, embeddings) are not doors: they keep the
proxy's own path, untouched.
"""

from __future__ import annotations

import time
from types import MappingProxyType
from typing import Any, Mapping

import orjson

from router.backends.base import NATIVE_API_NAMES, root
from router.doors import anthropic, ollama, rerank, responses
from router.doors.base import Door
from router.domain import Deployment
from router.errors import RouterError, UpstreamError
from router.providers import ADAPTERS
from router.providers.base import Adapter, Context, StreamTranslator

# Each door and the native API name a deployment declares to serve it natively
# (``model_info.native_apis``; the backend kind's ``native_apis`` by default).
_DOORS: tuple[tuple[Door, str], ...] = (
    (anthropic.MESSAGES, "messages"),
    (anthropic.COUNT_TOKENS, "count_tokens"),
    (responses.RESPONSES, "responses"),
    (ollama.CHAT, "ollama"),
    (ollama.GENERATE, "ollama"),
    (ollama.EMBED, "ollama"),
    (ollama.EMBEDDINGS, "ollama"),
    (rerank.RERANK, "rerank"),
)
DOORS: Mapping[str, Door] = MappingProxyType({door.name: door for door, _ in _DOORS})
NATIVE_API: Mapping[str, str] = MappingProxyType({door.name: api for door, api in _DOORS})
assert set(NATIVE_API.values()) <= set(NATIVE_API_NAMES)  # what model_info.native_apis may list


RELEARN_AFTER = 300.0  # seconds a 404 on a native path is believed (the server may be upgraded, or the 404 a proxy's blip)
_LEARNT: dict[tuple[str, str], float] = {}  # (deployment id, api) -> when it answered 404 on the native path


def serves_natively(dep: Deployment, door: Door) -> bool:
    """Does ``dep``'s server speak ``door``'s dialect itself? Its ``model_info.native_apis``
    if declared, else its kind's, less what it proved it does not (``learn_not_native``)."""
    declared = dep.model_info.get("native_apis")
    api = NATIVE_API[door.name]
    if isinstance(declared, (list, tuple)):
        return api in declared
    if api not in dep.backend.native_apis:
        return False
    learnt = _LEARNT.get((dep.id, api)) if _LEARNT else None
    if learnt is not None and time.monotonic() - learnt > RELEARN_AFTER:
        del _LEARNT[(dep.id, api)]  # try the native path again
        return True
    return learnt is None


def learn_not_native(used: Adapter, dep: Deployment, endpoint: str) -> bool:
    """``dep`` answered 404 on a door's native path through ``used``: true (and for the next
    ``RELEARN_AFTER`` seconds this process translates that door's requests to it) when a translation exists and
    the dialect was assumed from its kind (an Ollama older than 0.14 has no /v1/messages),
    not declared."""
    door = DOORS.get(endpoint)
    if door is None or type(used) is not Native or door.pivot is None or "native_apis" in dep.model_info:
        return False
    _LEARNT[(dep.id, NATIVE_API[door.name])] = time.monotonic()
    return True


def _aborted(translator: StreamTranslator | None, exc: RouterError) -> bytes | None:
    """The translator's own end for a stream given up on, where it has one (``abort``)."""
    abort = getattr(translator, "abort", None)
    return abort(exc) if abort is not None else None


class NotServed(RouterError):
    """This deployment's server has no such endpoint and the door cannot translate
    (rerank on Ollama): the plan tries the next candidate; its health is untouched."""

    status = 400
    type = "invalid_request_error"
    code = "endpoint_not_served"
    retryable = True


class Native:
    """Pass-through to a server that speaks the door's dialect."""

    rewrites = True  # the Context carries a fresh id: a native stream's own error events need none, translations do

    def __init__(self, door: Door) -> None:
        self.door = door
        self.stream_type = door.stream_type
        self._stream_prefix = door.stream_type.split(";")[0]

    def upstream_request(self, endpoint: str, body: dict[str, Any], deployment: Deployment, model: str) -> tuple[str, bytes]:
        return root(deployment.api_base) + self.door.native_path, self.door.native_request(body, deployment, model)

    def response_body(self, endpoint: str, raw: bytes, ctx: Context, provider: str) -> bytes:
        return self.door.check_native(raw, provider)

    def is_stream(self, content_type: str) -> bool:
        return content_type.startswith(self._stream_prefix)

    def translator(self, endpoint: str, ctx: Context) -> StreamTranslator | None:
        return self.door.watch(ctx)

    def stream_error(self, exc: RouterError, translator: StreamTranslator | None = None) -> bytes:
        return _aborted(translator, exc) or self.door.error_event(exc)


class Translated:
    """Through the door's OpenAI pivot and the deployment's own wire adapter."""

    rewrites = True

    def __init__(self, door: Door, wire: Adapter) -> None:
        self.door, self.wire = door, wire
        self.stream_type = door.stream_type

    def upstream_request(self, endpoint: str, body: dict[str, Any], deployment: Deployment, model: str) -> tuple[str, bytes]:
        assert self.door.pivot is not None
        return self.wire.upstream_request(self.door.pivot, self.door.to_pivot(body), deployment, model)

    def response_body(self, endpoint: str, raw: bytes, ctx: Context, provider: str) -> bytes:
        assert self.door.pivot is not None
        body = self.wire.response_body(self.door.pivot, raw, ctx, provider)
        try:
            data = orjson.loads(body)
        except orjson.JSONDecodeError:
            raise UpstreamError(f"{provider} answered with a body that is not JSON: {body[:100]!r}") from None
        if not isinstance(data, dict):
            raise UpstreamError(f"{provider} answered with JSON that is not an object: {body[:100]!r}")
        try:
            return orjson.dumps(self.door.from_pivot(data, ctx))
        except (AttributeError, TypeError, ValueError, KeyError, IndexError) as exc:
            raise UpstreamError(f"{provider} answered with an unexpected shape ({type(exc).__name__}: {exc})") from None

    def is_stream(self, content_type: str) -> bool:
        return self.wire.is_stream(content_type)

    def translator(self, endpoint: str, ctx: Context) -> StreamTranslator | None:
        assert self.door.pivot is not None
        outer = self.door.pivot_stream(ctx)
        inner = self.wire.translator(self.door.pivot, ctx)
        return outer if inner is None else Chain(inner, outer)

    def stream_error(self, exc: RouterError, translator: StreamTranslator | None = None) -> bytes:
        return _aborted(translator, exc) or self.door.error_event(exc)


class Unserved:
    """A door without a translation, on a deployment without the native endpoint."""

    rewrites = False

    def __init__(self, door: Door, kind: str) -> None:
        self.door, self.kind = door, kind
        self.stream_type = door.stream_type

    def upstream_request(self, endpoint: str, body: dict[str, Any], deployment: Deployment, model: str) -> tuple[str, bytes]:
        raise NotServed(f"Deployment {deployment.id} ({deployment.kind}) does not serve {self.door.native_path}; "
                        f"declare model_info.native_apis if its server does.")

    def response_body(self, endpoint: str, raw: bytes, ctx: Context, provider: str) -> bytes:
        raise AssertionError("never sent")

    def is_stream(self, content_type: str) -> bool:
        return False

    def translator(self, endpoint: str, ctx: Context) -> StreamTranslator | None:
        return None

    def stream_error(self, exc: RouterError, translator: StreamTranslator | None = None) -> bytes:
        return _aborted(translator, exc) or self.door.error_event(exc)


class Chain:
    """Two stream translators in a row: the wire's (Ollama NDJSON → OpenAI SSE), then the door's."""

    __slots__ = ("inner", "outer")

    def __init__(self, inner: StreamTranslator, outer: StreamTranslator) -> None:
        self.inner, self.outer = inner, outer

    @property
    def finished(self) -> bool:
        return self.outer.finished

    @property
    def failed(self) -> bool:
        return self.outer.failed or self.inner.failed

    @property
    def error(self) -> str:
        return self.outer.error or self.inner.error

    @property
    def usage(self) -> dict[str, int] | None:
        return self.outer.usage or self.inner.usage

    def feed(self, chunk: bytes) -> bytes:
        data = self.inner.feed(chunk)
        return self.outer.feed(data) if data else b""

    def abort(self, exc: RouterError) -> bytes | None:
        return _aborted(self.outer, exc)

    def close(self) -> bytes:
        data = self.inner.close()
        out = self.outer.feed(data) if data and not self.outer.finished else b""
        return out + self.outer.close()


_ADAPTERS: dict[tuple[str, str, bool], Adapter] = {}


def adapter(door: Door, dep: Deployment) -> Adapter:
    """How an attempt of ``door``'s request at ``dep`` is sent and relayed (built once per combination)."""
    native = serves_natively(dep, door)  # (the learnt set is one lookup: cheaper than keeping a cache right)
    key = (door.name, dep.wire, native)
    found = _ADAPTERS.get(key)
    if found is None:
        if native:
            found = Native(door)
        elif door.pivot is None:
            found = Unserved(door, dep.kind)
        else:
            found = Translated(door, ADAPTERS[dep.wire])
        _ADAPTERS[key] = found
    return found


def for_path(path: str) -> Door | None:
    """The door whose dialect an error at ``path`` is written in (401s, 404s, 413s
    answered before the request reaches its handler)."""
    for prefix, door in _ERROR_PATHS:
        if path.startswith(prefix):
            return door
    return None


_ERROR_PATHS: tuple[tuple[str, Door], ...] = (
    ("/v1/messages", anthropic.MESSAGES), ("/anthropic/", anthropic.MESSAGES), ("/api/", ollama.CHAT))

__all__ = ["DOORS", "learn_not_native", "Door", "NotServed", "adapter", "for_path", "serves_natively"]
