"""Schemathesis against a live proxy (master key set) in front of the simulated backends.

Every operation of the served ``/openapi.json`` gets schema-valid requests and
requests that break the schema (wrong types, out-of-range values, missing fields),
the front doors (Anthropic Messages, Responses, rerank, Ollama's API) included: the
stack has every backend kind, so each door is passed through to a server that speaks
it natively and translated for one that does not. Each response must:

- come within ``TIMEOUT`` seconds (no hang);
- not be a proxy failure: a 500 never; a 502/504 only when a backend was tried and
  failed (an ``x-router-attempts`` header, which only requests that reached a backend
  carry, and in OpenAI's shape ``code`` ``upstream_*``), and never for a schema-valid
  request: the simulated backends are healthy, so that is the router's fault (or the
  spec allows what no server takes);
- as an error (4xx/5xx), be JSON in the dialect of its path: Anthropic's
  ``{"type": "error", "error": {"type": str, "message": str}}`` on /v1/messages* and
  /anthropic/*, Ollama's ``{"error": str}`` on /api/*, OpenAI's
  ``{"error": {"message": str, "type": str, ...}}`` elsewhere;
- pass schemathesis's checks: documented status code, content type, headers and
  body schema (each line of an NDJSON stream too, which schemathesis cannot read),
  and invalid data rejected (4xx).

``POST /router/reload`` is fuzzed too: it re-reads the fixture's own files, so it
swaps in the same configuration. Examples are derandomized (the same every run, so CI does not flake) and bounded:
``LLM_ROUTER_FUZZ_EXAMPLES`` per operation and generation mode (default 25); set
``LLM_ROUTER_FUZZ_SEED`` to explore other inputs locally. All problems are
collected and reported together, without shrinking.
"""

from __future__ import annotations

import asyncio
import copy
import os
import time
from collections import Counter
from typing import Any

import aiohttp
import hypothesis
import orjson
import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis import GenerationMode
from schemathesis.core.failures import FailureGroup
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

MASTER_KEY = "sk-fuzz-master"
AUTH = {"Authorization": f"Bearer {MASTER_KEY}"}
EXAMPLES = int(os.environ.get("LLM_ROUTER_FUZZ_EXAMPLES", "25"))
SEED = os.environ.get("LLM_ROUTER_FUZZ_SEED")
TIMEOUT = 10.0  # seconds for one request: the simulators answer in milliseconds
CHECKS = [status_code_conformance, content_type_conformance, response_headers_conformance,
          response_schema_conformance, negative_data_rejection]
UPSTREAM_CODES = {502: ("upstream_error", "upstream_unavailable"), 504: ("upstream_timeout",)}
# Names the fixture's configuration routes (exact, alias, id, pattern): positive cases reach the backends.
# Each backend kind is among them: Ollama, vLLM, llama-cpp-python and llama-server ("native").
MODELS = ["llama3.1:8b", "qwen2.5-coder:7b", "nomic-embed", "llama2-13b-vllm", "llama-cpp-default", "native",
          "general_chat", "qwen-coder", "meta-llama/Llama-2-7b-chat-hf", "mistral:7b"]
# Those on a server that serves rerank (vLLM, llama-server): nothing translates rerank, so on
# the others a positive case could only be the documented 400 (endpoint_not_served).
RERANK_MODELS = ["llama2-13b-vllm", "native", "meta-llama/Llama-2-7b-chat-hf"]
# Paths that repeat another's operation (the same handler; tests/unit/test_openapi.py
# checks the spec describes them alike).
TWIN_OF = {"/chat/completions": "/v1/chat/completions", "/completions": "/v1/completions",
           "/embeddings": "/v1/embeddings", "/models": "/v1/models", "/models/{model}": "/v1/models/{model}",
           "/anthropic/v1/messages": "/v1/messages",
           "/anthropic/v1/messages/count_tokens": "/v1/messages/count_tokens",
           "/responses": "/v1/responses", "/rerank": "/v1/rerank"}


