"""Cache-aware routing's parts: the prompt's block keys, the prefix index (against a
plain model of per-server LRU caches), the feedback correction, the ring, the load
bound and session pins. Properties drawn by hypothesis (derandomised under CI)."""

from __future__ import annotations

import math
import os
import random
from collections import Counter, OrderedDict

from hypothesis import given, settings
from hypothesis import strategies as st

from router.domain import Deployment, RequestFacts
from router.policy import StrategySpec
from router.routing.prefix import BLOCK_CHARS, Pins, PrefixIndex, Ring, prompt_of, render
from router.routing.strategies.cache_aware import CacheAware
from router.state import ServerState, StateTable

PROPS = settings(max_examples=150, deadline=None, derandomize=bool(os.environ.get("CI")))
text = st.text(st.characters(codec="utf-8"), max_size=600)


def deps(n: int) -> list[Deployment]:
    return [Deployment(id=f"d{i}", model_name="m", provider=f"p{i}", kind="vllm", upstream_model="m",
                       api_base=f"http://h:{i}/v1") for i in range(n)]


# -- the prompt's keys ---------------------------------------------------------------------------


@PROPS
@given(st.lists(st.tuples(st.sampled_from(["user", "assistant", "tool"]), text), min_size=1, max_size=12), text,
       st.integers(1, 11))
def test_a_later_turn_extends_the_earlier_turns_keys(turns, system, cut):
    """Every full block of turn k is a block of turn k+1: the conversation's history is one prefix."""
    messages = [{"role": "system", "content": system}] + [{"role": r, "content": c} for r, c in turns]
    cut = min(cut, len(messages) - 1)
    earlier, later = prompt_of({"messages": messages[:cut]}), prompt_of({"messages": messages})
    text_earlier = render({"messages": messages[:cut]})[0]
    assert len(earlier.keys) == len(text_earlier) // BLOCK_CHARS
    full = len(text_earlier[:-1]) // BLOCK_CHARS  # its closing "]" is not in the later rendering at that place
    assert later.keys[:full] == earlier.keys[:full]
    assert later.anchor == earlier.anchor  # the first message places both alike


@PROPS
@given(text, text, st.integers(0, 2000))
def test_different_prompts_differ_from_the_first_differing_block_on(a, b, pad):
    common = "x" * pad
    pa, pb = prompt_of({"prompt": common + a + "A"}), prompt_of({"prompt": common + b + "B"})
    shared = len(common.encode()) // BLOCK_CHARS
    assert pa.keys[:shared] == pb.keys[:shared]
    ra, rb = (common + a + "A").encode(), (common + b + "B").encode()
    first_diff = next((i for i, (x, y) in enumerate(zip(ra, rb)) if x != y), min(len(ra), len(rb)))
    for i in range(first_diff // BLOCK_CHARS, min(len(pa.keys), len(pb.keys))):
        assert pa.keys[i] != pb.keys[i]  # a CRC-32 collision would be 1 in 4e9 per block


def test_keys_are_the_same_in_every_process():
    """CRC-32, not Python's seeded hash: workers and instances compute the same keys."""
    p = prompt_of({"messages": [{"role": "system", "content": "s" * 300}, {"role": "user", "content": "hi"}]})
    assert p.keys == prompt_of({"messages": [{"role": "system", "content": "s" * 300}, {"role": "user", "content": "hi"}]}).keys
    import subprocess
    import sys
    code = ("from router.routing.prefix import prompt_of; print(prompt_of({'messages': [{'role': 'system', 'content': 's' * 300},"
            " {'role': 'user', 'content': 'hi'}]}).keys)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONHASHSEED": "12345"})
    assert out.stdout.strip() == str(p.keys)


def test_tools_and_system_come_before_the_messages_and_a_short_prompt_has_no_keys():
    assert prompt_of({"messages": [{"role": "user", "content": "hi"}]}).keys == []
    with_tools = render({"tools": [{"type": "function"}], "messages": [{"role": "user", "content": "q"}]})[0]
    assert with_tools.index(b"function") < with_tools.index(b"q")
    anthropic = render({"system": "S" * 10, "messages": [{"role": "user", "content": "q"}]})[0]
    assert anthropic.startswith(b"SSSS")


# -- the index against a model of the servers' caches ---------------------------------------------


