"""Ollama's native API (``/api/*``) and its OpenAI-compatible ``/v1/*`` layer.

Shapes follow Ollama's ``server/routes.go`` (handlers, error texts, NDJSON
streaming), ``api/types.go`` (JSON field names and order) and
``openai/openai.go`` (the ``/v1`` translation), read, not copied.
"""

from __future__ import annotations

import hashlib
import random
import re
import time
from collections.abc import Iterator
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

import orjson
from aiohttp import web

from . import tools as toolkit
from .backend import body_is_invalid, read_json
from .core import Generation, as_int, count_tokens, embed, generate, go_time, messages_text, token_ids
from .encoding import go_json
from .openai_compat import Chunk, Ctx, Dialect, OpenAICompatAPI
from .prefix import Prefill, Prompt
from .tools import ToolCall

if TYPE_CHECKING:
    from .backend import SimulatedBackend

DEFAULT_KEEP_ALIVE = 300.0  # seconds, Ollama's default of 5m
DEFAULT_NUM_CTX = 4096  # Ollama's default context (OLLAMA_CONTEXT_LENGTH) in 0.6-0.12
KV_BYTES_PER_TOKEN = 131072  # Llama 3 8B: 2 × 32 layers × 8 KV heads × 128 dims × fp16
_FOREVER = 10 * 365 * 86400.0
_DURATION = re.compile(r"(-?\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h)")
_UNIT = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
JSON_TYPE = "application/json; charset=utf-8"


def canonical(name: str) -> str:
    """Ollama's name normalisation: drop the default registry/namespace, add ``:latest``."""
    name = name.strip()
    for prefix in ("registry.ollama.ai/", "library/"):
        if name.lower().startswith(prefix):
            name = name[len(prefix):]
    if ":" not in name.rsplit("/", 1)[-1]:
        name += ":latest"
    return name


def keep_alive_seconds(value: Any) -> float:
    """Parse ``keep_alive`` (seconds as a number, or a Go duration string); negative = forever."""
    if value is None or value == "":
        return DEFAULT_KEEP_ALIVE
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        seconds = float(value)
    else:
        text = str(value).strip()
        try:
            seconds = float(text)
        except ValueError:
            parts = _DURATION.findall(text)
            if not parts:
                return DEFAULT_KEEP_ALIVE
            seconds = sum(float(n) * _UNIT[u] for n, u in parts)
    return _FOREVER if seconds < 0 else seconds


def _family(name: str) -> str:
    match = re.match(r"[a-z]+", name.rsplit("/", 1)[-1].lower())
    return match.group(0) if match else "llama"


def _ns(seconds: float) -> int:
    return int(seconds * 1e9)


def tool_call_id() -> str:
    """``toolCallId()`` in ``server/routes.go``: ``call_`` and 8 of [a-z0-9]."""
    return "call_" + "".join(random.choices("abcdefghijklmnopqrstuvwxyz0123456789", k=8))


def go_spell(call: ToolCall) -> str:
    """Arguments as Go marshals Ollama's ordered ``ToolCallFunctionArguments``."""
    return go_json(call.arguments).decode()


def api_tool_calls(gen: Generation, call_id: str) -> list[dict[str, Any]]:
    """``message.tool_calls`` of ``/api/chat``: whole calls, arguments as an object."""
    call = gen.call
    assert call is not None
    return [{"id": call_id, "function": {"index": 0, "name": call.name, "arguments": call.arguments}}]


