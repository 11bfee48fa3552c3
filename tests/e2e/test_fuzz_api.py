"""Schemathesis against a live proxy (master key set) in front of the simulated backends.

Every operation of the served ``/openapi.json`` gets schema-valid requests and
requests that break the schema (wrong types, out-of-range values, missing fields).
Each response must:

- come within ``TIMEOUT`` seconds (no hang);
- not be a proxy failure: a 500 never; a 502/504 only when a backend was tried and
  failed (OpenAI-shaped, ``code`` ``upstream_*`` and an ``x-router-attempts``
  header, which only requests that reached a backend carry); a 503 OpenAI-shaped;
- as an error (4xx/5xx), be OpenAI-shaped JSON ``{"error": {"message": str, "type": str, ...}}``;
- pass schemathesis's checks: documented status code, content type, headers and
  body schema, and invalid data rejected (4xx).

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
MODELS = ["llama3.1:8b", "qwen2.5-coder:7b", "nomic-embed", "llama2-13b-vllm", "llama-cpp-default", "native",
          "general_chat", "qwen-coder", "meta-llama/Llama-2-7b-chat-hf", "mistral:7b"]


def fuzz_spec(spec: dict[str, Any], positive: bool) -> dict[str, Any]:
    """The served document with ``model`` narrowed to names that route (an arbitrary
    string is a 404 before any backend sees the request; negative cases still send those)."""
    spec = copy.deepcopy(spec)
    spec["components"]["schemas"]["ModelName"] = {"type": "string", "enum": MODELS}
    if positive:
        # The OpenAI-compatible simulators compute every dimension asked for, inside the
        # proxy's own event loop (a real server refuses more than its model has). Negative
        # cases keep the real bound: a value past it must still be rejected.
        spec["components"]["schemas"]["EmbeddingRequest"]["properties"]["dimensions"]["maximum"] = 64
    names = {"type": "string", "enum": MODELS}
    for path, name in (("/v1/models/{model}", "model"), ("/models/{model}", "model"), ("/router/explain", "model")):
        for param in spec["paths"][path]["get"]["parameters"]:
            if param["name"] == name:
                param["schema"] = names
    return spec


# Explicit cases tried first on each POST operation (positive mode): every kind of
# backend, streaming and not, so the event-stream schema is checked on every run.
BACKEND_MODELS = ["llama3.1:8b", "llama2-13b-vllm", "llama-cpp-default", "native"]
HI = [{"role": "user", "content": "Hi"}]
EXPLICIT: dict[str, list[dict[str, Any]]] = {
    "chat": [{"model": m, "messages": HI, "stream": stream, **({"stream_options": {"include_usage": True}} if stream else {})}
             for m in BACKEND_MODELS for stream in (False, True)],
    "completions": [{"model": m, "prompt": "Once", "max_tokens": 3, "stream": stream}
                    for m in BACKEND_MODELS for stream in (False, True)],
    "embeddings": [{"model": m, "input": ["one", "two"]} for m in ("nomic-embed", "llama2-13b-vllm")],
}


def explicit_cases(operation: schemathesis.APIOperation) -> list[dict[str, Any]]:
    if operation.method.upper() != "POST":
        return []
    path = operation.path
    name = "chat" if path.endswith("/chat/completions") else path.rsplit("/", 1)[-1]
    return EXPLICIT.get(name, [])


def examples_for(path: str, inputs: bool) -> int:
    """``EXAMPLES`` where there is something to vary; a few for the unprefixed twins of
    the /v1 paths (the same handlers; tests/unit/test_openapi.py checks the spec
    describes them alike) and for operations without inputs (only headers vary)."""
    if not inputs or (not path.startswith("/v1/") and path.split("/")[1] in ("chat", "completions", "embeddings", "models")):
        return max(3, EXAMPLES // 5)
    return EXAMPLES


def header(response: schemathesis.Response, name: str) -> str | None:
    values = response.headers.get(name.lower())  # lowercase names, lists of values
    return values[0] if values else None


def error_problems(response: schemathesis.Response) -> list[str]:
    """What is wrong with this response by our own rules (empty: nothing)."""
    status = response.status_code
    if status < 400:
        return []
    ctype = header(response, "Content-Type") or ""
    if not ctype.startswith("application/json"):
        return [f"HTTP {status} with Content-Type {ctype!r}, not an OpenAI-shaped JSON error: {response.text[:200]!r}"]
    try:
        err = orjson.loads(response.content).get("error")
    except (orjson.JSONDecodeError, AttributeError):
        return [f"HTTP {status}: the body is not a JSON object: {response.text[:200]!r}"]
    if not isinstance(err, dict) or not isinstance(err.get("message"), str) or not isinstance(err.get("type"), str):
        return [f"HTTP {status}: not OpenAI-shaped: {response.text[:200]!r}"]
    if status == 500 or status > 504:
        return [f"HTTP {status} from the proxy itself: {err}"]
    if status in UPSTREAM_CODES:
        if err.get("code") not in UPSTREAM_CODES[status] or header(response, "x-router-attempts") is None:
            return [f"HTTP {status} without a backend behind it: {err}"]
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
            for problem in error_problems(response):
                self.report(label, f"shape {response.status_code}", f"{problem}\n    {curl}")
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
    """The spec's security, checked: open paths answer without a key, every other one is an OpenAI-shaped 401."""
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
                        err = orjson.loads(body)["error"]
                        assert err["code"] == "invalid_api_key" and isinstance(err["message"], str)


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