class ModelCache:
    """What the index should say: per server, an LRU of keys, touched last block first."""

    def __init__(self, cap: int) -> None:
        self.cap, self.lru = cap, OrderedDict()

    def insert(self, keys):
        for k in reversed(keys):
            self.lru[k] = None
            self.lru.move_to_end(k)
        while len(self.lru) > self.cap:
            self.lru.popitem(last=False)

    def match(self, keys):
        n = 0
        while n < len(keys) and keys[n] in self.lru:
            n += 1
        return n


conversations = st.lists(st.tuples(st.integers(0, 3), st.integers(0, 5), st.integers(1, 30)), min_size=1, max_size=60)


@PROPS
@given(conversations, st.integers(1, 80))
def test_match_is_the_longest_held_prefix_per_server(requests, cap):
    """Random traffic (server, conversation, length): match() equals each server's LRU model."""
    index, models = PrefixIndex(), {f"d{i}": ModelCache(cap) for i in range(4)}
    for d in models:
        index.set_capacity(d, cap)
    ids = list(models)
    for server, conv, length in requests:
        keys = [(i + 1) << 32 | (conv * 7919 + 1) for i in range(length)]  # conversation conv's first blocks
        assert index.match(keys, ids) == [models[d].match(keys) for d in ids]
        index.insert(f"d{server}", keys)
        models[f"d{server}"].insert(keys)
        assert index.size(f"d{server}") == len(models[f"d{server}"].lru) <= cap
    held = Counter(k for m in models.values() for k in m.lru)
    assert {k: bin(v).count("1") for k, v in index.owners.items()} == dict(held)  # no stale owner bits


