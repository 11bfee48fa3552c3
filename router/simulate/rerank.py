"""Rerank as vLLM and llama-server serve it (Ollama and llama-cpp-python have no
such route: their catch-all 404).

The simulated cross-encoder scores a document by the share of the query's
words it contains: ``logit = 8·overlap − 4``. Sources (read, not copied):

* **vLLM** ``entrypoints/pooling/score/api_router.py`` (``/rerank``,
  ``/v1/rerank``, ``/v2/rerank``), ``protocol.py`` (``RerankRequest``: ``top_n``
  0 = all, no ``return_documents``; ``RerankResponse``: ``id``, ``model``,
  ``usage.total_tokens``, ``results[{index, document{text, multi_modal},
  relevance_score}]`` dumped with ``model_dump()``), ``serving.py``
  (``request_output_to_rerank_response``: a stable sort by score, highest
  first, then the first ``top_n``; the score is the classifier's sigmoid).
* **llama-server** ``server.cpp`` (``/rerank``, ``/reranking``, ``/v1/rerank``,
  ``/v1/reranking``), ``server-common.cpp`` ``format_response_rerank``
  (``model``, ``object: "list"``, ``usage{prompt_tokens, total_tokens}``,
  ``results[{index, relevance_score}]`` sorted by score and cut to ``top_n``,
  default all; TEI's ``texts`` form answers a bare ``[{index, score}]`` list) and
  the handler's 400s for a missing ``query`` or empty ``documents``; the score is
  the raw logit.
"""

from __future__ import annotations

import math
import re
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from aiohttp import web

from . import load
from .backend import read_json
from .core import Generation, as_int, count_tokens
from .openai_compat import LlamaServerDialect, OpenAICompatAPI, VLLMDialect

if TYPE_CHECKING:
    from .backend import SimulatedBackend

_WORD = re.compile(r"\w+")


def overlap(query: str, document: str) -> float:
    """Share of the query's distinct words (case-folded) that occur in the document."""
    q = {w.casefold() for w in _WORD.findall(query)}
    d = {w.casefold() for w in _WORD.findall(document)}
    return len(q & d) / len(q) if q else 0.0


def logit(query: str, document: str) -> float:
    """The simulated cross-encoder's raw score (llama-server reports it as is)."""
    return round(8.0 * overlap(query, document) - 4.0, 6)


def sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


@dataclass(frozen=True)
class Scored:
    index: int
    text: str
    score: float
    tokens: int


def ranked(items: list[Scored], top_n: int) -> list[Scored]:
    """Highest score first (ties keep request order), the first ``top_n`` (``top_n`` ≤ 0: none)."""
    return sorted(items, key=lambda s: -s.score)[: max(top_n, 0)]


class RerankDoor:
    """The rerank routes of one server kind."""

    paths: tuple[str, ...] = ()

    def __init__(self, backend: SimulatedBackend, api: OpenAICompatAPI) -> None:
        self.b = backend
        self.api = api

    def add_routes(self, router: web.UrlDispatcher) -> None:
        for path in self.paths:
            router.add_post(path, self.rerank)

    def owns(self, path: str) -> bool:
        return path in self.paths

    def error(self, status: int, message: str) -> web.Response:
        return self.api.d.error(status, message)

    def parse(self, body: Any) -> tuple[str, str, list[Any], int] | web.Response:
        raise NotImplementedError

    def answer(self, model: str, body: dict[str, Any], items: list[Scored], top_n: int) -> web.Response:
        raise NotImplementedError

    def score(self, query: str, text: str) -> float:
        raise NotImplementedError

    async def rerank(self, request: web.Request) -> web.StreamResponse:
        body = await read_json(request)
        parsed = self.parse(body)
        if isinstance(parsed, web.Response):
            return parsed
        model, query, documents, top_n = parsed
        texts = [d if isinstance(d, str) else str(d.get("text") or "") if isinstance(d, dict) else "" for d in documents]
        items = [Scored(i, t, self.score(query, t), count_tokens(query) + count_tokens(t)) for i, t in enumerate(texts)]
        gen = Generation([], "stop", sum(s.tokens for s in items))
        async with self.b.scheduler.seat(request, self.b, model, gen, load.slot_params({}, False)):
            await self.b.pause(request, self.b.first_token_delay())
            return self.answer(model, body, [s for s in items], top_n)