class OllamaDialect(Dialect):
    """Ollama's ``/v1`` OpenAI layer (``openai/openai.go``)."""

    sse_content_type = "text/event-stream"
    headers_early = False

    def __init__(self, backend: SimulatedBackend, api: OllamaAPI) -> None:
        super().__init__(backend)
        self.api = api

    def add_extra_routes(self, router: web.UrlDispatcher) -> None:
        pass

    def error_body(self, status: int, message: str, **_: Any) -> dict[str, Any]:
        etype = {400: "invalid_request_error", 404: "not_found_error"}.get(status, "api_error")
        return {"error": {"message": message, "type": etype, "param": None, "code": None}}

    def resolve(self, requested: Any) -> tuple[str, web.Response | None]:
        if not requested:
            return "", self.error(400, "model is required")
        if self.api.resolve(str(requested)) is None:
            return str(requested), self.error(404, f"model '{requested}' not found")
        return str(requested), None

    def load_delay(self, model: str) -> float:
        return self.api.use(model, None)

    def model_list(self) -> dict[str, Any]:
        data = [{"id": m, "object": "model", "created": self.b.created, "owned_by": "library"} for m in self.api.names]
        return {"object": "list", "data": data}

    def chat_id(self) -> str:
        return f"chatcmpl-{random.randint(0, 999)}"

    def tool_choice(self, body: dict[str, Any]) -> str:
        return toolkit.AUTO  # FromChatRequest drops tool_choice: the model decides (here: it calls)

    def spell(self, call: ToolCall) -> str:
        return go_spell(call)

    def tool_id(self, c: Ctx) -> str:
        return tool_call_id()

    def _tool_calls(self, c: Ctx) -> list[dict[str, Any]]:
        call = c.gen.call
        assert call is not None  # openai.ToToolCalls: id, index, type, function
        return [{"id": c.tool_id, "index": 0, "type": "function",
                 "function": {"name": call.name, "arguments": c.gen.arguments}}]

    def cmpl_id(self) -> str:
        return f"cmpl-{random.randint(0, 999)}"

    def _head(self, c: Ctx, obj: str) -> dict[str, Any]:
        return {"id": c.id, "object": obj, "created": c.created, "model": c.model, "system_fingerprint": "fp_ollama"}

    def _usage(self, c: Ctx) -> dict[str, int]:
        """``ToUsage``: ``prompt_tokens`` is the native ``prompt_eval_count``."""
        prompt = self.api.prompt_eval_count(c.prompt, c.cached)
        return {"prompt_tokens": prompt, "completion_tokens": c.completion, "total_tokens": prompt + c.completion}

    def chat_chunks(self, c: Ctx) -> Iterator[Chunk]:
        def chunk(content: str, finish: str | None) -> dict[str, Any]:
            choice = {"index": 0, "delta": {"role": "assistant", "content": content}, "finish_reason": finish}
            return {**self._head(c, "chat.completion.chunk"), "choices": [choice]}

        if c.gen.call is not None:  # the whole call in one chunk, once the model has written it
            first = chunk("", None)
            first["choices"][0]["delta"]["tool_calls"] = self._tool_calls(c)
            yield len(c.gen.call_pieces), first
        for piece in c.gen.pieces:
            yield True, chunk(piece, None)
        yield False, chunk("", c.gen.finish_reason)
        if c.include_usage:
            yield False, {**self._head(c, "chat.completion.chunk"), "choices": [], "usage": self._usage(c)}

    def chat_response(self, c: Ctx) -> dict[str, Any]:
        message: dict[str, Any] = {"role": "assistant", "content": c.gen.text}
        if c.gen.call is not None:
            message["tool_calls"] = self._tool_calls(c)
        choice = {"index": 0, "message": message, "finish_reason": c.gen.finish_reason}
        return {**self._head(c, "chat.completion"), "choices": [choice], "usage": self._usage(c)}

    def completion_chunks(self, c: Ctx) -> Iterator[Chunk]:
        def chunk(text: str, finish: str | None) -> dict[str, Any]:
            return {"id": c.id, "object": "text_completion", "created": c.created,
                    "choices": [{"text": text, "index": 0, "finish_reason": finish}],
                    "model": c.model, "system_fingerprint": "fp_ollama"}

        for piece in c.gen.pieces:
            yield True, chunk(piece, None)
        yield False, chunk("", c.gen.finish_reason)
        if c.include_usage:
            yield False, {**chunk("", None), "choices": [], "usage": self._usage(c)}

    def completion_response(self, c: Ctx) -> dict[str, Any]:
        choice = {"text": c.gen.text, "index": 0, "finish_reason": c.gen.finish_reason}
        return {**self._head(c, "text_completion"), "choices": [choice], "usage": self._usage(c)}

    def embeddings_response(self, model: str, vectors: list[list[float]], tokens: int) -> dict[str, Any]:
        data = [{"object": "embedding", "embedding": v, "index": i} for i, v in enumerate(vectors)]
        return {"object": "list", "data": data, "model": model, "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}


def counts_uncached_only(version: str) -> bool:
    """Whether Ollama ``version`` reports only the prefilled tokens in ``prompt_eval_count``: 0.30.0
    alone. The Go runners count every prompt input (``numPromptInputs``) whatever the cache
    held; 0.30.0 moved to llama-server and passed its ``prompt_n`` on; 0.30.1 adds ``cache_n``
    back "to preserve Ollama's pre-0.30 full-context prompt_eval_count semantics" (#16428)."""
    return re.fullmatch(r"v?0\.30\.0(?:[-+].*)?", version.strip()) is not None


class OllamaAPI:
    """Route handlers of a simulated Ollama server."""

    version = "0.12.6"

    def __init__(self, backend: SimulatedBackend) -> None:
        self.b = backend
        self.v1 = OpenAICompatAPI(backend, OllamaDialect(backend, self))
        self.modified = datetime.now(timezone.utc).astimezone()
        self.num_ctx: dict[str, int] = {}  # loaded model -> its context (``/api/ps`` context_length)
        self.ready_at: dict[str, float] = {}  # loaded model -> when its load finishes (time.time())

    def prompt_eval_count(self, tokens: int, cached: int) -> int:
        """``prompt_eval_count`` of a prompt of ``tokens`` of which ``cached`` came from the cache:
        the whole prompt, except in 0.30.0 (:func:`counts_uncached_only`). The prompt cache shows
        only in ``prompt_eval_duration``, which covers the prefill of the uncached tokens."""
        return tokens - cached if counts_uncached_only(self.b.version or self.version) else tokens

    # ------------------------------------------------------------------ model registry

    @property
    def names(self) -> list[str]:
        """Served (\"pulled\") models, normalised as ``/api/tags`` shows them."""
        return [canonical(m) for m in self.b.models]

    def resolve(self, requested: str) -> str | None:
        """The served model a request name refers to (case-insensitive, ``:latest`` default)."""
        wanted = canonical(requested).lower()
        return next((n for n in self.names if n.lower() == wanted), None)

    def preload(self, name: str) -> None:
        """Mark a model loaded from the start (adding it to the served list if needed)."""
        if self.resolve(name) is None:
            self.b.models.append(name)
        name = self.resolve(name) or canonical(name)
        self.b.loaded[name] = time.time() + DEFAULT_KEEP_ALIVE
        self.num_ctx[name] = min(DEFAULT_NUM_CTX, self.b.meta(name).context_length)

    def _expire(self) -> None:
        now = time.time()
        for name in [n for n, until in self.b.loaded.items() if until <= now]:
            del self.b.loaded[name]

    def use(self, requested: str, keep_alive: Any, options: Any = None) -> float:
        """Record a use of a model; returns the extra load delay (0 when it was loaded).

        A model is (re)loaded when it is not loaded or runs with another context
        than ``options.num_ctx`` (default 4096, at most the trained context) asks
        for; it shows in ``/api/ps`` once the load delay has passed.
        """
        self._expire()
        name = self.resolve(requested) or canonical(requested)
        wanted = as_int(options.get("num_ctx")) if isinstance(options, dict) else None
        num_ctx = min(wanted or DEFAULT_NUM_CTX, self.b.meta(name).context_length)
        warm = name in self.b.loaded and self.num_ctx.get(name) == num_ctx
        extra = 0.0 if warm else self.b.load_time
        seconds = keep_alive_seconds(keep_alive)
        if seconds == 0:
            self.b.loaded.pop(name, None)
        else:
            self.b.loaded[name] = time.time() + seconds
            self.num_ctx[name] = num_ctx
            if not warm:
                self.ready_at[name] = time.time() + extra
        return extra

    def _digest(self, name: str) -> str:
        return hashlib.sha256(name.encode()).hexdigest()

    def _details(self, name: str) -> dict[str, Any]:
        family, meta = _family(name), self.b.meta(name)
        return {"parent_model": "", "format": "gguf", "family": family, "families": [family],
                "parameter_size": meta.parameter_size, "quantization_level": meta.quantization_level}

    def _size(self, name: str) -> int:
        return self.b.meta(name).file_size + 1024 * (int(self._digest(name)[:4], 16) % 997)

    # ------------------------------------------------------------------ plumbing

    def add_routes(self, router: web.UrlDispatcher) -> None:
        router.add_get("/", self.root)  # also answers HEAD
        router.add_get("/api/version", self.api_version)
        router.add_get("/api/tags", self.tags)
        router.add_get("/api/ps", self.ps)
        router.add_post("/api/show", self.show)
        router.add_post("/api/chat", self.chat)
        router.add_post("/api/generate", self.generate)
        router.add_post("/api/embed", self.embed)
        router.add_post("/api/embeddings", self.embeddings)
        self.v1.add_routes(router)

    def err(self, status: int, message: str) -> web.Response:
        return self.b.json({"error": message}, status, content_type=JSON_TYPE)

    def error_response(self, request: web.Request, status: int, message: str) -> web.Response:
        if request.path.startswith("/v1/"):
            return self.v1.error_response(request, status, message)
        return self.err(status, message)

    async def not_found(self, request: web.Request) -> web.Response:
        return web.Response(status=404, text="404 page not found", content_type="text/plain")

    async def _body(self, request: web.Request) -> dict[str, Any] | web.Response:
        body = await read_json(request)
        if body_is_invalid(request):
            return self.err(400, "invalid character in request body")
        if body is None:
            return self.err(400, "missing request body")
        if not isinstance(body, dict):
            return self.err(400, "json: cannot unmarshal into Go value of type api.Request")
        return body

    # ------------------------------------------------------------------ simple endpoints

    async def root(self, request: web.Request) -> web.Response:
        return web.Response(text="Ollama is running", content_type="text/plain")

    async def api_version(self, request: web.Request) -> web.Response:
        return self.b.json({"version": self.b.version or self.version}, content_type=JSON_TYPE)

    async def tags(self, request: web.Request) -> web.Response:
        models = [{"name": n, "model": n, "modified_at": go_time(self.modified), "size": self._size(n),
                   "digest": self._digest(n), "details": self._details(n)} for n in self.names]
        return self.b.json({"models": models}, content_type=JSON_TYPE)

    async def ps(self, request: web.Request) -> web.Response:
        self._expire()
        models = []
        now = time.time()
        for name, until in sorted(self.b.loaded.items(), key=lambda kv: -kv[1]):  # longest remaining first
            if self.ready_at.get(name, 0.0) > now:
                continue  # still loading
            expires = datetime.fromtimestamp(min(until, 4102444800), timezone.utc).astimezone()
            num_ctx = self.num_ctx.get(name, DEFAULT_NUM_CTX)
            size = self._size(name) + num_ctx * KV_BYTES_PER_TOKEN  # weights + KV cache, all in VRAM
            models.append({"name": name, "model": name, "size": size, "digest": self._digest(name),
                           "details": self._details(name), "expires_at": go_time(expires),
                           "size_vram": size, "context_length": num_ctx})
        return self.b.json({"models": models}, content_type=JSON_TYPE)

    async def show(self, request: web.Request) -> web.Response:
        body = await self._body(request)
        if isinstance(body, web.Response):
            return body
        requested = body.get("model") or body.get("name")
        if not requested:
            return self.err(400, "model is required")
        name = self.resolve(str(requested))
        if name is None:
            return self.err(404, f"model '{requested}' not found")
        family, meta = _family(name), self.b.meta(name)
        caps = ["embedding"] if "embed" in name.lower() else ["completion"]
        return self.b.json({
            "modelfile": f"# Modelfile generated by \"ollama show\"\nFROM {name}\n",
            "parameters": 'stop                           "<|eot_id|>"',
            "template": "{{ .Prompt }}",
            "details": self._details(name),
            "model_info": {"general.architecture": family, "general.file_type": 15,
                           "general.parameter_count": meta.parameter_count, "general.quantization_version": 2,
                           f"{family}.context_length": meta.context_length,
                           f"{family}.embedding_length": self.b.embedding_dim},
            "capabilities": caps,
            "modified_at": go_time(self.modified),
        }, content_type=JSON_TYPE)

    # ------------------------------------------------------------------ generation

    def _load_only(self, requested: str, body: dict[str, Any], key: str) -> dict[str, Any]:
        unload = keep_alive_seconds(body.get("keep_alive")) == 0
        out: dict[str, Any] = {"model": requested, "created_at": go_time()}
        out.update({"message": {"role": "assistant", "content": ""}} if key == "message" else {"response": ""})
        return {**out, "done": True, "done_reason": "unload" if unload else "load"}

    async def _generation(self, request: web.Request, key: str) -> web.StreamResponse:
        """Shared body of ``/api/chat`` (key ``message``) and ``/api/generate`` (key ``response``)."""
        started = time.perf_counter()
        body = await self._body(request)
        if isinstance(body, web.Response):
            return body
        requested = body.get("model")
        if not requested:
            return self.err(400, "model is required")
        requested = str(requested)
        name = self.resolve(requested)
        if name is None:
            return self.err(404, f"model '{requested}' not found")
        tools = toolkit.openai_tools(body.get("tools")) if key == "message" else []
        if key == "message":
            prompt = messages_text(body.get("messages"))
            empty = not body.get("messages")
        else:
            prompt = str(body.get("prompt") or "")
            empty = not prompt
            if body.get("system"):
                prompt = f"{body['system']}\n{prompt}"
        extra = self.use(name, body.get("keep_alive"), body.get("options"))
        if empty:  # load (or unload with keep_alive 0) only
            await self.b.pause(request, extra)
            return self.b.json(self._load_only(requested, body, key), content_type=JSON_TYPE)
        options = body.get("options") or {}
        num_predict = as_int(options.get("num_predict"))
        max_tokens = num_predict if num_predict is not None and num_predict >= 0 else None
        if key == "message":
            messages = body.get("messages")
            gen = toolkit.chat_generation(
                name, prompt, tools=tools, choice=toolkit.AUTO,
                after_result=toolkit.last_is_tool_result(messages), result_text=toolkit.last_text(messages or []),
                spell=go_spell, seed=options.get("seed"), max_tokens=max_tokens, stop=options.get("stop"))
        else:
            gen = generate(name, prompt, seed=options.get("seed"), max_tokens=max_tokens, stop=options.get("stop"))
        with_context = key == "response" and not body.get("raw")
        calls = api_tool_calls(gen, tool_call_id()) if gen.call is not None else None
        done_reason = "stop" if calls else gen.finish_reason  # a tool call ends the turn normally

        def piece(text: str, tool_calls: list[dict[str, Any]] | None = None) -> dict[str, Any]:
            message: dict[str, Any] = {"role": "assistant", "content": text}
            if tool_calls:
                message["tool_calls"] = tool_calls
            part = {"message": message} if key == "message" else {"response": text}
            return {"model": requested, "created_at": go_time(), **part, "done": False}

        def final(text: str, tool_calls: list[dict[str, Any]] | None = None) -> dict[str, Any]:
            out = piece(text, tool_calls)
            del out["done"]
            if key == "message":
                out.update(done_reason=done_reason, done=True)
            else:
                out.update(done=True, done_reason=gen.finish_reason)
                if with_context:
                    out["context"] = token_ids(prompt + " " + gen.text)
            return {**out, **self._metrics(gen, extra, started, seat.prefill)}

        def events() -> Iterator[tuple[bool | int, bytes]]:
            if calls:  # the tool parser holds the call back until it is whole, then sends it at once
                yield len(gen.call_pieces), orjson.dumps(piece("", calls)) + b"\n"
            for p in gen.pieces:
                yield True, orjson.dumps(piece(p)) + b"\n"
            yield False, orjson.dumps(final("")) + b"\n"

        async with self.b.scheduler.seat(request, self.b, name, gen, {}, Prompt.of(prompt, tools)) as seat:
            # no limit: the scheduler counts running requests
            if body.get("stream", True) is False:
                tokens_after_first = self.b.token_interval() * max(gen.completion_tokens - 1, 0)
                await self.b.compute(request, seat.prefill, extra_delay=extra, decode=tokens_after_first)
                return self.b.json(final(gen.text, calls), content_type=JSON_TYPE)
            return await self.b.stream(request, events(), content_type="application/x-ndjson", extra_delay=extra,
                                       headers_early=False, prefill=seat.prefill)

    def _metrics(self, gen: Generation, extra: float, started: float, prefill: Prefill) -> dict[str, int]:
        load = _ns(extra) or 1_200_000
        prompt_eval = _ns(self.b.ttft + prefill.seconds) or 40_000 * prefill.uncached  # the uncached tokens' prefill
        evaluation = _ns(self.b.token_interval() * gen.completion_tokens) or 15_000 * max(gen.completion_tokens, 1)
        total = max(_ns(time.perf_counter() - started), load + prompt_eval + evaluation)
        return {"total_duration": total, "load_duration": load,
                "prompt_eval_count": self.prompt_eval_count(gen.prompt_tokens, prefill.cached),
                "prompt_eval_duration": prompt_eval, "eval_count": gen.completion_tokens, "eval_duration": evaluation}

    async def chat(self, request: web.Request) -> web.StreamResponse:
        return await self._generation(request, "message")

    async def generate(self, request: web.Request) -> web.StreamResponse:
        return await self._generation(request, "response")

    # ------------------------------------------------------------------ embeddings

    async def embed(self, request: web.Request) -> web.StreamResponse:
        started = time.perf_counter()
        body = await self._body(request)
        if isinstance(body, web.Response):
            return body
        requested = str(body.get("model") or "")
        name = self.resolve(requested) if requested else None
        if name is None:
            return self.err(404, f"model '{requested}' not found")
        raw = body.get("input")
        if isinstance(raw, str):
            texts = [raw] if raw else []
        elif isinstance(raw, list) and all(isinstance(t, str) for t in raw):
            texts = raw
        elif raw is None:
            texts = []
        else:
            return self.err(400, "invalid input type")
        extra = self.use(name, body.get("keep_alive"), body.get("options"))
        await self.b.pause(request, self.b.first_token_delay(extra))
        if not texts:
            return self.b.json({"model": requested, "embeddings": []}, content_type=JSON_TYPE)
        dim = as_int(body.get("dimensions"))
        vectors = [embed(name, t, self.b.embedding_dim) for t in texts]
        if dim and 0 < dim < self.b.embedding_dim:
            vectors = [_renormalise(v[:dim]) for v in vectors]
        tokens = sum(count_tokens(t) for t in texts)
        load = _ns(extra) or 1_200_000
        return self.b.json({
            "model": requested, "embeddings": vectors,
            "total_duration": max(_ns(time.perf_counter() - started), load + 1), "load_duration": load,
            "prompt_eval_count": tokens,
        }, content_type=JSON_TYPE)

    async def embeddings(self, request: web.Request) -> web.StreamResponse:
        body = await self._body(request)
        if isinstance(body, web.Response):
            return body
        requested = str(body.get("model") or "")
        if not requested:
            return self.err(400, "model is required")
        name = self.resolve(requested)
        if name is None:  # this legacy path reports through the scheduler's wording
            return self.err(404, f'model "{requested}" not found, try pulling it first')
        extra = self.use(name, body.get("keep_alive"), body.get("options"))
        await self.b.pause(request, self.b.first_token_delay(extra))
        prompt = str(body.get("prompt") or "")
        return self.b.json({"embedding": embed(name, prompt, self.b.embedding_dim) if prompt else []},
                           content_type=JSON_TYPE)


def _renormalise(vec: list[float]) -> list[float]:
    norm = sum(v * v for v in vec) ** 0.5 or 1.0
    return [round(v / norm, 7) for v in vec]
