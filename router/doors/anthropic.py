"""``POST /v1/messages`` and ``/v1/messages/count_tokens``: Anthropic's Messages API.

A deployment whose server speaks it (vLLM, llama-server and Ollama serve ``/v1/messages``)
gets the body as sent, with its model name, and its stream is relayed unchanged
(``watch`` only looks for ``message_stop`` and ``event: error``). Any other
deployment gets an OpenAI chat request (``to_pivot``), and its answer is written
back in Anthropic's shapes (``from_pivot``, ``pivot_stream``). The translation
follows what vLLM's ``entrypoints/anthropic`` and Ollama's ``anthropic`` package do,
with these choices:

* The system prompt is one leading system message: ``system``, then the text of any
  ``role: "system"`` message inside ``messages`` (Claude Code sends one), without
  Claude Code's per-request billing-header block.
* ``tool_result`` blocks become ``tool`` messages placed first, right after the
  assistant's ``tool_calls`` (OpenAI's order); the rest of that user turn follows
  as one user message, with any images the tool results carried.
* Assistant ``thinking`` goes back as ``reasoning_content`` (what llama-server reads)
  and ``reasoning`` (what vLLM reads since it renamed the field), so templates that
  keep interleaved thinking see it; ``redacted_thinking`` is opaque and dropped.
* Answers read ``reasoning_content`` or ``reasoning`` (llama-server and older vLLM
  write the first, current vLLM the second) into ``thinking`` blocks whose
  ``signature`` is empty: there is nothing to sign.
* Usage is Anthropic's: ``input_tokens`` excludes the cached prompt tokens a server
  reports (``prompt_tokens_details.cached_tokens``), which go to
  ``cache_read_input_tokens``, as LiteLLM's adapter does.
* ``count_tokens`` asks the backend to evaluate the prompt with ``max_tokens: 1``
  and reports its ``prompt_tokens``: a real count, not an estimate.
"""

from __future__ import annotations

import re
import uuid
from typing import Any, NoReturn

import orjson

from router.config import Limits
from router.domain import Deployment
from router.doors.base import MAX_LINE, FromOpenAI, OpenAIEvents, sse_event
from router.validate import decode_object
from router.errors import BadRequest, RouterError, UpstreamError
from router.providers.base import Context, StreamTranslator
from router.routing.resolve import MAX_MODEL_NAME

# Anthropic's roles, and what Claude Code sends besides: a "system" message inside
# ``messages`` (2.1.332, recorded in tests/e2e/test_agent_cli.py), and "ctx"/"msg" for
# user turns (since 2.1.154, as vLLM's protocol.py notes and maps to "user").
ROLES = ("user", "assistant", "system")
USER_ALIASES = ("ctx", "msg")
TOOL_CHOICES = ("auto", "any", "tool", "none")
THINKING = ("enabled", "disabled", "adaptive")
# Claude Code's first system block: a per-request hash that would defeat the backend's
# prefix cache (vLLM drops it for the same reason)
BILLING_HEADER = "x-anthropic-billing-header"

# Anthropic's error type for each HTTP status we answer with; another 4xx is an
# invalid_request_error (as Anthropic documents), another 5xx an api_error. A 503 from
# us means no capacity now, which Anthropic (and Ollama's Anthropic API) call
# overloaded_error; a 504 is the SDK's timeout_error.
ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
               404: "not_found_error", 413: "request_too_large", 429: "rate_limit_error", 500: "api_error",
               502: "api_error", 503: "overloaded_error", 504: "timeout_error", 529: "overloaded_error"}
STOP_REASONS = {"stop": "end_turn", "length": "max_tokens", "tool_calls": "tool_use", "function_call": "tool_use",
                "content_filter": "refusal"}

_NUMBER = (int, float)
_NOT_AN_ANSWER = re.compile(rb'\s*\{\s*"(?:type"\s*:\s*"error"|error"\s*:)')
_BARE_ERROR = re.compile(rb'\s*\{\s*"error"\s*:')  # a data line's value: {"error": ...}, no event name
_DATA_TYPE = re.compile(rb'data: ?\{\s*"type"\s*:\s*"([a-z_]+)"')


# ---------------------------------------------------------------------------
# Request checks
# ---------------------------------------------------------------------------


def _fail(message: str, param: str) -> NoReturn:
    raise BadRequest(message, param=param)


_decode = decode_object


