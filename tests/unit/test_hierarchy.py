"""The seven-step hierarchy on the shipped config: capability, size, metadata, warm-first, limits."""

from __future__ import annotations

import random
import textwrap
from pathlib import Path

import pytest

from router.config import load_config
from router.domain import RequestFacts
from router.errors import BadRequest
from router.errors import NoCapableDeployment, RateLimited
from router.routing.engine import Engine
from router.state import ServerState, StateTable

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def engine() -> Engine:
    return Engine(load_config(str(ROOT / "config/litellm-unified.yaml")), random.Random(3))


def decide(engine, model=None, view=None, **facts):
    return engine.decide(RequestFacts(model=model, **facts), view or StateTable())


def ids(decision) -> list[str]:
    return [d.id for d in decision.candidates]


# -- capability -----------------------------------------------------------------------------

def test_capability_header_without_model_uses_preferred_models_and_provider(engine):
    d = decide(engine, capability="code_generation")
    assert (d.route, d.matched, d.strategy) == ("capability", "code_generation", "simple-shuffle")  # load_balance
    assert set(ids(d)) == {"qwen-coder", "deepseek-coder"}  # its preferred models, on its provider


def test_min_model_size_keeps_only_big_enough_deployments(engine):
    d = decide(engine, capability="high_throughput")
    assert ids(d) == ["llama2-13b-vllm"]
    assert d.upstream_name(d.candidates[0]) == "meta-llama/Llama-2-13b-chat-hf"


def test_min_context_excludes_small_contexts_and_says_so(engine):
    d = decide(engine, capability="large_context")
    assert set(ids(d)) == {"llama-cpp-python", "llama3.1-llamacpp"}
    assert "capability large_context: llama2-13b-vllm excluded (context 4096 < 8192)" in d.trace
    assert d.strategy == "most-capacity"


def test_capability_fallback_provider_follows_its_candidates(engine):
    d = decide(engine, capability="low_latency")
    assert ids(d)[0] == "llama-cpp-native"
    assert set(ids(d)[1:]) == {"llama-cpp-python", "llama3.1-llamacpp"}  # fallback: llama_cpp_python


def test_model_named_like_a_capability_routes_by_it_when_nothing_else_matches(tmp_path):
    (tmp_path / "c.yaml").write_text((ROOT / "config/litellm-unified.yaml").read_text().replace("    general_chat:\n", "    chat_alias:\n"))
    (tmp_path / "model-mappings.yaml").write_text((ROOT / "config/model-mappings.yaml").read_text())
    eng = Engine(load_config(str(tmp_path / "c.yaml")), random.Random(1))
    d = decide(eng, "general_chat")
    assert (d.route, d.strategy) == ("capability", "usage-based")
    assert set(ids(d)) == {"llama3.1-ollama", "llama3.1-llamacpp", "llama2-13b-vllm"}


def test_an_exact_model_wins_over_the_capability_hint(engine):
    d = decide(engine, "llama2-13b-vllm", capability="code_generation")
    assert d.route == "exact" and "not needed, the model name decided" in d.trace[-1]


def test_unknown_capability_is_a_400_naming_the_known_ones(engine):
    with pytest.raises(BadRequest) as info:
        decide(engine, capability="poetry")
    assert "code_generation, general_chat, high_throughput, large_context, low_latency" in info.value.message


def test_capability_nobody_satisfies_is_a_clear_error(tmp_path):
    (tmp_path / "c.yaml").write_text("model_list:\n  - {model_name: small, litellm_params: {model: 'ollama/phi3:3b', api_base: 'http://127.0.0.1:1'}}\n")
    (tmp_path / "model-mappings.yaml").write_text(textwrap.dedent("""
        providers: {ollama: {type: ollama, api_base: "http://127.0.0.1:1"}}
        capabilities: {big: {min_model_size: "30B", provider: ollama}}
        """))
    with pytest.raises(NoCapableDeployment) as info:
        decide(Engine(load_config(str(tmp_path / "c.yaml"))), capability="big")
    assert "small@ollama: 3B < 30B" in info.value.message


