"""Shared pieces of the simulated backends: fault hooks, counters, deterministic text.

Nothing here does I/O; :mod:`router.simulate.backend` wires it to aiohttp.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import math
import random
import re
import struct
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .tools import ToolCall

# A fixed vocabulary: one word is one simulated token.
WORDS: tuple[str, ...] = (
    "the", "model", "router", "quick", "answer", "token", "stream", "latency",
    "cache", "queue", "river", "signal", "garden", "vector", "window", "matrix",
    "light", "simple", "careful", "bright", "engine", "request", "reply", "value",
    "green", "ocean", "paper", "silver", "number", "system", "future", "kernel",
    "memory", "thread", "socket", "packet", "orbit", "planet", "forest", "stone",
    "cloud", "field", "north", "harbor", "lantern", "meadow", "copper", "violet",
    "is", "and", "of", "to", "in", "with", "for", "on", "a", "it", "we", "as",
    "calm", "swift", "open", "clear",
)

#: Bounds of the "natural" answer length, in tokens (= words).
NATURAL_MIN, NATURAL_MAX = 8, 24


class ClientGone(ConnectionResetError):
    """The client closed the connection while the simulator was still answering."""


@dataclass
class Faults:
    """Mutable fault-injection switches of one simulated backend.

    Set the attributes directly from a test, or over HTTP with
    ``POST /__sim/faults`` (JSON object of the same names; ``{"clear": true}``
    resets). Faults apply to every path except ``/__sim/*``, or only to paths
    starting with one of ``paths`` when that is set.

    Per request, the middleware applies them in this order: ``first_byte_delay``,
    ``hang``, ``status`` (with ``retry_after``), ``garbage``; the stream faults
    ``drop_after_chunks`` and ``hang_after_chunks`` act inside streamed answers.
    A ``*_count`` limits its fault to the next K requests it applies to (``None``
    = every request until cleared). Connection refusal is not a fault field but
    :meth:`SimulatedBackend.pause_listening` / ``resume_listening``.
    """

    #: Answer with this HTTP status (in the server's own error-body shape).
    status: int | None = None
    #: How many requests ``status`` applies to; ``None`` means every request.
    status_count: int | None = None
    #: Seconds sent as a ``Retry-After`` header with an injected ``status`` (any
    #: status; whole seconds as real servers send, rounded up: 1.2 → "2").
    retry_after: float | None = None
    #: Accept requests and never answer while this stays true (the request is
    #: released, and answered normally, once ``hang`` is false or cleared).
    hang: bool = False
    #: How many requests ``hang`` catches; ``None`` = every request. Caught
    #: requests stay held while ``hang`` is true, later ones pass.
    hang_count: int | None = None
    #: Abort the connection after this many streamed chunks (no final chunk, no [DONE]).
    drop_after_chunks: int | None = None
    #: How many streamed responses ``drop_after_chunks`` applies to; ``None`` = all.
    drop_count: int | None = None
    #: Stall a streamed response after this many chunks: keep the connection open,
    #: send nothing more while this stays set, then resume where it stopped (the
    #: rest of the stream) once it is cleared. Non-streaming answers are unaffected.
    hang_after_chunks: int | None = None
    #: How many streamed responses ``hang_after_chunks`` applies to; ``None`` = all.
    hang_after_count: int | None = None
    #: Answer 200 with a body that is not the API's: a reverse proxy's HTML error
    #: page (``text/html``) for a non-streaming request; for a streaming one the
    #: stream's content type and a single broken line (SSE ``data: {not json``,
    #: Ollama NDJSON ``{not json``), then the end of the response.
    garbage: bool = False
    #: How many requests ``garbage`` applies to; ``None`` = every request.
    garbage_count: int | None = None
    #: Seconds to wait before the first byte of the response.
    first_byte_delay: float = 0.0
    #: Path prefixes the faults apply to; ``None`` = all non-``/__sim`` paths.
    paths: tuple[str, ...] | None = None

    def clear(self) -> None:
        """Turn every fault off."""
        for f in fields(self):
            setattr(self, f.name, f.default)

    def applies_to(self, path: str) -> bool:
        """Whether faults are in force for a request to ``path``."""
        if path.startswith("/__sim"):
            return False
        return self.paths is None or any(path.startswith(p) for p in self.paths)

    def take_status(self) -> int | None:
        """Consume one injected status, if any is armed."""
        if self.status is None:
            return None
        if self.status_count is None:
            return self.status
        if self.status_count <= 0:
            return None
        self.status_count -= 1
        return self.status

    def take_hang(self) -> bool:
        """Consume one armed ``hang``; whether this request is to be held."""
        if not self.hang:
            return False
        if self.hang_count is None:
            return True
        if self.hang_count <= 0:
            return False
        self.hang_count -= 1
        return True

    def take_garbage(self) -> bool:
        """Consume one armed ``garbage`` answer."""
        if not self.garbage:
            return False
        if self.garbage_count is None:
            return True
        if self.garbage_count <= 0:
            return False
        self.garbage_count -= 1
        return True

    def take_hang_after(self) -> int | None:
        """Consume one armed stream stall; returns the chunk count to stall after."""
        if self.hang_after_chunks is None:
            return None
        if self.hang_after_count is None:
            return self.hang_after_chunks
        if self.hang_after_count <= 0:
            return None
        self.hang_after_count -= 1
        return self.hang_after_chunks

    def retry_after_header(self) -> dict[str, str]:
        """``{"Retry-After": "<whole seconds>"}`` when ``retry_after`` is set, else ``{}``."""
        if self.retry_after is None:
            return {}
        return {"Retry-After": str(max(0, math.ceil(self.retry_after)))}

    def take_drop(self) -> int | None:
        """Consume one armed connection drop; returns the chunk count to drop after."""
        if self.drop_after_chunks is None:
            return None
        if self.drop_count is None:
            return self.drop_after_chunks
        if self.drop_count <= 0:
            return None
        self.drop_count -= 1
        return self.drop_after_chunks

    def update(self, data: dict[str, Any]) -> None:
        """Apply a JSON object (from ``POST /__sim/faults``); raises ``ValueError`` on unknown keys."""
        data = dict(data)
        if data.pop("clear", False):
            self.clear()
        names = {f.name for f in fields(self)}
        unknown = set(data) - names
        if unknown:
            raise ValueError(f"unknown fault field(s): {sorted(unknown)}")
        for key, value in data.items():
            if key == "paths" and value is not None:
                value = tuple(value)
            setattr(self, key, value)

    def as_dict(self) -> dict[str, Any]:
        """A JSON-friendly snapshot."""
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        if out["paths"] is not None:
            out["paths"] = list(out["paths"])
        return out


@dataclass
class Stats:
    """Counters of one simulated backend (reset with :meth:`reset`)."""

    #: Requests received, per path (``/__sim/*`` excluded).
    requests: Counter[str] = field(default_factory=Counter)
    #: Requests currently being handled.
    open: int = 0
    #: Requests whose client went away before the answer was complete.
    disconnects: int = 0
    #: Streams the ``drop_after_chunks`` fault cut off.
    drops: int = 0
    #: Requests held by ``hang`` or stalled by ``hang_after_chunks`` (counted when the hold starts).
    hangs: int = 0
    #: Answers replaced by the ``garbage`` fault.
    garbage: int = 0
    #: Open requests cut off by :meth:`SimulatedBackend.pause_listening` (not counted as disconnects).
    cut: int = 0
    #: Prompt tokens of the generation requests the server admitted (chat, completions, the
    #: native doors; not embeddings or rerank), and of them how many it served from its
    #: prompt cache (0 without ``prefix_cache_tokens``). The server's true figures: a hit
    #: rate is ``cached_tokens / prompt_tokens``, summed over servers.
    prompt_tokens: int = 0
    cached_tokens: int = 0
    #: Set when a client disconnect is observed (await it in tests).
    disconnected: asyncio.Event = field(default_factory=asyncio.Event)
    #: The last JSON object received as a request body.
    last_body: dict[str, Any] | None = None
    #: Path and headers of the last request.
    last_path: str | None = None
    last_headers: dict[str, str] = field(default_factory=dict)

    def reset(self) -> None:
        """Zero every counter and re-arm :attr:`disconnected`."""
        self.requests.clear()
        self.disconnects = self.drops = self.hangs = self.garbage = self.cut = 0
        self.prompt_tokens = self.cached_tokens = 0
        self.disconnected = asyncio.Event()
        self.last_body = self.last_path = None
        self.last_headers = {}

    @property
    def total(self) -> int:
        """All requests received."""
        return sum(self.requests.values())

    def as_dict(self) -> dict[str, Any]:
        """A JSON-friendly snapshot."""
        return {
            "requests": dict(self.requests),
            "total": self.total,
            "open": self.open,
            "disconnects": self.disconnects,
            "drops": self.drops,
            "hangs": self.hangs,
            "garbage": self.garbage,
            "cut": self.cut,
            "prompt_tokens": self.prompt_tokens,
            "cached_tokens": self.cached_tokens,
            "last_path": self.last_path,
            "last_body": self.last_body,
        }


@dataclass
class Generation:
    """A finished simulated completion: the streamed pieces and why it stopped."""

    pieces: list[str]
    finish_reason: str  # "stop" | "length" | "tool_calls"
    prompt_tokens: int
    stop_reason: str | None = None  # the stop string that ended it, if any
    #: The tool the model calls instead of writing text (see :mod:`router.simulate.tools`).
    call: ToolCall | None = None
    #: The call's argument JSON in the server's own spelling, cut into streamed fragments.
    call_pieces: list[str] = field(default_factory=list)

    @property
    def text(self) -> str:
        return "".join(self.pieces)

    @property
    def arguments(self) -> str:
        """The call's argument JSON as the server spells it ("" without a call)."""
        return "".join(self.call_pieces)

    @property
    def completion_tokens(self) -> int:
        """Generated tokens: a word each, and a fragment each of a call's arguments."""
        return len(self.pieces) + len(self.call_pieces)


def _rng(*parts: object) -> random.Random:
    digest = hashlib.sha256("\x00".join(map(str, parts)).encode()).digest()
    return random.Random(int.from_bytes(digest[:16], "big"))


def count_tokens(text: str) -> int:
    """Simulated tokenizer: one token per whitespace-separated word (at least one)."""
    return max(1, len(text.split()))


def content_text(content: Any) -> str:
    """Flatten an OpenAI/Ollama message ``content`` (string or list of parts) to text."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = [p.get("text", "") if isinstance(p, dict) else p for p in content]
        return "\n".join(p if isinstance(p, str) else str(p) for p in parts if p)
    return str(content)


def messages_text(messages: Any) -> str:
    """Canonical prompt text of a chat ``messages`` list."""
    if not isinstance(messages, list):
        return ""
    lines = []
    for m in messages:
        if isinstance(m, dict):
            lines.append(f"{m.get('role', '')}: {content_text(m.get('content'))}")
    return "\n".join(lines)


def generate(
    model: str,
    prompt: str,
    *,
    seed: Any = None,
    max_tokens: int | None = None,
    stop: Any = None,
    lead: Sequence[str] = (),
) -> Generation:
    """Deterministic completion of ``prompt``: same (model, prompt, seed) → same answer.

    The answer has a natural length of 8–24 words (finish "stop"), after the
    ``lead`` words if any, cut at ``max_tokens`` (finish "length") or just before
    a ``stop`` string (finish "stop").
    """
    rng = _rng(model, prompt, seed)
    natural = rng.randint(NATURAL_MIN, NATURAL_MAX)
    words = [*lead, *(rng.choice(WORDS) for _ in range(natural))]
    pieces = [w if i == 0 else " " + w for i, w in enumerate(words)]
    finish = "stop"
    if max_tokens is not None and 0 <= max_tokens < len(pieces):
        pieces, finish = pieces[:max_tokens], "length"
    stops = [stop] if isinstance(stop, str) else [s for s in (stop or []) if isinstance(s, str) and s]
    stop_reason = None
    if stops:
        text = ""
        for i, piece in enumerate(pieces):
            text += piece
            hits = [(text.find(s), s) for s in stops if s in text]
            if hits:  # keep only what precedes the stop string (real servers hold partial matches back)
                at, stop_reason = min(hits)
                kept: list[str] = []
                length = 0
                for p in pieces[: i + 1]:
                    if length + len(p) > at:
                        if at > length:
                            kept.append(p[: at - length])
                        break
                    kept.append(p)
                    length += len(p)
                pieces, finish = kept, "stop"
                break
    return Generation(pieces, finish, count_tokens(prompt), stop_reason)


def embed(model: str, text: str, dim: int = 16) -> list[float]:
    """Deterministic unit-length embedding of ``text``."""
    rng = _rng("embed", model, text)
    vec = [rng.gauss(0.0, 1.0) for _ in range(dim)]
    norm = math.sqrt(sum(v * v for v in vec)) or 1.0
    return [round(v / norm, 7) for v in vec]


def token_ids(text: str, *, vocab: int = 32000) -> list[int]:
    """Deterministic fake token ids, one per word (Ollama's ``context``, the prompt cache's keys).

    Prefix-stable: ids of ``a + " " + b`` (or ``a + "\n" + b``) are ids of ``a`` then ids of ``b``.
    """
    return [_word_id(w, vocab) for w in text.split()]


@functools.lru_cache(maxsize=65536)
def _word_id(word: str, vocab: int) -> int:
    return struct.unpack(">I", hashlib.md5(word.encode()).digest()[:4])[0] % vocab


def go_time(dt: datetime | None = None) -> str:
    """Format like Go's ``time.Time`` JSON (RFC 3339 with trimmed fractional seconds)."""
    dt = dt or datetime.now(timezone.utc)
    frac = f".{dt.microsecond:06d}".rstrip("0").rstrip(".")
    offset = dt.utcoffset()
    if offset is None or offset.total_seconds() == 0:
        tz = "Z"
    else:
        minutes = int(offset.total_seconds() // 60)
        sign = "+" if minutes >= 0 else "-"
        tz = f"{sign}{abs(minutes) // 60:02d}:{abs(minutes) % 60:02d}"
    return dt.strftime("%Y-%m-%dT%H:%M:%S") + frac + tz


def as_int(value: Any) -> int | None:
    """``value`` as an int, or ``None`` when absent/invalid."""
    if value is None or isinstance(value, bool):
        return None
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


# ---------------------------------------------------------------- model metadata

_SIZE = re.compile(r"(?<![\w.])(?:(\d+)x)?(\d+(?:\.\d+)?)([bm])(?![a-z0-9])", re.IGNORECASE)

#: Parameter count of a model whose name carries no size (Mistral 7B v0.3's real count, "7.2B").
DEFAULT_PARAMETER_COUNT = 7_248_023_552
#: Trained context length of a model unless ``model_meta`` says otherwise (Llama 3.1's).
DEFAULT_CONTEXT_LENGTH = 131_072


@dataclass(frozen=True)
class ModelMeta:
    """What a server can tell about one model: size and trained context."""

    parameter_count: int
    parameter_size: str  # as Ollama shows it, e.g. "8.0B"
    context_length: int  # trained context (n_ctx_train, ``<family>.context_length``)
    quantization_level: str = "Q4_K_M"

    @property
    def file_size(self) -> int:
        """Bytes of the weights: Q4_K_M is about 4.85 bits (0.6 bytes) per parameter."""
        return int(self.parameter_count * 0.6)


def human_number(n: int) -> str:
    """Ollama's ``format.HumanNumber``: 8030261248 → "8.0B", 494032768 → "494.03M", 8e9 → "8B"."""
    for unit, scale, decimals in (("B", 1e9, 1), ("M", 1e6, 2)):
        if n >= scale:
            value = n / scale
            return f"{value:.0f}{unit}" if value == int(value) else f"{value:.{decimals}f}{unit}"
    return f"{n / 1e3:.0f}K" if n >= 1000 else str(n)


def _parse_size(text: str) -> int | None:
    """Parameters named by a size tag: "8b" → 8e9, "1.5B" → 1.5e9, "135m" → 1.35e8, "8x7b" → 56e9."""
    found = _SIZE.findall(text)
    if not found:
        return None
    experts, number, unit = found[-1]
    return int(float(number) * (1e9 if unit.lower() == "b" else 1e6) * int(experts or 1))


def model_meta(name: str, override: dict[str, Any] | None = None) -> ModelMeta:
    """Metadata of model ``name``, derived from its size tag unless ``override`` gives it.

    A size tag in the name (``llama3.1:8b``, ``qwen2.5:1.5b``, ``Llama-2-13b-chat-hf``,
    ``mixtral:8x7b`` = 8×7 = 56B, not Mixtral's real 46.7B) sets the count, plus 0.4%
    (at most 49M) because real checkpoints are never round: Ollama then shows "8.0B",
    "1.5B", "56.0B" as it does for real models. Without a tag: 7.2B. ``override`` keys:
    ``parameter_size`` ("13B", shown verbatim), ``parameter_count``, ``context_length``,
    ``quantization_level``.
    """
    o = override or {}
    size = o.get("parameter_size")
    count = as_int(o.get("parameter_count"))
    if count is None and size is not None:
        count = _parse_size(str(size))
    if count is None:
        tagged = _parse_size(name.rsplit("/", 1)[-1])
        count = tagged + min(tagged // 250, 49_000_000) if tagged else DEFAULT_PARAMETER_COUNT
    return ModelMeta(
        parameter_count=count,
        parameter_size=str(size) if size is not None else human_number(count),
        context_length=as_int(o.get("context_length")) or DEFAULT_CONTEXT_LENGTH,
        quantization_level=str(o.get("quantization_level") or "Q4_K_M"),
    )
