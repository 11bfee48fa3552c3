"""The OpenAPI document: valid OpenAPI 3.1, in step with the routes create_app
registers (both ways), shipped in the package, and served as JSON without a key.

For the front doors it is held to the code, not only to itself: every error a path
documents is the body the app writes there (in the door's dialect), every stream
media type is the door's, the limits are the doors', and the request schemas agree
with the doors' ``parse`` both ways: bodies generated from a schema (schemathesis,
offline) are accepted, and bodies that break it are refused. tests/e2e/test_fuzz_api.py
then fuzzes the same document against a live stack."""

from __future__ import annotations

import copy
import json
import os
import re
from pathlib import Path
from typing import Any

import jsonschema
import orjson
import pytest
import schemathesis
import yaml
from hypothesis import HealthCheck, Phase, assume, given, settings
from openapi_spec_validator import validate
from schemathesis import GenerationMode
from schemathesis.core.parameters import ParameterLocation

from router import __version__, doors, openapi
from router.access import OPEN_PATHS
from router.app import _error, create_app
from router.config import Limits, load_config
from router.doors import DOORS
from router.doors import ollama as ollama_door
from router.errors import BadRequest, RouterError
from router.routing.resolve import MAX_MODEL_NAME
from router.validate import MAX_DIMENSIONS, MAX_ITEMS, MAX_MESSAGES, MAX_N, MAX_STOP, MAX_TOP_LOGPROBS

ROOT = Path(__file__).resolve().parents[2]
METHODS = {"get", "put", "post", "delete", "options", "head", "patch", "trace"}
LIMITS = Limits()  # the defaults the document states
# Paths that repeat another's operation: the same handler, described alike.
TWIN_OF = {"/chat/completions": "/v1/chat/completions", "/completions": "/v1/completions",
           "/embeddings": "/v1/embeddings", "/models": "/v1/models", "/models/{model}": "/v1/models/{model}",
           "/anthropic/v1/messages": "/v1/messages", "/anthropic/v1/messages/count_tokens": "/v1/messages/count_tokens",
           "/responses": "/v1/responses", "/rerank": "/v1/rerank"}
# The schema of an error body in each dialect, by the door whose dialect a path's errors are in.
ERROR_SCHEMA = {None: "Error", "messages": "AnthropicError", "ollama_chat": "OllamaError"}
# Random exploration locally; the same examples every time under CI. Few examples: the
# Anthropic schemas take schemathesis about 0.1 s a body.
FUZZ = settings(max_examples=20, deadline=None, derandomize=bool(os.environ.get("CI")), database=None,
                phases=[Phase.explicit, Phase.generate],
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much])
NAMES = ["m", "llama3.1:8b"]  # what the generated bodies name as model (printable names: the schema cannot say so)


@pytest.fixture(scope="module")
def app():
    return create_app(load_config(str(ROOT / "config" / "litellm-unified.yaml")))


def door_paths(app) -> dict[str, str]:
    """Each front door's path (not its twins) and the door's name, from the handlers."""
    found = {}
    for route in app.router.routes():
        name = getattr(route.handler, "__name__", "").removeprefix("handle_")
        path = route.resource.get_info().get("path") if route.resource is not None else None
        if name in DOORS and path not in TWIN_OF:
            found[path] = name
    return found


def app_routes(app) -> set[tuple[str, str]]:
    """(METHOD, path) of every route, aiohttp's ``{name:regex}`` written ``{name}``;
    the HEAD aiohttp adds beside every GET is left out."""
    routes = set()
    for route in app.router.routes():
        info = route.resource.get_info() if route.resource is not None else {}
        path = info.get("path") or info.get("formatter")
        if route.method in ("HEAD", "*"):
            continue
        routes.add((route.method, re.sub(r"\{(\w+):[^}]*\}", r"{\1}", path)))
    return routes


def spec_routes(spec) -> set[tuple[str, str]]:
    return {(method.upper(), path) for path, item in spec["paths"].items() for method in item if method in METHODS}


def test_the_spec_is_valid_openapi_3_1():
    spec = openapi.spec()
    assert spec["openapi"].startswith("3.1")
    validate(spec)


