"""An answer's token usage as the backend counted it: read from what the backend sent,
never estimated.

Three sources, one result type:

* ``from_body(raw)``: a whole (non-streamed) upstream body, in the dialect the
  backend speaks: OpenAI's ``usage`` (chat, completions, embeddings, rerank),
  Anthropic's and OpenAI Responses' ``usage`` (``input_tokens``/``output_tokens``),
  or Ollama's top-level ``prompt_eval_count``/``eval_count``. Found by byte scans (a
  regex search per count, from the body's last ``"usage"`` key on), without decoding
  the body.
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
USAGE_SPAN = 1024  # bytes after a body's "usage" key its counts are looked for in (a usage object is a few hundred)
_COUNT = re.compile(rb"\s*:\s*(\d{1,13})(?![\d.eE])")  # an integer value right after a key


def _key(name: str) -> re.Pattern[bytes]:
    """The JSON key ``name`` and its integer value (a key inside a JSON string cannot match:
    its quotes are escaped there; nor can a longer key that ends with ``name``)."""
    return re.compile(b'"' + name.encode() + rb'"\s*:\s*(\d{1,13})(?![\d.eE])')


_PROMPT, _COMPLETION, _TOTAL, _CACHED = map(_key, ("prompt_tokens", "completion_tokens", "total_tokens", "cached_tokens"))
_INPUT, _OUTPUT, _CACHE_READ, _CACHE_WRITE = map(
    _key, ("input_tokens", "output_tokens", "cache_read_input_tokens", "cache_creation_input_tokens"))
_CACHE_N = _key("cache_n")  # llama-server's timings: prompt tokens reused from the slot's cache


class Usage(NamedTuple):
    """Token counts of one answer; ``None`` where the backend did not say."""

    prompt: int | None  # input tokens, cached ones included
    completion: int | None  # output tokens, reasoning included
    total: int | None  # prompt + completion (as the backend said, where it gave only a total: rerank)
    cached: int | None = None  # of the prompt, read from the provider's prompt cache, where said


def _count(value: Any) -> int | None:
    return value if type(value) is int and 0 <= value <= MAX_COUNT else None


def _made(prompt: int | None, completion: int | None, total: int | None, cached: int | None) -> Usage | None:
    """A ``Usage`` from the counts found (the total completed from the parts and the
    completion from the total, where one is missing); ``None`` if none was found."""
    if completion is None:
        if prompt is None and total is None:
            return None
        if prompt is not None and total is not None and total >= prompt:
            completion = total - prompt
    if total is None and prompt is not None and completion is not None:
        total = prompt + completion
    return _new(Usage, (prompt, completion, total, cached))  # Usage(...) without its Python-level __new__


_new = tuple.__new__


def _after(body: bytes, key: bytes, start: int) -> int | None:
    """The integer value of the last ``key`` (a quoted JSON key) in ``body[start:]``.
    A key written inside a JSON string cannot match: its quotes are escaped there."""
    at = body.rfind(key, start)
    m = _COUNT.match(body, at + len(key)) if at >= 0 else None
    return _count(int(m.group(1))) if m else None


def _value(m: re.Match[bytes] | None) -> int | None:
    if m is None:
        return None
    n = int(m.group(1))
    return n if n <= MAX_COUNT else None


def from_body(raw: bytes) -> Usage | None:
    """The usage in a whole upstream body (see the module's docstring); ``None`` if it has none.

    OpenAI, Anthropic and Responses counts are read in the ``USAGE_SPAN`` bytes after
    the body's last ``"usage"`` key, so an answer that merely reports a count
    (count_tokens' ``{"input_tokens": N}``) is no usage. Anthropic's prompt is
    ``input_tokens`` plus its cache writes and reads (which it counts apart); OpenAI's
    and Responses' ``cached_tokens`` are already in their prompt.
    """
    found = _from_body(raw)
    if found is not None and found.cached is None:
        t = raw.rfind(b'"timings"')  # llama-server: the cached count in its timings (older builds: only there)
        if t >= 0:
            cache_n = _value(_CACHE_N.search(raw, t, t + USAGE_SPAN))
            if cache_n is not None:
                return found._replace(cached=cache_n)
    return found


def _from_body(raw: bytes) -> Usage | None:
    u = raw.rfind(b'"usage"')
    if u < 0:  # Ollama's own API: the counts are top-level fields at the end of its object
        return _made(_after(raw, b'"prompt_eval_count"', 0), _after(raw, b'"eval_count"', 0), None,
                     _after(raw, b'"prompt_eval_cached_count"', 0))
    end = u + USAGE_SPAN
    prompt, completion = _PROMPT.search(raw, u, end), _COMPLETION.search(raw, u, end)
    if prompt is not None and completion is not None:  # the usual case, OpenAI's, with the fewest steps
        p, c = int(prompt.group(1)), int(completion.group(1))
        if p <= MAX_COUNT and c <= MAX_COUNT:
            return _new(Usage, (p, c, p + c, _value(_CACHED.search(raw, u, end))))
    given = _INPUT.search(raw, u, end) if prompt is None else None
    if given is not None:  # Anthropic's, Responses'
        read, written = _value(_CACHE_READ.search(raw, u, end)), _value(_CACHE_WRITE.search(raw, u, end))
        inputs = _value(given)
        inputs = None if inputs is None else inputs + (read or 0) + (written or 0)
        cached = read if read is not None else _value(_CACHED.search(raw, u, end))
        return _made(inputs, _value(_OUTPUT.search(raw, u, end)), _value(_TOTAL.search(raw, u, end)), cached)
    return _made(_value(prompt), _value(completion), _value(_TOTAL.search(raw, u, end)), _value(_CACHED.search(raw, u, end)))


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
    of an SSE stream; ``None`` when the last ``[DONE]`` is not a data line of its own
    (only blank lines may follow it), the data line before it is not a complete JSON
    object, or that object has no usage. ``at_start``: ``tail`` begins at the stream's
    start (else its first line may be a fragment of a longer one, and is never taken for
    a whole event). Only lines that start with ``data:`` count: "usage" or "data:"
    written in a model's text is inside an event's JSON string, where a line break is
    escaped. Comments and blank lines between the event and ``[DONE]`` are skipped. Only
    that one event is decoded, and only when it has a ``"usage"`` key."""
    if b'"usage"' not in tail and b'"timings"' not in tail:
        return None  # the usual stream without usage: nothing more to look at
    done = tail.rfind(b"[DONE]")
    if done < 0:
        return None
    start = max(tail.rfind(b"\n", 0, done), tail.rfind(b"\r", 0, done)) + 1
    if tail[start:done].rstrip() != b"data:" or tail[done + 6:].strip() or (start == 0 and not at_start):
        return None  # not its own data line, something after it, or its line's start is not in the tail
    at = start
    while True:
        at = tail.rfind(b"data:", 0, at)
        if at < 0 or (at == 0 and not at_start):
            return None
        if at == 0 or tail[at - 1] in b"\r\n":
            break  # (else "data:" inside an event's text: look further back)
    end = tail.find(b"\n", at, start)  # the line ends before the [DONE] line starts
    cr = tail.find(b"\r", at, start if end < 0 else end)
    line = tail[at + 5:cr if cr >= 0 else end]
    if b'"usage"' not in line and b'"timings"' not in line:
        return None
    try:
        event = orjson.loads(line)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(event, dict):
        return None
    usage = from_openai(event.get("usage"))
    timings = event.get("timings")  # llama-server's, on the last event (with or without usage)
    if isinstance(timings, dict) and (usage is None or usage.cached is None):
        cache_n = _count(timings.get("cache_n"))
        if cache_n is not None:
            if usage is None:
                prompt_n = _count(timings.get("prompt_n"))
                predicted = _count(timings.get("predicted_n"))
                usage = _made(None if prompt_n is None else prompt_n + cache_n, predicted, None, cache_n)
            else:
                usage = usage._replace(cached=cache_n)
    return usage