def fuzz_spec(spec: dict[str, Any], positive: bool) -> dict[str, Any]:
    """The served document with ``model`` narrowed to names that route (an arbitrary
    string is a 404 before any backend sees the request; negative cases still send those)."""
    spec = copy.deepcopy(spec)
    schemas = spec["components"]["schemas"]
    schemas["ModelName"] = {"type": "string", "enum": MODELS}
    if positive:
        # The simulators compute every dimension asked for, inside the proxy's own event
        # loop (a real server refuses more than its model has). Negative cases keep the
        # real bound: a value past it must still be rejected.
        schemas["EmbeddingRequest"]["properties"]["dimensions"]["maximum"] = 64
        schemas["OllamaEmbedRequest"]["properties"]["dimensions"]["maximum"] = 64
        schemas["RerankRequest"]["properties"]["model"] = {"type": "string", "enum": RERANK_MODELS}
    names = {"type": "string", "enum": MODELS}
    for path, name in (("/v1/models/{model}", "model"), ("/models/{model}", "model"), ("/router/explain", "model")):
        for param in spec["paths"][path]["get"]["parameters"]:
            if param["name"] == name:
                param["schema"] = names
    return spec


# Explicit cases tried first on each POST operation (positive mode): every kind of
# backend, streaming and not, so the stream schemas are checked on every run. A front
# door is native on some kinds and translated on the others (Ollama: /api/* natively;
# vLLM and llama-server: Messages, count_tokens, Responses and rerank; Ollama: Messages
# and Responses; llama-cpp-python: none).
BACKEND_MODELS = ["llama3.1:8b", "llama2-13b-vllm", "llama-cpp-default", "native"]
HI = [{"role": "user", "content": "Hi"}]
EXPLICIT: dict[str, list[dict[str, Any]]] = {
    "/v1/chat/completions": [{"model": m, "messages": HI, "stream": stream,
                              **({"stream_options": {"include_usage": True}} if stream else {})}
                             for m in BACKEND_MODELS for stream in (False, True)],
    "/v1/completions": [{"model": m, "prompt": "Once", "max_tokens": 3, "stream": stream}
                        for m in BACKEND_MODELS for stream in (False, True)],
    "/v1/embeddings": [{"model": m, "input": ["one", "two"]} for m in ("nomic-embed", "llama2-13b-vllm")],
    "/v1/messages": [{"model": m, "max_tokens": 8, "messages": HI, "stream": stream}
                     for m in BACKEND_MODELS for stream in (False, True)],
    "/v1/messages/count_tokens": [{"model": m, "messages": HI} for m in BACKEND_MODELS],
    "/v1/responses": [{"model": m, "input": "Hi", "max_output_tokens": 8, "stream": stream}
                      for m in BACKEND_MODELS for stream in (False, True)],
    "/v1/rerank": [{"model": m, "query": "llama", "documents": ["a llama", "a camel"], "top_n": 1}
                   for m in ("llama2-13b-vllm", "native")],
    "/api/chat": [{"model": m, "messages": HI, **({} if stream else {"stream": False})}
                  for m in BACKEND_MODELS for stream in (False, True)],
    "/api/generate": [{"model": m, "prompt": "Once", "options": {"num_predict": 3},
                       **({} if stream else {"stream": False})} for m in BACKEND_MODELS for stream in (False, True)],
    "/api/embed": [{"model": m, "input": ["one", "two"]} for m in ("nomic-embed", "llama2-13b-vllm")],
    "/api/embeddings": [{"model": m, "prompt": "one"} for m in ("nomic-embed", "llama2-13b-vllm")],
    "/api/show": [{"model": m} for m in BACKEND_MODELS],
}


def explicit_cases(operation: schemathesis.APIOperation) -> list[dict[str, Any]]:
    if operation.method.upper() != "POST":
        return []
    return EXPLICIT.get(TWIN_OF.get(operation.path, operation.path), [])