def test_every_route_is_in_the_spec_and_every_spec_path_is_a_route(app):
    ours, documented = app_routes(app), spec_routes(openapi.spec())
    assert ours, "no routes found: the route introspection broke"
    assert ours - documented == set(), "routes missing from router/openapi.yaml"
    assert documented - ours == set(), "router/openapi.yaml documents routes the app does not have"


def test_open_paths_are_exactly_the_ones_the_spec_marks_open():
    spec = openapi.spec()
    no_key = {path for path, item in spec["paths"].items() for op in item.values() if op.get("security") == []}
    optional = {path for path, item in spec["paths"].items() for op in item.values() if {} in op.get("security", [None])}
    assert no_key == set(OPEN_PATHS)
    assert optional == {"/metrics"}  # open unless metrics_require_auth


def test_operation_ids_are_unique():
    ids = [op["operationId"] for item in openapi.spec()["paths"].values() for op in item.values()]
    assert len(ids) == len(set(ids))


def test_twin_paths_are_described_as_the_ones_they_repeat(app):
    paths = openapi.spec()["paths"]
    handlers = {(r.method, r.resource.get_info().get("path") or r.resource.get_info().get("formatter")): r.handler.__name__
                for r in app.router.routes() if r.resource is not None}
    for path, twin in TWIN_OF.items():
        for method, op in paths[path].items():
            assert {**op, "operationId": None} == {**paths[twin][method], "operationId": None}, path
            if "{" not in path:
                assert handlers[(method.upper(), path)] == handlers[(method.upper(), twin)], path


def test_limits_in_the_spec_match_the_validator():
    schemas = openapi.spec()["components"]["schemas"]
    chat = schemas["ChatCompletionRequest"]["properties"]
    assert chat["messages"]["maxItems"] == MAX_MESSAGES
    assert chat["n"]["maximum"] == MAX_N
    assert chat["top_logprobs"]["maximum"] == MAX_TOP_LOGPROBS
    assert schemas["Stop"]["maxItems"] == MAX_STOP
    assert schemas["ModelName"]["maxLength"] == MAX_MODEL_NAME
    assert schemas["EmbeddingRequest"]["properties"]["dimensions"]["maximum"] == MAX_DIMENSIONS
    batches = [b for b in schemas["Prompts"]["anyOf"] if "maxItems" in b]
    assert batches and all(b["maxItems"] == MAX_ITEMS for b in batches)
    assert (MAX_MESSAGES, MAX_ITEMS) == (LIMITS.max_messages, LIMITS.max_input_items)


def _array(schema: dict[str, Any]) -> dict[str, Any]:
    """The array branch of a schema that is an array or something else."""
    (branch,) = [b for b in schema.get("anyOf", [schema]) if b.get("type") in ("array", ["array", "null"])]
    return branch


def test_front_door_limits_in_the_spec_match_the_doors():
    """The doors' caps are the configured limits' defaults, their ranges the doors' own."""
    s = openapi.spec()["components"]["schemas"]
    assert s["AnthropicMessagesRequest"]["properties"]["messages"]["maxItems"] == LIMITS.max_messages
    assert s["AnthropicCountTokensRequest"]["properties"]["messages"]["maxItems"] == LIMITS.max_messages
    assert _array(s["ResponsesRequest"]["properties"]["input"])["maxItems"] == LIMITS.max_messages
    assert s["OllamaChatRequest"]["properties"]["messages"]["maxItems"] == LIMITS.max_messages
    assert _array(s["OllamaEmbedRequest"]["properties"]["input"])["maxItems"] == LIMITS.max_input_items
    assert s["RerankRequest"]["properties"]["documents"]["maxItems"] == LIMITS.max_input_items
    for name in ("OllamaChatRequest", "OllamaGenerateRequest"):
        assert s[name]["properties"]["top_logprobs"]["maximum"] == ollama_door.MAX_TOP_LOGPROBS
    assert s["OllamaEmbedRequest"]["properties"]["dimensions"]["maximum"] == MAX_DIMENSIONS
    options = s["OllamaOptions"]["properties"]
    numbers = ollama_door._INT_OPTIONS | ollama_door._FLOAT_OPTIONS
    assert set(options) == numbers | ollama_door._BOOL_OPTIONS | {"stop"}  # every option the door checks
    assert all((options[o]["exclusiveMinimum"], options[o]["exclusiveMaximum"]) == (-2**63, 2**63) for o in numbers)
    requests = ["AnthropicMessagesRequest", "AnthropicCountTokensRequest", "ResponsesRequest", "RerankRequest",
                "OllamaChatRequest", "OllamaGenerateRequest", "OllamaEmbedRequest", "OllamaEmbeddingsRequest"]
    assert all(s[r]["properties"]["model"] == {"$ref": "#/components/schemas/ModelName"} for r in requests)


