"""What a request leaves behind once it is answered: the one ``[ROUTER]`` line, the
``x-router-*`` headers, the per-request metrics and the status page's recent list.

``record`` runs in ``Proxy.handle``'s ``finally``, once per request, whatever happened.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import orjson

from router.domain import RouteDecision
from router.errors import ModelNotFound
from router.costs import cost, usd, why_unknown
from router.metrics import NO_KEY, model_group
from router.routing.engine import ROUTE_LABELS, Engine
from router.upstream import Attempt

if TYPE_CHECKING:
    from router.proxy import Outcome, Proxy

LOGGED_BODY_LIMIT = 4096  # bytes of a request body --log-bodies puts in the log line


def route_headers(decision: RouteDecision, tried: list[Attempt]) -> dict[str, str]:
    """The ``x-router-*`` headers: which deployment answered, how it was routed, what was tried."""
    dep = tried[-1].deployment
    return {
        "x-router-deployment": dep.id,
        "x-router-provider": dep.provider,
        "x-router-route": decision.route,
        "x-router-attempts": str(len(tried)),
        "x-router-fallback": ",".join(a.deployment.id for a in tried),
    }


def record(proxy: Proxy, engine: Engine, rid: str, model: str, endpoint: str, decision: RouteDecision | None, outcome: Outcome,
           elapsed: float) -> None:
    """Log the request's ``[ROUTER]`` line and count it (status 499: the client left)."""
    status = 499 if outcome.client_gone else outcome.status or 499
    fields: dict[str, Any] = {"request_id": rid, "endpoint": endpoint, "status": status, "latency_ms": round(elapsed * 1000, 1)}
    last = outcome.last
    err = outcome.error
    tried = len(outcome.tried)
    fallback = ",".join(a.deployment.id for a in outcome.tried) if tried > 1 else None
    proxy.recent.record(rid, model, decision.route if decision else None, last.deployment.id if last else None,
                        last.deployment.provider if last else None, status, fields["latency_ms"], tried,
                        fallback=fallback, error=err.error_class if err else None, cache=outcome.cache)
    if last is not None and last.ttft is not None:
        fields["ttft_ms"] = round(last.ttft * 1000, 1)
    if outcome.queued:
        fields["queued_ms"] = round(outcome.queued * 1000, 1)
    settings = proxy.config.router.priority
    if outcome.rank >= 0 and (outcome.rank != settings.default_rank or outcome.queued):
        fields["priority"] = settings.classes[min(outcome.rank, len(settings.classes) - 1)]
    if outcome.cache is not None:
        fields["cache"] = outcome.cache
        proxy.metrics.add(proxy.metrics.child(proxy.metrics.cache, outcome.cache))
    if outcome.body is not None:
        fields["request_body"] = orjson.dumps(outcome.body)[:LOGGED_BODY_LIMIT].decode("utf-8", "replace")
    if outcome.cache == "hit":
        fields["cost"] = "0"  # no backend was asked (LiteLLM's figure for a cache hit too)
        proxy.log.info(f"Model: {model} -> cache hit", **fields)
    elif decision is None or last is None:
        _rejected(proxy, model, err, fields)
    else:
        _answered(proxy, engine, model, decision, outcome, elapsed, fallback, fields)


def _rejected(proxy: Proxy, model: str, err: Any, fields: dict[str, Any]) -> None:
    """No deployment was tried: refused at the door, or nowhere to route."""
    if isinstance(err, ModelNotFound):
        proxy.log.warning(f"Model: {model} -> no route (404)", **fields)
    else:
        proxy.log.warning(f"Rejected request for model {model}", error=err.error_class if err else None,
                          detail=err.message if err else None, **fields)


def _answered(proxy: Proxy, engine: Engine, model: str, decision: RouteDecision, outcome: Outcome, elapsed: float,
              fallback: str | None, fields: dict[str, Any]) -> None:
    """At least one deployment was tried: the line names the last one, and how it was routed."""
    last = outcome.tried[-1]
    err = outcome.error
    dep = last.deployment
    fields["deployment"] = dep.id
    if last.status == 200:  # the deployment answered: its answer has a cost (the client may have left since)
        _cost(proxy, outcome, last, fields)
    group = model_group(decision, dep)
    proxy.metrics.answered(group, decision, dep, fields["status"], elapsed, last.ttft)
    if last.via is not None:  # a front door's request: passed through or translated
        fields["via"] = last.via
        proxy.metrics.add(proxy.metrics.child(proxy.metrics.door_requests, fields["endpoint"], last.via,
                                              str(fields["status"])))
    if fields["status"] == 200 and len(decision.candidates) > 1:
        proxy.metrics.split(group, dep, decision.candidates, engine.target_split(decision))
    if fallback is not None:
        fields["attempts"] = len(outcome.tried)
        fields["fallback"] = fallback
    if outcome.spilled is not None:  # spill-over: sent past its busy candidates (router.routing.spill)
        fields["spill"] = outcome.spilled
    if decision.matched:
        fields["matched"] = decision.matched
    if last.usage is not None and last.usage.cached is not None:  # the backend's prompt-cache hit, as it reported it
        fields["cached_tokens"] = last.usage.cached
    message = f"Model: {model} -> Provider: {dep.provider} ({ROUTE_LABELS[decision.route]})"
    if outcome.client_gone:
        proxy.log.warning(message, error="ClientDisconnected", **fields)
    elif err is None:
        proxy.log.info(message, **fields)
    else:
        proxy.log.warning(message, error=err.error_class, detail=err.message, **fields)


def _cost(proxy: Proxy, outcome: Outcome, answered: Attempt, fields: dict[str, Any]) -> None:
    """What the answer cost: ``cost=`` in the line (``unknown(no_price)``/``unknown(no_usage)``
    where unknown) and the spend counters (which the status page reads too)."""
    dep, usage = answered.deployment, answered.usage
    prompt, completion = (usage.prompt, usage.completion) if usage is not None else (None, None)
    amount = answered.cost if answered.priced else cost(dep, prompt, completion)
    if amount == 0:
        fields["cost"] = "0"  # the usual case: a local deployment; no spend to count
    elif amount is None:
        reason = why_unknown(dep, prompt, completion)
        fields["cost"] = f"unknown({reason})"
        proxy.metrics.spent(NO_KEY, dep, None, reason)
    else:
        fields["cost"] = usd(amount)
        key = outcome.key
        proxy.metrics.spent(key.name if key is not None else NO_KEY, dep, amount, None)
