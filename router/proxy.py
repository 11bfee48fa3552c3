"""The hot path: request in → deployment chosen → bytes streamed back.

``Proxy.handle`` parses and checks the body, asks the engine for candidates and
tries them in order (``router.upstream`` does one attempt). A failure before
the first byte reaches the client moves on to the next candidate, then to the
fallbacks, with retry rounds and backoff inside the request's deadline; a
client error (4xx) is passed through at once. Every attempt updates the
deployment's counters and health; the one ``[ROUTER]`` line per request is
logged in ``finally``.
"""

from __future__ import annotations

import asyncio
import random
import time
import itertools
import os
from dataclasses import dataclass, field, replace
from typing import Any

import aiohttp
import orjson
from aiohttp import web

from router import log
from router.access import Access, RateLimits
from router.config import ApiKey, Config
from router.domain import Deployment, RequestFacts, RouteDecision
from router.errors import (
    BadRequest,
    ModelNotFound,
    PermissionDenied,
    RouterError,
    UpstreamRateLimited,
)
from router.health import Transition
from router.plan import AttemptPlan, Backoff, Failed, Fallbacks, Try, Waited, WaitForSlot
from router.probes import warm_up
from router.providers import ADAPTERS
from router.providers.base import Context
from router.routing.engine import ROUTE_LABELS, Engine
from router.state import StateTable
from router.stats import RecentDecisions, RoutingStats
from router.cache import Cache, Entry, cache_control, cache_key, scope_of
from router.metrics import STATES, Metrics, model_group
from router.routing.strategies.shuffle import shuffle_weights
from router.h1 import Pool, Target
from router.upstream import SSE_HEADERS, Attempt, Call, call
from router.validate import parse_body

REQUEST_ID = web.RequestKey("request_id", str)
CLIENT_KEY = web.RequestKey("client_key", object)  # the caller's ApiKey, None where no key is needed
CORS_ORIGIN = web.RequestKey("cors_origin", str)  # the allowed cross-origin page this answer is granted to (router.app)
CORS_EXPOSE = "x-request-id, x-router-deployment, x-router-provider, x-router-route, x-router-attempts, " \
              "x-router-fallback, x-router-overhead-ms, retry-after"


def cors_grant(origin: str) -> dict[str, str]:
    """The headers that let an allowed page read an answer (``router.app.web_guard``)."""
    return {"Access-Control-Allow-Origin": origin, "Access-Control-Expose-Headers": CORS_EXPOSE, "Vary": "Origin"}


def _granted(request: web.Request, headers: dict[str, str]) -> dict[str, str]:
    """``headers`` plus the CORS grant of an answer the handler sends itself (a stream);
    the middleware adds it to the others. Only pages send ``Origin``: one lookup else."""
    if "Origin" in request.headers and CORS_ORIGIN in request:
        headers.update(cors_grant(request[CORS_ORIGIN]))
    return headers
RETRY_BASE_DELAY = 0.1  # seconds before the first retry round (doubling, with jitter)
DEFAULT_NUM_RETRIES = 2  # LiteLLM's default
LOGGED_BODY_LIMIT = 4096  # bytes of a request body --log-bodies puts in the log line


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


async def _read_body(request: web.Request, timeout: float) -> bytes:
    """The whole body within ``timeout`` (a client that trickles it, or never ends a
    chunked body, gets a 408 instead of holding a handler forever)."""
    try:
        if request.content.is_eof():  # all of it arrived with the head (the usual case): no timer needed
            return await request.read()
        async with asyncio.timeout(timeout):
            return await request.read()
    except web.HTTPRequestEntityTooLarge as exc:
        raise BadRequest(f"Request body too large: {exc.text}", status=413, code="request_too_large") from None
    except TimeoutError:
        raise BadRequest(f"The request body did not arrive within {timeout:g} s.", status=408, code="request_timeout") from None


