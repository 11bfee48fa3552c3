"""Ollama's native API, translated to and from OpenAI's.

Requests: chat → ``/api/chat``, completions → ``/api/generate``, embeddings →
``/api/embed`` (for both ``ollama/`` and ``ollama_chat/``: LiteLLM's ``ollama/``
flattens chats into ``/api/generate`` prompts and so templates them twice).
Responses: Ollama's JSON or NDJSON stream → OpenAI ``chat.completion`` /
``text_completion`` objects or ``data: {...}`` SSE chunks ending in
``data: [DONE]``. Usage comes from ``prompt_eval_count``/``eval_count``,
``finish_reason`` from ``done_reason``. The pure functions here are the whole
translation; ``router.proxy`` only moves bytes.
"""

from __future__ import annotations

import uuid
from typing import Any

import orjson

from router.errors import BadRequest, UpstreamError
from router.providers.base import Context, error_event, sse  # noqa: F401 - error_event: used by callers of this module before

PATHS = {"chat": "/api/chat", "completions": "/api/generate", "embeddings": "/api/embed"}
MAX_LINE = 16 * 1024 * 1024  # one NDJSON line; Ollama's final generate line carries the context tokens

# OpenAI parameter -> Ollama option. Non-OpenAI Ollama options sent by clients pass through.
_OPTION_MAP = {
    "max_tokens": "num_predict",
    "max_completion_tokens": "num_predict",
    "temperature": "temperature",
    "top_p": "top_p",
    "seed": "seed",
    "frequency_penalty": "frequency_penalty",
    "presence_penalty": "presence_penalty",
}
_OLLAMA_OPTIONS = ("top_k", "min_p", "repeat_penalty", "repeat_last_n", "num_ctx", "typical_p", "mirostat", "num_keep")
_FINISH = {"stop": "stop", "length": "length", "load": "stop", "unload": "stop"}


# ---------------------------------------------------------------------------
# OpenAI request -> Ollama request
# ---------------------------------------------------------------------------


def _options(body: dict[str, Any], default_max_tokens: int | None) -> dict[str, Any]:
    opts: dict[str, Any] = {}
    extra = body.get("options")
    if isinstance(extra, dict):
        opts.update(extra)
    for key, target in _OPTION_MAP.items():
        if body.get(key) is not None:
            opts[target] = body[key]
    for key in _OLLAMA_OPTIONS:
        if body.get(key) is not None:
            opts[key] = body[key]
    stop = body.get("stop")
    if stop is not None:
        opts["stop"] = [stop] if isinstance(stop, str) else stop
    if "num_predict" not in opts and default_max_tokens is not None:
        opts["num_predict"] = default_max_tokens
    return opts


def _common(body: dict[str, Any], model: str, stream: bool, default_max_tokens: int | None) -> dict[str, Any]:
    out: dict[str, Any] = {"model": model, "stream": stream}
    opts = _options(body, default_max_tokens)
    if opts:
        out["options"] = opts
    fmt = body.get("response_format")
    if isinstance(fmt, dict):
        if fmt.get("type") == "json_object":
            out["format"] = "json"
        elif fmt.get("type") == "json_schema":
            schema = (fmt.get("json_schema") or {}).get("schema")
            out["format"] = schema if isinstance(schema, dict) else "json"
    for key in ("keep_alive", "think"):
        if key in body:
            out[key] = body[key]
    kwargs = body.get("chat_template_kwargs")
    if "think" not in out and isinstance(kwargs, dict) and isinstance(kwargs.get("enable_thinking"), bool):
        out["think"] = kwargs["enable_thinking"]  # the chat-template switch of vLLM and llama.cpp: Ollama's think
    return out


def _single_choice(body: dict[str, Any]) -> None:
    n = body.get("n")
    if n is not None and n != 1:
        raise BadRequest("n > 1 is not supported by Ollama backends; send n separate requests", param="n")


def _message(msg: Any, index: int) -> dict[str, Any]:
    if not isinstance(msg, dict):
        raise BadRequest(f"messages[{index}] must be an object", param="messages")
    out: dict[str, Any] = {"role": msg.get("role", "user")}
    content = msg.get("content")
    if isinstance(content, list):
        texts, images = [], []
        for part in content:
            if not isinstance(part, dict):
                continue
            if part.get("type") == "text":
                texts.append(str(part.get("text", "")))
            elif part.get("type") == "image_url":
                url = part.get("image_url", {})
                url = url.get("url", "") if isinstance(url, dict) else str(url)
                if not url.startswith("data:") or "," not in url:
                    raise BadRequest("Ollama backends need images inline as data: URLs", param=f"messages[{index}].content")
                images.append(url.split(",", 1)[1])
        out["content"] = "".join(texts)
        if images:
            out["images"] = images
    else:
        out["content"] = "" if content is None else content
    if isinstance(msg.get("tool_calls"), list):
        calls = []
        for call in msg["tool_calls"]:
            fn = call.get("function", {}) if isinstance(call, dict) else {}
            args = fn.get("arguments", {})
            if isinstance(args, str):
                try:
                    args = orjson.loads(args) if args else {}
                except orjson.JSONDecodeError:
                    raise BadRequest("tool_calls arguments must be a JSON object", param=f"messages[{index}].tool_calls") from None
            calls.append({"function": {"name": fn.get("name", ""), "arguments": args}})
        out["tool_calls"] = calls
    if msg.get("role") == "tool" and msg.get("name"):
        out["tool_name"] = msg["name"]
    return out


