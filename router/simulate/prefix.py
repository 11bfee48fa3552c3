"""The simulated servers' prompt cache: which leading tokens of a prompt a server
still holds the KV cache of, so that only the rest needs prefill.

A prompt is rendered to simulated token ids (:class:`Prompt`) in a prefix-stable
way: the chat template renders the tools first, then each message, so a later
turn of a conversation, whose ``messages`` extend the earlier turn's, renders to
ids that extend the earlier prompt's. The tools do not count as prompt tokens
(the simulator never counted them); they seed the hash chain instead, so a
change of tools invalidates everything after them, as a template that renders
them first does.

Two cache models, both pure (no I/O, no clock):

* :class:`BlockCache` — vLLM's automatic prefix caching: chained hashes of full
  blocks of ``block_tokens`` ids, held in one LRU of ``capacity_tokens //
  block_tokens`` blocks. A prompt's cached tokens are its longest run of leading
  blocks still in the cache. A request touches the blocks it hit; after its
  prefill all its full blocks are inserted. Blocks of one prompt are refreshed
  tail first, so that the head is the most recent and eviction takes the tail
  of the least recently used prompt first (vLLM frees a finished request's
  blocks in reverse order for the same reason). Generated tokens are not
  cached (real servers keep some of them; this slightly under-counts hits).
* :class:`LastPrompt` — llama-cpp-python's server: one sequence, the previous
  prompt; the cached tokens are the longest common prefix with it (token
  granular).

Every real server evaluates at least the prompt's last token to get the logits
it samples from (vLLM ``max_cache_hit_length = num_tokens - 1``, llama-server
and Ollama step ``n_past`` back by one, llama-cpp-python replays one token), so
a prompt is never wholly cached: at most ``n - 1`` tokens, rounded down to a
block for :class:`BlockCache`.
"""

from __future__ import annotations

import hashlib
import json
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from .core import token_ids
from .tools import ToolSpec


@dataclass(frozen=True, slots=True)
class Prompt:
    """A prompt as the server's tokenizer and template see it."""

    #: Simulated token ids of the rendered prompt (one per word, :func:`~router.simulate.core.token_ids`).
    ids: tuple[int, ...]
    #: What the template renders before the messages (the tools), as a hash; 0 = nothing.
    seed: int = 0

    @classmethod
    def of(cls, text: str, tools: Sequence[ToolSpec] = ()) -> Prompt:
        """``text`` (the rendered messages or completion prompt) after ``tools``."""
        return cls(tuple(token_ids(text)), tools_seed(tools))


def tools_seed(tools: Sequence[ToolSpec]) -> int:
    """A stable 64-bit hash of the offered tools (0 for none)."""
    if not tools:
        return 0
    text = json.dumps([[t.name, t.schema] for t in tools], sort_keys=True, default=str)
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big")


def reusable(tokens: int, block: int = 1) -> int:
    """The most of a ``tokens``-long prompt a server can serve from its cache: all but
    the last token, rounded down to whole blocks."""
    return max(tokens - 1, 0) // block * block


def block_hashes(prompt: Prompt, block: int) -> list[int]:
    """Chained hashes of the prompt's full blocks: each block's hash covers every token before it."""
    out: list[int] = []
    parent = prompt.seed
    ids = prompt.ids
    for start in range(0, len(ids) - block + 1, block):
        parent = hash((parent, ids[start:start + block]))  # ints and tuples hash the same in every process
        out.append(parent)
    return out


@dataclass(frozen=True, slots=True)
class Prefill:
    """One admitted request's prompt: how much of it the cache served, and what the rest costs."""

    #: Prompt tokens (as reported: the rendered messages, tools not counted).
    tokens: int
    #: Of them served from the server's cache (0 without a cache model).
    cached: int = 0
    #: Seconds of prefill for the rest, before the first token (on top of ``ttft``).
    seconds: float = 0.0
    #: What the cache needs to record the prompt once prefilled (``None``: nothing to record).
    key: object = None

    @property
    def uncached(self) -> int:
        return self.tokens - self.cached


