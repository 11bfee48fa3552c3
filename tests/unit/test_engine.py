"""Routing resolution: exact → id → alias → policy exact → patterns → wildcards → default → none."""

from __future__ import annotations

import random
import textwrap
from collections import Counter
from pathlib import Path

import pytest

from router.config import load_config
from router.domain import RequestFacts
from router.routing.engine import Engine
from router.state import StateTable

ROOT = Path(__file__).resolve().parents[2]


class Routed(Engine):
    """The engine with a string shortcut: ``decide("model")`` with no load state."""

    def decide(self, facts, view=None):  # type: ignore[override]
        facts = RequestFacts(model=facts) if isinstance(facts, str) else facts
        return super().decide(facts, view if view is not None else StateTable())


@pytest.fixture(scope="module")
def engine() -> Engine:
    return Routed(load_config(str(ROOT / "config/litellm-unified.yaml")), random.Random(7))


def test_exact_model_list_name_routes_to_its_group(engine):
    d = engine.decide("qwen2.5-coder:7b")
    assert (d.route, [c.id for c in d.candidates]) == ("exact", ["qwen-coder"])
    assert d.upstream_name(d.candidates[0]) == "qwen2.5-coder:7b"


def test_deployment_id_pins_that_deployment(engine):
    d = engine.decide("llama-cpp-native")
    assert (d.route, [c.id for c in d.candidates]) == ("id", ["llama-cpp-native"])


def test_alias_expands_to_its_deployments(engine):
    d = engine.decide("general_chat")
    assert d.route == "alias"
    assert sorted(c.id for c in d.candidates) == ["llama-cpp-python", "llama2-13b-vllm", "llama3.1-ollama"]


def test_pattern_routes_hf_name_to_vllm_and_sends_the_name_as_is(engine):
    d = engine.decide("meta-llama/Llama-2-7b-chat-hf")
    assert (d.route, d.matched, d.candidates[0].provider) == ("pattern", "^meta-llama/.*", "vllm")
    assert d.upstream_name(d.candidates[0]) == "meta-llama/Llama-2-7b-chat-hf"


def test_pattern_match_reuses_a_configured_deployment_of_that_model(engine):
    d = engine.decide("meta-llama/Llama-2-13b-chat-hf")
    assert (d.route, d.candidates[0].id) == ("pattern", "llama2-13b-vllm")


def test_patterns_are_tried_in_file_order(engine):
    assert engine.decide("mistral:7b").candidates[0].provider == "ollama"         # ".*:\d+[bB]$"
    assert engine.decide("mistralai/Mistral-7B:7b").candidates[0].provider == "vllm"  # "^mistralai/" comes first
    assert engine.decide("tinyllama.Q4_0.gguf").candidates[0].provider == "llama_cpp_python"


def test_unknown_model_has_no_route(engine):
    d = engine.decide("gpt-4o")
    assert d is None


def test_simple_shuffle_follows_redundant_model_weights(engine):
    counts = Counter(engine.decide("llama3.1:8b").candidates[0].provider for _ in range(4000))
    assert 0.66 < counts["ollama"] / 4000 < 0.74, counts
    assert set(counts) == {"ollama", "llama_cpp_python"}


def _engine(tmp_path, config: str, mappings: str = "") -> Engine:
    (tmp_path / "c.yaml").write_text(textwrap.dedent(config))
    (tmp_path / "model-mappings.yaml").write_text(textwrap.dedent(mappings))
    return Routed(load_config(str(tmp_path / "c.yaml")), random.Random(1))


def test_weight_beats_uniform_and_every_candidate_stays_in_the_order(tmp_path):
    eng = _engine(tmp_path, """
        model_list:
          - {model_name: m, litellm_params: {model: openai/a, api_base: "http://h:1", weight: 9}, model_info: {id: heavy}}
          - {model_name: m, litellm_params: {model: openai/b, api_base: "http://h:2", weight: 1}, model_info: {id: light}}
        """)
    firsts = Counter()
    for _ in range(2000):
        d = eng.decide("m")
        assert sorted(c.id for c in d.candidates) == ["heavy", "light"]
        firsts[d.candidates[0].id] += 1
    assert 0.86 < firsts["heavy"] / 2000 < 0.94, firsts


