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
from dataclasses import dataclass, field, replace
from typing import Any

import aiohttp
from aiohttp import web

from router import accesslog, attempt, log
from router.accesslog import route_headers
from router.access import Access, RateLimits
from router.config import ApiKey, Config
from router.domain import Deployment, RequestFacts, RouteDecision
from router.admission import QueueFull as FullQueue, Waiter, asked_of, classify, estimate_work, retry_after
from router.errors import (
    BadRequest,
    ModelNotFound,
    PermissionDenied,
    QueueFull,
    RouterError,
)
from router.plan import AttemptPlan, Backoff, Failed, Fallbacks, Try, Waited, WaitForSlot
from router.probes import warm_up
from router.routing.engine import Engine
from router.state import StateTable
from router.stats import RecentDecisions, RoutingStats
from router.cache import Cache, Entry, cache_control, cache_key, scope_of
from router.exchange import CLIENT_KEY, granted, request_id
from router.metrics import Metrics
from router.h1 import Pool, Target
from router.upstream import COST_HEADER, SSE_HEADERS, Attempt
from router.validate import parse_body
from router.doors import DOORS, Door
from router.routing.prefix import prompt_of

# Endpoints whose prompt a backend caches (cache-aware routing renders theirs to block keys)
PROMPTED = frozenset({"chat", "completions", "messages", "responses", "ollama_chat", "ollama_generate"})
# Where a client names its session, in LiteLLM's order (x-litellm-trace-id first), then any
# x-<vendor>-session-id header (Claude Code's x-claude-code-session-id), then the body
SESSION_HEADERS = ("x-litellm-trace-id", "x-litellm-session-id")
MAX_SESSION_ID = 256  # characters; a longer id names no session


def session_of(request: web.Request, body: dict[str, Any]) -> str | None:
    """The session the request names: LiteLLM's headers, a vendor's ``x-*-session-id``,
    LiteLLM's ``metadata.session_id`` or ``litellm_session_id``, OpenAI's ``prompt_cache_key``."""
    found: Any = None
    for name in SESSION_HEADERS:
        found = request.headers.get(name)
        if found:
            break
    else:
        for name, value in request.headers.items():
            if len(name) > 13 and name[:2].lower() == "x-" and name[-11:].lower() == "-session-id" and value:
                found = value
                break
        else:
            metadata = body.get("metadata")
            found = (metadata.get("session_id") if isinstance(metadata, dict) else None) \
                or body.get("litellm_session_id") or body.get("prompt_cache_key")
    if not isinstance(found, str) or not found or len(found) > MAX_SESSION_ID:
        return None
    return found


