"""cache-aware: send a prompt where its beginning is most probably still in the prompt
cache, under a load bound.

For each candidate the prefix index (``router.routing.prefix``) says how many of the
prompt's leading blocks its server holds. Among the candidates within the load bound
(consistent hashing with bounded loads: no server takes a request that would put it
above ``load_factor`` × the mean load; 1.25 by default) the longest match of at least
``min_match_tokens`` wins; matches within a block of it go by ring order (the same in
every process, whatever its view of the load). Without such a
match the prompt's first message (its stable start: a system prompt, a conversation's
first turn) is placed by consistent hashing, the same in every worker and instance, on
the first server within the bound; a prompt shorter than one block goes to the least
busy. Load is least-busy's: ours in flight, or the backend's own figure when higher.

Settings (``load_balancing.cache-aware`` in the policy file, or LiteLLM's
``router_settings.routing_strategy_args``): ``load_factor``, ``min_match_tokens``
(256), ``capacity_tokens`` (65536: a server's KV capacity where neither
``model_info.kv_cache_tokens`` nor the backend says).
"""

from __future__ import annotations

import math
import random
import time
from dataclasses import dataclass, field
from typing import Any, Sequence

from router.checks import get
from router.domain import Deployment, RequestFacts
from router.routing.prefix import CHARS_PER_TOKEN, Prompt, PrefixIndex, Ring
from router.routing.strategies import Ranked
from router.state import StateTable
from router.yamlsource import Path, Source

CACHE_AWARE_ARGS = {"load_factor", "min_match_tokens", "capacity_tokens"}
SIZE_EVERY = 1.0  # seconds between looks at the candidates' capacities (probes change them every few seconds)
DEFAULTS = {"load_factor": 1.25, "min_match_tokens": 256, "capacity_tokens": 65536}


