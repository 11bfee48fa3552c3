"""Anthropic Messages (``POST /v1/messages``, ``/v1/messages/count_tokens``) as the
real servers serve it natively, each in its own bytes.

Sources (read, not copied):

Cached prompt tokens (the simulator's prompt cache, :mod:`router.simulate.prefix`):
vLLM (PR #40912) reports them, when its chat usage has ``prompt_tokens_details``
(only when something was cached), as ``cache_read_input_tokens`` with
``cache_creation_input_tokens`` 0 and ``input_tokens`` the uncached rest — in the
whole answer and the stream's ``message_delta``, not in ``message_start``;
llama-server (PR #19361) always writes ``cache_read_input_tokens`` and the
uncached ``input_tokens`` in ``message_start`` and the whole answer; Ollama's
``input_tokens`` is its ``prompt_eval_count`` (the whole prompt, but in 0.30.0).

* **vLLM** ``vllm/entrypoints/anthropic/api_router.py`` (routes; errors as
  ``{"type": "error", "error": {type, message}}`` with the OpenAI error's type and
  status; the whole answer ``model_dump(exclude_none=True)``), ``serving.py``
  (the request becomes a chat completion: system text joined, ``tool_result``
  blocks of a user message become ``tool`` messages before it; the stream is
  the chat stream re-framed: ``message_start`` on the role chunk with the chat id
  and ``input_tokens``, ``content_block_*`` per block, ``message_delta`` with the
  stop reason and usage on the usage chunk, ``message_stop`` on ``[DONE]``; each
  event ``model_dump_json(exclude_unset=True)``, so ``message_start`` has no
  ``type``/``role``; no ``ping``; a named ``tool_choice`` finishes ``stop`` →
  ``end_turn``), ``protocol.py`` (field order; ``count_tokens`` answers
  ``input_tokens`` and ``context_management.original_input_tokens``). Request
  validation errors come from vLLM's FastAPI handler: 400 in the OpenAI shape,
  type ``Bad Request``.
* **llama-server** ``tools/server/server.cpp`` (routes),
  ``server-common.cpp`` ``convert_anthropic_to_oai`` (``max_tokens`` defaults to
  4096; a missing ``messages`` is a ``runtime_error``, hence a 500), and
  ``server-task.cpp`` ``to_json_anthropic`` / ``to_json_anthropic_stream`` /
  the partial results' ``to_json_anthropic`` (``message_start`` with the first
  token in one write; ``message_delta`` carries ``stop_sequence`` and only
  ``output_tokens``; ``tool_use`` starts without ``input``; ids ``chatcmpl-`` +
  32 alphanumerics; no ``[DONE]``: ``server-context.cpp``). Errors keep the
  server's ``{"error": {code, message, type}}``.
* **Ollama** ``middleware/anthropic.go`` and ``anthropic/anthropic.go`` (since
  v0.14, Jan 2026): the request becomes an ``/api/chat`` request (text blocks
  concatenated, ``tool_choice`` dropped), each NDJSON chunk becomes events:
  ``message_start`` with the *estimated* input tokens (characters / 4: the first
  chunk has no counts yet), ``content_block_*``, a tool call as one
  ``input_json_delta`` of its whole arguments, ``message_delta`` with the real
  ``input_tokens``/``output_tokens``. Go's ``encoding/json`` throughout; ids
  ``msg_`` + 24 hex and tool ids ``call_`` + 8; errors
  ``{"type": "error", "error": {...}, "request_id": "req_…"}``. Ollama has no
  ``count_tokens`` route (its 404 page).
"""

from __future__ import annotations

import json
import secrets
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from aiohttp import web

from . import load
from . import tools as toolkit
from .backend import body_is_invalid, read_json
from .core import Generation, as_int, count_tokens, messages_text
from .encoding import compact_json, go_json, named_sse
from .openai_compat import LlamaServerDialect, OpenAICompatAPI, VLLMDialect, _alnum
from .prefix import Prompt

if TYPE_CHECKING:
    from .backend import SimulatedBackend
    from .ollama import OllamaAPI

Event = tuple[bool | int, bytes]

