"""Wire-format adapters, one per format, found by ``Deployment.wire``.

An adapter builds the upstream request and turns the upstream response into the
bytes the client receives. vLLM, llama.cpp's server, llama-cpp-python and any
``openai/`` backend share the OpenAI-compatible adapter; Ollama has its own.
"""

from __future__ import annotations

from typing import Any, Protocol

import orjson

from router.domain import Deployment
from router.errors import UpstreamError
from router.providers import ollama
from router.providers.ollama import Context, StreamTranslator

OPENAI_PATHS = {"chat": "/v1/chat/completions", "completions": "/v1/completions", "embeddings": "/v1/embeddings"}


class Adapter(Protocol):
    def upstream_request(self, endpoint: str, body: dict[str, Any], deployment: Deployment, model: str) -> tuple[str, bytes]:
        """Return the upstream URL and JSON payload for ``body`` (already validated),
        sending ``model`` as the model name. May raise ``BadRequest``."""
        ...

    def response_body(self, endpoint: str, raw: bytes, ctx: Context) -> bytes:
        """Turn a successful non-streaming upstream body into the client's body."""
        ...

    def translator(self, endpoint: str, ctx: Context) -> StreamTranslator | None:
        """A stream translator, or ``None`` to relay the upstream bytes unchanged."""
        ...


class OpenAICompatible:
    """Pass-through: only the model name (and a default ``max_tokens``) change."""

    def upstream_request(self, endpoint: str, body: dict[str, Any], deployment: Deployment, model: str) -> tuple[str, bytes]:
        body = dict(body)
        body["model"] = model
        if deployment.max_tokens is not None and endpoint != "embeddings" and body.get("max_tokens") is None and body.get("max_completion_tokens") is None:
            body["max_tokens"] = deployment.max_tokens
        return deployment.api_base + OPENAI_PATHS[endpoint], orjson.dumps(body)

    def response_body(self, endpoint: str, raw: bytes, ctx: Context) -> bytes:
        return raw

    def translator(self, endpoint: str, ctx: Context) -> StreamTranslator | None:
        return None


class Ollama:
    def upstream_request(self, endpoint: str, body: dict[str, Any], deployment: Deployment, model: str) -> tuple[str, bytes]:
        payload = ollama.BUILDERS[endpoint](body, model, deployment.max_tokens)
        return deployment.api_base + ollama.PATHS[endpoint], orjson.dumps(payload)

    def response_body(self, endpoint: str, raw: bytes, ctx: Context) -> bytes:
        try:
            data = orjson.loads(raw)
        except orjson.JSONDecodeError:
            raise UpstreamError("Ollama returned a body that is not JSON") from None
        return orjson.dumps(ollama.RESPONSES[endpoint](data, ctx))

    def translator(self, endpoint: str, ctx: Context) -> StreamTranslator | None:
        return StreamTranslator(endpoint, ctx)


ADAPTERS: dict[str, Adapter] = {"openai": OpenAICompatible(), "ollama": Ollama()}
