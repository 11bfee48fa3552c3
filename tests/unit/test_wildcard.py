"""model_list wildcards (``openai/*``): the linear matcher is the regex it replaced.

The regex ``^a(.*)b(.*)c$`` backtracks about n**(stars-1) steps on a hostile name;
``router.config.Wildcard`` places the literal parts from the right instead. It must
give the very same verdict and captures (the upstream name is built from them)."""

from __future__ import annotations

import os
import re
import time

from hypothesis import example, given, settings, strategies as st

from router.config import Wildcard

PROPERTY = settings(max_examples=500, deadline=None, derandomize=bool(os.environ.get("CI")))
ALPHABET = "ab/-.:*"  # few letters: parts recur and overlap, the hard cases for placement


def regex_of(pattern: str) -> re.Pattern[str]:
    return re.compile("^" + "(.*)".join(re.escape(part) for part in pattern.split("*")) + "$")


@PROPERTY
@given(pattern=st.text(alphabet=ALPHABET, max_size=12), name=st.text(alphabet=ALPHABET.replace("*", "") + "*", max_size=40))
@example(pattern="a**b", name="aXYb")
@example(pattern="*a*a*", name="aaaa")
@example(pattern="ab*ba", name="aba")
@example(pattern="*", name="")
def test_the_wildcard_matcher_is_the_regex(pattern, name):
    m = regex_of(pattern).match(name)
    assert Wildcard(pattern).match(name) == (m.groups() if m else None)


@PROPERTY
@given(parts=st.lists(st.text(alphabet="ab", max_size=3), min_size=1, max_size=6),
       name=st.text(alphabet="ab", max_size=60))
def test_recurring_parts_capture_as_the_regex_does(parts, name):
    pattern = "*".join(parts)
    m = regex_of(pattern).match(name)
    assert Wildcard(pattern).match(name) == (m.groups() if m else None)


def test_a_hostile_name_against_many_stars_is_linear():
    """``*a*a*a*a*b`` and 512 characters of ``a``: the regex explores ~512**4/24 splits."""
    w = Wildcard("*a*a*a*a*b")
    name = "a" * 512
    started = time.process_time()
    assert w.match(name) is None
    assert time.process_time() - started < 1.0  # a complexity guard, not a speed target: the regex needs hours
    assert Wildcard("openai/*").match("openai/gpt-4o") == ("gpt-4o",)