def test_explain_takes_every_endpoint_and_door():
    (param,) = [p for p in openapi.spec()["paths"]["/router/explain"]["get"]["parameters"] if p["name"] == "endpoint"]
    enum = param["schema"]["enum"]
    assert enum[:3] == ["chat", "completions", "embeddings"] and sorted(enum[3:]) == sorted(DOORS)
    assert param["schema"]["default"] == "chat"


def _resolved(spec: dict[str, Any], item: dict[str, Any]) -> dict[str, Any]:
    ref = item.get("$ref")
    return item if ref is None else _resolved(spec, spec["components"]["responses"][ref.rsplit("/", 1)[-1]])


STATUSES = [400, 401, 403, 404, 408, 413, 415, 429, 500, 502, 503, 504]


@pytest.mark.parametrize("status", STATUSES)
def test_every_error_a_path_documents_is_what_the_app_writes_there(app, status):
    """In the path's dialect, from the error middleware (401s, 404s, 413s before any handler)
    and from a door's own handler alike; the documented schema is that dialect's."""
    spec = openapi.spec()
    handlers = door_paths(app)
    exc = RouterError("what went wrong", status=status, param="model", code="some_code")
    for path, item in spec["paths"].items():
        for method, op in item.items():
            documented = op["responses"].get(str(status))
            if documented is None:
                continue
            schema = _resolved(spec, documented)["content"]["application/json"]["schema"]
            dialect = doors.for_path(path)
            assert schema == {"$ref": f"#/components/schemas/{ERROR_SCHEMA[dialect and dialect.name]}"}, (method, path)
            validator = jsonschema.Draft202012Validator({**schema, "components": spec["components"]})
            validator.validate(orjson.loads(_error(exc, "rid", path).body))
            door = DOORS.get(handlers.get(TWIN_OF.get(path, path), ""))
            if door is not None:
                validator.validate(orjson.loads(door.error_body(exc)))


def test_each_door_that_streams_documents_its_stream_media_type(app):
    spec = openapi.spec()
    for path, name in door_paths(app).items():
        content = spec["paths"][path]["post"]["responses"]["200"]["content"]
        asks = {"model": "m", "stream": True, "messages": [{"role": "user", "content": "Hi"}], "prompt": "Hi"}
        streams = DOORS[name].stream(asks)
        assert set(content) == {"application/json", *([DOORS[name].stream_type.split(";")[0]] if streams else [])}, path


# -- the request schemas against the doors' parse --------------------------------------------------


@pytest.fixture(scope="module")
def offline_schema():
    """The document for generating bodies only: no keys to vary, model names printable."""
    spec = copy.deepcopy(openapi.spec())
    spec["components"]["schemas"]["ModelName"] = {"type": "string", "enum": NAMES}
    del spec["security"]
    return schemathesis.openapi.from_dict(spec)


def _sent(body: Any, *, valid: bool) -> bytes:
    """The bytes an HTTP client sends for ``body``: JSON as ``requests`` writes it (the e2e
    fuzz sends them so), with schemathesis's habits undone. It writes integers such as 2
    as 2.0 (JSON Schema counts those as integers; the doors, as Go and the OpenAI
    validator, take integers written as such), and lone surrogates, which no UTF-8 body
    can hold (they are sent as "?", one for one). In a ``valid`` body it writes integers
    past 64 bits, which the JSON decoder reads as floats: they are sent as the nearest
    64-bit one (in a body meant to be refused they may be why it is)."""
    if isinstance(body, bytes):
        return body
    return json.dumps(_sendable(body, valid), ensure_ascii=False, allow_nan=False).encode()


