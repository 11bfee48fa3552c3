"""Priority and fair admission: which waiting request gets a deployment's next free slot.

A request waits only where every candidate is full: at its ``max_parallel_requests``,
its server's slot count (llama.cpp ``/slots``), or frozen because its server reports
a queue above ``backend_queue_threshold`` (vLLM ``/metrics``). It then becomes a
``Waiter`` in the ``Pool`` of the deployments it may use, and waits for a *grant*:
the next free slot handed to it, reserved in its name, so that nobody who arrives
later takes it first. Nothing here awaits or reads a clock of its own: ``StateTable``
calls ``next_for`` when a slot frees and hands the slot over (``router.state``), and
every ordering rule is a unit test without an event loop (``tests/unit/test_admission.py``).

The order in which waiters get a deployment's free slot:

1. **Class.** Classes are ranked (``interactive`` 0, ``default`` 1, ``batch`` 2 unless
   configured). A waiter's effective rank rises one step per ``aging_seconds`` waited,
   so ``batch`` never starves: it overtakes every class below the one it reached, and
   where that class has waiters of its own they go first until they have been given
   ``AGED_BYPASS`` (3) times the aged request's estimated work: then the aged class
   gets the slot (at most a quarter of the work while both wait; a long batch job aged
   to interactive goes after ~3 jobs' worth of chats, not after 3 chats). A class is
   ranked by its oldest waiter; when it gets a slot, its keys still take turns (3.).
2. **Reservation.** ``reserve: {interactive: 1}`` keeps one slot of every deployment
   for that class (and the classes above it): a request of a lower class starts only
   while more slots than the reservations are free, however long it has waited. A
   reservation never takes a deployment's last slot (it is capped at capacity − 1).
3. **Keys take turns** within a class: deficit round-robin by estimated work (request
   bytes / 4 + ``max_tokens``, at most ``MAX_WORK``), so one key's 500 queued requests do
   not delay another key's first, and keys get equal work, not equal requests. A key's
   quantum is weighted by its recent share of the work served (``Shares``; shared
   through Redis where configured): a key that got more than the others lately gets a
   smaller quantum (down to a quarter), one that got less a larger one (up to 4×).
4. **Arrival order** within a key.

Across pools that contain the deployment (requests whose candidate sets differ), the
best effective class wins, then the longest-waiting head.
"""

from __future__ import annotations

import math
import time
from collections import Counter, deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

DEFAULT_CLASSES = ("interactive", "default", "batch")
MAX_WORK = 1 << 16  # a request's estimated work counts at most this many tokens in the turns (a 1M-token prompt is not 4,000 turns)
AGED_BYPASS = 3  # a class's own waiters get this many times the work of a request aged up to it, then it gets a slot
WEIGHT_BOUNDS = (0.25, 4.0)  # how far a key's recent share may shrink or grow its quantum
SHARE_WINDOW_S = 60  # the recent share: work served in this minute and the last


@dataclass(frozen=True, slots=True)
class PrioritySettings:
    """``router_settings.priority``."""

    classes: tuple[str, ...] = DEFAULT_CLASSES  # highest first
    default: str = "default"  # the class of a request that names none (and whose key names none)
    reserve: Mapping[str, int] = field(default_factory=lambda: MappingProxyType({}))  # class -> slots per deployment
    aging_seconds: float = 10.0  # a waiter rises one class per this many seconds waited (0: never)
    queue_limit: Mapping[str, int] = field(default_factory=lambda: MappingProxyType({}))  # class -> waiters per process
    default_queue_limit: int = 1000
    backend_queue_threshold: int | None = None  # a server reporting more waiting than this freezes our concurrency there
    aliases: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))  # extra names -> class
    fairness: bool = True  # keys take turns within a class (False: one FIFO per class)

    def rank(self, name: str) -> int:
        return self.classes.index(name)

    @property
    def default_rank(self) -> int:
        return self.classes.index(self.default)

    def limit(self, rank: int) -> int:
        return self.queue_limit.get(self.classes[rank], self.default_queue_limit)

    def parse(self, value: Any) -> int | None:
        """A class named by a client or a key: a class name, an alias (``high``, ``low``...),
        or LiteLLM's integer priority (0 is the highest: 0 → first class, 1 → second, and
        beyond the last → the last). None when it names no class."""
        if isinstance(value, bool):
            return None
        if isinstance(value, int) or (isinstance(value, float) and value.is_integer()):
            return min(max(int(value), 0), len(self.classes) - 1)
        if not isinstance(value, str):
            return None
        name = value.strip().lower()
        if name in self.classes:
            return self.classes.index(name)
        alias = self.aliases.get(name)
        if alias is None:
            alias = {"high": self.classes[0], "urgent": self.classes[0], "realtime": self.classes[0],
                     "normal": self.default, "medium": self.default,
                     "low": self.classes[-1], "background": self.classes[-1], "bulk": self.classes[-1]}.get(name)
        if alias is not None:
            return self.classes.index(alias)
        try:
            return self.parse(int(name))
        except ValueError:
            return None

    def thresholds(self, cap: int) -> list[int]:
        """For each rank, the slots a request of that rank may fill (``cap`` minus what the
        classes above it reserve, never below 1)."""
        out, held = [], 0
        for name in self.classes:
            out.append(max(1, cap - min(held, cap - 1)))
            held += self.reserve.get(name, 0)
        return out


