"""OpenAI Responses (``POST /v1/responses``) as the real servers serve it natively.

Sources (read, not copied):

* **Ollama** ``openai/responses.go`` (since v0.13.3, Dec 2025) and
  ``middleware/openai.go`` ``ResponsesMiddleware``: ``instructions`` → system,
  ``function_call_output`` → a ``tool`` message, ``tool_choice`` ignored; ids
  ``resp_``/``msg_`` + a number below 10⁶, stream ``fc_<n>_<i>``, whole answer
  ``fc_<resp id>_<i>``; each stream event a Go ``map`` (keys sorted, at every
  level) with ``sequence_number``; the whole answer the ``ResponsesResponse``
  struct written by ``json.NewEncoder`` (field order, trailing newline).
* **vLLM** ``entrypoints/openai/responses/simple_streaming_events.py`` (event
  sequence and item ids: bare uuid hex in the stream, ``call_<hex>`` call ids),
  ``protocol.py`` ``ResponsesResponse`` (field order), ``api_router.py``
  (``event: <type>`` framing, ``model_dump_json``; the whole answer
  ``model_dump()``); events are openai-python models (field order of their
  ``model_fields``), ``sequence_number`` from 0.
* **llama-server** ``server.cpp`` (``/v1/responses`` and ``/responses``; 404 in
  b5902, July 2025, issue #14702), ``server-common.cpp``
  ``convert_responses_to_chatcmpl`` (only ``function`` tools), ``server-task.cpp``
  ``to_json_oaicompat_resp[_stream]`` and the partial results' ``to_json_oaicompat_resp``:
  events carry no ``sequence_number`` nor ``output_index``, ``created``/``in_progress``
  come with the first token, no ``function_call_arguments.done``, call ids
  ``fc_`` + the tool call id, no ``[DONE]``.
"""

from __future__ import annotations

import random
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from aiohttp import web

from . import load
from . import tools as toolkit
from .backend import read_json
from .core import Generation, as_int, content_text, messages_text
from .encoding import compact_json, go_json, named_sse
from .openai_compat import LlamaServerDialect, OpenAICompatAPI, VLLMDialect, _alnum
from .prefix import Prompt
from .tools import ToolSpec

if TYPE_CHECKING:
    from .backend import SimulatedBackend
    from .ollama import OllamaAPI

Event = tuple[bool | int, bytes]


@dataclass
class Reply:
    """One Responses request as the renderers see it."""

    id: str
    item_id: str
    model: str
    gen: Generation
    body: dict[str, Any]
    call_id: str = ""
    fc_id: str = ""
    created: int = field(default_factory=lambda: int(time.time()))

    @property
    def usage_in(self) -> int:
        return self.gen.prompt_tokens

    @property
    def usage_out(self) -> int:
        return self.gen.completion_tokens


def chat_messages(body: dict[str, Any]) -> list[dict[str, Any]]:
    """The request's ``instructions`` and ``input`` as chat messages (what all three
    servers build before generating): a string input is one user message; items
    are messages, ``function_call`` (an assistant tool call) and
    ``function_call_output`` (a ``tool`` message)."""
    messages: list[dict[str, Any]] = []
    if body.get("instructions"):
        messages.append({"role": "system", "content": str(body["instructions"])})
    data = body.get("input")
    if isinstance(data, str):
        if data:
            messages.append({"role": "user", "content": data})
        return messages
    for item in data if isinstance(data, list) else []:
        if not isinstance(item, dict):
            continue
        kind = item.get("type")
        if kind == "function_call":
            call = {"id": item.get("call_id"), "type": "function",
                    "function": {"name": item.get("name"), "arguments": item.get("arguments") or ""}}
            if messages and messages[-1].get("role") == "assistant" and "tool_calls" in messages[-1]:
                messages[-1]["tool_calls"].append(call)
            else:
                messages.append({"role": "assistant", "content": None, "tool_calls": [call]})
        elif kind == "function_call_output":
            output = item.get("output")
            text = output if isinstance(output, str) else content_text(output)
            messages.append({"role": "tool", "content": text, "tool_call_id": item.get("call_id")})
        elif "role" in item:
            messages.append({"role": item["role"], "content": content_text(item.get("content"))})
    return messages