def _sendable(value: Any, valid: bool) -> Any:
    if isinstance(value, float) and value.is_integer() or isinstance(value, int) and not isinstance(value, bool):
        return min(max(int(value), -2**63), 2**63 - 1) if valid else int(value)
    if isinstance(value, str):
        return value.encode("utf-8", "replace").decode("utf-8")
    if isinstance(value, list):
        return [_sendable(v, valid) for v in value]
    if isinstance(value, dict):
        return {_sendable(k, valid): _sendable(v, valid) for k, v in value.items()}
    return value


@pytest.fixture(scope="module")
def paths(app) -> dict[str, str]:
    return door_paths(app)


DOOR_PATHS = ["/v1/messages", "/v1/messages/count_tokens", "/v1/responses", "/v1/rerank",
              "/api/chat", "/api/generate", "/api/embed", "/api/embeddings"]


def test_the_parse_tests_cover_every_door(app):
    assert sorted(door_paths(app)) == sorted(DOOR_PATHS)


@pytest.mark.parametrize("path", DOOR_PATHS)
def test_every_body_the_spec_allows_the_door_accepts(offline_schema, paths, path):
    door = DOORS[paths[path]]

    @FUZZ
    @given(case=offline_schema[path]["POST"].as_strategy(GenerationMode.POSITIVE))
    def accepted(case: schemathesis.Case) -> None:
        door.parse(_sent(case.body, valid=True), LIMITS)  # a BadRequest fails the test with the body

    accepted()


@pytest.mark.parametrize("path", DOOR_PATHS)
def test_every_body_the_spec_refuses_the_door_refuses(offline_schema, paths, path):
    door = DOORS[paths[path]]

    @FUZZ
    @given(case=offline_schema[path]["POST"].as_strategy(GenerationMode.NEGATIVE))
    def refused(case: schemathesis.Case) -> None:
        assume(case.meta.is_negative_at(ParameterLocation.BODY))  # not a header or the media type
        assume(not isinstance(case.body, dict) or case.body.get("model") in NAMES)  # another name: a 404 at routing
        raw = _sent(case.body, valid=False)
        with pytest.raises(BadRequest):
            door.parse(raw, LIMITS)

    refused()


def test_docs_copy_is_the_packaged_one():
    docs = ROOT / "docs" / "openapi.yaml"
    assert docs.read_bytes() == openapi.SPEC_FILE.read_bytes()
    assert openapi.SPEC_FILE.parent == Path(openapi.__file__).parent  # inside the package: shipped as package data
    assert yaml.safe_load(docs.read_text()) is not None


async def test_served_as_json_without_a_key(aiohttp_client, tmp_path):
    (tmp_path / "c.yaml").write_text(
        "model_list:\n  - model_name: m\n    litellm_params: {model: openai/m, api_base: 'http://127.0.0.1:9/v1'}\n"
        "general_settings: {master_key: sk-test-master}\n")
    client = await aiohttp_client(create_app(load_config(str(tmp_path / "c.yaml"))))
    r = await client.get("/openapi.json")
    assert r.status == 200 and r.content_type == "application/json"
    served = orjson.loads(await r.read())
    assert served["info"]["version"] == __version__
    assert served == openapi.spec()
    r = await client.get("/v1/models")
    assert r.status == 401  # the rest still needs the key


def test_every_operation_documents_the_refusals_every_request_can_get():
    """On a keyless router every path can answer 403 (a foreign Host or Origin), and every
    POST 415 (a compressed body; a form body from a page): the spec said neither."""
    spec = yaml.safe_load(openapi.SPEC_FILE.read_text())
    for path, ops in spec["paths"].items():
        for method, op in ops.items():
            if isinstance(op, dict) and "responses" in op:
                assert "403" in op["responses"], (method, path)
                if method == "post":
                    assert "415" in op["responses"], (method, path)
