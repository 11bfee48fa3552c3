"""Load-balancing strategies: properties (hypothesis) and behaviour on a state view."""

from __future__ import annotations

import random
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from router.domain import Deployment, RequestFacts
from router.policy import StrategySpec
from router.routing import strategies
from router.state import ServerState, StateTable

FACTS = RequestFacts(model="m")
ALL = strategies.registry()
CHI2_1E6 = {1: 23.93, 2: 27.63, 3: 30.66, 4: 33.38, 5: 35.89}  # chi-square critical values at p = 1e-6


def deps(n: int, **kw) -> list[Deployment]:
    return [Deployment(id=f"d{i}", model_name="m", provider=f"p{i}", kind="vllm", upstream_model="m",
                       api_base=f"http://h:{i}/v1", **{k: v[i] for k, v in kw.items()}) for i in range(n)]


@settings(max_examples=25, deadline=None, derandomize=True)
@given(st.lists(st.integers(min_value=1, max_value=20), min_size=2, max_size=6), st.integers(0, 2**32))
def test_weighted_shuffle_converges_to_the_weights(weights, seed):
    cands = deps(len(weights), weight=[float(w) for w in weights])
    shuffle, rng, n = ALL["simple-shuffle"](), random.Random(seed), 6000
    counts = Counter(shuffle.order("m", cands, StateTable(), rng, FACTS)[0][0].id for _ in range(n))
    total = sum(weights)
    chi2 = sum((counts[d.id] - n * w / total) ** 2 / (n * w / total) for d, w in zip(cands, weights))
    assert chi2 < CHI2_1E6[len(weights) - 1], (weights, counts)


@settings(max_examples=25, deadline=None, derandomize=True)
@given(st.integers(min_value=2, max_value=6), st.integers(min_value=1, max_value=30))
def test_round_robin_is_fair(n, rounds):
    cands, view = deps(n), StateTable()
    rr = ALL["round-robin"]()
    counts = Counter()
    for _ in range(n * rounds):
        pick = rr.order("m", cands, view, random.Random(0), FACTS)[0][0]
        view.picked(pick)
        counts[pick.id] += 1
    assert set(counts.values()) == {rounds}


@settings(max_examples=60, deadline=None, derandomize=True)
@given(st.sampled_from(sorted(ALL)), st.integers(min_value=1, max_value=6), st.lists(st.integers(0, 50), min_size=6, max_size=6),
       st.lists(st.floats(0.001, 5), min_size=6, max_size=6), st.booleans(), st.integers(0, 2**32))
def test_every_strategy_returns_each_candidate_exactly_once(name, n, loads, latencies, stream, seed):
    cands, view = deps(n), StateTable()
    for d, load, latency in zip(cands, loads, latencies):
        view[d.id].in_flight = load
        for _ in range(load % 7):
            view[d.id].ttft.append(latency)
            view[d.id].outcomes.append(load % 3 != 0)
    ranked = ALL[name]().order("m", cands, view, random.Random(seed), RequestFacts(model="m", stream=stream))
    assert sorted(d.id for d, _ in ranked) == sorted(d.id for d in cands)


def test_least_busy_uses_the_backends_own_load_when_it_is_higher():
    a, b = deps(2)
    view = StateTable()
    view[a.id].in_flight, view[b.id].in_flight = 1, 2
    assert ALL["least-busy"]().order("m", [a, b], view, random.Random(0), FACTS)[0][0] is a
    view.servers[a.api_base] = ServerState(reachable=True, running=5, waiting=3)  # other clients keep a busy
    ranked = ALL["least-busy"]().order("m", [a, b], view, random.Random(0), FACTS)
    assert [(d.id, s) for d, s in ranked] == [("d1", 2.0), ("d0", 8.0)]


def test_least_busy_spreads_concurrent_requests_evenly():
    cands, view = deps(3), StateTable()
    lb = ALL["least-busy"]()
    for _ in range(30):  # 30 long requests arriving while none finishes
        pick = lb.order("m", cands, view, random.Random(), FACTS)[0][0]
        view[pick.id].started()
    assert [view[d.id].in_flight for d in cands] == [10, 10, 10]


