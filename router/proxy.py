"""The hot path: request in → deployment chosen → bytes streamed back.

``Proxy.handle`` parses and checks the body, asks the engine for candidates,
opens the upstream request, waits for the first chunk, then relays chunks as
they come: unchanged for OpenAI-compatible backends, translated for Ollama.
Transport exceptions are turned into ``RouterError``s right where they arise;
accounting and the one ``[ROUTER]`` log line per request happen in ``finally``.
"""

from __future__ import annotations

import asyncio
import re
import time
import uuid
from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson
from aiohttp import web

from router import log
from router.config import Config
from router.domain import Deployment, RequestFacts, RouteDecision
from router.errors import (
    BadRequest,
    CapacityExceeded,
    ModelNotFound,
    RouterError,
    UpstreamError,
    UpstreamTimeout,
    UpstreamUnavailable,
    upstream_error,
)
from router.providers import ADAPTERS
from router.probes import warm_up
from router.providers.ollama import Context, error_event
from router.routing.engine import MAX_MODEL_NAME, ROUTE_LABELS, Engine
from router.state import StateTable
from router.stats import RoutingStats

CONNECT_TIMEOUT = 10.0  # seconds to open a TCP connection; loopback backends refuse or accept at once
POOL_WAIT = 30.0  # seconds a streaming request may wait for a free pooled connection to its backend
ERROR_BODY_LIMIT = 64 * 1024
SSE_HEADERS = {"Content-Type": "text/event-stream; charset=utf-8", "Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


REQUEST_ID = web.RequestKey("request_id", str)


_TOTAL_TOKENS = re.compile(rb'"total_tokens"\s*:\s*(\d+)')


def total_tokens(body: bytes) -> int:
    """``usage.total_tokens`` of a response body, found without decoding it (every
    server puts usage at the end)."""
    m = _TOTAL_TOKENS.search(body, max(0, len(body) - 1024))
    return int(m.group(1)) if m else 0


def request_id(request: web.Request) -> str:
    """The client's ``x-request-id`` if it is sane, else a new one; fixed per request."""
    rid = request.get(REQUEST_ID)
    if rid is None:
        given = request.headers.get("x-request-id", "")
        rid = given if 0 < len(given) <= 128 and given.isprintable() else uuid.uuid4().hex
        request[REQUEST_ID] = rid
    return rid


async def _read_body(request: web.Request) -> bytes:
    try:
        return await request.read()
    except web.HTTPRequestEntityTooLarge as exc:
        raise BadRequest(f"Request body too large: {exc.text}", status=413, code="request_too_large") from None


def parse_body(endpoint: str, raw: bytes, model_optional: bool = False) -> dict[str, Any]:
    """Decode and check the OpenAI request shapes we accept; unknown fields stay.
    ``model_optional``: the request names a capability instead (``X-Capability``)."""
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise BadRequest(f"We could not parse the JSON body of your request: {exc}") from None
    if not isinstance(body, dict):
        raise BadRequest("The request body must be a JSON object.")
    model = body.get("model")
    if model is None or model == "":
        if not model_optional:
            raise BadRequest("You must provide a model parameter (or an X-Capability header).", param="model")
        body.pop("model", None)
    elif not isinstance(model, str):
        raise BadRequest("model must be a string.", param="model")
    elif len(model) > MAX_MODEL_NAME:
        raise BadRequest(f"model must be at most {MAX_MODEL_NAME} characters.", param="model")
    elif not model.isprintable():
        raise BadRequest("model must not contain control characters.", param="model")
    if endpoint == "chat":
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise BadRequest("messages is required and must be a non-empty array.", param="messages")
        for i, m in enumerate(messages):
            if not isinstance(m, dict) or not isinstance(m.get("role"), str):
                raise BadRequest(f"messages[{i}] must be an object with a string role.", param=f"messages[{i}]")
    elif endpoint == "completions":
        if not isinstance(body.get("prompt"), (str, list)):
            raise BadRequest("prompt is required and must be a string or an array.", param="prompt")
    elif endpoint == "embeddings":
        if not isinstance(body.get("input"), (str, list)) or body.get("input") in ("", []):
            raise BadRequest("input is required and must be a string or a non-empty array.", param="input")
    if "stream" in body and body["stream"] is not None and not isinstance(body["stream"], bool):
        raise BadRequest("stream must be a boolean.", param="stream")
    for key, least in (("max_tokens", 0), ("max_completion_tokens", 0), ("n", 1)):
        value = body.get(key)
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < least):
            raise BadRequest(f"{key} must be an integer >= {least}.", param=key)
    for key in ("temperature", "top_p"):
        value = body.get(key)
        if value is not None and (not isinstance(value, (int, float)) or isinstance(value, bool)):
            raise BadRequest(f"{key} must be a number.", param=key)
    return body