# -- model size ---------------------------------------------------------------------------------

@pytest.mark.parametrize("model, provider, fallback", [
    ("tinyllama-1.1b", "ollama", None),      # < 8B
    ("some-8b-thing", "ollama", "llama_cpp_python"),  # 8B - 13B (8 is in)
    ("vicuna-13b", "ollama", "llama_cpp_python"),     # 13 is in 8B - 13B
    ("llama-70b", "vllm", "ollama"),          # > 13B
])
def test_size_routing_uses_the_parameter_count_in_the_name(engine, model, provider, fallback):
    d = decide(engine, model)
    assert (d.route, d.candidates[0].provider) == ("size", provider)
    assert [c.provider for c in d.candidates[1:]] == ([fallback] if fallback else [])
    assert all(d.upstream_name(c) == model for c in d.candidates)


def test_model_size_falls_back_to_model_info_then_backend_metadata(engine):
    cfg = engine.config
    dep = cfg.by_id["deepseek-coder"]  # "deepseek-coder-v2": no size in the name
    view = StateTable()
    assert engine.model_size(dep, view) is None
    view.servers[dep.api_base] = ServerState(reachable=True, sizes={"deepseek-coder-v2": 15.7})
    assert engine.model_size(dep, view) == 15.7


# -- request metadata -------------------------------------------------------------------------------

def test_streaming_requests_go_to_ollama_where_the_model_is_deployed_there(engine):
    for _ in range(20):
        d = decide(engine, "llama3.1:8b", stream=True)
        assert d.candidates[0].id == "llama3.1-ollama"
        assert d.route in ("metadata", "exact")


def test_priority_header_moves_vllm_first_when_the_alias_has_a_vllm_deployment(engine):
    d = decide(engine, "general_chat", headers={"x-priority": "high"})
    assert (d.route, d.candidates[0].id) == ("metadata", "llama2-13b-vllm")


def test_metadata_rule_without_a_deployment_there_leaves_the_route_and_says_so(engine):
    d = decide(engine, "qwen2.5-coder:7b", headers={"x-priority": "high"})
    assert (d.route, ids(d)) == ("exact", ["qwen-coder"])
    assert any("high_priority_requests" in t and "normal route stands" in t for t in d.trace)


def test_batch_requests_go_to_vllm(engine):
    d = decide(engine, "general_chat", batch_size=4)
    assert (d.route, d.candidates[0].provider) == ("metadata", "vllm")


# -- warm-first ----------------------------------------------------------------------------------

def test_cold_pick_gives_way_to_a_warm_candidate_and_is_warmed_up(engine):
    view = StateTable()
    ollama = engine.config.by_id["llama3.1-ollama"]
    llamacpp = engine.config.by_id["llama3.1-llamacpp"]
    view.servers[ollama.api_base] = ServerState(reachable=True, loaded=frozenset())  # Ollama: nothing loaded
    view.servers[llamacpp.api_base] = ServerState(reachable=True)  # llama.cpp: its model is always loaded
    routes = set()
    for _ in range(50):
        d = decide(engine, "llama3.1:8b", view)
        assert d.candidates[0].id == "llama3.1-llamacpp"
        if d.route == "warm":
            assert d.warm_up == (ollama,)
        routes.add(d.route)
    assert "warm" in routes
    view.servers[ollama.api_base] = ServerState(reachable=True, loaded=frozenset({"llama3.1:8b"}))
    assert {decide(engine, "llama3.1:8b", view).candidates[0].id for _ in range(50)} == {"llama3.1-ollama", "llama3.1-llamacpp"}


