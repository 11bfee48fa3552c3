"""Per-deployment runtime state, kept in memory and changed only synchronously.

The proxy reports what happened (``picked``, ``started``, ``finished``), the
background monitor reports what backends say about themselves (load, loaded
models, model metadata), and strategies read it all through ``StateTable``'s
read-only methods. Every window is a fixed-size ring, never an unbounded list;
keys are deployment ids (a fixed set from the configuration) and backend
server URLs.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from router.admission import Admission
from router.domain import Deployment
from router.health import Health, Policy, State, Transition
from router.routing.prefix import Pins, PrefixIndex

_ALWAYS_AVAILABLE = (State.HEALTHY, State.DEGRADED)

WINDOW = 100  # latency / TTFT samples kept per deployment
OUTCOMES = 50  # recent successes/failures kept per deployment for the success rate
WARM_AFTER_SERVING_S = 300.0  # a deployment that served this recently counts as warm


def p95(samples: deque[float]) -> float | None:
    if not samples:
        return None
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))]


@dataclass(slots=True)
class DeploymentState:
    in_flight: int = 0
    requests: int = 0
    failures: int = 0
    last_error: str | None = None
    last_error_at: float | None = None
    last_success_at: float | None = None
    picks: int = 0  # round-robin counter since the last reset
    minute: int = 0  # which wall-clock minute the usage counters are for
    minute_requests: int = 0
    minute_tokens: int = 0
    ttft: deque[float] = field(default_factory=lambda: deque(maxlen=WINDOW))  # streaming time to first token
    latency: deque[float] = field(default_factory=lambda: deque(maxlen=WINDOW))  # non-streaming total latency
    outcomes: deque[bool] = field(default_factory=lambda: deque(maxlen=OUTCOMES))
    health: Health = field(default_factory=Health)
    waiters: int = 0  # requests of ours waiting for a slot on it (router.routing.spill)
    reserved: int = 0  # slots handed to a waiting request that has not started yet (router.admission)
    frozen: int | None = None  # our concurrency there while its server reports a queue above the threshold
    held: deque[float] = field(default_factory=lambda: deque(maxlen=WINDOW))  # seconds each answer held its slot, streams too
    # what other router instances report, when state is shared (router.shared)
    remote_in_flight: int = 0
    remote_fails: int = 0
    shared_ttft: deque[float] | None = None
    shared_latency: deque[float] | None = None

    def started(self) -> None:
        self.in_flight += 1
        self.requests += 1

    def finished(self, error: str | None, abandoned: bool = False, *, stream: bool = False,
                 ttft: float | None = None, latency: float | None = None, tokens: int = 0) -> None:
        """One request ended: ``error`` None is a success; ``abandoned`` (the client
        went away) counts neither way."""
        self.in_flight -= 1
        if abandoned:
            return
        now = time.time()
        self._roll(now)
        self.minute_tokens += tokens
        self.outcomes.append(error is None)
        if error is None:
            self.last_success_at = now
            if latency is not None:
                self.held.append(latency)
            if stream and ttft is not None:
                self.ttft.append(ttft)
            elif not stream and latency is not None:
                self.latency.append(latency)
        else:
            self.failures += 1
            self.last_error, self.last_error_at = error, now

    def picked(self, now: float) -> None:
        self.picks += 1
        self._roll(now)
        self.minute_requests += 1

    def _roll(self, now: float) -> None:
        minute = int(now // 60)
        if minute != self.minute:
            self.minute, self.minute_requests, self.minute_tokens = minute, 0, 0

    def snapshot(self) -> dict[str, Any]:
        return {
            **self.health.snapshot(time.time()),
            "in_flight": self.in_flight,
            "requests": self.requests,
            "failures": self.failures,
            "last_error": self.last_error,
            "last_error_at": self.last_error_at,
            "last_success_at": self.last_success_at,
            "ttft_p95_ms": _ms(p95(self.ttft)),
            "latency_p95_ms": _ms(p95(self.latency)),
        }


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 1)


@dataclass(slots=True)
class ServerState:
    """What a backend server said about itself at its last probe."""

    updated_at: float = 0.0
    reachable: bool = False
    models: frozenset[str] = frozenset()
    loaded: frozenset[str] | None = None  # Ollama /api/ps; None = the server does not say
    running: int | None = None  # requests it is working on (vLLM /metrics, llama.cpp /slots)
    waiting: int | None = None  # requests it has queued
    slots: int | None = None  # llama.cpp parallel slots
    error: str | None = None  # why the server could not be reached
    latency_ms: float | None = None  # how long the probe took
    sizes: dict[str, float] = field(default_factory=dict)  # model -> billions of parameters
    contexts: dict[str, int] = field(default_factory=dict)  # model -> context length
    kv_tokens: int | None = None  # KV-cache capacity in tokens (vLLM cache_config_info, llama.cpp slots' n_ctx)


class StateTable:
    """All runtime state, and the read-only view strategies and the engine use."""

    ROUND_ROBIN_RESET_S = 60.0

    def __init__(self, policy: Policy | None = None) -> None:
        self._states: dict[str, DeploymentState] = {}
        self.servers: dict[str, ServerState] = {}
        self._rr_reset_at = time.time()
        self.policy = policy or Policy()
        self.share: Any = None  # router.shared.RedisShare when instances share state
        self.prefixes = PrefixIndex()  # what each server probably has in its prompt cache (cache-aware routing)
        self.sessions = Pins()  # session id -> the deployment that served it last (session affinity)
        self.admission = Admission()  # requests waiting for a slot, and who gets the next one

    def __getitem__(self, deployment_id: str) -> DeploymentState:
        state = self._states.get(deployment_id)
        if state is None:
            state = self._states[deployment_id] = DeploymentState()
        return state

    # -- writes (synchronous, by the proxy) ---------------------------------------------

    def picked(self, deployment: Deployment) -> Transition | None:
        now = time.time()
        if self.share is not None:
            self.share.picked(deployment.id)  # shared counters reset by key expiry instead
        elif now - self._rr_reset_at >= self.ROUND_ROBIN_RESET_S:  # the seed's periodic counter reset
            for s in self._states.values():
                s.picks = 0
            self._rr_reset_at = now
        state = self[deployment.id]
        state.picked(now)
        return state.health.picked(now)

    def started(self, d: Deployment) -> None:
        self[d.id].started()

    def finished(self, d: Deployment, error: str | None, abandoned: bool = False, *, stream: bool = False,
                 ttft: float | None = None, latency: float | None = None, tokens: int = 0) -> None:
        self[d.id].finished(error, abandoned, stream=stream, ttft=ttft, latency=latency, tokens=tokens)
        if d.id in self.admission.by_dep:
            self.dispatch(d)
        if self.share is not None and not abandoned and error is None:
            self.share.finished(d.id, tokens, ttft if stream else None, None if stream else latency)

    def failed(self, d: Deployment, reason: str, rate_limited: bool = False, retry_after: float | None = None,
               unreachable: bool = False) -> Transition | None:
        s = self[d.id]
        t = s.health.failed(time.time(), self.policy, reason, rate_limited, retry_after, others=s.remote_fails,
                            unreachable=unreachable)
        if self.share is not None:
            self.share.failed(d.id)
            if t is not None and t.until is not None and t.new.value == "cooldown":
                self.share.cooled(d.id, t.until, reason)
        return t

    def released(self, d: Deployment) -> None:
        """``d``'s half-open trial ended without a verdict."""
        self[d.id].health.released()

    def succeeded(self, d: Deployment) -> Transition | None:
        return self[d.id].health.succeeded(time.time())

    def loaded(self, d: Deployment, model: str) -> None:
        """``model`` is now loaded on ``d``'s server (we just loaded it or it just served)."""
        server = self.servers.get(d.api_base)
        if server is not None and server.loaded is not None and model not in server.loaded:
            server.loaded = server.loaded | {model}

    def probed(self, d: Deployment, server: ServerState) -> None:
        """A probe of ``d``'s server: freeze our concurrency there while it reports more
        waiting than ``backend_queue_threshold`` (new requests then start only as ours
        end, in priority order), thaw it and hand out the free slots when it does not."""
        threshold = self.admission.settings.backend_queue_threshold
        s = self[d.id]
        if threshold is not None and server.reachable and (server.waiting or 0) > threshold:
            if s.frozen is None:
                s.frozen = max(1, s.in_flight)
        elif s.frozen is not None:
            s.frozen = None
        if d.id in self.admission.by_dep:  # thawed, or its slot count grew
            self.dispatch(d)

    # -- admission: who may start now, and who gets a freed slot (router.admission)

    def limit(self, d: Deployment) -> int | None:
        """The requests of ours ``d`` may hold now: its capacity (``max_parallel_requests``,
        its server's slots), or less while frozen."""
        cap = self.capacity(d)
        frozen = self[d.id].frozen
        if frozen is not None:
            return frozen if cap is None else min(cap, frozen)
        return cap

    def room(self, d: Deployment, rank: int) -> bool:
        """May a request of class ``rank`` start on ``d`` now? Below its limit, and below
        what the reservations of the classes above leave to ``rank``."""
        cap = self.limit(d)
        if cap is None:
            return True
        s = self[d.id]
        used = s.in_flight + s.reserved
        if used >= cap:
            return False
        settings = self.admission.settings
        if not settings.reserve:
            return True
        return used < settings.thresholds(cap)[min(rank, len(settings.classes) - 1)]

    def dispatch(self, d: Deployment) -> None:
        """Hand ``d``'s free slots to the waiters that get them (work-conserving: while a
        slot is free and someone may take it, it is handed over now)."""
        adm = self.admission
        s = self[d.id]
        cap = self.limit(d)
        now = time.monotonic()
        last = len(adm.settings.classes) - 1
        while d.id in adm.by_dep:
            used = s.in_flight + s.reserved
            if cap is None:
                allowed = last
            else:
                if used >= cap:
                    return
                allowed = 0
                if adm.settings.reserve:
                    for rank, room in enumerate(adm.settings.thresholds(cap)):
                        if used < room:
                            allowed = rank
                else:
                    allowed = last
            w = adm.next_for(d.id, allowed, now)
            if w is None:
                return
            s.reserved += 1
            if w.wake is not None:
                w.wake(d.id)

    def unreserve(self, d: Deployment) -> None:
        """A granted slot was not used (the request went elsewhere, or away): free it."""
        s = self[d.id]
        if s.reserved > 0:
            s.reserved -= 1
        self.dispatch(d)

    # -- reads (the view strategies get) ---------------------------------------------------

    def available(self, d: Deployment) -> bool:
        health = self[d.id].health
        # healthy or degraded: available whatever the time (the common case needs no clock)
        return health.state in _ALWAYS_AVAILABLE or health.available(time.time())

    def degraded(self, d: Deployment) -> bool:
        health = self[d.id].health
        return health.state is State.DEGRADED and health.degraded(time.time())

    def last_failure_at(self, d: Deployment) -> float:
        return self[d.id].health.last_failure_at or 0.0

    def server_down(self, d: Deployment) -> bool:
        """The last background probe could not reach ``d``'s server."""
        server = self.servers.get(d.api_base)
        return server is not None and server.updated_at > 0 and not server.reachable

    def in_flight(self, d: Deployment) -> int:
        s = self[d.id]
        return s.in_flight + s.remote_in_flight

    def picks(self, d: Deployment) -> int:
        return self[d.id].picks

    def backend_load(self, d: Deployment) -> int | None:
        """Requests the backend server reports running + waiting, if it reports them."""
        server = self.servers.get(d.api_base)
        if server is None or server.running is None:
            return None
        return server.running + (server.waiting or 0)

    def capacity(self, d: Deployment) -> int | None:
        """``max_parallel_requests`` and the server's slot count, the smaller (no list built:
        the admission check asks on every request)."""
        cap = d.max_parallel_requests or None
        server = self.servers.get(d.api_base)
        if server is not None and server.slots:
            cap = server.slots if cap is None else min(cap, server.slots)
        return cap

    def _window(self, d: Deployment, kind: str) -> deque[float]:
        """The shared window when instances share state (it includes ours), else ours."""
        s = self[d.id]
        shared = s.shared_ttft if kind == "ttft" else s.shared_latency
        return shared if shared else (s.ttft if kind == "ttft" else s.latency)

    def ttft_p95(self, d: Deployment) -> float | None:
        return p95(self._window(d, "ttft"))

    def latency_p95(self, d: Deployment) -> float | None:
        return p95(self._window(d, "latency"))

    def mean_latency(self, d: Deployment) -> float | None:
        samples = self._window(d, "latency") or self._window(d, "ttft")
        return sum(samples) / len(samples) if samples else None

    def mean_hold(self, d: Deployment) -> float | None:
        """Seconds a request of ``d`` holds its slot, on average (whole streams included)."""
        held = self[d.id].held
        return sum(held) / len(held) if held else None

    def samples(self, d: Deployment) -> int:
        return len(self._window(d, "ttft")) + len(self._window(d, "latency"))

    def success_rate(self, d: Deployment) -> float | None:
        outcomes = self[d.id].outcomes
        return sum(outcomes) / len(outcomes) if outcomes else None

    def minute_usage(self, d: Deployment) -> tuple[int, int]:
        s = self[d.id]
        if s.minute != int(time.time() // 60):
            return 0, 0
        return s.minute_requests, s.minute_tokens

    def is_warm(self, d: Deployment, model: str) -> bool | None:
        """Loaded per the backend (Ollama /api/ps), else served recently; None = unknown."""
        server = self.servers.get(d.api_base)
        if server is not None and server.loaded is not None:
            return any(name in server.loaded for name in d.backend.names(model))
        last = self[d.id].last_success_at
        if last is not None and time.time() - last < WARM_AFTER_SERVING_S:
            return True
        if d.hosted:
            return True  # a cloud API: no model to load
        if server is not None and server.reachable and d.backend.always_warm:
            return True  # llama.cpp and vLLM servers hold their model loaded while they run
        return None

    def model_size(self, d: Deployment, model: str) -> float | None:
        server = self.servers.get(d.api_base)
        return _by_name(server.sizes, d, model) if server else None

    def context_length(self, d: Deployment, model: str) -> int | None:
        server = self.servers.get(d.api_base)
        return _by_name(server.contexts, d, model) if server else None


def _by_name(table: dict[str, Any], d: Deployment, model: str) -> Any:
    """``model``'s entry, under any name ``d``'s kind lists it by (``name:latest``)."""
    for name in d.backend.names(model):
        value = table.get(name)
        if value is not None:
            return value
    return None
