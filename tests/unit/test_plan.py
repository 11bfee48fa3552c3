"""The attempt planner (router.plan) without an event loop: every fallback, retry and
queueing case the e2e tests cover, and properties over drawn fleets, outcomes and clocks."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from hypothesis import given, settings, strategies as st

from router.domain import Deployment
from router.errors import (
    BadRequest,
    CapacityExceeded,
    ContextWindowExceeded,
    RouterError,
    UpstreamClientError,
    UpstreamRateLimited,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from router.plan import AttemptPlan, Backoff, Failed, Fallbacks, GiveUp, Try, Waited, WaitForSlot

PROPERTY = settings(max_examples=400, deadline=None, derandomize=bool(os.environ.get("CI")))


def dep(name: str, provider: str | None = None) -> Deployment:
    return Deployment(name, "m", provider or name, "vllm", "m", f"http://127.0.0.1:1/{name}")


A, B, C, F1, F2, L = (dep(n) for n in ("a", "b", "c", "f1", "f2", "last"))


@dataclass
class Fleet:
    """The plan's ``View``: which deployments are full, not ready, cooling down."""

    full: set[str] = field(default_factory=set)
    down: set[str] = field(default_factory=set)
    cooldown: dict[str, float] = field(default_factory=dict)
    asked_first: list[tuple[str, bool, bool]] = field(default_factory=list)

    def has_capacity(self, d: Deployment, rank: int = 1) -> bool:
        return d.id not in self.full

    def ready(self, d: Deployment, first: bool, last_resort: bool) -> bool:
        self.asked_first.append((d.id, first, last_resort))
        return first or last_resort or d.id not in self.down

    def cooldown_left(self, d: Deployment) -> float:
        return self.cooldown.get(d.id, 0.0)


@dataclass
class Hook:
    """The ``fallbacks`` hook: records its calls."""

    normal: list[Deployment] = field(default_factory=list)
    overflow: list[Deployment] = field(default_factory=list)
    retry_attempts: int | None = None
    retry_delay_ms: int | None = None
    calls: list[tuple[frozenset[str], bool]] = field(default_factory=list)

    def __call__(self, failed: set[str], context_overflow: bool) -> Fallbacks:
        self.calls.append((frozenset(failed), context_overflow))
        deps = self.overflow if context_overflow else self.normal
        return Fallbacks([(d, d.upstream_model) for d in deps], self.retry_attempts, self.retry_delay_ms)


def make(candidates=(A,), fallbacks: Hook | None = None, last_resort=(), fleet: Fleet | None = None,
         deadline=100.0, queue_timeout=10.0, retries=0, delay=0.1, jitter=1.0, spill=0) -> tuple[AttemptPlan, Fleet, Hook]:
    fleet = fleet or Fleet()
    hook = fallbacks or Hook()
    plan = AttemptPlan("m", [(d, "m") for d in candidates], [(d, "m") for d in last_resort], hook, fleet,
                       deadline, queue_timeout, retries, delay, lambda: jitter, spill)
    return plan, fleet, hook


def tried(step) -> str:
    assert type(step) is Try, step
    return step.deployment.id


def down() -> UpstreamUnavailable:
    return UpstreamUnavailable("connection refused")


# -- the first pass and the fallbacks -------------------------------------------------------------


def test_the_first_candidate_is_tried_first_and_a_success_needs_nothing_else():
    plan, _, hook = make(candidates=(A, B))
    step = plan.next(0.0)
    assert tried(step) == "a" and step.after is None and step.upstream == "m"
    assert hook.calls == []  # fallbacks are computed only after a failure


def test_a_retryable_failure_moves_to_the_next_candidate_naming_what_failed():
    plan, _, _ = make(candidates=(A, B))
    plan.next(0.0)
    err = down()
    step = plan.next(0.1, Failed(err))
    assert tried(step) == "b"
    assert step.after == (A, err)