@dataclass(slots=True)
class Outcome:
    """What one request did, for the log line (and, later, metrics)."""

    status: int = 0
    ttft: float | None = None
    error: RouterError | None = None
    client_gone: bool = False
    tokens: int = 0  # tokens used, where the response says (for tpm limits)


class Proxy:
    def __init__(self, config: Config, engine: Engine, session: aiohttp.ClientSession | None, state: StateTable,
                 stats: RoutingStats | None = None) -> None:
        self.config = config
        self.engine = engine
        self.session = session
        self.state = state
        self.stats = stats or RoutingStats()
        self.log = log.get("ROUTER")
        self._warming: dict[str, asyncio.Task[None]] = {}  # deployment id -> its background warm-up

    def facts(self, request: web.Request, endpoint: str, body: dict[str, Any]) -> RequestFacts:
        """What the engine may look at: model, stream, batch size, the rule headers."""
        prompt = body.get("prompt")
        batch = max(body.get("n") or 1, len(prompt) if isinstance(prompt, list) and prompt and not isinstance(prompt[0], int) else 1)
        headers = {h: request.headers[h] for h in self.engine.header_names if h in request.headers}
        return RequestFacts(model=body.get("model"), endpoint=endpoint, stream=body.get("stream") is True,
                            batch_size=batch, capability=request.headers.get("x-capability"), headers=headers)

    def decide(self, facts: RequestFacts) -> RouteDecision | None:
        start = time.perf_counter()
        try:
            decision = self.engine.decide(facts, self.state)
        finally:
            elapsed = time.perf_counter() - start
        self.stats.record(elapsed, decision.resolved if decision else None, decision.route if decision else None,
                          decision.candidates[0].provider if decision else None)
        return decision

    async def handle(self, request: web.Request, endpoint: str) -> web.StreamResponse:
        start = time.monotonic()
        rid = request_id(request)
        decision: RouteDecision | None = None
        dep: Deployment | None = None
        outcome = Outcome()
        model = "?"
        try:
            body = parse_body(endpoint, await _read_body(request), model_optional="x-capability" in request.headers)
            facts = self.facts(request, endpoint, body)
            model = facts.model or f"capability:{facts.capability}"
            decision = self.decide(facts)
            if decision is None:
                raise ModelNotFound(f"The model `{model}` does not exist: no model_list entry, alias, exact match, pattern, capability, size rule or default provider routes it.", param="model")
            if self.config.router.debug_router:
                for step in decision.trace:
                    self.log.info(f"trace: {step}", request_id=rid, model=model)
            dep = self._pick(decision)
            self.state.picked(dep)
            for cold in decision.warm_up:
                self._warm_up(cold, decision.upstream_name(cold))
            return await self._forward(request, endpoint, body, decision, dep, outcome)
        except RouterError as exc:
            outcome.error, outcome.status = exc, exc.status
            headers = {"x-request-id": rid, **exc.headers()}
            if decision is not None and dep is not None:
                headers.update(_route_headers(decision, dep))
            return web.Response(body=exc.to_bytes(), status=exc.status, content_type="application/json", headers=headers)
        except asyncio.CancelledError:
            outcome.client_gone = True  # aiohttp cancels the handler when the client disconnects
            raise
        except Exception:  # a bug of ours: logged once with its traceback, an OpenAI-shaped 500 to the client
            self.log.exception("Internal error", request_id=rid, model=model)
            err = RouterError("Internal error in llm-router; see its log for this request id.")
            outcome.error, outcome.status = err, 500
            return web.Response(body=err.to_bytes(), status=500, content_type="application/json", headers={"x-request-id": rid})
        finally:
            self._log(rid, model, endpoint, decision, dep, outcome, time.monotonic() - start)

    def _pick(self, decision: RouteDecision) -> Deployment:
        for dep in decision.candidates:
            if self.state[dep.id].has_capacity(dep):
                return dep
        raise CapacityExceeded(f"All deployments for `{decision.model}` are at their max_parallel_requests; retry shortly.")

    def _warm_up(self, dep: Deployment, model: str) -> None:
        """Load ``model`` on ``dep`` in the background (one at a time per deployment)."""
        if dep.id in self._warming or self.session is None:
            return
        async def load() -> None:
            try:
                if await warm_up(self.session, dep, model):
                    self.state.loaded(dep, model)
                    self.log.info(f"Warmed up {model} on {dep.provider}", deployment=dep.id)
            finally:
                self._warming.pop(dep.id, None)

        self._warming[dep.id] = asyncio.create_task(load())

    async def close(self) -> None:
        for task in list(self._warming.values()):
            task.cancel()
        await asyncio.gather(*self._warming.values(), return_exceptions=True)

    async def _forward(self, request: web.Request, endpoint: str, body: dict[str, Any], decision: RouteDecision,
                       dep: Deployment, outcome: Outcome) -> web.StreamResponse:
        adapter = ADAPTERS[dep.wire]
        url, payload = adapter.upstream_request(endpoint, body, dep, decision.upstream_name(dep))
        stream = endpoint != "embeddings" and body.get("stream") is True
        options = body.get("stream_options")
        include_usage = isinstance(options, dict) and bool(options.get("include_usage"))
        prefix = "chatcmpl-" if endpoint == "chat" else "cmpl-" if endpoint == "completions" else "emb-"
        ctx = Context(decision.model, prefix + uuid.uuid4().hex, int(time.time()), include_usage)
        headers = {"Content-Type": "application/json", "x-request-id": request_id(request)}
        if dep.api_key:
            headers["Authorization"] = f"Bearer {dep.api_key}"
        state = self.state[dep.id]
        state.started()
        started = time.monotonic()
        try:
            if stream:
                return await self._stream(request, url, payload, headers, endpoint, decision, dep, ctx, outcome)
            return await self._complete(url, payload, headers, endpoint, decision, dep, ctx, outcome)
        except asyncio.CancelledError:
            outcome.client_gone = True
            raise
        except RouterError as exc:
            outcome.error = exc
            raise
        except Exception:
            outcome.error = RouterError("internal error")
            raise
        finally:
            err = outcome.error
            state.finished(f"{err.error_class}: {err.message}" if err else None, abandoned=outcome.client_gone,
                           stream=stream, ttft=outcome.ttft, latency=time.monotonic() - started, tokens=outcome.tokens)
            if err is None and outcome.status == 200:
                self.state.loaded(dep, decision.upstream_name(dep))  # it served, so its model is loaded now

    async def _complete(self, url: str, payload: bytes, headers: dict[str, str], endpoint: str, decision: RouteDecision,
                        dep: Deployment, ctx: Context, outcome: Outcome) -> web.Response:
        timeout = aiohttp.ClientTimeout(total=dep.timeout, sock_connect=min(CONNECT_TIMEOUT, dep.timeout or CONNECT_TIMEOUT))
        async with _upstream_errors(dep, timeout.total):
            async with self.session.post(url, data=payload, headers=headers, timeout=timeout) as resp:
                raw = await resp.read()
                if resp.status >= 400:
                    raise upstream_error(resp.status, raw, dep.provider)
        body = ADAPTERS[dep.wire].response_body(endpoint, raw, ctx, dep.provider)
        outcome.status = 200
        outcome.tokens = total_tokens(body)
        return web.Response(body=body, status=200, content_type="application/json",
                            headers={"x-request-id": headers["x-request-id"], **_route_headers(decision, dep)})

    async def _stream(self, request: web.Request, url: str, payload: bytes, headers: dict[str, str], endpoint: str,
                      decision: RouteDecision, dep: Deployment, ctx: Context, outcome: Outcome) -> web.StreamResponse:
        idle = dep.stream_timeout or dep.timeout
        # total=None: a stream may run long; sock_read bounds the silence between chunks
        # (and before the first), connect bounds the wait for a pooled connection.
        timeout = aiohttp.ClientTimeout(total=None, connect=min(POOL_WAIT, idle or POOL_WAIT),
                                        sock_connect=min(CONNECT_TIMEOUT, idle or CONNECT_TIMEOUT), sock_read=idle)
        adapter = ADAPTERS[dep.wire]
        translator = adapter.translator(endpoint, ctx)
        guard = _upstream_errors(dep, idle)
        sent = time.monotonic()
        resp: aiohttp.ClientResponse | None = None
        complete = False
        try:
            # Until the first chunk arrives nothing has reached the client: failures
            # here become ordinary error responses (and, later, fallbacks).
            async with guard:
                resp = await self.session.post(url, data=payload, headers=headers, timeout=timeout)
                if resp.status >= 400:
                    raise upstream_error(resp.status, await resp.content.read(ERROR_BODY_LIMIT), dep.provider)
                if not adapter.is_stream(resp.headers.get("Content-Type", "")):
                    snippet = (await resp.content.read(200)).decode("utf-8", "replace")
                    raise UpstreamError(f"{dep.provider} answered a streaming request with "
                                        f"{resp.headers.get('Content-Type', 'no content type')}: {snippet!r}")
                chunk = await resp.content.readany()
            outcome.ttft = time.monotonic() - sent
            out = web.StreamResponse(status=200, headers={**SSE_HEADERS, "x-request-id": headers["x-request-id"], **_route_headers(decision, dep)})
            await out.prepare(request)
            outcome.status = 200
            # From here on the client has our 200: every failure must end the stream
            # with an error event, never a second response or a silent stop.
            try:
                end = await self._relay(out, resp, chunk, translator, guard, dep, outcome)
                complete = outcome.error is None
            except RouterError as exc:
                end, outcome.error = error_event(exc.message, exc.type, exc.code), exc
            except ConnectionResetError:
                outcome.client_gone = True
                return out
            except Exception:
                self.log.exception("Internal error while relaying a stream", request_id=headers["x-request-id"])
                outcome.error = RouterError("internal error while relaying the stream")
                end = error_event(outcome.error.message)
            try:
                if end:
                    await out.write(end)
                await out.write_eof()
            except ConnectionResetError:
                outcome.client_gone = True
            return out
        finally:
            if resp is not None:
                if complete:
                    resp.release()
                else:
                    resp.close()  # client gone or upstream broken: drop the upstream connection now

    @staticmethod
    async def _relay(out: web.StreamResponse, resp: aiohttp.ClientResponse, chunk: bytes, translator: Any,
                     guard: _upstream_errors, dep: Deployment, outcome: Outcome) -> bytes:
        """Copy chunks until the upstream ends; return the bytes that close the stream."""
        if translator is None:  # OpenAI-compatible: bytes pass through untouched
            tail = b""
            events = 0
            while chunk:
                await out.write(chunk)
                tail = (tail + chunk)[-16:]
                events += chunk.count(b"data:")
                async with guard:
                    chunk = await resp.content.readany()
            outcome.tokens = max(0, events - 3)  # about one token per event, less role, finish and [DONE]
            if b"[DONE]" in tail:
                return b""
            outcome.error = UpstreamError(f"{dep.provider} ended the stream before [DONE]")
            return error_event(outcome.error.message, outcome.error.type, outcome.error.code)
        while chunk:
            data = translator.feed(chunk)
            if data:
                await out.write(data)
            if translator.finished:
                break
            async with guard:
                chunk = await resp.content.readany()
        end = translator.close()
        if translator.usage:
            outcome.tokens = translator.usage["total_tokens"]
        if translator.failed:
            outcome.error = UpstreamError("Ollama stream failed")
        return end

    def _log(self, rid: str, model: str, endpoint: str, decision: RouteDecision | None, dep: Deployment | None,
             outcome: Outcome, elapsed: float) -> None:
        fields: dict[str, Any] = {"request_id": rid, "endpoint": endpoint, "status": outcome.status or 499,
                                  "latency_ms": round(elapsed * 1000, 1)}
        if outcome.ttft is not None:
            fields["ttft_ms"] = round(outcome.ttft * 1000, 1)
        if outcome.client_gone:
            fields["status"] = 499
        if decision is None or dep is None:
            if isinstance(outcome.error, ModelNotFound):
                self.log.warning(f"Model: {model} -> no route (404)", **fields)
            else:
                err = outcome.error
                self.log.warning(f"Rejected request for model {model}", error=err.error_class if err else None,
                                 detail=err.message if err else None, **fields)
            return
        fields["deployment"] = dep.id
        if decision.matched:
            fields["matched"] = decision.matched
        message = f"Model: {model} -> Provider: {dep.provider} ({ROUTE_LABELS[decision.route]})"
        err = outcome.error
        if outcome.client_gone:
            self.log.warning(message, error="ClientDisconnected", **fields)
        elif err is None:
            self.log.info(message, **fields)
        else:
            self.log.warning(message, error=err.error_class, detail=err.message, **fields)


