"""The hosted Anthropic API (``https://api.anthropic.com``): the simulator kind ``anthropic``.

Unlike the Messages doors of the local servers (:mod:`router.simulate.anthropic`, which
re-frame a chat completion), these are the hosted API's own bytes, as its documentation
and recorded streams show them (the streaming guide's event flow; the AI SDK's and
LiteLLM's recorded fixtures):

* ``POST /v1/messages``: ids ``msg_01`` + 22 base62 characters (tool calls ``toolu_01`` +
  22); the whole answer ``{id, type, role, model, content, stop_reason, stop_sequence,
  stop_details, usage}`` with the cache counters and ``service_tier`` in ``usage``. A
  stream is ``event: X`` / ``data: {compact JSON}`` / blank line per event:
  ``message_start`` (the message with empty content, ``input_tokens`` and
  ``output_tokens: 1``), ``content_block_start``, one ``ping`` after the first block
  starts, ``content_block_delta`` (``text_delta``; a tool call's ``input_json_delta``
  starts with an empty fragment), ``content_block_stop``, ``message_delta`` (stop
  reason, cumulative usage), ``message_stop``.
* ``POST /v1/messages/count_tokens`` (``{"input_tokens": n}``), ``GET /v1/models`` and
  ``GET /v1/models/{id}`` in the API's list shape (``data``, ``has_more``, ``first_id``,
  ``last_id``).
* Every route wants ``anthropic-version`` (400 ``invalid_request_error`` without it) and,
  when the backend was given ``api_key``, that key (401 ``authentication_error``): in
  ``x-api-key``, as LiteLLM and curl send it, or as ``Authorization: Bearer``, as the
  official Python SDK 2.x sends its ``api_key``. Errors are ``{"type": "error", "error": {type, message},
  "request_id": "req_…"}`` with a ``request-id`` header; an injected 529 is
  ``overloaded_error`` ("Overloaded"), an injected 429 ``rate_limit_error`` with a
  ``retry-after`` (1 s unless the fault sets one; Anthropic documents the header on 429s).

The model's answer is the simulator's usual deterministic text, or a call of the tool
``tool_choice`` names (else the first) while the conversation does not end in a
``tool_result`` (:mod:`router.simulate.tools`).
"""

from __future__ import annotations

import random
import string
from collections.abc import Iterator
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from aiohttp import web

from . import load
from . import tools as toolkit
from .anthropic import anthropic_tools, blocks, tool_result_text, vllm_chat
from .backend import body_is_invalid, read_json
from .core import Generation, as_int, count_tokens, messages_text
from .encoding import compact_json, named_sse

if TYPE_CHECKING:
    from .backend import SimulatedBackend

Event = tuple[bool | int, bytes]

VERSION_HEADER = "anthropic-version"
STREAM_TYPE = "text/event-stream; charset=utf-8"
ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error", 402: "billing_error",
               403: "permission_error", 404: "not_found_error", 413: "request_too_large", 429: "rate_limit_error",
               500: "api_error", 504: "timeout_error", 529: "overloaded_error"}
CANONICAL = {429: "Number of request tokens has exceeded your per-minute rate limit", 529: "Overloaded"}
_STOP = {"stop": "end_turn", "length": "max_tokens", "tool_calls": "tool_use"}
_BASE62 = string.ascii_letters + string.digits


def anthropic_id(prefix: str) -> str:
    """``msg_01…``, ``toolu_01…``: the prefix, ``01`` and 22 base62 characters."""
    return prefix + "01" + "".join(random.choices(_BASE62, k=22))


def _usage(input_tokens: int, output_tokens: int) -> dict[str, Any]:
    return {"input_tokens": input_tokens, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0,
            "cache_creation": {"ephemeral_5m_input_tokens": 0, "ephemeral_1h_input_tokens": 0},
            "output_tokens": output_tokens, "service_tier": "standard"}


def _choice(choice: Any) -> str:
    """``tool_choice`` reduced for :mod:`router.simulate.tools`."""
    if isinstance(choice, dict):
        if choice.get("type") == "none":
            return toolkit.NONE
        if choice.get("type") == "tool" and isinstance(choice.get("name"), str):
            return choice["name"]
    return toolkit.AUTO


