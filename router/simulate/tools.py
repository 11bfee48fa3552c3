"""The simulated model's tool use: when it calls a tool, which one, and with what.

A chat that offers ``tools`` and does not end with a tool's result makes the
simulated model call a tool instead of writing text: the one ``tool_choice``
names, else the first. Its arguments are built from the tool's JSON schema
(every required property, deterministic values), so a test can predict them.
A chat that ends with a tool's result gets a text answer that says so.

Each dialect hands this module the tools as ``(name, parameters schema)`` and
the choice already reduced to :data:`AUTO`, :data:`NONE` or a tool name, as
the real server's own conversion does. Nothing here does I/O.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from .core import WORDS, Generation, _rng, content_text, count_tokens, generate

#: ``tool_choice`` reduced: the model may (and here does) call the first tool.
AUTO = "\x00auto"
#: ``tool_choice`` reduced: the model must not call a tool.
NONE = "\x00none"
#: Characters of argument JSON per streamed fragment (a simulated token each).
FRAGMENT = 8
#: Words the answer after a tool result starts with.
AFTER_RESULT = ("I", "got", "the", "tool", "result:")


@dataclass(frozen=True)
class ToolSpec:
    """One offered tool: its name and its parameters' JSON schema."""

    name: str
    schema: dict[str, Any]


@dataclass(frozen=True)
class ToolCall:
    """The simulated model's call of one tool."""

    name: str
    arguments: dict[str, Any]

    def python_json(self) -> str:
        """``json.dumps`` spacing (``", "``, ``": "``): what a model writes and vLLM relays."""
        return json.dumps(self.arguments)

    def compact_json(self) -> str:
        """Compact spacing, as nlohmann's ``dump()`` and Go's ``json.Marshal`` write it."""
        return json.dumps(self.arguments, separators=(",", ":"))


def fragments(text: str, size: int = FRAGMENT) -> list[str]:
    """``text`` cut into pieces of ``size`` characters (at least one piece) — the
    argument deltas a streaming server sends, one simulated token each."""
    return [text[i:i + size] for i in range(0, len(text), size)] or [""]


def value_for(schema: Any, seed: str) -> Any:
    """A deterministic value that fits a JSON schema (``seed`` varies it by path)."""
    if not isinstance(schema, dict):
        return _rng(seed).choice(WORDS)
    if isinstance(schema.get("enum"), list) and schema["enum"]:
        return schema["enum"][0]
    if "const" in schema:
        return schema["const"]
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    if kind == "integer":
        return _rng(seed).randint(1, 100)
    if kind == "number":
        return _rng(seed).randint(1, 100) + 0.5
    if kind == "boolean":
        return True
    if kind == "null":
        return None
    if kind == "array":
        return [value_for(schema.get("items"), seed + "[0]")]
    if kind == "object" or "properties" in schema:
        return arguments_for(schema, seed)
    return _rng(seed).choice(WORDS)


def arguments_for(schema: Any, seed: str) -> dict[str, Any]:
    """Arguments for a tool: each *required* property of its schema, in schema order."""
    if not isinstance(schema, dict):
        return {}
    props = schema.get("properties")
    props = props if isinstance(props, dict) else {}
    required = schema.get("required")
    names = [n for n in props if isinstance(required, list) and n in required]
    return {n: value_for(props[n], f"{seed}.{n}") for n in names}


def pick(tools: Sequence[ToolSpec], choice: str) -> ToolSpec | None:
    """The tool the model calls: ``None`` for :data:`NONE` or no tools; the named
    one (falling back to the first when no tool has that name); else the first."""
    if not tools or choice == NONE:
        return None
    if choice != AUTO:
        return next((t for t in tools if t.name == choice), tools[0])
    return tools[0]


def plan_call(model: str, tools: Sequence[ToolSpec], choice: str, after_result: bool) -> ToolCall | None:
    """The call the model makes, or ``None`` for a text answer (no tools, choice
    ``none``, or the chat ends with a tool's result)."""
    if after_result:
        return None
    tool = pick(tools, choice)
    if tool is None:
        return None
    return ToolCall(tool.name, arguments_for(tool.schema, f"{model}\x00{tool.name}"))


def lead_words(after_result: bool, result_text: str) -> list[str]:
    """The first words of a text answer: after a tool result, a sentence that it
    got it, quoting the result's first words; otherwise none."""
    if not after_result:
        return []
    return [*AFTER_RESULT, *(result_text.split()[:6] or ["(empty)"])]


# ---------------------------------------------------------------- OpenAI-shaped requests


def openai_tools(tools: Any) -> list[ToolSpec]:
    """Chat Completions ``tools`` (``{"type": "function", "function": {...}}``)."""
    out = []
    for t in tools if isinstance(tools, list) else []:
        fn = t.get("function") if isinstance(t, dict) else None
        if isinstance(fn, dict) and isinstance(fn.get("name"), str):
            params = fn.get("parameters")
            out.append(ToolSpec(fn["name"], params if isinstance(params, dict) else {}))
    return out


def openai_choice(choice: Any) -> str:
    """Chat Completions ``tool_choice``: ``"none"``, ``"auto"``/``"required"``/absent, or
    ``{"type": "function", "function": {"name": ...}}``."""
    if choice == "none":
        return NONE
    if isinstance(choice, dict):
        fn = choice.get("function")
        if isinstance(fn, dict) and isinstance(fn.get("name"), str):
            return fn["name"]
    return AUTO


def last_is_tool_result(messages: Any) -> bool:
    """Whether an OpenAI/Ollama ``messages`` list ends with a tool's result (role ``tool``)."""
    return isinstance(messages, list) and bool(messages) and isinstance(messages[-1], dict) \
        and messages[-1].get("role") == "tool"


def last_text(messages: Iterable[Any]) -> str:
    """Text content of the last message (the tool result an answer quotes)."""
    items = list(messages)
    return content_text(items[-1].get("content")) if items and isinstance(items[-1], dict) else ""


def chat_generation(
    model: str,
    prompt: str,
    *,
    tools: Sequence[ToolSpec],
    choice: str,
    after_result: bool,
    result_text: str,
    spell: Callable[[ToolCall], str],
    seed: Any = None,
    max_tokens: int | None = None,
    stop: Any = None,
) -> Generation:
    """What the model generates for a chat: a tool call (its arguments spelled by
    ``spell``, the server's JSON writer, and cut into fragments), or text."""
    call = plan_call(model, tools, choice, after_result)
    if call is not None:
        return Generation([], "tool_calls", count_tokens(prompt), call=call, call_pieces=fragments(spell(call)))
    return generate(model, prompt, seed=seed, max_tokens=max_tokens, stop=stop,
                    lead=lead_words(after_result, result_text))
