"""``anthropic/`` deployments (LiteLLM's ``model: anthropic/claude-sonnet-4-5``): OpenAI
chat and completions requests as Anthropic Messages requests, and the answers back.

The opposite of the Anthropic front door (``router.doors.anthropic``, Anthropic clients
to OpenAI backends). The stream translator is ``router.providers.anthropic_stream``.
What follows LiteLLM (``litellm/llms/anthropic/chat/transformation.py``, ``main.py``'s
anthropic branch, ``prompt_templates/factory.py``'s ``anthropic_messages_pt``) and
where this differs:

* URL: ``api_base`` (``https://api.anthropic.com``) + ``/v1/messages``, unless it ends in
  ``/v1/messages`` already (LiteLLM's rule). One difference: a base ending in ``/v1``
  gets ``/messages`` (LiteLLM would send to ``/v1/v1/messages``, a 404).
* Headers (``router.backends.base.auth_headers``, computed with the deployment):
  ``anthropic-version: 2023-06-01`` always, ``x-api-key`` when the deployment has a key.
* ``max_tokens`` (Anthropic requires it): ``max_completion_tokens`` or ``max_tokens``, else
  the deployment's ``max_tokens``, else 4096 (LiteLLM's ``DEFAULT_ANTHROPIC_CHAT_MAX_TOKENS``).
  With thinking on and no limit asked for, at least the budget + 256 (LiteLLM sets
  exactly that; we keep the larger default so the answer has room after the thinking).
* ``system`` and ``developer`` messages, wherever they stand, become the top-level
  ``system``: a string for one plain text, else text blocks (``cache_control`` kept).
  Empty texts are left out (Anthropic refuses empty text blocks).
* Consecutive ``user`` and ``tool`` messages are one user turn, consecutive assistant
  messages one assistant turn (Anthropic wants them alternating). In a user turn the
  ``tool_result`` blocks come first, as Anthropic requires right after a ``tool_use``.
* Assistant ``tool_calls`` are ``tool_use`` blocks after the text; arguments that are not
  a JSON object are a 400. ``thinking_blocks`` an assistant message carries back (what
  LiteLLM answers with, signatures included) lead its turn; ``reasoning_content`` alone
  is dropped (Anthropic takes thinking back only signed). The last assistant turn's text
  loses trailing whitespace (Anthropic refuses it there).
* Images: ``data:`` URLs as base64 sources, http(s) URLs as ``url`` sources. A ``file``
  part with a PDF ``data:`` URL is a base64 ``document``. Other parts are a 400.
* Conversations with tool calls or results but no ``tools`` get LiteLLM's ``dummy_tool``
  (Anthropic refuses ``tool_use`` blocks without tools). ``tool_choice`` auto / required /
  none / named become ``auto`` / ``any`` / ``none`` / ``tool``; ``parallel_tool_calls:
  false`` sets ``disable_parallel_tool_use`` (not with ``none``), as LiteLLM does.
  A ``tool_choice`` without tools is not sent.
* ``stop`` becomes ``stop_sequences``; ``temperature``, ``top_p``, ``top_k``, ``stream`` pass;
  ``user`` becomes ``metadata.user_id`` unless it looks like an e-mail address or phone
  number (LiteLLM: Anthropic refuses those); a ``thinking`` object passes as given;
  ``reasoning_effort`` minimal/low/medium/high becomes thinking with a budget of
  1024/1024/2048/4096 tokens (LiteLLM's constants; ``none``: no thinking; another value
  is a 400). LiteLLM's adaptive thinking and ``output_config`` for newer models is not done.
* Refused (400), since leaving them out would answer something else than asked:
  ``n`` > 1, ``logprobs``, ``response_format`` json_object / json_schema (LiteLLM forces a
  tool call and rewrites the answer; not done here), audio output, legacy ``functions``;
  for completions also ``echo``, ``suffix``, ``best_of`` > 1, ``logprobs``, and prompts
  that are token ids or several.
* Dropped (hints Anthropic has no form for; LiteLLM drops them with ``drop_params``):
  ``presence_penalty``, ``frequency_penalty``, ``seed``, ``logit_bias``, ``top_logprobs``,
  ``stream_options`` (usage always comes), ``service_tier``, ``store``, ``metadata``,
  ``prediction``, ``web_search_options`` and anything else unknown.

Answers: text blocks joined into ``content``, ``tool_use`` blocks as ``tool_calls``
(arguments the JSON of ``input``), thinking as ``reasoning_content`` (and LiteLLM's
``thinking_blocks``); ``stop_reason`` as ``finish_reason`` (``FINISH_REASONS``); usage
with the cached and cache-written prompt tokens counted in ``prompt_tokens``, as LiteLLM
counts them, and the cached ones in ``prompt_tokens_details.cached_tokens``.
"""

