"""What each backend server has in its prompt cache, approximately: the index behind
``cache-aware`` routing and session affinity.

A request's prompt is rendered canonically (``render``: tools, system and
instructions, then the messages or input or prompt, as orjson writes them: a later
turn of a conversation extends the earlier turn's rendering) and cut into blocks of
``block_chars`` characters. Each full block gets a key, the CRC-32 of the prompt up to
its end (``zlib.crc32`` chains: the CRC of a longer prefix continues the shorter one's),
so one key stands for a whole prefix, and the same prompt gets the same keys in every
process and instance (no per-process hash seed). 32 bits: with a million blocks indexed
a lookup meets a stranger's key about once in 4,000, which at worst misjudges one block.

``PrefixIndex`` keeps, per deployment, an LRU of the keys it was last sent, bounded by
that server's KV-cache capacity in blocks, and per key the set of deployments holding it
(a bit mask), so one walk over a prompt's keys gives every candidate's match length.
A prompt's keys are inserted last block first, as vLLM frees a sequence's tail blocks
first: the shared beginnings (the system prompt) stay longest.

The answer corrects it (``observe``): where the backend reports fewer cached tokens
than the index predicted, the blocks it lacks were evicted, and with them, LRU being
LRU, everything the index holds for that server that was used less recently. Those
entries go, and the server's learned capacity shrinks to what it evidently holds.

``Ring`` is consistent hashing with bounded loads (CHWBL): the placement of a
prompt's leading blocks, or of a session id, that every instance computes alike.

No message content is kept: only integers.
"""

from __future__ import annotations

import bisect
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Sequence
from zlib import crc32

import orjson

BLOCK_CHARS = 256  # characters per block (about 64 tokens: four of vLLM's 16-token blocks)
MAX_BLOCKS = 2048  # blocks of one prompt that are indexed (512 KB of rendering): the rest is not looked at
ANCHOR_BLOCKS = 8  # at most this many leading blocks (2 KB) place a new prompt on the ring
CHARS_PER_TOKEN = 4.0  # converting the settings' tokens to characters, where the backend has not told
DEFAULT_CAPACITY_BLOCKS = 1024  # 65,536 tokens: cache-aware's capacity_tokens default
RING_POINTS = 64  # virtual nodes per deployment on the ring
_RENDERED = ("tools", "system", "instructions", "messages", "input", "prompt")  # in this order


@dataclass(slots=True)
class Prompt:
    """What routing knows of one request's prompt: block keys, never the text."""

    keys: list[int]  # one per full block, in order
    chars: int  # length of the rendering
    anchor: int  # a key standing for the prompt's stable start (its first message), 0 if too short


def render(body: Mapping[str, Any]) -> tuple[bytes, int]:
    """The canonical rendering of a request's prompt, and where its first message ends
    (the stable start of a conversation: every later turn begins the same way)."""
    parts: list[bytes] = []
    at = 0  # where the next part starts (parts are joined by one separator byte)
    first = 0
    for field in _RENDERED:
        value = body.get(field)
        if value is None:
            continue
        data = value.encode() if isinstance(value, str) else orjson.dumps(value)
        if not first:
            if field in ("messages", "input") and isinstance(value, list) and value:
                first = at + 1 + len(orjson.dumps(value[0]))  # "[" and the first message
            elif field in ("prompt", "input"):
                first = at + len(data)
        parts.append(data)
        at += len(data) + 1
    return b"\x1e".join(parts), first