_STOP = {"stop": "end_turn", "length": "max_tokens", "tool_calls": "tool_use"}


@dataclass
class Turn:
    """One Messages request as the renderers see it."""

    id: str
    model: str
    gen: Generation
    tool_id: str = ""
    estimate: int = 0  # Ollama's characters/4 guess of the input tokens
    named: bool = False  # tool_choice named the tool
    cached: int = 0  # input tokens the server's prompt cache served (known once seated)

    @property
    def input_tokens(self) -> int:
        return self.gen.prompt_tokens

    @property
    def output_tokens(self) -> int:
        return self.gen.completion_tokens


def blocks(content: Any) -> list[dict[str, Any]]:
    """A message's ``content`` as a list of blocks (a string is one text block)."""
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    return [b for b in content if isinstance(b, dict)] if isinstance(content, list) else []


def tool_result_text(content: Any) -> str:
    """The text of a ``tool_result`` block's ``content`` (string or text blocks)."""
    if isinstance(content, str):
        return content
    return "".join(b.get("text", "") for b in blocks(content) if b.get("type") == "text")


def anthropic_tools(tools: Any) -> list[dict[str, Any]]:
    """Anthropic ``tools`` as Chat Completions tools (name, description, input_schema)."""
    out = []
    for t in tools if isinstance(tools, list) else []:
        if isinstance(t, dict) and isinstance(t.get("name"), str):
            schema = t.get("input_schema") if isinstance(t.get("input_schema"), dict) else {}
            out.append({"type": "function", "function": {"name": t["name"], "description": t.get("description"),
                                                          "parameters": schema}})
    return out


def named_choice(choice: Any, *, keep_name: bool = True) -> Any:
    """Anthropic ``tool_choice`` as the Chat Completions one (llama-server turns a
    named tool into ``required``: ``keep_name=False``)."""
    if not isinstance(choice, dict):
        return None
    kind = choice.get("type")
    if kind == "none":
        return "none"
    if kind == "tool" and keep_name:
        return {"type": "function", "function": {"name": choice.get("name")}}
    return "required" if kind in ("any", "tool") else "auto"


# ---------------------------------------------------------------- request conversions


def vllm_chat(body: dict[str, Any]) -> dict[str, Any]:
    """``AnthropicServingMessages._convert_anthropic_to_openai_request``."""
    system = body.get("system")
    parts = [system] if isinstance(system, str) and system else \
        [b.get("text", "") for b in blocks(system) if b.get("type") == "text" and b.get("text")]
    messages: list[dict[str, Any]] = [{"role": "system", "content": "".join(parts)}] if parts else []
    for msg in body.get("messages") or []:
        if not isinstance(msg, dict) or msg.get("role") == "system":
            continue
        out: dict[str, Any] = {"role": msg.get("role")}
        if isinstance(msg.get("content"), str):
            out["content"] = msg["content"]
        else:
            texts, calls = [], []
            for b in blocks(msg.get("content")):
                if b.get("type") == "text" and b.get("text"):
                    texts.append({"type": "text", "text": b["text"]})
                elif b.get("type") == "tool_use":
                    calls.append({"id": b.get("id"), "type": "function",
                                  "function": {"name": b.get("name") or "", "arguments": json.dumps(b.get("input") or {})}})
                elif b.get("type") == "tool_result" and msg.get("role") == "user":
                    messages.append({"role": "tool", "tool_call_id": b.get("tool_use_id") or "",
                                     "content": tool_result_text(b.get("content"))})
            if calls:
                out["tool_calls"] = calls
            if texts:
                out["content"] = texts[0]["text"] if len(texts) == 1 else texts
        if not (out["role"] == "user" and "content" not in out):
            messages.append(out)
    chat: dict[str, Any] = {"model": body.get("model"), "messages": messages, "max_tokens": body.get("max_tokens"),
                            "stop": body.get("stop_sequences")}
    if body.get("tools") is not None:
        chat["tools"] = anthropic_tools(body.get("tools"))
        chat["tool_choice"] = named_choice(body.get("tool_choice")) or "auto"
    return chat