from __future__ import annotations

import re
from typing import Any, NoReturn

import orjson

from router.domain import Deployment
from router.errors import BadRequest, RouterError, UpstreamError
from router.providers.anthropic_stream import FINISH_REASONS, StreamTranslator, finish_reason, usage
from router.providers.base import Context, error_event

PATH = "/v1/messages"
DEFAULT_MAX_TOKENS = 4096  # LiteLLM's DEFAULT_ANTHROPIC_CHAT_MAX_TOKENS
THINKING_ROOM = 256  # LiteLLM's DEFAULT_MAX_TOKENS, added to a thinking budget when no limit is asked for
THINKING_BUDGETS = {"minimal": 1024, "low": 1024, "medium": 2048, "high": 4096}  # Anthropic's minimum is 1024
DUMMY_TOOL = {"name": "dummy_tool", "description": "This is a dummy tool call",
              "input_schema": {"type": "object", "properties": {}}}  # LiteLLM's add_dummy_tool
STREAM_TYPE = "text/event-stream; charset=utf-8"  # router.providers.SSE_TYPE: the client gets OpenAI SSE

_EMAIL = re.compile(r"^[a-zA-Z0-9._%+-]+@[a-zA-Z0-9.-]+\.[a-zA-Z]{2,}$")  # LiteLLM's _valid_user_id
_PHONE = re.compile(r"^\+?[\d\s()-]{7,}$")
_DATA_URL = re.compile(r"data:([^;,]+);base64,(.*)", re.DOTALL)

__all__ = ["Anthropic", "FINISH_REASONS", "StreamTranslator", "chat_request", "completion_request", "messages_url",
           "message_response", "text_response"]


def _fail(message: str, param: str | None = None) -> NoReturn:
    raise BadRequest(message, param=param)


def messages_url(api_base: str) -> str:
    """Where the Messages API is under ``api_base`` (see the module docstring)."""
    base = api_base.rstrip("/")
    if base.endswith(PATH):
        return base
    return base + ("/messages" if base.endswith("/v1") else PATH)


# ---------------------------------------------------------------------------
# Content
# ---------------------------------------------------------------------------


def _cached(block: dict[str, Any], source: dict[str, Any]) -> dict[str, Any]:
    """``block`` with the ``cache_control`` of the part (or message) it came from."""
    if isinstance(source.get("cache_control"), dict):
        block["cache_control"] = source["cache_control"]
    return block


def _image(url: Any, where: str) -> dict[str, Any]:
    if not isinstance(url, str):
        _fail(f"{where}.image_url must be an object with a string url.", f"{where}.image_url")
    m = _DATA_URL.match(url)
    if m is not None:
        return {"type": "image", "source": {"type": "base64", "media_type": m.group(1), "data": m.group(2)}}
    if url.startswith(("https://", "http://")):
        return {"type": "image", "source": {"type": "url", "url": url}}
    _fail(f"{where}: an image for an Anthropic model must be a base64 data: URL or an http(s) URL.", f"{where}.image_url")


