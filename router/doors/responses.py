"""The OpenAI Responses front door (``POST /v1/responses``), stateless.

Scope: the subset Ollama documents for its ``/v1/responses`` (docs/api/openai-compatibility.mdx,
openai/responses.go) and vLLM serves without its store: ``input`` as a string or as items
(messages, ``function_call``, ``function_call_output``, ``reasoning``), ``instructions``,
function tools, ``tool_choice``, sampling, ``max_output_tokens``, ``text.format``, streams.
llm-router keeps nothing between requests, so what needs a stored response is refused with
a 400 that says what to send instead: ``store: true``, ``previous_response_id``,
``conversation``, ``background: true``, stored ``prompt`` templates, built-in tools.
OpenAI's default for ``store`` is true, so only an explicit ``true`` is refused: clients
that omit it (as Ollama's and vLLM's users do) keep working.

A backend that serves ``/v1/responses`` (Ollama >= 0.13.3, vLLM) gets the body as it came
(``native_request``), its stream relayed unchanged (``watch``). Any other gets an OpenAI
chat request (``to_pivot``); its answer becomes a Response object (``from_pivot``) or the
Responses event stream (``pivot_stream``) as OpenAI and vLLM write it.

A stream that fails after its start ends as OpenAI ends one: an ``error`` event, then
``response.failed`` carrying the same error (OpenAI sends both, in that order; Codex reads
only ``response.failed``, openai-python yields both as typed events). Every event has a
``sequence_number``, counting from 0.

The answers echo the request's settings (instructions, tools, tool_choice, temperature, ...)
when the ``Context`` carries the request (``ResponsesContext``); otherwise they hold the
API's defaults, and ``null`` for what only the backend knows (temperature, top_p).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import orjson

from router.config import Limits
from router.doors.base import Door, FromOpenAI, Lines, OpenAIEvents, sse_event
from router.domain import Deployment
from router.validate import decode_object
from router.errors import BadRequest, RouterError, UpstreamError
from router.providers.base import Context
from router.routing.resolve import MAX_MODEL_NAME

ROLES = ("user", "assistant", "system", "developer")
TOOL_CHOICES = ("auto", "none", "required")
TEXT_FORMATS = ("text", "json_object", "json_schema")
IMAGE_DETAILS = ("low", "high", "auto")  # what a chat image_url part takes; "original" has no chat equivalent
_TEXT_PARTS = ("input_text", "output_text")
_NUMBER = (int, float)
_STATELESS = ("llm-router keeps no responses: send store: false (or omit it) and the whole conversation "
              "in input with every request.")


@dataclass(slots=True)
class ResponsesContext(Context):
    """A ``Context`` that also carries the client's parsed request, so the Response
    objects echo its settings as OpenAI's do. ``None``: the API's defaults."""

    request: dict[str, Any] | None = None


# ---------------------------------------------------------------------------
# Request checks
# ---------------------------------------------------------------------------


def check(body: dict[str, Any], max_items: int) -> None:
    """Reject what no backend should see, with ``param`` naming the field (``null`` is
    absent, as OpenAI treats it). Unknown fields pass untouched."""
    _model(body.get("model"))
    _stateless(body)
    _input(body.get("input"), max_items)
    _string(body, "instructions")
    if not body.get("instructions") and type(body["input"]) is list \
            and all(item.get("type") == "reasoning" for item in body["input"]):
        raise BadRequest("input holds only reasoning items: there is nothing to answer.", param="input")
    _tools(body.get("tools"))
    _tool_choice(body.get("tool_choice"))
    _int(body, "max_output_tokens", 1)
    _number(body, "temperature", 0, 2)
    _number(body, "top_p", 0, 1)
    _bool(body, "stream")
    _bool(body, "parallel_tool_calls")
    _string(body, "user")
    _object(body, "metadata")
    _reasoning(body.get("reasoning"))
    _text(body.get("text"))


def _model(model: Any) -> None:
    if model is None or model == "":
        raise BadRequest("You must provide a model parameter.", param="model")
    if type(model) is not str:
        raise BadRequest("model must be a string.", param="model")
    if len(model) > MAX_MODEL_NAME:
        raise BadRequest(f"model must be at most {MAX_MODEL_NAME} characters.", param="model")
    if not model.isprintable():
        raise BadRequest("model must not contain control characters.", param="model")


def _stateless(body: dict[str, Any]) -> None:
    """What only a server that stores responses can do."""
    _bool(body, "store")
    if body.get("store") is True:
        raise BadRequest(_STATELESS, param="store")
    if body.get("previous_response_id") is not None:
        raise BadRequest("previous_response_id is not supported: " + _STATELESS, param="previous_response_id")
    if body.get("conversation") is not None:
        raise BadRequest("conversation is not supported: " + _STATELESS, param="conversation")
    _bool(body, "background")
    if body.get("background") is True:
        raise BadRequest("background responses are not supported by llm-router: it keeps no responses to poll. "
                         "Send background: false (or omit it).", param="background")
    if body.get("prompt") is not None:
        raise BadRequest("prompt (a stored prompt template) is not supported by llm-router: it keeps no prompts. "
                         "Send the text in instructions and input.", param="prompt")


def _input(value: Any, cap: int) -> None:
    if type(value) is str:
        return
    if type(value) is not list or not value:
        raise BadRequest("input is required: a string, or a non-empty array of input items.", param="input")
    if len(value) > cap:
        raise BadRequest(f"input must have at most {cap} items.", param="input")
    parts = 0  # content parts over all items: at most ``cap`` too, as for chat messages
    for i, item in enumerate(value):
        where = f"input[{i}]"
        if type(item) is not dict:
            raise BadRequest(f"{where} must be an object.", param=where)
        kind = item.get("type")
        if kind is None and "role" in item:
            kind = "message"  # the shorthand {"role": ..., "content": ...}
        if kind == "message":
            parts += _message(item, where)
            if parts > cap:
                raise BadRequest(f"input may hold at most {cap} content parts in all.", param=f"{where}.content")
        elif kind == "function_call":
            _function_call(item, where)
        elif kind == "function_call_output":
            _call_output(item, where)
        elif type(kind) is not str or not kind:
            raise BadRequest(f"{where}.type must be a non-empty string.", param=f"{where}.type")
        # Other kinds (Codex's custom_tool_call, local_shell_call, item_reference, web_search_call,
        # ...; reasoning) pass through to a server that speaks Responses; a translation to chat
        # drops reasoning and refuses the rest (``messages``).


def _message(item: dict[str, Any], where: str) -> int:
    """Check a message item; the number of its content parts."""
    if item.get("role") not in ROLES:
        raise BadRequest(f"{where}.role must be one of {', '.join(ROLES)}.", param=f"{where}.role")
    content = item.get("content")
    if type(content) is str:
        return 0
    if type(content) is not list:
        raise BadRequest(f"{where}.content must be a string or an array of content parts.", param=f"{where}.content")
    for j, part in enumerate(content):
        _part(part, f"{where}.content[{j}]")
    return len(content)


def _part(part: Any, where: str) -> None:
    if type(part) is not dict or type(part.get("type")) is not str:
        raise BadRequest(f"{where} must be an object with a string type.", param=where)
    kind = part["type"]
    if kind in _TEXT_PARTS:
        if type(part.get("text")) is not str:
            raise BadRequest(f"{where}.text must be a string.", param=f"{where}.text")
    elif kind == "refusal":  # an assistant's earlier answer, passed back
        if type(part.get("refusal")) is not str:
            raise BadRequest(f"{where}.refusal must be a string.", param=f"{where}.refusal")
    elif kind == "input_image":
        if part.get("file_id") is not None:
            raise BadRequest(f"{where}.file_id is not supported by llm-router: it keeps no files. Send the image "
                             "as image_url (a data: URL or an https URL).", param=f"{where}.file_id")
        if type(part.get("image_url")) is not str:
            raise BadRequest(f"{where}.image_url must be a string (a data: URL or an https URL).",
                             param=f"{where}.image_url")
        detail = part.get("detail")
        if detail is not None and type(detail) is not str:
            raise BadRequest(f"{where}.detail must be a string.", param=f"{where}.detail")
    # other part kinds (input_file, input_audio, ...) pass through natively; a translation refuses them


def _function_call(item: dict[str, Any], where: str) -> None:
    for key in ("call_id", "name"):
        if type(item.get(key)) is not str or not item[key]:
            raise BadRequest(f"{where}.{key} must be a non-empty string.", param=f"{where}.{key}")
    if type(item.get("arguments")) is not str:
        raise BadRequest(f"{where}.arguments must be a string (of JSON).", param=f"{where}.arguments")


def _call_output(item: dict[str, Any], where: str) -> None:
    if type(item.get("call_id")) is not str or not item["call_id"]:
        raise BadRequest(f"{where}.call_id must be a non-empty string.", param=f"{where}.call_id")
    output = item.get("output")
    if type(output) is str:
        return
    if type(output) is not list or any(type(p) is not dict or p.get("type") not in _TEXT_PARTS
                                       or type(p.get("text")) is not str for p in output):
        raise BadRequest(f"{where}.output must be a string or an array of input_text parts.", param=f"{where}.output")


def _tools(tools: Any) -> None:
    if tools is None:
        return
    if type(tools) is not list:
        raise BadRequest("tools must be an array of tools.", param="tools")
    for i, tool in enumerate(tools):
        if type(tool) is not dict:
            raise BadRequest(f"tools[{i}] must be an object.", param=f"tools[{i}]")
        kind = tool.get("type")
        if type(kind) is not str:
            raise BadRequest(f"tools[{i}].type must be a string.", param=f"tools[{i}].type")
        if kind != "function":
            # A hosted tool (web_search, file_search, ...) or a client's own kind (Codex's namespace):
            # passed through to a server that speaks Responses, left out of a translation to
            # chat (a chat model cannot call them). Codex sends web_search by default.
            continue
        if type(tool.get("name")) is not str or not tool["name"]:
            raise BadRequest(f"tools[{i}].name must be a non-empty string.", param=f"tools[{i}].name")
        _string(tool, "description", f"tools[{i}].")
        _object(tool, "parameters", f"tools[{i}].")
        _bool(tool, "strict", f"tools[{i}].")


def _tool_choice(choice: Any) -> None:
    if choice is None or choice in TOOL_CHOICES:
        return
    if type(choice) is dict and choice.get("type") == "function" and type(choice.get("name")) is str:
        return
    raise BadRequest('tool_choice must be "auto", "none", "required" or {"type": "function", "name": ...}; '
                     "llm-router has no built-in tools.", param="tool_choice")


def _reasoning(reasoning: Any) -> None:
    if reasoning is None:
        return
    if type(reasoning) is not dict:
        raise BadRequest("reasoning must be an object.", param="reasoning")
    _string(reasoning, "effort", "reasoning.")


def _text(text: Any) -> None:
    if text is None:
        return
    if type(text) is not dict:
        raise BadRequest("text must be an object.", param="text")
    fmt = text.get("format")
    if fmt is None:
        return
    if type(fmt) is not dict or fmt.get("type") not in TEXT_FORMATS:
        raise BadRequest(f"text.format must be an object whose type is one of {', '.join(TEXT_FORMATS)}.",
                         param="text.format.type")
    if fmt["type"] == "json_schema":
        if type(fmt.get("name")) is not str or not fmt["name"]:
            raise BadRequest("text.format.name must be a non-empty string.", param="text.format.name")
        if type(fmt.get("schema")) is not dict:
            raise BadRequest("text.format.schema must be an object (a JSON schema).", param="text.format.schema")
        _bool(fmt, "strict", "text.format.")


def _int(body: dict[str, Any], key: str, least: int) -> None:
    value = body.get(key)
    if value is not None and (type(value) is not int or value < least):
        raise BadRequest(f"{key} must be an integer >= {least}.", param=key)


def _number(body: dict[str, Any], key: str, least: float, most: float) -> None:
    value = body.get(key)
    if value is not None and (type(value) not in _NUMBER or not least <= value <= most):
        raise BadRequest(f"{key} must be a number from {least} to {most}.", param=key)


def _bool(body: dict[str, Any], key: str, prefix: str = "") -> None:
    value = body.get(key)
    if value is not None and type(value) is not bool:
        raise BadRequest(f"{prefix}{key} must be a boolean.", param=prefix + key)


def _string(body: dict[str, Any], key: str, prefix: str = "") -> None:
    value = body.get(key)
    if value is not None and type(value) is not str:
        raise BadRequest(f"{prefix}{key} must be a string.", param=prefix + key)


def _object(body: dict[str, Any], key: str, prefix: str = "") -> None:
    value = body.get(key)
    if value is not None and type(value) is not dict:
        raise BadRequest(f"{prefix}{key} must be an object.", param=prefix + key)


# ---------------------------------------------------------------------------
# Responses request -> chat request
# ---------------------------------------------------------------------------


def chat_request(body: dict[str, Any]) -> dict[str, Any]:
    """The chat completions request asking what the (checked) Responses request asks."""
    out: dict[str, Any] = {"model": body["model"], "messages": messages(body)}
    tools = [t for t in body.get("tools") or () if t.get("type") == "function"]
    if tools:
        out["tools"] = [_chat_tool(t) for t in tools]
    choice = body.get("tool_choice")
    if choice is not None:
        out["tool_choice"] = choice if type(choice) is str else {"type": "function", "function": {"name": choice["name"]}}
    if body.get("max_output_tokens") is not None:
        out["max_tokens"] = body["max_output_tokens"]
    for key in ("temperature", "top_p", "parallel_tool_calls", "user"):
        if body.get(key) is not None:
            out[key] = body[key]
    fmt = (body.get("text") or {}).get("format") or {}
    if fmt.get("type") == "json_object":
        out["response_format"] = {"type": "json_object"}
    elif fmt.get("type") == "json_schema":
        schema = {k: fmt[k] for k in ("name", "description", "schema", "strict") if fmt.get(k) is not None}
        out["response_format"] = {"type": "json_schema", "json_schema": schema}
    effort = (body.get("reasoning") or {}).get("effort")
    if effort is not None:
        out["reasoning_effort"] = effort
    if body.get("stream") is True:
        out["stream"] = True
        out["stream_options"] = {"include_usage": True}
    return out


def messages(body: dict[str, Any]) -> list[dict[str, Any]]:
    """``instructions`` as a leading system message, then the input as chat messages.

    Function calls join the assistant message before them (consecutive calls are one
    assistant turn with several ``tool_calls``, as chat writes it); their outputs become
    ``tool`` messages. ``developer`` is sent as ``system``: chat templates of local models
    know no developer role. Reasoning items are dropped: chat has no way to send them."""
    out: list[dict[str, Any]] = []
    if body.get("instructions"):
        out.append({"role": "system", "content": body["instructions"]})
    value = body["input"]
    if type(value) is str:
        out.append({"role": "user", "content": value})
        return out
    for i, item in enumerate(value):
        kind = item.get("type") or "message"
        if kind == "message":
            role = "system" if item["role"] == "developer" else item["role"]
            out.append({"role": role, "content": _content(item["content"], f"input[{i}].content")})
        elif kind == "function_call":
            call = {"id": item["call_id"], "type": "function",
                    "function": {"name": item["name"], "arguments": item["arguments"]}}
            if out and out[-1]["role"] == "assistant":
                out[-1].setdefault("tool_calls", []).append(call)
            else:
                out.append({"role": "assistant", "content": None, "tool_calls": [call]})
        elif kind == "function_call_output":
            output = item["output"]
            text = output if type(output) is str else "".join(p["text"] for p in output)
            out.append({"role": "tool", "tool_call_id": item["call_id"], "content": text})
        elif kind != "reasoning":  # the model's own reasoning, passed back: chat has no way to send it
            raise BadRequest(f"input[{i}].type {kind!r} cannot be translated to chat for this deployment (its server "
                             "does not speak Responses): send messages, function_call and function_call_output "
                             "items, or route to a server that serves /v1/responses.", param=f"input[{i}].type")
    return out


def _content(content: str | list[dict[str, Any]], where: str) -> str | list[dict[str, Any]]:
    """Text parts as one string (what every chat template takes); with images, chat parts."""
    if type(content) is str:
        return content
    for j, p in enumerate(content):
        if p["type"] not in _TEXT_PARTS and p["type"] not in ("refusal", "input_image"):
            raise BadRequest(f"{where}[{j}].type {p['type']!r} cannot be translated to chat for this deployment (its "
                             "server does not speak Responses): content parts are input_text, output_text, refusal "
                             "and input_image.", param=f"{where}[{j}].type")
    if all(p["type"] != "input_image" for p in content):
        return "".join(_part_text(p) for p in content)
    parts: list[dict[str, Any]] = []
    for p in content:
        if p["type"] == "input_image":
            image = {"url": p["image_url"]}
            if p.get("detail") in IMAGE_DETAILS:
                image["detail"] = p["detail"]
            parts.append({"type": "image_url", "image_url": image})
        else:
            parts.append({"type": "text", "text": _part_text(p)})
    return parts


def _part_text(part: dict[str, Any]) -> str:
    return part["refusal"] if part["type"] == "refusal" else part["text"]


def _chat_tool(tool: dict[str, Any]) -> dict[str, Any]:
    fn = {k: tool[k] for k in ("name", "description", "parameters", "strict") if tool.get(k) is not None}
    return {"type": "function", "function": fn}


# ---------------------------------------------------------------------------
# The Response object
# ---------------------------------------------------------------------------


def _base(response_id: str) -> str:
    """What inner ids are made of: ``resp_X`` gives ``msg_X_0``, ``fc_X_1``, ..."""
    return response_id[5:] if response_id.startswith("resp_") else response_id


def _item_id(prefix: str, response_id: str, index: int) -> str:
    return f"{prefix}_{_base(response_id)}_{index}"


def _status(finish: Any) -> tuple[str, str | None]:
    """The response's status and, when incomplete, why (chat's ``length`` is the
    Responses API's ``max_output_tokens``)."""
    if finish == "length":
        return "incomplete", "max_output_tokens"
    if finish == "content_filter":
        return "incomplete", "content_filter"
    return "completed", None