def response_tools(tools: Any) -> list[ToolSpec]:
    """Responses ``tools`` (``{"type": "function", "name": ..., "parameters": ...}``)."""
    out = []
    for t in tools if isinstance(tools, list) else []:
        if isinstance(t, dict) and t.get("type") == "function" and isinstance(t.get("name"), str):
            params = t.get("parameters")
            out.append(ToolSpec(t["name"], params if isinstance(params, dict) else {}))
    return out


def response_choice(choice: Any) -> str:
    """Responses ``tool_choice``: ``"none"``, ``"auto"``/``"required"``, ``{"type": "function", "name": ...}``."""
    if choice == "none":
        return toolkit.NONE
    if isinstance(choice, dict) and isinstance(choice.get("name"), str):
        return choice["name"]
    return toolkit.AUTO


def sorted_tree(obj: Any) -> Any:
    """``obj`` with every dict's keys sorted (a Go ``map[string]any`` as marshalled)."""
    if isinstance(obj, dict):
        return {k: sorted_tree(obj[k]) for k in sorted(obj)}
    if isinstance(obj, list):
        return [sorted_tree(v) for v in obj]
    return obj


class ResponsesDoor:
    """``/v1/responses`` of one server kind."""

    headers_early = False
    stream_type = "text/event-stream"
    stream_headers: dict[str, str] = {}
    paths: tuple[str, ...] = ("/v1/responses",)

    def __init__(self, backend: SimulatedBackend) -> None:
        self.b = backend

    def add_routes(self, router: web.UrlDispatcher) -> None:
        for path in self.paths:
            router.add_post(path, self.responses)

    def owns(self, path: str) -> bool:
        return path in self.paths

    # -- hooks
    def error(self, status: int, message: str) -> web.Response:
        raise NotImplementedError

    def check(self, body: Any) -> web.Response | None:
        if not isinstance(body, dict):
            return self.error(400, "request body must be a JSON object")
        return None

    def resolve(self, body: dict[str, Any]) -> tuple[str, web.Response | None]:
        raise NotImplementedError

    def choice(self, body: dict[str, Any]) -> str:
        return response_choice(body.get("tool_choice"))

    def spell(self, call: toolkit.ToolCall) -> str:
        return call.compact_json()

    def reply(self, model: str, gen: Generation, body: dict[str, Any]) -> Reply:
        raise NotImplementedError

    def load_delay(self, model: str) -> float:
        return 0.0

    def events(self, r: Reply) -> Iterator[Event]:
        raise NotImplementedError

    def whole(self, r: Reply) -> web.Response:
        raise NotImplementedError

    # -- handler
    async def responses(self, request: web.Request) -> web.StreamResponse:
        body = await read_json(request)
        bad = self.check(body)
        if bad is not None:
            return bad
        model, err = self.resolve(body)
        if err is not None:
            return err
        try:
            messages = chat_messages(body)
            gen = toolkit.chat_generation(
                model, messages_text(messages), tools=response_tools(body.get("tools")), choice=self.choice(body),
                after_result=toolkit.last_is_tool_result(messages), result_text=toolkit.last_text(messages),
                spell=self.spell, max_tokens=as_int(body.get("max_output_tokens")))
            r = self.reply(model, gen, body)
        except (TypeError, ValueError, AttributeError, KeyError) as exc:  # the server's decoder rejects it
            return self.error(400, f"invalid request: {exc}")
        stream = bool(body.get("stream"))
        params = load.slot_params({"max_tokens": body.get("max_output_tokens"),
                                   "temperature": body.get("temperature")}, stream)
        prompt = Prompt.of(messages_text(messages), response_tools(body.get("tools")))  # cached, not reported here
        async with self.b.scheduler.seat(request, self.b, model, gen, params, prompt) as seat:
            extra = self.load_delay(model)
            if stream:
                return await self.b.stream(request, self.events(r), content_type=self.stream_type, extra_delay=extra,
                                           headers_early=self.headers_early, headers=self.stream_headers,
                                           prefill=seat.prefill)
            interval = self.b.token_interval() * max(gen.completion_tokens - 1, 0)
            await self.b.compute(request, seat.prefill, extra_delay=extra, decode=interval)
            return self.whole(r)