def test_after_the_candidates_the_fallbacks_then_the_last_resort_in_order_without_repeats():
    hook = Hook(normal=[F1, A, F2])
    plan, _, _ = make(candidates=(A,), fallbacks=hook, last_resort=(F2, L))
    order = [tried(plan.next(0.0))]
    for _ in range(3):
        order.append(tried(plan.next(0.0, Failed(down()))))
    assert order == ["a", "f1", "f2", "last"]
    assert hook.calls == [(frozenset({"a"}), False)]  # once, with the providers that failed


def test_when_everything_failed_and_no_retries_are_left_the_client_gets_the_last_error_naming_every_attempt():
    plan, _, _ = make(candidates=(A, B))
    plan.next(0.0)
    plan.next(0.0, Failed(UpstreamTimeout("timed out")))
    step = plan.next(0.0, Failed(down()))
    assert type(step) is GiveUp
    assert isinstance(step.error, UpstreamUnavailable)
    assert step.error.message.startswith("All 2 attempts failed: a: timed out; b: connection refused")
    assert [a[0] for a in step.error.attempts] == ["a", "b"]
    assert set(plan.by_deployment) == {"a", "b"}


def test_one_failure_is_given_back_unchanged():
    plan, _, _ = make(candidates=(A,))
    plan.next(0.0)
    err = down()
    step = plan.next(0.0, Failed(err))
    assert type(step) is GiveUp and step.error is err and err.attempts == ()


def test_an_error_another_deployment_cannot_fix_ends_the_plan_at_once():
    plan, _, hook = make(candidates=(A, B), fallbacks=Hook(normal=[F1]), retries=3)
    plan.next(0.0)
    err = UpstreamClientError("bad request", status=400)
    step = plan.next(0.0, Failed(err))
    assert type(step) is GiveUp and step.error is err
    assert hook.calls == []


def test_when_every_candidate_is_rate_limited_the_429_carries_the_smallest_retry_after():
    plan, _, _ = make(candidates=(A, B, C))
    plan.next(0.0)
    plan.next(0.0, Failed(UpstreamRateLimited("slow down", 30)))
    plan.next(0.0, Failed(UpstreamRateLimited("slow down", 5)))
    step = plan.next(0.0, Failed(UpstreamRateLimited("slow down", 60)))
    assert type(step) is GiveUp and step.error.status == 429
    assert step.error.headers() == {"Retry-After": "5"}


# -- retry rounds -----------------------------------------------------------------------------------


def test_retry_rounds_back_off_doubling_then_give_up():
    plan, _, _ = make(candidates=(A, B), retries=2, delay=0.1)
    steps = [plan.next(0.0)]
    for _ in range(9):
        step = steps[-1]
        if type(step) is GiveUp:
            break
        steps.append(plan.next(0.0, Failed(down())) if type(step) is Try else plan.next(0.0))
    kinds = [("try", s.deployment.id) if type(s) is Try else ("backoff", round(s.seconds, 3)) if type(s) is Backoff
             else ("give up",) for s in steps]
    assert kinds == [("try", "a"), ("try", "b"), ("backoff", 0.1), ("try", "a"), ("try", "b"), ("backoff", 0.2),
                     ("try", "a"), ("try", "b"), ("give up",)]
    assert steps[-1].error.message.startswith("All 6 attempts failed")


def test_the_backoff_is_jittered():
    plan, _, _ = make(candidates=(A,), retries=1, delay=0.1, jitter=1.4)
    plan.next(0.0)
    step = plan.next(0.0, Failed(down()))
    assert type(step) is Backoff and abs(step.seconds - 0.14) < 1e-9


def test_a_backoff_that_would_end_past_the_deadline_gives_up_instead():
    plan, _, _ = make(candidates=(A,), retries=5, delay=1.0, deadline=10.0)
    plan.next(0.0)
    step = plan.next(9.5, Failed(down()))
    assert type(step) is GiveUp and isinstance(step.error, UpstreamUnavailable)


