"""Which deployment a request tries next: the fallback and retry rules, as a pure object.

``Proxy`` asks an ``AttemptPlan`` what to do and does it; the plan never awaits and
never reads a clock of its own, so every fallback, retry and queueing case is a
unit test without an event loop (``tests/unit/test_plan.py``).

    plan = AttemptPlan(...)
    step = plan.next(now)                       # Try | Backoff | WaitForSlot | GiveUp
    ... Try failed       -> plan.next(now, Failed(error))
    ... WaitForSlot done -> plan.next(now, Waited(freed))
    ... Backoff slept    -> plan.next(now)

The order: the decision's candidates; when every usable one is busy at
``max_parallel_requests`` and nothing has failed yet, wait for a slot (all waits of
a request share one ``queue_timeout``); then the fallbacks (LiteLLM's, then the
policy's chain) and the last resort; then retry rounds of the whole list with
jittered, doubling backoff while the deadline allows. A context overflow switches to
``context_window_fallbacks`` only, without retry rounds. An error that another
deployment cannot fix (``retryable`` false) ends the plan at once.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from router.domain import Deployment
from router.errors import CapacityExceeded, ContextWindowExceeded, RouterError, all_attempts_failed

Entry = tuple[Deployment, str]  # a deployment and the model name it is asked for upstream

MIN_WAIT = 0.001  # seconds: a queue wait shorter than this is not worth starting; the plan gives up

@dataclass(slots=True)  # not frozen: a frozen dataclass pays a __setattr__ per field
class Try:
    """Send the request to ``deployment`` (as ``upstream``); ``after`` is the deployment
    whose failure led here when it is another one (a fallback: logged and counted)."""

    deployment: Deployment
    upstream: str
    after: tuple[Deployment, RouterError] | None = None


@dataclass(slots=True)
class Backoff:
    """Sleep ``seconds`` before the next retry round."""

    seconds: float


@dataclass(slots=True)
class WaitForSlot:
    """Wait up to ``timeout`` seconds for one of ``deployments`` to finish a request."""

    deployments: tuple[Deployment, ...]
    timeout: float


@dataclass(slots=True)
class GiveUp:
    """Answer the client with ``error``."""

    error: RouterError


Step = Try | Backoff | WaitForSlot | GiveUp


@dataclass(slots=True)
class Failed:
    """The last ``Try`` failed before its first byte reached the client."""

    error: RouterError


@dataclass(slots=True)
class Waited:
    """The last ``WaitForSlot`` ended: ``freed`` is False when it timed out; ``granted``
    is the deployment whose slot was handed to this request (router.admission)."""

    freed: bool
    granted: Deployment | None = None


class View(Protocol):
    """What the plan may ask of the deployments' state (synchronous reads)."""

    def has_capacity(self, dep: Deployment, rank: int) -> bool:
        """May a request of class ``rank`` start on ``dep`` now (below its
        ``max_parallel_requests`` and what the reservations leave that class)?"""

    def ready(self, dep: Deployment, first: bool, last_resort: bool) -> bool:
        """May ``dep`` take an attempt now, capacity aside (healthy, not cooling down)?
        ``first``: the decision's own pick, already checked; ``last_resort``: tried anyway."""

    def cooldown_left(self, dep: Deployment) -> float:
        """Seconds until ``dep``'s cooldown ends (0 or less: not cooling down)."""


@dataclass(slots=True)
class Fallbacks:
    """What ``AttemptPlan``'s ``fallbacks`` hook returns: the entries this request may
    use (already filtered for its key) and the chain's retry settings (None: keep)."""

    entries: list[Entry]
    retry_attempts: int | None = None
    retry_delay_ms: int | None = None


FallbackHook = Callable[[set[str], bool], Fallbacks]
"""``fallbacks(failed_providers, context_overflow)``: where to go once the candidates
failed (``Engine.fallbacks``, filtered by ``Access``; it may trace). Called at most once."""