def check_request(body: dict[str, Any], limits: Limits, *, count: bool) -> None:
    """Check a Messages (``count=False``) or count_tokens request in place. ``null``
    counts as absent for every optional field; unknown fields are left alone."""
    model = body.get("model")
    if type(model) is not str or not model:
        _fail("model: a model name (a non-empty string) is required.", "model")
    if len(model) > MAX_MODEL_NAME or not model.isprintable():
        _fail(f"model must be at most {MAX_MODEL_NAME} printable characters.", "model")
    max_tokens = body.get("max_tokens")
    if max_tokens is None and not count:
        _fail("max_tokens: Field required (the most tokens to generate, at least 1).", "max_tokens")
    if max_tokens is not None and (type(max_tokens) is not int or max_tokens < 1):
        _fail("max_tokens must be an integer >= 1.", "max_tokens")
    _check_messages(body.get("messages"), limits.max_messages)
    _check_system(body.get("system"))
    _check_tools(body.get("tools"))
    _check_tool_choice(body.get("tool_choice"))
    stops = body.get("stop_sequences")
    if stops is not None and (type(stops) is not list or any(type(s) is not str for s in stops)):
        _fail("stop_sequences must be an array of strings.", "stop_sequences")
    _number(body, "temperature", 0, 1)
    _number(body, "top_p", 0, 1)
    top_k = body.get("top_k")
    if top_k is not None and (type(top_k) is not int or top_k < 0):
        _fail("top_k must be an integer >= 0.", "top_k")
    if count:
        if "stream" in body:
            _fail("stream: Extra inputs are not permitted (count_tokens never streams).", "stream")
    elif body.get("stream") is not None and type(body["stream"]) is not bool:
        _fail("stream must be a boolean.", "stream")
    metadata = body.get("metadata")
    if metadata is not None:
        if type(metadata) is not dict:
            _fail("metadata must be an object.", "metadata")
        if metadata.get("user_id") is not None and type(metadata["user_id"]) is not str:
            _fail("metadata.user_id must be a string.", "metadata.user_id")
    _check_thinking(body.get("thinking"))


def _number(body: dict[str, Any], key: str, least: float, most: float) -> None:
    value = body.get(key)
    if value is not None and (type(value) not in _NUMBER or not least <= value <= most):
        _fail(f"{key} must be a number from {least} to {most}.", key)


def _check_messages(messages: Any, cap: int) -> None:
    if type(messages) is not list or not messages:
        _fail("messages: a non-empty array of messages is required.", "messages")
    if len(messages) > cap:
        _fail(f"messages must have at most {cap} entries.", "messages")
    turns = 0
    for i, msg in enumerate(messages):
        where = f"messages[{i}]"
        if type(msg) is not dict:
            _fail(f"{where} must be an object.", where)
        role = msg.get("role")
        if role in USER_ALIASES:
            role = "user"
        elif role not in ROLES:
            _fail(f"{where}.role must be 'user' or 'assistant' (or 'system', as Claude Code sends).", f"{where}.role")
        turns += role != "system"
        content = msg.get("content")
        if type(content) is str:
            continue
        if role == "system":
            if content is None:  # (vLLM takes it; a translation would have nothing to send)
                _fail(f"{where}.content is required: a string or an array of text blocks.", f"{where}.content")
            _check_system(content, f"{where}.content")
            continue
        if type(content) is not list:
            _fail(f"{where}.content must be a string or an array of content blocks.", f"{where}.content")
        for j, block in enumerate(content):
            _check_block(block, f"{where}.content[{j}]", role)
    if not turns:
        _fail("messages must hold at least one user or assistant message.", "messages")


def _check_block(block: Any, where: str, role: str | None) -> None:
    """One content block; ``role`` None: inside a ``tool_result``. Block types we do
    not translate pass unchecked (a native backend may know them)."""
    if type(block) is not dict or type(block.get("type")) is not str:
        _fail(f"{where} must be an object with a string type.", where)
    kind = block["type"]
    if kind == "text":
        if type(block.get("text")) is not str:
            _fail(f"{where}.text must be a string.", f"{where}.text")
    elif kind == "image":
        _check_source(block.get("source"), f"{where}.source", image=True)
    elif kind == "document":
        _check_source(block.get("source"), f"{where}.source", image=False)
    elif kind == "tool_use":
        if role == "user":
            _fail(f"{where}: tool_use blocks belong in assistant messages.", where)
        for key in ("id", "name"):
            if type(block.get(key)) is not str or not block[key]:
                _fail(f"{where}.{key} must be a non-empty string.", f"{where}.{key}")
        if type(block.get("input")) is not dict:
            _fail(f"{where}.input must be an object.", f"{where}.input")
    elif kind == "tool_result":
        if role != "user":
            _fail(f"{where}: tool_result blocks belong in user messages.", where)
        if type(block.get("tool_use_id")) is not str or not block["tool_use_id"]:
            _fail(f"{where}.tool_use_id must be a non-empty string.", f"{where}.tool_use_id")
        inner = block.get("content")
        if inner is not None and type(inner) is not str:
            if type(inner) is not list:
                _fail(f"{where}.content must be a string or an array of content blocks.", f"{where}.content")
            for k, item in enumerate(inner):
                _check_block(item, f"{where}.content[{k}]", None)
        if block.get("is_error") is not None and type(block["is_error"]) is not bool:
            _fail(f"{where}.is_error must be a boolean.", f"{where}.is_error")
    elif kind == "thinking":
        if type(block.get("thinking")) is not str:
            _fail(f"{where}.thinking must be a string.", f"{where}.thinking")
        if block.get("signature") is not None and type(block["signature"]) is not str:
            _fail(f"{where}.signature must be a string.", f"{where}.signature")
    elif kind == "redacted_thinking":
        if type(block.get("data")) is not str:
            _fail(f"{where}.data must be a string.", f"{where}.data")