def llama_chat(body: dict[str, Any]) -> dict[str, Any]:
    """llama-server's ``convert_anthropic_to_oai`` (raises ``RuntimeError`` without ``messages``)."""
    messages: list[dict[str, Any]] = []
    if body.get("system") is not None:
        system = body["system"]
        text = system if isinstance(system, str) else \
            "".join(b.get("text", "") for b in blocks(system) if b.get("type") == "text")
        messages.append({"role": "system", "content": text})
    if "messages" not in body:
        raise RuntimeError("'messages' is required")
    for msg in body["messages"] if isinstance(body["messages"], list) else []:
        if not isinstance(msg, dict) or not isinstance(msg.get("content"), list):
            messages.append(msg)
            continue
        content, calls, results = [], [], []
        for b in blocks(msg["content"]):
            if b.get("type") == "text":
                content.append(b)
            elif b.get("type") == "tool_use":
                calls.append({"id": b.get("id", ""), "type": "function",
                              "function": {"name": b.get("name", ""),
                                           "arguments": json.dumps(b.get("input") or {}, separators=(",", ":"))}})
            elif b.get("type") == "tool_result":
                results.append({"role": "tool", "tool_call_id": b.get("tool_use_id", ""),
                                "content": tool_result_text(b.get("content"))})
        if content or calls:
            new: dict[str, Any] = {"role": msg.get("role"), "content": content or ""}
            if calls:
                new["tool_calls"] = calls
            messages.append(new)
        messages.extend(results)
    chat: dict[str, Any] = {"messages": messages, "max_tokens": body.get("max_tokens", 4096)}
    if isinstance(body.get("tools"), list):
        chat["tools"] = anthropic_tools(body["tools"])
    choice = named_choice(body.get("tool_choice"), keep_name=False)
    if choice in ("auto", "required"):
        chat["tool_choice"] = choice
    if "stop_sequences" in body:
        chat["stop"] = body["stop_sequences"]
    return chat


def ollama_chat(body: dict[str, Any]) -> dict[str, Any]:
    """Ollama's ``FromMessagesRequest``: an ``/api/chat`` request (no ``tool_choice``)."""
    system = body.get("system")
    text = system if isinstance(system, str) else \
        "".join(b.get("text", "") for b in blocks(system) if b.get("type") == "text")
    messages: list[dict[str, Any]] = [{"role": "system", "content": text}] if text else []
    for msg in body.get("messages") or []:
        if not isinstance(msg, dict):
            continue
        role = str(msg.get("role") or "").lower()
        texts, calls, results = [], [], []
        for b in blocks(msg.get("content")):
            if b.get("type") == "text":
                texts.append(b.get("text") or "")
            elif b.get("type") == "tool_use":
                calls.append({"id": b.get("id"), "function": {"name": b.get("name"), "arguments": b.get("input") or {}}})
            elif b.get("type") == "tool_result":
                results.append({"role": "tool", "content": tool_result_text(b.get("content")),
                                "tool_call_id": b.get("tool_use_id")})
        if role == "user":
            messages.extend(results)
        if texts or calls:
            m: dict[str, Any] = {"role": role, "content": "".join(texts)}
            if calls:
                m["tool_calls"] = calls
            messages.append(m)
        if role != "user":
            messages.extend(results)
    options: dict[str, Any] = {"num_predict": body.get("max_tokens")}
    if body.get("stop_sequences"):
        options["stop"] = body["stop_sequences"]
    return {"model": body.get("model"), "messages": messages, "options": options,
            "tools": anthropic_tools(body.get("tools"))}


def ollama_estimate(body: dict[str, Any]) -> int:
    """``EstimateInputTokens``: characters of system, roles, texts, tool blocks and tools, / 4 (at least 1)."""
    def block_len(b: dict[str, Any]) -> int:
        size = len(b.get("text") or "") + len(b.get("thinking") or "")
        if b.get("type") in ("tool_use", "tool_result"):
            size += len(go_json(b))
        return size

    system = body.get("system")
    total = len(system) if isinstance(system, str) else sum(block_len(b) for b in blocks(system))
    messages = [m for m in body.get("messages") or [] if isinstance(m, dict)]
    for m in messages:
        total += len(str(m.get("role") or "")) + sum(block_len(b) for b in blocks(m.get("content")))
    for t in body.get("tools") or []:
        if isinstance(t, dict):
            schema = t.get("input_schema")
            total += len(str(t.get("name") or "")) + len(str(t.get("description") or "")) + \
                (len(compact_json(schema)) if schema is not None else 0)
    tokens = total // 4
    return 1 if tokens == 0 and (messages or system is not None) else tokens


