"""Fixtures of the conformance tier: both event loops, a raw server per test."""

from __future__ import annotations

import asyncio
from typing import AsyncIterator

import pytest
import uvloop

from tests.conformance.kit import RawServer


@pytest.fixture(params=["asyncio", "uvloop"])
def event_loop_policy(request: pytest.FixtureRequest) -> asyncio.AbstractEventLoopPolicy:
    """The proxy runs on uvloop in production and on asyncio's loop elsewhere; their
    transports differ in read sizes and in how a close arrives."""
    return uvloop.EventLoopPolicy() if request.param == "uvloop" else asyncio.DefaultEventLoopPolicy()


@pytest.fixture
async def raw() -> AsyncIterator[RawServer]:
    server = RawServer()
    await server.start()
    yield server
    await server.stop()