def test_a_failure_at_the_deadline_gives_up_without_trying_the_next():
    plan, _, _ = make(candidates=(A, B), deadline=10.0)
    plan.next(0.0)
    step = plan.next(10.0, Failed(down()))
    assert type(step) is GiveUp


def test_a_fallback_chain_sets_its_own_retry_attempts_and_delay():
    hook = Hook(normal=[F1], retry_attempts=3, retry_delay_ms=500)
    plan, _, _ = make(candidates=(A,), fallbacks=hook, retries=0)
    plan.next(0.0)
    assert tried(plan.next(0.0, Failed(down()))) == "f1"
    step = plan.next(0.0, Failed(down()))
    assert type(step) is Backoff and step.seconds == 0.5
    assert tried(plan.next(0.5)) == "a"  # a new round walks the whole list again
    assert tried(plan.next(0.5, Failed(down()))) == "f1"
    assert type(plan.next(0.5, Failed(down()))) is Backoff  # retry_attempts 3 = 2 retry rounds
    plan.next(1.5)
    plan.next(1.5, Failed(down()))
    assert type(plan.next(1.5, Failed(down()))) is GiveUp


# -- context window ----------------------------------------------------------------------------


def overflow() -> ContextWindowExceeded:
    return ContextWindowExceeded("prompt is too long", status=400)


def test_a_context_overflow_goes_to_the_context_window_fallbacks_only_without_retry_rounds():
    hook = Hook(normal=[F1], overflow=[F2, A])
    plan, _, _ = make(candidates=(A, B), fallbacks=hook, retries=3)
    plan.next(0.0)
    assert tried(plan.next(0.0, Failed(overflow()))) == "f2"  # not b: the candidates behind it are dropped too
    step = plan.next(0.0, Failed(down()))
    assert type(step) is GiveUp  # no retry round, no ordinary fallbacks
    assert hook.calls == [(frozenset({"a"}), True)]


def test_a_context_overflow_without_context_window_fallbacks_is_given_back_as_it_is():
    plan, _, _ = make(candidates=(A, B), fallbacks=Hook(normal=[F1]))
    plan.next(0.0)
    err = overflow()
    step = plan.next(0.0, Failed(err))
    assert type(step) is GiveUp and step.error is err


def test_a_context_overflow_after_the_ordinary_fallbacks_began_ends_the_plan():
    plan, _, hook = make(candidates=(A,), fallbacks=Hook(normal=[F1], overflow=[F2]))
    plan.next(0.0)
    plan.next(0.0, Failed(down()))
    err = overflow()
    step = plan.next(0.0, Failed(err))
    assert type(step) is GiveUp and step.error is err
    assert [c[1] for c in hook.calls] == [False]


# -- availability and queueing -------------------------------------------------------------------


def test_a_cooling_candidate_is_skipped_but_the_decisions_first_pick_and_a_last_resort_are_tried():
    fleet = Fleet(down={"a", "b", "last"})
    plan, _, _ = make(candidates=(A, B, C), last_resort=(L,), fleet=fleet)
    assert tried(plan.next(0.0)) == "a"  # the engine already checked its first pick
    assert tried(plan.next(0.0, Failed(down()))) == "c"
    assert tried(plan.next(0.0, Failed(down()))) == "last"
    assert ("a", True, False) in fleet.asked_first and ("last", False, True) in fleet.asked_first


def test_when_every_candidate_is_busy_the_request_waits_for_a_slot_then_tries_again():
    fleet = Fleet(full={"a", "b"})
    plan, _, hook = make(candidates=(A, B), fleet=fleet, queue_timeout=0.3)
    step = plan.next(0.0)
    assert type(step) is WaitForSlot and [d.id for d in step.deployments] == ["a", "b"] and step.timeout == 0.3
    fleet.full = {"a"}
    assert tried(plan.next(0.1, Waited(True))) == "b"
    assert hook.calls == []  # queueing comes before the fallbacks


