"""Spill-over (router.routing.spill): the pure condition, the load figures read off the
state table, the policy syntax, and the engine's choice of spill-over targets."""

from __future__ import annotations

import os
import textwrap

import pytest
from hypothesis import given, settings, strategies as st

from router.config import ConfigError, load_config
from router.domain import RequestFacts
from router.routing.engine import Engine
from router.routing.rules import Condition
from router.routing.spill import Load, holds, load_of, parse_spill
from router.state import StateTable

PROPS = settings(max_examples=300, deadline=None, derandomize=bool(os.environ.get("CI")))

loads = st.builds(Load, st.booleans(), st.integers(0, 50), st.one_of(st.none(), st.floats(0, 1e6)))


def test_parse_spill_accepts_the_three_forms_and_refuses_the_rest():
    assert parse_spill("saturated") == Condition("saturated") and str(parse_spill("saturated")) == "saturated"
    assert parse_spill("queue_wait_ms > 2000") == Condition("queue_wait_ms", ">", 2000.0)
    assert parse_spill("queue_depth>=4") == Condition("queue_depth", ">=", 4.0)
    for bad in ("busy", "queue_wait_ms > soon", "queue_depth", "queue_wait_ms > -1", "model_size > 7B"):
        with pytest.raises(ValueError, match="spill_when"):
            parse_spill(bad)


def test_saturated_holds_only_when_every_candidate_is_full():
    assert holds(Condition("saturated"), [Load(True, 0, 0.0), Load(True, 3, None)])
    assert not holds(Condition("saturated"), [Load(True, 0, 0.0), Load(False, 0, 0.0)])
    assert not holds(Condition("saturated"), [])  # nothing to spill from


def test_queue_wait_takes_the_shortest_wait_and_an_unknown_wait_never_spills():
    cond = Condition("queue_wait_ms", ">", 2000.0)
    assert holds(cond, [Load(True, 2, 2500.0), Load(True, 4, 9000.0)])
    assert not holds(cond, [Load(True, 2, 2500.0), Load(False, 0, 0.0)])  # one candidate can start now
    assert not holds(cond, [Load(True, 2, None), Load(True, 4, 9000.0)])  # no sample yet: not proven


@PROPS
@given(st.lists(loads, min_size=1, max_size=6), st.floats(0, 1e6), st.floats(0, 1e6))
def test_a_lower_threshold_spills_whenever_a_higher_one_does(ls, a, b):
    low, high = min(a, b), max(a, b)
    for subject in ("queue_wait_ms", "queue_depth"):
        if holds(Condition(subject, ">", high), ls):
            assert holds(Condition(subject, ">", low), ls)


@PROPS
@given(st.lists(loads, min_size=1, max_size=6))
def test_a_candidate_with_no_wait_keeps_the_request_local(ls):
    idle = Load(False, 0, 0.0)
    for cond in (Condition("saturated"), Condition("queue_wait_ms", ">", 0.0), Condition("queue_depth", ">", 0.0)):
        assert not holds(cond, ls + [idle])


def _config(tmp_path, mappings: str, max_parallel: int = 1):
    (tmp_path / "c.yaml").write_text(textwrap.dedent(f"""
        model_list:
          - model_name: local
            litellm_params: {{model: openai/llama, api_base: "http://127.0.0.1:9", max_parallel_requests: {max_parallel}}}
          - model_name: claude
            litellm_params: {{model: anthropic/claude-sonnet-4-5, api_key: sk-ant-test}}
        """))
    (tmp_path / "model-mappings.yaml").write_text(textwrap.dedent(mappings))
    return load_config(str(tmp_path / "c.yaml"))


CHAIN = """
    providers:
      local: {type: openai, api_base: "http://127.0.0.1:9"}
      claude: {type: anthropic}
    fallback_chains:
      default:
        chain:
          - primary: local
          - secondary: claude
            preferred_model: claude
            spill_when: %s
    """