def _check_source(source: Any, where: str, image: bool) -> None:
    if type(source) is not dict or type(source.get("type")) is not str:
        _fail(f"{where} must be an object with a string type.", where)
    kind = source["type"]
    if kind == "base64":
        for key in ("media_type", "data"):
            if type(source.get(key)) is not str or not source[key]:
                _fail(f"{where}.{key} must be a non-empty string.", f"{where}.{key}")
    elif kind == "url":
        if type(source.get("url")) is not str or not source["url"]:
            _fail(f"{where}.url must be a non-empty string.", f"{where}.url")
    elif kind == "text" and not image:
        if type(source.get("data")) is not str:
            _fail(f"{where}.data must be a string.", f"{where}.data")
    elif kind == "content" and not image:
        inner = source.get("content")
        if type(inner) is not str:
            if type(inner) is not list:
                _fail(f"{where}.content must be a string or an array of content blocks.", f"{where}.content")
            for k, item in enumerate(inner):
                _check_block(item, f"{where}.content[{k}]", None)


def _check_system(system: Any, where: str = "system") -> None:
    if system is None or type(system) is str:
        return
    if type(system) is not list:
        _fail(f"{where} must be a string or an array of text blocks.", where)
    for i, block in enumerate(system):
        if type(block) is not dict or block.get("type") != "text" or type(block.get("text")) is not str:
            _fail(f"{where}[{i}] must be a text block with a string text.", f"{where}[{i}]")


def _check_tools(tools: Any) -> None:
    if tools is None:
        return
    if type(tools) is not list:
        _fail("tools must be an array of tool definitions.", "tools")
    for i, tool in enumerate(tools):
        where = f"tools[{i}]"
        if type(tool) is not dict:
            _fail(f"{where} must be an object.", where)
        kind = tool.get("type")
        if kind is not None and type(kind) is not str:
            _fail(f"{where}.type must be a string.", f"{where}.type")
        if type(tool.get("name")) is not str or not tool["name"]:
            _fail(f"{where}.name must be a non-empty string.", f"{where}.name")
        if kind not in (None, "custom"):
            continue  # a server tool (web_search_..., bash_..., ...): its own fields
        if type(tool.get("input_schema")) is not dict:
            _fail(f"{where}.input_schema must be an object (a JSON schema).", f"{where}.input_schema")
        if tool.get("description") is not None and type(tool["description"]) is not str:
            _fail(f"{where}.description must be a string.", f"{where}.description")


def _check_tool_choice(choice: Any) -> None:
    if choice is None:
        return
    if type(choice) is not dict or choice.get("type") not in TOOL_CHOICES:
        _fail("tool_choice must be an object whose type is 'auto', 'any', 'tool' or 'none'.", "tool_choice.type")
    if choice["type"] == "tool" and (type(choice.get("name")) is not str or not choice["name"]):
        _fail("tool_choice.name (the tool to use) is required when its type is 'tool'.", "tool_choice.name")
    flag = choice.get("disable_parallel_tool_use")
    if flag is not None and type(flag) is not bool:
        _fail("tool_choice.disable_parallel_tool_use must be a boolean.", "tool_choice.disable_parallel_tool_use")


def _check_thinking(thinking: Any) -> None:
    """Anthropic wants ``budget_tokens`` >= 1024; nothing here reads it, so any
    positive integer is let through to the backend."""
    if thinking is None:
        return
    if type(thinking) is not dict or thinking.get("type") not in THINKING:
        _fail("thinking must be an object whose type is 'enabled', 'disabled' or 'adaptive'.", "thinking.type")
    if thinking["type"] == "enabled":
        budget = thinking.get("budget_tokens")
        if type(budget) is not int or budget < 1:
            _fail("thinking.budget_tokens must be a positive integer.", "thinking.budget_tokens")


# ---------------------------------------------------------------------------
# Anthropic request -> OpenAI chat request
# ---------------------------------------------------------------------------


def chat_request(body: dict[str, Any]) -> dict[str, Any]:
    """The OpenAI chat request asking what the (checked) Messages request asks.
    Raises ``BadRequest`` for what a chat request cannot carry (server tools, PDFs)."""
    messages: list[dict[str, Any]] = []
    # system messages inside ``messages`` join the system prompt, as vLLM does: chat
    # templates take one system message, and only first
    system = "\n".join(filter(None, [_system_text(body.get("system")), *(
        _system_text(m["content"]) for m in body["messages"] if m["role"] == "system")]))
    if system:
        messages.append({"role": "system", "content": system})
    for i, msg in enumerate(body["messages"]):
        if msg["role"] != "system":
            messages.extend(_turn(msg, i))
    out: dict[str, Any] = {"model": body["model"], "messages": messages}
    for key in ("max_tokens", "temperature", "top_p", "top_k"):
        if body.get(key) is not None:
            out[key] = body[key]
    if body.get("stop_sequences"):
        out["stop"] = body["stop_sequences"]
    # Server tools (web search, code execution: Anthropic runs them) and tools deferred to
    # Anthropic's tool search (``defer_loading``, Claude Code's) are left out: a chat model
    # could only call them by name, and nothing would run them.
    tools = [_tool(t, i) for i, t in enumerate(body.get("tools") or ())
             if t.get("type") in (None, "custom") and t.get("defer_loading") is not True]
    if tools:
        out["tools"] = tools
        out.update(_tool_choice(body.get("tool_choice")))
    thinking = body.get("thinking")
    if thinking is not None and thinking["type"] != "adaptive":
        # the chat-template switch vLLM and llama.cpp honour (Qwen3, DeepSeek-R1, ...); the
        # Ollama adapter turns it into Ollama's ``think``
        out["chat_template_kwargs"] = {"enable_thinking": thinking["type"] == "enabled"}
    user = (body.get("metadata") or {}).get("user_id")
    if user is not None:
        out["user"] = user
    if body.get("stream") is True:
        out["stream"] = True
        out["stream_options"] = {"include_usage": True}
    return out