def strategy_args(src: Source, value: Any, path: Path, warn_unknown: bool) -> dict[str, float]:
    """cache-aware's settings, checked. Other keys (other strategies' LiteLLM arguments)
    are accepted and ignored; under ``warn_unknown`` each gets a warning."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        src.error(path, "must be a mapping")
        return {}
    out: dict[str, float] = {}
    for key in sorted(CACHE_AWARE_ARGS & set(value)):
        number = get(src, value, key, path, "num" if key == "load_factor" else "int")
        if number is None:
            continue
        if key == "load_factor" and number <= 1:
            src.error(path + (key,), "must be more than 1 (1.25: no server above 1.25 × the mean load)")
        elif key == "capacity_tokens" and number < 1 or key == "min_match_tokens" and number < 0:
            src.error(path + (key,), "must be a positive number of tokens")
        else:
            out[key] = number
    if warn_unknown:
        for key in value:
            if key not in CACHE_AWARE_ARGS:
                src.warn(path + (key,), f"not a cache-aware setting (known: {', '.join(sorted(CACHE_AWARE_ARGS))}); ignored")
    return out


@dataclass(slots=True)
class Placement:
    """One cache-aware decision: the order, why, and what the index predicted."""

    ranked: Ranked
    reason: str  # for the trace
    by: str  # prefix | ring | load
    predicted: dict[str, int] = field(default_factory=dict)  # deployment id -> blocks the index said it holds
    bound: int = 0
    loads: dict[str, int] = field(default_factory=dict)

    def within(self, dep_id: str) -> bool:
        return self.loads.get(dep_id, 0) < self.bound


class CacheAware:
    name = "cache-aware"

    def __init__(self, spec: Any = None, provider_weights: object = None) -> None:
        args = {**DEFAULTS, **dict(getattr(spec, "args", None) or {})}
        self.load_factor = float(args["load_factor"])
        self.min_match_tokens = int(args["min_match_tokens"])
        self.capacity_tokens = int(args["capacity_tokens"])
        self._rings: dict[tuple[str, ...], Ring] = {}
        self._sized_at = -SIZE_EVERY  # when the candidates' capacities were last looked at

    def ring(self, candidates: Sequence[Deployment]) -> Ring:
        ids = tuple(sorted(d.id for d in candidates))
        ring = self._rings.get(ids)
        if ring is None:
            if len(self._rings) > 1000:  # candidate sets filtered by health vary; keep this bounded
                self._rings.clear()
            ring = self._rings[ids] = Ring(ids)
        return ring

    def size_index(self, index: PrefixIndex, candidates: Sequence[Deployment], view: StateTable) -> None:
        """Each candidate's capacity in blocks: model_info.kv_cache_tokens, else what its
        server says (vLLM's cache config, llama.cpp's slots), else capacity_tokens."""
        for d in candidates:
            tokens = d.model_info.get("kv_cache_tokens")
            if tokens is None:
                server = view.servers.get(d.api_base)
                tokens = (server.kv_tokens if server is not None else None) or self.capacity_tokens
            blocks = int(tokens * CHARS_PER_TOKEN) // index.block_chars
            if index.limit.get(d.id) != blocks:
                index.set_capacity(d.id, blocks)

    def place(self, candidates: Sequence[Deployment], view: StateTable, rng: random.Random,
              prompt: Prompt | None, key: int = 0) -> Placement:
        """The order for ``prompt`` (or, with ``key``, for a session placed by its id)."""
        index = view.prefixes
        n = len(candidates)
        ids = [d.id for d in candidates]
        loads = [view.in_flight(d) for d in candidates]  # ours (shared through Redis): a probe's figure is seconds old
        bound = math.ceil(self.load_factor * (sum(loads) + 1) / n)
        keys = prompt.keys if prompt is not None else None
        if keys:
            now = time.monotonic()
            if now >= self._sized_at + SIZE_EVERY:
                self.size_index(index, candidates, view)
                self._sized_at = now
            matches = index.match(keys, ids)
        else:
            matches = [0] * n
        per_block = index.block_chars / CHARS_PER_TOKEN  # tokens
        best, first = 0, -1
        for i in range(n):
            if loads[i] < bound and matches[i] > best:
                best, first = matches[i], i
        anchor = key or (prompt.anchor if prompt is not None else 0)
        if not key and best and best * per_block >= self.min_match_tokens:
            by = "prefix"
            # Near-equal matches (within a block: the same shared start, a turn apart) go by ring
            # order, not load: every worker and instance then makes the same choice, whatever its
            # own view of the load and of what the others sent where.
            tied = [i for i in range(n) if matches[i] >= best - 1 and loads[i] < bound]
            if len(tied) > 1:
                walk = self.ring(candidates).walk(anchor) if anchor else ids
                first = min(tied, key=lambda i: walk.index(ids[i]))
                best = matches[first]
            reason = (f"{ids[first]} holds {best} of {len(keys)} prompt blocks (~{round(best * per_block)} tokens), "
                      f"load {loads[first]} within the bound {bound}")
        elif anchor:
            by = "ring"
            walk = self.ring(candidates).walk(anchor)
            pos = {d: j for j, d in enumerate(walk)}
            first = min(range(n), key=lambda i: (loads[i] >= bound, pos[ids[i]]))
            what = "the session" if key else "the prompt's first message"
            reason = f"{what} hashes to {ids[first]}" if key else \
                f"no cached match of {self.min_match_tokens}+ tokens; {what} hashes to {ids[first]}"
            if walk[0] != ids[first]:
                reason += f" ({walk[0]} is at the load bound {bound})"
        else:
            by = "load"
            low = min(loads)
            first = rng.choice([i for i in range(n) if loads[i] == low])
            reason = f"prompt shorter than one block; least busy {ids[first]} (load {low})"
        order = list(range(n))
        del order[first]
        if n > 2:
            order.sort(key=lambda i: (loads[i] >= bound, -matches[i], loads[i]))
        order.insert(0, first)
        ranked: Ranked = [(candidates[i], matches[i] * per_block) for i in order]
        return Placement(ranked, reason, by, dict(zip(ids, matches)), bound, dict(zip(ids, loads)))

    def decide(self, group: str, candidates: Sequence[Deployment], view: StateTable, rng: random.Random,
               facts: RequestFacts) -> Placement:
        return self.place(candidates, view, rng, facts.prompt)

    def order(self, group: str, candidates: Sequence[Deployment], view: StateTable, rng: random.Random,
              facts: RequestFacts) -> Ranked:
        return self.decide(group, candidates, view, rng, facts).ranked