def _count(value: Any) -> int:
    return value if type(value) is int and value >= 0 else 0


def response_usage(usage: Any) -> dict[str, Any] | None:
    """Chat usage as the Responses API counts it; ``None`` when the backend sent none."""
    if type(usage) is not dict:
        return None
    prompt, completion = _count(usage.get("prompt_tokens")), _count(usage.get("completion_tokens"))
    prompt_details = usage.get("prompt_tokens_details")
    completion_details = usage.get("completion_tokens_details")
    cached = _count(prompt_details.get("cached_tokens")) if type(prompt_details) is dict else 0
    reasoning = _count(completion_details.get("reasoning_tokens")) if type(completion_details) is dict else 0
    return {"input_tokens": prompt, "input_tokens_details": {"cached_tokens": cached, "cache_write_tokens": 0},
            "output_tokens": completion, "output_tokens_details": {"reasoning_tokens": reasoning},
            "total_tokens": _count(usage.get("total_tokens")) or prompt + completion}


def _proxy_usage(usage: dict[str, Any] | None) -> dict[str, int] | None:
    """Token counts as ``StreamTranslator.usage`` gives them to the proxy."""
    if usage is None:
        return None
    return {"prompt_tokens": usage["input_tokens"], "completion_tokens": usage["output_tokens"],
            "total_tokens": usage["total_tokens"]}


