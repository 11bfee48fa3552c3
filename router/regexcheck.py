"""Refuse configuration regexes whose matching time can blow up.

Python's ``re`` backtracks: a pattern like ``(a+)+$``, ``(?:a+){10}b`` or even
``a*a*a*x`` takes exponential or high-polynomial time on a crafted model name, and
model names come from clients (at most ``MAX_MODEL_NAME`` = 512 characters). Every
``patterns`` regex is therefore checked once at load, on an automaton built from its
parsed form, for what a backtracking matcher can be made to explore:

- the pattern becomes a position automaton (one state per character test), with the
  unanchored search the router does in front (``[\\s\\S]*?``) unless it starts with
  ``^``. Repeats are kept as loops: bounded ones with a small maximum are unrolled,
  larger ones (``{0,16}``, ``{10}`` of a group) are treated as unbounded, which can only
  add ways to match; parallel edges are kept (``(a*)*`` has two ways round);
- **exponential**: refused if some state can come back to itself along two different
  paths reading the same text (the automaton's ambiguity is exponential): ``(a+)+``,
  ``(a|ab)*``, ``(\\w+-\\w+)*``, ``(?:a+){10}``;
- **polynomial**: for states ``p != q`` that both loop, ``p`` "feeds" ``q`` if some text
  can loop on ``p``, lead from ``p`` to ``q`` and loop on ``q``. A chain of k states each
  feeding the next costs about n**k steps; chains longer than two (search prefix and
  one ``.*``, as in ``.*\\.gguf$``) are refused: ``a*a*a*x``, ``a.*b.*c.*d``. A leading
  ``.*`` of an unanchored pattern is dropped before the check and the match
  (``searched_form``: a search finds the same names without it), so ``.*a.*b`` is
  ``a.*b`` and passes;
- finite ambiguity (``(a|a)(a|a)...``) is bounded by counting overlapping choices;
  lookaround bodies count with the pattern around them; backreferences are treated as
  ``[\\s\\S]*``.

Character classes are compared exactly, over all of Unicode, by the ``re`` engine
itself (with the pattern's flags). A trailing ``.*``-like repeat cannot fail and is not
counted. ``google-re2`` would make every match linear, but it rejects lookarounds and
backreferences, is a C++ dependency, and would give up the single combined regex the
pattern index (``router/routing/patterns.py``) runs per request; the check keeps ``re``
with a worst case of about n**2 steps per pattern (a few milliseconds at 512
characters; ``tests/unit/test_regexcheck.py`` measures it on generated patterns).
"""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Any

try:  # Python 3.11+: the parser moved to re._parser
    from re import _compiler as Comp  # type: ignore[attr-defined]
    from re import _constants as C  # type: ignore[attr-defined]
    from re import _parser as P  # type: ignore[attr-defined]
except ImportError:  # pragma: no cover
    import sre_compile as Comp  # type: ignore[no-redef]
    import sre_constants as C  # type: ignore[no-redef]
    import sre_parse as P  # type: ignore[no-redef]

MAX_CHAIN = 2  # longest chain of loops feeding each other (search prefix included)
MAX_STATES = 120  # beyond this a pattern is refused as too complex to check
MAX_UNROLL = 4  # positions a bounded repeat may unroll to; larger ones count as loops (a{0,16} costs like a*)
MAX_CHOICES = 8  # overlapping choices outside loops (each may double the ways to match)
MAX_CHOICES_WITH_CHAIN = 1  # the same where two loops already make n**2 ways

_REPEATS = tuple(op for op in (C.MAX_REPEAT, C.MIN_REPEAT, getattr(C, "POSSESSIVE_REPEAT", None)) if op is not None)
_CHAR_OPS = (C.LITERAL, C.NOT_LITERAL, C.ANY, C.IN)
_ATOMIC = getattr(C, "ATOMIC_GROUP", None)
_ANY_CHAR = (C.IN, [(C.CATEGORY, C.CATEGORY_SPACE), (C.CATEGORY, C.CATEGORY_NOT_SPACE)])
_CAP = 1 << 16  # ways counted beyond this are all "many"
_FLAG_MASK = re.IGNORECASE | re.ASCII | re.LOCALE | re.UNICODE