def _system_text(system: Any) -> str:
    if system is None or type(system) is str:
        return system or ""
    return "\n".join(b["text"] for b in system if not b["text"].startswith(BILLING_HEADER))


def _turn(msg: dict[str, Any], i: int) -> list[dict[str, Any]]:
    """One Anthropic message as OpenAI messages: for a user turn the ``tool`` messages
    of its ``tool_result`` blocks first, then the rest of it."""
    role, content = "user" if msg["role"] in USER_ALIASES else msg["role"], msg["content"]
    if type(content) is str:
        return [{"role": role, "content": content}]
    parts: list[dict[str, Any]] = []
    calls: list[dict[str, Any]] = []
    reasoning: list[str] = []
    results: list[dict[str, Any]] = []
    images: list[dict[str, Any]] = []  # carried by tool results: OpenAI's tool messages hold text only
    for j, block in enumerate(content):
        kind, where = block["type"], f"messages[{i}].content[{j}]"
        if kind == "text":
            parts.append({"type": "text", "text": block["text"]})
        elif kind == "image":
            parts.append(_image(block["source"], f"{where}.source"))
        elif kind == "document":
            parts.extend(_document(block["source"], f"{where}.source"))
        elif kind == "tool_use":
            calls.append({"id": block["id"], "type": "function",
                          "function": {"name": block["name"], "arguments": orjson.dumps(block["input"]).decode()}})
        elif kind == "tool_result":
            text, found = _tool_result(block.get("content"), where)
            results.append({"role": "tool", "tool_call_id": block["tool_use_id"], "content": text})
            images.extend(found)
        elif kind == "thinking" and role == "assistant":
            reasoning.append(block["thinking"])
        # redacted_thinking and block types without an OpenAI form (server tool results,
        # search results, ...) are left out, as vLLM and Ollama leave them out
    if role == "assistant":
        out: dict[str, Any] = {"role": "assistant", "content": _content(parts) if parts else (None if calls else "")}
        if reasoning:
            out["reasoning_content"] = out["reasoning"] = "".join(reasoning)
        if calls:
            out["tool_calls"] = calls
        return [out]
    rest = images + parts
    if rest or not results:
        results.append({"role": "user", "content": _content(rest)})
    return results


def _content(parts: list[dict[str, Any]]) -> str | list[dict[str, Any]]:
    """One text part as a plain string (every template takes that), else the parts."""
    if len(parts) == 1 and parts[0]["type"] == "text":
        return parts[0]["text"]
    return parts if parts else ""


def _image(source: dict[str, Any], where: str) -> dict[str, Any]:
    if source["type"] == "base64":
        url = f"data:{source['media_type']};base64,{source['data']}"
    elif source["type"] == "url":
        url = source["url"]
    else:
        _fail(f"{where}: an image source of type {source['type']!r} cannot be sent to this model's backend; "
              "send it as base64 or a URL.", f"{where}.type")
    return {"type": "image_url", "image_url": {"url": url}}


def _document(source: dict[str, Any], where: str) -> list[dict[str, Any]]:
    """A plain-text document as text; PDFs (base64, URL, file) have no chat form here."""
    if source["type"] == "text":
        return [{"type": "text", "text": source["data"]}]
    if source["type"] == "content":
        inner = source["content"]
        if type(inner) is str:
            return [{"type": "text", "text": inner}]
        return [_image(b["source"], f"{where}.content[{k}].source") if b["type"] == "image"
                else {"type": "text", "text": b["text"]}
                for k, b in enumerate(inner) if b["type"] in ("text", "image")]
    _fail(f"{where}: a document of source type {source['type']!r} (a PDF) cannot be sent to this model's "
          "backend; send its text instead.", f"{where}.type")


def _tool_result(content: Any, where: str) -> tuple[str, list[dict[str, Any]]]:
    """A tool result's text (its text blocks joined by newlines) and its images."""
    if content is None or type(content) is str:
        return content or "", []
    texts: list[str] = []
    images: list[dict[str, Any]] = []
    for k, block in enumerate(content):
        if block["type"] == "text":
            texts.append(block["text"])
        elif block["type"] == "image":
            images.append(_image(block["source"], f"{where}.content[{k}].source"))
        elif block["type"] == "document":
            for part in _document(block["source"], f"{where}.content[{k}].source"):
                if part["type"] == "text":
                    texts.append(part["text"])
                else:
                    images.append(part)
    return "\n".join(texts), images


def _tool(tool: dict[str, Any], i: int) -> dict[str, Any]:
    fn: dict[str, Any] = {"name": tool["name"]}
    if tool.get("description") is not None:
        fn["description"] = tool["description"]
    fn["parameters"] = tool["input_schema"]
    return {"type": "function", "function": fn}


def _tool_choice(choice: dict[str, Any] | None) -> dict[str, Any]:
    if choice is None:
        return {}
    kind = choice["type"]
    if kind == "tool":
        out: dict[str, Any] = {"tool_choice": {"type": "function", "function": {"name": choice["name"]}}}
    else:
        out = {"tool_choice": {"auto": "auto", "any": "required", "none": "none"}[kind]}
    if choice.get("disable_parallel_tool_use") is True and kind != "none":
        out["parallel_tool_calls"] = False
    return out