def _file(part: dict[str, Any], where: str) -> dict[str, Any]:
    file = part.get("file")
    data = file.get("file_data") if isinstance(file, dict) else None
    m = _DATA_URL.match(data) if isinstance(data, str) else None
    if m is None or m.group(1) != "application/pdf":
        _fail(f"{where}: a file for an Anthropic model must be a PDF given inline as file_data (a data: URL).", where)
    return {"type": "document", "source": {"type": "base64", "media_type": m.group(1), "data": m.group(2)}}


def _blocks(content: Any, where: str, *, images: bool) -> list[dict[str, Any]]:
    """A message's ``content`` (string or parts) as Anthropic blocks; empty texts left out."""
    if content is None:
        return []
    if isinstance(content, str):
        return [{"type": "text", "text": content}] if content else []
    if not isinstance(content, list):
        _fail(f"{where} must be a string, an array of content parts, or null.", where)
    out: list[dict[str, Any]] = []
    for j, part in enumerate(content):
        at = f"{where}[{j}]"
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text":
            if not isinstance(part.get("text"), str):
                _fail(f"{at}.text must be a string.", f"{at}.text")
            if part["text"]:
                out.append(_cached({"type": "text", "text": part["text"]}, part))
        elif kind == "image_url" and images:
            url = part.get("image_url")
            out.append(_cached(_image(url.get("url") if isinstance(url, dict) else url, at), part))
        elif kind == "file" and images:
            out.append(_cached(_file(part, at), part))
        else:
            _fail(f"{at}: a content part of type {kind!r} cannot be sent to an Anthropic model here.", f"{at}.type")
    return out


def _system(messages: list[Any]) -> str | list[dict[str, Any]] | None:
    blocks: list[dict[str, Any]] = []
    for i, msg in enumerate(messages):
        if msg.get("role") in ("system", "developer"):
            found = _blocks(msg.get("content"), f"messages[{i}].content", images=False)
            if found and isinstance(msg.get("content"), str):
                _cached(found[-1], msg)
            blocks.extend(found)
    if not blocks:
        return None
    if len(blocks) == 1 and set(blocks[0]) == {"type", "text"}:
        return blocks[0]["text"]
    return blocks


def _tool_use(call: Any, where: str) -> dict[str, Any]:
    fn = call.get("function") if isinstance(call, dict) else None
    if not isinstance(fn, dict) or not isinstance(fn.get("name"), str) or not isinstance(call.get("id"), str):
        _fail(f"{where} must have a string id and a function with a string name.", where)
    args = fn.get("arguments")
    if args is None or args == "":
        value: Any = {}
    elif isinstance(args, str):
        try:
            value = orjson.loads(args)
        except orjson.JSONDecodeError:
            _fail(f"{where}.function.arguments must be JSON (an object) for an Anthropic model.",
                  f"{where}.function.arguments")
    else:
        value = args
    if not isinstance(value, dict):
        _fail(f"{where}.function.arguments must be a JSON object for an Anthropic model.", f"{where}.function.arguments")
    return {"type": "tool_use", "id": call["id"], "name": fn["name"], "input": value}


def _tool_result(msg: dict[str, Any], where: str) -> dict[str, Any]:
    if not isinstance(msg.get("tool_call_id"), str):
        _fail(f"{where}.tool_call_id must be a string: the id of the tool call this answers.", f"{where}.tool_call_id")
    content = msg.get("content")
    out: dict[str, Any] = {"type": "tool_result", "tool_use_id": msg["tool_call_id"]}
    if isinstance(content, list):
        out["content"] = _blocks(content, f"{where}.content", images=True)
    elif content is not None:
        if not isinstance(content, str):
            _fail(f"{where}.content must be a string or an array of content parts.", f"{where}.content")
        out["content"] = content
    return _cached(out, msg)


def _thinking(msg: dict[str, Any], where: str) -> list[dict[str, Any]]:
    """Signed thinking an assistant message carries back (LiteLLM's ``thinking_blocks``)."""
    blocks = msg.get("thinking_blocks")
    if blocks is None:
        return []
    if not isinstance(blocks, list) or any(not isinstance(b, dict) or b.get("type") not in
                                           ("thinking", "redacted_thinking") for b in blocks):
        _fail(f"{where}.thinking_blocks must be an array of thinking blocks.", f"{where}.thinking_blocks")
    return list(blocks)