class _TooComplex(Exception):
    pass


_LEADING_ANY = re.compile(r"(\(\?[aiLmsux]+\))?((?:\.\*\??)+)(?![*+?{])")


def searched_form(pattern: str) -> str:
    """``pattern`` without a leading ``.*`` (or ``.*?``), which changes nothing for a
    search (the router searches: ``.*X`` finds a name exactly when ``X`` does) but adds
    a loop: ``.*llama.*70b.*`` would be refused and ``llama.*70b.*`` is not. Global
    inline flags (``(?i)``) stay in front."""
    m = _LEADING_ANY.match(pattern)
    if m is None:
        return pattern
    return (m.group(1) or "") + pattern[m.end():]


def backtracking_problem(pattern: str) -> str | None:
    """Why ``pattern`` may take too long on some model name, or None."""
    try:
        parsed = P.parse(pattern)
    except re.error:
        return None  # the caller reports the syntax error
    try:
        return _Check(parsed).problem()
    except (_TooComplex, RecursionError):
        return "the pattern is too complex to check for catastrophic backtracking; simplify it"


# ---- character sets, exactly, over all of Unicode -------------------------------------

@lru_cache(maxsize=1)
def _universe() -> str:
    return "".join(map(chr, range(0x110000)))


_RUNS: dict[tuple[str, int], tuple[tuple[int, int], ...]] = {}


def _runs(item: Any, flags: int) -> tuple[tuple[int, int], ...]:
    """The code point intervals a single-character item matches under ``flags``."""
    op, av = item
    if op == C.ANY or item == _ANY_CHAR:
        return ((0, 0x110000),)
    if not flags & (re.IGNORECASE | re.LOCALE):  # plain characters need no scan
        if op == C.LITERAL:
            return ((av, av + 1),)
        if op == C.NOT_LITERAL:
            return tuple(r for r in ((0, av), (av + 1, 0x110000)) if r[0] < r[1])
        if op == C.IN and all(o in (C.LITERAL, C.RANGE) for o, _ in av):
            return tuple(_merge([(a, a + 1) if o == C.LITERAL else (a[0], a[1] + 1) for o, a in av]))
    key = (repr(item), flags)
    if key in _RUNS:
        return _RUNS[key]
    if len(_RUNS) > 4096:
        _RUNS.clear()
    state = P.State()
    state.flags = flags
    sub = P.SubPattern(state, [(C.MAX_REPEAT, (1, C.MAXREPEAT, P.SubPattern(state, [item])))])
    rx = Comp.compile(sub, flags)
    _RUNS[key] = out = tuple((m.start(), m.end()) for m in rx.finditer(_universe()))
    return out


def _intersect(a: tuple[tuple[int, int], ...], b: tuple[tuple[int, int], ...]) -> tuple[tuple[int, int], ...]:
    out, i, j = [], 0, 0
    while i < len(a) and j < len(b):
        lo, hi = max(a[i][0], b[j][0]), min(a[i][1], b[j][1])
        if lo < hi:
            out.append((lo, hi))
        if a[i][1] < b[j][1]:
            i += 1
        else:
            j += 1
    return tuple(out)


# ---- the automaton -------------------------------------------------------------------