def test_a_wait_that_times_out_is_a_429_that_names_the_queue_timeout():
    plan, _, _ = make(candidates=(A,), fleet=Fleet(full={"a"}), queue_timeout=0.3)
    plan.next(0.0)
    step = plan.next(0.3, Waited(False))
    assert type(step) is GiveUp and isinstance(step.error, CapacityExceeded)
    assert step.error.status == 429 and "0.3 s" in step.error.message and step.error.headers() == {"Retry-After": "1"}


def test_all_waits_of_one_request_share_one_queue_timeout():
    fleet = Fleet(full={"a"})
    plan, _, _ = make(candidates=(A,), fleet=fleet, queue_timeout=1.0)
    assert plan.next(0.0).timeout == 1.0
    step = plan.next(0.7, Waited(True))  # freed, but taken by someone else first
    assert type(step) is WaitForSlot and abs(step.timeout - 0.3) < 1e-9
    step = plan.next(1.0, Waited(True))
    assert type(step) is GiveUp and isinstance(step.error, CapacityExceeded)


def test_a_wait_never_runs_past_the_deadline():
    plan, _, _ = make(candidates=(A,), fleet=Fleet(full={"a"}), queue_timeout=30.0, deadline=5.0)
    step = plan.next(4.0)
    assert type(step) is WaitForSlot and step.timeout == 1.0


def test_busy_candidates_after_a_failure_do_not_queue_the_request_they_go_to_the_fallbacks():
    fleet = Fleet()
    plan, _, _ = make(candidates=(A, B), fleet=fleet, fallbacks=Hook(normal=[F1]))
    plan.next(0.0)
    fleet.full = {"b"}
    assert tried(plan.next(0.0, Failed(down()))) == "f1"


def test_when_every_candidate_is_cooling_down_the_429_says_when_the_first_comes_back():
    fleet = Fleet(down={"b", "c"}, cooldown={"b": 12.0, "c": 7.5}, full={"a"})
    plan, _, _ = make(candidates=(A, B, C), fleet=fleet, queue_timeout=0.0)
    step = plan.next(0.0)
    assert type(step) is GiveUp and isinstance(step.error, CapacityExceeded)
    assert step.error.headers() == {"Retry-After": "1"}  # a is only busy: it may free up at any moment
    fleet2 = Fleet(down={"b", "c"}, cooldown={"a": 9.0, "b": 12.0, "c": 7.5}, full={"a"})
    plan2, _, _ = make(candidates=(A, B, C), fleet=fleet2, queue_timeout=0.0)
    assert plan2.next(0.0).error.headers() == {"Retry-After": "8"}


def test_a_queue_budget_worn_down_to_a_float_remainder_ends_the_plan():
    """Found by the property: 100 waits of 0.01 s left 5.6e-17 s of a 1 s budget, and
    0.9999999999999998 + 5.6e-17 is 0.9999999999999998: waits that never advanced time."""
    fleet = Fleet(full={"a"})
    plan, _, _ = make(candidates=(A,), fleet=fleet, deadline=1.0, queue_timeout=1.0)
    now, step, waits = 0.0, plan.next(0.0), 0
    while type(step) is WaitForSlot and waits < 1000:
        now, waits = now + min(step.timeout, 0.01), waits + 1
        step = plan.next(now, Waited(True))
    assert type(step) is GiveUp and waits == 100


def test_a_request_past_its_deadline_is_not_sent():
    plan, _, _ = make(candidates=(A,), deadline=1.0)
    step = plan.next(1.0)
    assert type(step) is GiveUp and isinstance(step.error, CapacityExceeded)


# -- properties -----------------------------------------------------------------------------------

POOL = [dep(f"d{i}", provider=f"p{i % 3}") for i in range(6)]
ERRORS = {
    "refused": lambda: UpstreamUnavailable("refused"),
    "timeout": lambda: UpstreamTimeout("timeout"),
    "429": lambda: UpstreamRateLimited("slow", 2.0),
    "400": lambda: UpstreamClientError("bad", status=400),
    "overflow": lambda: ContextWindowExceeded("too long", status=400),
    "bad": lambda: BadRequest("bad"),
}


