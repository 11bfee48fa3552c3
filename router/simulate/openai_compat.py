"""OpenAI-compatible endpoints, with one :class:`Dialect` per real server.

The dialects reproduce each server's known differences: chunk shapes and key
order, where ``finish_reason`` rides, ``include_usage`` support, the SSE line
terminator, ``/v1/models`` and ``/health`` answers, model-name handling and
error bodies. Sources (read, not copied): vLLM ``entrypoints/openai``
(``chat_completion/serving.py``, ``engine/protocol.py``, ``models/serving.py``,
``serve/instrumentator/health.py``), llama.cpp ``tools/server``
(``server-task.cpp``, ``server-common.cpp``), llama-cpp-python
``llama_cpp/server/app.py``, ``errors.py`` and ``llama_chat_format.py``.
"""

from __future__ import annotations

import json
import random
import string
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http import HTTPStatus
from typing import TYPE_CHECKING, Any

import orjson
from aiohttp import web

from . import load
from . import tools as toolkit
from .backend import read_json
from .core import Generation, as_int, content_text, count_tokens, embed, generate, messages_text
from .prefix import Prompt
from .tools import ToolCall

if TYPE_CHECKING:
    from .backend import SimulatedBackend

Chunk = tuple[bool, dict[str, Any]]  # (is_token, chunk object)


@dataclass
class Ctx:
    """One generation request as the dialects see it."""

    id: str
    created: int
    model: str
    gen: Generation
    include_usage: bool
    ttft: float
    interval: float
    tool_id: str = ""  # the id of the model's tool call, when it makes one
    named: bool = False  # tool_choice named the tool (vLLM: guided decoding, finish "stop")
    cached: int = 0  # prompt tokens the server's cache served (known once the request is seated)
    prefill: float = 0.0  # seconds of prefill of the rest, on top of ttft

    @property
    def prompt(self) -> int:
        return self.gen.prompt_tokens

    @property
    def completion(self) -> int:
        return self.gen.completion_tokens

    def usage(self) -> dict[str, int]:
        return {"prompt_tokens": self.prompt, "completion_tokens": self.completion, "total_tokens": self.prompt + self.completion}


def _alnum(n: int) -> str:
    return "".join(random.choices(string.ascii_letters + string.digits, k=n))