class _Check:
    def __init__(self, parsed: Any) -> None:
        self.flags = parsed.state.flags & _FLAG_MASK
        self.local_flags = False
        self.items: list[Any] = []  # per state: its character test
        self.follow: list[dict[int, int]] = []  # per state: successor -> number of edges
        self.start: dict[int, int] = {}
        self.lookarounds: list[Any] = []
        self.parsed = parsed
        self.met: dict[tuple[int, ...], bool] = {}
        self.depth = 0  # repeats around the item being built
        self.looping_lookaround = False
        self.empty_rounds = False
        self.optional_rounds = 0  # the minimum count of a repeat whose rounds may read or not (0: none)

    # building

    def _state(self, item: Any) -> int:
        if len(self.items) >= MAX_STATES:
            raise _TooComplex
        self.items.append(item)
        self.follow.append({})
        return len(self.items) - 1

    def _link(self, sources: dict[int, int], targets: dict[int, int]) -> None:
        for s, m in sources.items():
            for t, n in targets.items():
                if m * n:
                    self.follow[s][t] = min(self.follow[s].get(t, 0) + m * n, _CAP)

    # Each builder returns (first, last, empty): the states a match can start and end on,
    # each with its number of ways to get there, and the number of ways to match nothing.

    def _seq(self, items: list[Any]) -> tuple[dict[int, int], dict[int, int], int]:
        first: dict[int, int] = {}
        last: dict[int, int] = {}
        empty = 1
        for item in items:
            f, l, n = self._item(item)
            self._link(last, f)
            _add(first, f, empty)
            last = _add(_add({}, last, n), l, 1) if n else dict(l)
            empty = min(empty * n, _CAP)
        return first, last, empty

    def _item(self, item: Any) -> tuple[dict[int, int], dict[int, int], int]:
        op, av = item
        if op in _CHAR_OPS:
            s = self._state(item)
            return {s: 1}, {s: 1}, 0
        if op == C.SUBPATTERN:
            if av[1] or av[2]:
                self.local_flags = True
            return self._seq(list(av[-1]))
        if _ATOMIC is not None and op == _ATOMIC:
            return self._seq(list(av))
        if op == C.BRANCH:
            return self._alternatives([list(b) for b in av[1]])
        if op == C.GROUPREF_EXISTS:
            return self._alternatives([list(av[1]), list(av[2]) if av[2] is not None else []])
        if op == C.GROUPREF:  # a backreference: counted as [\s\S]*
            return self._repeat(0, C.MAXREPEAT, [_ANY_CHAR])
        if op in (C.ASSERT, C.ASSERT_NOT):
            self.lookarounds.append(list(av[1]))
            if self.depth and _loops(list(av[1])):
                self.looping_lookaround = True
            return {}, {}, 1
        if op in _REPEATS:
            self.depth += av[1] > 1
            try:
                return self._repeat(av[0], av[1], list(av[2]))
            finally:
                self.depth -= av[1] > 1
        return {}, {}, 1  # anchors (^ $ \b \A \Z) and the like: zero width

    def _alternatives(self, branches: list[list[Any]]) -> tuple[dict[int, int], dict[int, int], int]:
        first: dict[int, int] = {}
        last: dict[int, int] = {}
        empty = 0
        for b in branches:
            f, l, n = self._seq(b)
            _add(first, f, 1)
            _add(last, l, 1)
            empty = min(empty + n, _CAP)
        return first, last, empty

    def _repeat(self, low: int, high: int, body: list[Any]) -> tuple[dict[int, int], dict[int, int], int]:
        if high == 0:
            return {}, {}, 1
        size = _size(body)
        if high != C.MAXREPEAT and high * max(size, 1) <= MAX_UNROLL:
            # Unrolled as X (X (X)?)? : the way a backtracking {low,high} tries rounds.
            return self._unrolled(low, high, body)
        first, last, empty = self._seq(body)
        if empty > 1:  # rounds that can each match nothing in several ways: 2**16 for (?:(?:)*){16}
            self.empty_rounds = True
        if empty and first and low > MAX_CHOICES:
            # A repeat stops at an empty round only once its minimum is met: below it, each
            # round may read or not, and a failing match tries every way to choose the empty
            # ones: 2**16 for (?:a?){16} (up to MAX_CHOICES rounds, like as many choices, pass).
            self.optional_rounds = max(self.optional_rounds, low)
        self._link(last, first)  # the loop
        return first, last, min(empty + 1, _CAP) if low == 0 else empty  # no round, or one empty round

    def _unrolled(self, low: int, high: int, body: list[Any]) -> tuple[dict[int, int], dict[int, int], int]:
        if high == 0:
            return {}, {}, 1
        f, l, n = self._seq(body)
        rf, rl, rn = self._unrolled(max(low - 1, 0), high - 1, body)
        self._link(l, rf)
        first = _add(dict(f), rf, n)
        last = _add(_add({}, l, rn), rl, 1)
        return first, last, min(n * rn + (low == 0), _CAP)

    # checking

    def problem(self) -> str | None:
        items = list(self.parsed)
        while items and _cannot_fail(items[-1]):
            items.pop()  # a trailing .* always succeeds: nothing after it to backtrack for
        anchored = bool(items) and items[0][0] == C.AT and items[0][1] in (C.AT_BEGINNING, C.AT_BEGINNING_STRING)
        prefix = None
        self.prefixed = not anchored
        if not anchored:
            prefix = self._state(_ANY_CHAR)
        # An end state: the ways to get there count even when they read nothing ((?:)*{16}).
        first, _, _ = self._seq(items + [_ANY_CHAR])
        if prefix is not None:
            self.follow[prefix][prefix] = 1
            self._link({prefix: 1}, first)
            self.start = {prefix: 1, **first}
        else:
            self.start = first
        for body in self.lookarounds:
            # A lookaround's body runs wherever it is reached: counted as part of the pattern,
            # as if it were matched there (over-counts, never under-counts).
            f, _, _ = self._seq(body)
            if prefix is not None:
                self._link({prefix: 1}, f)
            _add(self.start, f, 1)
        if self.empty_rounds:
            return ("a repeat whose rounds can match nothing in more than one way (like (?:(?:)*){16}): "
                    "exponential backtracking on some model names")
        if self.optional_rounds:
            return (f"a repeat of at least {self.optional_rounds} rounds that may each match nothing (like (?:a?){{16}}): "
                    "a failing match tries every way to choose the empty rounds, exponential on some model names")
        if self.looping_lookaround:
            return "a lookaround with a repeat inside, itself inside a repeat: its cost multiplies; rewrite it"
        self.sets = self._sets()
        cyclic = self._cyclic()
        if self._exponential():
            return ("a repeat can match the same text in more than one way (like (a+)+, (a|ab)* or (?:a+){10}): "
                    "exponential backtracking on some model names; nested repeats are refused whatever their bounds")
        chain = self._longest_chain(cyclic)
        if chain > MAX_CHAIN:
            return (f"{chain} or more repeats can share the same text (like .*.*x or .*a.*b; the search prefix counts as one): "
                    f"about n**{chain} steps on some model names; drop a leading .* (patterns match anywhere) "
                    "or make the repeats' characters disjoint")
        # Each overlapping choice can double the n**chain ways: fewer of them next to two loops.
        if self._choices(cyclic) > (MAX_CHOICES if chain <= 1 else MAX_CHOICES_WITH_CHAIN):
            return "too many alternatives that can start alike (like (a|a)(a|a)...): exponential backtracking on some model names"
        return None

    def _sets(self) -> list[tuple[tuple[int, int], ...]]:
        flag_sets = [self.flags]
        if self.local_flags:  # (?i:...) and the like: the union over every combination
            flag_sets = [self.flags | i | a for i in (0, re.IGNORECASE) for a in (0, re.ASCII)]
        out = []
        for item in self.items:
            runs: list[tuple[int, int]] = []
            for fl in flag_sets:
                runs += _runs(item, fl)
            out.append(tuple(_merge(runs)))
        return out

    def _meet(self, *states: int) -> bool:
        key = tuple(sorted(set(states)))
        hit = self.met.get(key)
        if hit is None:
            hit = self.met[key] = self._meet_uncached(key)
        return hit

    def _meet_uncached(self, states: tuple[int, ...]) -> bool:
        acc = self.sets[states[0]]
        for s in states[1:]:
            if s != states[0]:
                acc = _intersect(acc, self.sets[s])
            if not acc:
                return False
        return bool(acc)

    def _cyclic(self) -> set[int]:
        """States on a loop of the automaton."""
        graph = {s: list(f) for s, f in enumerate(self.follow)}
        out: set[int] = set()
        for comp in _sccs(list(graph), graph):
            if len(comp) > 1 or comp[0] in graph[comp[0]]:
                out.update(comp)
        return out

    def _exponential(self) -> bool:
        """Some state reaches itself along two different paths reading the same text: a
        strongly connected part of the pair automaton holding both a diagonal pair (x, x)
        and either an off-diagonal pair or a doubled edge."""
        graph: dict[Any, list[Any]] = {}
        todo = [(s, s) for s in range(len(self.items))]
        seen = set(todo)
        while todo:
            node = todo.pop()
            x, y = node
            out = graph.setdefault(node, [])
            for x2, kx in self.follow[x].items():
                for y2, ky in self.follow[y].items():
                    if not self._meet(x2, y2):
                        continue
                    nxt: Any = (x2, y2)
                    if x == y and x2 == y2 and kx > 1:  # two parallel edges: a way to differ
                        via = ("twin", x, x2)
                        graph.setdefault(via, []).append(nxt)
                        out.append(via)
                    else:
                        out.append(nxt)
                    if nxt not in seen:
                        if len(seen) > 40 * MAX_STATES * MAX_STATES:
                            raise _TooComplex
                        seen.add(nxt)
                        todo.append(nxt)
        for comp in _sccs(list(graph), graph):
            if len(comp) == 1 and comp[0] not in graph.get(comp[0], ()):
                continue
            diagonal = any(len(n) == 2 and n[0] == n[1] for n in comp)
            differing = any(len(n) == 3 or n[0] != n[1] for n in comp)
            if diagonal and differing:
                return True
        return False

    def _feeds(self, p: int, q: int) -> bool:
        """Some text w loops p -> p, leads p -> q and loops q -> q."""
        start = (p, p, q)
        todo = [start]
        seen = {start}
        while todo:
            x, y, z = todo.pop()
            for x2 in self.follow[x]:
                for y2 in self.follow[y]:
                    if not self._meet(x2, y2):
                        continue
                    for z2 in self.follow[z]:
                        if not self._meet(x2, y2, z2):
                            continue
                        nxt = (x2, y2, z2)
                        if nxt == (p, q, q):
                            return True
                        if nxt not in seen:
                            if len(seen) > 20000:
                                raise _TooComplex
                            seen.add(nxt)
                            todo.append(nxt)
        return False

    def _longest_chain(self, cyclic: set[int]) -> int:
        """The longest chain of loops each feeding the next, counted up to MAX_CHAIN + 1."""
        if not cyclic:
            return 0
        reach = self._reachability()
        known: dict[tuple[int, int], bool] = {}

        def feeds(p: int, q: int) -> bool:
            if (p, q) not in known:
                known[p, q] = q in reach[p] and self._feeds(p, q)
            return known[p, q]

        def longest(p: int, path: tuple[int, ...]) -> int:
            best = len(path)
            for q in cyclic:
                if best > MAX_CHAIN:
                    break
                if q not in path and feeds(p, q):
                    best = max(best, longest(q, path + (q,)))
            return best

        best = 1
        for p in cyclic:
            best = max(best, longest(p, (p,)))
            if best > MAX_CHAIN:
                break
        return best

    def _reachability(self) -> list[set[int]]:
        out = []
        for s in range(len(self.items)):
            seen: set[int] = set()
            todo = list(self.follow[s])
            while todo:
                t = todo.pop()
                if t not in seen:
                    seen.add(t)
                    todo.extend(self.follow[t])
            out.append(seen)
        return out

    def _choices(self, cyclic: set[int]) -> int:
        """Doublings of the ways to match at states outside loops: a state whose successors
        (counting parallel edges) can read the same character, k of them, counts log2(k).
        With a search prefix its own choice at the start is already part of its loop."""
        count = 0
        for s, succ in [(-1, self.start)] + list(enumerate(self.follow)):
            if s in cyclic or (s == -1 and self.prefixed):  # only parallel edges count there
                k = sum(n for n in succ.values() if n > 1)
                count += (k - 1).bit_length() if k > 1 else 0
                continue
            targets = list(succ)
            k = sum(n for t, n in succ.items() if n > 1 or any(u != t and self._meet(t, u) for u in targets))
            count += (k - 1).bit_length() if k > 1 else 0
        return count