def chat_request(body: dict[str, Any], model: str, default_max_tokens: int | None = None) -> dict[str, Any]:
    _single_choice(body)
    out = _common(body, model, bool(body.get("stream")), default_max_tokens)
    out["messages"] = [_message(m, i) for i, m in enumerate(body["messages"])]
    if body.get("tools"):
        out["tools"] = body["tools"]
    return out


def generate_request(body: dict[str, Any], model: str, default_max_tokens: int | None = None) -> dict[str, Any]:
    _single_choice(body)
    prompt = body.get("prompt", "")
    if isinstance(prompt, list):
        if len(prompt) != 1 or not isinstance(prompt[0], str):
            raise BadRequest("Ollama backends take one text prompt per request, not a batch", param="prompt")
        prompt = prompt[0]
    out = _common(body, model, bool(body.get("stream")), default_max_tokens)
    out["prompt"] = prompt
    if body.get("suffix") is not None:
        out["suffix"] = body["suffix"]
    return out


def embed_request(body: dict[str, Any], model: str, default_max_tokens: int | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"model": model, "input": body["input"]}
    if body.get("dimensions") is not None:
        out["dimensions"] = body["dimensions"]
    return out


BUILDERS = {"chat": chat_request, "completions": generate_request, "embeddings": embed_request}


# ---------------------------------------------------------------------------
# Ollama response -> OpenAI response
# ---------------------------------------------------------------------------


def _usage(data: dict[str, Any]) -> dict[str, Any]:
    prompt = int(data.get("prompt_eval_count") or 0)
    completion = int(data.get("eval_count") or 0)
    usage: dict[str, Any] = {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}
    cached = data.get("prompt_eval_cached_count")  # of the prompt, reused from the loaded context: an unreleased
    # Ollama branch's field (released builds say nothing of it; their prompt_eval_count is the whole prompt)
    if type(cached) is int and cached >= 0:
        usage["prompt_tokens_details"] = {"cached_tokens": cached}  # where Ollama's own /v1 puts it
    return usage


def _tool_calls(message: dict[str, Any]) -> list[dict[str, Any]] | None:
    calls = message.get("tool_calls")
    if not calls:
        return None
    out = []
    for i, call in enumerate(calls):
        fn = call.get("function", {})
        args = fn.get("arguments", {})
        out.append({
            "index": i,
            "id": call.get("id") or f"call_{uuid.uuid4().hex[:24]}",
            "type": "function",
            "function": {"name": fn.get("name", ""), "arguments": args if isinstance(args, str) else orjson.dumps(args).decode()},
        })
    return out


def _finish(data: dict[str, Any], had_tool_calls: bool) -> str:
    if had_tool_calls:
        return "tool_calls"
    return _FINISH.get(data.get("done_reason") or "stop", "stop")


def _check(data: Any) -> dict[str, Any]:
    if not isinstance(data, dict):
        raise UpstreamError("Ollama returned a response that is not a JSON object")
    if "error" in data:
        raise UpstreamError(f"Ollama: {data['error']}")
    return data


def chat_response(data: dict[str, Any], ctx: Context) -> dict[str, Any]:
    data = _check(data)
    message = data.get("message") or {}
    out_msg: dict[str, Any] = {"role": "assistant", "content": message.get("content", "")}
    calls = _tool_calls(message)
    if calls:
        out_msg["tool_calls"] = [{k: v for k, v in c.items() if k != "index"} for c in calls]
    if message.get("thinking"):
        out_msg["reasoning_content"] = message["thinking"]
    return {
        "id": ctx.id,
        "object": "chat.completion",
        "created": ctx.created,
        "model": ctx.model,
        "choices": [{"index": 0, "message": out_msg, "logprobs": None, "finish_reason": _finish(data, bool(calls))}],
        "usage": _usage(data),
    }


def generate_response(data: dict[str, Any], ctx: Context) -> dict[str, Any]:
    data = _check(data)
    return {
        "id": ctx.id,
        "object": "text_completion",
        "created": ctx.created,
        "model": ctx.model,
        "choices": [{"index": 0, "text": data.get("response", ""), "logprobs": None, "finish_reason": _finish(data, False)}],
        "usage": _usage(data),
    }