class VLLMRerank(RerankDoor):
    paths = ("/rerank", "/v1/rerank", "/v2/rerank")

    @property
    def d(self) -> VLLMDialect:
        return self.api.d  # type: ignore[return-value]

    def score(self, query: str, text: str) -> float:
        return sigmoid(logit(query, text))

    def parse(self, body: Any) -> tuple[str, str, list[Any], int] | web.Response:
        if not isinstance(body, dict) or not isinstance(body.get("query"), str) or "documents" not in body:
            return self.b.json({"error": {"message": "1 validation error for RerankRequest: query and documents "
                                          "are required", "type": "Bad Request", "param": None, "code": 400}}, 400)
        model, err = self.d.resolve(body.get("model"))
        if err is not None:
            return err
        docs = body["documents"]
        if isinstance(docs, dict):  # ScoreMultiModalParam: {"content": [parts]}
            docs = docs.get("content") if isinstance(docs.get("content"), list) else []
        if not isinstance(docs, list):
            return self.d.error(400, "documents must be a list of strings or {'content': [...]}")
        top_n = as_int(body.get("top_n")) or 0
        return model, body["query"], docs, top_n if top_n > 0 else len(docs)

    def answer(self, model: str, body: dict[str, Any], items: list[Scored], top_n: int) -> web.Response:
        docs = body["documents"]
        parts = docs.get("content") if isinstance(docs, dict) else None

        def document(s: Scored) -> dict[str, Any]:
            if parts is not None:
                return {"text": None, "multi_modal": parts[s.index]}
            original = docs[s.index]
            return {"text": original if isinstance(original, str) else s.text, "multi_modal": None}

        results = [{"index": s.index, "document": document(s), "relevance_score": s.score}
                   for s in ranked(items, top_n)]
        return self.b.json({"id": f"rerank-{uuid.uuid4().hex}", "model": model,
                            "usage": {"total_tokens": sum(s.tokens for s in items)}, "results": results})


class LlamaServerRerank(RerankDoor):
    paths = ("/rerank", "/reranking", "/v1/rerank", "/v1/reranking")

    @property
    def d(self) -> LlamaServerDialect:
        return self.api.d  # type: ignore[return-value]

    def score(self, query: str, text: str) -> float:
        return logit(query, text)

    def parse(self, body: Any) -> tuple[str, str, list[Any], int] | web.Response:
        if not isinstance(body, dict) or "query" not in body:
            return self.d.error(400, '"query" must be provided')
        if not isinstance(body["query"], str):
            return self.d.error(400, '"query" must be a string')
        docs = body.get("documents", body.get("texts"))
        if not isinstance(docs, list) or not docs or not all(isinstance(d, str) for d in docs):
            return self.d.error(400, '"documents" must be a non-empty string array')
        top_n = as_int(body.get("top_n"))
        return str(body.get("model") or self.b.models[0]), body["query"], docs, len(docs) if top_n is None else top_n

    def answer(self, model: str, body: dict[str, Any], items: list[Scored], top_n: int) -> web.Response:
        tokens = sum(s.tokens for s in items)
        if "texts" in body:  # TEI: a bare list, "score", text only on request
            with_text = bool(body.get("return_text"))
            return self.d.json([{"index": s.index, "score": s.score, **({"text": s.text} if with_text else {})}
                                for s in ranked(items, top_n)])
        results = [{"index": s.index, "relevance_score": s.score} for s in ranked(items, top_n)]
        return self.d.json({"model": model, "object": "list", "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
                            "results": results})
