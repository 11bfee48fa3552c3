"""Refuse configuration regexes that can backtrack catastrophically.

Python's ``re`` backtracks; a pattern like ``(a+)+$`` or ``(\\w+\\s?)*x`` takes
exponential time on a crafted model name, and model names come from clients.
``google-re2`` would make every match linear, but it is a C++ extension that
rejects lookarounds and backreferences and adds a per-call overhead on the
routing hot path, while the shipped policies use simple anchored patterns — so
instead every pattern is checked once at load, on its parsed form:

- an unbounded repeat inside another unbounded repeat is refused unless the
  outer body has a mandatory character that the inner repeat cannot match
  (``(\\w+-)*`` is fine: every round must consume a ``-``);
- an unbounded repeat over alternatives that can start with the same character
  (``(a|ab)*``, ``(\\d|\\w)+``) is refused.

Client model names are also capped in length (``MAX_MODEL_NAME``) before any
pattern runs, which bounds what polynomial patterns (``.*a.*b.*c``) can cost.
"""

from __future__ import annotations

import re
from typing import Any, Callable

try:  # Python 3.11+: the parser moved to re._parser
    from re import _constants as C  # type: ignore[attr-defined]
    from re import _parser as P  # type: ignore[attr-defined]
except ImportError:  # pragma: no cover
    import sre_constants as C  # type: ignore[no-redef]
    import sre_parse as P  # type: ignore[no-redef]

UNBOUNDED = 16  # a repeat with a larger maximum counts as unbounded
_SAMPLE = [chr(c) for c in range(0x20, 0x7F)] + ["\t", "\n", "\u00e9", "\u4e2d"]
_REPEATS = (C.MAX_REPEAT, C.MIN_REPEAT, getattr(C, "POSSESSIVE_REPEAT", None))
_CATEGORIES: dict[Any, Callable[[str], bool]] = {
    C.CATEGORY_DIGIT: str.isdigit,
    C.CATEGORY_NOT_DIGIT: lambda c: not c.isdigit(),
    C.CATEGORY_WORD: lambda c: c.isalnum() or c == "_",
    C.CATEGORY_NOT_WORD: lambda c: not (c.isalnum() or c == "_"),
    C.CATEGORY_SPACE: str.isspace,
    C.CATEGORY_NOT_SPACE: lambda c: not c.isspace(),
}


def backtracking_problem(pattern: str) -> str | None:
    """Why ``pattern`` may backtrack catastrophically, or None."""
    try:
        parsed = P.parse(pattern)
    except re.error:
        return None  # the caller reports the syntax error
    return _walk(list(parsed))


def _walk(items: list[tuple[Any, Any]]) -> str | None:
    for op, av in items:
        if op in _REPEATS and op is not None:
            low, high, body = av
            body = list(body)
            if high > UNBOUNDED and op != getattr(C, "POSSESSIVE_REPEAT", None):
                problem = _check_repeat(body)
                if problem:
                    return problem
            problem = _walk(body)
        elif op == C.SUBPATTERN:
            problem = _walk(list(av[-1]))
        elif op == C.BRANCH:
            problem = next((p for b in av[1] if (p := _walk(list(b)))), None)
        elif op in (C.ASSERT, C.ASSERT_NOT):
            problem = _walk(list(av[1]))
        else:
            problem = None
        if problem:
            return problem
    return None


def _unwrap(body: list[tuple[Any, Any]]) -> list[tuple[Any, Any]]:
    """``(...)`` as the whole body of a repeat: its contents."""
    while len(body) == 1 and body[0][0] == C.SUBPATTERN:
        body = list(body[0][1][-1])
    return body


def _check_repeat(body: list[tuple[Any, Any]]) -> str | None:
    body = _unwrap(body)
    inner = _unbounded_inside(body)
    if inner is not None:
        inner_chars = _chars(inner)
        separators = [_chars([item]) for item in _mandatory_single_chars(body)]
        if not any(sep is not None and inner_chars is not None and not (sep & inner_chars) for sep in separators):
            return "a repeated group contains another unbounded repeat (like (a+)+): exponential backtracking on some inputs"
    first = body[0] if len(body) == 1 else None
    if first is not None and first[0] == C.BRANCH:
        starts = [_first_chars(list(b)) for b in first[1][1]]
        for i, a in enumerate(starts):
            for b in starts[i + 1:]:
                if a is None or b is None or a & b:
                    return "a repeated alternation has alternatives that can start alike (like (a|ab)*): exponential backtracking on some inputs"
    return None


def _unbounded_inside(body: list[tuple[Any, Any]]) -> list[tuple[Any, Any]] | None:
    """The body of an unbounded repeat nested in ``body`` (at any depth), if any."""
    for op, av in body:
        if op in _REPEATS and op is not None:
            if av[1] > UNBOUNDED:
                return list(av[2])
            found = _unbounded_inside(list(av[2]))
        elif op == C.SUBPATTERN:
            found = _unbounded_inside(list(av[-1]))
        elif op == C.BRANCH:
            found = next((f for b in av[1] if (f := _unbounded_inside(list(b))) is not None), None)
        else:
            found = None
        if found is not None:
            return found
    return None


def _mandatory_single_chars(body: list[tuple[Any, Any]]) -> list[tuple[Any, Any]]:
    """Top-level single-character items every round of ``body`` must consume."""
    return [(op, av) for op, av in body if op in (C.LITERAL, C.NOT_LITERAL, C.IN, C.ANY)]


def _chars(items: list[tuple[Any, Any]]) -> frozenset[str] | None:
    """The sample characters any single-character item of ``items`` can match (None: unknown)."""
    out: set[str] = set()
    for op, av in items:
        if op == C.LITERAL:
            out.add(chr(av))
        elif op == C.NOT_LITERAL:
            out.update(c for c in _SAMPLE if c != chr(av))
        elif op == C.ANY:
            out.update(_SAMPLE)
        elif op == C.IN:
            matched = _in_set(av)
            if matched is None:
                return None
            out |= matched
        elif op in (C.AT,):
            continue
        else:
            return None
    return frozenset(out)


def _in_set(av: list[tuple[Any, Any]]) -> frozenset[str] | None:
    negate = False
    tests: list[Callable[[str], bool]] = []
    for op, arg in av:
        if op == C.NEGATE:
            negate = True
        elif op == C.LITERAL:
            tests.append(lambda c, x=chr(arg): c == x)
        elif op == C.RANGE:
            tests.append(lambda c, lo=arg[0], hi=arg[1]: lo <= ord(c) <= hi)
        elif op == C.CATEGORY and arg in _CATEGORIES:
            tests.append(_CATEGORIES[arg])
        else:
            return None
    return frozenset(c for c in _SAMPLE if any(t(c) for t in tests) != negate)


def _first_chars(items: list[tuple[Any, Any]]) -> frozenset[str] | None:
    """Characters a match of ``items`` can start with (None: unknown, or it may be empty)."""
    if not items:
        return None
    op, av = items[0]
    if op in (C.LITERAL, C.NOT_LITERAL, C.ANY, C.IN):
        return _chars([(op, av)])
    if op == C.SUBPATTERN:
        return _first_chars(list(av[-1]))
    if op in _REPEATS and op is not None and av[0] >= 1:
        return _first_chars(list(av[2]))
    return None