class AttemptPlan:
    """The attempts of one request. ``deadline`` and every ``now`` are on one clock
    (the loop's); ``jitter`` draws the backoff factor in [0.5, 1.5]. (A plain class with
    slots, not a dataclass: it is built for every request, and this is the cheap way.)"""

    __slots__ = ("model", "candidates", "last_resort", "fallbacks", "view", "deadline", "queue_timeout", "retries",
                 "delay", "jitter", "errors", "spill", "_order", "_i", "_rounds", "_full", "_fallbacks_added",
                 "_queue_left", "_waiting_since", "rank", "_waited")

    def __init__(self, model: str, candidates: list[Entry], last_resort: list[Entry], fallbacks: FallbackHook,
                 view: View, deadline: float, queue_timeout: float, retries: int, delay: float,
                 jitter: Callable[[], float], spill: int = 0, rank: int = 1) -> None:
        self.model = model
        self.candidates = candidates
        self.last_resort = last_resort
        self.fallbacks = fallbacks
        self.view = view
        self.deadline = deadline
        self.queue_timeout = queue_timeout
        self.retries = retries  # retry rounds after the first pass (router_settings.num_retries)
        self.delay = delay  # seconds before the first retry round; doubles each round
        self.jitter = jitter
        self.rank = rank  # the request's priority class (router.admission)
        self.errors: list[tuple[Deployment, RouterError]] = []  # every failed attempt, in order
        # the first ``spill`` candidates are spill-over targets (router.routing.spill): their
        # failures do not keep the request from queueing for the candidates after them
        self.spill = frozenset(d.id for d, _ in candidates[:spill])
        self._order = candidates  # what this pass walks; copied before it is changed
        self._i = 0
        self._rounds = 0
        self._full: list[Deployment] = []  # skipped only because at max_parallel_requests
        self._fallbacks_added = False
        self._queue_left = queue_timeout  # one budget for all waits for a slot
        self._waiting_since: float | None = None
        self._waited = False  # it waited for a slot: the engine's checks of its first pick are stale

    @property
    def by_deployment(self) -> dict[str, RouterError]:
        """Each failed deployment's last error."""
        return {d.id: e for d, e in self.errors}

    def next(self, now: float, outcome: Failed | Waited | None = None) -> Step:
        """What to do now, given how the previous step ended (None: the first call, or a
        ``Backoff`` slept)."""
        if type(outcome) is Failed:
            stop = self._failed(outcome.error, now)
            if stop is not None:
                return stop
        elif type(outcome) is Waited:
            if self._waiting_since is not None:
                self._queue_left -= now - self._waiting_since
                self._waiting_since = None
            if not outcome.freed:
                return self._give_up()
            self._waited = True
            self._full.clear()
            self._i = 0
            if self.spill and self.errors:  # the spill-over target failed: the slot is what is left
                failed = {d.id for d, _ in self.errors}
                self._order = [e for e in self._order if e[0].id not in failed]
            granted = outcome.granted
            if granted is not None:  # its slot was handed to us: take it (if it may still take attempts)
                for j, (dep, upstream) in enumerate(self._order):
                    if dep is granted:
                        if now < self.deadline and self.view.ready(dep, False, bool(self.last_resort) and self._last_resort(dep)):
                            self._i = j + 1
                            prev = self.errors[-1] if self.errors else None
                            return Try(dep, upstream, prev if prev is not None and prev[0] is not dep else None)
                        break
        while True:
            if self._i == len(self._order):
                step = self._end_of_pass(now)
                if step is not None:
                    return step
                continue
            dep, upstream = self._order[self._i]
            self._i += 1
            first = self._i == 1 and not self.errors and bool(self.candidates) and not self._waited
            # not ready (cooling down) first: waiting for a slot of a deployment that may not
            # take the request would end in a grant it cannot use, again and again
            if not self.view.ready(dep, first, bool(self.last_resort) and self._last_resort(dep)):
                continue
            if not self.view.has_capacity(dep, self.rank):
                self._full.append(dep)
                continue
            if now >= self.deadline:
                return self._give_up()
            prev = self.errors[-1] if self.errors else None
            return Try(dep, upstream, prev if prev is not None and prev[0] is not dep else None)

    def _end_of_pass(self, now: float) -> Step | None:
        """Every entry of this pass was tried or skipped: queue, add the fallbacks, retry
        or give up (None: a new pass starts)."""
        if self._full and not self._failed_locally():
            # Every usable candidate is busy: wait for a slot (bounded) instead of a 429.
            timeout = min(self.deadline - now, self._queue_left)
            if timeout < MIN_WAIT:  # (a float remainder such as 5e-17 s would never end: now + it == now)
                return self._give_up()
            self._waiting_since = now
            return WaitForSlot(tuple(self._full), timeout)
        if not self._fallbacks_added:
            self._fallbacks_added = True
            fb = self.fallbacks(self._failed_providers(), False)
            self._order = list(self._order)
            _extend(self._order, fb.entries)
            _extend(self._order, self.last_resort)
            if fb.retry_attempts is not None:
                self.retries = max(self.retries, fb.retry_attempts - 1)
            if fb.retry_delay_ms is not None:
                self.delay = fb.retry_delay_ms / 1000
            if self._i < len(self._order):
                return None
        if not self.errors or self._rounds >= self.retries:
            return self._give_up()
        pause = self.delay * (2 ** self._rounds) * self.jitter()
        if now + pause >= self.deadline:
            return self._give_up()
        self._rounds += 1
        self._i = 0
        return Backoff(pause)

    def _failed(self, error: RouterError, now: float) -> GiveUp | None:
        """Record a failed attempt; a ``GiveUp`` when it ends the plan."""
        dep = self._order[self._i - 1][0]
        self.errors.append((dep, error))
        if isinstance(error, ContextWindowExceeded) and not self._fallbacks_added:
            self._fallbacks_added = True  # only the context window fallbacks apply now
            entries = self.fallbacks(self._failed_providers(), True).entries
            if not entries:
                return GiveUp(error)
            self._order = self._order[:self._i]
            _extend(self._order, entries)
            self.retries = 0
            return None
        if not error.retryable:
            return GiveUp(error)
        if now >= self.deadline:
            return self._give_up()
        return None

    def _failed_locally(self) -> bool:
        """Has an attempt failed other than on a spill-over target? (Then queueing ends.)"""
        return any(d.id not in self.spill for d, _ in self.errors) if self.spill else bool(self.errors)

    def _last_resort(self, dep: Deployment) -> bool:
        """Is ``dep`` a last resort not yet tried by this request? (Tried once at most: a
        retry round must not hammer a backend through the cooldown it asked for.)"""
        return any(d is dep for d, _ in self.last_resort) and not any(d is dep for d, _ in self.errors)

    def _failed_providers(self) -> set[str]:
        return {d.provider for d, _ in self.errors}

    def _give_up(self) -> GiveUp:
        if self.errors:
            return GiveUp(all_attempts_failed(self.errors))
        left = [self.view.cooldown_left(d) for d, _ in self._order]
        retry = max(1.0, min(left)) if left and min(left) > 0 else 1.0
        waited = self.queue_timeout - self._queue_left
        busy = f"busy at max_parallel_requests for {round(waited, 1):g} s" if waited > 0 else "busy at max_parallel_requests"
        return GiveUp(CapacityExceeded(f"No deployment for `{self.model}` can take the request now ({busy}, "
                                       "cooling down or unreachable); retry shortly.", retry))


def _extend(order: list[Entry], entries: list[Entry]) -> None:
    """Append the ``entries`` not yet in ``order`` (a fallback list may name one
    deployment twice, or one the candidates had)."""
    for e in entries:
        if e not in order:
            order.append(e)