def _echo(request: dict[str, Any] | None) -> dict[str, Any]:
    """The request's settings as a Response object repeats them; without the request, the
    API's defaults (``null`` for sampling the backend decides)."""
    req = request or {}
    text = req.get("text") if type(req.get("text")) is dict else {}
    fmt = text.get("format") or {"type": "text"}
    ptc = req.get("parallel_tool_calls")
    return {
        "instructions": req.get("instructions"),
        "max_output_tokens": req.get("max_output_tokens"),
        "parallel_tool_calls": True if ptc is None else ptc,
        "previous_response_id": None,
        "reasoning": req.get("reasoning"),
        "store": False,  # nothing is kept
        "temperature": req.get("temperature"),
        "text": {**text, "format": fmt},
        "tool_choice": req.get("tool_choice") or "auto",
        "tools": req.get("tools") or [],
        "top_p": req.get("top_p"),
        "truncation": "disabled",
        "user": req.get("user"),
        "metadata": req.get("metadata") or {},
    }


def _response(ctx: Context, echo: dict[str, Any], status: str, output: list[dict[str, Any]],
              usage: dict[str, Any] | None, reason: str | None = None,
              error: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"id": ctx.id, "object": "response", "created_at": ctx.created, "status": status, "background": False,
            "error": error, "incomplete_details": {"reason": reason} if reason else None, "model": ctx.model,
            "output": output, **echo, "usage": usage}


