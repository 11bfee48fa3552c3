"""Ollama's own API as a front door: ``/api/chat``, ``/api/generate``, ``/api/embed`` and
the legacy ``/api/embeddings``, for Open WebUI, the ``ollama`` Python library and
whatever else was written against an Ollama server.

An Ollama backend gets the body as the client sent it, only the model name replaced,
and its answer (JSON, or an NDJSON stream) goes back byte for byte. An
OpenAI-compatible backend (vLLM, llama-server, llama-cpp-python) gets the request
translated into chat, completions or embeddings, and its answer is rewritten as Ollama
writes its own.

Shapes follow Ollama's source, read and not copied: ``api/types.go`` (field names, and
their order: Go's encoder writes struct fields in declaration order, ``omitempty``
drops zero values; since v0.12 a chat answer has ``done`` before ``done_reason``, and
since v0.12.10 a tool call carries an ``id``), ``server/routes.go`` (handlers, error
texts, ``streamResponse``: an error inside a stream is one ``{"error": "..."}`` line)
and ``llm/llama_server.go``, Ollama's own translation of a chat into llama-server's
OpenAI API, which this one agrees with where both translate: ``format`` "json" is
``json_object`` and a schema is ``json_schema`` named "schema", ``think`` goes into
``chat_template_kwargs``, images become data URLs typed by their first bytes
(JPEG when unknown), assistant thinking in the history is not sent, and llama-server's
``timings`` give the eval durations.

Choices made where no server decides:

* Durations the backend does not report are left out (Ollama's ``Metrics`` are all
  ``omitempty``; the ``ollama`` client's types make them optional): ``total_duration``
  and ``load_duration`` always, ``prompt_eval_duration``/``eval_duration`` unless
  llama-server's ``timings`` give them. ``created_at`` is ``Context.created`` in Go's
  format (whole seconds: Go writes no fraction then); no clock is read here.
* Tool calls from Ollama's history that carry no ``id`` (clients before v0.12.10) get a
  stable one from their position, ``call_`` + 9 digits (the same prompt every turn, so a
  backend's prefix cache still hits; its last 9 characters are alphanumeric, which
  vLLM's Mistral tokenizer requires). A ``tool`` message without ``tool_call_id`` answers
  the preceding assistant's first unanswered call of its ``tool_name`` (else the first
  unanswered one), as Ollama's own ``/v1`` layer pairs them by name.
* A request Ollama answers without generating (chat without messages, embed without
  input: "load the model") has no OpenAI form: ``to_pivot`` refuses it. A generate
  with an empty prompt is still sent, with ``max_tokens`` 1, so it costs one token and
  checks the backend serves the model.
* ``/api/generate`` stays a completions request: ``system``, ``template``, ``images``
  and ``context`` need Ollama's templating, which a completions endpoint does not do,
  so ``to_pivot`` refuses them (use ``/api/chat``); the prompt goes as it is, which is
  what Ollama's ``raw`` means. Without ``num_predict`` it sends ``max_tokens: null``
  (vLLM's completions default is 16 tokens; Ollama's is no limit).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
import binascii
import math
import re
from datetime import datetime, timezone
from typing import Any

import orjson

from router.config import Limits
from router.doors.base import MAX_LINE, FromOpenAI, Lines, OpenAIEvents
from router.domain import Deployment
from router.errors import BadRequest, RouterError, UpstreamError
from router.providers.base import Context, StreamTranslator
from router.routing.resolve import MAX_MODEL_NAME
from router.validate import MAX_DIMENSIONS

NDJSON = "application/x-ndjson"
THINK_LEVELS = ("low", "medium", "high", "max")  # api.ThinkValue's strings
MAX_TOP_LOGPROBS = 20  # routes.go: "top_logprobs must be between 0 and 20"

# A Go duration (time.ParseDuration), as keep_alive takes one: "5m", "1h30m", "-1s", "0".
_DURATION = re.compile(r"[-+]?(?:0|(?:(?:\d+\.?\d*|\.\d+)(?:ns|us|µs|μs|ms|s|m|h))+)\Z", re.ASCII)

# api.Options' fields by JSON type (Options.FromMap checks these; others are ignored with a warning).
_INT_OPTIONS = frozenset(("num_keep", "seed", "num_predict", "top_k", "repeat_last_n", "num_ctx", "num_batch",
                          "num_gpu", "main_gpu", "num_thread", "draft_num_predict"))
_FLOAT_OPTIONS = frozenset(("top_p", "min_p", "typical_p", "temperature", "repeat_penalty", "presence_penalty",
                            "frequency_penalty"))
_BOOL_OPTIONS = frozenset(("use_mmap",))

# Ollama option -> the OpenAI-compatible servers' names for it. vLLM calls repeat_penalty
# repetition_penalty, llama-server and llama-cpp-python repeat_penalty: both are sent, and each
# server ignores the other's (vLLM logs that it did). typical_p, repeat_last_n and n_keep only
# llama-server reads. Load-time options (num_ctx, num_batch, num_gpu, main_gpu, use_mmap,
# num_thread, draft_num_predict) are dropped: a translated backend loaded its model itself.
_SAME = ("temperature", "top_p", "min_p", "frequency_penalty", "presence_penalty", "typical_p")
_IMAGE_TYPES = ((b"\x89PNG\r\n\x1a\n", "image/png"), (b"\xff\xd8\xff", "image/jpeg"), (b"GIF87a", "image/gif"),
                (b"GIF89a", "image/gif"), (b"BM", "image/bmp"))


# ---------------------------------------------------------------------------
# Small helpers
# ---------------------------------------------------------------------------


def go_time(ns: int) -> str:
    """``ns`` nanoseconds since the epoch as Go marshals a UTC ``time.Time``
    (RFC 3339, up to nine fractional digits with trailing zeros dropped, ``Z``):
    Ollama's ``created_at``."""
    seconds, frac = divmod(ns, 1_000_000_000)
    stamp = datetime.fromtimestamp(seconds, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S")
    return stamp + (f".{frac:09d}".rstrip("0") if frac else "") + "Z"


def error_line(message: str) -> bytes:
    """The line Ollama's ``streamResponse`` writes when a stream fails after its start."""
    return orjson.dumps({"error": message}) + b"\n"


def _message_of(error: Any) -> str:
    """The text of an error value: Ollama's string, or OpenAI's ``{"message": ...}``."""
    if isinstance(error, dict):
        return str(error.get("message") or error)
    return str(error)


def _count(value: Any) -> int:
    """A token count from a backend: a non-negative int, else 0 (absent)."""
    return value if type(value) is int and value > 0 else 0


def _ms_to_ns(value: Any) -> int:
    """llama-server's milliseconds as Go's nanosecond durations; 0 (absent) if not a finite
    non-negative number."""
    if type(value) not in (int, float) or not 0 <= value < math.inf:
        return 0
    return min(round(value * 1_000_000), 2**63 - 1)


def _counted(metrics: dict[str, Any]) -> dict[str, int] | None:
    """The stream's usage from Ollama's counts; ``None`` when it gave none (a load-only answer)."""
    prompt, completion = _count(metrics.get("prompt_eval_count")), _count(metrics.get("eval_count"))
    if not prompt and not completion:
        return None
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def _done_reason(finish: Any) -> str:
    """Ollama's ``done_reason`` for an OpenAI ``finish_reason``: "length" stays, every other
    ending (tool calls included, as Ollama reports them) is "stop"."""
    return "length" if finish == "length" else "stop"


def _metrics(usage: Any, timings: Any) -> dict[str, int]:
    """api.Metrics from OpenAI ``usage`` (and llama-server's ``timings``), in Ollama's
    order, zero values left out as ``omitempty`` does."""
    usage = usage if isinstance(usage, dict) else {}
    timings = timings if isinstance(timings, dict) else {}
    out = {
        "prompt_eval_count": _count(usage.get("prompt_tokens")) or _count(timings.get("cache_n")) + _count(timings.get("prompt_n")),
        "prompt_eval_duration": _ms_to_ns(timings.get("prompt_ms")),
        "eval_count": _count(usage.get("completion_tokens")) or _count(timings.get("predicted_n")),
        "eval_duration": _ms_to_ns(timings.get("predicted_ms")),
    }
    return {k: v for k, v in out.items() if v}


def _is_object(line: bytes) -> bool:
    try:
        return isinstance(orjson.loads(line), dict)
    except orjson.JSONDecodeError:
        return False


def _arguments(text: str, name: str) -> dict[str, Any]:
    """OpenAI's arguments string as the object Ollama sends. Raises ``ValueError``."""
    if not text.strip():
        return {}
    try:
        value = orjson.loads(text)
    except orjson.JSONDecodeError:
        value = None
    if not isinstance(value, dict):
        raise ValueError(f"the backend sent arguments for tool {name!r} that are not a JSON object")
    return value


# ---------------------------------------------------------------------------
# Request checks (parse)
# ---------------------------------------------------------------------------


def _decode(raw: bytes) -> dict[str, Any]:
    if not raw.strip():
        raise BadRequest("missing request body")
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise BadRequest(f"invalid JSON in the request body: {exc}") from None
    if not isinstance(body, dict):
        raise BadRequest("the request body must be a JSON object")
    return body


def _model(body: dict[str, Any]) -> None:
    model = body.get("model")
    if model is None or model == "":
        raise BadRequest("model is required", param="model")  # Ollama's own words (routes.go)
    if type(model) is not str:
        raise BadRequest("model must be a string", param="model")
    if len(model) > MAX_MODEL_NAME:
        raise BadRequest(f"model must be at most {MAX_MODEL_NAME} characters", param="model")
    if not model.isprintable():
        raise BadRequest("model must not contain control characters", param="model")


def _typed(body: dict[str, Any], key: str, kind: type, what: str, where: str = "") -> None:
    """``body[key]`` is absent, null, or of ``kind`` (bool is not an int here)."""
    value = body.get(key)
    if value is not None and type(value) is not kind:
        raise BadRequest(f"{where}{key} must be {what}", param=f"{where}{key}")


def _options(options: Any) -> None:
    """The options Ollama's ``Options.FromMap`` type-checks, with its messages."""
    if options is None:
        return
    if type(options) is not dict:
        raise BadRequest("options must be an object", param="options")
    for key, value in options.items():
        if value is None:
            continue  # FromMap skips nulls
        param = f"options.{key}"
        if key in _INT_OPTIONS or key in _FLOAT_OPTIONS:
            if type(value) not in (int, float) or not -2**63 < value < 2**63:  # Go's int64 and finite floats
                kind = "integer" if key in _INT_OPTIONS else "float32"
                raise BadRequest(f"option {key!r} must be of type {kind}", param=param)
        elif key in _BOOL_OPTIONS and type(value) is not bool:
            raise BadRequest(f"option {key!r} must be of type boolean", param=param)
        elif key == "stop" and (type(value) is not list or any(type(s) is not str for s in value)):
            raise BadRequest("option 'stop' must be an array of strings", param=param)


def _format(value: Any) -> None:
    if value is None or value in ("", "json") or type(value) is dict:
        return
    raise BadRequest(f'invalid format: {orjson.dumps(value).decode()[:100]}; expected "json" or a valid JSON Schema object',
                     param="format")


def _keep_alive(value: Any) -> None:
    if value is None or (type(value) in (int, float) and math.isfinite(value)):
        return
    if type(value) is str and _DURATION.match(value):
        return
    raise BadRequest("keep_alive must be a number of seconds or a duration such as \"5m\"", param="keep_alive")


def _think(value: Any) -> None:
    if value is None or type(value) is bool or value in THINK_LEVELS:
        return
    raise BadRequest('think must be a boolean or string ("high", "medium", "low", "max", true, or false)', param="think")


def _tools(tools: Any) -> None:
    if tools is None:
        return
    if type(tools) is not list:
        raise BadRequest("tools must be an array", param="tools")
    for i, tool in enumerate(tools):
        if type(tool) is not dict or type(tool.get("function", {})) is not dict:
            raise BadRequest(f"tools[{i}] must be an object whose function is an object", param=f"tools[{i}]")


def _images(images: Any, where: str) -> None:
    if images is None:
        return
    if type(images) is not list or any(type(image) is not str for image in images):
        raise BadRequest(f"{where} must be an array of base64 strings", param=where)


def _tool_call(call: Any, where: str) -> None:
    if type(call) is not dict or type(call.get("function")) is not dict:
        raise BadRequest(f"{where} must be an object whose function is an object", param=where)
    fn = call["function"]
    if type(fn.get("name")) is not str:
        raise BadRequest(f"{where}.function.name must be a string", param=f"{where}.function.name")
    arguments = fn.get("arguments")
    if arguments is not None and type(arguments) is not dict:
        raise BadRequest(f"{where}.function.arguments must be an object", param=f"{where}.function.arguments")
    _typed(call, "id", str, "a string", f"{where}.")
    _typed(fn, "index", int, "an integer", f"{where}.function.")


def _messages(messages: Any, cap: int) -> None:
    if messages is None:
        return  # no messages: Ollama loads the model
    if type(messages) is not list:
        raise BadRequest("messages must be an array", param="messages")
    if len(messages) > cap:
        raise BadRequest(f"messages must have at most {cap} entries", param="messages")
    for i, msg in enumerate(messages):
        where = f"messages[{i}]"
        if type(msg) is not dict:
            raise BadRequest(f"{where} must be an object", param=where)
        if type(msg.get("role")) is not str:
            raise BadRequest(f"{where}.role must be a string", param=f"{where}.role")
        for key in ("content", "thinking", "tool_name", "tool_call_id"):
            _typed(msg, key, str, "a string", f"{where}.")
        _images(msg.get("images"), f"{where}.images")
        calls = msg.get("tool_calls")
        if calls is not None:
            if type(calls) is not list:
                raise BadRequest(f"{where}.tool_calls must be an array", param=f"{where}.tool_calls")
            for j, call in enumerate(calls):
                _tool_call(call, f"{where}.tool_calls[{j}]")


def _generation(body: dict[str, Any]) -> None:
    """What /api/chat and /api/generate share."""
    for key in ("stream", "truncate", "shift", "logprobs"):
        _typed(body, key, bool, "a boolean")
    top = body.get("top_logprobs")
    if top is not None and (type(top) is not int or not 0 <= top <= MAX_TOP_LOGPROBS):
        raise BadRequest(f"top_logprobs must be between 0 and {MAX_TOP_LOGPROBS}", param="top_logprobs")
    _format(body.get("format"))
    _options(body.get("options"))
    _keep_alive(body.get("keep_alive"))
    _think(body.get("think"))
    _tools(body.get("tools"))


def _embed_input(value: Any, cap: int) -> None:
    if value is None or type(value) is str:
        return
    if type(value) is not list or any(type(v) is not str for v in value):
        raise BadRequest("invalid input type: input must be a string or an array of strings", param="input")
    if len(value) > cap:
        raise BadRequest(f"input must have at most {cap} entries", param="input")


# ---------------------------------------------------------------------------
# Ollama request -> OpenAI request (to_pivot)
# ---------------------------------------------------------------------------


def _media_type(image: str, where: str) -> str:
    """The image's type from its first bytes (as Go's http.DetectContentType, which
    Ollama uses); JPEG when unknown, as Ollama assumes."""
    try:
        head = binascii.a2b_base64(image[:24], strict_mode=True)
    except ValueError:  # binascii.Error, or a character outside ASCII
        raise BadRequest(f"{where} is not base64 image data", param=where) from None
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "image/webp"
    return next((kind for magic, kind in _IMAGE_TYPES if head.startswith(magic)), "image/jpeg")


def _content(msg: dict[str, Any], where: str) -> str | list[dict[str, Any]]:
    text = msg.get("content") or ""
    images = msg.get("images")
    if not images:
        return text
    parts: list[dict[str, Any]] = [{"type": "text", "text": text}] if text else []
    for j, image in enumerate(images):
        url = f"data:{_media_type(image, f'{where}.images[{j}]')};base64,{image}"
        parts.append({"type": "image_url", "image_url": {"url": url}})
    return parts


def call_id(message: int, call: int) -> str:
    """The id of a tool call Ollama's history gave without one: stable, from its place."""
    return f"call_{message:05d}{call:04d}"


def _answered(pending: list[tuple[str, str]], name: str | None) -> str | None:
    """The id of the call a tool result without ``tool_call_id`` answers, taken off ``pending``."""
    for k, (cid, cname) in enumerate(pending):
        if not name or cname == name:
            del pending[k]
            return cid
    return pending.pop(0)[0] if pending else None


def openai_messages(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Ollama's messages as OpenAI's: images as data-URL parts, tool calls with ids and
    string arguments, tool results paired with their calls. Thinking is not sent."""
    out = []
    pending: list[tuple[str, str]] = []  # (id, name) of the last assistant's calls not yet answered
    for i, msg in enumerate(messages):
        role = msg["role"].lower()  # Ollama lower-cases roles when it reads them
        item: dict[str, Any] = {"role": role, "content": _content(msg, f"messages[{i}]")}
        calls = msg.get("tool_calls")
        if calls:
            item["tool_calls"] = [
                {"id": call.get("id") or call_id(i, k), "type": "function",
                 "function": {"name": call["function"]["name"],
                              "arguments": orjson.dumps(call["function"].get("arguments") or {}).decode()}}
                for k, call in enumerate(calls)]
            pending = [(c["id"], c["function"]["name"]) for c in item["tool_calls"]]
        elif role == "tool":
            given = msg.get("tool_call_id")
            if given:
                pending = [p for p in pending if p[0] != given]
            answered = given or _answered(pending, msg.get("tool_name"))
            if answered:
                item["tool_call_id"] = answered
            if msg.get("tool_name"):
                item["name"] = msg["tool_name"]
        else:
            pending = []
        out.append(item)
    return out


def sampling(options: dict[str, Any] | None) -> dict[str, Any]:
    """Ollama's options as OpenAI-compatible sampling parameters (see ``_SAME``).
    ``num_predict`` <= 0, ``top_k`` <= 0 and ``seed`` < 0 mean "no limit", "off" and
    "random" to Ollama: they are left to the backend's defaults."""
    if not options:
        return {}
    out: dict[str, Any] = {}
    value = options.get("num_predict")
    if value is not None and value > 0:
        out["max_tokens"] = int(value)
    for key in _SAME:
        if options.get(key) is not None:
            out[key] = options[key]
    if (value := options.get("top_k")) is not None and value > 0:
        out["top_k"] = int(value)
    if (value := options.get("seed")) is not None and value >= 0:
        out["seed"] = int(value)
    if options.get("stop") is not None:
        out["stop"] = options["stop"]
    if (value := options.get("repeat_penalty")) is not None:
        out["repetition_penalty"] = out["repeat_penalty"] = value
    if (value := options.get("repeat_last_n")) is not None:
        out["repeat_last_n"] = int(value)
    if (value := options.get("num_keep")) is not None:
        out["n_keep"] = int(value)
    return out


def response_format(fmt: Any) -> dict[str, Any] | None:
    """``format`` as OpenAI's ``response_format`` (as Ollama's llama-server runner sends it)."""
    if fmt == "json":
        return {"type": "json_object"}
    if isinstance(fmt, dict):
        return {"type": "json_schema", "json_schema": {"name": "schema", "schema": fmt}}
    return None


def thinking(think: Any) -> dict[str, Any]:
    """``think`` for vLLM and llama-server: ``chat_template_kwargs.enable_thinking`` (the
    switch Qwen3, DeepSeek and GLM templates read; Ollama's llama-server runner sends the
    same), and for a level ``reasoning_effort`` too, in the template's kwargs and as vLLM's
    own field (which gpt-oss reads; "max" goes there as "high", as Ollama does for
    gpt-oss, since vLLM before DeepSeek V4 refuses "max")."""
    if think is None:
        return {}
    if isinstance(think, bool):
        return {"chat_template_kwargs": {"enable_thinking": think}}
    return {"chat_template_kwargs": {"enable_thinking": True, "reasoning_effort": think},
            "reasoning_effort": "high" if think == "max" else think}


def _streaming(out: dict[str, Any], body: dict[str, Any], loads_only: bool = False) -> None:
    """Stream as the client asked (Ollama's default: yes), except a request that only loads
    the model: Ollama answers that with one JSON object, and so does the door."""
    if body.get("stream") is not False and not loads_only:
        out["stream"] = True
        out["stream_options"] = {"include_usage": True}
    else:
        out["stream"] = False


def chat_request(body: dict[str, Any]) -> dict[str, Any]:
    """An /api/chat body as an OpenAI chat request."""
    if not body.get("messages"):
        raise BadRequest("messages is empty: Ollama would only load the model, which an OpenAI-compatible "
                         "backend cannot do; send at least one message", param="messages")
    out: dict[str, Any] = {"model": body["model"], "messages": openai_messages(body["messages"])}
    _streaming(out, body)
    out.update(sampling(body.get("options")))
    if body.get("tools"):
        out["tools"] = body["tools"]
    if (fmt := response_format(body.get("format"))) is not None:
        out["response_format"] = fmt
    out.update(thinking(body.get("think")))
    return out


_TEMPLATED = {
    "system": "system needs the model's prompt template, which only an Ollama backend applies; use /api/chat",
    "template": "template is Ollama's own prompt template, which only an Ollama backend applies; use /api/chat",
    "images": "images need the model's prompt template, which only an Ollama backend applies; use /api/chat",
    "context": "context holds an Ollama backend's token ids, which no other backend reads; use /api/chat",
}


def generate_request(body: dict[str, Any]) -> dict[str, Any]:
    """An /api/generate body as an OpenAI completions request (see the module's notes)."""
    for key, why in _TEMPLATED.items():
        if body.get(key):
            raise BadRequest(why, param=key)
    prompt = body.get("prompt") or ""
    out: dict[str, Any] = {"model": body["model"], "prompt": prompt}
    if body.get("suffix"):
        out["suffix"] = body["suffix"]
    _streaming(out, body, loads_only=not prompt)
    params = sampling(body.get("options"))
    out["max_tokens"] = params.pop("max_tokens", None if prompt else 1)
    out.update(params)
    if (fmt := response_format(body.get("format"))) is not None:
        out["response_format"] = fmt
    return out


def embed_request(body: dict[str, Any]) -> dict[str, Any]:
    """An /api/embed body as an OpenAI embeddings request (``truncate``, ``options`` and
    ``keep_alive`` have no OpenAI form and are dropped)."""
    value = body.get("input")
    if not value:
        raise BadRequest("input is empty: Ollama would only load the model, which an OpenAI-compatible "
                         "backend cannot do", param="input")
    out: dict[str, Any] = {"model": body["model"], "input": value}
    if body.get("dimensions"):
        out["dimensions"] = body["dimensions"]
    return out


def embeddings_request(body: dict[str, Any]) -> dict[str, Any]:
    """A legacy /api/embeddings body (one ``prompt``) as an OpenAI embeddings request."""
    if not body.get("prompt"):
        raise BadRequest("prompt is empty: Ollama answers an empty embedding without the model, which an "
                         "OpenAI-compatible backend cannot do", param="prompt")
    return {"model": body["model"], "input": body["prompt"]}


# ---------------------------------------------------------------------------
# OpenAI answer -> Ollama answer (from_pivot)
# ---------------------------------------------------------------------------


def _choice(data: Any) -> dict[str, Any]:
    choices = data.get("choices") if isinstance(data, dict) else None
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        raise UpstreamError("the backend's answer has no choices")
    return choices[0]


def _head(ctx: Context) -> dict[str, Any]:
    return {"model": ctx.model, "created_at": go_time(ctx.created * 1_000_000_000)}


def ollama_tool_call(call: Any, position: int) -> dict[str, Any]:
    """An OpenAI tool call as Ollama's: ``{"id"?, "function": {"index", "name",
    "arguments": {...}}}``. Raises ``ValueError`` for a shape it cannot read."""
    fn = call.get("function") if isinstance(call, dict) else None
    if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
        raise ValueError("the backend sent a tool call without a function name")
    args = fn.get("arguments")
    if args is not None and not isinstance(args, (str, dict)):
        raise ValueError(f"the backend sent arguments for tool {fn['name']!r} that are not a JSON object")
    arguments = args if isinstance(args, dict) else _arguments(args or "", fn["name"])
    out: dict[str, Any] = {"id": call["id"]} if isinstance(call.get("id"), str) and call["id"] else {}
    index = call.get("index")
    out["function"] = {"index": index if type(index) is int else position, "name": fn["name"], "arguments": arguments}
    return out


def chat_answer(data: dict[str, Any], ctx: Context) -> dict[str, Any]:
    """An OpenAI chat completion as Ollama's /api/chat answer (api.ChatResponse)."""
    choice = _choice(data)
    message = choice.get("message")
    if not isinstance(message, dict):
        raise UpstreamError("the backend's answer has no message")
    content = message.get("content")
    out_msg: dict[str, Any] = {"role": "assistant", "content": content if isinstance(content, str) else ""}
    reasoning = message.get("reasoning_content") or message.get("reasoning")
    if isinstance(reasoning, str) and reasoning:
        out_msg["thinking"] = reasoning
    calls = message.get("tool_calls")
    if calls:
        try:
            out_msg["tool_calls"] = [ollama_tool_call(c, i) for i, c in enumerate(calls)]
        except (ValueError, TypeError) as exc:
            raise UpstreamError(str(exc)) from None
    return {**_head(ctx), "message": out_msg, "done": True,
            "done_reason": _done_reason(choice.get("finish_reason")),
            **_metrics(data.get("usage"), data.get("timings"))}


def generate_answer(data: dict[str, Any], ctx: Context) -> dict[str, Any]:
    """An OpenAI completion as Ollama's /api/generate answer (api.GenerateResponse; no
    ``context``: there are no Ollama token ids to give)."""
    choice = _choice(data)
    text = choice.get("text")
    return {**_head(ctx), "response": text if isinstance(text, str) else "", "done": True,
            "done_reason": _done_reason(choice.get("finish_reason")),
            **_metrics(data.get("usage"), data.get("timings"))}


_NUMBERS = {float, int}


def _vectors(data: Any) -> list[list[float]]:
    items = data.get("data") if isinstance(data, dict) else None
    if not isinstance(items, list) or not all(isinstance(i, dict) and isinstance(i.get("embedding"), list)
                                              and set(map(type, i["embedding"])) <= _NUMBERS for i in items):
        raise UpstreamError("the backend's embeddings answer has no list of float vectors")
    ordered = sorted(items, key=lambda item: item["index"] if type(item.get("index")) is int else 0)
    return [item["embedding"] for item in ordered]


def embed_answer(data: dict[str, Any], ctx: Context) -> dict[str, Any]:
    """An OpenAI embeddings answer as Ollama's /api/embed answer (api.EmbedResponse)."""
    out: dict[str, Any] = {"model": ctx.model, "embeddings": _vectors(data)}
    usage = data.get("usage") if isinstance(data.get("usage"), dict) else {}
    if tokens := _count(usage.get("prompt_tokens")):
        out["prompt_eval_count"] = tokens
    return out


def embeddings_answer(data: dict[str, Any], ctx: Context) -> dict[str, Any]:
    """An OpenAI embeddings answer as the legacy /api/embeddings one (api.EmbeddingResponse)."""
    vectors = _vectors(data)
    if not vectors:
        raise UpstreamError("the backend's embeddings answer has no vector")
    return {"embedding": vectors[0]}


# ---------------------------------------------------------------------------
# Streams
# ---------------------------------------------------------------------------


class NativeStream:
    """An Ollama backend's NDJSON stream, relayed unchanged in whole lines (Ollama ends
    them with "\\n"; a "\\r\\n" would go on as "\\n"), each line parsed. Finished at
    the line with ``"done": true`` (its counts are the usage); failed at an
    ``{"error": ...}`` line (relayed, then nothing more) or a line that is not a JSON
    object, or an end before ``done`` (then with an error line of our own)."""

    __slots__ = ("finished", "failed", "error", "usage", "_lines")

    def __init__(self) -> None:
        self.finished = False
        self.failed = False
        self.error = ""
        self.usage: dict[str, int] | None = None
        self._lines = Lines()

    def feed(self, chunk: bytes) -> bytes:
        if self.finished:
            return b""
        try:
            lines = self._lines.feed(chunk)
        except ValueError as exc:
            return self._fail(f"Ollama sent {exc}")
        out = bytearray()
        for line in lines:
            out += self._line(line)
            if self.finished:
                break
        return bytes(out)

    def close(self) -> bytes:
        if self.finished:
            return b""
        out = b""
        rest = self._lines.rest()
        if rest.strip() and _is_object(rest):  # a whole last line without its newline; a cut one is not relayed
            out = self._line(rest)
            if self.finished:
                return out
        return out + self._fail("Ollama ended the stream before it was done")

    def _line(self, line: bytes) -> bytes:
        if not line.strip():
            return line + b"\n"
        try:
            obj = orjson.loads(line)
        except orjson.JSONDecodeError:
            obj = None
        if not isinstance(obj, dict):
            return self._fail("Ollama sent a stream line that is not a JSON object")
        if "error" in obj:
            self.finished = self.failed = True
            self.error = _message_of(obj["error"])
        elif obj.get("done") is True:
            self.finished = True
            self.usage = _counted(obj)
        return line + b"\n"

    def _fail(self, message: str) -> bytes:
        self.finished = self.failed = True
        self.error = message
        return error_line(message)


class PivotStream(FromOpenAI):
    """An OpenAI SSE stream (chat or completions chunks), cut anywhere, as the NDJSON
    lines Ollama streams: one line per content or thinking delta, a tool call whole in
    one line once its fragments are complete (at the finish), and the done line with
    the counts at ``[DONE]`` (usage may come after the finish). An error object, a line
    that is not JSON or an end before the finish fails the stream with an error line;
    an end after the finish without ``[DONE]`` still gets the done line."""

    __slots__ = ("finished", "failed", "error", "usage", "_events", "_head", "_key", "_finish", "_calls",
                 "_call_bytes", "_usage", "_timings")

    def __init__(self, ctx: Context, key: str) -> None:
        self.finished = False
        self.failed = False
        self.error = ""
        self.usage: dict[str, int] | None = None
        self._events = OpenAIEvents()
        self._head = orjson.dumps(_head(ctx))[:-1]  # every line starts with model and created_at
        self._key = key  # "message" (chat) or "response" (generate)
        self._finish: str | None = None
        self._calls: dict[int, list[Any]] = {}  # index -> [id, name, argument fragments]
        self._call_bytes = 0
        self._usage: Any = None
        self._timings: Any = None

    def _object(self, obj: dict[str, Any]) -> bytes:
        return self._chunk(obj)

    def _malformed(self, exc: ValueError) -> bytes:
        return self._fail(str(exc))

    def close(self) -> bytes:
        if self.finished:
            return b""
        out = bytearray()
        try:
            for obj in self._events.close():  # a last line without its line ending
                out += self._chunk(obj)
                if self.finished:
                    return bytes(out)
        except ValueError:
            pass  # a line cut short: the stream ended early
        if self._events.done or self._finish is not None:
            return bytes(out + self._done())
        return bytes(out + self._fail("the backend ended the stream before it finished"))

    def _line(self, fields: dict[str, Any]) -> bytes:
        return self._head + b"," + orjson.dumps(fields)[1:] + b"\n"

    def _fail(self, message: str) -> bytes:
        self.finished = self.failed = True
        self.error = message
        return error_line(message)

    def _chunk(self, obj: dict[str, Any]) -> bytes:
        if "error" in obj:
            return self._fail(_message_of(obj["error"]))
        if isinstance(obj.get("usage"), dict):
            self._usage = obj["usage"]
        if isinstance(obj.get("timings"), dict):
            self._timings = obj["timings"]
        choices = obj.get("choices")
        if not isinstance(choices, list):
            raise ValueError("the backend sent a stream chunk without choices")
        if not choices:
            return b""  # the usage chunk
        choice = choices[0]
        if not isinstance(choice, dict):
            raise ValueError("the backend sent a stream choice that is not an object")
        out = self._delta(choice) if self._key == "message" else self._text(choice)
        finish = choice.get("finish_reason")
        if finish:
            self._finish = str(finish)
            out += self._tool_calls()
        return out

    def _text(self, choice: dict[str, Any]) -> bytes:
        text = choice.get("text")
        if text is not None and not isinstance(text, str):
            raise ValueError("the backend sent a completion text that is not a string")
        return self._line({"response": text, "done": False}) if text else b""

    def _delta(self, choice: dict[str, Any]) -> bytes:
        delta = choice.get("delta") or {}
        if not isinstance(delta, dict):
            raise ValueError("the backend sent a delta that is not an object")
        content = delta.get("content") or ""
        thought = delta.get("reasoning_content") or delta.get("reasoning") or ""
        if not isinstance(content, str) or not isinstance(thought, str):
            raise ValueError("the backend sent content that is not a string")
        for call in delta.get("tool_calls") or ():
            self._add_call(call)
        if not content and not thought:
            return b""
        message = {"role": "assistant", "content": content}
        if thought:
            message["thinking"] = thought
        return self._line({"message": message, "done": False})

    def _add_call(self, call: Any) -> None:
        if not isinstance(call, dict) or not isinstance(call.get("function") or {}, dict):
            raise ValueError("the backend sent a tool call delta that is not an object")
        fn = call.get("function") or {}
        index = call.get("index", 0)
        if type(index) is not int:
            raise ValueError("the backend sent a tool call delta without an integer index")
        acc = self._calls.setdefault(index, ["", "", []])
        for slot, value in ((0, call.get("id")), (1, fn.get("name"))):
            if isinstance(value, str) and value and not acc[slot]:  # sent once; some servers repeat them
                acc[slot] = value
                self._call_bytes += len(value)
        fragment = fn.get("arguments")
        if isinstance(fragment, str) and fragment:
            acc[2].append(fragment)
            self._call_bytes += len(fragment)
        if self._call_bytes > MAX_LINE:
            raise ValueError("the backend sent tool calls longer than 16 MiB")

    def _tool_calls(self) -> bytes:
        """The line with every tool call collected so far, each whole."""
        if not self._calls:
            return b""
        calls = []
        for index in sorted(self._calls):
            cid, name, parts = self._calls[index]
            call: dict[str, Any] = {"id": cid} if cid else {}
            call["function"] = {"index": index, "name": name, "arguments": _arguments("".join(parts), name)}
            calls.append(call)
        self._calls.clear()
        return self._line({"message": {"role": "assistant", "content": "", "tool_calls": calls}, "done": False})

    def _done(self) -> bytes:
        out = self._tool_calls()
        metrics = _metrics(self._usage, self._timings)
        self.usage = _counted(metrics)
        last: dict[str, Any] = {"message": {"role": "assistant", "content": ""}} if self._key == "message" else {"response": ""}
        last.update(done=True, done_reason=_done_reason(self._finish), **metrics)
        self.finished = True
        return out + self._line(last)


# ---------------------------------------------------------------------------
# The doors
# ---------------------------------------------------------------------------


class _OllamaDoor(ABC):
    """What the four Ollama doors share: native pass-through, NDJSON relay, errors."""

    name: str
    pivot: str
    native_path: str
    stream_type = NDJSON
    id_prefix: str

    def parse(self, raw: bytes, limits: Limits) -> dict[str, Any]:
        body = _decode(raw)
        _model(body)
        self._check(body, limits)
        return body

    @abstractmethod
    def _check(self, body: dict[str, Any], limits: Limits) -> None:
        """Check the fields of this path's request (raise ``BadRequest``)."""

    def stream(self, body: dict[str, Any]) -> bool:
        """Ollama streams unless told ``"stream": false``, except a request that only loads
        the model (a chat without messages, a generate without a prompt): Ollama answers it
        with one JSON object (``done_reason: "load"``) whatever it asked (server/routes.go)."""
        if body.get("stream") is False:
            return False
        return bool(body.get("messages") if self.name == "ollama_chat" else body.get("prompt"))

    def native_request(self, body: dict[str, Any], deployment: Deployment, model: str) -> bytes:
        return orjson.dumps({**body, "model": model})  # the model keeps its place; nothing else changes

    def check_native(self, raw: bytes, provider: str) -> bytes:
        try:
            data = orjson.loads(raw)
        except orjson.JSONDecodeError:
            raise UpstreamError(f"{provider} answered with something that is not JSON") from None
        if not isinstance(data, dict):
            raise UpstreamError(f"{provider} answered with JSON that is not an object")
        if "error" in data:
            raise UpstreamError(f"{provider}: {_message_of(data['error'])}")
        return raw

    def watch(self, ctx: Context) -> StreamTranslator:
        return NativeStream()

    def error_body(self, exc: RouterError) -> bytes:
        return orjson.dumps({"error": exc.message})

    def error_event(self, exc: RouterError) -> bytes:
        return error_line(exc.message)


class OllamaChat(_OllamaDoor):
    """``/api/chat`` through OpenAI chat."""

    name = "ollama_chat"
    pivot = "chat"
    native_path = "/api/chat"
    id_prefix = "chatcmpl-"  # not visible: Ollama's answers carry no id

    def _check(self, body: dict[str, Any], limits: Limits) -> None:
        _generation(body)
        _messages(body.get("messages"), limits.max_messages)

    def to_pivot(self, body: dict[str, Any]) -> dict[str, Any]:
        return chat_request(body)

    def from_pivot(self, data: dict[str, Any], ctx: Context) -> dict[str, Any]:
        return chat_answer(data, ctx)

    def pivot_stream(self, ctx: Context) -> StreamTranslator:
        return PivotStream(ctx, "message")


class OllamaGenerate(_OllamaDoor):
    """``/api/generate`` through OpenAI completions."""

    name = "ollama_generate"
    pivot = "completions"
    native_path = "/api/generate"
    id_prefix = "cmpl-"

    def _check(self, body: dict[str, Any], limits: Limits) -> None:
        _generation(body)
        for key in ("prompt", "suffix", "system", "template"):
            _typed(body, key, str, "a string")
        _typed(body, "raw", bool, "a boolean")
        _images(body.get("images"), "images")
        context = body.get("context")
        if context is not None and (type(context) is not list or any(type(t) is not int or t < 0 for t in context)):
            raise BadRequest("context must be an array of token ids", param="context")

    def to_pivot(self, body: dict[str, Any]) -> dict[str, Any]:
        return generate_request(body)

    def from_pivot(self, data: dict[str, Any], ctx: Context) -> dict[str, Any]:
        return generate_answer(data, ctx)

    def pivot_stream(self, ctx: Context) -> StreamTranslator:
        return PivotStream(ctx, "response")


class _EmbeddingDoor(_OllamaDoor):
    pivot = "embeddings"
    id_prefix = "embd-"

    def stream(self, body: dict[str, Any]) -> bool:
        return False  # Ollama's embedding endpoints never stream

    def pivot_stream(self, ctx: Context) -> StreamTranslator:
        raise TypeError(f"{self.name} never streams")


class OllamaEmbed(_EmbeddingDoor):
    """``/api/embed`` (one input or many) through OpenAI embeddings."""

    name = "ollama_embed"
    native_path = "/api/embed"

    def _check(self, body: dict[str, Any], limits: Limits) -> None:
        _embed_input(body.get("input"), limits.max_input_items)
        _typed(body, "truncate", bool, "a boolean")
        dims = body.get("dimensions")
        if dims is not None and (type(dims) is not int or not 0 <= dims <= MAX_DIMENSIONS):
            raise BadRequest(f"dimensions must be an integer from 0 to {MAX_DIMENSIONS}", param="dimensions")
        _options(body.get("options"))
        _keep_alive(body.get("keep_alive"))

    def to_pivot(self, body: dict[str, Any]) -> dict[str, Any]:
        return embed_request(body)

    def from_pivot(self, data: dict[str, Any], ctx: Context) -> dict[str, Any]:
        return embed_answer(data, ctx)


class OllamaEmbeddings(_EmbeddingDoor):
    """The legacy ``/api/embeddings`` (one ``prompt``, one ``embedding``)."""

    name = "ollama_embeddings"
    native_path = "/api/embeddings"

    def _check(self, body: dict[str, Any], limits: Limits) -> None:
        _typed(body, "prompt", str, "a string")
        _options(body.get("options"))
        _keep_alive(body.get("keep_alive"))

    def to_pivot(self, body: dict[str, Any]) -> dict[str, Any]:
        return embeddings_request(body)

    def from_pivot(self, data: dict[str, Any], ctx: Context) -> dict[str, Any]:
        return embeddings_answer(data, ctx)


CHAT = OllamaChat()
GENERATE = OllamaGenerate()
EMBED = OllamaEmbed()
EMBEDDINGS = OllamaEmbeddings()