class Dialect:
    """A generic OpenAI-style server (api.openai.com shapes); base of the others."""

    sse_newline = "\n"
    sse_content_type = "text/event-stream; charset=utf-8"
    json_content_type = "application/json"
    headers_early = True
    honours_include_usage = True

    def __init__(self, backend: SimulatedBackend) -> None:
        self.b = backend

    # -- plumbing
    def dumps(self, obj: Any) -> bytes:
        return orjson.dumps(obj)

    def sse(self, obj: Any) -> bytes:
        nl = (self.b.sse_newline or self.sse_newline).encode()
        data = obj.encode() if isinstance(obj, str) else self.dumps(obj)
        return b"data: " + data + nl + nl

    def json(self, obj: Any, status: int = 200) -> web.Response:
        return self.b.json(obj, status, content_type=self.json_content_type)

    def add_extra_routes(self, router: web.UrlDispatcher) -> None:
        router.add_get("/health", self.health)

    async def health(self, request: web.Request) -> web.Response:
        return self.json({"status": "ok"})

    def not_found(self, request: web.Request) -> web.Response:
        return self.json(self.error_body(404, f"Invalid URL ({request.method} {request.path})"), 404)

    def load_delay(self, model: str) -> float:
        return 0.0

    # -- errors and models
    def error_body(self, status: int, message: str, *, code: Any = None) -> dict[str, Any]:
        etype = "server_error" if status >= 500 else "invalid_request_error"
        return {"error": {"message": message, "type": etype, "param": None, "code": code}}

    def error(self, status: int, message: str, **kw: Any) -> web.Response:
        return self.json(self.error_body(status, message, **kw), status)

    def resolve(self, requested: Any) -> tuple[str, web.Response | None]:
        """The model name to answer with, or an error response."""
        if not requested:
            return "", self.error(400, "you must provide a model parameter")
        if requested not in self.b.models:
            msg = f"The model `{requested}` does not exist or you do not have access to it."
            return requested, self.error(404, msg, code="model_not_found")
        return requested, None

    def model_list(self) -> dict[str, Any]:
        data = [{"id": m, "object": "model", "created": self.b.created, "owned_by": "system"} for m in self.b.models]
        return {"object": "list", "data": data}

    # -- tool use
    def tool_choice(self, body: dict[str, Any]) -> str:
        """``tool_choice`` reduced for :mod:`router.simulate.tools` (what makes this
        server's model call a tool)."""
        return toolkit.openai_choice(body.get("tool_choice"))

    def spell(self, call: ToolCall) -> str:
        """The call's arguments as this server writes them."""
        return call.compact_json()

    def tool_id(self, c: Ctx) -> str:
        return "call_" + _alnum(24)

    def finish(self, c: Ctx) -> str:
        """``finish_reason`` of the answer (``tool_calls`` after a call)."""
        return c.gen.finish_reason

    def tool_call_chunks(self, c: Ctx) -> Iterator[Chunk]:
        """api.openai.com: the call (name, empty arguments) with the role, then argument fragments."""
        call = c.gen.call
        assert call is not None

        def choice(delta: dict[str, Any], finish: str | None = None) -> list[dict[str, Any]]:
            return [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]

        head = {"index": 0, "id": c.tool_id, "type": "function", "function": {"name": call.name, "arguments": ""}}
        yield False, self._chunk(c, choice({"role": "assistant", "content": None, "tool_calls": [head],
                                            "refusal": None}))
        for piece in c.gen.call_pieces:
            yield True, self._chunk(c, choice({"tool_calls": [{"index": 0, "function": {"arguments": piece}}]}))
        yield False, self._chunk(c, choice({}, self.finish(c)))
        if c.include_usage:
            yield False, {**self._chunk(c, []), "usage": c.usage()}

    def tool_calls(self, c: Ctx) -> list[dict[str, Any]]:
        """The ``tool_calls`` of a whole (non-streamed) answer."""
        call = c.gen.call
        assert call is not None
        return [{"id": c.tool_id, "type": "function", "function": {"name": call.name, "arguments": c.gen.arguments}}]

    # -- ids
    def chat_id(self) -> str:
        return "chatcmpl-" + _alnum(29)

    def cmpl_id(self) -> str:
        return "cmpl-" + _alnum(29)

    # -- chat completions
    def _chunk(self, c: Ctx, choices: list[dict[str, Any]]) -> dict[str, Any]:
        out: dict[str, Any] = {
            "id": c.id, "object": "chat.completion.chunk", "created": c.created, "model": c.model,
            "system_fingerprint": None, "choices": choices,
        }
        if c.include_usage:
            out["usage"] = None
        return out

    def chat_chunks(self, c: Ctx) -> Iterator[Chunk]:
        if c.gen.call is not None:
            yield from self.tool_call_chunks(c)
            return

        def choice(delta: dict[str, Any], finish: str | None = None) -> list[dict[str, Any]]:
            return [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]

        yield False, self._chunk(c, choice({"role": "assistant", "content": "", "refusal": None}))
        for piece in c.gen.pieces:
            yield True, self._chunk(c, choice({"content": piece}))
        yield False, self._chunk(c, choice({}, c.gen.finish_reason))
        if c.include_usage:
            yield False, {**self._chunk(c, []), "usage": c.usage()}

    def chat_response(self, c: Ctx) -> dict[str, Any]:
        message: dict[str, Any] = {"role": "assistant", "content": c.gen.text, "refusal": None, "annotations": []}
        if c.gen.call is not None:
            message = {"role": "assistant", "content": None, "tool_calls": self.tool_calls(c), "refusal": None,
                       "annotations": []}
        return {
            "id": c.id, "object": "chat.completion", "created": c.created, "model": c.model,
            "choices": [{
                "index": 0,
                "message": message,
                "logprobs": None, "finish_reason": self.finish(c),
            }],
            "usage": c.usage(), "system_fingerprint": None,
        }

    # -- text completions
    def completion_chunks(self, c: Ctx) -> Iterator[Chunk]:
        def chunk(text: str, finish: str | None) -> dict[str, Any]:
            out = {"id": c.id, "object": "text_completion", "created": c.created, "model": c.model,
                   "choices": [{"text": text, "index": 0, "logprobs": None, "finish_reason": finish}]}
            if c.include_usage:
                out["usage"] = None
            return out

        for piece in c.gen.pieces:
            yield True, chunk(piece, None)
        yield False, chunk("", c.gen.finish_reason)
        if c.include_usage:
            yield False, {**chunk("", None), "choices": [], "usage": c.usage()}

    def completion_response(self, c: Ctx) -> dict[str, Any]:
        return {
            "id": c.id, "object": "text_completion", "created": c.created, "model": c.model,
            "choices": [{"text": c.gen.text, "index": 0, "logprobs": None, "finish_reason": c.gen.finish_reason}],
            "usage": c.usage(),
        }

    # -- embeddings
    def embeddings_response(self, model: str, vectors: list[list[float]], tokens: int) -> dict[str, Any]:
        data = [{"object": "embedding", "index": i, "embedding": v} for i, v in enumerate(vectors)]
        return {"object": "list", "data": data, "model": model, "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}


class VLLMDialect(Dialect):
    """vLLM's OpenAI server (FastAPI + pydantic ``exclude_unset`` dumps)."""

    sse_content_type = "text/event-stream; charset=utf-8"

    def add_extra_routes(self, router: web.UrlDispatcher) -> None:
        router.add_get("/health", self.health)
        router.add_get("/version", self.version)
        router.add_get("/metrics", self.metrics)

    async def metrics(self, request: web.Request) -> web.Response:
        return load.vllm_metrics(self.b)

    async def health(self, request: web.Request) -> web.Response:
        return web.Response(status=200)  # empty body

    async def version(self, request: web.Request) -> web.Response:
        return self.json({"version": self.b.version or "0.11.0"})

    def not_found(self, request: web.Request) -> web.Response:
        return self.json({"detail": "Not Found"}, 404)

    def error_body(self, status: int, message: str, *, param: str | None = None, **_: Any) -> dict[str, Any]:
        etype = {400: "BadRequestError", 404: "NotFoundError", 500: "InternalServerError", 501: "NotImplementedError"}.get(
            status, HTTPStatus(status).phrase.replace(" ", "").replace("-", "") + "Error"
        )
        if self.b.legacy_errors:  # vLLM < 0.10.1
            return {"object": "error", "message": message, "type": etype, "param": None, "code": status}
        return {"error": {"message": message, "type": etype, "param": param, "code": status}}

    def resolve(self, requested: Any) -> tuple[str, web.Response | None]:
        if not requested:
            return self.b.models[0], None
        if requested not in self.b.models:
            return requested, self.error(404, f"The model `{requested}` does not exist.", param="model")
        return requested, None

    def model_list(self) -> dict[str, Any]:
        def card(m: str) -> dict[str, Any]:
            perm = {
                "id": f"modelperm-{uuid.uuid4().hex}", "object": "model_permission", "created": self.b.created,
                "allow_create_engine": False, "allow_sampling": True, "allow_logprobs": True,
                "allow_search_indices": False, "allow_view": True, "allow_fine_tuning": False,
                "organization": "*", "group": None, "is_blocking": False,
            }
            max_len = as_int((self.b.model_meta.get(m) or {}).get("context_length")) or self.b.max_model_len
            return {"id": m, "object": "model", "created": self.b.created, "owned_by": "vllm", "root": m,
                    "parent": None, "max_model_len": max_len, "permission": [perm]}

        return {"object": "list", "data": [card(m) for m in self.b.models]}

    def chat_id(self) -> str:
        return f"chatcmpl-{uuid.uuid4().hex}"

    def cmpl_id(self) -> str:
        return f"cmpl-{uuid.uuid4().hex}"

    def spell(self, call: ToolCall) -> str:
        return call.python_json()  # the tool parser relays the model's own text

    def tool_id(self, c: Ctx) -> str:
        return f"chatcmpl-tool-{uuid.uuid4().hex}"

    def finish(self, c: Ctx) -> str:
        """A named ``tool_choice`` is guided decoding, not an auto tool call: vLLM
        reports it as ``stop`` (``auto_tools_called`` stays false)."""
        if c.gen.call is not None and c.named:
            return "stop"
        return c.gen.finish_reason

    def _usage(self, c: Ctx, *, whole: bool = False) -> dict[str, Any]:
        """``UsageInfo``. With ``--enable-prompt-tokens-details`` (on when the simulator models
        the cache) vLLM attaches ``prompt_tokens_details`` only when something was cached
        (``if self.enable_prompt_tokens_details and num_cached_tokens``); a whole answer
        dumps the unset field as ``null``, a stream's usage chunk leaves it out."""
        usage: dict[str, Any] = {"prompt_tokens": c.prompt, "total_tokens": c.prompt + c.completion,
                                 "completion_tokens": c.completion}
        if c.cached or whole:
            usage["prompt_tokens_details"] = {"cached_tokens": c.cached} if c.cached else None
        return usage

    def tool_call_chunks(self, c: Ctx) -> Iterator[Chunk]:
        """vLLM's tool parsers: the name first (no arguments), then argument fragments;
        the finish_reason rides on the last fragment."""
        call = c.gen.call
        assert call is not None

        def chunk(delta: dict[str, Any], finish: str | None = None, last: bool = False) -> dict[str, Any]:
            choice: dict[str, Any] = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
            if last:
                choice["stop_reason"] = None
            return {"id": c.id, "object": "chat.completion.chunk", "created": c.created, "model": c.model, "choices": [choice]}

        yield False, chunk({"role": "assistant", "content": ""})
        yield False, chunk({"tool_calls": [{"id": c.tool_id, "type": "function", "index": 0,
                                            "function": {"name": call.name}}]})
        pieces = c.gen.call_pieces
        for i, piece in enumerate(pieces):
            last = i == len(pieces) - 1
            yield True, chunk({"tool_calls": [{"index": 0, "function": {"arguments": piece}}]},
                              self.finish(c) if last else None, last)
        if c.include_usage:
            yield False, {"id": c.id, "object": "chat.completion.chunk", "created": c.created, "model": c.model,
                          "choices": [], "usage": self._usage(c)}

    def chat_chunks(self, c: Ctx) -> Iterator[Chunk]:
        if c.gen.call is not None:
            yield from self.tool_call_chunks(c)
            return

        def chunk(delta: dict[str, Any], finish: str | None = None, last: bool = False) -> dict[str, Any]:
            choice: dict[str, Any] = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
            if last:
                choice["stop_reason"] = c.gen.stop_reason
            return {"id": c.id, "object": "chat.completion.chunk", "created": c.created, "model": c.model, "choices": [choice]}

        yield False, chunk({"role": "assistant", "content": ""})
        pieces = c.gen.pieces or [""]
        for i, piece in enumerate(pieces):  # the finish_reason rides on the last token
            last = i == len(pieces) - 1
            yield bool(c.gen.pieces), chunk({"content": piece}, c.gen.finish_reason if last else None, last)
        if c.include_usage:
            yield False, {"id": c.id, "object": "chat.completion.chunk", "created": c.created, "model": c.model,
                          "choices": [], "usage": self._usage(c)}

    def chat_response(self, c: Ctx) -> dict[str, Any]:
        calls = self.tool_calls(c) if c.gen.call is not None else []
        message = {"role": "assistant", "content": None if calls else c.gen.text, "refusal": None,
                   "annotations": None, "audio": None, "function_call": None, "tool_calls": calls,
                   "reasoning_content": None}
        return {
            "id": c.id, "object": "chat.completion", "created": c.created, "model": c.model,
            "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": self.finish(c),
                         "stop_reason": c.gen.stop_reason}],
            "service_tier": None, "system_fingerprint": None,
            "usage": self._usage(c, whole=True),
            "prompt_logprobs": None, "kv_transfer_params": None,
        }

    def completion_chunks(self, c: Ctx) -> Iterator[Chunk]:
        pieces = c.gen.pieces or [""]
        for i, piece in enumerate(pieces):
            last = i == len(pieces) - 1
            choice = {"index": 0, "text": piece, "logprobs": None, "finish_reason": c.gen.finish_reason if last else None,
                      "stop_reason": c.gen.stop_reason if last else None}
            yield bool(c.gen.pieces), {"id": c.id, "object": "text_completion", "created": c.created, "model": c.model,
                                       "choices": [choice]}
        if c.include_usage:
            yield False, {"id": c.id, "object": "text_completion", "created": c.created, "model": c.model,
                          "choices": [], "usage": self._usage(c)}

    def completion_response(self, c: Ctx) -> dict[str, Any]:
        choice = {"index": 0, "text": c.gen.text, "logprobs": None, "finish_reason": c.gen.finish_reason,
                  "stop_reason": c.gen.stop_reason, "prompt_logprobs": None}
        return {"id": c.id, "object": "text_completion", "created": c.created, "model": c.model, "choices": [choice],
                "usage": self._usage(c, whole=True), "kv_transfer_params": None}

    def embeddings_response(self, model: str, vectors: list[list[float]], tokens: int) -> dict[str, Any]:
        data = [{"index": i, "object": "embedding", "embedding": v} for i, v in enumerate(vectors)]
        return {"id": f"embd-{uuid.uuid4().hex}", "object": "list", "created": int(time.time()), "model": model,
                "data": data, "usage": {"prompt_tokens": tokens, "total_tokens": tokens, "completion_tokens": 0,
                                        "prompt_tokens_details": None}}