def stop_reason(gen: Generation) -> str:
    return _STOP.get(gen.finish_reason, "end_turn")


# ---------------------------------------------------------------- the servers


class MessagesDoor:
    """``/v1/messages`` of one server kind. Subclasses convert the request as the
    server does and render the answer in its bytes."""

    count_route = True
    headers_early = False
    stream_type = "text/event-stream"
    stream_headers: dict[str, str] = {}

    def __init__(self, backend: SimulatedBackend) -> None:
        self.b = backend

    def add_routes(self, router: web.UrlDispatcher) -> None:
        router.add_post("/v1/messages", self.messages)
        if self.count_route:
            router.add_post("/v1/messages/count_tokens", self.count)

    def owns(self, path: str) -> bool:
        return path == "/v1/messages" or (self.count_route and path == "/v1/messages/count_tokens")

    # -- hooks
    def error(self, status: int, message: str) -> web.Response:
        raise NotImplementedError

    def check(self, body: Any, request: web.Request) -> web.Response | None:
        """A 4xx for what the server rejects before generating, else ``None``."""
        return None

    def resolve(self, body: dict[str, Any]) -> tuple[str, web.Response | None]:
        raise NotImplementedError

    def chat(self, body: dict[str, Any]) -> dict[str, Any]:
        raise NotImplementedError

    def generation(self, model: str, chat: dict[str, Any]) -> Generation:
        raise NotImplementedError

    def turn(self, model: str, gen: Generation, body: dict[str, Any]) -> Turn:
        raise NotImplementedError

    def load_delay(self, model: str) -> float:
        return 0.0

    def events(self, t: Turn) -> Iterator[Event]:
        raise NotImplementedError

    def whole(self, t: Turn) -> web.Response:
        raise NotImplementedError

    def counted(self, tokens: int) -> web.Response:
        return self.b.json({"input_tokens": tokens})

    def malformed(self, exc: Exception) -> web.Response:
        """A body of the wrong JSON types: the server's decoder rejects it (a 400 here)."""
        return self.error(400, f"invalid request: {exc}")

    # -- handlers
    async def _prepared(self, request: web.Request) -> tuple[str, dict[str, Any], dict[str, Any]] | web.Response:
        body = await read_json(request)
        bad = self.check(body, request)
        if bad is not None:
            return bad
        model, err = self.resolve(body)
        if err is not None:
            return err
        try:
            chat = self.chat(body)
            chat["messages"] = [m for m in chat["messages"] if isinstance(m, dict)]
            messages_text(chat["messages"])  # the prompt renders
        except RuntimeError as exc:  # llama-server: a std::runtime_error is a 500
            return self.error(500, str(exc))
        except (TypeError, ValueError, AttributeError, KeyError) as exc:
            return self.malformed(exc)
        return model, body, chat

    async def messages(self, request: web.Request) -> web.StreamResponse:
        prepared = await self._prepared(request)
        if isinstance(prepared, web.Response):
            return prepared
        model, body, chat = prepared
        try:
            gen = self.generation(model, chat)
            t = self.turn(model, gen, body)
        except (TypeError, ValueError, AttributeError, KeyError) as exc:
            return self.malformed(exc)
        stream = bool(body.get("stream"))
        prompt = Prompt.of(messages_text(chat["messages"]), toolkit.openai_tools(chat.get("tools")))
        async with self.b.scheduler.seat(request, self.b, model, gen, load.slot_params(chat, stream), prompt) as seat:
            t.cached = seat.prefill.cached
            extra = self.load_delay(model)
            if stream:
                return await self.b.stream(request, self.events(t), content_type=self.stream_type, extra_delay=extra,
                                           headers_early=self.headers_early, headers=self.stream_headers,
                                           prefill=seat.prefill)
            interval = self.b.token_interval() * max(gen.completion_tokens - 1, 0)
            await self.b.compute(request, seat.prefill, extra_delay=extra, decode=interval)
            return self.whole(t)

    async def count(self, request: web.Request) -> web.StreamResponse:
        prepared = await self._prepared(request)
        if isinstance(prepared, web.Response):
            return prepared
        _model, _body, chat = prepared
        return self.counted(count_tokens(messages_text(chat["messages"])))