def examples_for(path: str, inputs: bool) -> int:
    """``EXAMPLES`` where there is something to vary; a few for the twins of other
    paths (``TWIN_OF``) and for operations without inputs (only headers vary)."""
    if not inputs or path in TWIN_OF:
        return max(3, EXAMPLES // 5)
    return EXAMPLES


def header(response: schemathesis.Response, name: str) -> str | None:
    values = response.headers.get(name.lower())  # lowercase names, lists of values
    return values[0] if values else None


def dialect(path: str) -> str:
    """The error dialect of a path: "anthropic", "ollama" or "openai"."""
    if path.startswith(("/v1/messages", "/anthropic/")):
        return "anthropic"
    return "ollama" if path.startswith("/api/") else "openai"


def error_message(kind: str, data: Any) -> str | None:
    """The message of an error body in the ``kind`` dialect; None if it is not one."""
    if not isinstance(data, dict):
        return None
    err = data.get("error")
    if kind == "ollama":
        return err if isinstance(err, str) else None
    if kind == "anthropic" and data.get("type") != "error":
        return None
    if isinstance(err, dict) and isinstance(err.get("message"), str) and isinstance(err.get("type"), str):
        return err["message"]
    return None


def error_problems(path: str, response: schemathesis.Response) -> list[str]:
    """What is wrong with this response by our own rules (empty: nothing)."""
    status = response.status_code
    if status < 400:
        return []
    kind = dialect(path)
    ctype = header(response, "Content-Type") or ""
    if not ctype.startswith("application/json"):
        return [f"HTTP {status} with Content-Type {ctype!r}, not a JSON error: {response.text[:200]!r}"]
    try:
        data = orjson.loads(response.content)
    except orjson.JSONDecodeError:
        return [f"HTTP {status}: the body is not JSON: {response.text[:200]!r}"]
    message = error_message(kind, data)
    if message is None:
        return [f"HTTP {status}: not an error in {kind}'s shape: {response.text[:200]!r}"]
    if status == 500 or status > 504:
        return [f"HTTP {status} from the proxy itself: {message}"]
    if status in UPSTREAM_CODES:
        wrong_code = kind == "openai" and data["error"].get("code") not in UPSTREAM_CODES[status]  # the others have none
        if wrong_code or header(response, "x-router-attempts") is None:
            return [f"HTTP {status} without a backend behind it: {message}"]
    return []


NDJSON = "application/x-ndjson"


def ndjson_problems(case: schemathesis.Case, response: schemathesis.Response) -> list[str]:
    """Each line of a 200 NDJSON stream (Ollama's) against the schema the spec gives a line:
    schemathesis has no reader for the media type, so its own check passes them unread."""
    if response.status_code != 200 or not (header(response, "Content-Type") or "").startswith(NDJSON):
        return []
    definition = case.operation.responses.find_by_status_code(200)
    resolved = definition.get_schema(NDJSON)
    validator = definition.get_validator(resolved.media_type, resolved.schema, validate_formats=False)
    lines = response.content.split(b"\n")
    if lines[-1] != b"":
        return [f"the stream does not end with a line ending: {response.content[-100:]!r}"]
    for i, line in enumerate(lines[:-1]):
        try:
            obj = orjson.loads(line)
        except orjson.JSONDecodeError:
            return [f"line {i} is not JSON: {line[:200]!r}"]
        errors = [e.message for e in validator.iter_errors(obj)]
        if errors:
            return [f"line {i} violates the schema ({'; '.join(errors)[:300]}): {line[:200]!r}"]
    last = orjson.loads(lines[-2]) if len(lines) > 1 else None
    if not isinstance(last, dict) or (last.get("done") is not True and "error" not in last):
        return [f"the stream does not end with its done line (or an error line): {response.content[-200:]!r}"]
    return []


class Fuzz:
    """One run over every operation (blocking: run it off the event loop that serves the proxy)."""

    def __init__(self, spec: dict[str, Any], url: str) -> None:
        self.schema = schemathesis.openapi.from_dict(fuzz_spec(spec, positive=True))
        self.negative = schemathesis.openapi.from_dict(fuzz_spec(spec, positive=False))
        self.url = url
        self.session = requests.Session()
        self.problems: list[str] = []
        self.statuses: dict[str, Counter[int]] = {}
        self._seen: set[tuple[str, str]] = set()

    def report(self, label: str, kind: str, detail: str) -> None:
        if (label, kind) not in self._seen:  # one of each kind per operation is enough to read
            self._seen.add((label, kind))
            self.problems.append(f"{label}: {detail}")

    def run(self) -> Fuzz:
        try:
            for result in self.schema.get_all_operations():
                operation = result.ok()
                self.statuses[operation.label] = Counter()
                inputs = bool(operation.body or operation.query or operation.path_parameters)
                examples = examples_for(operation.path, inputs)
                self.operation(operation, GenerationMode.POSITIVE, examples)
                if inputs:  # else there is nothing to break
                    self.operation(self.negative[operation.path][operation.method.upper()], GenerationMode.NEGATIVE, examples)
        finally:
            self.session.close()
        return self

    def operation(self, operation: schemathesis.APIOperation, mode: GenerationMode, examples: int) -> None:
        label = operation.label

        @settings(max_examples=examples, deadline=None, database=None, derandomize=SEED is None,
                  phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck),
                  verbosity=hypothesis.Verbosity.quiet)
        @given(case=operation.as_strategy(mode))
        def one(case: schemathesis.Case) -> None:
            curl = case.as_curl_command(AUTH, base_url=self.url)
            try:
                response = case.call(base_url=self.url, session=self.session, headers=AUTH, timeout=TIMEOUT)
            except requests.Timeout:
                self.report(label, "hang", f"no answer within {TIMEOUT} s: {curl}")
                return
            self.statuses[label][response.status_code] += 1
            for problem in error_problems(operation.path, response):
                self.report(label, f"shape {response.status_code}", f"{problem}\n    {curl}")
            if mode is GenerationMode.POSITIVE and response.status_code >= 500:
                self.report(label, "valid 5xx", f"HTTP {response.status_code} for a schema-valid request from a healthy "
                            f"stack: {response.text[:300]!r}\n    {curl}")
            for problem in ndjson_problems(case, response):
                self.report(label, "NDJSON", f"{problem}\n    {curl}")
            try:
                case.validate_response(response, checks=CHECKS, headers=AUTH)
            except FailureGroup as group:
                for failure in group.exceptions:
                    self.report(label, type(failure).__name__, f"{failure.title}: {failure.message}\n    "
                                f"HTTP {response.status_code} {response.text[:300]!r}\n    {curl}")

        if mode is GenerationMode.POSITIVE:
            for body in explicit_cases(operation):
                one = hypothesis.example(case=operation.Case(body=body, media_type="application/json"))(one)
        if SEED is not None:
            one = hypothesis.seed(int(SEED))(one)
        one()