def too_deep(raw: bytes, value: Any, limit: int) -> bool:
    """Is ``value`` (parsed from ``raw``) nested deeper than ``limit``? Counting the
    brackets answers most requests without a walk."""
    if raw.count(b"[") + raw.count(b"{") <= limit:
        return False
    stack = [(value, 1)]
    while stack:
        v, depth = stack.pop()
        if depth > limit:
            return True
        for x in v.values() if type(v) is dict else v:
            if type(x) is dict or type(x) is list:
                stack.append((x, depth + 1))
    return False


@dataclass(frozen=True, slots=True)
class Routing:
    """The configuration a request runs on, start to finish (a reload swaps in a new one)."""

    config: Config
    engine: Engine
    access: Access

    @classmethod
    def build(cls, config: Config) -> Routing:
        return cls(config, Engine(config), Access(config))


@dataclass(slots=True)
class Outcome:
    """What one request did, for its log line and headers."""

    status: int = 0
    error: RouterError | None = None
    client_gone: bool = False
    tried: list[Attempt] = field(default_factory=list)
    cache: str | None = None  # x-router-cache: hit | miss | skip (None: no cache configured)
    body: dict[str, Any] | None = None  # kept only with --log-bodies
    capture: bool = False  # keep the response for the cache
    started: float = 0.0  # perf_counter() at arrival
    rid: str = ""  # the request id
    waited: float = 0.0  # seconds spent waiting: failed attempts' upstream time, backoff, queueing for a slot

    @property
    def last(self) -> Attempt | None:
        return self.tried[-1] if self.tried else None


