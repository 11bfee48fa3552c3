"""Regex pattern lookup that keeps file order but does not test every pattern.

Patterns anchored with a literal prefix (``^meta-llama/``) are indexed by their
first two literal characters; all other patterns are folded into one compiled
regex whose alternatives, tried in file order, are lookaheads — so the regex
engine (in C) finds the first unanchored pattern that matches anywhere. The
answer is the lowest-numbered pattern among the indexed candidates for the
name's first characters and that first unanchored match: exactly what testing
every pattern in file order would return.
"""

from __future__ import annotations

import re
from typing import Sequence, TypeVar

T = TypeVar("T")
_META = set(".^$*+?{}[]\\|()")
_BACKREF = re.compile(r"\\\d|\(\?P=")  # numbered groups shift when patterns are combined


def literal_prefix(pattern: str) -> str:
    """The literal text an anchored pattern must start with ('' if none)."""
    if not pattern.startswith("^") or pattern.startswith("^(?"):
        return ""
    out = []
    for i, ch in enumerate(pattern[1:], 1):
        if ch in _META:
            # a quantifier applies to the previous char, so that one is not certain either
            if ch in "*+?{" and out:
                out.pop()
            break
        out.append(ch)
    return "".join(out)


class PatternIndex:
    """``first_match(name)`` returns the first rule (in file order) whose pattern
    ``search``es ``name``, or None."""

    KEY = 2

    def __init__(self, rules: Sequence[T], regex_of=lambda r: r.pattern) -> None:
        self.rules = list(rules)
        self._buckets: dict[str, list[int]] = {}
        self._short: list[tuple[int, str]] = []  # anchored with a prefix shorter than KEY
        rest: list[int] = []
        for i, rule in enumerate(self.rules):
            prefix = literal_prefix(regex_of(rule).pattern)
            if len(prefix) >= self.KEY:
                self._buckets.setdefault(prefix[: self.KEY], []).append(i)
            elif prefix:
                self._short.append((i, prefix))
            else:
                rest.append(i)
        self._regexes = [regex_of(r) for r in self.rules]
        self._rest_index = rest
        self._combined = None
        if rest and not any(_BACKREF.search(self._regexes[i].pattern) for i in rest):
            # Each alternative ends in an empty named group, so ``lastgroup`` tells which matched.
            alternatives = "|".join(f"(?=[\\s\\S]*?(?:{self._regexes[i].pattern})(?P<_llmr{n}>))" for n, i in enumerate(rest))
            try:
                self._combined = re.compile(alternatives)
            except re.error:  # inline flags, numbered backreferences...: test one by one instead
                self._combined = None

    def first_match(self, name: str) -> T | None:
        best = len(self.rules)
        if self._rest_index:
            if self._combined is not None:
                m = self._combined.match(name)
                if m is not None and m.lastgroup and m.lastgroup.startswith("_llmr"):
                    best = self._rest_index[int(m.lastgroup[5:])]
            else:
                for i in self._rest_index:
                    if self._regexes[i].search(name):
                        best = i
                        break
        for i in self._buckets.get(name[: self.KEY], ()):
            if i >= best:
                break
            if self._regexes[i].search(name):
                best = i
                break
        for i, prefix in self._short:
            if i >= best:
                break
            if name.startswith(prefix) and self._regexes[i].search(name):
                best = i
                break
        return self.rules[best] if best < len(self.rules) else None