async def test_fuzz_every_operation_against_a_live_proxy(make_stack):
    stack = await make_stack(extra_general=f"master_key: {MASTER_KEY}")
    async with aiohttp.ClientSession() as s:
        async with s.get(stack.url + "/openapi.json") as r:  # no key needed
            assert r.status == 200
            spec = await r.json()
    started = time.monotonic()
    fuzz = await asyncio.to_thread(Fuzz(spec, stack.url).run)
    elapsed = time.monotonic() - started
    problems, statuses = fuzz.problems, fuzz.statuses
    print(f"fuzzed {sum(sum(c.values()) for c in statuses.values())} requests over {len(statuses)} operations in {elapsed:.1f} s")
    for label, c in statuses.items():
        print(f"  {label}: " + ", ".join(f"{n}x{status}" for status, n in sorted(c.items())))
    assert len(statuses) == sum(len([m for m in item if m != "parameters"]) for item in spec["paths"].values())
    assert all(statuses.values()), statuses
    assert not problems, "\n\n".join(problems)


async def test_every_operation_without_the_key_is_a_401_or_open(make_stack):
    """The spec's security, checked: open paths answer without a key, every other one is a
    401 in its path's dialect (OpenAI's with ``code: invalid_api_key``)."""
    stack = await make_stack(extra_general=f"master_key: {MASTER_KEY}")
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=TIMEOUT)) as s:
        async with s.get(stack.url + "/openapi.json") as r:
            spec = await r.json()
        for path, item in spec["paths"].items():
            for method, op in item.items():
                url = stack.url + path.replace("{model}", "llama3.1:8b")
                async with s.request(method, url, json={} if method == "post" else None) as r:
                    body = await r.read()
                    if op.get("security") == [] or {} in op.get("security", []):
                        assert r.status < 400, (method, path, r.status, body[:200])
                    else:
                        assert r.status == 401, (method, path, r.status)
                        data = orjson.loads(body)
                        assert error_message(dialect(path), data), (method, path, body[:200])
                        if dialect(path) == "openai":
                            assert data["error"]["code"] == "invalid_api_key"
                        elif dialect(path) == "anthropic":
                            assert data["error"]["type"] == "authentication_error"


