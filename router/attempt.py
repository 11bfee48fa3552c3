"""One attempt at one deployment, with everything it must account for.

``run`` builds the upstream request (``router.providers``), hands it to
``router.upstream.call`` and, in one ``finally``, settles what the attempt took and
what it proved: the in-flight gauge, the deployment's counters, its health
(success, failure, or a half-open trial released without a verdict), tokens and
overhead. A failure before the first byte reached the client is raised as a
``RouterError`` for the plan (``router.plan``) to decide on.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Any

from aiohttp import web

from router.accesslog import route_headers
from router.domain import Deployment, RouteDecision
from router.errors import NoSuchEndpoint, RouterError, UpstreamRateLimited
from router.exchange import granted, new_id
from router.health import Transition
from router.metrics import STATES
from router import doors
from router.doors import DOORS
from router.providers import ADAPTERS
from router.providers.base import Context
from router.routing.prefix import CHARS_PER_TOKEN
from router.upstream import Attempt, Call, call

if TYPE_CHECKING:
    from router.proxy import Outcome, Proxy


async def run(proxy: Proxy, request: web.Request, endpoint: str, body: dict[str, Any], decision: RouteDecision,
              dep: Deployment, upstream: str, loop: asyncio.AbstractEventLoop, deadline: float,
              outcome: Outcome) -> web.StreamResponse:
    """Send the request to ``dep`` and relay its answer; the response that reached the client."""
    attempt = Attempt(dep)
    outcome.tried.append(attempt)
    c = _call(proxy, request, endpoint, body, decision, attempt, upstream, loop, deadline, outcome)
    # From the pick on, every exit goes through the finally below, which releases
    # what the pick took (a half-open trial) whatever the outcome.
    state, metrics = proxy.state, proxy.metrics
    health = state[dep.id].health
    trial_before = health.trial_in_flight
    transition(proxy, dep, state.picked(dep))
    trial = health.trial_in_flight and not trial_before  # this attempt is the half-open trial
    state.started(dep)
    in_flight = metrics.child(metrics.in_flight, dep.id)
    metrics.add(in_flight)
    started = time.monotonic()
    error: RouterError | None = None
    try:
        try:
            response = await call(proxy.pool, c, attempt)
        except NoSuchEndpoint:
            if not doors.learn_not_native(c.adapter, dep, endpoint):
                raise
            proxy.log.warning(f"Deployment {dep.id} ({dep.provider}) answered 404 on {DOORS[endpoint].native_path}: "
                              f"its {endpoint} requests are translated for the next {doors.RELEARN_AFTER:.0f} s", deployment=dep.id, endpoint=endpoint)
            c = _call(proxy, request, endpoint, body, decision, attempt, upstream, loop, deadline, outcome)
            response = await call(proxy.pool, c, attempt)
        outcome.status = attempt.status
        error = outcome.error = attempt.error  # a stream's error after its 200
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
        metrics.add(in_flight, -1)
        _settle(proxy, attempt, upstream, error, trial, c.stream, time.monotonic() - started, outcome)
        if error is None and not attempt.client_gone and attempt.status == 200:
            _learn(proxy, decision, attempt, outcome)


def _call(proxy: Proxy, request: web.Request, endpoint: str, body: dict[str, Any], decision: RouteDecision,
          attempt: Attempt, upstream: str, loop: asyncio.AbstractEventLoop, deadline: float, outcome: Outcome) -> Call:
    """The upstream request for ``attempt`` in the deployment's dialect, and the client's headers."""
    dep = attempt.deployment
    door = DOORS.get(endpoint)
    if door is None:  # OpenAI's own endpoints
        if outcome.rank >= 0 and dep.model_info.get("scheduling_policy") == "priority":
            # vLLM --scheduling-policy priority: lower runs first, 0 is its default (our default class)
            body = {**body, "priority": outcome.rank - proxy.config.router.priority.default_rank}
        adapter = ADAPTERS[dep.wire]
        stream = endpoint != "embeddings" and body.get("stream") is True
        options = body.get("stream_options")
        include_usage = isinstance(options, dict) and bool(options.get("include_usage"))
    else:
        adapter = doors.adapter(door, dep)
        stream, include_usage = door.stream(body), True  # a translation needs the usage for its last event
        attempt.via = "native" if type(adapter) is doors.Native else "translated"
    url, payload = adapter.upstream_request(endpoint, body, dep, upstream)
    rid = outcome.rid
    headers = {"Content-Type": "application/json", "x-request-id": rid, **dep.headers}  # its key, in its wire's way
    if attempt.via == "native" and dep.wire == "anthropic":  # an Anthropic client to Anthropic: its API version and betas
        for name in ("anthropic-version", "anthropic-beta"):
            if name in request.headers:
                headers[name] = request.headers[name]
    response_headers = granted(request, {"x-request-id": rid, **route_headers(decision, outcome.tried)})
    if outcome.cache is not None:
        response_headers["x-router-cache"] = outcome.cache
    if outcome.capture and stream:
        attempt.capture, attempt.capture_limit = bytearray(), proxy.config.cache.max_entry_bytes
    if adapter.rewrites:  # a response id and timestamp only where the adapter writes the responses
        prefix = "chatcmpl-" if endpoint == "chat" else "cmpl-" if endpoint == "completions" else \
            "emb-" if door is None else door.id_prefix
        ctx = Context(decision.model, prefix + new_id(), int(time.time()), include_usage)
    else:
        ctx = Context(decision.model, "", 0, include_usage)
    if door is not None and hasattr(door, "context"):  # a door whose answers echo the request (Responses)
        ctx = door.context(ctx, body)
    return Call(request, endpoint, url, payload, headers, response_headers, stream, ctx, adapter, deadline, loop,
                lambda msg: proxy.log.exception(msg, request_id=rid), outcome.started, outcome.waited)


def _settle(proxy: Proxy, attempt: Attempt, upstream: str, error: RouterError | None, trial: bool, stream: bool,
            latency: float, outcome: Outcome) -> None:
    """Account for a finished attempt, whatever ended it."""
    dep, state, metrics = attempt.deployment, proxy.state, proxy.metrics
    if attempt.overhead is None:
        outcome.waited += attempt.upstream  # it failed: its wait was not ours
    else:
        metrics.observe(metrics.overhead, attempt.overhead)
    if error is not None:
        metrics.add(metrics.child(metrics.upstream_errors, dep.id, error.error_class))
    if attempt.prompt_tokens:
        metrics.add(metrics.child(metrics.tokens, dep.id, "in"), attempt.prompt_tokens)
    if attempt.usage is not None and attempt.usage.cached:
        metrics.add(metrics.child(metrics.cached_tokens, dep.id), attempt.usage.cached)
    if attempt.tokens - attempt.prompt_tokens > 0:
        metrics.add(metrics.child(metrics.tokens, dep.id, "out"), attempt.tokens - attempt.prompt_tokens)
    reason = f"{error.error_class}: {error.message}" if error is not None else None
    state.finished(dep, reason, abandoned=attempt.client_gone, stream=stream, ttft=attempt.ttft, latency=latency,
                   tokens=attempt.tokens)
    if error is not None and error.counts:
        limited = isinstance(error, UpstreamRateLimited)
        transition(proxy, dep, state.failed(dep, reason, rate_limited=limited,
                                            retry_after=error.retry_after if limited else None,
                                            unreachable=error.unreachable))
    elif error is None and not attempt.client_gone:
        transition(proxy, dep, state.succeeded(dep))
        state.loaded(dep, upstream)  # it served, so its model is loaded now
    elif trial:  # no verdict (client gone, a 4xx passed through, model not found, a bug): the next request tries
        state.released(dep)


def _learn(proxy: Proxy, decision: RouteDecision, attempt: Attempt, outcome: Outcome) -> None:
    """What a served answer teaches cache-aware routing and session affinity: the server
    now holds this prompt (and, where it reported fewer cached tokens than predicted, had
    evicted older ones); the session is pinned to whoever served it."""
    dep = attempt.deployment
    prompt = decision.prompt
    if prompt is not None:
        # Counts are read from OpenAI-shaped answers only: a front door's (Anthropic, Responses,
        # Ollama) may carry its count elsewhere or not at all; there the index learns by insertion.
        usage = attempt.usage if attempt.via is None else None
        cached = usage.cached if usage is not None else None
        reporting = proxy.state.prefixes.reporting
        if cached is not None:
            reporting.add(dep.id)
        elif usage is not None and usage.prompt and dep.id in reporting:
            cached = 0  # vLLM leaves cached_tokens out when nothing was cached (it said it before: it does report)
        chars = None
        if cached is not None:
            chars = round(cached * prompt.chars / usage.prompt) if usage.prompt else round(cached * CHARS_PER_TOKEN)
        note = proxy.state.prefixes.observe(dep.id, prompt, decision.predicted.get(dep.id, 0), chars)
        if note is not None:
            proxy.metrics.add(proxy.metrics.child(proxy.metrics.prefix_evictions, dep.id))
            if proxy.config.router.debug_router:
                proxy.log.info(f"trace: cache: {note}", request_id=outcome.rid)
    if decision.session is not None:
        proxy.state.sessions.set(decision.session, dep.id, time.time() + proxy.config.router.affinity_ttl)


def transition(proxy: Proxy, dep: Deployment, t: Transition | None) -> None:
    """A deployment's health changed: its state gauges and one log line."""
    if t is None:
        return
    metrics = proxy.metrics
    for name in STATES:
        metrics.set(metrics.child(metrics.state, dep.id, name), 1 if name == t.new.value else 0)
    fields: dict[str, Any] = {"deployment": dep.id, "reason": t.reason}
    if t.until is not None:
        fields["for_s"] = round(t.until - time.time(), 1)
    proxy.log.warning(f"Deployment {dep.id} ({dep.provider}): {t.old.value} -> {t.new.value}", **fields)
