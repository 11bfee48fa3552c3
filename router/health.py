"""The per-deployment health state machine.

    healthy ──(more than error_threshold errors in cooldown_seconds)──▶ degraded
    healthy/degraded ──(more than allowed_fails failures in 60 s, or a 429)──▶ cooldown
    cooldown ──(deadline passed, or the probe reaches a server that was unreachable)──▶ half_open
    half_open ──(the one trial request succeeds)──▶ healthy (or degraded)
    half_open ──(the trial fails)──▶ cooldown
    half_open ──(the trial ends without a verdict: client gone, a 4xx, …)──▶ half_open, trial free

A background probe (a model listing) proves only that the server is reachable,
not that completions work: it ends a cooldown early only when every failure
behind that cooldown was a reachability failure (connection refused, connect
timeout, a close before any answer). A cooldown for 5xx answers, 429s or
malformed bodies lasts its ``cooldown_time`` (or ``Retry-After``).

Every method is synchronous and takes ``now``; methods that change the state
return the ``Transition`` so the caller can log it once. A failure during a
cooldown extends it to the later deadline, never the earlier. Connection
refused counts like any other failure (a local backend that is not running is
the most common failure there is). Client errors (4xx other than 408/429) and
client disconnects never count.
"""

from __future__ import annotations

import enum
from collections import deque
from dataclasses import dataclass, field

FAIL_WINDOW_S = 60.0  # allowed_fails counts failures within this window (LiteLLM: per minute)


class State(str, enum.Enum):
    HEALTHY = "healthy"
    DEGRADED = "degraded"
    COOLDOWN = "cooldown"
    HALF_OPEN = "half_open"


@dataclass(frozen=True, slots=True)
class Policy:
    """Health settings, from ``router_settings`` and the policy file's special cases."""

    allowed_fails: int = 3  # LiteLLM's default; more failures than this in a minute cool down
    cooldown_time: float = 5.0  # LiteLLM's default, seconds
    rate_limit_cooldown: float | None = None  # rate_limited_fallback: rest after a 429 (None: cooldown_time)
    degrade: bool = False  # error_based_routing.enabled
    error_threshold: int = 3
    degrade_seconds: float = 300.0  # error_based_routing.cooldown_seconds: window and duration


@dataclass(frozen=True, slots=True)
class Transition:
    old: State
    new: State
    reason: str
    until: float | None = None  # cooldown / degraded deadline (epoch seconds)