def _route_headers(decision: RouteDecision, dep: Deployment) -> dict[str, str]:
    return {
        "x-router-deployment": dep.id,
        "x-router-provider": dep.provider,
        "x-router-route": decision.route,
        "x-router-attempts": "1",
    }


class _upstream_errors:
    """Translate aiohttp/asyncio failures of one upstream call into RouterErrors."""

    __slots__ = ("dep", "limit")

    def __init__(self, dep: Deployment, limit: float | None) -> None:
        self.dep, self.limit = dep, limit

    async def __aenter__(self) -> None:
        return None

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: Any) -> bool:
        if exc is None or isinstance(exc, (RouterError, asyncio.CancelledError)):
            return False
        where = f"{self.dep.provider} ({self.dep.api_base})"
        if isinstance(exc, (asyncio.TimeoutError, aiohttp.ServerTimeoutError)):
            raise UpstreamTimeout(f"{where} did not answer within {self.limit:g} s" if self.limit else f"{where} timed out") from None
        if isinstance(exc, aiohttp.ClientConnectorError):
            raise UpstreamUnavailable(f"cannot connect to {where}: {exc.os_error.strerror or exc.os_error}") from None
        if isinstance(exc, (aiohttp.ClientPayloadError, aiohttp.ServerDisconnectedError)):
            raise UpstreamError(f"{where} dropped the connection mid-response") from None
        if isinstance(exc, aiohttp.ClientError):
            raise UpstreamError(f"{where}: {type(exc).__name__}: {exc}") from None
        return False
