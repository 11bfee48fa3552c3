"""Model sizes from names, size-range boundaries, rule conditions, and the pattern index."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from router.routing.patterns import PatternIndex, literal_prefix, literal_suffix
from router.routing.rules import parse_condition, parse_size_range, size_from_name


@pytest.mark.parametrize("name, size", [
    ("llama-7b", 7), ("qwen:13b", 13), ("Llama-2-13b-chat-hf", 13), ("mixtral-8x7b", 56), ("qwen2.5:1.5b", 1.5),
    ("70B", 70), ("llama3.1:8b", 8), ("meta-llama/Meta-Llama-3.1-70B-Instruct", 70), ("smollm:135m", 0.135),
    ("tinyllama-1.1b-chat-v1.0", 1.1), ("llama-2-7b-chat.Q4_K_M.gguf", 7), ("Qwen2.5-Coder-32B-Instruct-GGUF", 32),
    ("qwen2.5:0.5b", 0.5),
])
def test_parameter_count_is_read_from_names(name, size):
    assert size_from_name(name) == pytest.approx(size)


@pytest.mark.parametrize("name", ["gpt-4o", "phi3:mini", "deepseek-coder-v2", "qwen2.5", "model-4bit", "bge-m3", "llama3"])
def test_names_without_a_parameter_count_have_no_size(name):
    assert size_from_name(name) is None


# The seed's three ranges, with the boundaries defined exactly:
#   "< 8B" is size < 8; "8B - 13B" is 8 <= size <= 13 (both ends in); "> 13B" is size > 13.
@pytest.mark.parametrize("size, expected", [
    (0.5, "< 8B"), (7.99, "< 8B"), (8, "8B - 13B"), (12.9, "8B - 13B"), (13, "8B - 13B"), (13.01, "> 13B"), (70, "> 13B"),
])
def test_size_range_boundaries(size, expected):
    ranges = {text: parse_size_range(text) for text in ("< 8B", "8B - 13B", "> 13B")}
    assert [text for text, r in ranges.items() if r.contains(size)] == [expected]


def test_inclusive_operators_and_units():
    assert parse_size_range("<= 8B").contains(8) and not parse_size_range("< 8B").contains(8)
    assert parse_size_range(">= 13B").contains(13) and not parse_size_range("> 13B").contains(13)
    assert parse_size_range("500M - 2B").contains(0.5)


@pytest.mark.parametrize("text, subject, op, value", [
    ('model_size >= "13B"', "model_size", ">=", 13.0),
    ('header.X-Priority == "high"', "header.x-priority", "==", "high"),
    ("batch_size > 1", "batch_size", ">", 1.0),
    ("stream == true", "stream", "==", True),
    ("always", "always", "", None),
    ("ollama_unavailable", "unavailable", "", "ollama"),
])
def test_conditions_parse(text, subject, op, value):
    c = parse_condition(text)
    assert (c.subject, c.op, c.value) == (subject, op, value)


@pytest.mark.parametrize("bad", ["model_size >>= 13B", "colour == red", "stream > true", 'header.x == "a" and b'])
def test_bad_conditions_are_rejected(bad):
    with pytest.raises(ValueError):
        parse_condition(bad)


def test_literal_suffixes():
    assert literal_suffix(".*\\.gguf$") == ".gguf"
    assert literal_suffix(".*-v9$") == "-v9"
    assert literal_suffix(".*:\\d+[bB]$") == ""
    assert literal_suffix("ab*$") == ""
    assert literal_suffix("a|b$") == ""
    assert literal_suffix("x\\d$") == ""


def test_literal_prefixes():
    assert literal_prefix("^meta-llama/.*") == "meta-llama/"
    assert literal_prefix("^ab*c") == "a"
    assert literal_prefix(".*:\\d+b$") == ""
    assert literal_prefix("^(?i)x") == ""


class Rule:
    def __init__(self, text: str) -> None:
        self.pattern = re.compile(text)


PIECES = ["^meta-llama/", "^mistralai/", "^m", "^qwen", ".*:\\d+[bB]$", ".*\\.gguf$", "coder", "^llama-\\d+", "x(y)?z", "^$", "b$",
          "^me", ".*-v1$", "ab*$", "\\d$", "uf$", "^meta", "x(y)\\1", "(?i)^QWEN", "(?i).*GGUF$", "(?m)^b$"]
NAMES = st.text(alphabet="abmlqwenxyz:-./0123456789gufBcoderistaiGUFQWEN\n", max_size=24)


@settings(max_examples=400, deadline=None, derandomize=True)
@given(st.lists(st.sampled_from(PIECES), min_size=1, max_size=8), st.lists(NAMES, min_size=1, max_size=10))
def test_pattern_index_returns_what_testing_every_pattern_in_order_returns(pieces, names):
    rules = [Rule(p) for p in pieces]
    index = PatternIndex(rules)
    for name in names + ["meta-llama/Llama-2-7b", "mistral:7b", "tiny.gguf", "qwen-coder", "ab\n", "X.GGUF", "a\nb"]:
        linear = next((r for r in rules if r.pattern.search(name)), None)
        assert index.first_match(name) is linear, (pieces, name)