@st.composite
def scenarios(draw):
    pick = st.lists(st.sampled_from(range(len(POOL))), max_size=4)
    return {
        "candidates": [POOL[i] for i in draw(st.lists(st.sampled_from(range(len(POOL))), max_size=4, unique=True))],
        "fallbacks": [POOL[i] for i in draw(pick)],
        "overflow": [POOL[i] for i in draw(pick)],
        "last_resort": [POOL[i] for i in draw(st.lists(st.sampled_from(range(len(POOL))), max_size=3, unique=True))],
        "retries": draw(st.integers(0, 4)),
        "retry_attempts": draw(st.none() | st.integers(0, 5)),
        "delay": draw(st.floats(0.0, 2.0)),
        "deadline": draw(st.floats(0.0, 30.0)),
        "queue_timeout": draw(st.floats(0.0, 5.0)),
        "jitter": draw(st.floats(0.5, 1.5)),
        "outcomes": draw(st.lists(st.sampled_from(["ok", *ERRORS]), max_size=60)),
        "elapsed": draw(st.lists(st.floats(0.0, 3.0), min_size=1, max_size=20)),
        "full": draw(st.lists(st.frozensets(st.sampled_from([d.id for d in POOL])), min_size=1, max_size=10)),
        "down": draw(st.frozensets(st.sampled_from([d.id for d in POOL]))),
        "freed": draw(st.lists(st.booleans(), min_size=1, max_size=10)),
    }


@PROPERTY
@given(scenarios())
def test_the_plan_always_ends_within_its_deadline_and_queue_budget_without_trying_anything_twice_in_a_round(s):
    fleet = Fleet(down=set(s["down"]))
    hook = Hook(normal=s["fallbacks"], overflow=s["overflow"], retry_attempts=s["retry_attempts"])
    plan, _, _ = make(candidates=s["candidates"], fallbacks=hook, last_resort=s["last_resort"], fleet=fleet,
                      deadline=s["deadline"], queue_timeout=s["queue_timeout"], retries=s["retries"],
                      delay=s["delay"], jitter=s["jitter"])
    now, waited = 0.0, 0.0
    this_round: set[tuple[str, str]] = set()
    outcomes, errors = iter(s["outcomes"]), []
    fleet.full = set(s["full"][0])
    step = plan.next(now)
    trace = []
    for n in range(5000):
        trace.append(step)
        assert type(step) in (Try, Backoff, WaitForSlot, GiveUp)
        fleet.full = set(s["full"][n % len(s["full"])])
        if type(step) is GiveUp:
            break
        if type(step) is Try:
            assert now < s["deadline"]
            key = (step.deployment.id, step.upstream)
            assert key not in this_round, (key, this_round, s, [type(x).__name__ for x in trace])
            this_round.add(key)
            assert step.deployment.id in {d.id for d in
                                          s["candidates"] + s["fallbacks"] + s["overflow"] + s["last_resort"]}
            outcome = next(outcomes, "ok")
            if outcome == "ok":
                break  # it reached the client: the plan is done
            now += s["elapsed"][n % len(s["elapsed"])]
            err = ERRORS[outcome]()
            errors.append(err)
            step = plan.next(now, Failed(err))
        elif type(step) is Backoff:
            assert step.seconds >= 0 and now + step.seconds < s["deadline"]
            now += step.seconds
            this_round.clear()
            step = plan.next(now)
        else:
            assert 0 < step.timeout <= s["deadline"] - now + 1e-9
            assert step.deployments
            freed = s["freed"][n % len(s["freed"])]
            spent = step.timeout if not freed else min(step.timeout, max(0.01, s["elapsed"][n % len(s["elapsed"])]))
            now += spent
            waited += spent
            assert waited <= s["queue_timeout"] + 1e-6
            step = plan.next(now, Waited(freed))
    else:
        raise AssertionError("the plan did not end in 5000 steps")
    if type(step) is GiveUp:
        if errors:
            assert step.error is errors[-1]  # the client sees the last failure (naming the others)
        else:
            assert isinstance(step.error, CapacityExceeded)
        assert len(plan.errors) == len(errors)


