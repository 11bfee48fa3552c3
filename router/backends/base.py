"""The shape of a backend kind, and the small HTTP helpers its probes share."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson

LoadProbe = Callable[[aiohttp.ClientSession, str, dict[str, str], float, Any], Awaitable[None]]
"""``probe(session, base, headers, timeout, state)``: after a listing answered, learn
what the server says of its load or loaded models and write it into ``state`` (a
``router.state.ServerState``). It may
raise ``aiohttp.ClientError``, ``TimeoutError``, ``orjson.JSONDecodeError`` or
``AttributeError``: the monitor then leaves load and warmth unknown."""


# The front doors' dialects a server may serve itself (router.doors): ``native_apis``
# of a kind, or of one deployment (``model_info.native_apis``).
NATIVE_API_NAMES = ("messages", "count_tokens", "responses", "rerank", "ollama")


@dataclass(frozen=True, slots=True)
class Cloud:
    """Where a hosted API lives unless the config says (``router.backends.hosted``)."""

    base: str  # the default api_base ("" where there is none, as for Azure: it must be given)
    key_env: tuple[str, ...]  # variables LiteLLM reads the key from, in its order
    base_env: tuple[str, ...] = ()  # variables LiteLLM reads the api_base from
    model_prefix: str = ""  # put before the model name unless it already starts with it (Fireworks)
    version_env: str = ""  # Azure: the variable of the api-version
    default_version: str = ""  # Azure: LiteLLM's default api-version


@dataclass(frozen=True, slots=True)
class BackendKind:
    """One kind of backend server."""

    name: str  # as in model_info.provider and the policy file's provider type
    wire: str  # the wire format it speaks: "openai" or "ollama" (router.providers)
    prefixes: tuple[str, ...] = ()  # LiteLLM model prefixes that mean this kind ("hosted_vllm/…")
    listing: str = "/models"  # its model listing, under api_base
    liveness_only: bool = False  # probe only that it answers (GET /health), never its listing
    any_name: bool = False  # serves its one model under whatever name a request gives
    serial: int | None = None  # the max_parallel_requests it gets unless configured
    always_warm: bool = False  # holds its model loaded while it runs
    load_probe: LoadProbe | None = None  # what it says of its load or loaded models (see LoadProbe)
    warm_up_path: str | None = None  # POST {"model": …} here loads a model without generating anything
    native_apis: tuple[str, ...] = ()  # the front doors' dialects it serves itself (router.doors): passed through, not translated
    hosted: bool = False  # a cloud API (router.backends.hosted): never probed, billed per token, no local cost default
    cloud: Cloud | None = None  # its default api_base and the environment variables of its key (router.backends.hosted)

    def names(self, model: str) -> tuple[str, str]:
        """The names a listing may show ``model`` under: Ollama lists an untagged pull as
        ``name:latest``, on its own API and on its OpenAI-compatible one alike (so every
        kind accepts both: an ``openai/`` deployment may well be an Ollama)."""
        return model, f"{model}:latest"


ANTHROPIC_VERSION = "2023-06-01"  # the anthropic-version LiteLLM sends


def auth_headers(wire: str, api_key: str | None, organization: str | None = None) -> dict[str, str]:
    """The headers that carry a deployment's key, in its wire format's way: a Bearer
    token (OpenAI-compatible servers, Ollama), ``api-key`` (Azure OpenAI), ``x-api-key``
    with ``anthropic-version`` (Anthropic, which wants the version even without a key)."""
    headers: dict[str, str] = {"anthropic-version": ANTHROPIC_VERSION} if wire == "anthropic" else {}
    if api_key:
        if wire == "anthropic":
            headers["x-api-key"] = api_key
        elif wire == "azure":
            headers["api-key"] = api_key
        else:
            headers["Authorization"] = f"Bearer {api_key}"
    if organization and wire == "openai":
        headers["OpenAI-Organization"] = organization
    return headers


def root(api_base: str) -> str:
    """The server's root: ``api_base`` without its ``/v1``."""
    return api_base[: -len("/v1")] if api_base.endswith("/v1") else api_base


async def get_json(session: aiohttp.ClientSession, url: str, timeout: float, headers: dict[str, str]) -> Any:
    async with session.get(url, headers=headers, timeout=aiohttp.ClientTimeout(total=timeout)) as resp:
        if resp.status != 200:
            raise aiohttp.ClientResponseError(resp.request_info, (), status=resp.status)
        return orjson.loads(await resp.read())
