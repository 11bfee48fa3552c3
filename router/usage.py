"""An answer's token usage as the backend counted it: read from what the backend sent,
never estimated.

Three sources, one result type:

* ``from_body(raw)``: a whole (non-streamed) upstream body, in the dialect the
  backend speaks: OpenAI's ``usage`` (chat, completions, embeddings, rerank),
  Anthropic's and OpenAI Responses' ``usage`` (``input_tokens``/``output_tokens``),
  or Ollama's top-level ``prompt_eval_count``/``eval_count``. Found by byte scans from
  the end, without decoding the body (every server puts its counts last).
* ``from_sse_tail(tail)``: the last bytes of an OpenAI-compatible stream relayed
  unchanged: the ``usage`` object of its final data event before ``[DONE]`` (there when
  the client asked ``stream_options.include_usage``, or the server always sends it).
  One decode of one event, once, at the stream's end.
* ``from_counts(counts)``: a stream translator's ``usage`` (``prompt_tokens``,
  ``total_tokens``, maybe ``completion_tokens``), itself taken from the upstream's counts.

``None`` means the answer reported no usage at all; a ``Usage`` field is ``None`` where
that one count is missing. A count that is not a non-negative integer up to
``MAX_COUNT`` is treated as missing (a backend's garbage must not become a bill).
"""

from __future__ import annotations

import re
from typing import Any, Mapping, NamedTuple

import orjson

MAX_COUNT = 10**12  # tokens; a larger count is not believed
_COUNT = re.compile(rb"\s*:\s*(\d{1,13})(?![\d.eE])")  # an integer value right after a key


class Usage(NamedTuple):
    """Token counts of one answer; ``None`` where the backend did not say."""

    prompt: int | None  # input tokens, cached ones included
    completion: int | None  # output tokens, reasoning included
    total: int | None  # prompt + completion (as the backend said, where it gave only a total: rerank)
    cached: int | None = None  # of the prompt, read from the provider's prompt cache, where said


def _count(value: Any) -> int | None:
    return value if type(value) is int and 0 <= value <= MAX_COUNT else None


def _sum(*counts: int | None) -> int | None:
    return None if any(c is None for c in counts) else sum(counts)  # type: ignore[arg-type]


def _made(prompt: int | None, completion: int | None, total: int | None, cached: int | None) -> Usage | None:
    """A ``Usage`` from the counts found (the total completed from the parts and the
    completion from the total, where one is missing); ``None`` if none was found."""
    if prompt is None and completion is None and total is None:
        return None
    if completion is None and prompt is not None and total is not None and total >= prompt:
        completion = total - prompt
    if total is None:
        total = _sum(prompt, completion)
    return Usage(prompt, completion, total, cached)


def _after(body: bytes, key: bytes, start: int) -> int | None:
    """The integer value of the last ``key`` (a quoted JSON key) in ``body[start:]``.
    A key written inside a JSON string cannot match: its quotes are escaped there."""
    at = body.rfind(key, start)
    m = _COUNT.match(body, at + len(key)) if at >= 0 else None
    return _count(int(m.group(1))) if m else None


def from_body(raw: bytes) -> Usage | None:
    """The usage in a whole upstream body (see the module's docstring); ``None`` if it has none.

    OpenAI, Anthropic and Responses counts are read only after a ``"usage"`` key, so an
    answer that merely reports a count (count_tokens' ``{"input_tokens": N}``) is no usage.
    Anthropic's prompt is ``input_tokens`` plus its cache writes and reads (which it
    counts apart); OpenAI's and Responses' ``cached_tokens`` are already in their prompt.
    """
    u = raw.rfind(b'"usage"')
    if u >= 0:
        prompt = _after(raw, b'"prompt_tokens"', u)
        if prompt is not None or raw.find(b'"input_tokens"', u) < 0:  # OpenAI's shape (or a total only: rerank)
            return _made(prompt, _after(raw, b'"completion_tokens"', u), _after(raw, b'"total_tokens"', u),
                         _after(raw, b'"cached_tokens"', u))
        read = _after(raw, b'"cache_read_input_tokens"', u)
        written = _after(raw, b'"cache_creation_input_tokens"', u)
        prompt = _after(raw, b'"input_tokens"', u)
        if prompt is not None:
            prompt += (read or 0) + (written or 0)
        cached = read if read is not None else _after(raw, b'"cached_tokens"', u)
        return _made(prompt, _after(raw, b'"output_tokens"', u), _after(raw, b'"total_tokens"', u), cached)
    # Ollama's own API: the counts are top-level fields of its (last) object
    return _made(_after(raw, b'"prompt_eval_count"', 0), _after(raw, b'"eval_count"', 0), None, None)


def from_openai(usage: Any) -> Usage | None:
    """An OpenAI ``usage`` object (already decoded), or ``None`` if it is not one."""
    if not isinstance(usage, dict):
        return None
    details = usage.get("prompt_tokens_details")
    cached = _count(details.get("cached_tokens")) if isinstance(details, dict) else None
    return _made(_count(usage.get("prompt_tokens")), _count(usage.get("completion_tokens")),
                 _count(usage.get("total_tokens")), cached)


def from_counts(counts: Mapping[str, int] | None) -> Usage | None:
    """A stream translator's ``usage`` (``router.providers.base.StreamTranslator``)."""
    return from_openai(counts) if counts else None


def from_sse_tail(tail: bytes, at_start: bool = True) -> Usage | None:
    """The ``usage`` of the last data event before ``data: [DONE]`` in ``tail``, the end
    of an SSE stream; ``None`` when there is no ``[DONE]`` line, the event before it is
    not a complete JSON object, or that object has no usage. ``at_start``: ``tail``
    begins at the stream's start (else its first line is taken for a fragment, never
    for a whole event). Only whole lines count; "usage" written in a model's text is
    inside an earlier event's JSON string and is never looked at."""
    end = len(tail)
    done = False
    while end > 0:
        start = max(tail.rfind(b"\n", 0, end), tail.rfind(b"\r", 0, end)) + 1
        line = tail[start:end]
        end = start - 1
        if start == 0 and not at_start:
            return None  # where this line starts is not in the tail
        if line[:5] != b"data:":
            continue  # blank lines, comments, other fields
        value = line[5:].strip()
        if not done:
            if value != b"[DONE]":
                return None  # data after the end, or no end: not a stream this reads
            done = True
            continue
        try:
            event = orjson.loads(value)
        except orjson.JSONDecodeError:
            return None
        return from_openai(event.get("usage")) if isinstance(event, dict) else None
    return None
