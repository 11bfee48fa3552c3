"""Wire-format adapters, one per format, found by ``Deployment.wire``.

An adapter builds the upstream request and turns the upstream response into the
bytes the client receives. vLLM, llama.cpp's server, llama-cpp-python and any
``openai/`` backend share the OpenAI-compatible adapter; Ollama and Anthropic's
Messages API (``router.providers.anthropic``) have their own.
"""

from __future__ import annotations

import re
from typing import Any

import orjson

from router.domain import Deployment
from router.errors import RouterError, UpstreamError
from router.providers import ollama
from router.providers.anthropic import Anthropic
from router.providers.base import Adapter, Context, StreamTranslator, error_event

_ERROR_OBJECT = re.compile(rb'\s*\{\s*"error"\s*:')  # a JSON object whose first key is "error"
OPENAI_PATHS = {"chat": "/chat/completions", "completions": "/completions", "embeddings": "/embeddings"}  # under api_base, which ends in /v1


SSE_TYPE = "text/event-stream; charset=utf-8"


def openai_error_event(exc: RouterError, translator: StreamTranslator | None = None) -> bytes:
    return error_event(exc.message, exc.type, exc.code)


class OpenAICompatible:
    """Pass-through: only the model name (and a default ``max_tokens``) change."""

    rewrites = False
    stream_type = SSE_TYPE
    stream_error = staticmethod(openai_error_event)

    def upstream_request(self, endpoint: str, body: dict[str, Any], deployment: Deployment, model: str) -> tuple[str, bytes]:
        body = dict(body)
        body["model"] = model
        if deployment.max_tokens is not None and endpoint != "embeddings" and body.get("max_tokens") is None and body.get("max_completion_tokens") is None:
            body["max_tokens"] = deployment.max_tokens
        return deployment.api_base + OPENAI_PATHS[endpoint], orjson.dumps(body)

    def response_body(self, endpoint: str, raw: bytes, ctx: Context, provider: str) -> bytes:
        # Relayed untouched; a cheap look at the first byte catches HTML error pages
        # and empty bodies without parsing the JSON.
        if raw.lstrip()[:1] != b"{":
            raise UpstreamError(f"{provider} answered with a body that is not a JSON object: {raw[:100]!r}")
        if _ERROR_OBJECT.match(raw):  # a 200 whose body is an error (a crashed runner behind a proxy, …)
            raise UpstreamError(f"{provider} answered 200 with an error: {raw[:300].decode('utf-8', 'replace')}")
        return raw

    def is_stream(self, content_type: str) -> bool:
        return content_type.startswith("text/event-stream")

    def translator(self, endpoint: str, ctx: Context) -> StreamTranslator | None:
        return None


class Ollama:
    rewrites = True
    stream_type = SSE_TYPE
    stream_error = staticmethod(openai_error_event)

    def upstream_request(self, endpoint: str, body: dict[str, Any], deployment: Deployment, model: str) -> tuple[str, bytes]:
        payload = ollama.BUILDERS[endpoint](body, model, deployment.max_tokens)
        return deployment.api_base + ollama.PATHS[endpoint], orjson.dumps(payload)

    def response_body(self, endpoint: str, raw: bytes, ctx: Context, provider: str) -> bytes:
        try:
            return orjson.dumps(ollama.RESPONSES[endpoint](orjson.loads(raw), ctx))
        except orjson.JSONDecodeError:
            raise UpstreamError(f"{provider} answered with a body that is not JSON: {raw[:100]!r}") from None
        except (AttributeError, TypeError, ValueError, KeyError) as exc:
            raise UpstreamError(f"{provider} answered with an unexpected Ollama response shape ({exc})") from None

    def is_stream(self, content_type: str) -> bool:
        # Ollama streams NDJSON; the translator checks every line.
        return "json" in content_type

    def translator(self, endpoint: str, ctx: Context) -> StreamTranslator | None:
        return ollama.StreamTranslator(endpoint, ctx)


ADAPTERS: dict[str, Adapter] = {"openai": OpenAICompatible(), "ollama": Ollama(), "anthropic": Anthropic()}