@dataclass(slots=True)
class Health:
    state: State = State.HEALTHY
    failures: deque[float] = field(default_factory=lambda: deque(maxlen=256))
    cooldown_until: float = 0.0
    degraded_until: float = 0.0
    last_failure_at: float | None = None
    last_reason: str | None = None
    trial_in_flight: bool = False
    probe_may_end: bool = False  # every failure behind the current cooldown was "unreachable"

    # -- reads -------------------------------------------------------------------------------

    def current(self, now: float) -> State:
        """The state at ``now`` (a passed cooldown deadline reads as half-open)."""
        if self.state is State.COOLDOWN and now >= self.cooldown_until:
            return State.HALF_OPEN
        if self.state is State.DEGRADED and now >= self.degraded_until:
            return State.HEALTHY
        return self.state

    def available(self, now: float) -> bool:
        """May a request be sent? Half-open admits one trial at a time."""
        state = self.current(now)
        if state is State.COOLDOWN:
            return False
        if state is State.HALF_OPEN:
            return not self.trial_in_flight
        return True

    def degraded(self, now: float) -> bool:
        return self.current(now) is State.DEGRADED

    # -- writes ----------------------------------------------------------------------------------

    def refresh(self, now: float) -> Transition | None:
        """Apply time-based transitions (cooldown over → half-open, degraded over → healthy)."""
        state = self.current(now)
        if state is self.state:
            return None
        old, self.state = self.state, state
        reason = "cooldown over; next request is a trial" if state is State.HALF_OPEN else "no errors for the degraded period"
        return Transition(old, state, reason)

    def picked(self, now: float) -> Transition | None:
        """A request is being sent; in half-open it becomes the trial."""
        t = self.refresh(now)
        if self.state is State.HALF_OPEN:
            self.trial_in_flight = True
        return t

    def released(self) -> None:
        """The trial request ended without a verdict (the client left, a 4xx was passed
        through, the model was not found, an internal error): the next request may try."""
        self.trial_in_flight = False

    def succeeded(self, now: float) -> Transition | None:
        t = self.refresh(now)
        self.trial_in_flight = False
        if self.state is State.HALF_OPEN:
            old, self.state = self.state, State.DEGRADED if now < self.degraded_until else State.HEALTHY
            return Transition(old, self.state, "trial request succeeded")
        return t

    def failed(self, now: float, policy: Policy, reason: str, rate_limited: bool = False,
               retry_after: float | None = None, others: int = 0, unreachable: bool = False) -> Transition | None:
        """``others``: failures other router instances saw this minute (shared state);
        ``unreachable``: the server could not be reached at all (a probe that reaches it
        may then end the cooldown early)."""
        self.refresh(now)
        self.trial_in_flight = False
        self.failures.append(now)
        self.last_failure_at, self.last_reason = now, reason
        old = self.state
        recent = sum(1 for t in self.failures if now - t <= FAIL_WINDOW_S) + others
        cool_for: float | None = None
        if rate_limited:
            cool_for = retry_after if retry_after is not None else (policy.rate_limit_cooldown or policy.cooldown_time)
            why = f"rate limited (429){f', Retry-After {retry_after:g} s' if retry_after is not None else ''}"
        elif old is State.HALF_OPEN:
            cool_for, why = policy.cooldown_time, f"trial request failed: {reason}"
        elif old is State.COOLDOWN:
            cool_for, why = policy.cooldown_time, f"failed again while cooling down: {reason}"
        elif recent > policy.allowed_fails:
            cool_for, why = policy.cooldown_time, f"{recent} failures in {FAIL_WINDOW_S:g} s (allowed_fails {policy.allowed_fails}): {reason}"
        if cool_for is not None:
            self.cooldown_until = max(self.cooldown_until, now + cool_for)  # never shorten a cooldown
            self.state = State.COOLDOWN
            reachability = unreachable and not rate_limited
            if old is State.COOLDOWN:
                self.probe_may_end = self.probe_may_end and reachability
                return None  # extended, not a new transition
            self.probe_may_end = reachability
            return Transition(old, State.COOLDOWN, why, self.cooldown_until)
        if policy.degrade:
            errors = sum(1 for t in self.failures if now - t <= policy.degrade_seconds)
            if errors > policy.error_threshold:
                self.degraded_until = now + policy.degrade_seconds
                if old is State.HEALTHY:
                    self.state = State.DEGRADED
                    return Transition(old, State.DEGRADED, f"{errors} errors in {policy.degrade_seconds:g} s "
                                      f"(error_threshold {policy.error_threshold}); routing weight halved", self.degraded_until)
        return None

    def cooled_elsewhere(self, now: float, until: float, reason: str) -> Transition | None:
        """Another router instance cooled this deployment down until ``until``."""
        self.refresh(now)
        if until <= now or (self.state is State.COOLDOWN and self.cooldown_until >= until):
            return None
        self.cooldown_until = max(self.cooldown_until, until)
        self.last_reason = reason
        self.probe_may_end = False  # why it failed there is not known here: the deadline holds
        if self.state is State.COOLDOWN:
            return None
        old, self.state = self.state, State.COOLDOWN
        return Transition(old, State.COOLDOWN, f"cooled down by another instance: {reason}", until)

    def probe(self, now: float, reachable: bool) -> Transition | None:
        """The background probe reached (or not) the server. Reaching it ends a
        cooldown caused only by the server being unreachable: the next request is the
        trial. Any other cooldown runs to its deadline."""
        t = self.refresh(now)
        if reachable and self.state is State.COOLDOWN and self.probe_may_end:
            old, self.state, self.cooldown_until = self.state, State.HALF_OPEN, now
            return Transition(old, State.HALF_OPEN, "probe reached the backend; next request is a trial")
        return t

    def snapshot(self, now: float) -> dict[str, object]:
        state = self.current(now)
        return {
            "state": state.value,
            "cooldown_left_s": round(self.cooldown_until - now, 1) if state is State.COOLDOWN else None,
            "degraded_left_s": round(self.degraded_until - now, 1) if state is State.DEGRADED else None,
            "recent_failures": sum(1 for t in self.failures if now - t <= FAIL_WINDOW_S),
            "last_failure_reason": self.last_reason,
        }