# ---------------------------------------------------------------------------
# OpenAI chat answer -> Anthropic message
# ---------------------------------------------------------------------------


def _usage_block(usage: dict[str, Any] | None) -> dict[str, int]:
    """Anthropic's usage for an OpenAI one: cached prompt tokens apart, as
    ``input_tokens`` + ``cache_read_input_tokens`` = the prompt."""
    if not usage:
        return {"input_tokens": 0, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0, "output_tokens": 0}
    prompt = _count(usage.get("prompt_tokens"))
    details = usage.get("prompt_tokens_details")
    cached = min(prompt, _count(details.get("cached_tokens"))) if isinstance(details, dict) else 0
    return {"input_tokens": prompt - cached, "cache_creation_input_tokens": 0, "cache_read_input_tokens": cached,
            "output_tokens": _count(usage.get("completion_tokens"))}


def _count(value: Any) -> int:
    """A token count from a backend: a non-negative int, anything else 0."""
    return value if type(value) is int and value > 0 else 0


def _router_usage(usage: dict[str, Any]) -> dict[str, int]:
    prompt = _count(usage.get("prompt_tokens"))
    return {"prompt_tokens": prompt, "total_tokens": prompt + _count(usage.get("completion_tokens"))}


def _stop(finish: Any, tool_calls: bool, matched: Any) -> tuple[str, str | None]:
    """stop_reason and stop_sequence. vLLM names the stop string that ended the answer
    in the choice's ``stop_reason``; with a forced tool choice it reports
    ``finish_reason: "stop"`` although the answer is tool calls."""
    if finish == "stop" and isinstance(matched, str) and matched:
        return "stop_sequence", matched
    if tool_calls and finish in (None, "stop", "tool_calls", "function_call"):
        return "tool_use", None
    return STOP_REASONS.get(finish, "end_turn"), None


def _reasoning(message: dict[str, Any]) -> Any:
    return message.get("reasoning_content") or message.get("reasoning")


def _tool_input(arguments: Any, name: str) -> dict[str, Any]:
    if arguments is None or arguments == "":
        return {}
    try:
        value = orjson.loads(arguments) if isinstance(arguments, str) else arguments
    except orjson.JSONDecodeError:
        raise UpstreamError(f"the backend's call of tool {name!r} has arguments that are not JSON: "
                            f"{str(arguments)[:200]}") from None
    if not isinstance(value, dict):
        raise UpstreamError(f"the backend's call of tool {name!r} has arguments that are not a JSON object")
    return value


def message_response(data: dict[str, Any], ctx: Context) -> dict[str, Any]:
    """The Anthropic message for an OpenAI ``chat.completion``."""
    choices = data.get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict) \
            or not isinstance(choices[0].get("message"), dict):
        raise UpstreamError("the backend's chat completion has no choices[0].message")
    choice, message = choices[0], choices[0]["message"]
    content: list[dict[str, Any]] = []
    reasoning = _reasoning(message)
    if isinstance(reasoning, str) and reasoning:
        content.append({"type": "thinking", "thinking": reasoning, "signature": ""})
    text = message.get("content")
    if isinstance(text, str) and text:
        content.append({"type": "text", "text": text})
    calls = message.get("tool_calls") or []
    if not isinstance(calls, list):
        raise UpstreamError("the backend's tool_calls is not an array")
    for call in calls:
        fn = call.get("function") if isinstance(call, dict) else None
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
            raise UpstreamError("the backend sent a tool call without a function name")
        content.append({"type": "tool_use", "id": call.get("id") or _tool_id(), "name": fn["name"],
                        "input": _tool_input(fn.get("arguments"), fn["name"])})
    stop_reason, stop_sequence = _stop(choice.get("finish_reason"), bool(calls), choice.get("stop_reason"))
    usage = data.get("usage")
    return {"model": ctx.model, "id": ctx.id, "type": "message", "role": "assistant", "content": content,
            "stop_reason": stop_reason, "stop_sequence": stop_sequence,
            "usage": _usage_block(usage if isinstance(usage, dict) else None)}


def _tool_id() -> str:
    """An id for a tool call the backend sent without one."""
    return f"toolu_{uuid.uuid4().hex[:24]}"


# ---------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------


def error_type(status: int) -> str:
    return ERROR_TYPES.get(status) or ("invalid_request_error" if 400 <= status < 500 else "api_error")


def error_object(exc: RouterError) -> dict[str, Any]:
    """Anthropic's error shape; ``request_id`` (top level, as Anthropic writes it) only
    when the error carries one."""
    out: dict[str, Any] = {"type": "error", "error": {"type": error_type(exc.status), "message": exc.message}}
    request_id = getattr(exc, "request_id", None)
    if isinstance(request_id, str):
        out["request_id"] = request_id
    return out


def error_event(exc: RouterError) -> bytes:
    return sse_event("error", {"type": "error", "error": error_object(exc)["error"]})


# ---------------------------------------------------------------------------
# OpenAI chat SSE -> Anthropic SSE
# ---------------------------------------------------------------------------


