"""Small parsers for the policy file's rule syntax: model sizes, size ranges, conditions.

They run at configuration load, so a typo is reported with its file and line
instead of surfacing on some later request. ``compare`` (a condition's operator)
and ``size_from_name`` are what the engine and the fallback chains use per request.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([bBmM])?\s*$")


def parse_size(text: Any) -> float:
    """A parameter count literal in billions: ``"13B"`` -> 13.0, ``"500M"`` -> 0.5, ``7`` -> 7.0."""
    if isinstance(text, bool):
        raise ValueError(f"not a model size: {text!r}")
    if isinstance(text, (int, float)):
        return float(text)
    m = _SIZE.match(str(text))
    if not m:
        raise ValueError(f"not a model size (expected e.g. \"7B\", \"13B\", \"500M\"): {text!r}")
    value = float(m.group(1))
    return value / 1000 if (m.group(2) or "b").lower() == "m" else value


@dataclass(frozen=True, slots=True)
class SizeRange:
    """A closed/open interval of model sizes in billions; ``None`` bounds are unbounded."""

    low: float | None = None
    low_inclusive: bool = True
    high: float | None = None
    high_inclusive: bool = True

    def contains(self, size: float) -> bool:
        if self.low is not None and (size < self.low or (size == self.low and not self.low_inclusive)):
            return False
        if self.high is not None and (size > self.high or (size == self.high and not self.high_inclusive)):
            return False
        return True


_RANGE_OP = re.compile(r"^\s*(<=|>=|<|>)\s*(.+)$")
_RANGE_SPAN = re.compile(r"^\s*([\d.]+\s*[bBmM]?)\s*-\s*([\d.]+\s*[bBmM]?)\s*$")


def parse_size_range(text: Any) -> SizeRange:
    """``"< 8B"``, ``"<= 8B"``, ``"8B - 13B"`` (both ends inclusive), ``"> 13B"``, ``">= 13B"``."""
    s = str(text)
    m = _RANGE_OP.match(s)
    if m:
        op, value = m.group(1), parse_size(m.group(2))
        if op.startswith("<"):
            return SizeRange(high=value, high_inclusive=op == "<=")
        return SizeRange(low=value, low_inclusive=op == ">=")
    m = _RANGE_SPAN.match(s)
    if m:
        low, high = parse_size(m.group(1)), parse_size(m.group(2))
        if low > high:
            raise ValueError(f"empty size range: {s!r}")
        return SizeRange(low=low, high=high)
    raise ValueError(f"not a size range (expected \"< 8B\", \"8B - 13B\" or \"> 13B\"): {s!r}")


# Subjects a condition may test, and how their literal is parsed.
_SUBJECTS = {"model_size": "size", "batch_size": "number", "stream": "bool", "context_length": "number"}
_COND = re.compile(r"^\s*([A-Za-z_][\w.\-]*)\s*(==|!=|>=|<=|>|<)\s*(.+?)\s*$")
_UNAVAILABLE = re.compile(r"^\s*([A-Za-z_][\w\-]*)_unavailable\s*$")


@dataclass(frozen=True, slots=True)
class Condition:
    """A parsed rule condition: ``always``, ``<provider>_unavailable`` or ``subject op literal``."""

    subject: str  # "always", "unavailable", "model_size", "batch_size", "stream", "header.<name>", ...
    op: str = ""
    value: Any = None

    def __str__(self) -> str:
        if self.subject == "always":
            return "always"
        if self.subject == "unavailable":
            return f"{self.value}_unavailable"
        if not self.op:  # a bare word (spill-over's "saturated")
            return self.subject
        value = str(self.value).lower() if isinstance(self.value, bool) else \
            f'"{self.value}"' if isinstance(self.value, str) else f'"{self.value:g}B"' if self.subject == "model_size" else f"{self.value:g}"
        return f"{self.subject} {self.op} {value}"


ALWAYS = Condition("always")


def compare(actual: float | bool, op: str, value: float | bool) -> bool:
    """``actual op value`` for a condition's operator (request metadata rules, fallback chain steps)."""
    return {
        "==": actual == value, "!=": actual != value, ">": actual > value,
        ">=": actual >= value, "<": actual < value, "<=": actual <= value,
    }[op]


def parse_condition(text: Any) -> Condition:
    if text is None or (isinstance(text, str) and text.strip() == "always"):
        return ALWAYS
    s = str(text)
    m = _UNAVAILABLE.match(s)
    if m:
        return Condition("unavailable", value=m.group(1))
    m = _COND.match(s)
    if not m:
        raise ValueError(f"cannot parse condition {s!r} (expected e.g. 'always', 'ollama_unavailable', 'model_size >= \"13B\"')")
    subject, op, raw = m.group(1), m.group(2), m.group(3)
    quoted = len(raw) >= 2 and raw[0] == raw[-1] and raw[0] in "'\""
    literal = raw[1:-1] if quoted else raw
    if not quoted and (any(c.isspace() for c in raw) or any(c in raw for c in "'\"")):
        raise ValueError(f"cannot parse condition {s!r}: quote the value, e.g. header.x-priority == \"high\"")
    if subject.startswith("header."):
        if op not in ("==", "!="):
            raise ValueError(f"header conditions compare with == or !=, not {op}")
        return Condition(subject.lower(), op, literal)
    kind = _SUBJECTS.get(subject)
    if kind is None:
        raise ValueError(f"unknown condition subject {subject!r} (known: {', '.join(sorted(_SUBJECTS))}, header.<name>)")
    if kind == "size":
        return Condition(subject, op, parse_size(literal))
    if kind == "bool":
        if literal.lower() not in ("true", "false") or op not in ("==", "!="):
            raise ValueError(f"{subject} compares with == true/false")
        return Condition(subject, op, literal.lower() == "true")
    try:
        return Condition(subject, op, float(literal))
    except ValueError:
        raise ValueError(f"{subject} needs a number, not {raw!r}") from None


# A parameter count inside a model name: "llama-7b", "qwen:13b", "Llama-2-13b-chat-hf",
# "mixtral-8x7b" (8 experts x 7B = 56), "qwen2.5:1.5b", "70B", "smollm:135m". The
# number must start a token and the unit must end one, so "qwen2.5" or "4bit" do not count.
_NAME_SIZE = re.compile(r"(?<![a-z0-9.])(\d+(?:\.\d+)?)(?:x(\d+(?:\.\d+)?))?([bm])(?![a-z0-9])")


def size_from_name(name: str) -> float | None:
    """Billions of parameters named in ``name`` (the largest, if several), else None."""
    best: float | None = None
    for m in _NAME_SIZE.finditer(name.lower()):
        value = float(m.group(1)) * (float(m.group(2)) if m.group(2) else 1.0)
        if m.group(3) == "m":
            value /= 1000
        best = value if best is None else max(best, value)
    return best