def _message(msg: Any, where: str) -> tuple[str, list[dict[str, Any]]] | None:
    """The side ("user" or "assistant") and blocks of one OpenAI message; None for a
    system or developer message (``_system`` takes those)."""
    if not isinstance(msg, dict):
        _fail(f"{where} must be an object.", where)
    role = msg.get("role")
    if role in ("system", "developer"):
        return None
    if role == "user":
        blocks = _blocks(msg.get("content"), f"{where}.content", images=True)
        if blocks and isinstance(msg.get("content"), str):
            _cached(blocks[-1], msg)
        return "user", blocks
    if role == "tool":
        return "user", [_tool_result(msg, where)]
    if role == "assistant":
        if msg.get("function_call") is not None:
            _fail(f"{where}.function_call: legacy function calls are not supported here; use tool_calls.",
                  f"{where}.function_call")
        calls = msg.get("tool_calls") or []
        if not isinstance(calls, list):
            _fail(f"{where}.tool_calls must be an array.", f"{where}.tool_calls")
        return "assistant", [*_thinking(msg, where), *_blocks(msg.get("content"), f"{where}.content", images=False),
                             *(_tool_use(c, f"{where}.tool_calls[{j}]") for j, c in enumerate(calls))]
    _fail(f"{where}.role {role!r} cannot be sent to an Anthropic model (system, developer, user, assistant or tool).",
          f"{where}.role")


def _turns(messages: list[Any]) -> list[dict[str, Any]]:
    """The non-system messages as alternating Anthropic turns. A message with nothing to
    send (empty content, no calls) is left out, as LiteLLM leaves it out."""
    turns: list[dict[str, Any]] = []
    for i, msg in enumerate(messages):
        found = _message(msg, f"messages[{i}]")
        if found is None or not found[1]:
            continue
        side, blocks = found
        if turns and turns[-1]["role"] == side:
            turns[-1]["content"].extend(blocks)
        else:
            turns.append({"role": side, "content": blocks})
    for turn in turns:
        if turn["role"] == "user":  # tool results first, in their order; then the rest
            turn["content"].sort(key=lambda b: b["type"] != "tool_result")
    if turns and turns[-1]["role"] == "assistant":
        last = turns[-1]["content"]
        for block in last:
            if block["type"] == "text":
                block["text"] = block["text"].rstrip()
        last[:] = [b for b in last if b["type"] != "text" or b["text"]]
        if not last:
            turns.pop()
    if not turns:
        _fail("messages must hold at least one user or assistant message with content "
              "(system messages alone are not a conversation).", "messages")
    for turn in turns:
        content = turn["content"]
        if len(content) == 1 and set(content[0]) == {"type", "text"}:
            turn["content"] = content[0]["text"]  # a plain turn as a plain string, as clients write it
    return turns


# ---------------------------------------------------------------------------
# Parameters
# ---------------------------------------------------------------------------


def _tools(tools: Any) -> list[dict[str, Any]]:
    if not isinstance(tools, list):
        _fail("tools must be an array of objects.", "tools")
    out: list[dict[str, Any]] = []
    for i, tool in enumerate(tools):
        where = f"tools[{i}]"
        if isinstance(tool, dict) and isinstance(tool.get("input_schema"), dict) and isinstance(tool.get("name"), str):
            out.append(tool)  # already Anthropic's shape (LiteLLM passes these on)
            continue
        fn = tool.get("function") if isinstance(tool, dict) else None
        if not isinstance(tool, dict) or tool.get("type", "function") != "function" or not isinstance(fn, dict) \
                or not isinstance(fn.get("name"), str):
            _fail(f"{where}: only function tools can be sent to an Anthropic model.", where)
        params = fn.get("parameters")
        if params is not None and not isinstance(params, dict):
            _fail(f"{where}.function.parameters must be an object (a JSON schema).", f"{where}.function.parameters")
        out_tool: dict[str, Any] = {"name": fn["name"]}
        if isinstance(fn.get("description"), str):
            out_tool["description"] = fn["description"]
        out_tool["input_schema"] = params if params is not None else {"type": "object", "properties": {}}
        cache = tool.get("cache_control", fn.get("cache_control"))
        if isinstance(cache, dict):
            out_tool["cache_control"] = cache
        out.append(out_tool)
    return out