class MessageStream(FromOpenAI):
    """Turns an OpenAI chat stream (vLLM, llama-server, our Ollama translator), cut
    anywhere, into Anthropic's event sequence: ``message_start`` and one ``ping`` at the
    first chunk, then per block ``content_block_start`` / ``_delta`` / ``_stop`` with
    indexes from 0 (a thinking or text block ends where another kind begins; each tool
    call is a block of its own, its arguments relayed as ``input_json_delta`` fragments
    as they come), and ``message_delta`` + ``message_stop`` once the finish_reason and
    the usage chunk (which ``include_usage`` sends after it) are both in, or at
    ``[DONE]``. An error object, a line that is not JSON, or an end before any
    finish_reason ends the client's stream with an error event (``failed``)."""

    __slots__ = ("ctx", "finished", "failed", "error", "usage", "_events", "_started", "_block", "_index",
                 "_tools", "_tool", "_finish", "_matched", "_upstream_usage")

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.finished = False
        self.failed = False
        self.error = ""
        self.usage: dict[str, int] | None = None
        self._events = OpenAIEvents()
        self._started = False
        self._block: str | None = None  # the open block: "thinking", "text", "tool_use" or None
        self._index = -1  # of the last block started
        self._tools: dict[int, int] = {}  # OpenAI tool call index -> its block index
        self._tool: int | None = None  # the OpenAI index of the open tool_use block
        self._finish: str | None = None
        self._matched: str | None = None  # the stop string vLLM says ended the answer
        self._upstream_usage: dict[str, Any] | None = None

    def _malformed(self, exc: ValueError) -> bytes:  # a line that is not JSON, or one too long
        return self._fail(str(exc))

    def close(self) -> bytes:
        if self.finished:
            return b""
        out = bytearray()
        try:
            for obj in self._events.close():
                out += self._object(obj)
                if self.finished:
                    return bytes(out)
        except ValueError as exc:
            return bytes(out) + self._fail(str(exc))
        if self._events.done:
            return bytes(out) + self._done()
        if self._finish is not None:  # the answer is whole; only [DONE] (and maybe the usage) was lost
            return bytes(out) + self._end()
        return bytes(out) + self._fail("the backend ended the stream before it finished (no finish_reason)")

    def _fail(self, message: str) -> bytes:
        self.finished = self.failed = True
        self.error = message
        return error_event(UpstreamError(message))

    def _object(self, obj: dict[str, Any]) -> bytes:
        if obj.get("error") is not None:
            err = obj["error"]
            message = err.get("message") if isinstance(err, dict) else err
            return self._fail(f"the backend sent an error mid-stream: {message}")
        try:
            return self._chunk(obj)
        except (AttributeError, TypeError, KeyError) as exc:
            return self._fail(f"the backend sent a stream chunk of an unexpected shape ({exc!r})")

    def _chunk(self, obj: dict[str, Any]) -> bytes:
        out = bytearray()
        usage = obj.get("usage")
        if isinstance(usage, dict):
            self._upstream_usage = usage
            self.usage = _router_usage(usage)
        if not self._started:
            out += self._start()
        for choice in obj.get("choices") or ():
            if choice.get("index", 0) != 0:
                continue
            delta = choice.get("delta") or {}
            reasoning = _reasoning(delta)
            if isinstance(reasoning, str) and reasoning:
                out += self._open("thinking")
                out += self._delta({"type": "thinking_delta", "thinking": reasoning})
            text = delta.get("content")
            if isinstance(text, str) and text:
                out += self._open("text")
                out += self._delta({"type": "text_delta", "text": text})
            for call in delta.get("tool_calls") or ():
                out += self._call(call)
                if self.finished:
                    return bytes(out)
            finish = choice.get("finish_reason")
            if finish is not None:
                if not isinstance(finish, str):
                    raise TypeError(f"finish_reason {finish!r}")
                self._finish = finish
                if isinstance(choice.get("stop_reason"), str):
                    self._matched = choice["stop_reason"]
        if self._finish is not None and self._upstream_usage is not None:
            out += self._end()
        return bytes(out)

    def _start(self) -> bytes:
        self._started = True
        message = {"model": self.ctx.model, "id": self.ctx.id, "type": "message", "role": "assistant", "content": [],
                   "stop_reason": None, "stop_sequence": None, "usage": _usage_block(self._upstream_usage)}
        message["usage"]["output_tokens"] = 0
        return sse_event("message_start", {"type": "message_start", "message": message}) + \
            sse_event("ping", {"type": "ping"})

    def _open(self, kind: str) -> bytes:
        """Start a block of ``kind`` unless one is open (tool_use blocks start in ``_call``)."""
        if self._block == kind:
            return b""
        out = self._close()
        self._index += 1
        self._block = kind
        block = {"type": "text", "text": ""} if kind == "text" else \
            {"type": "thinking", "thinking": "", "signature": ""}  # the SDK's ThinkingBlock requires a signature
        return out + sse_event("content_block_start", {"type": "content_block_start", "index": self._index,
                                                       "content_block": block})

    def _close(self) -> bytes:
        if self._block is None:
            return b""
        self._block = self._tool = None
        return sse_event("content_block_stop", {"type": "content_block_stop", "index": self._index})

    def _delta(self, delta: dict[str, Any]) -> bytes:
        return sse_event("content_block_delta", {"type": "content_block_delta", "index": self._index, "delta": delta})

    def _call(self, call: dict[str, Any]) -> bytes:
        """A tool call fragment: the first of an index starts its block (id and name
        come with it, as every server sends them), the rest add arguments."""
        index, tool_id = call.get("index", 0), call.get("id")
        fn = call.get("function") or {}
        name, args = fn.get("name"), fn.get("arguments")
        if type(index) is not int or any(v is not None and not isinstance(v, str) for v in (tool_id, name, args)):
            raise TypeError(f"tool call {call!r}")
        out = b""
        if index not in self._tools:
            out = self._close()
            self._index += 1
            self._tools[index] = self._index
            self._block, self._tool = "tool_use", index
            block = {"type": "tool_use", "id": tool_id or _tool_id(), "name": name or "", "input": {}}
            out += sse_event("content_block_start", {"type": "content_block_start", "index": self._index,
                                                     "content_block": block})
        elif index != self._tool:
            if not args:
                return b""
            return self._fail(f"the backend sent arguments for tool call {index} after a later block began")
        if args:
            out += self._delta({"type": "input_json_delta", "partial_json": args})
        return out

    def _done(self) -> bytes:
        if self.finished:
            return b""
        if self._finish is None:
            return self._fail("the backend ended the stream ([DONE]) without a finish_reason")
        return self._end()

    def _end(self) -> bytes:
        out = self._close()
        stop_reason, stop_sequence = _stop(self._finish, bool(self._tools), self._matched)
        usage = _usage_block(self._upstream_usage) if self._upstream_usage is not None else {"output_tokens": 0}
        out += sse_event("message_delta", {"type": "message_delta",
                                           "delta": {"stop_reason": stop_reason, "stop_sequence": stop_sequence},
                                           "usage": usage})
        self.finished = True
        return out + sse_event("message_stop", {"type": "message_stop"})


