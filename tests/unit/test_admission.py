"""The admission queue (router.admission) and the slot hand-over (router.state): class
order, deficit round-robin by key, aging, reservations, bounds; and, as hypothesis
properties, no starvation within the aging bound and a work-conserving hand-over."""

from __future__ import annotations

import os
from types import MappingProxyType

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from router.admission import (
    AGED_BYPASS,
    Admission,
    PrioritySettings,
    QueueFull,
    Waiter,
    classify,
    estimate_work,
)
from router.domain import Deployment
from router.state import StateTable

CI = bool(os.environ.get("CI"))
PROPS = settings(max_examples=150 if CI else 300, derandomize=CI, deadline=None,
                 suppress_health_check=[HealthCheck.too_slow])

INTERACTIVE, DEFAULT, BATCH = 0, 1, 2


def dep(name: str = "d1", cap: int | None = 1) -> Deployment:
    return Deployment(id=name, model_name="m", provider=name, kind="vllm", upstream_model="m",
                      api_base=f"http://{name}", max_parallel_requests=cap)


def waiter(rank: int, caller: str, since: float = 0.0, work: int = 100, log: list | None = None) -> Waiter:
    w = Waiter(rank, caller, work, since, caller)
    if log is not None:
        w.wake = lambda d, w=w: log.append((w, d))
    return w


def drain(adm: Admission, dep_id: str = "d1", now: float = 0.0, allowed: int = 2) -> list[Waiter]:
    out = []
    while (w := adm.next_for(dep_id, allowed, now)) is not None:
        out.append(w)
    return out


def test_classes_are_served_highest_first_and_arrival_order_within_a_key():
    adm = Admission(PrioritySettings(aging_seconds=0))
    ws = [waiter(BATCH, "k", 0), waiter(DEFAULT, "k", 1), waiter(INTERACTIVE, "k", 2), waiter(BATCH, "k", 3),
          waiter(INTERACTIVE, "k", 4)]
    for w in ws:
        adm.enqueue(w, frozenset({"d1"}))
    served = drain(adm)
    assert [(w.rank, w.since) for w in served] == [(0, 2), (0, 4), (1, 1), (2, 0), (2, 3)]
    assert adm.waiting() == 0 and not adm.pools and not adm.by_dep


def test_one_keys_500_queued_requests_do_not_delay_another_keys_first():
    adm = Admission(PrioritySettings(aging_seconds=0))
    for i in range(500):
        adm.enqueue(waiter(BATCH, "flood", i, work=1500), frozenset({"d1"}))
    adm.enqueue(waiter(BATCH, "other", 1000, work=300), frozenset({"d1"}))
    order = [w.caller for w in drain(adm)]
    assert order.index("other") <= 1


def test_keys_get_equal_work_not_equal_requests():
    """Deficit round-robin by work: a key whose requests are 3× larger gets a third of the requests."""
    adm = Admission(PrioritySettings(aging_seconds=0))
    for i in range(300):
        adm.enqueue(waiter(BATCH, "big", i, work=900), frozenset({"d1"}))
        adm.enqueue(waiter(BATCH, "small", i, work=300), frozenset({"d1"}))
    served = [adm.next_for("d1", 2, 0.0) for _ in range(200)]
    work = {"big": 0, "small": 0}
    for w in served:
        work[w.caller] += w.work
    assert 0.4 < work["big"] / (work["big"] + work["small"]) < 0.6


def test_a_waiter_ages_one_class_per_aging_period():
    adm = Admission(PrioritySettings(aging_seconds=10))
    old = waiter(BATCH, "b", since=0.0)
    adm.enqueue(old, frozenset({"d1"}))
    adm.enqueue(waiter(DEFAULT, "d", since=14.0), frozenset({"d1"}))
    # at t=15 the batch request is default (one step) and overtakes nothing yet: the
    # default class's own request goes first
    assert adm.next_for("d1", 2, 15.0).caller == "d"
    adm.enqueue(waiter(DEFAULT, "d", since=19.0), frozenset({"d1"}))
    # at t=20 it is interactive: above every default request
    assert adm.next_for("d1", 2, 20.0) is old