class PromptCache(Protocol):
    """One server's prompt cache (see the module docstring)."""

    def lookup(self, prompt: Prompt) -> tuple[int, object]:
        """Cached tokens of ``prompt`` (touching what it hit), and a key for :meth:`insert`."""
        ...

    def insert(self, key: object) -> None:
        """Record the prompt of :meth:`lookup`'s ``key`` as prefilled (evicting as needed)."""
        ...

    @property
    def blocks(self) -> int:
        """Full blocks held now."""
        ...

    def clear(self) -> None:
        """Forget everything (a restarted server)."""
        ...


class BlockCache:
    """vLLM-style automatic prefix cache: an LRU of chained block hashes."""

    def __init__(self, capacity_tokens: int, block_tokens: int = 16) -> None:
        if block_tokens < 1 or capacity_tokens < 0:
            raise ValueError("block_tokens must be at least 1 and capacity_tokens at least 0")
        self.block = block_tokens
        self.capacity = capacity_tokens // block_tokens  # in blocks
        self._lru: OrderedDict[int, None] = OrderedDict()  # least recently used first

    def __repr__(self) -> str:
        return f"BlockCache(blocks={len(self._lru)}/{self.capacity}, block_tokens={self.block})"

    @property
    def blocks(self) -> int:
        return len(self._lru)

    def __contains__(self, block_hash: int) -> bool:
        return block_hash in self._lru

    def lookup(self, prompt: Prompt) -> tuple[int, object]:
        hashes = block_hashes(prompt, self.block)
        hit = 0
        for h in hashes:
            if h not in self._lru:
                break
            hit += 1
        self._refresh(hashes[:hit])
        return min(hit * self.block, reusable(len(prompt.ids), self.block)), hashes

    def insert(self, key: object) -> None:
        assert isinstance(key, list)
        self._refresh(key)
        while len(self._lru) > self.capacity:
            self._lru.popitem(last=False)

    def _refresh(self, hashes: list[int]) -> None:
        """Make ``hashes`` the most recently used, the first block last (evicted last)."""
        lru = self._lru
        for h in reversed(hashes):
            lru[h] = None
            lru.move_to_end(h)

    def clear(self) -> None:
        self._lru.clear()


class LastPrompt:
    """llama-cpp-python's cache: the previous prompt only, matched token by token."""

    def __init__(self, block_tokens: int = 16) -> None:
        self.block = block_tokens  # only to report :attr:`blocks`
        self.last: Prompt | None = None

    def __repr__(self) -> str:
        return f"LastPrompt(tokens={len(self.last.ids) if self.last else 0})"

    @property
    def blocks(self) -> int:
        return len(self.last.ids) // self.block if self.last else 0

    def lookup(self, prompt: Prompt) -> tuple[int, object]:
        last, common = self.last, 0
        if last is not None and last.seed == prompt.seed:
            for a, b in zip(last.ids, prompt.ids):
                if a != b:
                    break
                common += 1
        return min(common, reusable(len(prompt.ids))), prompt

    def insert(self, key: object) -> None:
        assert isinstance(key, Prompt)
        self.last = key

    def clear(self) -> None:
        self.last = None


#: Kinds whose server keeps only its last prompt (llama-cpp-python's longest-prefix match
#: with the previous prompt); the other local kinds get a :class:`BlockCache`.
LAST_PROMPT_KINDS = frozenset({"llama_cpp_python"})
#: Kinds that model no prompt cache: hosted APIs, whose caching has its own rules.
UNCACHED_KINDS = frozenset({"openai", "anthropic"})


def prompt_cache(kind: str, capacity_tokens: int | None, block_tokens: int) -> PromptCache | None:
    """The cache a server of ``kind`` keeps with ``capacity_tokens`` (``None``: no cache model)."""
    if capacity_tokens is None or kind in UNCACHED_KINDS:
        return None
    if kind in LAST_PROMPT_KINDS:
        return LastPrompt(block_tokens)
    return BlockCache(capacity_tokens, block_tokens)