def _tool_choice(choice: Any, parallel: Any) -> dict[str, Any] | None:
    """LiteLLM's ``_map_tool_choice``."""
    out: dict[str, Any] | None
    if choice is None:
        out = None
    elif choice in ("auto", "required", "none"):
        out = {"type": {"auto": "auto", "required": "any", "none": "none"}[choice]}
    elif isinstance(choice, dict) and isinstance(choice.get("function"), dict) \
            and isinstance(choice["function"].get("name"), str):
        out = {"type": "tool", "name": choice["function"]["name"]}
    else:
        _fail("tool_choice must be 'auto', 'required', 'none' or {\"type\": \"function\", \"function\": {\"name\": ...}}.",
              "tool_choice")
    if isinstance(parallel, bool) and choice != "none":
        out = out or {"type": "auto"}
        out["disable_parallel_tool_use"] = not parallel
    return out


def _has_tool_blocks(turns: list[dict[str, Any]]) -> bool:
    return any(isinstance(t["content"], list) and any(b["type"] in ("tool_use", "tool_result") for b in t["content"])
               for t in turns)


def _thinking_param(body: dict[str, Any]) -> dict[str, Any] | None:
    thinking = body.get("thinking")
    if thinking is not None:
        if not isinstance(thinking, dict):
            _fail("thinking must be an object, as Anthropic takes it.", "thinking")
        return thinking
    effort = body.get("reasoning_effort")
    if effort is None or effort == "none":
        return None
    if not isinstance(effort, str) or effort not in THINKING_BUDGETS:
        _fail(f"reasoning_effort must be one of none, {', '.join(THINKING_BUDGETS)}.", "reasoning_effort")
    return {"type": "enabled", "budget_tokens": THINKING_BUDGETS[effort]}


def _refuse_unsupported(body: dict[str, Any]) -> None:
    n = body.get("n")
    if n is not None and n != 1:
        _fail("n > 1 is not supported by Anthropic models; send n separate requests.", "n")
    if body.get("logprobs"):
        _fail("logprobs are not available from Anthropic models.", "logprobs")
    fmt = body.get("response_format")
    if isinstance(fmt, dict) and fmt.get("type") not in (None, "text"):
        _fail(f"response_format {fmt.get('type')!r} is not supported for Anthropic models by this router; ask for "
              "JSON in the prompt, or define a tool with the schema and force it with tool_choice.", "response_format")
    modalities = body.get("modalities")
    if body.get("audio") is not None or (isinstance(modalities, list) and "audio" in modalities):
        _fail("audio output is not available from Anthropic models.", "audio")
    if body.get("functions") is not None or body.get("function_call") is not None:
        _fail("legacy functions are not supported for Anthropic models here; use tools.", "functions")


def _common(body: dict[str, Any], model: str, default_max_tokens: int | None, thinking: dict[str, Any] | None
            ) -> dict[str, Any]:
    asked = body.get("max_completion_tokens")
    if asked is None:
        asked = body.get("max_tokens")
    max_tokens = asked if asked is not None else default_max_tokens if default_max_tokens is not None \
        else DEFAULT_MAX_TOKENS
    budget = thinking.get("budget_tokens") if thinking is not None else None
    if asked is None and type(budget) is int:
        max_tokens = max(max_tokens, budget + THINKING_ROOM)
    return {"model": model, "max_tokens": max_tokens}


