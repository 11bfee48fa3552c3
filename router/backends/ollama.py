"""Ollama: its own API (``/api/*``); ``/api/ps`` says which models are loaded, and a
generate request without a prompt loads one."""

from __future__ import annotations

from typing import TYPE_CHECKING

import aiohttp

from router.backends.base import BackendKind, get_json

if TYPE_CHECKING:
    from router.state import ServerState


async def loaded_models(session: aiohttp.ClientSession, base: str, headers: dict[str, str], timeout: float,
                        state: ServerState) -> None:
    ps = await get_json(session, base + "/api/ps", timeout, headers)
    loaded = [m for m in (ps.get("models") or []) if isinstance(m, dict)]
    state.loaded = frozenset(str(m.get("name") or m.get("model")) for m in loaded)
    for m in loaded:
        if isinstance(m.get("context_length"), int):
            state.contexts.setdefault(str(m.get("name")), m["context_length"])


KIND = BackendKind("ollama", "ollama", prefixes=("ollama", "ollama_chat"), listing="/api/tags",
                   load_probe=loaded_models, warm_up_path="/api/generate",
                   native_apis=("ollama", "messages", "responses"))  # /v1/messages since v0.14, /v1/responses since v0.13.3
