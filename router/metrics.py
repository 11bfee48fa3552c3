"""Prometheus metrics (``GET /metrics``), through ``prometheus_client``.

One ``Metrics`` per app, on its own registry. The request path does not touch
prometheus_client's objects (their locks and layers were a few percent of the
proxy's CPU per request): ``add``/``observe``/``set`` note the change in plain
dicts, and ``flush`` applies everything noted once per event-loop turn (and before
every scrape), so ``/metrics`` never lags behind a finished request.

With ``--workers N`` the supervisor sets ``PROMETHEUS_MULTIPROC_DIR`` and every
worker writes there; whichever worker answers ``/metrics`` aggregates all of them
(prometheus_client multiprocess mode).

Process and build metrics: ``llm_router_build_info{version}`` (always 1),
``llm_router_config_generation`` (1 at start, +1 per successful reload; under
``--workers`` the supervisor's generation + 1, the same in every worker on it),
``llm_router_redis_sharing_up`` (only with Redis: 1 while the last sync round
worked), and the standard ``process_*`` metrics (resident/virtual memory, open and
max fds, CPU seconds, start time). In one process these are prometheus_client's
ProcessCollector. Its multiprocess mode does not aggregate ProcessCollector (the
worker answering the scrape would show only itself), so under ``--workers`` every
worker samples its own ``/proc`` every ``PROCESS_SAMPLE_INTERVAL`` seconds into
metrics of the same names with a ``worker`` label (the slot, 1..N, stable across
a restart: a restarted worker changes ``process_start_time_seconds{worker}``);
the per-worker gauges drop out when the worker dies (``live`` modes), and CPU
seconds is a counter per slot that keeps counting across restarts. Aggregate with
``sum without (worker)`` (memory, fds) or ``min``/``max`` (sharing, generation).

Labels stay bounded: ``model_group`` is the configured name (group, alias,
capability) or, for name-based routes, the rule that matched (e.g.
``pattern:^meta-llama/.*``) — never a raw client string. ``key`` (spend) is a
configured key's name (``master`` for the master key, ``none`` without keys), never
the key itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
from bisect import bisect_left
from collections import Counter as Tally
from collections import defaultdict
from typing import Any, Iterable, Mapping

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector, generate_latest
from prometheus_client import multiprocess

from router import __version__, log
from router.domain import Deployment, RouteDecision

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
OVERHEAD_BUCKETS = (5e-5, 1e-4, 2e-4, 3e-4, 5e-4, 7.5e-4, 1e-3, 2e-3, 5e-3, 1e-2, 5e-2)
QUEUE_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120)
DECISION_BUCKETS = (5e-6, 1e-5, 2e-5, 5e-5, 1e-4, 2e-4, 5e-4, 1e-3, 5e-3)
STATES = ("healthy", "degraded", "cooldown", "half_open")
NO_KEY = "none"  # the key label of spend where the router needs no key
PROCESS_SAMPLE_INTERVAL = 5.0  # seconds between a worker's own /proc samples (multiprocess mode)
PROCESS_GAUGES = {  # ProcessCollector's sample -> help, as gauges per worker in multiprocess mode
    "process_resident_memory_bytes": "Resident memory size in bytes.",
    "process_virtual_memory_bytes": "Virtual memory size in bytes.",
    "process_open_fds": "Number of open file descriptors.",
    "process_max_fds": "Maximum number of open file descriptors.",
    "process_start_time_seconds": "Start time of the process since unix epoch in seconds.",
}


def multiprocess_dir() -> str | None:
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("llm_router_requests", "Requests answered, by model group, deployment, route and status.",
                                ["model_group", "deployment", "provider", "route", "status"], registry=r)
        self.door_requests = Counter("llm_router_door_requests", "Requests at a front door (Anthropic Messages, "
                                     "Responses, Ollama's API, rerank) that reached a deployment, by door, whether "
                                     "the deployment got the body passed through (native) or a translation, and status.",
                                     ["door", "via", "status"], registry=r)
        self.duration = Histogram("llm_router_request_duration_seconds", "Time from request to the last byte.",
                                  ["model_group", "deployment", "route", "status"], buckets=LATENCY_BUCKETS, registry=r)
        self.ttft = Histogram("llm_router_ttft_seconds", "Time to the first streamed byte, per deployment.",
                              ["deployment"], buckets=LATENCY_BUCKETS, registry=r)
        self.decision = Histogram("llm_router_routing_decision_seconds", "Time Engine.decide takes.",
                                  buckets=DECISION_BUCKETS, registry=r)
        self.overhead = Histogram("llm_router_overhead_seconds", "Time spent in the proxy per request, upstream waits "
                                  "excluded: to the whole response, or for a stream to its first byte (also the "
                                  "x-router-overhead-ms response header).", buckets=OVERHEAD_BUCKETS, registry=r)
        self.matches = Counter("llm_router_route_matches", "Routing decisions by the step that resolved the model "
                               "(exact, id, alias, pattern, wildcard, capability, size, default, none).", ["route"], registry=r)
        self.adjusted = Counter("llm_router_route_adjustments", "Picks moved by request metadata, warm-first routing, the prompt cache (cache) or session affinity (session).",
                                ["by"], registry=r)
        self.fallbacks = Counter("llm_router_fallbacks", "Fallbacks triggered, by provider.", ["from_provider", "to_provider"],
                                 registry=r)
        self.spillovers = Counter("llm_router_spillovers", "Requests sent past their saturated candidates to a fallback "
                                  "chain's spill_when step (router.routing.spill), by provider.",
                                  ["from_provider", "to_provider"], registry=r)
        self.prefix_evictions = Counter("llm_router_prefix_evictions", "Answers whose backend reported fewer cached prompt "
                                        "tokens than cache-aware routing's index predicted: the index dropped what the "
                                        "server had evicted.", ["deployment"], registry=r)
        self.cached_tokens = Counter("llm_router_cached_prompt_tokens", "Prompt tokens the backend reported serving from "
                                     "its prompt cache (vLLM cached_tokens, llama-server cache_n, Ollama "
                                     "prompt_eval_cached_count where a build has it); with llm_router_tokens{direction=\"in\"}, the hit rate.",
                                     ["deployment"], registry=r)
        self.in_flight = Gauge("llm_router_in_flight", "Requests in flight to each deployment.", ["deployment"],
                               multiprocess_mode="livesum", registry=r)
        self.queue_waiting = Gauge("llm_router_queue_waiting", "Requests waiting for a slot (router.admission), by "
                                   "priority class and key (a configured key's name, none without one).",
                                   ["class", "key"], multiprocess_mode="livesum", registry=r)
        self.queue_wait = Histogram("llm_router_queue_wait_seconds", "Seconds requests waited for a slot, by priority "
                                    "class and key (observed when they leave the queue: served, timed out or gone).",
                                    ["class", "key"], buckets=QUEUE_BUCKETS, registry=r)
        self.queue_rejected = Counter("llm_router_queue_rejected", "Requests refused while waiting for a slot: their "
                                      "class's queue was full (429 queue_full) or their queue_timeout passed.",
                                      ["class", "reason"], registry=r)
        self.state = Gauge("llm_router_deployment_state", "1 for the deployment's current health state.",
                           ["deployment", "state"], multiprocess_mode="livemax", registry=r)
        self.group_healthy = Gauge("llm_router_model_group_healthy_deployments", "Deployments of the model group "
                                   "not in cooldown (healthy, degraded or half-open: requests can go to them); 0 = "
                                   "the group can only fail or fall back.", ["model_group"],
                                   multiprocess_mode="livemax", registry=r)
        self.cache = Counter("llm_router_cache", "Response cache lookups by result.", ["result"], registry=r)
        self.upstream_errors = Counter("llm_router_upstream_errors", "Failed attempts by deployment and error class.",
                                       ["deployment", "error_class"], registry=r)
        self.resends = Counter("llm_router_upstream_resends", "Requests sent to a backend server a second time: a kept "
                               "connection closed before any answer within 0.5 s of the request (the server's keep-alive "
                               "timeout racing it).",
                               ["server"], registry=r)
        self.tokens = Counter("llm_router_tokens", "Tokens by deployment and direction, where usage is known.",
                              ["deployment", "direction"], registry=r)
        self.spend = Counter("llm_router_spend", "USD spent on answers whose cost is known: the deployment's "
                             "model_info input/output_cost_per_token times the tokens the answer reported (local "
                             "deployments cost 0 unless priced), by client key name (none: no key) and deployment.",
                             ["key", "deployment"], registry=r)
        self.spend_unknown = Counter("llm_router_spend_unknown", "Answers whose cost is unknown (never counted as 0 "
                                     "spend), by deployment and why: no_price (a hosted deployment without a "
                                     "configured price) or no_usage (the answer reported no token counts, e.g. a "
                                     "stream without stream_options.include_usage).",
                                     ["deployment", "reason"], registry=r)
        self.effectiveness = Gauge("llm_router_load_balance_effectiveness",
                                   "1 - total variation distance between a group's recent traffic split and its target "
                                   "split (weights, else even): 1 = exactly on target.", ["model_group"],
                                   multiprocess_mode="livemax", registry=r)
        self.build_info = Gauge("llm_router_build_info", "Always 1; the router's version as a label.", ["version"],
                                multiprocess_mode="livemax", registry=r)
        self.build_info.labels(__version__).set(1)
        # Per process: with --workers, a `worker` label (see the module's docstring).
        self.worker = (os.environ.get("LLM_ROUTER_WORKER") or str(os.getpid())) if multiprocess_dir() else None
        per_worker = ["worker"] if self.worker else []
        self.config_generation = Gauge("llm_router_config_generation", "1 at start, +1 after every successful "
                                       "configuration reload.", per_worker, multiprocess_mode="livemax", registry=r)
        self._mine(self.config_generation).set(1)
        self.redis_sharing_up: Gauge | None = None  # made at the first sync round: only with Redis
        self._process: dict[str, Any] = {}
        self._shown: dict[tuple[str, str], Any] = {}  # the state gauges' last written values (``states``)
        self._cpu_seen = 0.0
        self._sampling = threading.Lock()  # the sampler's thread and a scrape's may overlap
        self._sampler: asyncio.Task[None] | None = None
        if self.worker is None:
            ProcessCollector(registry=r)
        else:
            for name, text in PROCESS_GAUGES.items():
                self._process[name] = Gauge(name, text, per_worker, multiprocess_mode="livemax", registry=r).labels(self.worker)
            self._process["process_cpu_seconds_total"] = Counter(
                "process_cpu_seconds", "Total user and system CPU time spent in seconds.", per_worker, registry=r
            ).labels(self.worker)
            self.sample_process()
        self._split: dict[str, Tally[str]] = defaultdict(Tally)
        self._children: dict[tuple[Any, ...], Any] = {}  # (metric, label values) -> its child
        self._added: dict[Any, float] = {}  # counter or gauge child -> increment not yet applied
        self._observed: dict[Any, list[float]] = {}  # histogram child -> values not yet applied
        self._set: dict[Any, float] = {}  # gauge child -> value not yet applied
        self._flush_due = False

    def _mine(self, gauge: Any) -> Any:
        """A per-process gauge's own child (the gauge itself in one process)."""
        return gauge.labels(self.worker) if self.worker else gauge

    def states(self, deployments: Iterable[Deployment], groups: Mapping[str, Iterable[Deployment]], state: Any,
               now: float) -> None:
        """Bring the deployment state gauges and each group's healthy count up to date (a
        cooldown ends by time, not by an event)."""
        current: dict[str, str] = {}
        shown = self._shown  # only what changed since the last scrape is written (thousands of deployments)
        for d in deployments:
            current[d.id] = now_state = state[d.id].health.current(now).value
            if shown.get(("state", d.id)) != now_state:
                shown[("state", d.id)] = now_state
                for name in STATES:
                    self.set(self.child(self.state, d.id, name), 1 if name == now_state else 0)
        for group, members in groups.items():
            healthy = sum(1 for d in members if current.get(d.id, state[d.id].health.current(now).value) != "cooldown")
            if shown.get(("group", group)) != healthy:
                shown[("group", group)] = healthy
                self.set(self.child(self.group_healthy, group), healthy)

    def reloaded(self, generation: int | None = None) -> None:
        """A configuration reload succeeded (under ``--workers``: the supervisor's
        ``generation``, so that every worker on it, replacements too, shows the same)."""
        if generation is None:
            self._mine(self.config_generation).inc()
        else:
            self._mine(self.config_generation).set(generation + 1)

    def sharing(self, up: bool) -> None:
        """Redis sharing works (or not) after a sync round."""
        if self.redis_sharing_up is None:
            self.redis_sharing_up = Gauge("llm_router_redis_sharing_up", "With Redis configured: 1 while sharing state "
                                          "through Redis works (the last sync round succeeded), else 0.",
                                          ["worker"] if self.worker else [], multiprocess_mode="livemax",
                                          registry=self.registry)
        self.set(self._mine(self.redis_sharing_up), 1 if up else 0)

    def sample_process(self) -> None:
        """Multiprocess mode: this worker's ProcessCollector values into its own metrics.
        It reads /proc: call it off the event loop (a thread may, one at a time)."""
        if not self._process:
            return
        with self._sampling:
            self._sample_process()

    def _sample_process(self) -> None:
        for family in ProcessCollector(registry=None).collect():
            for sample in family.samples:
                target = self._process.get(sample.name)
                if target is None:
                    continue
                if sample.name == "process_cpu_seconds_total":
                    if sample.value > self._cpu_seen:
                        target.inc(sample.value - self._cpu_seen)
                        self._cpu_seen = sample.value
                else:
                    target.set(sample.value)

    def start(self) -> None:
        """In a worker (multiprocess mode): sample its process metrics every few seconds, so
        they stay fresh for whichever worker answers the scrape."""
        if self._process and self._sampler is None:
            self._sampler = asyncio.get_running_loop().create_task(self._sample_forever())

    async def stop(self) -> None:
        task, self._sampler = self._sampler, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _sample_forever(self) -> None:
        logged = False
        while True:
            await asyncio.sleep(PROCESS_SAMPLE_INTERVAL)
            try:
                await asyncio.to_thread(self.sample_process)
            except Exception:  # noqa: BLE001 - e.g. /proc unreadable for a moment: the next sample comes
                if not logged:
                    logged = True
                    log.get("METRICS").exception("Sampling this process's metrics failed; sampling goes on")

    def child(self, metric: Any, *values: str) -> Any:
        """``metric.labels(*values)``, looked up once (labels are bounded: configured names)."""
        key = (id(metric), *values)
        found = self._children.get(key)
        if found is None:
            found = self._children[key] = metric.labels(*values)
        return found

    # -- recording (synchronous; cheap) ------------------------------------------------------

    def add(self, child: Any, amount: float = 1.0) -> None:
        """``child.inc(amount)`` (a counter's or gauge's child; negative for a gauge), applied at the flush."""
        added = self._added
        added[child] = added.get(child, 0.0) + amount
        if not self._flush_due:
            self._schedule()

    def observe(self, child: Any, value: float) -> None:
        """``child.observe(value)`` (a histogram or its child), applied at the flush."""
        values = self._observed.get(child)
        if values is None:
            self._observed[child] = [value]
        else:
            values.append(value)
        if not self._flush_due:
            self._schedule()

    def set(self, child: Any, value: float) -> None:
        """``child.set(value)`` (a gauge's child), applied at the flush."""
        self._set[child] = value
        if not self._flush_due:
            self._schedule()

    def _schedule(self) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no loop (a script, a unit test): at once
            self.flush()
            return
        self._flush_due = True
        loop.call_soon(self.flush)

    def flush(self) -> None:
        """Apply what was noted since the last flush to the prometheus_client metrics."""
        self._flush_due = False
        added, self._added = self._added, {}
        for child, amount in added.items():
            if amount:
                child.inc(amount)
        observed, self._observed = self._observed, {}
        for child, values in observed.items():
            _observe_all(child, values)
        updated, self._set = self._set, {}
        for child, value in updated.items():
            child.set(value)

    def spent(self, key: str, dep: Deployment, amount: float | None, reason: str | None) -> None:
        """An answer of ``dep`` for ``key`` (its name) cost ``amount`` USD; ``None``: unknown,
        for ``reason`` (``router.costs.why_unknown``; the key is not a label of unknowns)."""
        if amount is None:
            self.add(self.child(self.spend_unknown, dep.id, reason or ""))
        else:
            self.add(self.child(self.spend, key, dep.id), amount)

    def spend_by_deployment(self) -> dict[str, tuple[float, int]]:
        """This process's spend per deployment: (USD where known, answers of unknown cost)."""
        self.flush()
        usd: dict[str, float] = defaultdict(float)
        unknown: dict[str, int] = defaultdict(int)
        for family in self.spend.collect():
            for sample in family.samples:
                if sample.name.endswith("_total"):
                    usd[sample.labels["deployment"]] += sample.value
        for family in self.spend_unknown.collect():
            for sample in family.samples:
                if sample.name.endswith("_total"):
                    unknown[sample.labels["deployment"]] += int(sample.value)
        return {d: (usd.get(d, 0.0), unknown.get(d, 0)) for d in usd.keys() | unknown.keys()}

    def decided(self, seconds: float, decision: RouteDecision | None) -> None:
        self.observe(self.decision, seconds)
        if decision is None:
            self.add(self.child(self.matches, "none"))
            return
        self.add(self.child(self.matches, decision.resolved or decision.route))
        if decision.route != decision.resolved and decision.route in ("metadata", "warm", "cache", "session"):
            self.add(self.child(self.adjusted, decision.route))

    def answered(self, group: str, decision: RouteDecision, dep: Deployment, status: int, seconds: float,
                 ttft: float | None) -> None:
        code = str(status)
        self.add(self.child(self.requests, group, dep.id, dep.provider, decision.route, code))
        self.observe(self.child(self.duration, group, dep.id, decision.route, code), seconds)
        if ttft is not None:
            self.observe(self.child(self.ttft, dep.id), ttft)

    def split(self, group: str, dep: Deployment, candidates: Iterable[Deployment], weights: list[float] | None) -> None:
        """Track a group's traffic split against its target (last ~1,000 picks)."""
        tally = self._split[group]
        tally[dep.id] += 1
        total = sum(tally.values())
        if total > 1000:
            for k in tally:
                tally[k] //= 2
            total = sum(tally.values())
        ids = [d.id for d in candidates]
        if not ids or total == 0:
            return
        target = weights if weights and len(weights) == len(ids) and sum(weights) > 0 else [1.0] * len(ids)
        norm = sum(target)
        distance = 0.5 * sum(abs(tally[i] / total - w / norm) for i, w in zip(ids, target))
        self.set(self.child(self.effectiveness, group), round(1 - distance, 4))

    def sample_and_generate(self) -> bytes:
        """``sample_process`` then ``generate``: for a thread (``router.app.metrics``)."""
        self.sample_process()
        return self.generate()

    def generate(self) -> bytes:
        """The exposition text, without touching this process's metrics: safe to run in a
        thread (``router.app.metrics`` does: with thousands of deployments, merging every
        worker's files takes seconds, which on the event loop stalled all requests and
        got the worker killed as hung by the supervisor)."""
        path = multiprocess_dir()
        if path:
            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry, path=path)
            return generate_latest(registry)
        return generate_latest(self.registry)


def _observe_all(child: Any, values: list[float]) -> None:
    """``child.observe(v)`` for each value: with prometheus_client's per-bucket values
    (stable since 0.4) one increment per bucket, else one observe per value."""
    bounds, buckets, total = getattr(child, "_upper_bounds", None), getattr(child, "_buckets", None), getattr(child, "_sum", None)
    if bounds is None or buckets is None or total is None or len(buckets) != len(bounds):
        for v in values:
            child.observe(v)
        return
    counts = [0] * len(bounds)
    for v in values:
        counts[bisect_left(bounds, v)] += 1
    total.inc(sum(values))
    for i, n in enumerate(counts):
        if n:
            buckets[i].inc(n)


def model_group(decision: RouteDecision, dep: Deployment) -> str:
    """A bounded label: configured names as they are, name-based routes by their rule."""
    if decision.resolved in ("exact", "id", "alias", "capability"):
        return decision.model
    if decision.resolved == "wildcard":
        return f"wildcard:{decision.matched}"
    return f"{decision.resolved}:{decision.matched or dep.id}"