def estimate_work(prompt_chars: int, max_tokens: Any) -> int:
    """A request's estimated work in tokens: its prompt (characters / 4) plus what it may generate."""
    out = max_tokens if isinstance(max_tokens, int) and not isinstance(max_tokens, bool) and max_tokens > 0 else 256
    return max(1, prompt_chars // 4 + min(out, 1 << 20))


class Waiter:
    """One request waiting for a slot. ``granted`` is the deployment id whose slot was
    handed to it; ``done`` once it left the queue (granted, timed out, gone)."""

    __slots__ = ("rank", "caller", "work", "since", "pool", "granted", "done", "wake", "key")

    def __init__(self, rank: int, caller: str, work: int, since: float, key: str = "none",
                 wake: Callable[[str], None] | None = None) -> None:
        self.rank = rank  # its class, as admitted
        self.caller = caller  # whose turn it is: the key's name, else the client's user or address
        self.work = work
        self.since = since
        self.key = key  # the metrics label: a configured key's name, or "none"
        self.pool: Pool | None = None
        self.granted: str | None = None
        self.done = False
        self.wake = wake  # called with the deployment id when granted

    def effective(self, now: float, aging: float) -> int:
        if aging <= 0 or self.rank == 0:
            return self.rank
        return max(0, self.rank - int((now - self.since) // aging))


class ClassQueue:
    """The waiters of one class in one pool: a FIFO per caller, served by deficit round-robin."""

    __slots__ = ("callers", "deficit", "arrivals", "live", "turn")

    def __init__(self) -> None:
        self.callers: dict[str, deque[Waiter]] = {}  # insertion order is the round; the first is on turn
        self.deficit: dict[str, float] = {}
        self.arrivals: deque[Waiter] = deque()  # arrival order, for aging (dead entries skipped)
        self.live = 0
        self.turn = False  # the first caller's turn has started (it got its quantum)

    def push(self, w: Waiter) -> None:
        q = self.callers.get(w.caller)
        if q is None:
            q = self.callers[w.caller] = deque()
        q.append(w)
        self.arrivals.append(w)
        self.live += 1

    def left(self) -> None:
        """A waiter of this class left without being popped (timed out, gone)."""
        self.live -= 1
        if len(self.arrivals) > 2 * self.live + 64:  # compact what dead entries accumulated
            self.arrivals = deque(w for w in self.arrivals if not w.done)
            for caller in list(self.callers):
                q = deque(w for w in self.callers[caller] if not w.done)
                if q:
                    self.callers[caller] = q
                else:
                    self._drop(caller)

    def oldest(self) -> Waiter | None:
        a = self.arrivals
        while a and a[0].done:
            a.popleft()
        return a[0] if a else None

    def pop_fair(self, weight: Callable[[str], float]) -> Waiter:
        """The next waiter by deficit round-robin over callers (``live`` must be > 0). A
        turn's quantum is the smallest work at the head of any caller's FIFO (times the
        caller's weight): the caller with the smallest requests serves about one per turn,
        and everyone gets the same work per round, so keys interleave request by request
        whatever their sizes, and a newcomer waits for at most one turn of each other key."""
        callers = self.callers
        while True:
            caller = next(iter(callers))
            q = callers[caller]
            while q and q[0].done:
                q.popleft()
            if not q:
                self._drop(caller)
                continue
            head = q[0]
            work = min(head.work, MAX_WORK)
            if not self.turn:
                self.deficit[caller] = self.deficit.get(caller, 0.0) + self._quantum() * weight(caller)
                self.turn = True
            if self.deficit[caller] >= work:
                self.deficit[caller] -= work
                q.popleft()
                self._taken(caller, q)
                return head
            callers[caller] = callers.pop(caller)  # its turn ends: to the back of the round
            self.turn = False

    def _quantum(self) -> int:
        smallest = MAX_WORK
        for q in self.callers.values():
            for w in q:
                if not w.done:
                    smallest = min(smallest, w.work)
                    break
        return smallest

    def _taken(self, caller: str, q: deque[Waiter]) -> None:
        self.live -= 1
        while q and q[0].done:
            q.popleft()
        if not q:
            self._drop(caller)

    def _drop(self, caller: str) -> None:
        """``caller`` has nothing queued: out of the round, its deficit gone (no banking)."""
        if next(iter(self.callers), None) == caller:
            self.turn = False
        del self.callers[caller]
        self.deficit.pop(caller, None)


class Pool:
    """The waiters that may use one set of deployments, by class."""

    __slots__ = ("deps", "classes")

    def __init__(self, deps: frozenset[str], n: int) -> None:
        self.deps = deps
        self.classes = [ClassQueue() for _ in range(n)]

    def live(self) -> int:
        return sum(c.live for c in self.classes)


class Shares:
    """Each caller's recent share of the work served: this minute's and the last's, ours
    plus (with Redis) every instance's (``router.shared`` writes ``pending`` and reads the
    totals back into ``shared``), as ``RateLimits`` counts requests."""

    def __init__(self) -> None:
        self.own: Counter[tuple[str, int]] = Counter()
        self.pending: Counter[tuple[str, int]] = Counter()
        self.flushed: Counter[tuple[str, int]] = Counter()
        self.shared: dict[tuple[str, int], int] = {}
        self._minute = 0

    def served(self, caller: str, work: int, now: float) -> None:
        minute = int(now // SHARE_WINDOW_S)
        if minute != self._minute:
            self._roll(minute)
        self.own[(caller, minute)] += work
        self.pending[(caller, minute)] += work

    def recent(self, caller: str, now: float) -> int:
        minute = int(now // SHARE_WINDOW_S)
        return sum(self.own[(caller, m)] + max(0, self.shared.get((caller, m), 0) - self.flushed[(caller, m)])
                   for m in (minute - 1, minute))

    def _roll(self, minute: int) -> None:
        self._minute = minute
        for table in (self.own, self.pending, self.flushed, self.shared):
            for k in [k for k in table if k[1] < minute - 1]:
                del table[k]


class QueueFull(Exception):
    def __init__(self, rank: int) -> None:
        self.rank = rank


class Admission:
    """Every waiting request of this process, by pool."""

    def __init__(self, settings: PrioritySettings | None = None) -> None:
        self.settings = settings or PrioritySettings()
        self.pools: dict[frozenset[str], Pool] = {}
        self.by_dep: dict[str, list[Pool]] = {}
        self.depth: Counter[int] = Counter()  # rank -> waiters
        self.by_key: Counter[tuple[int, str]] = Counter()  # (rank, key label) -> waiters
        self.shares = Shares()
        self.credit: dict[int, float] = {}  # rank -> work its own waiters were given past aged ones

    def configure(self, settings: PrioritySettings) -> None:
        """A reload: new settings. Waiters stay where they are (a class list that shrank
        puts the ranks beyond it in the last class when they are next served)."""
        if len(settings.classes) != len(self.settings.classes):
            for pool in self.pools.values():
                while len(pool.classes) < len(settings.classes):
                    pool.classes.append(ClassQueue())
        self.settings = settings

    def waiting(self, dep_id: str | None = None) -> int:
        if dep_id is None:
            return sum(self.depth.values())
        return sum(p.live() for p in self.by_dep.get(dep_id, ()))

    def enqueue(self, w: Waiter, deps: frozenset[str]) -> None:
        """Queue ``w`` for any of ``deps``; ``QueueFull`` when its class's queue is full."""
        if self.depth[w.rank] >= self.settings.limit(min(w.rank, len(self.settings.classes) - 1)):
            raise QueueFull(w.rank)
        pool = self.pools.get(deps)
        if pool is None:
            pool = self.pools[deps] = Pool(deps, max(len(self.settings.classes), w.rank + 1))
            for d in deps:
                self.by_dep.setdefault(d, []).append(pool)
        w.pool = pool
        pool.classes[w.rank].push(w)
        self.depth[w.rank] += 1
        self.by_key[(w.rank, w.key)] += 1

    def remove(self, w: Waiter) -> None:
        """``w`` leaves without a slot (timed out, or its client went away)."""
        if w.done:
            return
        w.done = True
        assert w.pool is not None
        w.pool.classes[w.rank].left()
        self._gone(w)

    def next_for(self, dep_id: str, allowed: int, now: float) -> Waiter | None:
        """Pop the waiter that gets ``dep_id``'s free slot: of a class ranked ``allowed`` or
        better (what the reservations leave this slot to: an aged request does not take
        a slot reserved for the class it aged into), by the order above."""
        s = self.settings
        last = len(s.classes) - 1
        native: tuple[int, int, float, ClassQueue] | None = None  # the best class waiting at its own rank
        aged: tuple[int, float, int, ClassQueue] | None = None  # the best class whose oldest has aged above it
        for pool in self.by_dep.get(dep_id, ()):
            for rank, cq in enumerate(pool.classes):
                rank = min(rank, last)  # a class a reload removed: served as the last
                if not cq.live or rank > allowed:  # reservations go by the class, not its age
                    continue
                head = cq.oldest()
                if head is None:
                    continue
                eff = min(head.effective(now, s.aging_seconds), rank)
                if eff < rank:
                    if aged is None or (eff, head.since) < (aged[0], aged[1]):
                        aged = (eff, head.since, rank, cq)
                elif native is None or (rank, head.since) < (native[0], native[2]):
                    native = (rank, rank, head.since, cq)
        if native is None and aged is None:
            return None
        credited: int | None = None  # the level whose own request goes past an aged one
        if aged is not None and (native is None or aged[0] < native[0]):
            cq = aged[3]  # aged above every class waiting at its own rank
        elif aged is not None and native is not None and aged[0] == native[0]:
            # aged up to a class that has its own waiters: those go first, until they have
            # been given AGED_BYPASS times the aged request's work; then the aged class gets
            # a turn (nothing starves; aged requests get at most a quarter of the work)
            level = native[0]
            head = aged[3].oldest()
            due = AGED_BYPASS * min(head.work if head is not None else 1, MAX_WORK)
            if self.credit.get(level, 0.0) >= due:
                cq = aged[3]
                self.credit[level] -= due
            else:
                cq = native[3]
                credited = level
        else:
            assert native is not None
            cq = native[3]
        wall = time.time()  # the shares count per wall-clock minute, the same in every instance
        w = cq.pop_fair(lambda c: self._weight(c, cq, wall))
        if credited is not None:
            self.credit[credited] = self.credit.get(credited, 0.0) + min(w.work, MAX_WORK)
        w.done = True
        w.granted = dep_id
        self._gone(w)
        self.shares.served(w.caller, min(w.work, MAX_WORK), wall)
        return w

    def _weight(self, caller: str, cq: ClassQueue, now: float) -> float:
        """``caller``'s quantum factor: the mean recent share of the callers queued in
        ``cq`` over its own (bounded), 1 when nobody has a share yet."""
        if len(cq.callers) < 2:
            return 1.0
        shares = [self.shares.recent(c, now) for c in cq.callers]
        mean = sum(shares) / len(shares)
        own = self.shares.recent(caller, now)
        if mean <= 0:
            return 1.0
        lo, hi = WEIGHT_BOUNDS
        return min(hi, max(lo, mean / own)) if own > 0 else hi

    def _gone(self, w: Waiter) -> None:
        self.depth[w.rank] -= 1
        self.by_key[(w.rank, w.key)] -= 1
        if not self.by_key[(w.rank, w.key)]:
            del self.by_key[(w.rank, w.key)]
        pool = w.pool
        if pool is not None and not pool.live():
            del self.pools[pool.deps]
            for d in pool.deps:
                pools = self.by_dep.get(d)
                if pools is not None:
                    pools.remove(pool)
                    if not pools:
                        del self.by_dep[d]

    def snapshot(self, now: float | None = None) -> dict[str, Any]:
        """What ``/health`` and ``/ui/data`` show: depth and the oldest wait per class, depth per key
        (the ranks of classes a reload removed count as the last class)."""
        now = time.monotonic() if now is None else now
        classes = self.settings.classes
        last = len(classes) - 1
        out: dict[str, Any] = {}
        for rank, name in enumerate(classes):
            ranks = range(rank, rank + 1) if rank < last else range(last, max(last + 1, *self.depth.keys(), 0) + 1)
            oldest = [h.since for p in self.pools.values() for r in ranks if r < len(p.classes)
                      for h in [p.classes[r].oldest()] if h is not None]
            out[name] = {"waiting": sum(self.depth.get(r, 0) for r in ranks), "limit": self.settings.limit(rank),
                         "oldest_wait_s": round(now - min(oldest), 3) if oldest else None,
                         "reserved_slots": self.settings.reserve.get(name, 0)}
        keys: dict[str, dict[str, int]] = {}
        for (rank, key), n in self.by_key.items():
            keys.setdefault(key, {})[classes[min(rank, len(classes) - 1)]] = n
        return {"classes": out, "keys": keys, "aging_seconds": self.settings.aging_seconds}


def retry_after(waiting: int, hold: float | None, lanes: int) -> int:
    """Seconds a client refused by a full queue should wait: the queue ahead drained at
    the deployments' pace, between 1 and 60."""
    if hold is None:
        return 1
    return min(60, max(1, math.ceil(waiting * hold / max(1, lanes))))


PRIORITY_HEADERS = ("x-priority", "x-litellm-priority")  # the seed's, then LiteLLM's


def asked_of(headers: Mapping[str, str], body: Mapping[str, Any] | None) -> tuple[str, Any] | None:
    """What class a request asks for, and where: the ``X-Priority`` header (the seed's), LiteLLM's
    ``x-litellm-priority``, the body's ``priority``, or ``metadata.priority``."""
    for name in PRIORITY_HEADERS:
        value = headers.get(name)
        if value is not None:
            return f"header {name}", value
    if body is None:
        return None
    value = body.get("priority")
    if value is not None:
        return "body priority", value
    meta = body.get("metadata")
    if isinstance(meta, dict) and meta.get("priority") is not None:
        return "metadata.priority", meta["priority"]
    return None


def classify(s: PrioritySettings, key_name: str | None, key_priority: str | None, key_max: str | None,
             asked: tuple[str, Any] | None) -> tuple[int, str] | None:
    """A request's class rank and why: what it asked for (``asked``: where, the value),
    else its key's class, else the default; never above the key's ceiling
    (``max_priority``, else its ``priority``). None when ``asked`` names no class."""
    key_rank = s.rank(key_priority) if key_priority is not None and key_priority in s.classes else None
    if key_max is not None and key_max in s.classes:
        ceiling, ceiling_why = s.rank(key_max), f"max_priority of key {key_name!r}"
    elif key_rank is not None:
        ceiling, ceiling_why = key_rank, f"priority of key {key_name!r}"
    else:
        ceiling, ceiling_why = 0, ""
    if asked is not None:
        rank = s.parse(asked[1])
        if rank is None:
            return None
        why = f"{asked[0]} {asked[1]!r}"
    elif key_rank is not None:
        rank, why = key_rank, f"key {key_name!r}"
    else:
        rank, why = s.default_rank, "default"
    if rank < ceiling:
        return ceiling, f"{why}, lowered to {s.classes[ceiling]} by the {ceiling_why}"
    return rank, why
