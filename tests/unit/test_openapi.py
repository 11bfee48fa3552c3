"""The OpenAPI document: valid OpenAPI 3.1, in step with the routes create_app
registers (both ways), shipped in the package, and served as JSON without a key."""

from __future__ import annotations

import re
from pathlib import Path

import orjson
import pytest
import yaml
from openapi_spec_validator import validate

from router import __version__, openapi
from router.access import OPEN_PATHS
from router.app import create_app
from router.config import load_config
from router.routing.resolve import MAX_MODEL_NAME
from router.validate import MAX_DIMENSIONS, MAX_ITEMS, MAX_MESSAGES, MAX_N, MAX_STOP, MAX_TOP_LOGPROBS

ROOT = Path(__file__).resolve().parents[2]
METHODS = {"get", "put", "post", "delete", "options", "head", "patch", "trace"}


@pytest.fixture(scope="module")
def app():
    return create_app(load_config(str(ROOT / "config" / "litellm-unified.yaml")))


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


def test_unprefixed_openai_paths_are_the_v1_ones():
    paths = openapi.spec()["paths"]
    for path in ("/chat/completions", "/completions", "/embeddings", "/models", "/models/{model}"):
        for method, op in paths[path].items():
            v1 = dict(paths["/v1" + path][method])
            assert {**op, "operationId": None} == {**v1, "operationId": None}


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