RETRY_BASE_DELAY = 0.1  # seconds before the first retry round (doubling, with jitter)
DEFAULT_NUM_RETRIES = 2  # LiteLLM's default


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
    spilled: str | None = None  # the spill-over condition that sent it past its busy candidates (router.routing.spill)
    key: ApiKey | None = None  # the caller's key (its name labels the spend), None where none is needed
    rank: int = -1  # its priority class (router.admission); -1 until classified
    size: int = 0  # the request body's bytes (its estimated work, should it wait)
    queued: float = 0.0  # seconds it waited in the admission queue

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

    def facts(self, request: web.Request, endpoint: str, body: dict[str, Any], engine: Engine,
              door: Door | None = None, key: ApiKey | None = None) -> RequestFacts:
        """What the engine may look at: model, stream, batch size, the rule headers; and,
        where cache-aware routing or session affinity is configured, the prompt's block
        keys and the session id."""
        headers = {h: request.headers[h] for h in engine.header_names if h in request.headers}
        blocks = session = caller = None
        if engine.wants_prompt and endpoint in PROMPTED:
            blocks = prompt_of(body)
        if engine.wants_session:
            session = session_of(request, body)
        if engine.wants_caller and key is not None:
            caller = f"key:{key.name}"
        if door is not None:
            return RequestFacts(model=body.get("model"), endpoint=endpoint, stream=door.stream(body),
                                capability=request.headers.get("x-capability"), headers=headers,
                                prompt=blocks, session=session, caller=caller)
        prompt = body.get("prompt")
        batch = max(body.get("n") or 1, len(prompt) if isinstance(prompt, list) and prompt and not isinstance(prompt[0], int) else 1)
        return RequestFacts(model=body.get("model"), endpoint=endpoint, stream=body.get("stream") is True,
                            batch_size=batch, capability=request.headers.get("x-capability"), headers=headers,
                            prompt=blocks, session=session, caller=caller)

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
            key: ApiKey | None = request.get(CLIENT_KEY)  # type: ignore[assignment]
            outcome.key = key
            body, facts = await self._admit(request, endpoint, routing, key, outcome)
            model = facts.model or f"capability:{facts.capability}"
            decision = self._route(routing, key, facts, model, rid)
            return await self._answer(request, endpoint, body, facts, decision, routing, outcome, key)
        except RouterError as exc:
            outcome.error, outcome.status = exc, exc.status
            headers = {"x-request-id": rid, **exc.headers()}
            if decision is not None and outcome.tried:
                headers.update(route_headers(decision, outcome.tried))
            door = DOORS.get(endpoint)
            response = web.Response(body=exc.to_bytes() if door is None else door.error_body(exc), status=exc.status,
                                    content_type="application/json", headers=headers)
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
            door = DOORS.get(endpoint)
            return web.Response(body=err.to_bytes() if door is None else door.error_body(err), status=500,
                                content_type="application/json", headers={"x-request-id": rid})
        finally:
            accesslog.record(self, routing.engine, rid, model, endpoint, decision, outcome, time.monotonic() - start)

    async def _admit(self, request: web.Request, endpoint: str, routing: Routing, key: ApiKey | None,
                     outcome: Outcome) -> tuple[dict[str, Any], RequestFacts]:
        """The request's body, read within the limits and checked, and its facts."""
        limits = routing.config.limits
        self.limits.admit(key, limits.global_rpm_limit)
        raw = await _read_body(request, limits.client_read_timeout)
        door = DOORS.get(endpoint)
        if door is None:
            body = parse_body(endpoint, raw, model_optional="x-capability" in request.headers,
                              max_messages=limits.max_messages, max_items=limits.max_input_items)
        else:
            body = door.parse(raw, limits)
        if too_deep(raw, body, limits.max_json_depth):
            raise BadRequest(f"The JSON body is nested deeper than {limits.max_json_depth} levels.", code="json_too_deep")
        self._classify(request, body, routing, key, outcome, len(raw))
        if self.log_bodies:
            outcome.body = body
        return body, self.facts(request, endpoint, body, routing.engine, door, key)

    @staticmethod
    def _classify(request: web.Request, body: dict[str, Any], routing: Routing, key: ApiKey | None, outcome: Outcome,
                  size: int) -> None:
        """The request's priority class (router.admission.classify). The body's ``priority``
        is the router's: it is taken out (a deployment with ``model_info.scheduling_policy:
        priority`` gets the class instead)."""
        settings = routing.config.router.priority
        asked = asked_of(request.headers, body)
        body.pop("priority", None)
        if key is None:
            found = classify(settings, None, None, None, asked)
        else:
            found = classify(settings, key.name, key.priority, key.max_priority, asked)
        if found is None:
            assert asked is not None
            where = asked[0]
            raise BadRequest(f"Unknown priority {str(asked[1])[:64]!r} in the {where}: use a class "
                             f"({', '.join(settings.classes)}), high, low, or an integer (0 is the highest).",
                             param="priority", code="invalid_priority")
        outcome.rank = found[0]
        outcome.size = size

    def _route(self, routing: Routing, key: ApiKey | None, facts: RequestFacts, model: str, rid: str) -> RouteDecision:
        """The engine's decision, narrowed to what ``key`` may use; its trace logged
        under ``debug_router``, and the warm-ups it asks for started."""
        decision = self.decide(routing.engine, facts)
        if key is not None and key.models is not None:
            decision = self._permitted(routing, key, facts, decision, model)
        if decision is None:
            disabled = routing.config.disabled_reason(facts.model)
            if disabled is not None:
                raise ModelNotFound(f"The model `{model}` is configured but disabled: {disabled}.", param="model")
            raise ModelNotFound(f"The model `{model}` does not exist: no model_list entry, alias, exact match, pattern, capability, size rule or default provider routes it.", param="model")
        if routing.config.router.debug_router:
            for step in decision.trace:
                self.log.info(f"trace: {step}", request_id=rid, model=model)
        for cold in decision.warm_up:
            self._warm_up(cold, decision.upstream_name(cold))
        return decision

    async def _answer(self, request: web.Request, endpoint: str, body: dict[str, Any], facts: RequestFacts,
                      decision: RouteDecision, routing: Routing, outcome: Outcome, key: ApiKey | None) -> web.StreamResponse:
        """From the response cache where it may, else from the deployments (and cached)."""
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
                return await self._from_cache(request, entry, facts.stream, outcome.rid, endpoint)
            self.stats.cache_misses += 1
        outcome.cache = None if cache is None else "miss" if ckey is not None and read else "skip"
        outcome.capture = write and ckey is not None
        response = await self._serve(request, endpoint, body, facts, decision, routing, outcome, key)
        if write and ckey is not None:
            self._store(cache, ckey, response, outcome)
        return response

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
        now = loop.time()
        deadline = now + config.request_timeout
        retries = config.router.num_retries

        def fallbacks(failed: set[str], context_overflow: bool) -> Fallbacks:
            fb = routing.engine.fallbacks(decision, facts, self.state, failed, context_overflow=context_overflow)
            self._trace(routing, fb.trace, request)
            return Fallbacks(self._permitted_fallbacks(routing, key, facts, fb.entries, request),
                             fb.retry_attempts, fb.retry_delay_ms)

        candidates = [(d, decision.upstream_name(d)) for d in decision.candidates]
        spilled = routing.engine.spill(decision, facts, self.state)  # None unless the request's chain can spill
        spill = 0
        if spilled is not None and spilled.entries:
            self._trace(routing, spilled.trace, request)
            entries = self._permitted_fallbacks(routing, key, facts, spilled.entries, request)
            if entries:  # every candidate is too busy: the spill-over targets first, the candidates after
                outcome.spilled = spilled.trace[0].split(" (", 1)[0].removeprefix("spill-over: ")
                if decision.candidates:
                    self.metrics.add(self.metrics.child(self.metrics.spillovers, decision.candidates[0].provider,
                                                        entries[0][0].provider))
                candidates = entries + [c for c in candidates if c not in entries]
                spill = len(entries)
        plan = AttemptPlan(decision.model, candidates,
                           [(d, decision.upstream_name(d)) for d in decision.last_resort] if decision.last_resort else [],
                           fallbacks, self, deadline,
                           config.router.queue_timeout, DEFAULT_NUM_RETRIES if retries is None else retries,
                           RETRY_BASE_DELAY, _jitter, spill, outcome.rank)
        step = plan.next(now)
        grant: Deployment | None = None  # a slot handed to this request while it waited, not yet taken
        try:
            while True:
                if grant is not None:
                    if type(step) is Try and step.deployment is grant:
                        self.state[grant.id].reserved -= 1  # attempt.run takes it (started) before it awaits
                    else:
                        self.state.unreserve(grant)
                    grant = None
                if type(step) is Try:
                    if step.after is not None:
                        self._fallback_triggered(step.after, step.deployment, outcome.rid)
                    try:
                        return await attempt.run(self, request, endpoint, body, decision, step.deployment, step.upstream,
                                                 loop, deadline, outcome)
                    except RouterError as exc:
                        step = plan.next(loop.time(), Failed(exc))
                elif type(step) is WaitForSlot:
                    queued = time.perf_counter()
                    try:
                        grant = await self._wait_for_slot(step.deployments, step.timeout, outcome, request, body)
                    finally:
                        waited = time.perf_counter() - queued
                        outcome.waited += waited
                        outcome.queued += waited
                    step = plan.next(loop.time(), Waited(grant is not None, grant))
                elif type(step) is Backoff:
                    await asyncio.sleep(step.seconds)
                    outcome.waited += step.seconds
                    step = plan.next(loop.time())
                else:
                    raise step.error
        finally:
            if grant is not None:  # cancelled (the client left) between the grant and its attempt
                self.state.unreserve(grant)

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

    def has_capacity(self, dep: Deployment, rank: int) -> bool:
        return self.state.room(dep, rank)

    def ready(self, dep: Deployment, first: bool, last_resort: bool) -> bool:
        """May ``dep`` take an attempt now (capacity aside)? The decision's first pick was
        just checked by the engine; a last resort is tried even though it is cooling down."""
        return first or last_resort or (self.state.available(dep) and not
                                        (self.config.router.enable_pre_call_checks and self.state.server_down(dep)))

    def cooldown_left(self, dep: Deployment) -> float:
        return self.state[dep.id].health.cooldown_until - time.time()

    async def _wait_for_slot(self, deployments: tuple[Deployment, ...], timeout: float, outcome: Outcome,
                             request: web.Request, body: dict[str, Any]) -> Deployment | None:
        """Queue for a slot of one of ``deployments`` (router.admission) until one is handed
        over (that deployment) or ``timeout`` passes (None). A full queue is a 429."""
        if timeout <= 0:
            return None
        state = self.state
        adm = state.admission
        loop = self.loop or asyncio.get_running_loop()
        fut: asyncio.Future[str] = loop.create_future()

        def wake(dep_id: str) -> None:
            fut.set_result(dep_id)

        key = outcome.key
        key_label = key.name if key is not None else "none"
        # whose turn it takes: its key, else the body's user, else the client's address
        if not adm.settings.fairness:
            caller = "all"  # one FIFO per class
        elif key is not None:
            caller = f"key:{key.name}"
        else:
            user = body.get("user")
            caller = f"user:{user[:128]}" if isinstance(user, str) and user else f"addr:{request.remote}"
        limit = body.get("max_tokens") or body.get("max_completion_tokens") or body.get("max_output_tokens")
        w = Waiter(outcome.rank, caller, estimate_work(outcome.size, limit), time.monotonic(), key_label, wake)
        try:
            adm.enqueue(w, frozenset(d.id for d in deployments))
        except FullQueue:
            settings = adm.settings
            cls = settings.classes[min(w.rank, len(settings.classes) - 1)]
            self.metrics.add(self.metrics.child(self.metrics.queue_rejected, cls, "full"))
            holds = [h for h in (state.mean_hold(d) for d in deployments) if h is not None]
            lanes = sum(state.limit(d) or 1 for d in deployments)
            raise QueueFull(f"Too many `{cls}` requests are waiting for `{deployments[0].model_name}` "
                            f"({adm.depth[w.rank]}, the limit of that class); retry later.",
                            retry_after(adm.depth[w.rank], min(holds) if holds else None, lanes)) from None
        by_id = {d.id: d for d in deployments}
        states = [state[d.id] for d in deployments]  # the same objects at the end, whatever a reload did
        for s in states:
            s.waiters += 1  # the queue spill-over conditions read
        cls = adm.settings.classes[min(w.rank, len(adm.settings.classes) - 1)]
        self.metrics.add(self.metrics.child(self.metrics.queue_waiting, cls, key_label))
        granted: str | None = None
        try:
            for d in deployments:  # a slot the plan saw taken may be free by now
                if w.done:
                    break
                state.dispatch(d)
            if not w.done:
                await asyncio.wait((fut,), timeout=timeout)
            granted = w.granted
            if granted is None:
                self.metrics.add(self.metrics.child(self.metrics.queue_rejected, cls, "timeout"))
            return by_id.get(granted) if granted is not None else None
        finally:
            if granted is None:
                if w.granted is not None:  # handed a slot, then cancelled before it could take it
                    state.unreserve(by_id[w.granted])
                else:
                    adm.remove(w)
            for s in states:
                s.waiters -= 1
            self.metrics.add(self.metrics.child(self.metrics.queue_waiting, cls, key_label), -1)
            self.metrics.observe(self.metrics.child(self.metrics.queue_wait, cls, key_label), time.monotonic() - w.since)

    def resent(self, target: Target) -> None:
        """router.h1 sent a request a second time (a kept connection closed under it)."""
        server = target.host_header
        self.metrics.add(self.metrics.child(self.metrics.resends, server))
        self.log.debug("Resent a request on a new connection: the kept one was closed by the server before it "
                       "read the request", server=server)

    def _trace(self, routing: Routing, lines: list[str], request: web.Request) -> None:
        if routing.config.router.debug_router:
            for line in lines:
                self.log.info(f"trace: {line}", request_id=request_id(request))

    # -- response cache ---------------------------------------------------------------------------------

    async def _from_cache(self, request: web.Request, entry: Entry, stream: bool, rid: str,
                          endpoint: str = "chat") -> web.StreamResponse:
        self.stats.cache_hits += 1
        headers = {**entry.headers, "x-request-id": rid, "x-router-cache": "hit"}
        if not stream:
            headers[COST_HEADER] = "0.0"  # no backend was asked
            return web.Response(body=entry.body, status=200, content_type="application/json", headers=headers)
        door = DOORS.get(endpoint)
        stream_headers = SSE_HEADERS if door is None else {**SSE_HEADERS, "Content-Type": door.stream_type}
        out = web.StreamResponse(status=200, headers=granted(request, {**stream_headers, **headers}))
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