class VLLMMessages(MessagesDoor):
    """vLLM's Anthropic router (FastAPI: headers at once, ``; charset=utf-8``)."""

    headers_early = True
    stream_type = "text/event-stream; charset=utf-8"

    def __init__(self, backend: SimulatedBackend, api: OpenAICompatAPI) -> None:
        super().__init__(backend)
        self.api = api
        self.d: VLLMDialect = api.d  # type: ignore[assignment]

    def error(self, status: int, message: str) -> web.Response:
        etype = self.d.error_body(status, message)["error"]["type"]
        return self.b.json({"type": "error", "error": {"type": etype, "message": message}}, status)

    def check(self, body: Any, request: web.Request) -> web.Response | None:
        problems = []
        if not isinstance(body, dict):
            problems.append("Input should be a valid dictionary or object to extract fields from")
        else:
            for name in ("model", "messages", "max_tokens"):
                if name not in body and not (name == "max_tokens" and request.path.endswith("/count_tokens")):
                    problems.append(f"Field required: {name}")
            if as_int(body.get("max_tokens")) is not None and as_int(body.get("max_tokens")) <= 0:  # type: ignore[operator]
                problems.append("Value error, max_tokens must be positive")
        if not problems:
            return None
        message = f"{len(problems)} validation error(s): " + "; ".join(problems)
        return self.b.json({"error": {"message": message, "type": "Bad Request", "param": None, "code": 400}}, 400)

    def resolve(self, body: dict[str, Any]) -> tuple[str, web.Response | None]:
        model = body.get("model")
        if model not in self.b.models:
            return str(model), self.error(404, f"The model `{model}` does not exist.")
        return str(model), None

    def chat(self, body: dict[str, Any]) -> dict[str, Any]:
        return vllm_chat(body)

    def generation(self, model: str, chat: dict[str, Any]) -> Generation:
        return self.api.chat_generation(model, chat["messages"], chat)

    def turn(self, model: str, gen: Generation, body: dict[str, Any]) -> Turn:
        choice = body.get("tool_choice")
        named = isinstance(choice, dict) and choice.get("type") == "tool"
        return Turn(self.d.chat_id(), model, gen, tool_id=f"chatcmpl-tool-{uuid.uuid4().hex}", named=named)

    def events(self, t: Turn) -> Iterator[Event]:
        def ev(name: str, obj: dict[str, Any]) -> bytes:
            return named_sse(name, compact_json(obj))

        yield False, ev("message_start", {"type": "message_start", "message": {
            "id": t.id, "content": [], "model": t.model, "stop_reason": None, "stop_sequence": None,
            "usage": {"input_tokens": t.input_tokens, "output_tokens": 0}}})
        call = t.gen.call
        if call is not None:
            yield False, ev("content_block_start", {"type": "content_block_start", "content_block": {
                "type": "tool_use", "id": t.tool_id, "name": call.name, "input": {}}, "index": 0})
            for piece in t.gen.call_pieces:
                yield True, ev("content_block_delta", {"type": "content_block_delta", "delta": {
                    "type": "input_json_delta", "partial_json": piece}, "index": 0})
        for i, piece in enumerate(t.gen.pieces):
            if i == 0:
                yield False, ev("content_block_start", {"type": "content_block_start",
                                                        "content_block": {"type": "text", "text": ""}, "index": 0})
            yield True, ev("content_block_delta", {"type": "content_block_delta",
                                                   "delta": {"type": "text_delta", "text": piece}, "index": 0})
        if call is not None or t.gen.pieces:
            yield False, ev("content_block_stop", {"type": "content_block_stop", "index": 0})
        yield False, ev("message_delta", {"type": "message_delta", "delta": {"stop_reason": self.reason(t)},
                                          "usage": self.usage(t)})
        yield False, ev("message_stop", {"type": "message_stop"})

    def usage(self, t: Turn) -> dict[str, int]:
        """``AnthropicUsage`` from the chat usage (vLLM PR #40912): when the chat usage carries
        ``prompt_tokens_details`` (something was cached), ``input_tokens`` is the uncached rest,
        ``cache_read_input_tokens`` the cached part and ``cache_creation_input_tokens`` 0;
        otherwise the cache fields are absent and ``input_tokens`` is the whole prompt. A
        stream's ``message_start`` is built before the usage carries the details: whole prompt."""
        if not t.cached:
            return {"input_tokens": t.input_tokens, "output_tokens": t.output_tokens}
        return {"input_tokens": t.input_tokens - t.cached, "output_tokens": t.output_tokens,
                "cache_creation_input_tokens": 0, "cache_read_input_tokens": t.cached}

    def reason(self, t: Turn) -> str:
        """A named tool is guided decoding: the chat finishes ``stop``, so ``end_turn``."""
        return "end_turn" if t.gen.call is not None and t.named else stop_reason(t.gen)

    def whole(self, t: Turn) -> web.Response:
        content: list[dict[str, Any]] = [{"type": "text", "text": t.gen.text}] if t.gen.text else []
        if t.gen.call is not None:
            content.append({"type": "tool_use", "id": t.tool_id, "name": t.gen.call.name,
                            "input": t.gen.call.arguments})
        return self.b.json({"id": t.id, "type": "message", "role": "assistant", "content": content, "model": t.model,
                            "stop_reason": self.reason(t), "usage": self.usage(t)})

    def counted(self, tokens: int) -> web.Response:
        return self.b.json({"input_tokens": tokens, "context_management": {"original_input_tokens": tokens}})