# ---------------------------------------------------------------- Ollama


class OllamaResponses(ResponsesDoor):
    """Ollama's ``ResponsesMiddleware`` in front of its chat handler."""

    stream_headers = {"Cache-Control": "no-cache"}

    def __init__(self, backend: SimulatedBackend, api: OllamaAPI) -> None:
        super().__init__(backend)
        self.api = api

    def error(self, status: int, message: str) -> web.Response:
        etype = {400: "invalid_request_error", 404: "not_found_error"}.get(status, "api_error")
        body = {"error": {"message": message, "type": etype, "param": None, "code": None}}
        return web.Response(body=go_json(body, newline=True), status=status,
                            headers={"Content-Type": "application/json"})

    def resolve(self, body: dict[str, Any]) -> tuple[str, web.Response | None]:
        requested = str(body.get("model") or "")
        if not requested:
            return requested, self.error(400, "model is required")
        name = self.api.resolve(requested)
        if name is None:
            return requested, self.error(404, f"model '{requested}' not found")
        return name, None

    def choice(self, body: dict[str, Any]) -> str:
        return toolkit.AUTO  # "tool_choice is not supported"

    def spell(self, call: toolkit.ToolCall) -> str:
        return go_json(call.arguments).decode()

    def reply(self, model: str, gen: Generation, body: dict[str, Any]) -> Reply:
        from .ollama import tool_call_id

        rid = f"resp_{random.randint(0, 999998)}"
        return Reply(rid, f"msg_{random.randint(0, 999998)}", str(body.get("model")), gen, body,
                     call_id=tool_call_id(), fc_id=f"fc_{random.randint(0, 999998)}_0")

    def load_delay(self, model: str) -> float:
        return self.api.use(model, None)

    def _object(self, r: Reply, status: str, output: list[Any], usage: Any) -> dict[str, Any]:
        """``buildResponseObject`` (a Go map)."""
        body = r.body
        tools = [{"type": t.get("type"), "name": t.get("name"), "description": t.get("description"),
                  "strict": t.get("strict"), "parameters": t.get("parameters")}
                 for t in body.get("tools") or [] if isinstance(t, dict)]
        fmt = ((body.get("text") or {}).get("format") if isinstance(body.get("text"), dict) else None) or {"type": "text"}
        reasoning = body.get("reasoning") if isinstance(body.get("reasoning"), dict) else {}
        return {
            "id": r.id, "object": "response", "created_at": int(time.time()), "completed_at": None,
            "status": status, "incomplete_details": None, "model": r.model, "previous_response_id": None,
            "instructions": body.get("instructions") or None, "output": output, "error": None, "tools": tools,
            "tool_choice": "auto", "truncation": body.get("truncation") or "disabled", "parallel_tool_calls": True,
            "text": {"format": fmt}, "top_p": body.get("top_p", 1.0) if body.get("top_p") is not None else 1.0,
            "presence_penalty": 0, "frequency_penalty": 0, "top_logprobs": 0,
            "temperature": body.get("temperature") if body.get("temperature") is not None else 1.0,
            "reasoning": ({"effort": reasoning.get("effort"), "summary": reasoning.get("summary")}
                          if reasoning.get("effort") or reasoning.get("summary") else None),
            "usage": usage, "max_output_tokens": body.get("max_output_tokens"), "max_tool_calls": None,
            "store": False, "background": bool(body.get("background")), "service_tier": "default", "metadata": {},
            "safety_identifier": None, "prompt_cache_key": None,
        }

    def _usage(self, r: Reply) -> dict[str, Any]:
        return {"input_tokens": r.usage_in, "output_tokens": r.usage_out, "total_tokens": r.usage_in + r.usage_out,
                "input_tokens_details": {"cached_tokens": 0}, "output_tokens_details": {"reasoning_tokens": 0}}

    def events(self, r: Reply) -> Iterator[Event]:
        seq = iter(range(1 << 30))

        def ev(kind: str, data: dict[str, Any]) -> bytes:
            data = {**data, "type": kind, "sequence_number": next(seq)}
            return named_sse(kind, go_json(data, sort_keys=True))

        opening = [ev("response.created", {"response": self._object(r, "in_progress", [], None)}),
                   ev("response.in_progress", {"response": self._object(r, "in_progress", [], None)})]
        message = {"type": "output_text", "text": r.gen.text, "annotations": [], "logprobs": []}
        done_items: list[Any] = []
        call = r.gen.call
        if call is not None:
            item = {"id": r.fc_id, "type": "function_call", "status": "completed", "call_id": r.call_id,
                    "name": call.name, "arguments": r.gen.arguments}
            done_items.append(item)
            first = [*opening,
                     ev("response.output_item.added", {"output_index": 0, "item": {**item, "status": "in_progress",
                                                                                   "arguments": ""}}),
                     ev("response.function_call_arguments.delta", {"item_id": r.fc_id, "output_index": 0,
                                                                   "delta": r.gen.arguments}),
                     ev("response.function_call_arguments.done", {"item_id": r.fc_id, "output_index": 0,
                                                                  "arguments": r.gen.arguments}),
                     ev("response.output_item.done", {"output_index": 0, "item": item})]
            yield len(r.gen.call_pieces), first[0]
            for data in first[1:]:
                yield False, data
        for i, piece in enumerate(r.gen.pieces):
            if i == 0:
                yield True, opening[0]
                yield False, opening[1]
                yield False, ev("response.output_item.added", {"output_index": 0, "item": {
                    "id": r.item_id, "type": "message", "status": "in_progress", "role": "assistant", "content": []}})
                yield False, ev("response.content_part.added", {"item_id": r.item_id, "output_index": 0,
                                                                "content_index": 0,
                                                                "part": {**message, "text": ""}})
            delta = ev("response.output_text.delta", {"item_id": r.item_id, "output_index": 0, "content_index": 0,
                                                      "delta": piece, "logprobs": []})
            yield (False if i == 0 else True), delta
        if call is None and not r.gen.pieces:
            for data in opening:
                yield False, data
        if r.gen.pieces:
            item = {"id": r.item_id, "type": "message", "status": "completed", "role": "assistant", "content": [message]}
            done_items.append(item)
            yield False, ev("response.output_text.done", {"item_id": r.item_id, "output_index": 0, "content_index": 0,
                                                          "text": r.gen.text, "logprobs": []})
            yield False, ev("response.content_part.done", {"item_id": r.item_id, "output_index": 0,
                                                           "content_index": 0, "part": message})
            yield False, ev("response.output_item.done", {"output_index": 0, "item": item})
        final = self._object(r, "completed", done_items, self._usage(r))
        final["completed_at"] = int(time.time())
        yield False, ev("response.completed", {"response": final})

    def whole(self, r: Reply) -> web.Response:
        """``ToResponse`` (struct order), ``completed_at`` set by the writer."""
        call = r.gen.call
        if call is not None:
            output = [{"id": f"fc_{r.id}_0", "type": "function_call", "status": "completed", "call_id": r.call_id,
                       "name": call.name, "arguments": r.gen.arguments}]
        else:
            output = [{"id": r.item_id, "type": "message", "status": "completed", "role": "assistant",
                       "content": [{"type": "output_text", "text": r.gen.text, "annotations": [], "logprobs": []}]}]
        body = self._object(r, "completed", output, self._usage(r))
        ordered = {k: body[k] for k in (
            "id", "object", "created_at", "completed_at", "status", "incomplete_details", "model",
            "previous_response_id", "instructions", "output", "error", "tools", "tool_choice", "truncation",
            "parallel_tool_calls", "text", "top_p", "presence_penalty", "frequency_penalty", "top_logprobs",
            "temperature", "reasoning", "usage", "max_output_tokens", "max_tool_calls", "store", "background",
            "service_tier", "metadata", "safety_identifier", "prompt_cache_key")}
        ordered["created_at"] = r.created
        ordered["completed_at"] = int(time.time())
        ordered["tools"] = [{"type": t["type"], "name": t["name"], "description": t["description"],
                             "strict": t["strict"], "parameters": sorted_tree(t["parameters"])} for t in body["tools"]]
        ordered["usage"] = {k: body["usage"][k] for k in ("input_tokens", "output_tokens", "total_tokens",
                                                          "input_tokens_details", "output_tokens_details")}
        return web.Response(body=go_json(ordered, newline=True), headers={"Content-Type": "application/json"})