# ---------------------------------------------------------------------------
# A native Anthropic stream, relayed
# ---------------------------------------------------------------------------


class Watch:
    """Relays a native Anthropic stream's bytes unchanged, whole lines only (a last
    line without its ending is held, at most ``MAX_LINE``). ``finished`` after the
    ``message_stop`` event (its closing blank line included, or written if it has not
    come yet), ``failed`` after an ``error`` event, which is relayed the same way. Only
    lines that may name one of those events, or ``message_start`` / ``message_delta``
    (for the usage), are looked at; a chunk without them is passed on as it is."""

    __slots__ = ("finished", "failed", "error", "usage", "_held", "_event", "_open", "_input", "_output")

    def __init__(self, ctx: Context) -> None:
        self.finished = False
        self.failed = False
        self.error = ""
        self.usage: dict[str, int] | None = None
        self._held = b""
        self._event = b""  # the name on the current event's ``event:`` line
        self._open = False  # the last relayed line was not blank: an event is unfinished
        self._input: int | None = None  # input tokens, the cached ones included
        self._output = 0

    def feed(self, chunk: bytes) -> bytes:
        if self.finished:
            return b""
        buf = self._held + chunk
        cut = buf.rfind(b"\n") + 1
        whole, self._held = buf[:cut], buf[cut:]
        out = self._relay(whole) if whole else b""
        if not self.finished and len(self._held) > MAX_LINE:
            self._held = b""
            return out + self._fail("the backend sent a stream line longer than 16 MiB")
        return out

    def _relay(self, whole: bytes) -> bytes:
        if b"message_" in whole or b"error" in whole:
            return self._scan(whole)
        if self._event and (b"event:" in whole or _has_blank(whole)):
            self._event = b""  # whatever event these lines began or ended, it is none we look for
        self._open = not _ends_blank(whole)
        return whole

    def close(self) -> bytes:
        if self.finished:
            return b""
        self._held = b""  # an unfinished last line is not relayed: the error event must stand alone
        return self._fail("the backend ended the stream before message_stop")

    def abort(self, exc: RouterError) -> bytes:
        """The end of a stream the proxy gives up on (a timeout, a broken connection):
        the unfinished event is closed first, or a client's SSE parser would read the
        error's data as more lines of that event's data."""
        self.finished = self.failed = True
        self.error = exc.message
        return (b"\n" if self._open else b"") + error_event(exc)

    def _fail(self, message: str) -> bytes:
        return self.abort(UpstreamError(message))

    def _scan(self, whole: bytes) -> bytes:
        """The lines of ``whole``, looked at one by one; cut after a final event."""
        pos = 0
        for line in whole[:-1].split(b"\n"):
            pos += len(line) + 1
            line = line.rstrip(b"\r")
            if not line:
                self._event = b""
            elif line.startswith(b"event:"):
                self._event = line[6:].strip()
            elif line.startswith(b"data:") and self._data(line):
                return whole[:pos] + self._blank(whole, pos)
        self._open = not _ends_blank(whole)
        return whole

    def _data(self, line: bytes) -> bool:
        """Note what a data line says; True if it ends the stream."""
        m = _DATA_TYPE.match(line)
        kind = m.group(1) if m is not None else self._event
        if not kind and _BARE_ERROR.match(line, 5):
            kind = b"error"  # an OpenAI-shaped error object, as a server's middleware may write it
        if kind not in (b"message_start", b"message_delta", b"message_stop", b"error"):
            return False
        if kind == b"message_stop":
            self.finished = True
            return True
        try:
            data = orjson.loads(line[5:])
        except orjson.JSONDecodeError:
            data = None
        if kind == b"error":
            err = data.get("error") if isinstance(data, dict) else None
            message = err.get("message") if isinstance(err, dict) else err if isinstance(err, str) else None
            self.finished = self.failed = True
            self.error = f"the backend sent an error event: {message or line[5:205].decode('utf-8', 'replace')}"
            return True
        self._note_usage(data, kind)
        return False

    def _note_usage(self, data: Any, kind: bytes) -> None:
        if not isinstance(data, dict):
            return
        if kind == b"message_start":
            data = data.get("message")
        usage = data.get("usage") if isinstance(data, dict) else None
        if not isinstance(usage, dict):
            return
        if "input_tokens" in usage:
            self._input = sum(_count(usage.get(k)) for k in
                              ("input_tokens", "cache_creation_input_tokens", "cache_read_input_tokens"))
        if "output_tokens" in usage:
            self._output = _count(usage.get("output_tokens"))
        if self._input is not None:
            self.usage = {"prompt_tokens": self._input, "total_tokens": self._input + self._output}

    @staticmethod
    def _blank(whole: bytes, pos: int) -> bytes:
        """The blank line that closes the final event: the upstream's, when it came in
        this chunk, else one of the same line ending as the data line's."""
        if whole.startswith(b"\n", pos) or whole.startswith(b"\r\n", pos):
            return b"\n" if whole[pos:pos + 1] == b"\n" else b"\r\n"
        return b"\r\n" if whole[pos - 2:pos] == b"\r\n" else b"\n"