class Proxy:
    def __init__(self, config: Config, engine: Engine, session: aiohttp.ClientSession | None, state: StateTable,
                 stats: RoutingStats | None = None) -> None:
        self.routing = Routing(config, engine, Access(config))
        self.session = session  # aiohttp's, for probes and warm-ups
        self.pool: Pool | None = None  # router.h1's, for requests (set at start-up)
        self.loop: asyncio.AbstractEventLoop | None = None  # the app's loop (set at start-up)
        self.state = state
        self.stats = stats or RoutingStats()
        self.metrics = Metrics()
        self.log_bodies = False  # --log-bodies: request bodies in the ROUTER line (off: no message contents in logs)
        self.limits = RateLimits()  # requests per minute per key and in total
        self.recent = RecentDecisions()  # for the status page
        self.log = log.Lines("ROUTER")  # one line per request: the lean path
        self._warming: dict[str, asyncio.Task[None]] = {}  # deployment id -> its background warm-up
        self._background: set[asyncio.Task[None]] = set()  # cache writes under way
        self.cache: Cache | None = None  # set at start-up when litellm_settings.cache is on

    @property
    def config(self) -> Config:
        return self.routing.config

    @property
    def engine(self) -> Engine:
        return self.routing.engine

    def facts(self, request: web.Request, endpoint: str, body: dict[str, Any], engine: Engine) -> RequestFacts:
        """What the engine may look at: model, stream, batch size, the rule headers."""
        prompt = body.get("prompt")
        batch = max(body.get("n") or 1, len(prompt) if isinstance(prompt, list) and prompt and not isinstance(prompt[0], int) else 1)
        headers = {h: request.headers[h] for h in engine.header_names if h in request.headers}
        return RequestFacts(model=body.get("model"), endpoint=endpoint, stream=body.get("stream") is True,
                            batch_size=batch, capability=request.headers.get("x-capability"), headers=headers)

    def decide(self, engine: Engine, facts: RequestFacts) -> RouteDecision | None:
        start = time.perf_counter()
        try:
            decision = engine.decide(facts, self.state)
        finally:
            elapsed = time.perf_counter() - start
        first = (decision.candidates or decision.last_resort or (None,))[0] if decision else None
        self.stats.record(elapsed, decision.resolved if decision else None, decision.route if decision else None,
                          first.provider if first else None)
        self.metrics.decided(elapsed, decision)
        return decision

    async def handle(self, request: web.Request, endpoint: str) -> web.StreamResponse:
        start = time.monotonic()
        routing = self.routing  # this request finishes on the configuration it started with
        rid = request_id(request)
        decision: RouteDecision | None = None
        outcome = Outcome(started=time.perf_counter(), rid=rid)
        model = "?"
        try:
            limits = routing.config.limits
            key: ApiKey | None = request.get(CLIENT_KEY)  # type: ignore[assignment]
            self.limits.admit(key, limits.global_rpm_limit)
            raw = await _read_body(request, limits.client_read_timeout)
            body = parse_body(endpoint, raw, model_optional="x-capability" in request.headers,
                              max_messages=limits.max_messages, max_items=limits.max_input_items)
            if too_deep(raw, body, limits.max_json_depth):
                raise BadRequest(f"The JSON body is nested deeper than {limits.max_json_depth} levels.", code="json_too_deep")
            facts = self.facts(request, endpoint, body, routing.engine)
            if self.log_bodies:
                outcome.body = body
            model = facts.model or f"capability:{facts.capability}"
            decision = self.decide(routing.engine, facts)
            if key is not None and key.models is not None:
                decision = self._permitted(routing, key, facts, decision, model)
            if decision is None:
                raise ModelNotFound(f"The model `{model}` does not exist: no model_list entry, alias, exact match, pattern, capability, size rule or default provider routes it.", param="model")
            if routing.config.router.debug_router:
                for step in decision.trace:
                    self.log.info(f"trace: {step}", request_id=rid, model=model)
            for cold in decision.warm_up:
                self._warm_up(cold, decision.upstream_name(cold))
            read, write = cache_control(request.headers, body)  # also drops LiteLLM's "cache" field
            cache = self.cache if routing.config.cache.enabled else None
            ckey = cache_key(decision.model, endpoint, facts.stream, body, scope_of(key, routing.config.cache.scope)) \
                if cache is not None and (read or write) else None
            if ckey is not None and read:
                entry = await cache.get(ckey)
                if entry is not None and key is not None and key.models is not None and \
                        not _may_reuse(key, entry, decision, routing.config):
                    entry = None  # stored from a deployment this key may not use (a tenant-mate's fallback): a miss
                if entry is not None:
                    outcome.cache, outcome.status = "hit", 200
                    return await self._from_cache(request, entry, facts.stream, rid)
                self.stats.cache_misses += 1
            outcome.cache = None if cache is None else "miss" if ckey is not None and read else "skip"
            outcome.capture = write and ckey is not None
            response = await self._serve(request, endpoint, body, facts, decision, routing, outcome, key)
            if write and ckey is not None:
                self._store(cache, ckey, response, outcome)
            return response
        except RouterError as exc:
            outcome.error, outcome.status = exc, exc.status
            headers = {"x-request-id": rid, **exc.headers()}
            if decision is not None and outcome.tried:
                headers.update(_route_headers(decision, outcome.tried))
            response = web.Response(body=exc.to_bytes(), status=exc.status, content_type="application/json", headers=headers)
            if exc.status == 408:
                response.force_close()  # the rest of that body will never be read
            return response
        except asyncio.CancelledError:
            outcome.client_gone = True  # aiohttp cancels the handler when the client disconnects
            raise
        except Exception:  # a bug of ours: logged once with its traceback, an OpenAI-shaped 500 to the client
            self.log.exception("Internal error", request_id=rid, model=model)
            err = RouterError("Internal error in llm-router; see its log for this request id.")
            outcome.error, outcome.status = err, 500
            return web.Response(body=err.to_bytes(), status=500, content_type="application/json", headers={"x-request-id": rid})
        finally:
            self._log(rid, model, endpoint, decision, outcome, time.monotonic() - start)

    def _permitted(self, routing: Routing, key: ApiKey, facts: RequestFacts, decision: RouteDecision | None,
                   model: str) -> RouteDecision:
        """The decision without the deployments ``key`` may not use (``Access.may_use``);
        a 403 when none is left. The name the request routed by (its model, or the
        capability of a capability route) covers what it resolved to, not the fallbacks."""
        denied = PermissionDenied(f"The key `{key.name}` may not use the model `{model}`.", param="model")
        if decision is None:
            raise denied  # a name that routes nowhere: 403 too, nothing revealed
        asked = decision.matched if decision.resolved == "capability" else facts.model
        skipped: list[str] = []

        def keep(deps: tuple[Deployment, ...]) -> tuple[Deployment, ...]:
            kept = tuple(d for d in deps if Access.may_use(key, d, decision.upstream_name(d), asked))
            skipped.extend(d.id for d in deps if d not in kept)
            return kept

        candidates, last_resort = keep(decision.candidates), keep(decision.last_resort)
        if not candidates and not last_resort:
            raise denied
        if not skipped:
            return decision
        return replace(decision, candidates=candidates, last_resort=last_resort,
                       warm_up=tuple(d for d in decision.warm_up if d in candidates),
                       model=facts.model or (candidates or last_resort)[0].model_name,
                       trace=decision.trace + (f"access: key {key.name!r} may not use {', '.join(dict.fromkeys(skipped))}: skipped",))

    # -- attempts and fallbacks -----------------------------------------------------------------

    async def _serve(self, request: web.Request, endpoint: str, body: dict[str, Any], facts: RequestFacts,
                     decision: RouteDecision, routing: Routing, outcome: Outcome,
                     key: ApiKey | None = None) -> web.StreamResponse:
        """Run the request's ``AttemptPlan``: try, wait for a slot, back off, until an
        answer reaches the client or the plan gives up. Returns that answer."""
        loop = self.loop or asyncio.get_running_loop()
        config = routing.config
        deadline = loop.time() + config.request_timeout
        retries = config.router.num_retries

        def fallbacks(failed: set[str], context_overflow: bool) -> Fallbacks:
            fb = routing.engine.fallbacks(decision, facts, self.state, failed, context_overflow=context_overflow)
            self._trace(routing, fb.trace, request)
            return Fallbacks(self._permitted_fallbacks(routing, key, facts, fb.entries, request),
                             fb.retry_attempts, fb.retry_delay_ms)

        plan = AttemptPlan(decision.model, [(d, decision.upstream_name(d)) for d in decision.candidates],
                           [(d, decision.upstream_name(d)) for d in decision.last_resort], fallbacks, self, deadline,
                           config.router.queue_timeout, DEFAULT_NUM_RETRIES if retries is None else retries,
                           RETRY_BASE_DELAY, _jitter)
        step = plan.next(loop.time())
        while True:
            if type(step) is Try:
                if step.after is not None:
                    self._fallback_triggered(step.after, step.deployment, outcome.rid)
                try:
                    return await self._attempt(request, endpoint, body, decision, step.deployment, step.upstream,
                                               loop, deadline, outcome)
                except RouterError as exc:
                    step = plan.next(loop.time(), Failed(exc))
            elif type(step) is WaitForSlot:
                queued = time.perf_counter()
                freed = await self._wait_for_slot(step.deployments, step.timeout)
                outcome.waited += time.perf_counter() - queued
                step = plan.next(loop.time(), Waited(freed))
            elif type(step) is Backoff:
                await asyncio.sleep(step.seconds)
                outcome.waited += step.seconds
                step = plan.next(loop.time())
            else:
                raise step.error

    def _permitted_fallbacks(self, routing: Routing, key: ApiKey | None, facts: RequestFacts,
                             entries: list[tuple[Deployment, str]], request: web.Request) -> list[tuple[Deployment, str]]:
        """The fallbacks ``key`` may use; the others are skipped (and traced)."""
        if key is None or key.models is None:
            return entries
        kept = [(d, u) for d, u in entries if Access.may_use(key, d, u, facts.model if u == facts.model else None)]
        denied = list(dict.fromkeys(d.id for d, u in entries if (d, u) not in kept))
        if denied:
            self._trace(routing, [f"access: key {key.name!r} may not use fallback {', '.join(denied)}: skipped"], request)
        return kept

    def _fallback_triggered(self, after: tuple[Deployment, RouterError], dep: Deployment, rid: str) -> None:
        prev, error = after
        self.log.warning(f"Fallback triggered: {prev.provider} -> {dep.provider}", request_id=rid,
                         from_deployment=prev.id, to_deployment=dep.id, reason=error.error_class)
        self.metrics.add(self.metrics.child(self.metrics.fallbacks, prev.provider, dep.provider))

    # -- router.plan.View: what the plan may ask of the deployments' state

    def has_capacity(self, dep: Deployment) -> bool:
        return self.state[dep.id].has_capacity(dep)

    def ready(self, dep: Deployment, first: bool, last_resort: bool) -> bool:
        """May ``dep`` take an attempt now (capacity aside)? The decision's first pick was
        just checked by the engine; a last resort is tried even though it is cooling down."""
        return first or last_resort or (self.state.available(dep) and not
                                        (self.config.router.enable_pre_call_checks and self.state.server_down(dep)))

    def cooldown_left(self, dep: Deployment) -> float:
        return self.state[dep.id].health.cooldown_until - time.time()

    async def _wait_for_slot(self, deployments: tuple[Deployment, ...], timeout: float) -> bool:
        """Wait until one of ``deployments`` finishes a request; False on timeout."""
        if timeout <= 0:
            return False
        waits = [asyncio.ensure_future(self.state[d.id].slot_freed().wait()) for d in deployments]
        try:
            done, _ = await asyncio.wait(waits, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
            return bool(done)
        finally:
            for w in waits:
                w.cancel()

    async def _attempt(self, request: web.Request, endpoint: str, body: dict[str, Any], decision: RouteDecision,
                       dep: Deployment, upstream: str, loop: asyncio.AbstractEventLoop, deadline: float,
                       outcome: Outcome) -> web.StreamResponse:
        attempt = Attempt(dep)
        outcome.tried.append(attempt)
        url, payload = ADAPTERS[dep.wire].upstream_request(endpoint, body, dep, upstream)
        stream = endpoint != "embeddings" and body.get("stream") is True
        options = body.get("stream_options")
        include_usage = isinstance(options, dict) and bool(options.get("include_usage"))
        rid = outcome.rid
        headers = {"Content-Type": "application/json", "x-request-id": rid}
        if dep.api_key:
            headers["Authorization"] = f"Bearer {dep.api_key}"
        response_headers = _granted(request, {"x-request-id": rid, **_route_headers(decision, outcome.tried)})
        if outcome.cache is not None:
            response_headers["x-router-cache"] = outcome.cache
        if outcome.capture and stream:
            attempt.capture, attempt.capture_limit = bytearray(), self.config.cache.max_entry_bytes
        if ADAPTERS[dep.wire].rewrites:  # a response id and timestamp only where the adapter writes the responses
            prefix = "chatcmpl-" if endpoint == "chat" else "cmpl-" if endpoint == "completions" else "emb-"
            ctx = Context(decision.model, prefix + new_id(), int(time.time()), include_usage)
        else:
            ctx = Context(decision.model, "", 0, include_usage)
        c = Call(request, endpoint, url, payload, headers, response_headers, stream, ctx, deadline, loop,
                 lambda msg: self.log.exception(msg, request_id=rid), outcome.started, outcome.waited)
        # From the pick on, every exit goes through the finally below, which releases
        # what the pick took (a half-open trial) whatever the outcome.
        health = self.state[dep.id].health
        trial_before = health.trial_in_flight
        self._transition(dep, self.state.picked(dep))
        trial = health.trial_in_flight and not trial_before  # this attempt is the half-open trial
        self.state.started(dep)
        in_flight = self.metrics.child(self.metrics.in_flight, dep.id)
        self.metrics.add(in_flight)
        started = time.monotonic()
        error: RouterError | None = None
        try:
            response = await call(self.pool, c, attempt)
            outcome.status = attempt.status
            error = attempt.error
            outcome.error = error
            outcome.client_gone = attempt.client_gone
            return response
        except asyncio.CancelledError:
            attempt.client_gone = outcome.client_gone = True
            raise
        except RouterError as exc:
            error = attempt.error = exc
            raise
        except Exception:
            error = attempt.error = RouterError("internal error")
            raise
        finally:
            self.metrics.add(in_flight, -1)
            if attempt.overhead is None:
                outcome.waited += attempt.upstream  # it failed: its wait was not ours
            else:
                self.metrics.observe(self.metrics.overhead, attempt.overhead)
            if error is not None:
                self.metrics.add(self.metrics.child(self.metrics.upstream_errors, dep.id, error.error_class))
            if attempt.prompt_tokens:
                self.metrics.add(self.metrics.child(self.metrics.tokens, dep.id, "in"), attempt.prompt_tokens)
            if attempt.tokens - attempt.prompt_tokens > 0:
                self.metrics.add(self.metrics.child(self.metrics.tokens, dep.id, "out"), attempt.tokens - attempt.prompt_tokens)
            self.state.finished(dep, f"{error.error_class}: {error.message}" if error else None, abandoned=attempt.client_gone,
                                stream=stream, ttft=attempt.ttft, latency=time.monotonic() - started, tokens=attempt.tokens)
            if error is not None and error.counts:
                retry_after = error.retry_after if isinstance(error, UpstreamRateLimited) else None
                self._transition(dep, self.state.failed(dep, f"{error.error_class}: {error.message}",
                                                        rate_limited=isinstance(error, UpstreamRateLimited), retry_after=retry_after,
                                                        unreachable=error.unreachable))
            elif error is None and not attempt.client_gone:
                self._transition(dep, self.state.succeeded(dep))
                self.state.loaded(dep, upstream)  # it served, so its model is loaded now
            elif trial:  # no verdict (client gone, a 4xx passed through, model not found, a bug): the next request tries
                self.state.released(dep)

    def resent(self, target: Target) -> None:
        """router.h1 sent a request a second time (a kept connection closed under it)."""
        server = target.host_header
        self.metrics.add(self.metrics.child(self.metrics.resends, server))
        self.log.debug("Resent a request on a new connection: the kept one was closed by the server before it "
                       "read the request", server=server)

    def _transition(self, dep: Deployment, t: Transition | None) -> None:
        if t is None:
            return
        for name in STATES:
            self.metrics.set(self.metrics.child(self.metrics.state, dep.id, name), 1 if name == t.new.value else 0)
        fields: dict[str, Any] = {"deployment": dep.id, "reason": t.reason}
        if t.until is not None:
            fields["for_s"] = round(t.until - time.time(), 1)
        self.log.warning(f"Deployment {dep.id} ({dep.provider}): {t.old.value} -> {t.new.value}", **fields)

    def _trace(self, routing: Routing, lines: list[str], request: web.Request) -> None:
        if routing.config.router.debug_router:
            for line in lines:
                self.log.info(f"trace: {line}", request_id=request_id(request))

    # -- response cache ---------------------------------------------------------------------------------

    async def _from_cache(self, request: web.Request, entry: Entry, stream: bool, rid: str) -> web.StreamResponse:
        self.stats.cache_hits += 1
        headers = {**entry.headers, "x-request-id": rid, "x-router-cache": "hit"}
        if not stream:
            return web.Response(body=entry.body, status=200, content_type="application/json", headers=headers)
        out = web.StreamResponse(status=200, headers=_granted(request, {**SSE_HEADERS, **headers}))
        await out.prepare(request)
        await out.write(entry.body)
        await out.write_eof()
        return out

    def _store(self, cache: Cache, key: str, response: web.StreamResponse, outcome: Outcome) -> None:
        """Keep a complete, successful answer (in the background: never delays the client)."""
        last = outcome.last
        if outcome.error is not None or outcome.client_gone or outcome.status != 200 or last is None:
            return
        body = last.capture if isinstance(response, web.StreamResponse) and not isinstance(response, web.Response) \
            else response.body
        if not isinstance(body, (bytes, bytearray)) or not body:
            return
        headers = {str(k): v for k, v in response.headers.items() if k.startswith("x-router-") and k != "x-router-cache"}
        task = asyncio.create_task(cache.set(key, Entry(bytes(body), headers)))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    # -- background warm-up ---------------------------------------------------------------------------

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
        await asyncio.gather(*self._warming.values(), *self._background, return_exceptions=True)
        if self.cache is not None:
            await self.cache.close()

    # -- the log line -----------------------------------------------------------------------------------

    def _log(self, rid: str, model: str, endpoint: str, decision: RouteDecision | None, outcome: Outcome, elapsed: float) -> None:
        fields: dict[str, Any] = {"request_id": rid, "endpoint": endpoint, "status": 499 if outcome.client_gone else outcome.status or 499,
                                  "latency_ms": round(elapsed * 1000, 1)}
        last = outcome.last
        err = outcome.error
        self.recent.record(rid, model, decision.route if decision else None, last.deployment.id if last else None,
                           last.deployment.provider if last else None, fields["status"], fields["latency_ms"],
                           len(outcome.tried), fallback=",".join(a.deployment.id for a in outcome.tried) if len(outcome.tried) > 1 else None,
                           error=err.error_class if err else None, cache=outcome.cache)
        if last is not None and last.ttft is not None:
            fields["ttft_ms"] = round(last.ttft * 1000, 1)
        if outcome.cache is not None:
            fields["cache"] = outcome.cache
            self.metrics.add(self.metrics.child(self.metrics.cache, outcome.cache))
        if outcome.body is not None:
            fields["request_body"] = orjson.dumps(outcome.body)[:LOGGED_BODY_LIMIT].decode("utf-8", "replace")
        if outcome.cache == "hit":
            self.log.info(f"Model: {model} -> cache hit", **fields)
            return
        if decision is None or last is None:
            if isinstance(err, ModelNotFound):
                self.log.warning(f"Model: {model} -> no route (404)", **fields)
            else:
                self.log.warning(f"Rejected request for model {model}", error=err.error_class if err else None,
                                 detail=err.message if err else None, **fields)
            return
        dep = last.deployment
        fields["deployment"] = dep.id
        group = model_group(decision, dep)
        self.metrics.answered(group, decision, dep, fields["status"], elapsed, last.ttft)
        if fields["status"] == 200 and len(decision.candidates) > 1:
            weights = shuffle_weights(decision.candidates) if decision.strategy == "simple-shuffle" else None
            self.metrics.split(group, dep, decision.candidates, weights)
        if len(outcome.tried) > 1:
            fields["attempts"] = len(outcome.tried)
            fields["fallback"] = ",".join(a.deployment.id for a in outcome.tried)
        if decision.matched:
            fields["matched"] = decision.matched
        message = f"Model: {model} -> Provider: {dep.provider} ({ROUTE_LABELS[decision.route]})"
        if outcome.client_gone:
            self.log.warning(message, error="ClientDisconnected", **fields)
        elif err is None:
            self.log.info(message, **fields)
        else:
            self.log.warning(message, error=err.error_class, detail=err.message, **fields)


def _may_reuse(key: ApiKey, entry: Entry, decision: RouteDecision, config: Config) -> bool:
    """May ``key`` be handed a cached answer? Only if the deployment that served it is
    one this key may use: among this decision's (already filtered) candidates, or a
    configured deployment the key's own names allow (a fallback it may use too)."""
    served = entry.headers.get("x-router-deployment")
    if any(d.id == served for d in decision.candidates) or any(d.id == served for d in decision.last_resort):
        return True
    dep = config.by_id.get(served or "")
    return dep is not None and not dep.is_dynamic and Access.may_use(key, dep, dep.upstream_model)


def _jitter() -> float:
    """The backoff's random factor."""
    return random.uniform(0.5, 1.5)


def _route_headers(decision: RouteDecision, tried: list[Attempt]) -> dict[str, str]:
    dep = tried[-1].deployment
    return {
        "x-router-deployment": dep.id,
        "x-router-provider": dep.provider,
        "x-router-route": decision.route,
        "x-router-attempts": str(len(tried)),
        "x-router-fallback": ",".join(a.deployment.id for a in tried),
    }