def _measured(view: StateTable, d: Deployment, seconds: float, n: int = 20, stream: bool = True) -> None:
    for _ in range(n):
        (view[d.id].ttft if stream else view[d.id].latency).append(seconds)


def test_latency_based_prefers_the_lowest_p95_and_explores_a_little():
    fast, slow = deps(2)
    view = StateTable()
    _measured(view, fast, 0.05)
    _measured(view, slow, 0.40)
    lb = ALL["latency-based"](StrategySpec("fastest_response", explore=0.1, reevaluate_seconds=0.0001))
    rng = random.Random(5)
    counts = Counter(lb.order("m", [slow, fast], view, rng, RequestFacts(model="m", stream=True))[0][0].id for _ in range(2000))
    assert 0.85 < counts["d0"] / 2000 < 0.95  # ~90 %: the rest is exploration


def test_latency_based_shifts_when_the_fast_one_slows_down():
    a, b = deps(2)
    view = StateTable()
    _measured(view, a, 0.05)
    _measured(view, b, 0.20)
    lb = ALL["latency-based"](StrategySpec("fastest_response", explore=0.0, reevaluate_seconds=10))
    now = [0.0]
    lb.clock = lambda: now[0]
    assert lb.order("m", [a, b], view, random.Random(0), RequestFacts(model="m", stream=True))[0][0] is a
    _measured(view, a, 0.90, n=100)  # the window fills with slow samples
    now[0] = 5.0  # within the re-evaluation interval the ranking stands
    assert lb.order("m", [a, b], view, random.Random(0), RequestFacts(model="m", stream=True))[0][0] is a
    now[0] = 10.0
    assert lb.order("m", [a, b], view, random.Random(0), RequestFacts(model="m", stream=True))[0][0] is b


def test_latency_based_tries_unmeasured_deployments_first():
    a, b = deps(2)
    view = StateTable()
    _measured(view, a, 0.05)
    lb = ALL["latency-based"](StrategySpec("fastest_response", explore=0.0))
    assert lb.order("m", [a, b], view, random.Random(0), FACTS)[0][0] is b


def test_usage_based_scores_latency_success_and_cost_with_the_configured_weights():
    a, b = deps(2)
    view = StateTable()
    _measured(view, a, 0.1, stream=False)
    _measured(view, b, 0.2, stream=False)
    for _ in range(10):
        view[a.id].outcomes.append(False)  # a is fast but failing
        view[b.id].outcomes.append(True)
    ub = ALL["usage-based"](StrategySpec("usage_based", weight_factors={"latency": 0.4, "success_rate": 0.4, "cost": 0.2}))
    ranked = ub.order("m", [a, b], view, random.Random(0), FACTS)
    assert [(d.id, s) for d, s in ranked] == [("d1", pytest.approx(0.8)), ("d0", pytest.approx(0.6))]


def test_usage_based_recomputes_every_ten_requests():
    a, b = deps(2)
    view = StateTable()
    ub = ALL["usage-based"]()
    first = ub.order("g", [a, b], view, random.Random(0), FACTS)
    for _ in range(10):
        view[b.id].outcomes.append(False)
    # requests 2..10 still see the memoised (equal) scores; the 11th sees b failing
    for _ in range(9):
        assert {s for _, s in ub.order("g", [a, b], view, random.Random(0), FACTS)} == {s for _, s in first}
    assert ub.order("g", [a, b], view, random.Random(0), FACTS)[0][0] is a


def test_most_capacity_prefers_free_slots():
    a, b = deps(2)
    view = StateTable()
    view.servers[a.api_base] = ServerState(reachable=True, slots=4, running=3, waiting=0)
    view.servers[b.api_base] = ServerState(reachable=True, slots=4, running=1, waiting=0)
    assert ALL["most-capacity"]().order("m", [a, b], view, random.Random(0), FACTS)[0][0] is b


def test_cost_based_prefers_the_cheapest():
    a, b = deps(2, model_info=[{"input_cost_per_token": 2e-6}, {"input_cost_per_token": 1e-6}])
    assert ALL["cost-based"]().order("m", [a, b], StateTable(), random.Random(0), FACTS)[0][0] is b


def test_every_accepted_name_maps_to_an_implemented_strategy():
    assert {strategies.canonical(n) for n in strategies.STRATEGY_NAMES} == set(ALL)