def test_aged_requests_get_every_fourth_slot_past_the_class_they_reached():
    """A batch backlog aged up to interactive does not take the slots from interactive
    requests, but it is not starved by them either: one slot in AGED_BYPASS + 1."""
    adm = Admission(PrioritySettings(aging_seconds=1))
    for i in range(20):
        adm.enqueue(waiter(BATCH, "bulk", since=float(i)), frozenset({"d1"}))
    for i in range(20):
        adm.enqueue(waiter(INTERACTIVE, "chat", since=100.0 + i), frozenset({"d1"}))
    ranks = [adm.next_for("d1", 2, 200.0).rank for _ in range(16)]
    assert ranks == ([0] * AGED_BYPASS + [2]) * 4


def test_the_aged_share_is_counted_in_work_not_in_requests():
    """A 2,000-token batch job aged up to interactive waits for 3 × 2,000 tokens of chats,
    not for 3 chats: short interactive requests keep most of a busy fleet."""
    adm = Admission(PrioritySettings(aging_seconds=1))
    for i in range(5):
        adm.enqueue(waiter(BATCH, "bulk", since=float(i), work=2000), frozenset({"d1"}))
    for i in range(300):
        adm.enqueue(waiter(INTERACTIVE, f"chat{i % 2}", since=100.0 + i / 10, work=50), frozenset({"d1"}))
    ranks = [adm.next_for("d1", 2, 200.0).rank for _ in range(250)]
    assert ranks.index(2) == 3 * 2000 // 50
    assert ranks.count(2) == 2


def test_keys_still_take_turns_among_aged_requests():
    """One key's flood that has aged does not turn the queue into arrival order: a second
    key's request still waits for one turn, not for the flood."""
    adm = Admission(PrioritySettings(aging_seconds=1))
    for i in range(250):
        adm.enqueue(waiter(BATCH, "flood", since=float(i) / 100), frozenset({"d1"}))
    adm.enqueue(waiter(BATCH, "other", since=5.0), frozenset({"d1"}))
    order = [adm.next_for("d1", 2, 100.0).caller for _ in range(4)]
    assert "other" in order[:2]


def test_waiters_of_a_class_a_reload_removed_are_served_as_the_last_class():
    adm = Admission(PrioritySettings(aging_seconds=0))
    w = waiter(BATCH, "b")
    adm.enqueue(w, frozenset({"d1"}))
    adm.configure(PrioritySettings(classes=("interactive", "default"), aging_seconds=0))
    snap = adm.snapshot(1.0)
    assert snap["classes"]["default"]["waiting"] == 1 and snap["keys"] == {"b": {"default": 1}}
    assert adm.next_for("d1", 0, 1.0) is None  # not into a slot only interactive may take
    assert adm.next_for("d1", 1, 1.0) is w


def test_without_aging_batch_waits_for_every_interactive_request():
    adm = Admission(PrioritySettings(aging_seconds=0))
    adm.enqueue(waiter(BATCH, "b", since=0.0), frozenset({"d1"}))
    for i in range(5):
        adm.enqueue(waiter(INTERACTIVE, "i", since=1000.0 + i), frozenset({"d1"}))
    assert [w.rank for w in drain(adm, now=5000.0)] == [0] * 5 + [2]


def test_a_full_class_queue_refuses_and_other_classes_still_queue():
    adm = Admission(PrioritySettings(queue_limit=MappingProxyType({"batch": 2})))
    adm.enqueue(waiter(BATCH, "a"), frozenset({"d1"}))
    adm.enqueue(waiter(BATCH, "a"), frozenset({"d1"}))
    with pytest.raises(QueueFull):
        adm.enqueue(waiter(BATCH, "b"), frozenset({"d1"}))
    adm.enqueue(waiter(INTERACTIVE, "a"), frozenset({"d1"}))
    assert adm.waiting() == 3
    adm.next_for("d1", 2, 0.0)  # the interactive one
    adm.next_for("d1", 2, 0.0)
    adm.enqueue(waiter(BATCH, "b"), frozenset({"d1"}))  # room again


def test_a_zero_limit_means_that_class_never_waits():
    adm = Admission(PrioritySettings(queue_limit=MappingProxyType({"batch": 0})))
    with pytest.raises(QueueFull):
        adm.enqueue(waiter(BATCH, "a"), frozenset({"d1"}))


