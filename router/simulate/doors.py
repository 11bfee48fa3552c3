"""Which native dialects each simulated server kind serves, beside its chat API.

Only where the real server does (see each module's sources): Anthropic Messages
(:mod:`router.simulate.anthropic`) on vLLM, llama-server and Ollama (Ollama
without ``count_tokens``); OpenAI Responses (:mod:`router.simulate.responses`)
on the same three; rerank (:mod:`router.simulate.rerank`) on vLLM and
llama-server. llama-cpp-python and the generic OpenAI kind serve none of them:
their catch-all 404 answers.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

from aiohttp import web

if TYPE_CHECKING:
    from .backend import SimulatedBackend


class Door(Protocol):
    """One native dialect's routes on one server."""

    def add_routes(self, router: web.UrlDispatcher) -> None:
        """Register the dialect's paths."""
        ...

    def owns(self, path: str) -> bool:
        """Whether ``path`` is one of this door's routes (an injected error then takes its shape)."""
        ...

    def error(self, status: int, message: str) -> web.Response:
        """An error answer in the shape the server writes on these routes."""
        ...


def make_doors(backend: SimulatedBackend, api: Any) -> list[Door]:
    """The doors of ``backend``'s kind; ``api`` is its chat API (``OpenAICompatAPI`` or ``OllamaAPI``)."""
    from .anthropic import LlamaServerMessages, OllamaMessages, VLLMMessages
    from .rerank import LlamaServerRerank, VLLMRerank
    from .responses import LlamaServerResponses, OllamaResponses, VLLMResponses

    if backend.kind == "vllm":
        return [VLLMMessages(backend, api), VLLMResponses(backend, api), VLLMRerank(backend, api)]
    if backend.kind == "llama_cpp_native":
        return [LlamaServerMessages(backend, api), LlamaServerResponses(backend, api), LlamaServerRerank(backend, api)]
    if backend.kind == "ollama":
        return [OllamaMessages(backend, api), OllamaResponses(backend, api)]
    return []