# Bodies no schema-driven generator writes: each is an OpenAI-shaped 400 naming the field, never a 500.
HOSTILE = [
    ("/v1/chat/completions", b"\xef\xbb\xbf{}", None),  # a byte-order mark
    ("/v1/chat/completions", b'{"model": "native", "messages": [{"role": "user", "content": "\\ud800"}]}', None),  # lone surrogate
    ("/v1/chat/completions", b'{"model": "native", "messages": [{"role": "user", "content": "\xff"}]}', None),  # not UTF-8
    ("/v1/chat/completions", b'{"model": "native", "messages": [{"role": "user"}], "n": 100000}', "n"),
    ("/v1/chat/completions", b'{"model": "native", "messages": [{"role": "user"}], "max_tokens": -1}', "max_tokens"),
    ("/v1/chat/completions", b'{"model": "native", "messages": [{"role": "user"}], "max_tokens": 1e300}', "max_tokens"),
    ("/v1/chat/completions", b'{"model": "native", "messages": [{"role": "user"}], "temperature": 1e308}', "temperature"),
    ("/v1/chat/completions", b'{"model": "native", "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": 1}}]}]}',
     "messages[0].content[0].image_url"),
    ("/v1/chat/completions", b'{"model": "llama3.1:8b", "messages": [{"role": "assistant", "tool_calls": [{"function": []}]}]}',
     "messages[0].tool_calls[0]"),
    ("/v1/chat/completions", b'{"model": "llama3.1:8b", "messages": [{"role": "user"}], "response_format": {"type": "json_schema", "json_schema": 1}}',
     "response_format.json_schema"),
    ("/v1/completions", b'{"model": "native", "prompt": [1, "a", [2]]}', "prompt"),
    ("/v1/completions", b'{"model": "native", "prompt": [[1], [true]]}', "prompt[1]"),
    ("/v1/embeddings", b'{"model": "nomic-embed", "input": ""}', "input"),
    ("/v1/embeddings", b'{"model": "nomic-embed", "input": [' + b",".join([b'"a"'] * 4097) + b"]}", "input"),
]


@pytest.mark.parametrize("path, body, param", HOSTILE)
async def test_hostile_bodies_are_openai_shaped_400s(stack, path, body, param):
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=TIMEOUT)) as s:
        async with s.post(stack.url + path, data=body, headers={"Content-Type": "application/json"}) as r:
            assert r.status == 400, await r.text()
            err = (await r.json())["error"]
    assert err["type"] == "invalid_request_error" and err["param"] == param and isinstance(err["message"], str)
    reached = [p for sim in stack.backends.values() for p in sim.stats.requests
               if p.rsplit("/", 1)[-1] in ("completions", "embeddings", "chat", "generate", "embed")]
    assert reached == []  # the health probes only: no request got to a backend