def _has_blank(whole: bytes) -> bool:
    """Does ``whole`` (which begins at a line start) hold a blank line?"""
    return whole[:1] == b"\n" or whole[:2] == b"\r\n" or b"\n\n" in whole or b"\n\r\n" in whole


def _ends_blank(whole: bytes) -> bool:
    """Is the last line of ``whole`` (which ends in a line ending) blank?"""
    return whole in (b"\n", b"\r\n") or whole.endswith(b"\n\n") or whole.endswith(b"\n\r\n")


# ---------------------------------------------------------------------------
# The doors
# ---------------------------------------------------------------------------


def _check_answer(raw: bytes, provider: str) -> bytes:
    if raw.lstrip()[:1] != b"{" or raw.rstrip()[-1:] != b"}" or _NOT_AN_ANSWER.match(raw):
        raise UpstreamError(f"{provider} answered 200 with something that is not an Anthropic answer: "
                            f"{raw[:200].decode('utf-8', 'replace')}")
    return raw


class Messages:
    """``POST /v1/messages``."""

    name = "messages"
    pivot: str | None = "chat"
    native_path = "/v1/messages"
    stream_type = "text/event-stream; charset=utf-8"
    id_prefix = "msg_"

    def parse(self, raw: bytes, limits: Limits) -> dict[str, Any]:
        body = _decode(raw)
        check_request(body, limits, count=False)
        return body

    def stream(self, body: dict[str, Any]) -> bool:
        return body.get("stream") is True

    def native_request(self, body: dict[str, Any], deployment: Deployment, model: str) -> bytes:
        return orjson.dumps({**body, "model": model})

    def check_native(self, raw: bytes, provider: str) -> bytes:
        return _check_answer(raw, provider)

    def watch(self, ctx: Context) -> StreamTranslator:
        return Watch(ctx)

    def to_pivot(self, body: dict[str, Any]) -> dict[str, Any]:
        return chat_request(body)

    def from_pivot(self, data: dict[str, Any], ctx: Context) -> dict[str, Any]:
        return message_response(data, ctx)

    def pivot_stream(self, ctx: Context) -> StreamTranslator:
        return MessageStream(ctx)

    def error_body(self, exc: RouterError) -> bytes:
        return orjson.dumps(error_object(exc))

    def error_event(self, exc: RouterError) -> bytes:
        return error_event(exc)


class CountTokens(Messages):
    """``POST /v1/messages/count_tokens``: the backend evaluates the prompt (one token
    generated) and its ``usage.prompt_tokens`` is the answer."""

    name = "count_tokens"
    native_path = "/v1/messages/count_tokens"
    stream_type = "application/json"

    def parse(self, raw: bytes, limits: Limits) -> dict[str, Any]:
        body = _decode(raw)
        check_request(body, limits, count=True)
        return body

    def stream(self, body: dict[str, Any]) -> bool:
        return False

    def watch(self, ctx: Context) -> StreamTranslator:
        raise TypeError("count_tokens never streams: its stream() is False, so no attempt asks for this")

    def to_pivot(self, body: dict[str, Any]) -> dict[str, Any]:
        """The chat request of the same prompt, generating one token. A forced tool
        choice is left out: it does not change the prompt, and one token cannot hold
        the tool call it would demand."""
        out = chat_request(body)
        for key in ("tool_choice", "parallel_tool_calls", "stream", "stream_options"):
            out.pop(key, None)
        out["max_tokens"] = 1
        return out

    def from_pivot(self, data: dict[str, Any], ctx: Context) -> dict[str, Any]:
        usage = data.get("usage")
        prompt = usage.get("prompt_tokens") if isinstance(usage, dict) else None
        if type(prompt) is not int or prompt < 0:
            raise UpstreamError("the backend's answer has no usage.prompt_tokens to count the input by")
        return {"input_tokens": prompt}

    def pivot_stream(self, ctx: Context) -> StreamTranslator:
        raise TypeError("count_tokens never streams: its stream() is False, so no attempt asks for this")


MESSAGES = Messages()
COUNT_TOKENS = CountTokens()