@PROPS
@given(st.integers(2, 40), st.integers(0, 39), st.integers(1, 6))
def test_a_reported_shortfall_drops_the_missing_blocks_and_everything_older(length, reported, older):
    index = PrefixIndex()
    index.set_capacity("d", 10_000)
    others = [[(i + 1) << 32 | (100 + j) for i in range(5)] for j in range(older)]
    for keys in others:
        index.insert("d", keys)  # older entries
    prompt = prompt_of({"prompt": "p" * (length * BLOCK_CHARS)})
    index.insert("d", prompt.keys)
    newer = [(i + 1) << 32 | 999 for i in range(3)]
    index.insert("d", newer)
    reported = min(reported, length)
    note = index.observe("d", prompt, length, reported * BLOCK_CHARS)
    if reported + max(2, length // 4) < length:  # a clear shortfall
        assert note is not None
        assert all(index.match(keys, ["d"]) == [0] for keys in others)  # used before the evicted blocks: gone
        assert index.match(newer, ["d"]) == [3]  # used after them: kept
    else:
        assert note is None
        assert all(index.match(keys, ["d"]) == [5] for keys in others)
    assert index.match(prompt.keys, ["d"]) == [length]  # it has just been served: held again


def test_learned_capacity_shrinks_on_evidence_and_grows_back_on_confirmation():
    index = PrefixIndex()
    index.set_capacity("d", 1000)
    convs = [prompt_of({"prompt": f"{j:04d}" + "x" * 20 * BLOCK_CHARS}) for j in range(10)]
    for p in convs:
        index.insert("d", p.keys)
    # the server really holds far less: the first conversation comes back with nothing cached
    index.observe("d", convs[0], 20, 0)
    assert index.capacity["d"] < 1000
    shrunk = index.capacity["d"]
    for _ in range(50):
        index.observe("d", convs[0], 20, 20 * BLOCK_CHARS)
    assert shrunk < index.capacity["d"] <= 1000


# -- the ring and the load bound -----------------------------------------------------------------


@PROPS
@given(st.integers(2, 12), st.integers(0, 2**32 - 1), st.integers(0, 11))
def test_the_ring_walks_every_server_once_and_a_removal_moves_only_its_keys(n, key, gone):
    ids = [f"d{i}" for i in range(n)]
    full = Ring(ids).walk(key)
    assert sorted(full) == sorted(ids)
    gone_id = ids[gone % n]
    without = Ring([d for d in ids if d != gone_id]).walk(key)
    assert list(without) == [d for d in full if d != gone_id]


def state_with(loads: list[int], candidates: list[Deployment]) -> StateTable:
    view = StateTable()
    for d, n in zip(candidates, loads):
        for _ in range(n):
            view.started(d)
    return view


@PROPS
@given(st.integers(2, 8), st.integers(1, 200), st.sampled_from([1.1, 1.25, 1.5, 2.0]), st.integers(0, 2**32))
def test_no_server_goes_above_the_load_bound(n, requests, factor, seed):
    """CHWBL's guarantee: placing requests one by one (none finishing), whatever the prompts,
    no server holds more than ceil(factor × the mean)."""
    cands = deps(n)
    strategy = CacheAware(StrategySpec("cache-aware", args={"load_factor": factor}))
    view, rng = StateTable(), random.Random(seed)
    tenants = [prompt_of({"messages": [{"role": "system", "content": f"tenant {t} " * 40}, {"role": "user", "content": "q"}]})
               for t in range(3)]  # few tenants: every prompt wants the same servers
    for _ in range(requests):
        prompt = tenants[rng.randrange(3)]
        first = strategy.place(cands, view, rng, prompt).ranked[0][0]
        view.started(first)
        view.prefixes.insert(first.id, prompt.keys)
        loads = [view.in_flight(d) for d in cands]
        assert max(loads) <= math.ceil(factor * sum(loads) / n), loads


def test_the_longest_match_within_the_bound_wins_else_the_ring_else_the_least_busy():
    cands = deps(4)
    strategy = CacheAware()
    view = StateTable()
    prompt = prompt_of({"messages": [{"role": "system", "content": "S" * 4000}, {"role": "user", "content": "q"}]})
    placed = strategy.place(cands, view, random.Random(1), prompt)
    assert placed.by == "ring"  # nothing cached anywhere: the first message's hash decides
    home = placed.ranked[0][0]
    assert strategy.place(cands, StateTable(), random.Random(2), prompt).ranked[0][0] is home  # the same elsewhere
    view.prefixes.insert("d3" if home.id != "d3" else "d2", prompt.keys[:10])
    view.prefixes.insert(home.id, prompt.keys)
    placed = strategy.place(cands, view, random.Random(1), prompt)
    assert (placed.by, placed.ranked[0][0]) == ("prefix", home)
    # the home server is busy: the next longest match within the bound takes it
    for _ in range(3):
        view.started(home)
    placed = strategy.place(cands, view, random.Random(1), prompt)
    assert placed.ranked[0][0].id == ("d3" if home.id != "d3" else "d2")
    assert "holds 10 of" in placed.reason
    short = prompt_of({"messages": [{"role": "user", "content": "hi"}]})
    assert strategy.place(cands, view, random.Random(1), short).by == "load"


def test_below_the_minimum_match_the_prompt_is_placed_not_matched():
    cands = deps(3)
    strategy = CacheAware(StrategySpec("cache-aware", args={"min_match_tokens": 100_000}))
    view = StateTable()
    prompt = prompt_of({"prompt": "z" * 5000})
    view.prefixes.insert("d1", prompt.keys)
    assert strategy.place(cands, view, random.Random(0), prompt).by == "ring"


def test_capacity_comes_from_model_info_then_the_server_then_the_setting():
    cands = [Deployment(id="a", model_name="m", provider="p", kind="vllm", upstream_model="m", api_base="http://a/v1",
                        model_info={"kv_cache_tokens": 3200}),
             *deps(2)]
    view = StateTable()
    view.servers["http://h:0/v1"] = ServerState(kv_tokens=6400)
    strategy = CacheAware(StrategySpec("cache-aware", args={"capacity_tokens": 12800}))
    strategy.size_index(view.prefixes, cands, view)
    per_block = BLOCK_CHARS // 4
    assert [view.prefixes.capacity[d.id] for d in cands] == [3200 // per_block, 6400 // per_block, 12800 // per_block]


def test_decide_gives_the_engine_a_placement_with_predictions():
    cands = deps(2)
    view = StateTable()
    prompt = prompt_of({"prompt": "q" * 4000})
    view.prefixes.insert("d1", prompt.keys)
    placement = CacheAware().decide("m", cands, view, random.Random(0), RequestFacts(model="m", prompt=prompt))
    assert placement.predicted == {"d0": 0, "d1": len(prompt.keys)}


# -- session pins -------------------------------------------------------------------------------


def test_pins_expire_and_stay_bounded():
    pins = Pins(limit=3)
    pins.set("a", "d0", until=10.0)
    assert pins.get("a", now=5.0) == "d0"
    assert pins.get("a", now=10.0) is None  # its TTL passed
    for s in "bcde":
        pins.set(s, "d1", until=100.0)
    assert len(pins) == 3 and pins.get("b", 0.0) is None and pins.get("e", 0.0) == "d1"