def test_ollamas_own_api_prefers_the_warm_server_unless_told_none(tmp_path):
    """Warm-first is the default for /api/* (its clients expect the server that has the model
    loaded), off for the other endpoints unless first_request_routing asks for it."""
    (tmp_path / "c.yaml").write_text(textwrap.dedent("""
        model_list:
          - {model_name: m, litellm_params: {model: ollama_chat/m, api_base: "http://h:1"}, model_info: {id: cold}}
          - {model_name: m, litellm_params: {model: ollama_chat/m, api_base: "http://h:2"}, model_info: {id: warm}}
        router_settings: {routing_strategy: simple-shuffle}
        """))
    eng = Engine(load_config(str(tmp_path / "c.yaml")), random.Random(1))
    view = StateTable()
    view.servers["http://h:1"] = ServerState(reachable=True, loaded=frozenset())
    view.servers["http://h:2"] = ServerState(reachable=True, loaded=frozenset({"m"}))
    assert {decide(eng, "m", view, endpoint="ollama_chat").candidates[0].id for _ in range(30)} == {"warm"}
    assert {decide(eng, "m", view, endpoint="chat").candidates[0].id for _ in range(30)} == {"cold", "warm"}
    (tmp_path / "m.yaml").write_text("first_request_routing: {strategy: none}\n")
    off = Engine(load_config(str(tmp_path / "c.yaml"), str(tmp_path / "m.yaml")), random.Random(1))
    assert {decide(off, "m", view, endpoint="ollama_chat").candidates[0].id for _ in range(30)} == {"cold", "warm"}


# -- limits ----------------------------------------------------------------------------------------

def test_deployment_over_its_rpm_is_skipped_and_all_over_is_a_429(tmp_path):
    (tmp_path / "c.yaml").write_text(textwrap.dedent("""
        model_list:
          - {model_name: m, litellm_params: {model: openai/a, api_base: "http://h:1", rpm: 2}, model_info: {id: a}}
          - {model_name: m, litellm_params: {model: openai/b, api_base: "http://h:2", rpm: 1}, model_info: {id: b}}
        """))
    eng = Engine(load_config(str(tmp_path / "c.yaml")))
    view = StateTable()
    picked = []
    for _ in range(3):
        d = decide(eng, "m", view)
        view.picked(d.candidates[0])
        picked.append(d.candidates[0].id)
    assert sorted(picked) == ["a", "a", "b"]
    with pytest.raises(RateLimited) as info:
        decide(eng, "m", view)
    assert 1 <= int(info.value.headers()["Retry-After"]) <= 60


# -- fallback chains -------------------------------------------------------------------------------

def test_litellm_fallbacks_then_the_default_chain(engine):
    d = decide(engine, "llama2-13b-vllm")
    plan = engine.fallbacks(d, RequestFacts(model="llama2-13b-vllm"), StateTable(), {"vllm"})
    ids_ = [dep.id for dep, _ in plan.entries]
    assert ids_[0] == "llama3.1-ollama"  # router_settings.fallbacks: llama2-13b-vllm -> llama3.1-ollama
    # default chain: vllm (model_size >= 13B holds) -> the same deployment; ollama and llama_cpp_python have no 13B
    assert "llama2-13b-vllm" in ids_
    assert any("chain default: secondary ollama has no deployment of this model" in t for t in plan.trace)


def test_chain_condition_model_size_and_pattern_routed_names_reach_other_providers(engine):
    d = decide(engine, "mistral:7b")  # pattern -> ollama
    plan = engine.fallbacks(d, RequestFacts(model="mistral:7b"), StateTable(), {"ollama"})
    assert [(dep.id, name) for dep, name in plan.entries] == [("ollama/*", "mistral:7b"), ("llama_cpp_python/*", "mistral:7b")]
    assert any("primary vllm skipped (model_size >= \"13B\" does not hold)" in t for t in plan.trace)


def test_code_generation_chain_with_preferred_model_and_unavailable_condition(engine):
    d = decide(engine, capability="code_generation")
    plan = engine.fallbacks(d, RequestFacts(model=None, capability="code_generation"), StateTable(), set())
    assert [dep.id for dep, _ in plan.entries] == ["qwen-coder"]  # ollama is available: secondary skipped
    plan = engine.fallbacks(d, RequestFacts(model=None, capability="code_generation"), StateTable(), {"ollama"})
    assert [dep.id for dep, _ in plan.entries] == ["qwen-coder", "llama-cpp-python", "llama3.1-llamacpp"]