def prompt_of(body: Mapping[str, Any], block_chars: int = BLOCK_CHARS) -> Prompt:
    """The block keys of ``body``'s prompt (the first ``MAX_BLOCKS`` full blocks)."""
    text, first = render(body)
    end = min(len(text) // block_chars, MAX_BLOCKS) * block_chars
    keys: list[int] = []
    add = keys.append
    h = 0
    for i in range(0, end, block_chars):
        h = crc32(text[i:i + block_chars], h)
        add(h)
    anchor_blocks = min(first // block_chars, ANCHOR_BLOCKS, len(keys))
    return Prompt(keys, len(text), keys[anchor_blocks - 1] if anchor_blocks else 0)


class PrefixIndex:
    """Per deployment, the prompt blocks its server probably still has cached."""

    def __init__(self, block_chars: int = BLOCK_CHARS) -> None:
        self.block_chars = block_chars
        self.owners: dict[int, int] = {}  # key -> bit mask of the deployments holding it
        self.lrus: dict[str, OrderedDict[int, None]] = {}  # deployment id -> its keys, least recently used first
        self.bits: dict[str, int] = {}  # deployment id -> its bit
        self.capacity: dict[str, int] = {}  # deployment id -> blocks it is believed to hold at most
        self.limit: dict[str, int] = {}  # deployment id -> the capacity it was given (learning never exceeds it)
        self.reporting: set[str] = set()  # deployments whose answers have reported a cached count

    def bit(self, dep_id: str) -> int:
        b = self.bits.get(dep_id)
        if b is None:
            b = self.bits[dep_id] = 1 << len(self.bits)
            self.lrus[dep_id] = OrderedDict()
            self.capacity.setdefault(dep_id, DEFAULT_CAPACITY_BLOCKS)  # bounded before anyone sized it
        return b

    def set_capacity(self, dep_id: str, blocks: int) -> None:
        """The server's KV capacity in blocks (configured, or from the backend)."""
        blocks = max(1, blocks)
        if self.limit.get(dep_id) != blocks:
            self.limit[dep_id] = blocks
            self.capacity[dep_id] = blocks
            self._trim(dep_id)

    def size(self, dep_id: str) -> int:
        lru = self.lrus.get(dep_id)
        return len(lru) if lru is not None else 0

    def __len__(self) -> int:
        return len(self.owners)

    def match(self, keys: Sequence[int], dep_ids: Sequence[str]) -> list[int]:
        """How many leading blocks of ``keys`` each of ``dep_ids`` holds (one walk)."""
        bits = [self.bits.get(d, 0) for d in dep_ids]
        alive = 0
        for b in bits:
            alive |= b
        length: dict[int, int] = {}
        owners = self.owners
        n = 0
        for n, key in enumerate(keys):  # noqa: B007
            held = owners.get(key, 0) & alive
            if held != alive:
                gone = alive & ~held
                for b in bits:
                    if b & gone:
                        length[b] = n
                alive = held
                if not alive:
                    break
        else:
            n = len(keys)
            for b in bits:
                if b & alive:
                    length[b] = n
        return [length.get(b, 0) if b else 0 for b in bits]

    def insert(self, dep_id: str, keys: Sequence[int]) -> None:
        """``dep_id``'s server has just processed a prompt with these keys."""
        bit = self.bit(dep_id)
        lru = self.lrus[dep_id]
        owners = self.owners
        for key in reversed(keys):
            if key in lru:
                lru.move_to_end(key)
            else:
                lru[key] = None
                owners[key] = owners.get(key, 0) | bit
        self._trim(dep_id)

    def _trim(self, dep_id: str) -> None:
        lru = self.lrus.get(dep_id)
        cap = self.capacity.get(dep_id)
        if lru is None or cap is None:
            return
        bit = self.bits[dep_id]
        while len(lru) > cap:
            self._drop(lru.popitem(last=False)[0], bit)

    def _drop(self, key: int, bit: int) -> None:
        left = self.owners.get(key, 0) & ~bit
        if left:
            self.owners[key] = left
        else:
            self.owners.pop(key, None)

    def evicted(self, dep_id: str, missing: Iterable[int]) -> int:
        """The server lacks ``missing``: drop them and every entry it used less recently
        (LRU evicts in that order). Returns how many entries went."""
        lru = self.lrus.get(dep_id)
        if lru is None:
            return 0
        wanted = {k for k in missing if k in lru}
        if not wanted:
            return 0
        bit = self.bits[dep_id]
        dropped = 0
        while wanted and lru:
            key = lru.popitem(last=False)[0]
            self._drop(key, bit)
            wanted.discard(key)
            dropped += 1
        return dropped

    def observe(self, dep_id: str, prompt: Prompt, predicted: int, cached_chars: int | None) -> str | None:
        """After an answer: the server now holds ``prompt``; where it reported serving
        fewer cached characters than the ``predicted`` blocks, the index learns what it
        evicted. Returns a note for the trace when it corrected something."""
        note = None
        if cached_chars is not None and predicted > 0:
            reported = cached_chars // self.block_chars
            slack = max(2, predicted // 4)  # renderings differ from chat templates: only a clear shortfall counts
            if reported + slack < predicted:
                dropped = self.evicted(dep_id, prompt.keys[reported:predicted])
                if dropped:
                    learned = max(len(prompt.keys), self.size(dep_id) + len(prompt.keys))
                    if learned < self.capacity.get(dep_id, learned + 1):
                        self.capacity[dep_id] = learned
                    note = f"{dep_id} had evicted {predicted - reported} of {predicted} predicted blocks: {dropped} entries dropped"
            elif dep_id in self.capacity and self.capacity[dep_id] < self.limit.get(dep_id, 0):
                self.capacity[dep_id] += max(1, self.capacity[dep_id] // 100)  # confirmed: let it grow back
        self.insert(dep_id, prompt.keys)
        return note


class Ring:
    """Consistent hashing over deployment ids (the same ring in every process)."""

    __slots__ = ("points", "owners", "_walks")

    def __init__(self, dep_ids: Sequence[str]) -> None:
        placed = sorted((crc32(f"{d}#{i}".encode()), d) for d in dep_ids for i in range(RING_POINTS))
        self.points = [p for p, _ in placed]
        self.owners = [d for _, d in placed]
        self._walks: dict[int, tuple[str, ...]] = {}  # start point -> its walk (at most len(points) of them)

    def walk(self, key: int) -> tuple[str, ...]:
        """Every deployment once, in ring order from ``key``'s place."""
        start = bisect.bisect_left(self.points, key & 0xFFFFFFFF) % max(1, len(self.points))
        order = self._walks.get(start)
        if order is None:
            n = len(self.owners)
            order = self._walks[start] = tuple(dict.fromkeys(self.owners[(start + i) % n] for i in range(n)))
        return order


def session_key(session: str) -> int:
    return crc32(session.encode("utf-8", "surrogatepass"))


MAX_SESSIONS = 100_000  # pinned sessions kept (least recently used go first)


class Pins:
    """Session id -> the deployment that served it last, for ``ttl`` seconds after its
    last use (LiteLLM's ``deployment_affinity_ttl_seconds``); bounded, LRU."""

    def __init__(self, limit: int = MAX_SESSIONS) -> None:
        self.limit = limit
        self._pins: OrderedDict[str, tuple[str, float]] = OrderedDict()

    def get(self, session: str, now: float) -> str | None:
        pin = self._pins.get(session)
        if pin is None:
            return None
        if pin[1] <= now:
            del self._pins[session]
            return None
        return pin[0]

    def set(self, session: str, dep_id: str, until: float) -> None:
        pins = self._pins
        pins[session] = (dep_id, until)
        pins.move_to_end(session)
        if len(pins) > self.limit:
            pins.popitem(last=False)

    def __len__(self) -> int:
        return len(self._pins)