def _add(into: dict[int, int], more: dict[int, int], times: int) -> dict[int, int]:
    for s, k in more.items():
        if k * times:
            into[s] = min(into.get(s, 0) + k * times, _CAP)
    return into


def _cannot_fail(item: Any) -> bool:
    op, av = item
    if op in _REPEATS and av[0] == 0:
        body = list(av[2])
        return len(body) == 1 and body[0][0] in _CHAR_OPS
    return False


def _loops(items: list[Any]) -> bool:
    """``items`` hold a repeat of more than one round (or a backreference)."""
    for op, av in items:
        if op in _REPEATS and av[1] > 1 or op == C.GROUPREF:
            return True
        if op == C.SUBPATTERN and _loops(list(av[-1])) or _ATOMIC is not None and op == _ATOMIC and _loops(list(av)):
            return True
        if op == C.BRANCH and any(_loops(list(b)) for b in av[1]):
            return True
        if op in (C.ASSERT, C.ASSERT_NOT) and _loops(list(av[1])):
            return True
    return False


def _size(items: list[Any]) -> int:
    """Character tests in ``items`` (an estimate of the states they become)."""
    total = 0
    for op, av in items:
        if op in _CHAR_OPS:
            total += 1
        elif op == C.SUBPATTERN:
            total += _size(list(av[-1]))
        elif _ATOMIC is not None and op == _ATOMIC:
            total += _size(list(av))
        elif op == C.BRANCH:
            total += sum(_size(list(b)) for b in av[1])
        elif op in _REPEATS:
            inner = _size(list(av[2]))
            total += inner * av[1] if av[1] != C.MAXREPEAT and av[1] * max(inner, 1) <= MAX_UNROLL else inner
        elif op in (C.ASSERT, C.ASSERT_NOT):
            total += _size(list(av[1]))
        else:
            total += 1
    return total


def _merge(runs: list[tuple[int, int]]) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for lo, hi in sorted(runs):
        if out and lo <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], hi))
        else:
            out.append((lo, hi))
    return out


def _sccs(nodes: list[Any], graph: dict[Any, list[Any]]) -> list[list[Any]]:
    """Tarjan's strongly connected components, iteratively."""
    index: dict[Any, int] = {}
    low: dict[Any, int] = {}
    on_stack: set[Any] = set()
    stack: list[Any] = []
    out: list[list[Any]] = []
    counter = 0
    for root in nodes:
        if root in index:
            continue
        work = [(root, iter(graph.get(root, ())))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, it = work[-1]
            advanced = False
            for nxt in it:
                if nxt not in index:
                    index[nxt] = low[nxt] = counter
                    counter += 1
                    stack.append(nxt)
                    on_stack.add(nxt)
                    work.append((nxt, iter(graph.get(nxt, ()))))
                    advanced = True
                    break
                if nxt in on_stack:
                    low[node] = min(low[node], index[nxt])
            if advanced:
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                comp = []
                while True:
                    n = stack.pop()
                    on_stack.discard(n)
                    comp.append(n)
                    if n == node:
                        break
                out.append(comp)
    return out