# ---------------------------------------------------------------- vLLM


class VLLMResponses(ResponsesDoor):
    """vLLM's ``/v1/responses`` for a model without the Harmony format."""

    headers_early = True
    stream_type = "text/event-stream; charset=utf-8"

    def __init__(self, backend: SimulatedBackend, api: OpenAICompatAPI) -> None:
        super().__init__(backend)
        self.api = api
        self.d: VLLMDialect = api.d  # type: ignore[assignment]

    def error(self, status: int, message: str) -> web.Response:
        return self.d.error(status, message)

    def check(self, body: Any) -> web.Response | None:
        """pydantic validation of ``ResponsesRequest`` (FastAPI's handler: 400, ``Bad Request``)."""
        wrong = [] if isinstance(body, dict) else ["body"]
        if isinstance(body, dict):
            wrong += [k for k in ("temperature", "top_p") if body.get(k) is not None
                      and (isinstance(body[k], bool) or not isinstance(body[k], (int, float)))]
            wrong += [k for k in ("max_output_tokens", "top_logprobs") if body.get(k) is not None
                      and (isinstance(body[k], bool) or not isinstance(body[k], int))]
            wrong += ["input"] if not isinstance(body.get("input"), (str, list)) else []
        if not wrong:
            return None
        message = f"{len(wrong)} validation error(s) for ResponsesRequest: " + ", ".join(wrong)
        return self.b.json({"error": {"message": message, "type": "Bad Request", "param": None, "code": 400}}, 400)

    def resolve(self, body: dict[str, Any]) -> tuple[str, web.Response | None]:
        return self.d.resolve(body.get("model"))

    def spell(self, call: toolkit.ToolCall) -> str:
        return call.python_json()

    def reply(self, model: str, gen: Generation, body: dict[str, Any]) -> Reply:
        return Reply(f"resp_{uuid.uuid4().hex}", uuid.uuid4().hex, model, gen, body,
                     call_id=f"call_{uuid.uuid4().hex}", fc_id=uuid.uuid4().hex)

    def _object(self, r: Reply, status: str, output: list[Any], usage: Any) -> dict[str, Any]:
        """``ResponsesResponse.from_request`` (field order of vLLM's protocol)."""
        body = r.body
        max_out = as_int(body.get("max_output_tokens"))
        return {
            "id": r.id, "created_at": r.created, "incomplete_details": None,
            "instructions": body.get("instructions"), "metadata": body.get("metadata"), "model": r.model,
            "object": "response", "output": output, "parallel_tool_calls": body.get("parallel_tool_calls", True),
            "temperature": float(body["temperature"]) if body.get("temperature") is not None else 1.0,
            "tool_choice": body.get("tool_choice", "auto"), "tools": body.get("tools") or [],
            "top_p": float(body["top_p"]) if body.get("top_p") is not None else 1.0,
            "background": bool(body.get("background")),
            "max_output_tokens": max_out if max_out is not None else self.b.max_model_len - r.usage_in,
            "max_tool_calls": body.get("max_tool_calls"), "previous_response_id": body.get("previous_response_id"),
            "prompt": None, "reasoning": body.get("reasoning"), "service_tier": body.get("service_tier") or "auto",
            "status": status, "text": body.get("text"), "top_logprobs": body.get("top_logprobs") or 0,
            "truncation": body.get("truncation") or "disabled", "usage": usage, "user": body.get("user"),
        }

    def _usage(self, r: Reply) -> dict[str, Any]:
        return {"input_tokens": r.usage_in, "input_tokens_details": {"cached_tokens": 0},
                "output_tokens": r.usage_out, "output_tokens_details": {"reasoning_tokens": 0},
                "total_tokens": r.usage_in + r.usage_out}

    def _call_item(self, r: Reply, item_id: str, status: str, arguments: str) -> dict[str, Any]:
        call = r.gen.call
        assert call is not None
        return {"arguments": arguments, "call_id": r.call_id, "name": call.name, "type": "function_call",
                "id": item_id, "status": status}

    def events(self, r: Reply) -> Iterator[Event]:
        seq = iter(range(1 << 30))

        def ev(data: dict[str, Any]) -> bytes:
            kind = data["type"]
            if "sequence_number" in data:
                data["sequence_number"] = next(seq)
            return named_sse(kind, compact_json(data))

        yield False, ev({"response": self._object(r, "in_progress", [], None), "sequence_number": 0,
                         "type": "response.created"})
        yield False, ev({"response": self._object(r, "in_progress", [], None), "sequence_number": 0,
                         "type": "response.in_progress"})
        call = r.gen.call
        item_id = r.fc_id if call is not None else r.item_id
        output: list[Any] = []
        if call is not None:
            yield False, ev({"item": self._call_item(r, item_id, "in_progress", ""), "output_index": 0,
                             "sequence_number": 0, "type": "response.output_item.added"})
            for piece in r.gen.call_pieces:
                yield True, ev({"delta": piece, "item_id": item_id, "output_index": 0, "sequence_number": 0,
                                "type": "response.function_call_arguments.delta"})
            yield False, ev({"arguments": r.gen.arguments, "item_id": item_id, "output_index": 0,
                             "sequence_number": 0, "type": "response.function_call_arguments.done",
                             "name": call.name})
            item = self._call_item(r, item_id, "completed", r.gen.arguments)
            output.append(item)
            yield False, ev({"item": item, "output_index": 0, "sequence_number": 0,
                             "type": "response.output_item.done"})
        for i, piece in enumerate(r.gen.pieces):
            if i == 0:
                yield False, ev({"item": {"id": item_id, "content": [], "role": "assistant", "status": "in_progress",
                                          "type": "message"}, "output_index": 0, "sequence_number": 0,
                                 "type": "response.output_item.added"})
                yield False, ev({"content_index": 0, "item_id": item_id, "output_index": 0,
                                 "part": {"annotations": [], "text": "", "type": "output_text", "logprobs": []},
                                 "sequence_number": 0, "type": "response.content_part.added"})
            yield True, ev({"content_index": 0, "delta": piece, "item_id": item_id, "logprobs": [],
                            "output_index": 0, "sequence_number": 0, "type": "response.output_text.delta"})
        if r.gen.pieces:
            text = {"annotations": [], "text": r.gen.text, "type": "output_text", "logprobs": None}
            yield False, ev({"content_index": 0, "item_id": item_id, "logprobs": [], "output_index": 0,
                             "sequence_number": 0, "text": r.gen.text, "type": "response.output_text.done"})
            yield False, ev({"content_index": 0, "item_id": item_id, "output_index": 0, "part": text,
                             "sequence_number": 0, "type": "response.content_part.done"})
            item = {"id": item_id, "content": [text], "role": "assistant", "status": "completed", "type": "message",
                    "annotations": [], "logprobs": []}
            output.append({k: v for k, v in item.items() if k not in ("annotations", "logprobs")})
            yield False, ev({"item": item, "output_index": 0, "sequence_number": 0,
                             "type": "response.output_item.done"})
        yield False, ev({"response": self._object(r, "completed", output, self._usage(r)), "sequence_number": 0,
                         "type": "response.completed"})

    def whole(self, r: Reply) -> web.Response:
        call = r.gen.call
        if call is not None:
            output = [self._call_item(r, f"fc_{uuid.uuid4().hex}", "completed", r.gen.arguments)]
        else:
            output = [{"id": f"msg_{uuid.uuid4().hex}", "content": [{"annotations": [], "text": r.gen.text,
                                                                     "type": "output_text", "logprobs": None}],
                       "role": "assistant", "status": "completed", "type": "message"}]
        return self.b.json(self._object(r, "completed", output, self._usage(r)))