def _message_item(item_id: str, text: str, status: str) -> dict[str, Any]:
    return {"id": item_id, "type": "message", "status": status, "role": "assistant",
            "content": [_output_text(text)]}


def _output_text(text: str) -> dict[str, Any]:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


def _reasoning_item(item_id: str, text: str, status: str) -> dict[str, Any]:
    """Chat's ``reasoning_content`` is the model's raw reasoning, not a summary: vLLM's
    Responses API gives it as ``reasoning_text`` content, as OpenAI does for open models."""
    return {"id": item_id, "type": "reasoning", "summary": [], "content": [{"type": "reasoning_text", "text": text}],
            "status": status}


def _call_item(item_id: str, call_id: str, name: str, arguments: str, status: str) -> dict[str, Any]:
    return {"id": item_id, "type": "function_call", "status": status, "arguments": arguments, "call_id": call_id,
            "name": name}


def response(data: Any, ctx: Context) -> dict[str, Any]:
    """A chat completion as a Response object: a reasoning item (if the model reasoned),
    a message (if it wrote text, or did nothing else), then its function calls."""
    if type(data) is not dict:
        raise UpstreamError("the backend's answer is not a JSON object")
    if "error" in data:
        raise UpstreamError(f"the backend answered with an error: {_error_text(data['error'])}")
    choices = data.get("choices")
    if type(choices) is not list or not choices or type(choices[0]) is not dict \
            or type(choices[0].get("message")) is not dict:
        raise UpstreamError("the backend's chat completion has no choices[0].message")
    message = choices[0]["message"]
    status, reason = _status(choices[0].get("finish_reason"))
    made: list[tuple[str, Any]] = []  # (kind, what) in output order
    thought = message.get("reasoning_content") or message.get("reasoning")
    if type(thought) is str and thought:
        made.append(("reasoning", thought))
    content = message.get("content")
    if type(content) is list:  # text parts (some servers answer so)
        text = "".join(p["text"] for p in content if type(p) is dict and type(p.get("text")) is str)
    else:
        text = content if type(content) is str else ""
    calls = message.get("tool_calls") or []
    if type(calls) is not list or any(type(c) is not dict or type(c.get("function")) is not dict for c in calls):
        raise UpstreamError("the backend's tool_calls are not a list of function calls")
    if text or not calls:
        made.append(("message", text))
    made.extend(("function_call", c) for c in calls)
    output = []
    for i, (kind, what) in enumerate(made):
        item_status = "incomplete" if reason and i == len(made) - 1 else "completed"
        if kind == "reasoning":
            output.append(_reasoning_item(_item_id("rs", ctx.id, i), what, item_status))
        elif kind == "message":
            output.append(_message_item(_item_id("msg", ctx.id, i), what, item_status))
        else:
            fn = what["function"]
            args = fn.get("arguments")
            args = args if type(args) is str else orjson.dumps(args if args is not None else {}).decode()
            call_id = what.get("id") if type(what.get("id")) is str and what["id"] else _item_id("call", ctx.id, i)
            output.append(_call_item(_item_id("fc", ctx.id, i), call_id, str(fn.get("name") or ""), args, item_status))
    return _response(ctx, _echo(getattr(ctx, "request", None)), status, output, response_usage(data.get("usage")),
                     reason)