class LlamaServerDialect(Dialect):
    """llama.cpp's ``llama-server`` (nlohmann JSON, cpp-httplib)."""

    sse_content_type = "text/event-stream"
    json_content_type = "application/json; charset=utf-8"
    headers_early = False
    fingerprint = "b6700-simulated"

    _types = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
              404: "not_found_error", 501: "not_supported_error", 503: "unavailable_error"}

    def add_extra_routes(self, router: web.UrlDispatcher) -> None:
        router.add_get("/health", self.health)
        router.add_get("/v1/health", self.health)
        router.add_get("/slots", self.slots)
        router.add_get("/metrics", self.metrics)
        router.add_get("/props", self.props)

    async def slots(self, request: web.Request) -> web.Response:
        if request.query.get("fail_on_no_slot") and load.llama_idle_slots(self.b) <= 0:
            return self.error(503, "no slot available")
        return self.json(load.llama_slots(self.b))

    async def metrics(self, request: web.Request) -> web.Response:
        return load.llama_metrics(self.b)

    async def props(self, request: web.Request) -> web.Response:
        return self.json(load.llama_props(self.b, self.fingerprint))

    def not_found(self, request: web.Request) -> web.Response:
        return self.error(404, "File Not Found")

    def error_body(self, status: int, message: str, **_: Any) -> dict[str, Any]:
        return {"error": {"code": status, "message": message, "type": self._types.get(status, "server_error")}}

    def resolve(self, requested: Any) -> tuple[str, web.Response | None]:
        return (requested or self.b.models[0]), None  # any name is served and echoed

    def model_list(self) -> dict[str, Any]:
        def meta(m: str) -> dict[str, Any]:
            info = self.b.meta(m)
            return {"vocab_type": 2, "n_vocab": 128256, "n_ctx_train": info.context_length, "n_embd": 4096,
                    "n_params": info.parameter_count, "size": info.file_size}

        models = [{"name": m, "model": m, "modified_at": "", "size": "", "digest": "", "type": "model",
                   "description": "", "tags": [""], "capabilities": ["completion"], "parameters": "",
                   "details": {"parent_model": "", "format": "gguf", "family": "", "families": [""],
                               "parameter_size": "", "quantization_level": ""}} for m in self.b.models]
        data = [{"id": m, "aliases": [], "tags": [], "object": "model", "created": int(time.time()),
                 "owned_by": "llamacpp", "meta": meta(m)} for m in self.b.models]
        return {"models": models, "object": "list", "data": data}

    def chat_id(self) -> str:
        return "chatcmpl-" + _alnum(32)

    cmpl_id = chat_id

    def tool_id(self, c: Ctx) -> str:
        return _alnum(32)  # gen_tool_call_id(): random_string(), no prefix

    def tool_calls(self, c: Ctx) -> list[dict[str, Any]]:
        call = c.gen.call
        assert call is not None
        return [{"type": "function", "function": {"name": call.name, "arguments": c.gen.arguments}, "id": c.tool_id}]

    def _usage(self, c: Ctx) -> dict[str, Any]:
        """``usage_json_oaicompat()``: ``prompt_tokens_details.cached_tokens`` always (llama.cpp
        PR #19361, Feb 2026), the whole prompt in ``prompt_tokens``."""
        return {"completion_tokens": c.completion, "prompt_tokens": c.prompt, "total_tokens": c.prompt + c.completion,
                "prompt_tokens_details": {"cached_tokens": c.cached}}

    def _timings(self, c: Ctx) -> dict[str, Any]:
        """``result_timings``: ``cache_n`` tokens came from the slot's cache, ``prompt_n`` were prefilled."""
        prompt_n = c.prompt - c.cached
        prompt_ms = max((c.ttft + c.prefill) * 1000, 0.05 * prompt_n)
        predicted_ms = max(c.interval * 1000 * max(c.completion - 1, 0), 0.02 * c.completion)
        return {
            "cache_n": c.cached, "prompt_n": prompt_n, "prompt_ms": prompt_ms,
            "prompt_per_token_ms": prompt_ms / max(prompt_n, 1), "prompt_per_second": 1000 * prompt_n / prompt_ms,
            "predicted_n": c.completion, "predicted_ms": predicted_ms,
            "predicted_per_token_ms": predicted_ms / max(c.completion, 1),
            "predicted_per_second": 1000 * c.completion / predicted_ms if predicted_ms else 0.0,
        }

    def _head(self, c: Ctx, obj: str, choices: list[dict[str, Any]]) -> dict[str, Any]:
        return {"choices": choices, "created": c.created, "id": c.id, "model": c.model,
                "system_fingerprint": self.fingerprint, "object": obj}

    def chat_chunks(self, c: Ctx) -> Iterator[Chunk]:
        def chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
            return self._head(c, "chat.completion.chunk", [{"finish_reason": finish, "index": 0, "delta": delta}])

        yield False, chunk({"role": "assistant", "content": None})
        for piece in c.gen.pieces:
            yield True, chunk({"content": piece})
        call = c.gen.call
        for i, piece in enumerate(c.gen.call_pieces):  # common_chat_msg_diff_to_json_oaicompat
            head = {"index": 0, "id": c.tool_id, "type": "function"} if i == 0 else {"index": 0}
            function = {"name": call.name, "arguments": piece} if i == 0 and call else {"arguments": piece}
            yield True, chunk({"tool_calls": [{**head, "function": function}]})
        tail = [chunk({}, c.gen.finish_reason)]
        if c.include_usage:
            tail.append({**self._head(c, "chat.completion.chunk", []), "usage": self._usage(c)})
        tail[-1]["timings"] = self._timings(c)
        for obj in tail:
            yield False, obj

    def chat_response(self, c: Ctx) -> dict[str, Any]:
        message: dict[str, Any] = {"role": "assistant", "content": c.gen.text}
        if c.gen.call is not None:  # common_chat_msg::to_json_oaicompat
            message = {"role": "assistant", "content": None, "tool_calls": self.tool_calls(c)}
        choice = {"finish_reason": c.gen.finish_reason, "index": 0, "message": message}
        head = self._head(c, "chat.completion", [choice])
        del head["id"]
        return {**head, "usage": self._usage(c), "id": c.id, "timings": self._timings(c)}

    def completion_chunks(self, c: Ctx) -> Iterator[Chunk]:
        def choice(text: str, finish: str | None) -> list[dict[str, Any]]:
            return [{"text": text, "index": 0, "logprobs": None, "finish_reason": finish}]

        for piece in c.gen.pieces:
            yield True, self._head(c, "text_completion", choice(piece, None))
        final = self._head(c, "text_completion", choice("", c.gen.finish_reason))
        yield False, {**final, "usage": self._usage(c), "timings": self._timings(c)}

    def completion_response(self, c: Ctx) -> dict[str, Any]:
        choice = [{"text": c.gen.text, "index": 0, "logprobs": None, "finish_reason": c.gen.finish_reason}]
        head = self._head(c, "text_completion", choice)
        del head["id"]
        return {**head, "usage": self._usage(c), "id": c.id, "timings": self._timings(c)}

    def embeddings_response(self, model: str, vectors: list[list[float]], tokens: int) -> dict[str, Any]:
        data = [{"embedding": v, "index": i, "object": "embedding"} for i, v in enumerate(vectors)]
        return {"model": model, "object": "list", "usage": {"prompt_tokens": tokens, "total_tokens": tokens}, "data": data}