class LlamaServerMessages(MessagesDoor):
    """llama-server's ``/v1/messages`` (nlohmann ordered JSON, cpp-httplib)."""

    def __init__(self, backend: SimulatedBackend, api: OpenAICompatAPI) -> None:
        super().__init__(backend)
        self.api = api
        self.d: LlamaServerDialect = api.d  # type: ignore[assignment]

    def error(self, status: int, message: str) -> web.Response:
        return self.d.error(status, message)

    def malformed(self, exc: Exception) -> web.Response:
        return self.error(500, f"[json.exception.type_error.302] {exc}")  # nlohmann's exceptions are 500s

    def check(self, body: Any, request: web.Request) -> web.Response | None:
        if not isinstance(body, dict):
            return self.error(500, "[json.exception.type_error.302] type must be object")
        return None

    def resolve(self, body: dict[str, Any]) -> tuple[str, web.Response | None]:
        return str(body.get("model") or self.b.models[0]), None  # any name is served and echoed

    def chat(self, body: dict[str, Any]) -> dict[str, Any]:
        return llama_chat(body)

    def generation(self, model: str, chat: dict[str, Any]) -> Generation:
        return self.api.chat_generation(model, chat["messages"], chat)

    def turn(self, model: str, gen: Generation, body: dict[str, Any]) -> Turn:
        return Turn(self.d.chat_id(), model, gen, tool_id=_alnum(32))

    def _stop(self, t: Turn) -> tuple[str, str | None]:
        word = t.gen.stop_reason
        if t.gen.finish_reason == "length":
            return "max_tokens", None
        return ("tool_use" if t.gen.call is not None else "end_turn"), word

    def events(self, t: Turn) -> Iterator[Event]:
        def ev(obj: dict[str, Any]) -> bytes:
            return named_sse(obj["type"], compact_json(obj))

        start = ev({"type": "message_start", "message": {
            "id": t.id, "type": "message", "role": "assistant", "content": [], "model": t.model,
            "stop_reason": None, "stop_sequence": None, "usage": self.usage(t, 0)}})
        call = t.gen.call
        first = True
        for i, piece in enumerate(t.gen.pieces):
            head = start + ev({"type": "content_block_start", "index": 0,
                               "content_block": {"type": "text", "text": ""}}) if i == 0 else b""
            yield True, head + ev({"type": "content_block_delta", "index": 0,
                                   "delta": {"type": "text_delta", "text": piece}})
            first = False
        index = 1 if t.gen.pieces else 0
        for i, piece in enumerate(t.gen.call_pieces):
            head = b""
            if i == 0 and call is not None:
                head = (start if first else b"") + ev({"type": "content_block_start", "index": index, "content_block": {
                    "type": "tool_use", "id": t.tool_id, "name": call.name}})
            yield True, head + ev({"type": "content_block_delta", "index": index,
                                   "delta": {"type": "input_json_delta", "partial_json": piece}})
            first = False
        reason, word = self._stop(t)
        tail = start if first else b""  # nothing generated: the final result is the first
        if t.gen.pieces:
            tail += ev({"type": "content_block_stop", "index": 0})
        if call is not None:
            tail += ev({"type": "content_block_stop", "index": index})
        tail += ev({"type": "message_delta", "delta": {"stop_reason": reason, "stop_sequence": word},
                    "usage": {"output_tokens": t.output_tokens}})
        yield False, tail + ev({"type": "message_stop"})

    def whole(self, t: Turn) -> web.Response:
        content: list[dict[str, Any]] = [{"type": "text", "text": t.gen.text}] if t.gen.text else []
        if t.gen.call is not None:
            content.append({"type": "tool_use", "id": t.tool_id, "name": t.gen.call.name,
                            "input": t.gen.call.arguments})
        reason, word = self._stop(t)
        return self.d.json({"id": t.id, "type": "message", "role": "assistant", "content": content, "model": t.model,
                            "stop_reason": reason, "stop_sequence": word, "usage": self.usage(t, t.output_tokens)})

    def usage(self, t: Turn, output_tokens: int) -> dict[str, int]:
        """``message_start``'s and the whole answer's usage since llama.cpp PR #19361 (Feb 2026):
        ``cache_read_input_tokens`` always, ``input_tokens`` the uncached rest."""
        return {"cache_read_input_tokens": t.cached, "input_tokens": t.input_tokens - t.cached,
                "output_tokens": output_tokens}

    def counted(self, tokens: int) -> web.Response:
        return self.d.json({"input_tokens": tokens})


