"""The nouns of the router: providers, deployments and routing decisions.

Everything here is immutable; configuration loading builds these once and the
request path only reads them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Mapping

from router.backends import KINDS, PREFIX_KINDS, WIRE_FORMATS, BackendKind
from router.backends.base import auth_headers
from router.checks import shown

__all__ = ["PREFIX_KINDS", "WIRE_FORMATS", "Deployment", "Disabled", "Provider", "RequestFacts", "RouteDecision"]

@dataclass(frozen=True, slots=True)
class Provider:
    """A backend server (one api_base) of one kind, as named in model-mappings.yaml."""

    name: str
    kind: str
    api_base: str
    description: str = ""
    hosted: bool = False  # a cloud API (router.backends.hosted): its deployments are not probed

    @property
    def wire(self) -> str:
        return WIRE_FORMATS[self.kind]


@dataclass(frozen=True, slots=True)
class Deployment:
    """One model served by one backend: a `model_list` entry, or a provider catch-all.

    ``model_name`` is the group clients ask for; ``upstream_model`` the name sent to
    the backend (LiteLLM's provider prefix stripped). A catch-all deployment
    (``is_dynamic``) serves whatever name the route hands it, e.g. a pattern match.
    """

    id: str
    model_name: str
    provider: str
    kind: str
    upstream_model: str
    api_base: str
    api_key: str | None = field(default=None, repr=False)
    rpm: int | None = None
    tpm: int | None = None
    weight: float | None = None
    order: int | None = None
    timeout: float | None = None
    stream_timeout: float | None = None
    max_tokens: int | None = None
    max_parallel_requests: int | None = None
    model_info: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    is_dynamic: bool = False
    wildcard: str | None = None  # model_list wildcard, e.g. "ollama/*"
    hosted: bool = False  # a cloud API (router.backends.hosted, or openai/ without api_base): never probed
    api_version: str | None = None  # Azure OpenAI's api-version
    headers: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}), repr=False)  # sent upstream: its key (secret), extra_headers

    def __post_init__(self) -> None:
        if self.api_key and not self.headers:  # built in code (tests, catch-alls): the key goes in its wire's way
            object.__setattr__(self, "headers", MappingProxyType(auth_headers(WIRE_FORMATS[self.kind], self.api_key)))

    @property
    def wire(self) -> str:
        return WIRE_FORMATS[self.kind]

    @property
    def secrets(self) -> tuple[bytes, ...]:
        """What of this deployment's own must never be shown: its key, the values of the
        headers it sends (``extra_headers`` may carry tokens), without their scheme words."""
        values = {self.api_key or ""} | {v.removeprefix("Bearer ") for k, v in self.headers.items()
                                         if k.lower() != "anthropic-version"}
        return tuple(v.encode() for v in sorted(values, key=len, reverse=True) if len(v) >= 6)

    @property
    def backend(self) -> BackendKind:
        """What this kind of server does and how it is probed (``router.backends``)."""
        return KINDS[self.kind]


@dataclass(frozen=True, slots=True)
class Disabled:
    """A ``model_list`` entry the router cannot serve (a LiteLLM provider it does not
    speak): loaded with a warning, never chosen, shown with its reason."""

    model_name: str
    model: str  # litellm_params.model, as written
    reason: str
    where: str  # file:line


@dataclass(frozen=True, slots=True)
class RequestFacts:
    """What routing may look at in a request: never the messages themselves.

    ``headers`` holds only the (lower-cased) headers the policy's rules test.
    """

    model: str | None
    endpoint: str = "chat"
    stream: bool = False
    batch_size: int = 1
    capability: str | None = None
    headers: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    prompt: Any = None  # router.routing.prefix.Prompt: block keys of the prompt (only where cache-aware routing needs them)
    session: str | None = None  # the session the client named (only where session affinity needs it)
    caller: str | None = None  # the caller's key name (LiteLLM's deployment_affinity pins by key)


PROMPT_BLOCK_TOKENS = 64  # router.routing.prefix.BLOCK_CHARS / CHARS_PER_TOKEN, for explain


@dataclass(frozen=True, slots=True)
class RouteDecision:
    """What the routing engine decided for one request, and why.

    ``candidates`` are in the order they should be tried; ``upstream_model`` is set
    when the backend must be sent a name other than the deployment's own (pattern,
    size, wildcard and default routes); ``trace`` explains each step; ``scores``
    are the strategy's per-deployment scores; ``warm_up`` lists deployments the
    proxy should load in the background (warm-first routing skipped them as cold).
    """

    model: str
    route: str  # exact | id | alias | pattern | capability | size | wildcard | default, or metadata | warm
    candidates: tuple[Deployment, ...]
    upstream_model: str | None = None
    matched: str = ""
    trace: tuple[str, ...] = ()
    strategy: str = ""
    scores: tuple[tuple[str, float | None], ...] = ()
    warm_up: tuple[Deployment, ...] = ()
    resolved: str = ""  # the resolution step (exact, pattern, ...) even when metadata or warmth then decided
    last_resort: tuple[Deployment, ...] = ()  # every candidate was unavailable: try after the fallbacks
    prompt: Any = None  # the facts' Prompt, for the index to learn from the answer (cache-aware routing)
    predicted: Mapping[str, int] = field(default_factory=lambda: MappingProxyType({}))  # deployment id -> blocks the index predicted cached
    session: str | None = None  # the session pinned by this request's answer (session affinity)

    def upstream_name(self, deployment: Deployment) -> str:
        return self.upstream_model if deployment.is_dynamic and self.upstream_model else deployment.upstream_model

    def explain(self) -> dict[str, Any]:
        """The decision as JSON-ready data (``/router/explain``, ``llm-router explain``)."""
        return {
            "model": self.model,
            "route": self.route,
            "resolved": self.resolved or self.route,
            "matched": self.matched or None,
            "strategy": self.strategy or None,
            "candidates": [
                {"deployment": d.id, "provider": d.provider, "model": self.upstream_name(d) or None, "api_base": shown(d.api_base)}
                for d in self.candidates
            ],
            "scores": {dep_id: score for dep_id, score in self.scores},
            "warm_up": [d.id for d in self.warm_up],
            "last_resort": [d.id for d in self.last_resort],
            # cache-aware routing: tokens of the prompt's start the index believes each candidate holds
            **({"prompt_cache_tokens": {dep_id: round(blocks * PROMPT_BLOCK_TOKENS) for dep_id, blocks in self.predicted.items()}}
               if self.prompt is not None else {}),
            **({"session": True} if self.session is not None else {}),
            "trace": list(self.trace),
        }
