"""The regex check's promise: a ``patterns`` regex it accepts matches any model name the
proxy lets through (at most MAX_MODEL_NAME characters) in a few milliseconds, however the
name is crafted. Generated nested-quantifier patterns (bounded and unbounded repeats,
lazy ones, alternations, anchors) against hostile names, timed."""

from __future__ import annotations

import os
import re
import signal
import time
from contextlib import contextmanager
from types import SimpleNamespace

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from router.regexcheck import backtracking_problem, searched_form
from router.routing.patterns import PatternIndex
from router.routing.resolve import MAX_MODEL_NAME

LIMIT = 0.050  # seconds per match; accepted patterns take well under 5 ms
# Random exploration locally; the same examples every time under CI.
FUZZ = settings(max_examples=300, deadline=None, derandomize=bool(os.environ.get("CI")),
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

ATOMS = ["a", "b", "-", "1", ".", r"\w", r"\d", r"\s", r"\W", "[ab]", "[^b]", "[a-]", "[a1 ]", "(?:)"]
QUANTIFIERS = ["*", "+", "?", "*?", "+?", "??", "{2}", "{3}", "{1,3}", "{0,4}", "{0,16}", "{10}", "{16}", "{2,}",
               "{1,40}", "{3,8}", "{,5}"]
UNITS = ["a", "b", "1", " ", "-", "ab", "a-", "a1", "aab", "ab-", "a b", "1a-", "_", "é"]
TAILS = ["", "!", "b", "x", "-", "\x00", "中"]

patterns = st.recursive(
    st.sampled_from(ATOMS),
    lambda inner: st.one_of(
        st.lists(inner, min_size=2, max_size=4).map("".join),
        st.lists(inner, min_size=2, max_size=3).map(lambda xs: "(?:" + "|".join(xs) + ")"),
        st.tuples(inner, st.sampled_from(QUANTIFIERS)).map(lambda t: f"(?:{t[0]}){t[1]}"),
    ),
    max_leaves=12,
)
anchored = st.tuples(st.sampled_from(["", "", "^", "(?i)"]), patterns, st.sampled_from(["", "$", "x", "!", r"\d$"])).map("".join)
names = st.builds(lambda unit, n, tail: (unit * n)[:MAX_MODEL_NAME - len(tail)] + tail,
                  st.text(alphabet="ab1 -_x", min_size=1, max_size=5), st.integers(1, MAX_MODEL_NAME), st.sampled_from(TAILS))


def hostile_names() -> list[str]:
    out = []
    for unit in UNITS:
        full = unit * MAX_MODEL_NAME
        out += [full[:MAX_MODEL_NAME]] + [full[:MAX_MODEL_NAME - len(t)] + t for t in TAILS if t]
    return out


HOSTILE = hostile_names()


@contextmanager
def alarm(seconds: float):
    """A runaway match raises at once instead of hanging the suite (``re`` checks signals)."""
    def fire(*_):
        raise TimeoutError(f"match still running after {seconds} s")
    old = signal.signal(signal.SIGALRM, fire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def slowest(run, name: str) -> float:
    """Seconds ``run(name)`` takes: the best of three if the first is over the limit (a busy machine)."""
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        with alarm(2.0):
            run(name)
        best = min(best, time.perf_counter() - start)
        if best <= LIMIT:
            break
    return best


def assert_fast(pattern: str, extra: list[str]) -> None:
    rx = re.compile(pattern)
    index = PatternIndex([SimpleNamespace(pattern=rx)])  # the router's hot path: the combined regex
    for name in HOSTILE + extra:
        for run in (rx.search, index.first_match):
            took = slowest(run, name)
            assert took <= LIMIT, f"{pattern!r} was accepted but took {took * 1000:.0f} ms on {name[:40]!r}... ({len(name)} chars)"


@FUZZ
@given(pattern=anchored, extra=st.lists(names, max_size=4))
@example(pattern=r"(?:a+){10}b", extra=[])
@example(pattern=r".*.*.*x", extra=[])
@example(pattern=r"(\w+-\w+)*$", extra=["a-" + "aaa-" * 127 + "!"])
@example(pattern=r"(?:a|a){16}b", extra=[])
@example(pattern=r"(?:(?:(?:))*){16}$", extra=[])  # 2**16 ways to match nothing: 1.3 s (found by this test)
@example(pattern=r"^(\w+-)*\d+b$", extra=["a-" * 255 + "!"])
@example(pattern=r"a(?:(?:a)?){16}$", extra=[])  # 16 rounds that may read or not: 2**16 ways (found by this test)
def test_accepted_patterns_match_hostile_names_quickly(pattern, extra):
    try:
        re.compile(pattern)
    except (re.error, OverflowError, RecursionError):
        return
    if backtracking_problem(pattern) is None:
        assert_fast(pattern, extra)
    searched = searched_form(".*" + pattern)  # what the router matches for a pattern written with a leading .*
    if backtracking_problem(searched) is None:
        assert_fast(searched, extra)


@FUZZ
@given(lead=st.sampled_from([".*", ".*?", ".*.*", "(?i).*", "(?s).*?", ".*.*?"]), pattern=anchored,
       names=st.lists(st.text(alphabet="ab1 -_x\n", max_size=12), max_size=6))
@example(lead=".*", pattern="|b", names=["", "x"])
@example(lead=".*", pattern="a|^b", names=["xb", "b", "xa"])
@example(lead="(?s).*", pattern="\\Aa", names=["a", "xa", "\na"])
def test_a_leading_dot_star_changes_no_search(lead, pattern, names):
    """``searched_form`` drops it: every name a search finds with it, it finds without."""
    try:
        original = re.compile(lead + pattern)
    except (re.error, OverflowError, RecursionError):
        return
    searched = re.compile(searched_form(lead + pattern))
    assert searched.pattern != original.pattern or not lead.replace("(?i)", "").replace("(?s)", "")
    for name in names:  # short names: the original may backtrack badly on long ones (that is the point)
        with alarm(5.0):
            assert bool(original.search(name)) == bool(searched.search(name)), (original.pattern, searched.pattern, name)


@pytest.mark.parametrize("pattern", [
    r"(?:a+){10}b",           # the issue's example: bounded outer repeat, 0.7 s at 29 characters
    r"(?:a{1,16}){4}b",       # bounded inside bounded
    r"(?:a|a){16}b",          # finite but 2**16 ways
    r"(\w+-\w+)*$",           # a mandatory separator in the middle of the round does not fix the rounds
    r"(\d+[٠-٩])*x",          # \d matches Arabic-Indic digits too: not a separator
    r".*.*.*x", r"a*a*a*x",   # no nesting, still n**4: seconds at 512 characters
    r".*a.*b",                # n**3
    r"(?:a*)*b",
    r"(?:(?:(?:))*){16}$",
    r"a(?:(?:a)?){16}$",      # 16 rounds that may read or not: 2**16 ways to pick the empty ones, seconds at 512
])
def test_patterns_the_old_check_let_through_are_refused(pattern):
    assert backtracking_problem(pattern)


@pytest.mark.parametrize("pattern", [r"llama.*70b", r"\d{1,3}\d{1,3}x", r"(?:a?){8}$", r"(?:-?\d){0,16}$", r"(?!.*embed)llama", r"^llama-\d+b(-instruct)?$",
                                     r"^[a-z0-9._-]+/[a-z0-9._-]+$", r"(?i)^qwen.*:\d+b$"])
def test_more_ordinary_patterns_pass(pattern):
    assert backtracking_problem(pattern) is None
    assert_fast(pattern, [])


def test_a_pattern_written_with_a_leading_dot_star_loads_and_shows_as_written(tmp_path):
    """``.*llama.*70b.*`` (three loops with the search prefix) is matched as
    ``llama.*70b.*``: accepted, fast, and logged as the operator wrote it."""
    from router.policy import load_policy
    from router.yamlsource import load

    path = tmp_path / "m.yaml"
    path.write_text("providers:\n  vllm: {type: vllm, api_base: 'http://127.0.0.1:9'}\n"
                    "patterns:\n  - {pattern: '(?i).*llama.*70b.*', provider: vllm}\n")
    src = load(str(path))
    rule, = load_policy(src).patterns
    assert not src.errors and rule.shown == "(?i).*llama.*70b.*" and rule.pattern.pattern == "(?i)llama.*70b.*"
    assert rule.pattern.search("Meta-LLAMA-3-70B") and not rule.pattern.search("llama-8b")
    assert_fast(rule.pattern.pattern, ["llama" * 102])


def test_the_issue_example_really_is_slow_unchecked():
    # What the check guards against: a 24-character name already costs tens of milliseconds.
    start = time.perf_counter()
    with alarm(10.0):
        re.search(r"(?:a+){10}b", "a" * 24)
    assert time.perf_counter() - start > 0.005