def test_a_removed_waiter_is_never_granted_and_the_counts_follow():
    adm = Admission()
    a, b = waiter(DEFAULT, "x", 0), waiter(DEFAULT, "y", 1)
    adm.enqueue(a, frozenset({"d1"}))
    adm.enqueue(b, frozenset({"d1"}))
    adm.remove(a)
    adm.remove(a)  # twice is harmless
    assert adm.waiting() == 1 and adm.snapshot(2.0)["keys"] == {"y": {"default": 1}}
    assert drain(adm) == [b]
    assert adm.depth[DEFAULT] == 0 and not adm.by_key


def test_many_removals_do_not_grow_the_queues_without_bound():
    adm = Admission()
    keep = waiter(DEFAULT, "k", 0)
    adm.enqueue(keep, frozenset({"d1"}))
    for i in range(10_000):
        w = waiter(DEFAULT, f"k{i % 7}", i + 1)
        adm.enqueue(w, frozenset({"d1"}))
        adm.remove(w)
    cq = adm.pools[frozenset({"d1"})].classes[DEFAULT]
    assert len(cq.arrivals) < 200 and sum(len(q) for q in cq.callers.values()) < 200
    assert drain(adm) == [keep]


def test_the_allowed_rank_keeps_a_reserved_slot_from_lower_classes():
    adm = Admission(PrioritySettings(aging_seconds=0))
    adm.enqueue(waiter(BATCH, "b"), frozenset({"d1"}))
    assert adm.next_for("d1", INTERACTIVE, 0.0) is None
    assert adm.next_for("d1", BATCH, 0.0).rank == BATCH


def test_pools_a_waiter_for_two_deployments_takes_whichever_frees_first():
    adm = Admission()
    w = waiter(DEFAULT, "k")
    adm.enqueue(w, frozenset({"d1", "d2"}))
    assert adm.next_for("d2", 2, 0.0) is w and w.granted == "d2"
    assert adm.next_for("d1", 2, 0.0) is None and not adm.by_dep


def test_across_pools_the_better_class_then_the_longest_wait():
    adm = Admission(PrioritySettings(aging_seconds=0))
    a = waiter(DEFAULT, "a", since=1.0)
    b = waiter(DEFAULT, "b", since=0.5)
    c = waiter(INTERACTIVE, "c", since=2.0)
    adm.enqueue(a, frozenset({"d1"}))
    adm.enqueue(b, frozenset({"d1", "d2"}))
    adm.enqueue(c, frozenset({"d1", "d3"}))
    assert drain(adm) == [c, b, a]


def test_thresholds_reserve_slots_for_the_classes_above_but_never_the_last_one():
    s = PrioritySettings(reserve=MappingProxyType({"interactive": 1, "default": 1}))
    assert s.thresholds(4) == [4, 3, 2]
    assert s.thresholds(2) == [2, 1, 1]
    assert s.thresholds(1) == [1, 1, 1]


@pytest.mark.parametrize("value,rank", [
    ("interactive", 0), ("Batch", 2), ("high", 0), ("low", 2), ("normal", 1), (0, 0), (1, 1), (7, 2), (-3, 0),
    ("0", 0), ("2", 2), (1.0, 1), (True, None), ("urgentish", None), ([], None), (None, None),
])
def test_parse_accepts_names_aliases_and_litellm_integers(value, rank):
    assert PrioritySettings().parse(value) == rank


def test_classify_key_class_request_override_and_ceiling():
    s = PrioritySettings()
    assert classify(s, None, None, None, None) == (1, "default")
    assert classify(s, "k", "batch", None, None) == (2, "key 'k'")
    # a request may lower itself, not rise above its key's class
    assert classify(s, "k", "batch", None, ("header x-priority", "low"))[0] == 2
    rank, why = classify(s, "k", "batch", None, ("header x-priority", "high"))
    assert rank == 2 and "lowered to batch by the priority of key 'k'" in why
    # max_priority lets a key's requests ask for more than its class, up to the ceiling
    assert classify(s, "k", "batch", "default", ("body priority", 0)) == \
        (1, "body priority 0, lowered to default by the max_priority of key 'k'")
    assert classify(s, "k", "batch", "interactive", ("body priority", 0))[0] == 0
    # no key class and no ceiling: the request's own word
    assert classify(s, None, None, None, ("metadata.priority", "interactive"))[0] == 0
    assert classify(s, None, None, None, ("body priority", "nonsense")) is None