def test_model_list_wildcard_passes_the_matched_part_upstream(tmp_path):
    eng = _engine(tmp_path, """
        model_list:
          - {model_name: "ollama/*", litellm_params: {model: "ollama/*", api_base: "http://127.0.0.1:11434"}}
        """)
    d = eng.decide("ollama/phi3:mini")
    assert (d.route, d.upstream_name(d.candidates[0])) == ("wildcard", "phi3:mini")
    assert eng.decide("phi3:mini") is None


def test_default_provider_catches_everything_else(tmp_path):
    eng = _engine(tmp_path, "model_list: []\n", """
        providers:
          ollama: {type: ollama, api_base: "http://127.0.0.1:11434"}
        default_provider: ollama
        """)
    d = eng.decide("anything-at-all")
    assert (d.route, d.candidates[0].id, d.upstream_name(d.candidates[0])) == ("default", "ollama/*", "anything-at-all")
    assert any(step.startswith("default:") for step in d.trace)


SHARED_GROUP = """
    model_list:
      - {model_name: m, litellm_params: {model: ollama_chat/m, api_base: "http://127.0.0.1:11434"}, model_info: {id: m-ollama}}
      - {model_name: m, litellm_params: {model: hosted_vllm/m, api_base: "http://127.0.0.1:8001/v1"}, model_info: {id: m-vllm-a}}
      - {model_name: m, litellm_params: {model: hosted_vllm/m, api_base: "http://127.0.0.1:8002/v1"}, model_info: {id: m-vllm-b}}
      - {model_name: m, litellm_params: {model: openai/m.gguf, api_base: "http://127.0.0.1:8000/v1"}, model_info: {id: m-cpp, provider: llama_cpp_python}}
    """
SHARED_PROVIDERS = """
    providers:
      ollama: {type: ollama, api_base: "http://127.0.0.1:11434"}
      vllm: {type: vllm, api_base: "http://127.0.0.1:8001/v1"}
      llama_cpp_python: {type: llama_cpp_python, api_base: "http://127.0.0.1:8000/v1"}
      llama_cpp_native: {type: llama_cpp_native, api_base: "http://127.0.0.1:8080/v1"}
    """


def test_exact_matches_decides_for_a_model_list_name_its_provider_then_fallback_then_the_rest(tmp_path):
    eng = _engine(tmp_path, SHARED_GROUP, SHARED_PROVIDERS + """
    exact_matches:
      m: {provider: vllm, priority: primary, fallback: ollama}
    """)
    for _ in range(30):  # never shuffled onto another provider
        d = eng.decide("m")
        assert d.route == "exact" and {c.id for c in d.candidates[:2]} == {"m-vllm-a", "m-vllm-b"}
        assert [c.id for c in d.candidates[2:]] == ["m-ollama", "m-cpp"]  # fallback, then the group's others
    assert any("exact_matches sends model_list group 'm' to provider vllm" in t for t in d.trace)
    assert "exact: then fallback provider ollama: m-ollama" in d.trace
    assert "exact: then the group's other deployments: m-cpp" in d.trace


def test_exact_matches_provider_without_a_group_deployment_uses_its_catch_all(tmp_path):
    eng = _engine(tmp_path, SHARED_GROUP, SHARED_PROVIDERS + """
    exact_matches:
      m: {provider: llama_cpp_native, fallback: llama_cpp_python}
    """)
    d = eng.decide("m")
    assert [c.id for c in d.candidates][:2] == ["llama_cpp_native/*", "m-cpp"]
    assert d.upstream_name(d.candidates[0]) == "m" and d.upstream_name(d.candidates[1]) == "m.gguf"
    assert {c.id for c in d.candidates[2:]} == {"m-ollama", "m-vllm-a", "m-vllm-b"}


def test_request_metadata_may_still_move_an_exact_matches_group(tmp_path):
    eng = _engine(tmp_path, SHARED_GROUP, SHARED_PROVIDERS + """
    exact_matches:
      m: {provider: vllm}
    request_metadata_routing:
      streaming_requests: {provider: ollama, condition: stream == true}
    """)
    d = eng.decide(RequestFacts(model="m", stream=True))
    assert (d.route, d.candidates[0].id) == ("metadata", "m-ollama")
    assert {c.id for c in d.candidates[1:3]} == {"m-vllm-a", "m-vllm-b"}
    assert eng.decide("m").candidates[0].provider == "vllm"
