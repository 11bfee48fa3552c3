"""``POST /v1/rerank`` (and ``/rerank``): the rerank API of Cohere's shape that
LiteLLM, vLLM and llama.cpp's server share, passed through to the backends that
serve it (vLLM, llama-server). Nothing translates rerank into chat: a deployment
whose server has no rerank endpoint is skipped for another candidate.

The request is checked as vLLM and llama-server check it (``model``, ``query``,
``documents`` as strings or ``{"text": ...}`` objects, ``top_n``,
``return_documents``); errors are OpenAI-shaped, as LiteLLM's are.
"""

from __future__ import annotations

import re
from typing import Any, NoReturn

import orjson

from router.config import Limits
from router.domain import Deployment
from router.validate import decode_object
from router.errors import BadRequest, RouterError, UpstreamError
from router.providers.base import Context, StreamTranslator, error_event

_ERROR_OBJECT = re.compile(rb'\s*\{\s*"(?:error|detail)"\s*:')


class Rerank:
    name = "rerank"
    pivot: str | None = None  # no translation: native backends only
    native_path = "/v1/rerank"
    stream_type = "application/json"
    id_prefix = "rerank-"

    def parse(self, raw: bytes, limits: Limits) -> dict[str, Any]:
        body = decode_object(raw)
        if not isinstance(body.get("model"), str) or not body["model"]:
            raise BadRequest("`model` is required: the name of a reranking model.", param="model")
        if not isinstance(body.get("query"), str):
            raise BadRequest("`query` is required and must be a string.", param="query")
        docs = body.get("documents")
        if not isinstance(docs, list) or not docs:
            raise BadRequest("`documents` must be a non-empty list of strings (or {\"text\": ...} objects).",
                             param="documents")
        if len(docs) > limits.max_input_items:
            raise BadRequest(f"`documents` has {len(docs)} items; the limit is {limits.max_input_items}.",
                             param="documents")
        for i, doc in enumerate(docs):
            if not isinstance(doc, str) and not (isinstance(doc, dict) and isinstance(doc.get("text"), str)):
                raise BadRequest("each document must be a string or an object with a string `text`.",
                                 param=f"documents[{i}]")
        top_n = body.get("top_n")
        if top_n is not None and (type(top_n) is not int or top_n < 1):
            raise BadRequest("`top_n` must be an integer of at least 1.", param="top_n")
        if body.get("return_documents") is not None and type(body["return_documents"]) is not bool:
            raise BadRequest("`return_documents` must be a boolean.", param="return_documents")
        return body

    def stream(self, body: dict[str, Any]) -> bool:
        return False

    def native_request(self, body: dict[str, Any], deployment: Deployment, model: str) -> bytes:
        return orjson.dumps({**body, "model": model})

    def check_native(self, raw: bytes, provider: str) -> bytes:
        if raw.lstrip()[:1] != b"{" or _ERROR_OBJECT.match(raw):
            raise UpstreamError(f"{provider} answered 200 with something that is not a rerank result: "
                                f"{raw[:200].decode('utf-8', 'replace')}")
        return raw

    def watch(self, ctx: Context) -> StreamTranslator:
        raise TypeError("rerank never streams: its stream() is False, so no attempt asks for this")

    def to_pivot(self, body: dict[str, Any]) -> NoReturn:
        raise TypeError("rerank is never translated: its pivot is None, so router.doors.adapter never asks for this")

    def from_pivot(self, data: dict[str, Any], ctx: Context) -> NoReturn:
        raise TypeError("rerank is never translated: its pivot is None, so router.doors.adapter never asks for this")

    def pivot_stream(self, ctx: Context) -> StreamTranslator:
        raise TypeError("rerank never streams: its stream() is False, so no attempt asks for this")

    def error_body(self, exc: RouterError) -> bytes:
        return exc.to_bytes()

    def error_event(self, exc: RouterError) -> bytes:
        return error_event(exc.message, exc.type, exc.code)


RERANK = Rerank()