def test_work_is_the_prompt_plus_what_it_may_generate():
    assert estimate_work(4000, 200) == 1200
    assert estimate_work(0, None) == 256
    assert estimate_work(0, True) == 256
    assert estimate_work(40, 0) == 266


# -- the hand-over (StateTable.dispatch / room / unreserve) --------------------------------


def test_a_freed_slot_is_handed_to_the_best_waiter_and_held_for_it():
    state = StateTable()
    state.admission.configure(PrioritySettings(aging_seconds=0))  # (the hand-over reads the monotonic clock)
    d = dep(cap=1)
    state.started(d)
    granted: list = []
    low, high = waiter(BATCH, "b", 0, log=granted), waiter(INTERACTIVE, "i", 1, log=granted)
    state.admission.enqueue(low, frozenset({d.id}))
    state.admission.enqueue(high, frozenset({d.id}))
    state.finished(d, None)
    assert granted == [(high, "d1")] and state[d.id].reserved == 1
    assert not state.room(d, INTERACTIVE)  # a newcomer does not take the handed-over slot
    state.unreserve(d)  # it went elsewhere: the slot passes on
    assert granted[-1] == (low, "d1") and state[d.id].reserved == 1


def test_a_reserved_slot_is_kept_for_interactive_requests():
    state = StateTable()
    state.admission.configure(PrioritySettings(reserve=MappingProxyType({"interactive": 1})))
    d = dep(cap=2)
    assert state.room(d, BATCH)
    state.started(d)
    assert not state.room(d, BATCH) and not state.room(d, DEFAULT) and state.room(d, INTERACTIVE)
    granted: list = []
    state.admission.enqueue(waiter(BATCH, "b", log=granted), frozenset({d.id}))
    state.dispatch(d)
    assert granted == []  # the free slot is interactive's
    i = waiter(INTERACTIVE, "i", log=granted)
    state.admission.enqueue(i, frozenset({d.id}))
    state.dispatch(d)
    assert granted == [(i, "d1")]


def test_a_server_reporting_a_queue_freezes_our_concurrency_there_until_it_drains():
    from router.state import ServerState

    state = StateTable()
    state.admission.configure(PrioritySettings(backend_queue_threshold=2))
    d = dep(cap=None)
    state.started(d)
    state.started(d)
    state.probed(d, ServerState(reachable=True, running=8, waiting=5))
    assert state.limit(d) == 2 and not state.room(d, INTERACTIVE)
    granted: list = []
    w = waiter(DEFAULT, "k", log=granted)
    state.admission.enqueue(w, frozenset({d.id}))
    state.finished(d, None)  # one of ours ended: the next waiter takes its place
    assert granted == [(w, "d1")]
    state.probed(d, ServerState(reachable=True, running=8, waiting=1))
    assert state.limit(d) is None and state.room(d, BATCH)


# -- properties -------------------------------------------------------------------------------

arrivals = st.lists(st.tuples(st.integers(0, 2), st.integers(0, 3), st.integers(1, 4)), min_size=1, max_size=60)


@PROPS
@given(arrivals=st.lists(st.lists(st.tuples(st.integers(0, 2), st.integers(0, 3)), max_size=3), min_size=1, max_size=80),
       aging=st.integers(1, 8), flood=st.integers(0, 2), flood_from=st.integers(0, 20), flood_ticks=st.integers(0, 300))