def _error_text(error: Any) -> str:
    if type(error) is dict:
        return str(error.get("message") or error)[:500]
    return str(error)[:500]


def _failed_error(exc_status: int, message: str) -> dict[str, Any]:
    """``response.error`` of a failed response: its ``code`` is one of the API's own."""
    return {"code": "rate_limit_exceeded" if exc_status == 429 else "server_error", "message": message}


def _error_event(code: str | None, message: str, param: str | None, seq: int) -> bytes:
    return sse_event("error", {"type": "error", "code": code, "message": message, "param": param,
                               "sequence_number": seq})


# ---------------------------------------------------------------------------
# Chat SSE -> Responses events
# ---------------------------------------------------------------------------


class _Item:
    """The output item being streamed: only one is open at a time, as in OpenAI's streams."""

    __slots__ = ("kind", "id", "index", "parts", "call_id", "name", "chat_index")

    def __init__(self, kind: str, item_id: str, index: int, call_id: str = "", name: str = "",
                 chat_index: Any = None) -> None:
        self.kind, self.id, self.index = kind, item_id, index
        self.parts: list[str] = []  # text, reasoning or argument pieces
        self.call_id, self.name, self.chat_index = call_id, name, chat_index


class PivotStream(FromOpenAI):
    """Turns a chat completion's SSE (vLLM, llama-server, ...), cut anywhere, into the
    Responses event stream: ``response.created`` and ``response.in_progress`` with the
    first output, then each output item (reasoning, message, function call) opened,
    streamed and closed in turn, then ``response.completed`` (``response.incomplete`` for
    ``finish_reason: length``) with the whole response and its usage, at ``[DONE]`` (the
    usage chunk comes after the finish chunk). An error object, a line that is not JSON,
    ``[DONE]`` without a finish_reason or an end before ``[DONE]`` fail the stream: an
    ``error`` event, then ``response.failed``."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.finished = False
        self.failed = False
        self.error = ""
        self.usage: dict[str, int] | None = None
        self._events = OpenAIEvents()
        self._echo = _echo(getattr(ctx, "request", None))
        self._seq = 0
        self._started = False
        self._output: list[dict[str, Any]] = []  # closed items
        self._item: _Item | None = None
        self._calls: set[Any] = set()  # chat indices of the tool calls closed
        self._finish: Any = None
        self._chat_usage: Any = None

    def _object(self, obj: dict[str, Any]) -> bytes:
        return self._chunk(obj)

    def _done(self) -> bytes:
        return self._complete()

    def _malformed(self, exc: ValueError) -> bytes:  # a line that is not JSON, or one past MAX_LINE
        return self._fail(f"the backend sent a malformed stream: {exc}")

    def close(self) -> bytes:
        if self.finished:
            return b""
        out = bytearray()
        try:
            for obj in self._events.close():
                out += self._chunk(obj)
                if self.finished:
                    return bytes(out)
        except ValueError:  # the upstream stopped inside its last line
            return bytes(out + self._fail("the backend ended the stream before [DONE], inside a line"))
        if self._events.done:
            return bytes(out + self._complete())
        return bytes(out + self._fail("the backend ended the stream before [DONE]"))

    def abort(self, exc: RouterError) -> bytes:
        """The end of a stream the proxy gives up on (a timeout, a broken connection):
        ``error`` and ``response.failed``, numbered after what was sent."""
        if self.finished:
            return b""
        return self._fail(exc.message, exc.code, exc.status)

    # -- events --------------------------------------------------------------------------

    def _emit(self, kind: str, **fields: Any) -> bytes:
        fields["sequence_number"] = self._seq
        self._seq += 1
        return sse_event(kind, {"type": kind, **fields})

    def _start(self) -> bytes:
        if self._started:
            return b""
        self._started = True
        created = _response(self.ctx, self._echo, "in_progress", [], None)
        return self._emit("response.created", response=created) + self._emit("response.in_progress", response=created)

    def _fail(self, message: str, code: str | None = "upstream_error", status: int = 502) -> bytes:
        self.failed = self.finished = True
        self.error = message
        failed = _response(self.ctx, self._echo, "failed", self._output, None, error=_failed_error(status, message))
        event = _error_event(code, message, None, self._seq)
        self._seq += 1
        return event + self._emit("response.failed", response=failed)

    def _chunk(self, obj: dict[str, Any]) -> bytes:
        if "error" in obj or obj.get("object") == "error":  # vLLM's errors, the newer shape and the older flat one
            return self._fail(f"the backend sent an error mid-stream: {_error_text(obj.get('error') or obj)}")
        try:
            return self._choices(obj)
        except (AttributeError, TypeError, KeyError) as exc:
            return self._fail(f"the backend sent an unexpected chunk shape ({exc})")

    def _choices(self, obj: dict[str, Any]) -> bytes:
        if obj.get("usage") is not None:
            self._chat_usage = obj["usage"]
        out = bytearray()
        for choice in obj.get("choices") or ():
            if choice.get("index", 0) != 0:
                continue
            delta = choice.get("delta") or {}
            thought = delta.get("reasoning_content") or delta.get("reasoning")
            if thought:
                out += self._piece("reasoning", _text_of(thought))
            content = delta.get("content")
            if content:
                out += self._piece("message", _text_of(content))
            for call in delta.get("tool_calls") or ():
                out += self._call(call)
            if choice.get("finish_reason"):
                self._finish = choice["finish_reason"]
        return bytes(out)

    def _piece(self, kind: str, text: str) -> bytes:
        """Reasoning or message text: opens its item if another is open."""
        out = b""
        if self._item is None or self._item.kind != kind:
            out = self._open(kind)
        item = self._item
        assert item is not None
        item.parts.append(text)
        if kind == "message":
            return out + self._emit("response.output_text.delta", item_id=item.id, output_index=item.index,
                                    content_index=0, delta=text, logprobs=[])
        return out + self._emit("response.reasoning_text.delta", item_id=item.id, output_index=item.index,
                                content_index=0, delta=text)

    def _call(self, call: dict[str, Any]) -> bytes:
        """A tool call delta: the first of a call opens its item; the rest carry pieces of
        its arguments (same index, no other id)."""
        fn = call.get("function") or {}
        chat_index, call_id, name = call.get("index", 0), call.get("id"), fn.get("name")
        args = fn.get("arguments")
        if args is not None and type(args) is not str:
            raise TypeError("tool call arguments that are not a string")
        item = self._item
        out = b""
        if item is None or item.kind != "function_call" or item.chat_index != chat_index \
                or (call_id and call_id != item.call_id):
            if not call_id and not name and chat_index in self._calls:
                raise KeyError(f"arguments for tool call {chat_index} after another call began")
            index = self._next_index()
            call_id = call_id if type(call_id) is str and call_id else _item_id("call", self.ctx.id, index)
            out = self._open("function_call", call_id=call_id, name=str(name or ""), chat_index=chat_index)
            item = self._item
            assert item is not None
        elif name and not item.name:
            item.name = str(name)
        if args:
            item.parts.append(args)
            out += self._emit("response.function_call_arguments.delta", item_id=item.id, output_index=item.index,
                              delta=args)
        return out

    def _next_index(self) -> int:
        return len(self._output) + (self._item is not None)

    def _open(self, kind: str, call_id: str = "", name: str = "", chat_index: Any = None) -> bytes:
        out = self._start() + self._close("completed")
        index = len(self._output)
        prefix = {"reasoning": "rs", "message": "msg", "function_call": "fc"}[kind]
        item = self._item = _Item(kind, _item_id(prefix, self.ctx.id, index), index, call_id, name, chat_index)
        if kind == "message":
            added = {"id": item.id, "type": "message", "status": "in_progress", "role": "assistant", "content": []}
            part: dict[str, Any] = _output_text("")
        elif kind == "reasoning":
            added = {"id": item.id, "type": "reasoning", "summary": [], "status": "in_progress"}
            part = {"type": "reasoning_text", "text": ""}
        else:
            added = _call_item(item.id, call_id, name, "", "in_progress")
            return out + self._emit("response.output_item.added", output_index=index, item=added)
        return out + self._emit("response.output_item.added", output_index=index, item=added) \
            + self._emit("response.content_part.added", item_id=item.id, output_index=index, content_index=0, part=part)

    def _close(self, status: str) -> bytes:
        item, self._item = self._item, None
        if item is None:
            return b""
        text = "".join(item.parts)
        where = {"item_id": item.id, "output_index": item.index}
        if item.kind == "function_call":
            done = _call_item(item.id, item.call_id, item.name, text, status)
            out = self._emit("response.function_call_arguments.done", **where, name=item.name, arguments=text)
        elif item.kind == "message":
            done = _message_item(item.id, text, status)
            out = self._emit("response.output_text.done", **where, content_index=0, text=text, logprobs=[]) \
                + self._emit("response.content_part.done", **where, content_index=0, part=_output_text(text))
        else:
            done = _reasoning_item(item.id, text, status)
            out = self._emit("response.reasoning_text.done", **where, content_index=0, text=text) \
                + self._emit("response.content_part.done", **where, content_index=0,
                             part={"type": "reasoning_text", "text": text})
        out += self._emit("response.output_item.done", output_index=item.index, item=done)
        if item.kind == "function_call":
            self._calls.add(item.chat_index)
        self._output.append(done)
        return out

    def _complete(self) -> bytes:
        if self._finish is None:  # llama-cpp-python ends a stream a second request interrupted this way
            return self._fail("the backend ended the stream without a finish_reason (cut short)")
        status, reason = _status(self._finish)
        out = self._start()
        kinds = {i["type"] for i in self._output} | ({self._item.kind} if self._item else set())
        if not kinds & {"message", "function_call"}:
            out += self._open("message")  # no text and no call: an empty message, as in a non-stream answer
        out += self._close("incomplete" if reason else "completed")
        usage = response_usage(self._chat_usage)
        self.usage = _proxy_usage(usage)
        final = _response(self.ctx, self._echo, status, self._output, usage, reason)
        self.finished = True
        return out + self._emit("response.incomplete" if reason else "response.completed", response=final)


def _text_of(value: Any) -> str:
    if type(value) is not str:
        raise TypeError("a delta text that is not a string")
    return value


# ---------------------------------------------------------------------------
# A native Responses stream, relayed
# ---------------------------------------------------------------------------

_WATCHED = frozenset((b"response.created", b"response.completed", b"response.incomplete", b"response.failed",
                      b"error"))
_SEQUENCE = re.compile(rb'[{,]\s*"sequence_number"\s*:\s*(\d+)')
# A chunk that may hold one of the watched events (or an error): it is read line by line.
# Any other chunk of whole lines (the deltas: nearly all of a stream) is relayed as it came.
_MAY_MATTER = re.compile(rb"response\.(?:created|completed|incomplete|failed)|error")  # a key: inside a JSON string its quotes are escaped


class Watch:
    """Relays a backend's Responses SSE unchanged, in whole lines, watching for its end.

    ``response.completed`` / ``response.incomplete`` finish it (usage from the response),
    ``response.failed`` fails it; both end their event and stop the relay. An ``error``
    event (or a chat-style ``{"error": ...}``) fails it, but the relay goes on to the
    ``response.failed`` OpenAI sends next: Codex learns the reason only from that one.
    An end before any of these (Ollama's stream stops without one when generation fails)
    gets our own ``error`` and, when the stream's response is known, ``response.failed``,
    numbered after the backend's events. Only the data of the watched events is decoded
    (servers name their events); a stream without ``event:`` lines is decoded in full."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.finished = False
        self.failed = False
        self.error = ""
        self.usage: dict[str, int] | None = None
        self._lines = Lines()
        self._held = bytearray()  # the raw bytes of the unfinished line
        self._event = b""  # the name of the event being read
        self._seq = -1  # the last sequence_number the backend sent
        self._response: dict[str, Any] | None = None  # from response.created
        self._open = False  # the last line relayed leaves an event undispatched
        self._told = False  # an error event went to the client

    def feed(self, chunk: bytes) -> bytes:
        if self.finished:
            return b""
        if not self._held and chunk[-1:] == b"\n" and _MAY_MATTER.search(chunk) is None:
            return self._pass(chunk)
        self._held += chunk
        try:
            lines = self._lines.feed(chunk)
        except ValueError as exc:  # a line past MAX_LINE
            self._held.clear()
            return self._fail(f"the backend sent a malformed stream: {exc}")
        out = bytearray()
        start = 0
        for line in lines:
            end = self._held.index(b"\n", start) + 1
            raw = self._held[start:end]
            start = end
            out += raw
            self._open = bool(line)
            if self._line(line):  # the end: close its event, relay nothing after it
                self._held.clear()
                self._open = False
                return bytes(out + raw[len(line):])
        del self._held[:start]
        return bytes(out)

    def _pass(self, chunk: bytes) -> bytes:
        """Relay whole lines none of which is watched, noting only what ``_line`` would:
        the last sequence number, the event a last ``event:`` line opens, an event left open."""
        numbers = _SEQUENCE.findall(chunk, max(0, chunk.rfind(b'"sequence_number"') - 16))
        if numbers:
            self._seq = max(self._seq, *map(int, numbers))
        lines = chunk.split(b"\n")[:-1]
        last = lines[-1].rstrip(b"\r")
        blank = max((i for i, line in enumerate(lines) if not line.rstrip(b"\r")), default=-1)
        named = max((i for i, line in enumerate(lines) if line.startswith(b"event:")), default=-1)
        if named > blank:
            self._event = lines[named][6:].strip()
        elif blank >= 0:
            self._event = b""
        self._open = bool(last)
        return chunk

    def close(self) -> bytes:
        if self.finished:
            return b""
        rest = self._lines.rest()
        self._held.clear()
        out = b""
        if rest.startswith(b"data:") and _decodes(rest[5:]):  # a whole last line, only its ending missing
            out = rest + b"\n"
            self._open = True
            if self._line(rest):
                return out + b"\n"
        # anything else cut off is dropped, as the chat relay drops it: half a line helps no client
        if self._told:
            return out + self._end_failed(self.error)
        return out + self._fail("the backend ended the stream before response.completed")

    def abort(self, exc: RouterError) -> bytes:
        """As ``PivotStream.abort``, numbered after the backend's events."""
        if self.finished:
            return b""
        return self._fail(exc.message, exc.code, exc.status)

    def _line(self, line: bytes) -> bool:
        """Watch one line; true when it ends the stream."""
        if not line:
            self._event = b""
            return False
        if line.startswith(b"event:"):
            self._event = line[6:].strip()
            return False
        if not line.startswith(b"data:"):
            return False
        value = line[5:].strip()
        numbers = _SEQUENCE.findall(value)
        if numbers:
            self._seq = max(self._seq, *map(int, numbers))
        if self._event and self._event not in _WATCHED:
            return False
        try:
            obj = orjson.loads(value)
        except orjson.JSONDecodeError:
            return False  # [DONE] (vLLM sent one after response.completed), or noise: relayed as it came
        if type(obj) is not dict:
            return False
        kind = obj.get("type") or self._event.decode("utf-8", "replace")
        body = obj.get("response") if type(obj.get("response")) is dict else {}
        if kind == "response.created":
            self._response = body
        elif kind in ("response.completed", "response.incomplete"):
            self.usage = _responses_usage(body.get("usage"))
            self.finished = True
            return True
        elif kind == "response.failed":
            self.failed = self.finished = True
            self.error = f"the backend's response failed: {_error_text(body.get('error') or 'no reason given')}"
            return True
        elif kind == "error" or "error" in obj:
            self.failed = self._told = True
            self.error = f"the backend sent an error mid-stream: {_error_text(obj.get('error') or obj)}"
        return False

    def _fail(self, message: str, code: str | None = "upstream_error", status: int = 502) -> bytes:
        self.failed = True
        self.error = message
        self._seq += 1
        event = (b"\n" if self._open else b"") + _error_event(code, message, None, self._seq)
        self._open = False
        return event + self._end_failed(message, status)

    def _end_failed(self, message: str, status: int = 502) -> bytes:
        """``response.failed`` for the stream's response, if the backend named it."""
        self.finished = True
        out = b"\n" if self._open else b""
        self._open = False
        if self._response is None:
            return out
        self._seq += 1
        failed = {**self._response, "status": "failed", "error": _failed_error(status, message)}
        return out + sse_event("response.failed", {"type": "response.failed", "response": failed,
                                                   "sequence_number": self._seq})


def _decodes(value: bytes) -> bool:
    try:
        orjson.loads(value)
    except orjson.JSONDecodeError:
        return False
    return True


def _responses_usage(usage: Any) -> dict[str, int] | None:
    if type(usage) is not dict:
        return None
    prompt, completion = _count(usage.get("input_tokens")), _count(usage.get("output_tokens"))
    return {"prompt_tokens": prompt, "completion_tokens": completion,
            "total_tokens": _count(usage.get("total_tokens")) or prompt + completion}


# ---------------------------------------------------------------------------
# The door
# ---------------------------------------------------------------------------

_ERROR_FIRST = re.compile(rb'\s*\{\s*"error"\s*:')
_FAILED = re.compile(rb'"status"\s*:\s*"failed"')


class Responses:
    """The ``Door`` for ``POST /v1/responses``."""

    name = "responses"
    pivot = "chat"
    native_path = "/v1/responses"
    stream_type = "text/event-stream; charset=utf-8"
    id_prefix = "resp_"

    def context(self, ctx: Context, body: dict[str, Any]) -> Context:
        """The attempt's context, carrying the request its answers echo."""
        return ResponsesContext(ctx.model, ctx.id, ctx.created, ctx.include_usage, body)

    def parse(self, raw: bytes, limits: Limits) -> dict[str, Any]:
        body = decode_object(raw)
        check(body, limits.max_messages)
        return body

    def stream(self, body: dict[str, Any]) -> bool:
        return body.get("stream") is True

    def native_request(self, body: dict[str, Any], deployment: Deployment, model: str) -> bytes:
        return orjson.dumps({**body, "model": model})

    def check_native(self, raw: bytes, provider: str) -> bytes:
        """Cheap checks: a JSON object (by its first and last bytes) that is not an error
        object nor a failed response (whose reason is then decoded)."""
        text = raw.strip()
        if text[:1] != b"{" or text[-1:] != b"}":
            raise UpstreamError(f"{provider} answered /v1/responses with something that is not a JSON object")
        if _ERROR_FIRST.match(text) or _FAILED.search(text):
            try:
                data = orjson.loads(text)
            except orjson.JSONDecodeError:
                data = {}
            reason = data.get("error") if type(data) is dict else None
            raise UpstreamError(f"{provider}: the response failed: {_error_text(reason or 'no reason given')}")
        return raw

    def watch(self, ctx: Context) -> Watch:
        return Watch(ctx)

    def to_pivot(self, body: dict[str, Any]) -> dict[str, Any]:
        return chat_request(body)

    def from_pivot(self, data: dict[str, Any], ctx: Context) -> dict[str, Any]:
        return response(data, ctx)

    def pivot_stream(self, ctx: Context) -> PivotStream:
        return PivotStream(ctx)

    def error_body(self, exc: RouterError) -> bytes:
        return exc.to_bytes()

    def error_event(self, exc: RouterError) -> bytes:
        """The API's ``error`` event. Without a stream's state its ``sequence_number`` is 0:
        a stream's translator numbers it in sequence and adds ``response.failed``
        (``abort``); use that where the translator is at hand."""
        return _error_event(exc.code, exc.message, exc.param, 0)


RESPONSES: Door = Responses()
