"""The per-deployment health state machine, step by step, with explicit clocks."""

from __future__ import annotations

from router.health import Health, Policy, State

P = Policy(allowed_fails=2, cooldown_time=10, rate_limit_cooldown=60, degrade=True, error_threshold=3, degrade_seconds=300)


def test_more_than_allowed_fails_in_a_minute_cools_down_then_half_open_then_healthy():
    h = Health()
    assert h.failed(0, P, "e") is None and h.failed(1, P, "e") is None  # 2 allowed
    t = h.failed(2, P, "e")
    assert (t.old, t.new, t.until) == (State.HEALTHY, State.COOLDOWN, 12)
    assert not h.available(11.9) and h.current(11.9) is State.COOLDOWN
    assert h.current(12) is State.HALF_OPEN and h.available(12)
    assert h.picked(12).new is State.HALF_OPEN
    assert not h.available(12.1)  # one trial at a time
    t = h.succeeded(13)
    assert (t.old, t.new) == (State.HALF_OPEN, State.HEALTHY)


def test_failures_spread_beyond_a_minute_do_not_cool_down():
    h = Health()
    for t in (0, 61, 122, 183):
        assert h.failed(t, Policy(allowed_fails=2, cooldown_time=10), "e") is None
    assert h.current(184) is State.HEALTHY


def test_a_failed_trial_cools_down_again():
    h = Health()
    for t in (0, 1, 2):
        h.failed(t, P, "e")
    h.picked(12)
    t = h.failed(12.5, P, "still broken")
    assert (t.old, t.new, t.until) == (State.HALF_OPEN, State.COOLDOWN, 22.5)


def test_a_failure_during_cooldown_extends_it_never_shortens_it():
    h = Health()
    h.failed(0, P, "429", rate_limited=True, retry_after=100)
    assert h.cooldown_until == 100
    assert h.failed(5, P, "e") is None  # still cooling: no new transition
    assert h.cooldown_until == 100  # 5 + 10 = 15 is earlier: the later deadline stands
    h.failed(95, P, "e")
    assert h.cooldown_until == 105


def test_429_rests_for_retry_after_or_the_configured_duration():
    h = Health()
    assert h.failed(0, P, "429", rate_limited=True, retry_after=7).until == 7
    h2 = Health()
    assert h2.failed(0, P, "429", rate_limited=True).until == 60


def test_probe_reaching_the_server_ends_a_cooldown_early():
    h = Health()
    for t in (0, 1, 2):
        h.failed(t, P, "refused", unreachable=True)
    assert h.probe(3, reachable=False) is None
    t = h.probe(4, reachable=True)
    assert (t.old, t.new) == (State.COOLDOWN, State.HALF_OPEN) and h.available(4)


def test_errors_above_the_threshold_degrade_until_a_quiet_period():
    policy = Policy(allowed_fails=100, cooldown_time=10, degrade=True, error_threshold=3, degrade_seconds=300)
    h = Health()
    for t in (0, 10, 20):
        assert h.failed(t, policy, "e") is None
    t = h.failed(30, policy, "e")
    assert (t.new, t.until) == (State.DEGRADED, 330)
    assert h.degraded(100) and h.available(100)
    assert h.current(331) is State.HEALTHY


def test_snapshot_shows_the_time_left():
    h = Health()
    h.failed(0, P, "429", rate_limited=True, retry_after=30)
    snap = h.snapshot(10)
    assert snap["state"] == "cooldown" and snap["cooldown_left_s"] == 20 and snap["last_failure_reason"] == "429"


def test_a_probe_ends_only_a_cooldown_that_unreachability_caused() -> None:
    policy = Policy(allowed_fails=0, cooldown_time=30)
    refused = Health()
    refused.failed(10, policy, "refused", unreachable=True)
    assert refused.probe(11, reachable=True).new is State.HALF_OPEN
    errors = Health()
    errors.failed(10, policy, "HTTP 500")
    assert errors.probe(11, reachable=True) is None and errors.current(11) is State.COOLDOWN
    mixed = Health()
    mixed.failed(10, policy, "refused", unreachable=True)
    mixed.failed(10.5, policy, "HTTP 500")  # extended by a server error: the deadline holds
    assert mixed.probe(11, reachable=True) is None and mixed.current(11) is State.COOLDOWN
    limited = Health()
    limited.failed(10, policy, "429", rate_limited=True, retry_after=20, unreachable=True)
    assert limited.probe(11, reachable=True) is None
    assert limited.current(31) is State.HALF_OPEN  # the deadline still ends it


def test_a_trial_released_without_a_verdict_frees_the_next_trial() -> None:
    h = Health()
    h.failed(10, Policy(allowed_fails=0, cooldown_time=1), "HTTP 500")
    h.picked(12)
    assert not h.available(12)  # one trial at a time
    h.released()
    assert h.available(12) and h.current(12) is State.HALF_OPEN