def _options(out: dict[str, Any], body: dict[str, Any], thinking: dict[str, Any] | None) -> dict[str, Any]:
    stop = body.get("stop")
    if isinstance(stop, str):
        stop = [stop]
    if isinstance(stop, list) and stop:
        out["stop_sequences"] = stop
    for key in ("temperature", "top_p", "top_k"):
        if body.get(key) is not None:
            out[key] = body[key]
    user = body.get("user")
    if isinstance(user, str) and user and not _EMAIL.match(user) and not _PHONE.match(user):
        out["metadata"] = {"user_id": user}
    if thinking is not None:
        out["thinking"] = thinking
    if body.get("stream") is True:
        out["stream"] = True
    return out


# ---------------------------------------------------------------------------
# Requests
# ---------------------------------------------------------------------------


def chat_request(body: dict[str, Any], model: str, default_max_tokens: int | None = None) -> dict[str, Any]:
    """The Messages request asking what the OpenAI chat request ``body`` asks, sending
    ``model``. Raises ``BadRequest`` for what it cannot carry (see the module docstring)."""
    _refuse_unsupported(body)
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages or not all(isinstance(m, dict) for m in messages):
        _fail("messages is required and must be a non-empty array of objects.", "messages")
    thinking = _thinking_param(body)
    out = _common(body, model, default_max_tokens, thinking)
    system = _system(messages)
    if system is not None:
        out["system"] = system
    turns = _turns(messages)
    out["messages"] = turns
    tools = _tools(body["tools"]) if body.get("tools") is not None else []
    if not tools and _has_tool_blocks(turns):
        tools = [DUMMY_TOOL]
    if tools:
        out["tools"] = tools
        choice = _tool_choice(body.get("tool_choice"), body.get("parallel_tool_calls"))
        if choice is not None:
            out["tool_choice"] = choice
    return _options(out, body, thinking)


def completion_request(body: dict[str, Any], model: str, default_max_tokens: int | None = None) -> dict[str, Any]:
    """A legacy completion as one user turn of its prompt."""
    _refuse_unsupported(body)
    for key, bad in (("echo", body.get("echo") is True), ("suffix", body.get("suffix") is not None),
                     ("best_of", body.get("best_of") not in (None, 1)), ("logprobs", body.get("logprobs") is not None)):
        if bad:
            _fail(f"{key} is not supported for Anthropic models.", key)
    prompt = body.get("prompt")
    if isinstance(prompt, list):
        if len(prompt) != 1 or not isinstance(prompt[0], str):
            _fail("Anthropic models take one text prompt per request (not several, nor token ids).", "prompt")
        prompt = prompt[0]
    if not isinstance(prompt, str) or not prompt:
        _fail("prompt must be a non-empty string for an Anthropic model.", "prompt")
    thinking = _thinking_param(body)
    out = _common(body, model, default_max_tokens, thinking)
    out["messages"] = [{"role": "user", "content": prompt}]
    return _options(out, body, thinking)


_BUILDERS = {"chat": chat_request, "completions": completion_request}


# ---------------------------------------------------------------------------
# Answers
# ---------------------------------------------------------------------------


def _check(data: Any) -> dict[str, Any]:
    if not isinstance(data, dict):
        raise UpstreamError("anthropic answered with something that is not a JSON object")
    if data.get("type") == "error" or "error" in data:
        err = data.get("error")
        message = err.get("message") if isinstance(err, dict) else err
        raise UpstreamError(f"anthropic answered 200 with an error: {message}")
    if data.get("type") != "message" or not isinstance(data.get("content"), list):
        raise UpstreamError("anthropic answered with something that is not a Messages answer "
                            f"(type {data.get('type')!r})")
    return data


