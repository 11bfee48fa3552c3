"""The ``sim`` fixture shared by the simulator tests: backends and official clients
for one test, all closed afterwards."""

from __future__ import annotations

from collections.abc import AsyncIterator

import ollama
import openai
import pytest
import pytest_asyncio

from router.simulate import SimulatedBackend


class Sim:
    def __init__(self, default_models: list[str]) -> None:
        self.default_models = default_models
        self.backends: list[SimulatedBackend] = []
        self.clients: list = []

    async def backend(self, kind: str, models: list[str] | None = None, **kw) -> SimulatedBackend:
        b = SimulatedBackend(kind=kind, models=models or self.default_models, **kw)
        await b.start()
        self.backends.append(b)
        return b

    def openai(self, b: SimulatedBackend, **kw) -> openai.AsyncOpenAI:
        client = openai.AsyncOpenAI(base_url=b.base_url + "/v1", api_key="x", max_retries=0, **kw)
        self.clients.append(client)
        return client

    def ollama(self, b: SimulatedBackend, **kw) -> ollama.AsyncClient:
        client = ollama.AsyncClient(host=b.base_url, **kw)
        self.clients.append(client)
        return client

    async def close(self) -> None:
        for client in self.clients:
            await client.close()
        for b in self.backends:
            await b.stop()


@pytest_asyncio.fixture
async def sim(request: pytest.FixtureRequest) -> AsyncIterator[Sim]:
    """Backends default to the test module's ``DEFAULT_MODELS`` (else one model)."""
    s = Sim(list(getattr(request.module, "DEFAULT_MODELS", ["llama3.1:8b"])))
    yield s
    await s.close()