def _last_result(messages: list[Any]) -> str | None:
    """The text of the tool result the conversation ends with, if it ends with one."""
    last = messages[-1] if messages else None
    if not isinstance(last, dict) or last.get("role") != "user":
        return None
    results = [b for b in blocks(last.get("content")) if b.get("type") == "tool_result"]
    return tool_result_text(results[-1].get("content")) if results else None


class AnthropicAPI:
    """The routes of the hosted Messages API (the chat API object of kind ``anthropic``)."""

    def __init__(self, backend: SimulatedBackend) -> None:
        self.b = backend

    def preload(self, name: str) -> None:
        """The hosted models are always there."""

    def add_routes(self, router: web.UrlDispatcher) -> None:
        router.add_post("/v1/messages", self.messages)
        router.add_post("/v1/messages/count_tokens", self.count)
        router.add_get("/v1/models", self.models)
        router.add_get("/v1/models/{model_id}", self.model)

    # -- errors

    def error(self, status: int, message: str, headers: dict[str, str] | None = None) -> web.Response:
        request_id = anthropic_id("req_")
        body = {"type": "error", "error": {"type": ERROR_TYPES.get(status, "api_error" if status >= 500 else
                                                                     "invalid_request_error"), "message": message},
                "request_id": request_id}
        return self.b.json(body, status, headers={"request-id": request_id, **(headers or {})})

    def error_response(self, request: web.Request, status: int, message: str) -> web.Response:
        """An injected fault, as the API answers it (a 429 always says when to retry)."""
        return self.error(status, CANONICAL.get(status, message), {"retry-after": "1"} if status == 429 else None)

    async def not_found(self, request: web.Request) -> web.Response:
        return self.error(404, "Not Found")

    def _gate(self, request: web.Request) -> web.Response | None:
        """The headers every route wants."""
        if self.b.api_key is not None:
            key = request.headers.get("x-api-key")
            bearer = request.headers.get("Authorization", "")
            if key is None and bearer.startswith("Bearer "):
                key = bearer[7:]  # the official SDK (2.x) sends its api_key this way
            if key is None:
                return self.error(401, "x-api-key header is required")
            if key != self.b.api_key:
                return self.error(401, "invalid x-api-key")
        if not request.headers.get(VERSION_HEADER):
            return self.error(400, "anthropic-version: header is required")
        return None

    # -- models

    def _card(self, name: str) -> dict[str, Any]:
        created = datetime.fromtimestamp(self.b.created, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        return {"type": "model", "id": name, "display_name": name, "created_at": created, "lifecycle": "active",
                "max_input_tokens": self.b.max_model_len, "max_tokens": 64000}

    async def models(self, request: web.Request) -> web.Response:
        bad = self._gate(request)
        if bad is not None:
            return bad
        data = [self._card(m) for m in self.b.models]
        return self.b.json({"data": data, "has_more": False, "first_id": data[0]["id"] if data else None,
                            "last_id": data[-1]["id"] if data else None})

    async def model(self, request: web.Request) -> web.Response:
        bad = self._gate(request)
        if bad is not None:
            return bad
        name = request.match_info["model_id"]
        if name not in self.b.models:
            return self.error(404, f"model: {name}")
        return self.b.json(self._card(name))

    # -- messages

    async def _checked(self, request: web.Request, *, count: bool) -> dict[str, Any] | web.Response:
        bad = self._gate(request)
        if bad is not None:
            return bad
        body = await read_json(request)
        if body_is_invalid(request) or not isinstance(body, dict):
            return self.error(400, "There was an issue with your request body: it is not a JSON object")
        for field in ("model", "messages") if count else ("model", "messages", "max_tokens"):
            if field not in body:
                return self.error(400, f"{field}: Field required")
        if not isinstance(body["messages"], list) or not body["messages"]:
            return self.error(400, "messages: at least one message is required")
        if not count and (as_int(body["max_tokens"]) or 0) < 1:
            return self.error(400, "max_tokens: Input should be greater than or equal to 1")
        if body["model"] not in self.b.models:
            return self.error(404, f"model: {body['model']}")
        return body

    def generation(self, body: dict[str, Any]) -> Generation:
        chat = vllm_chat(body)  # the conversation as chat messages: the prompt the simulated model reads
        result = _last_result(body["messages"])
        return toolkit.chat_generation(
            str(body["model"]), messages_text(chat["messages"]), tools=toolkit.openai_tools(anthropic_tools(body.get("tools"))),
            choice=_choice(body.get("tool_choice")), after_result=result is not None, result_text=result or "",
            spell=lambda call: call.python_json(), max_tokens=as_int(body.get("max_tokens")),
            stop=body.get("stop_sequences"))

    async def messages(self, request: web.Request) -> web.StreamResponse:
        body = await self._checked(request, count=False)
        if isinstance(body, web.Response):
            return body
        gen = self.generation(body)
        msg_id, tool_id = anthropic_id("msg_"), anthropic_id("toolu_")
        model, stream = str(body["model"]), body.get("stream") is True
        headers = {"request-id": anthropic_id("req_")}
        async with self.b.scheduler.seat(request, self.b, model, gen, load.slot_params(body, stream)):
            if stream:
                return await self.b.stream(request, self.events(msg_id, tool_id, model, gen), content_type=STREAM_TYPE,
                                           headers={**headers, "Cache-Control": "no-cache"})
            interval = self.b.token_interval() * max(gen.completion_tokens - 1, 0)
            await self.b.pause(request, self.b.first_token_delay() + interval)
            return self.b.json(self.whole(msg_id, tool_id, model, gen), headers=headers)

    async def count(self, request: web.Request) -> web.StreamResponse:
        body = await self._checked(request, count=True)
        if isinstance(body, web.Response):
            return body
        return self.b.json({"input_tokens": count_tokens(messages_text(vllm_chat(body)["messages"]))})

    # -- answers

    @staticmethod
    def _stop(gen: Generation) -> tuple[str, str | None]:
        if gen.finish_reason == "stop" and gen.stop_reason:
            return "stop_sequence", gen.stop_reason
        return _STOP.get(gen.finish_reason, "end_turn"), None

    def whole(self, msg_id: str, tool_id: str, model: str, gen: Generation) -> dict[str, Any]:
        content: list[dict[str, Any]] = [{"type": "text", "text": gen.text}] if gen.pieces else []
        if gen.call is not None:
            content.append({"type": "tool_use", "id": tool_id, "name": gen.call.name, "input": gen.call.arguments})
        reason, sequence = self._stop(gen)
        return {"id": msg_id, "type": "message", "role": "assistant", "model": model, "content": content,
                "stop_reason": reason, "stop_sequence": sequence, "stop_details": None,
                "usage": _usage(gen.prompt_tokens, gen.completion_tokens)}

    def events(self, msg_id: str, tool_id: str, model: str, gen: Generation) -> Iterator[Event]:
        def ev(obj: dict[str, Any]) -> bytes:
            return named_sse(obj["type"], compact_json(obj))

        ping = b'event: ping\ndata: {"type": "ping"}\n\n'  # the API's one event with spaces in its JSON
        start = {"model": model, "id": msg_id, "type": "message", "role": "assistant", "content": [],
                 "stop_reason": None, "stop_sequence": None, "stop_details": None, "usage": _usage(gen.prompt_tokens, 1)}
        yield False, ev({"type": "message_start", "message": start})
        index = 0
        if gen.pieces:
            yield False, ev({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}})
            yield False, ping
            for piece in gen.pieces:
                yield True, ev({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": piece}})
            yield False, ev({"type": "content_block_stop", "index": 0})
            index = 1
        if gen.call is not None:
            yield False, ev({"type": "content_block_start", "index": index, "content_block": {
                "type": "tool_use", "id": tool_id, "name": gen.call.name, "input": {}}})
            if index == 0:
                yield False, ping
            yield False, ev({"type": "content_block_delta", "index": index,
                             "delta": {"type": "input_json_delta", "partial_json": ""}})
            for piece in gen.call_pieces:
                yield True, ev({"type": "content_block_delta", "index": index,
                                "delta": {"type": "input_json_delta", "partial_json": piece}})
            yield False, ev({"type": "content_block_stop", "index": index})
        if not gen.pieces and gen.call is None:
            yield False, ping
        reason, sequence = self._stop(gen)
        yield False, ev({"type": "message_delta", "delta": {"stop_reason": reason, "stop_sequence": sequence,
                                                            "stop_details": None},
                         "usage": {"input_tokens": gen.prompt_tokens, "cache_creation_input_tokens": 0,
                                   "cache_read_input_tokens": 0, "output_tokens": gen.completion_tokens}})
        yield False, ev({"type": "message_stop"})