class LlamaCppPythonDialect(Dialect):
    """llama-cpp-python's server (FastAPI + sse-starlette, ``json.dumps`` for SSE data).

    No ``/health`` route; ``stream_options.include_usage`` is ignored. SSE lines
    end in ``\\n`` since llama-cpp-python PR #1188 (Feb 2024, ``sep="\\n"``);
    older releases used sse-starlette's default ``\\r\\n`` (``sse_newline="\\r\\n"``).
    """

    honours_include_usage = False

    def tool_choice(self, body: dict[str, Any]) -> str:
        """The default chat handlers call a tool only when ``tool_choice`` names one
        (grammar-constrained to its schema); ``auto`` needs a function-calling
        ``chat_format``, so the simulated model answers with text."""
        choice = toolkit.openai_choice(body.get("tool_choice"))
        return toolkit.NONE if choice == toolkit.AUTO else choice

    def spell(self, call: ToolCall) -> str:
        return call.python_json()

    def tool_id(self, c: Ctx) -> str:
        call = c.gen.call
        return f"call__0_{call.name if call else ''}_{c.id[len('chat'):]}"  # "call_" + "_0_" + name + "_" + completion id

    def tool_call_chunks(self, c: Ctx) -> Iterator[Chunk]:
        call = c.gen.call
        assert call is not None

        def chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
            return {"id": c.id, "model": c.model, "created": c.created, "object": "chat.completion.chunk",
                    "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]}

        for i, piece in enumerate(c.gen.call_pieces):
            head = {"index": 0, "id": c.tool_id, "type": "function", "function": {"name": call.name, "arguments": piece}}
            delta = {"role": "assistant", "content": None, "tool_calls": [head]} if i == 0 else \
                {"tool_calls": [{"index": 0, "function": {"arguments": piece}}]}
            yield True, chunk(delta)
        yield False, chunk({}, "tool_calls")

    def dumps(self, obj: Any) -> bytes:
        return json.dumps(obj).encode()  # the SSE data is json.dumps(chunk): ", " and ": " separators

    def add_extra_routes(self, router: web.UrlDispatcher) -> None:
        pass

    def not_found(self, request: web.Request) -> web.Response:
        return self.b.json({"detail": "Not Found"}, 404)

    def error_body(self, status: int, message: str, **_: Any) -> dict[str, Any]:
        etype = "internal_server_error" if status >= 500 else "invalid_request_error"
        return {"error": {"message": message, "type": etype, "param": None, "code": None}}

    def resolve(self, requested: Any) -> tuple[str, web.Response | None]:
        return (requested or self.b.models[0]), None  # unknown names fall back to the default model, echoed

    def model_list(self) -> dict[str, Any]:
        return {"object": "list", "data": [{"id": m, "object": "model", "owned_by": "me", "permissions": []}
                                           for m in self.b.models]}

    def cmpl_id(self) -> str:
        return f"cmpl-{uuid.uuid4()}"

    def chat_id(self) -> str:
        return "chat" + self.cmpl_id()

    def chat_chunks(self, c: Ctx) -> Iterator[Chunk]:
        if c.gen.call is not None:
            yield from self.tool_call_chunks(c)
            return

        def chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
            return {"id": c.id, "model": c.model, "created": c.created, "object": "chat.completion.chunk",
                    "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]}

        yield False, chunk({"role": "assistant"})
        for piece in c.gen.pieces:
            yield True, chunk({"content": piece})
        yield False, chunk({}, c.gen.finish_reason)

    def chat_response(self, c: Ctx) -> dict[str, Any]:
        message: dict[str, Any] = {"role": "assistant", "content": c.gen.text}
        if c.gen.call is not None:  # _convert_completion_to_chat_function
            call = {"name": c.gen.call.name, "arguments": c.gen.arguments}
            message = {"role": "assistant", "content": None, "function_call": call,
                       "tool_calls": [{"id": c.tool_id, "type": "function", "function": call}]}
        return {"id": c.id, "object": "chat.completion", "created": c.created, "model": c.model,
                "choices": [{"index": 0, "message": message, "logprobs": None,
                             "finish_reason": c.gen.finish_reason}],
                "usage": c.usage()}

    def completion_chunks(self, c: Ctx) -> Iterator[Chunk]:
        def chunk(text: str, finish: str | None) -> dict[str, Any]:
            return {"id": c.id, "object": "text_completion", "created": c.created, "model": c.model,
                    "choices": [{"text": text, "index": 0, "logprobs": None, "finish_reason": finish}]}

        for piece in c.gen.pieces:
            yield True, chunk(piece, None)
        yield False, chunk("", c.gen.finish_reason)

    def embeddings_response(self, model: str, vectors: list[list[float]], tokens: int) -> dict[str, Any]:
        data = [{"object": "embedding", "embedding": v, "index": i} for i, v in enumerate(vectors)]
        return {"object": "list", "data": data, "model": model, "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}


DIALECTS: dict[str, type[Dialect]] = {
    "openai": Dialect,
    "vllm": VLLMDialect,
    "llama_cpp_native": LlamaServerDialect,
    "llama_cpp_python": LlamaCppPythonDialect,
}


def _max_tokens(body: dict[str, Any]) -> int | None:
    value = as_int(body.get("max_completion_tokens"))
    return value if value is not None else as_int(body.get("max_tokens"))


def _prompt_text(prompt: Any) -> str:
    if isinstance(prompt, list):
        prompt = prompt[0] if prompt else ""
    if isinstance(prompt, list):  # token ids
        return " ".join(map(str, prompt))
    return "" if prompt is None else str(prompt)


def _embedding_inputs(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, list):
        if value and all(isinstance(v, int) for v in value):
            return [" ".join(map(str, value))]
        return [v if isinstance(v, str) else " ".join(map(str, v)) if isinstance(v, list) else str(v) for v in value]
    return []


class OpenAICompatAPI:
    """``/v1/*`` route handlers shared by every OpenAI-compatible kind (and Ollama's /v1)."""

    def __init__(self, backend: SimulatedBackend, dialect: Dialect | None = None) -> None:
        self.b = backend
        self.d = dialect or DIALECTS[backend.kind](backend)

    def preload(self, name: str) -> None:
        """OpenAI-compatible servers have their model(s) loaded from the start."""

    def add_routes(self, router: web.UrlDispatcher) -> None:
        router.add_post("/v1/chat/completions", self.chat)
        router.add_post("/v1/completions", self.completions)
        router.add_post("/v1/embeddings", self.embeddings)
        router.add_get("/v1/models", self.models)
        self.d.add_extra_routes(router)

    def error_response(self, request: web.Request, status: int, message: str) -> web.Response:
        return self.d.error(status, message)

    async def not_found(self, request: web.Request) -> web.Response:
        return self.d.not_found(request)

    async def models(self, request: web.Request) -> web.Response:
        return self.d.json(self.d.model_list())

    async def _body(self, request: web.Request) -> dict[str, Any] | web.Response:
        body = await read_json(request)
        if not isinstance(body, dict):
            return self.d.error(400, "request body must be a JSON object")
        return body

    def chat_generation(self, model: str, messages: list[Any], body: dict[str, Any]) -> Generation:
        """The model's answer to an OpenAI-shaped chat (the Messages and Responses
        doors of the same server convert to this first): text, or a tool call."""
        choice = self.d.tool_choice(body)
        after = toolkit.last_is_tool_result(messages)
        return toolkit.chat_generation(
            model, messages_text(messages), tools=toolkit.openai_tools(body.get("tools")), choice=choice,
            after_result=after, result_text=toolkit.last_text(messages), spell=self.d.spell, seed=body.get("seed"),
            max_tokens=_max_tokens(body), stop=body.get("stop"))

    def _ctx(self, id_: str, model: str, gen: Generation, body: dict[str, Any]) -> Ctx:
        options = body.get("stream_options") or {}
        include_usage = bool(self.d.honours_include_usage and body.get("stream") and options.get("include_usage"))
        c = Ctx(id_, int(time.time()), model, gen, include_usage, self.b.ttft, self.b.token_interval())
        if gen.call is not None:
            c.tool_id = self.d.tool_id(c)
            c.named = self.d.tool_choice(body) not in (toolkit.AUTO, toolkit.NONE)
        return c

    async def _answer(self, request: web.Request, c: Ctx, body: dict[str, Any], prompt: Prompt,
                      chunks: Callable[[Ctx], Iterator[Chunk]], whole: Callable[[Ctx], dict[str, Any]]
                      ) -> web.StreamResponse:
        """Seat the request, then stream ``chunks(c)`` or answer ``whole(c)`` (rendered once
        the prompt cache has said how much of ``prompt`` it held)."""
        stream = bool(body.get("stream"))
        async with self.b.scheduler.seat(request, self.b, c.model, c.gen, load.slot_params(body, stream),
                                         prompt) as seat:
            c.cached, c.prefill = seat.prefill.cached, seat.prefill.seconds
            extra = self.d.load_delay(c.model)
            if stream:
                events = [(tok, self.d.sse(obj)) for tok, obj in chunks(c)] + [(False, self.d.sse("[DONE]"))]
                return await self.b.stream(request, events, content_type=self.d.sse_content_type, extra_delay=extra,
                                           headers_early=self.d.headers_early, prefill=seat.prefill)
            await self.b.compute(request, seat.prefill, extra_delay=extra, decode=c.interval * max(c.completion - 1, 0))
            return self.d.json(whole(c))

    async def chat(self, request: web.Request) -> web.StreamResponse:
        body = await self._body(request)
        if isinstance(body, web.Response):
            return body
        model, err = self.d.resolve(body.get("model"))
        if err is not None:
            return err
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            return self.d.error(400, "'messages' must be a non-empty list")
        gen = self.chat_generation(model, messages, body)
        c = self._ctx(self.d.chat_id(), model, gen, body)
        prompt = Prompt.of(messages_text(messages), toolkit.openai_tools(body.get("tools")))
        return await self._answer(request, c, body, prompt, self.d.chat_chunks, self.d.chat_response)

    async def completions(self, request: web.Request) -> web.StreamResponse:
        body = await self._body(request)
        if isinstance(body, web.Response):
            return body
        model, err = self.d.resolve(body.get("model"))
        if err is not None:
            return err
        text = _prompt_text(body.get("prompt"))
        gen = generate(model, text, seed=body.get("seed"), max_tokens=_max_tokens(body), stop=body.get("stop"))
        c = self._ctx(self.d.cmpl_id(), model, gen, body)
        return await self._answer(request, c, body, Prompt.of(text), self.d.completion_chunks,
                                  self.d.completion_response)

    async def embeddings(self, request: web.Request) -> web.StreamResponse:
        body = await self._body(request)
        if isinstance(body, web.Response):
            return body
        model, err = self.d.resolve(body.get("model"))
        if err is not None:
            return err
        texts = _embedding_inputs(body.get("input"))
        if not texts:
            return self.d.error(400, "'input' must be a string or a list")
        dim = as_int(body.get("dimensions"))
        if dim is not None and not 0 < dim <= self.b.embedding_dim:
            return self.d.error(400, f"dimensions must be between 1 and {self.b.embedding_dim}")
        dim = dim or self.b.embedding_dim
        vectors = [embed(model, t, dim) for t in texts]
        await self.b.pause(request, self.b.first_token_delay(self.d.load_delay(model)))
        tokens = sum(count_tokens(content_text(t)) for t in texts)
        return self.d.json(self.d.embeddings_response(model, vectors, tokens))