def test_load_counts_our_waiters_and_the_servers_queue_and_estimates_the_wait(tmp_path):
    config = _config(tmp_path, CHAIN % "saturated")
    local = config.groups["local"][0]
    state = StateTable()
    assert load_of(state, local) == Load(False, 0, 0.0)
    state.started(local)
    assert load_of(state, local) == Load(True, 0, None)  # full, and no request has finished yet
    for seconds in (1.0, 3.0):
        state[local.id].held.append(seconds)
    state[local.id].waiters = 2
    load = load_of(state, local)
    assert load.full and load.queue == 2 and load.wait_ms == pytest.approx(3 * 2000.0)  # 3 ahead x 2 s, 1 lane


def test_engine_spills_to_the_chain_step_when_its_condition_holds_and_not_before(tmp_path):
    config = _config(tmp_path, CHAIN % "queue_wait_ms > 2000")
    engine, state = Engine(config), StateTable()
    local, claude = config.groups["local"][0], config.groups["claude"][0]
    assert (claude.provider, claude.hosted) == ("claude", True)  # matched to the policy's hosted provider by its base
    facts = RequestFacts(model="local")
    decision = engine.decide(facts, state)
    assert engine.spill(decision, facts, state).entries == []  # idle: stays local
    state.started(local)
    state[local.id].held.append(1.5)
    assert engine.spill(decision, facts, state).entries == []  # 1.5 s expected: under 2 s
    state[local.id].waiters = 1
    plan = engine.spill(decision, facts, state)
    assert [d.id for d, _ in plan.entries] == [claude.id] and plan.entries[0][1] == "claude-sonnet-4-5"
    assert "expected wait 3000 ms" in plan.trace[0]
    state.failed(claude, "boom", rate_limited=True, retry_after=30)
    assert engine.spill(decision, facts, state).entries == []  # a cooling-down cloud is no place to spill to


def test_a_chain_without_spill_when_costs_nothing_per_request(tmp_path):
    config = _config(tmp_path, CHAIN.replace("spill_when: %s", "condition: always"))
    engine = Engine(config)
    assert engine.spill(engine.decide(RequestFacts(model="local"), StateTable()), RequestFacts(model="local"), StateTable()) is None


def test_a_bad_spill_when_is_a_located_error(tmp_path):
    with pytest.raises(ConfigError) as err:
        _config(tmp_path, CHAIN % "when busy")
    assert "model-mappings.yaml:11: fallback_chains.default.chain[1].spill_when: cannot parse spill_when 'when busy'" in str(err.value)


def test_the_servers_own_queue_counts_towards_queue_depth_and_the_wait(tmp_path):
    """A vLLM (no max_parallel_requests) that reports 3 running and 4 waiting on /metrics."""
    from router.state import ServerState

    config = _config(tmp_path, CHAIN % "queue_depth > 3")
    local = config.groups["local"][0]
    local = type(local)(**{**{f: getattr(local, f) for f in local.__slots__ if not f.startswith("_")},
                           "max_parallel_requests": None})
    state = StateTable()
    state.servers[local.api_base] = ServerState(reachable=True, running=3, waiting=4)
    state[local.id].held.append(0.9)
    load = load_of(state, local)
    assert load == Load(False, 4, pytest.approx(4 * 900 / 3))  # 4 ahead, 3 lanes of 0.9 s
    assert holds(parse_spill("queue_depth > 3"), [load]) and not holds(parse_spill("queue_depth > 4"), [load])


def test_a_chain_step_whose_model_is_on_another_provider_warns_where_it_would_really_go(tmp_path):
    (tmp_path / "c.yaml").write_text(textwrap.dedent("""
        model_list:
          - model_name: local
            litellm_params: {model: openai/llama, api_base: "http://127.0.0.1:9", max_parallel_requests: 1}
          - model_name: claude
            litellm_params: {model: anthropic/claude-sonnet-4-5, api_base: "http://127.0.0.1:18004", api_key: k}
        """))
    (tmp_path / "model-mappings.yaml").write_text(textwrap.dedent(CHAIN % "saturated"))
    warnings = [str(w) for w in load_config(str(tmp_path / "c.yaml")).warnings]
    assert any("fallback_chains.default.chain[1].preferred_model: model group 'claude' has no deployment on provider "
               "'claude' (it is on anthropic): this step sends 'claude' to 'claude''s catch-all at https://api.anthropic.com" in w
               for w in warnings), warnings