class OllamaMessages(MessagesDoor):
    """Ollama's ``/v1/messages`` (gin + Go's ``encoding/json``); no ``count_tokens``."""

    count_route = False
    stream_headers = {"Cache-Control": "no-cache"}

    def __init__(self, backend: SimulatedBackend, api: OllamaAPI) -> None:
        super().__init__(backend)
        self.api = api

    def _body(self, status: int, message: str) -> dict[str, Any]:
        etype = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
                 404: "not_found_error", 429: "rate_limit_error", 503: "overloaded_error",
                 529: "overloaded_error"}.get(status, "api_error")
        return {"type": "error", "error": {"type": etype, "message": message},
                "request_id": "req_" + secrets.token_hex(12)}

    def error(self, status: int, message: str) -> web.Response:
        """An error the chat handler wrote, re-encoded by ``AnthropicWriter.writeError``."""
        return web.Response(body=go_json(self._body(status, message), newline=True), status=status,
                            headers={"Content-Type": "application/json"})

    def abort(self, status: int, message: str) -> web.Response:
        """The middleware's own ``c.AbortWithStatusJSON`` (gin: no newline, charset)."""
        return web.Response(body=go_json(self._body(status, message)), status=status,
                            headers={"Content-Type": "application/json; charset=utf-8"})

    def malformed(self, exc: Exception) -> web.Response:
        return self.abort(400, f"json: cannot unmarshal request: {exc}")  # ShouldBindJSON

    def check(self, body: Any, request: web.Request) -> web.Response | None:
        if body_is_invalid(request) or not isinstance(body, dict):
            return self.abort(400, "invalid character in request body" if body_is_invalid(request) else "EOF")
        if not body.get("model"):
            return self.abort(400, "model is required")
        if (as_int(body.get("max_tokens")) or 0) <= 0:
            return self.abort(400, "max_tokens is required and must be positive")
        if not body.get("messages"):
            return self.abort(400, "messages is required")
        return None

    def resolve(self, body: dict[str, Any]) -> tuple[str, web.Response | None]:
        requested = str(body["model"])
        name = self.api.resolve(requested)
        if name is None:
            return requested, self.error(404, f"model '{requested}' not found")
        return name, None

    def chat(self, body: dict[str, Any]) -> dict[str, Any]:
        return ollama_chat(body)

    def generation(self, model: str, chat: dict[str, Any]) -> Generation:
        from .ollama import go_spell

        messages = chat["messages"]
        options = chat["options"]
        return toolkit.chat_generation(
            model, messages_text(messages), tools=toolkit.openai_tools(chat["tools"]), choice=toolkit.AUTO,
            after_result=toolkit.last_is_tool_result(messages), result_text=toolkit.last_text(messages),
            spell=go_spell, max_tokens=as_int(options.get("num_predict")), stop=options.get("stop"))

    def turn(self, model: str, gen: Generation, body: dict[str, Any]) -> Turn:
        from .ollama import tool_call_id

        return Turn("msg_" + secrets.token_hex(12), str(body["model"]), gen, tool_id=tool_call_id(),
                    estimate=ollama_estimate(body))

    def load_delay(self, model: str) -> float:
        return self.api.use(model, None)

    def _reason(self, t: Turn) -> str:
        if t.gen.call is not None:
            return "tool_use"
        return "max_tokens" if t.gen.finish_reason == "length" else "end_turn"

    def events(self, t: Turn) -> Iterator[Event]:
        def ev(obj: dict[str, Any]) -> bytes:
            return named_sse(obj["type"], go_json(obj))

        start = ev({"type": "message_start", "message": {
            "id": t.id, "type": "message", "role": "assistant", "model": t.model, "content": [],
            "usage": {"input_tokens": t.estimate, "output_tokens": 0}}})
        call = t.gen.call
        if call is not None:  # one chunk with the whole call, after its tokens are generated
            yield len(t.gen.call_pieces), start
            yield False, ev({"type": "content_block_start", "index": 0, "content_block": {
                "type": "tool_use", "id": t.tool_id, "name": call.name, "input": {}}})
            yield False, ev({"type": "content_block_delta", "index": 0, "delta": {
                "type": "input_json_delta", "partial_json": t.gen.arguments}})
            yield False, ev({"type": "content_block_stop", "index": 0})
        for i, piece in enumerate(t.gen.pieces):
            if i == 0:
                yield True, start
                yield False, ev({"type": "content_block_start", "index": 0,
                                 "content_block": {"type": "text", "text": ""}})
                yield False, ev({"type": "content_block_delta", "index": 0,
                                 "delta": {"type": "text_delta", "text": piece}})
                continue
            yield True, ev({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": piece}})
        if call is None and not t.gen.pieces:
            yield False, start
        if t.gen.pieces:
            yield False, ev({"type": "content_block_stop", "index": 0})
        yield False, ev({"type": "message_delta", "delta": {"stop_reason": self._reason(t)},
                         "usage": {"input_tokens": self.input_tokens(t), "output_tokens": t.output_tokens}})
        yield False, ev({"type": "message_stop"})

    def whole(self, t: Turn) -> web.Response:
        content: list[dict[str, Any]] = [{"type": "text", "text": t.gen.text}] if t.gen.text else []
        if t.gen.call is not None:
            content.append({"type": "tool_use", "id": t.tool_id, "name": t.gen.call.name,
                            "input": t.gen.call.arguments})
        body = {"id": t.id, "type": "message", "role": "assistant", "model": t.model, "content": content,
                "stop_reason": self._reason(t),
                "usage": {"input_tokens": self.input_tokens(t), "output_tokens": t.output_tokens}}
        return web.Response(body=go_json(body, newline=True), headers={"Content-Type": "application/json"})

    def input_tokens(self, t: Turn) -> int:
        """The chat's ``prompt_eval_count`` (see :meth:`OllamaAPI.prompt_eval_count`)."""
        return self.api.prompt_eval_count(t.input_tokens, t.cached)
