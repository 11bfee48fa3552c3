"""JSON as each real server's serialiser writes it, byte for byte.

* Go's ``encoding/json`` (Ollama): compact; a ``map`` has its keys sorted, a
  struct keeps field order; ``float64`` values print without a trailing ``.0``;
  ``<``, ``>``, ``&``, U+2028 and U+2029 are escaped as ``\\u003c`` etc.
  ``json.NewEncoder(w).Encode`` adds a newline; gin's ``c.JSON`` does not.
* pydantic's ``model_dump_json`` and Starlette's ``JSONResponse`` (vLLM),
  nlohmann's ``dump()`` (llama-server): compact, UTF-8 as is — what orjson writes.
"""

from __future__ import annotations

from typing import Any

import orjson

_GO_ESCAPES = (
    (b"<", b"\\u003c"), (b">", b"\\u003e"), (b"&", b"\\u0026"),
    ("\u2028".encode(), b"\\u2028"), ("\u2029".encode(), b"\\u2029"),
)


def _go_numbers(obj: Any) -> Any:
    """Integral floats as ints, as Go's ``strconv.FormatFloat(f, 'f', -1, 64)`` prints them;
    an integer beyond 64 bits as the ``float64`` Go decoded it into."""
    if isinstance(obj, float) and obj.is_integer() and abs(obj) < 1e21:
        return int(obj)
    if isinstance(obj, int) and not isinstance(obj, bool) and not -(1 << 63) <= obj < (1 << 64):
        return float(obj)
    if isinstance(obj, dict):
        return {k: _go_numbers(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_go_numbers(v) for v in obj]
    return obj


def go_json(obj: Any, *, sort_keys: bool = False, newline: bool = False) -> bytes:
    """``obj`` as Go's ``json.Marshal`` writes it. ``sort_keys`` for a Go ``map``
    (every level); ``newline`` for ``json.NewEncoder(w).Encode``."""
    data = orjson.dumps(_go_numbers(obj), option=orjson.OPT_SORT_KEYS if sort_keys else 0)
    for raw, escaped in _GO_ESCAPES:
        if raw in data:  # these bytes occur only inside strings in JSON text
            data = data.replace(raw, escaped)
    return data + b"\n" if newline else data


def compact_json(obj: Any) -> bytes:
    """pydantic / Starlette / nlohmann compact JSON (key order as given)."""
    return orjson.dumps(obj)


def named_sse(event: str, data: bytes) -> bytes:
    """One server-sent event with an ``event:`` line, as every server here frames
    Anthropic and Responses streams: ``event: X\\ndata: {...}\\n\\n``."""
    return b"event: " + event.encode() + b"\ndata: " + data + b"\n\n"