def embed_response(data: dict[str, Any], ctx: Context) -> dict[str, Any]:
    data = _check(data)
    vectors = data.get("embeddings")
    if not isinstance(vectors, list):
        raise UpstreamError("Ollama /api/embed response has no embeddings list")
    prompt = int(data.get("prompt_eval_count") or 0)
    return {
        "object": "list",
        "data": [{"object": "embedding", "index": i, "embedding": v} for i, v in enumerate(vectors)],
        "model": ctx.model,
        "usage": {"prompt_tokens": prompt, "total_tokens": prompt},
    }


RESPONSES = {"chat": chat_response, "completions": generate_response, "embeddings": embed_response}


# ---------------------------------------------------------------------------
# NDJSON stream -> OpenAI SSE
# ---------------------------------------------------------------------------

DONE = b"data: [DONE]\n\n"


class StreamTranslator:
    """Feeds on raw NDJSON bytes from Ollama, returns OpenAI SSE bytes.

    ``feed`` may be called with any split of the byte stream; partial lines are
    kept (up to ``MAX_LINE``). ``finished`` turns true after Ollama's ``done``
    line (and our ``[DONE]``); ``close`` returns the tail to send when the
    upstream ended — an error event if it ended before ``done``.
    """

    def __init__(self, endpoint: str, ctx: Context) -> None:
        self.endpoint = endpoint
        self.ctx = ctx
        self.finished = False
        self.failed = False
        self.error: str | None = None  # why it failed
        self.usage: dict[str, int] | None = None
        self._buf = b""
        self._sent_role = False
        self._tool_calls = 0
        self._object = "chat.completion.chunk" if endpoint == "chat" else "text_completion"

    def feed(self, chunk: bytes) -> bytes:
        if self.finished:
            return b""
        self._buf += chunk
        if b"\n" not in chunk:
            if len(self._buf) > MAX_LINE:
                self._buf = b""
                return self._fail("Ollama sent a stream line longer than 16 MiB")
            return b""
        *lines, self._buf = self._buf.split(b"\n")
        out = bytearray()
        for line in lines:
            if line.strip():
                out += self._line(line)
                if self.finished:
                    break
        return bytes(out)

    def close(self) -> bytes:
        if self.finished:
            return b""
        if self._buf.strip():
            tail, self._buf = self._buf, b""
            out = self._line(tail)
            if self.finished:
                return out
        return self._fail("Ollama ended the stream before it was done")

    def _fail(self, message: str) -> bytes:
        self.finished = self.failed = True
        self.error = message
        return error_event(message)

    def _chunk(self, choice: dict[str, Any]) -> dict[str, Any]:
        obj: dict[str, Any] = {"id": self.ctx.id, "object": self._object, "created": self.ctx.created, "model": self.ctx.model, "choices": [choice]}
        if self.ctx.include_usage:
            obj["usage"] = None
        return obj

    def _line(self, line: bytes) -> bytes:
        try:
            data = orjson.loads(line)
        except orjson.JSONDecodeError:
            return self._fail("Ollama sent a malformed stream line")
        if not isinstance(data, dict):
            return self._fail("Ollama sent a malformed stream line")
        if "error" in data:
            return self._fail(f"Ollama: {data['error']}")
        try:
            return self._translate(data)
        except (AttributeError, TypeError, ValueError, KeyError) as exc:
            return self._fail(f"Ollama sent an unexpected stream line shape ({exc})")

    def _translate(self, data: dict[str, Any]) -> bytes:
        out = bytearray()
        if self.endpoint == "chat":
            message = data.get("message") or {}
            delta: dict[str, Any] = {}
            if not self._sent_role:
                delta["role"] = "assistant"
                self._sent_role = True
            content = message.get("content", "")
            if content or "role" in delta:
                delta["content"] = content
            if message.get("thinking"):
                delta["reasoning_content"] = message["thinking"]
            calls = _tool_calls(message)
            if calls:
                for c in calls:
                    c["index"] += self._tool_calls
                self._tool_calls += len(calls)
                delta["tool_calls"] = calls
            if delta:
                out += sse(self._chunk({"index": 0, "delta": delta, "logprobs": None, "finish_reason": None}))
        else:
            text = data.get("response", "")
            if text:
                out += sse(self._chunk({"index": 0, "text": text, "logprobs": None, "finish_reason": None}))
        if data.get("done"):
            finish = _finish(data, self._tool_calls > 0)
            last = {"index": 0, "delta": {}, "logprobs": None, "finish_reason": finish} if self.endpoint == "chat" else \
                {"index": 0, "text": "", "logprobs": None, "finish_reason": finish}
            out += sse(self._chunk(last))
            self.usage = _usage(data)
            if self.ctx.include_usage:
                out += sse({"id": self.ctx.id, "object": self._object, "created": self.ctx.created, "model": self.ctx.model,
                            "choices": [], "usage": self.usage})
            out += DONE
            self.finished = True
        return bytes(out)