def test_no_request_starves_within_the_aging_bound(arrivals, aging, flood, flood_from, flood_ticks):
    """One serial deployment, each request holding it one tick, arrivals every tick (as many
    interactive ones as the draw likes). A request of class r reaches the top class after
    r × aging ticks; from then on it is served within (m + 1) × K × G × (AGED_BYPASS + 1)
    grants, where m is the number of older requests still waiting then, K the keys, G the
    grants one key's turn may take (the smallest head's work × the largest weight, 4, ÷ the
    work, all 1 here), and the top class's own requests take at most AGED_BYPASS grants in a
    row past it."""
    s = PrioritySettings(aging_seconds=float(aging))
    adm = Admission(s)
    keys, g = 4, 4
    queued: list[Waiter] = []
    served_at: dict[int, int] = {}
    promoted_older: dict[int, int] = {}
    tick = 0
    pending = list(arrivals)
    if flood:
        pending += [[]] * max(0, flood_from + flood_ticks - len(pending))
        for t in range(flood_from, flood_from + flood_ticks):
            pending[t] = pending[t] + [(0, 3)] * flood
    while pending or adm.waiting():
        for rank, key in (pending.pop(0) if pending else []):
            w = waiter(rank, f"k{key}", since=float(tick), work=1)
            adm.enqueue(w, frozenset({"d1"}))
            queued.append(w)
        for w in queued:  # note, at the tick each reaches the top class, how many older ones still wait
            if id(w) not in promoted_older and not w.done and tick >= w.since + w.rank * aging:
                promoted_older[id(w)] = sum(1 for o in queued if not o.done and o.since < w.since)
        w = adm.next_for("d1", 2, float(tick))
        if w is not None:
            served_at[id(w)] = tick
        tick += 1
        assert tick < 100_000
    for w in queued:
        due = w.since + w.rank * aging
        assert served_at[id(w)] <= due + (promoted_older.get(id(w), 0) + 1) * keys * g * (AGED_BYPASS + 1)


@PROPS
@given(caps=st.lists(st.integers(1, 3), min_size=1, max_size=3),
       events=st.lists(st.tuples(st.sampled_from(["arrive", "finish", "leave"]), st.integers(0, 2), st.integers(0, 7),
                                 st.integers(0, 2)), max_size=120))
def test_the_hand_over_is_work_conserving(caps, events):
    """After every arrival, finish or departure: no deployment has a free slot while a
    request that may use it waits (no reservations), and no slot is ever held twice."""
    state = StateTable()
    state.admission.configure(PrioritySettings(aging_seconds=3))
    deps = [dep(f"d{i}", cap) for i, cap in enumerate(caps)]
    running: list[str] = []
    waiting: list[Waiter] = []

    def granted(w: Waiter, dep_id: str) -> None:
        waiting.remove(w)
        state[dep_id].reserved -= 1  # the request takes its slot at once (attempt.run)
        state.started(next(d for d in deps if d.id == dep_id))
        running.append(dep_id)

    for t, (kind, rank, key, which) in enumerate(events):
        if kind == "arrive":
            pool = [d for i, d in enumerate(deps) if i == which % len(deps) or which == 2]
            free = [d for d in pool if state.room(d, rank)]
            if free and not any(d.id in state.admission.by_dep for d in free):
                state.started(free[0])
                running.append(free[0].id)
            else:
                w = waiter(rank, f"k{key}", since=float(t))
                w.wake = lambda dep_id, w=w: granted(w, dep_id)
                waiting.append(w)
                state.admission.enqueue(w, frozenset(d.id for d in pool))
                for d in pool:
                    state.dispatch(d)
        elif kind == "finish" and running:
            dep_id = running.pop(key % len(running))
            state.finished(next(d for d in deps if d.id == dep_id), None)
        elif kind == "leave" and waiting:
            state.admission.remove(waiting.pop(key % len(waiting)))
        for d in deps:
            s = state[d.id]
            assert s.in_flight <= d.max_parallel_requests and s.reserved == 0
            if s.in_flight < d.max_parallel_requests:
                assert state.admission.waiting(d.id) == 0, (d.id, s.in_flight, state.admission.waiting(d.id))
    assert state.admission.waiting() == len(waiting)


def test_a_key_that_got_more_lately_gets_a_smaller_quantum():
    """The recent share (this process's, or every instance's through Redis) weighs the turns:
    with equal queues, the key that got less lately is served more until they even out."""
    import time

    adm = Admission(PrioritySettings(aging_seconds=0))
    now = time.time()
    adm.shares.served("heavy", 10_000, now)
    adm.shares.served("light", 1_000, now)
    for i in range(40):
        adm.enqueue(waiter(BATCH, "heavy", i, work=100), frozenset({"d1"}))
        adm.enqueue(waiter(BATCH, "light", i, work=100), frozenset({"d1"}))
    first = [adm.next_for("d1", 2, now).caller for _ in range(20)]
    assert first.count("light") >= 14