@PROPERTY
@given(st.lists(st.sampled_from(list(ERRORS)), min_size=1, max_size=8), st.integers(0, 3))
def test_a_non_retryable_error_is_always_the_last_thing_tried(kinds, retries):
    hook = Hook(normal=POOL[:2], overflow=POOL[3:])
    plan, _, _ = make(candidates=POOL, fallbacks=hook, retries=retries, delay=0.0)
    step = plan.next(0.0)
    for kind in kinds:
        if type(step) is Backoff:
            step = plan.next(0.0)
        if type(step) is GiveUp:
            break
        err: RouterError = ERRORS[kind]()
        fallbacks_began = bool(hook.calls)
        step = plan.next(0.0, Failed(err))
        if isinstance(err, ContextWindowExceeded) and not fallbacks_began:
            # the context window fallbacks, unless this pass already tried them all
            assert step.deployment in POOL[3:] if type(step) is Try else type(step) is GiveUp and step.error is err
        elif not err.retryable:
            assert type(step) is GiveUp and step.error is err
            break


def test_a_deployment_named_twice_by_the_fallbacks_is_tried_once_a_round():
    plan, _, _ = make(candidates=(A,), fallbacks=Hook(normal=[F1, F1, A]), last_resort=(F1,))
    plan.next(0.0)
    assert tried(plan.next(0.0, Failed(down()))) == "f1"
    assert type(plan.next(0.0, Failed(down()))) is GiveUp


def test_a_last_resort_is_tried_once_per_request_not_in_every_retry_round():
    """Every candidate cooling down after a 429: the least recently failed is tried
    once; retry rounds do not hammer it through the cooldown it asked for."""
    fleet = Fleet(down={"a", "b"})
    plan, _, _ = make(candidates=(), last_resort=(A,), fleet=fleet, retries=2, delay=0.0)
    assert tried(plan.next(0.0)) == "a"
    step = plan.next(0.0, Failed(UpstreamRateLimited("slow down", 7)))
    while type(step) is Backoff:
        step = plan.next(0.0)
    assert type(step) is GiveUp and step.error.headers() == {"Retry-After": "7"}
    assert len(plan.errors) == 1


def test_the_429_says_how_long_the_request_waited_when_the_deadline_cut_the_queue_short():
    plan, _, _ = make(candidates=(A,), fleet=Fleet(full={"a"}), queue_timeout=2.0, deadline=1.0)
    assert plan.next(0.0).timeout == 1.0
    step = plan.next(1.0, Waited(False))
    assert "busy at max_parallel_requests for 1 s" in step.error.message


# -- spill-over targets first (router.routing.spill) ----------------------------------------------


def test_a_spill_over_target_that_fails_leaves_the_request_queueing_for_its_local_candidates():
    plan, fleet, hook = make(candidates=(C, A), fleet=Fleet(full={"a"}), spill=1)
    assert tried(plan.next(0.0)) == "c"  # the cloud first: the local one is full
    step = plan.next(0.0, Failed(down()))
    assert type(step) is WaitForSlot and [d.id for d in step.deployments] == ["a"]  # not a give-up
    fleet.full.clear()
    step = plan.next(1.0, Waited(True))
    assert tried(step) == "a"  # the local slot, not the failed cloud again


def test_without_spill_over_a_failure_still_ends_queueing():
    plan, fleet, _ = make(candidates=(C, A), fleet=Fleet(full={"a"}))
    assert tried(plan.next(0.0)) == "c"
    assert type(plan.next(0.0, Failed(down()))) is GiveUp