def _parts(data: dict[str, Any]) -> tuple[str, list[dict[str, Any]], list[dict[str, Any]]]:
    """The answer's text, its tool calls (OpenAI's shape) and its thinking blocks."""
    text: list[str] = []
    calls: list[dict[str, Any]] = []
    thinking: list[dict[str, Any]] = []
    for block in data["content"]:
        kind = block.get("type") if isinstance(block, dict) else None
        if kind == "text" and isinstance(block.get("text"), str):
            text.append(block["text"])
        elif kind == "tool_use":
            if not isinstance(block.get("name"), str) or not isinstance(block.get("id"), str):
                raise UpstreamError("anthropic sent a tool_use block without an id or a name")
            calls.append({"id": block["id"], "type": "function",
                          "function": {"name": block["name"], "arguments": orjson.dumps(block.get("input", {})).decode()}})
        elif kind in ("thinking", "redacted_thinking"):
            thinking.append(block)
        # server tool blocks (web search, code execution: Anthropic ran them) have no chat form
    return "".join(text), calls, thinking


def message_response(data: Any, ctx: Context) -> dict[str, Any]:
    """The OpenAI ``chat.completion`` for a Messages answer."""
    data = _check(data)
    text, calls, thinking = _parts(data)
    message: dict[str, Any] = {"role": "assistant", "content": text if text or not calls else None}
    if calls:
        message["tool_calls"] = calls
    reasoning = "".join(b.get("thinking") or "" for b in thinking if isinstance(b.get("thinking"), str))
    if reasoning:
        message["reasoning_content"] = reasoning
    if thinking:
        message["thinking_blocks"] = thinking  # LiteLLM's field: a client sends them back with the next turn
    return {"id": ctx.id, "object": "chat.completion", "created": ctx.created, "model": ctx.model,
            "choices": [{"index": 0, "message": message, "logprobs": None,
                         "finish_reason": finish_reason(data.get("stop_reason"))}],
            "usage": usage(data.get("usage"))}


def text_response(data: Any, ctx: Context) -> dict[str, Any]:
    """The OpenAI ``text_completion`` for a Messages answer to a legacy completion."""
    data = _check(data)
    text, _calls, _thinking = _parts(data)
    return {"id": ctx.id, "object": "text_completion", "created": ctx.created, "model": ctx.model,
            "choices": [{"index": 0, "text": text, "logprobs": None,
                         "finish_reason": finish_reason(data.get("stop_reason"))}],
            "usage": usage(data.get("usage"))}


_RESPONSES = {"chat": message_response, "completions": text_response}


# ---------------------------------------------------------------------------
# The adapter
# ---------------------------------------------------------------------------


def _stream_error(exc: RouterError, translator: Any = None) -> bytes:
    if translator is not None and hasattr(translator, "abort"):
        return translator.abort(exc)
    return error_event(exc.message, exc.type, exc.code)


class Anthropic:
    """The ``anthropic`` wire format: Anthropic's Messages API."""

    rewrites = True
    stream_type = STREAM_TYPE
    stream_error = staticmethod(_stream_error)

    def upstream_request(self, endpoint: str, body: dict[str, Any], deployment: Deployment, model: str) -> tuple[str, bytes]:
        builder = _BUILDERS.get(endpoint)
        if builder is None:
            raise BadRequest(f"anthropic does not serve {endpoint}", param="model")
        return messages_url(deployment.api_base), orjson.dumps(builder(body, model, deployment.max_tokens))

    def response_body(self, endpoint: str, raw: bytes, ctx: Context, provider: str) -> bytes:
        try:
            data = orjson.loads(raw)
        except orjson.JSONDecodeError:
            raise UpstreamError(f"{provider} answered with a body that is not JSON: {raw[:100]!r}") from None
        try:
            return orjson.dumps(_RESPONSES[endpoint](data, ctx))
        except UpstreamError as exc:
            raise UpstreamError(f"{provider}: {exc.message}") from None
        except (AttributeError, TypeError, ValueError, KeyError) as exc:
            raise UpstreamError(f"{provider} answered with an unexpected Messages shape ({exc!r})") from None

    def is_stream(self, content_type: str) -> bool:
        return content_type.startswith("text/event-stream")

    def translator(self, endpoint: str, ctx: Context) -> StreamTranslator:
        return StreamTranslator(endpoint, ctx)