# ---------------------------------------------------------------- llama-server


class LlamaServerResponses(ResponsesDoor):
    """llama-server's ``/v1/responses`` (also ``/responses``)."""

    paths = ("/v1/responses", "/responses")

    def __init__(self, backend: SimulatedBackend, api: OpenAICompatAPI) -> None:
        super().__init__(backend)
        self.api = api
        self.d: LlamaServerDialect = api.d  # type: ignore[assignment]

    def error(self, status: int, message: str) -> web.Response:
        return self.d.error(status, message)

    def check(self, body: Any) -> web.Response | None:
        if not isinstance(body, dict):
            return self.error(500, "[json.exception.type_error.302] type must be object")
        data = body.get("input")
        if not isinstance(data, (str, list)):
            return self.error(400, "'input' must be a string or array of objects")
        for t in body.get("tools") or []:
            if not isinstance(t, dict) or t.get("type") != "function":
                return self.error(400, "'type' of tool must be 'function'")
        return None

    def resolve(self, body: dict[str, Any]) -> tuple[str, web.Response | None]:
        return str(body.get("model") or self.b.models[0]), None

    def reply(self, model: str, gen: Generation, body: dict[str, Any]) -> Reply:
        return Reply("resp_" + _alnum(32), "msg_" + _alnum(32), model, gen, body, call_id="fc_" + _alnum(32))

    def _usage(self, r: Reply) -> dict[str, int]:
        return {"input_tokens": r.usage_in, "output_tokens": r.usage_out, "total_tokens": r.usage_in + r.usage_out}

    def events(self, r: Reply) -> Iterator[Event]:
        def ev(data: dict[str, Any]) -> bytes:
            return named_sse(data["type"], compact_json(data))

        opening = ev({"type": "response.created", "response": {"id": r.id, "object": "response",
                                                                "status": "in_progress"}}) + \
            ev({"type": "response.in_progress", "response": {"id": r.id, "object": "response",
                                                             "status": "in_progress"}})
        first = True
        for i, piece in enumerate(r.gen.pieces):
            head = opening if first else b""
            if i == 0:
                head += ev({"type": "response.output_item.added", "item": {
                    "content": [], "id": r.item_id, "role": "assistant", "status": "in_progress", "type": "message"}})
                head += ev({"type": "response.content_part.added", "item_id": r.item_id,
                            "part": {"type": "output_text", "text": ""}})
            yield True, head + ev({"type": "response.output_text.delta", "item_id": r.item_id, "delta": piece})
            first = False
        call = r.gen.call
        for i, piece in enumerate(r.gen.call_pieces):
            head = opening if first else b""
            if i == 0 and call is not None:
                head += ev({"type": "response.output_item.added", "item": {
                    "arguments": "", "call_id": r.call_id, "name": call.name, "type": "function_call",
                    "status": "in_progress"}})
            yield True, head + ev({"type": "response.function_call_arguments.delta", "delta": piece,
                                   "item_id": r.call_id})
            first = False
        tail = opening if first else b""
        output: list[Any] = []
        if r.gen.pieces:
            part = {"type": "output_text", "annotations": [], "logprobs": [], "text": r.gen.text}
            item = {"type": "message", "status": "completed", "id": r.item_id, "content": [part], "role": "assistant"}
            tail += ev({"type": "response.output_text.done", "item_id": r.item_id, "text": r.gen.text})
            tail += ev({"type": "response.content_part.done", "item_id": r.item_id, "part": part})
            tail += ev({"type": "response.output_item.done", "item": item})
            output.append(item)
        if call is not None:
            item = {"type": "function_call", "status": "completed", "arguments": r.gen.arguments,
                    "call_id": r.call_id, "name": call.name}
            tail += ev({"type": "response.output_item.done", "item": item})
            output.append(item)
        tail += ev({"type": "response.completed", "response": {
            "id": r.id, "object": "response", "created_at": int(time.time()), "status": "completed",
            "model": r.model, "output": output, "usage": self._usage(r)}})
        yield False, tail

    def whole(self, r: Reply) -> web.Response:
        output: list[Any] = []
        if r.gen.text:
            output.append({"content": [{"type": "output_text", "annotations": [], "logprobs": [], "text": r.gen.text}],
                           "id": r.item_id, "role": "assistant", "status": "completed", "type": "message"})
        if r.gen.call is not None:
            output.append({"type": "function_call", "status": "completed", "arguments": r.gen.arguments,
                           "call_id": r.call_id, "name": r.gen.call.name})
        now = int(time.time())
        return self.d.json({"completed_at": now, "created_at": now, "id": r.id, "model": r.model,
                            "object": "response", "output": output, "status": "completed", "usage": self._usage(r)})
