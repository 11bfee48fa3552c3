"""Wire-format adapters, one per format, found by ``Deployment.wire``.

An adapter builds the upstream request and turns the upstream response into the
bytes the client receives. vLLM, llama.cpp's server, llama-cpp-python, any
``openai/`` backend and the OpenAI-compatible clouds share the OpenAI-compatible
adapter; Ollama, Azure OpenAI (its URLs) and Anthropic (its Messages API) have their own.
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import quote

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


class Azure(OpenAICompatible):
    """Azure OpenAI: OpenAI's wire format at ``{api_base}/openai/deployments/{deployment}/…
    ?api-version=…``, the key in an ``api-key`` header (``router.backends.base.auth_headers``).
    The deployment is the model name after ``azure/``; the api-version is
    ``litellm_params.api_version``, else ``AZURE_API_VERSION``, else LiteLLM's default."""

    def upstream_request(self, endpoint: str, body: dict[str, Any], deployment: Deployment, model: str) -> tuple[str, bytes]:
        _, payload = super().upstream_request(endpoint, body, deployment, model)
        return (f"{deployment.api_base}/openai/deployments/{quote(model, safe='')}{OPENAI_PATHS[endpoint]}"
                f"?api-version={quote(deployment.api_version or '', safe='')}"), payload


ADAPTERS: dict[str, Adapter] = {"openai": OpenAICompatible(), "ollama": Ollama(), "azure": Azure(), "anthropic": Anthropic()}