async def test_unknown_fields_reach_the_backend_untouched_and_in_order(stack):
    body = {"zeta": {"nested": [1, None, "x"]}, "model": "llama2-13b-vllm", "messages": [{"role": "user", "content": "Hi", "x_meta": 1}],
            "top_k": 40, "repetition_penalty": 1.1, "guided_json": {"type": "object"}, "alpha": None}
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=TIMEOUT)) as s:
        async with s.post(stack.url + "/v1/chat/completions", data=orjson.dumps(body)) as r:
            assert r.status == 200, await r.text()
    sent = stack.backends["vllm"].stats.last_body
    assert list(sent) == list(body)
    assert {k: v for k, v in sent.items() if k != "model"} == {k: v for k, v in body.items() if k != "model"}
    assert sent["model"] == "meta-llama/Llama-2-13b-chat-hf"


# Bodies no schema-driven generator writes, at the front doors: a 400 in the door's dialect, never a 500.
DOOR_PATHS = ["/v1/messages", "/v1/messages/count_tokens", "/anthropic/v1/messages", "/v1/responses", "/v1/rerank",
              "/api/chat", "/api/generate", "/api/embed", "/api/embeddings", "/api/show"]
DOOR_HOSTILE = [b"\xef\xbb\xbf{}", b'{"model": "native", "x": "\\ud800"}', b'{"model": "native", "x": "\xff"}',
                b"[]", b'"native"', b"", b"{" * 100_000]


async def test_hostile_bodies_at_the_doors_are_400s_in_their_dialect(stack):
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=TIMEOUT)) as s:
        for path in DOOR_PATHS:
            for body in DOOR_HOSTILE:
                async with s.post(stack.url + path, data=body, headers={"Content-Type": "application/json"}) as r:
                    assert r.status == 400, (path, body[:40], r.status, await r.text())
                    assert error_message(dialect(path), await r.json()), (path, body[:40], await r.text())
    served = ("/v1/messages", "/v1/responses", "/v1/rerank", "/api/chat", "/api/generate", "/api/embed", "/api/show")
    reached = [p for sim in stack.backends.values() for p in sim.stats.requests if p.startswith(served)]
    assert reached == []  # the health probes only: no request got to a backend


@pytest.mark.parametrize("path", ["/api/chat", "/api/generate"])
async def test_an_ollama_load_request_gets_ollamas_answer(stack, path):
    """Ollama answers a chat without messages, or a generate without a prompt, by loading the
    model: one JSON object with ``done_reason: "load"``, though the request streams
    (server/routes.go, ChatHandler and GenerateHandler)."""
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=TIMEOUT)) as s:
        async with s.post(stack.url + path, json={"model": "llama3.1:8b"}) as r:
            assert r.status == 200, await r.text()
            answer = orjson.loads(await r.read())
    assert answer["done"] is True and answer["done_reason"] == "load"


async def test_api_show_refuses_a_model_that_is_not_a_string(stack):
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=TIMEOUT)) as s:
        async with s.post(stack.url + "/api/show", json={"name": "native", "model": False}) as r:
            assert r.status == 400, await r.text()
            assert isinstance((await r.json())["error"], str)


async def test_a_system_message_without_content_is_no_500(stack):
    body = {"model": "llama-cpp-default", "max_tokens": 8, "messages": [{"role": "user", "content": "Hi"}, {"role": "system"}]}
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=TIMEOUT)) as s:
        async with s.post(stack.url + "/v1/messages", json=body) as r:
            assert r.status in (200, 400), await r.text()


async def test_a_responses_item_of_empty_type_is_no_500(stack):
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=TIMEOUT)) as s:
        async with s.post(stack.url + "/v1/responses", json={"model": "llama-cpp-default", "input": [{"type": ""}]}) as r:
            assert r.status == 400, await r.text()
