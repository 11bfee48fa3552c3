"""Regex pattern lookup that keeps file order but does not test every pattern.

Three kinds of pattern, each looked up its own way:

- anchored with a literal prefix (``^meta-llama/``): indexed by that prefix; a
  name finds its candidates with one dict lookup per distinct prefix length;
- ending in a literal suffix (``.*\\.gguf$``): indexed by that suffix likewise;
- anything else (``.*:\\d+[bB]$``): folded into one compiled regex whose
  alternatives, tried in file order, are lookaheads, so the regex engine (in C)
  finds the first of them that matches anywhere.

The answer is the lowest-numbered rule among the indexed candidates that match
and the first matching "other" pattern: exactly what testing every pattern in
file order would return (a property test checks this).
"""

from __future__ import annotations

import re
from typing import Any, Callable, Generic, Sequence, TypeVar

T = TypeVar("T")
_META = set(".^$*+?{}[]\\|()")
_BACKREF = re.compile(r"\\\d|\(\?P=")  # numbered groups shift when patterns are combined


def literal_prefix(pattern: str) -> str:
    """The literal text an anchored pattern must start with ('' if none)."""
    if not pattern.startswith("^") or pattern.startswith("^(?"):
        return ""
    out: list[str] = []
    for ch in pattern[1:]:
        if ch in _META:
            if ch in "*+?{" and out:  # a quantifier makes the previous char optional
                out.pop()
            break
        out.append(ch)
    return "".join(out)


def literal_suffix(pattern: str) -> str:
    """The literal text a ``...X$`` pattern must end with ('' if none). Handles
    escaped characters such as ``\\.``; stops at any other regex syntax."""
    if not pattern.endswith("$") or pattern.endswith("\\$") or "|" in pattern:
        return ""
    body = pattern[:-1]
    out: list[str] = []
    i = len(body) - 1
    while i >= 0:
        ch = body[i]
        if i >= 1 and body[i - 1] == "\\" and not (i >= 2 and body[i - 2] == "\\"):
            if ch.isalnum():  # \d, \w, \b ...: a class, not a literal
                break
            out.append(ch)
            i -= 2
            continue
        if ch in _META:
            break
        out.append(ch)
        i -= 1
    return "".join(reversed(out))


class _Affix:
    """Rule indices keyed by a literal affix, looked up by every affix length present."""

    def __init__(self) -> None:
        self.by_text: dict[str, list[int]] = {}
        self.lengths: list[int] = []

    def add(self, text: str, index: int) -> None:
        self.by_text.setdefault(text, []).append(index)
        if len(text) not in self.lengths:
            self.lengths.append(len(text))

    def candidates(self, name: str, suffix: bool) -> list[int]:
        out: list[int] = []
        for n in self.lengths:
            if n <= len(name):
                out += self.by_text.get(name[-n:] if suffix else name[:n], ())
        return out


class PatternIndex(Generic[T]):
    """``first_match(name)``: the first rule (in file order) whose regex ``search``es
    ``name``, or None."""

    def __init__(self, rules: Sequence[T], regex_of: Callable[[Any], re.Pattern[str]] = lambda r: r.pattern) -> None:
        self.rules = list(rules)
        self._regexes = [regex_of(r) for r in self.rules]
        self._prefixes, self._suffixes = _Affix(), _Affix()
        self._rest: list[int] = []
        for i, regex in enumerate(self._regexes):
            plain = not regex.flags & (re.IGNORECASE | re.MULTILINE | re.VERBOSE)
            prefix = literal_prefix(regex.pattern) if plain else ""
            suffix = literal_suffix(regex.pattern) if plain else ""
            if prefix:
                self._prefixes.add(prefix, i)
            elif suffix:
                self._suffixes.add(suffix, i)
            else:
                self._rest.append(i)
        self._combined: re.Pattern[str] | None = None
        if self._rest and not any(_BACKREF.search(self._regexes[i].pattern) for i in self._rest):
            # Each alternative ends in an empty named group, so ``lastgroup`` tells which matched.
            alternatives = "|".join(f"(?=[\\s\\S]*?(?:{self._regexes[i].pattern})(?P<_llmr{n}>))"
                                    for n, i in enumerate(self._rest))
            try:
                self._combined = re.compile(alternatives)
            except re.error:  # inline flags and the like: test those one by one instead
                self._combined = None

    def first_match(self, name: str) -> T | None:
        if "\n" in name:  # "$" also matches before a final newline; the proxy never lets one through anyway
            return next((r for r, x in zip(self.rules, self._regexes) if x.search(name)), None)
        best = self._first_rest(name) if self._rest else len(self.rules)
        candidates = self._prefixes.candidates(name, False) + self._suffixes.candidates(name, True)
        for i in sorted(candidates):
            if i >= best:
                break
            if self._regexes[i].search(name):
                best = i
                break
        return self.rules[best] if best < len(self.rules) else None

    def _first_rest(self, name: str) -> int:
        if self._combined is not None:
            m = self._combined.match(name)
            if m is not None and m.lastgroup:
                return self._rest[int(m.lastgroup[5:])]
            return len(self.rules)
        for i in self._rest:
            if self._regexes[i].search(name):
                return i
        return len(self.rules)
