"""llama.cpp's own ``llama-server``: OpenAI-compatible, one model served under any
name; ``/slots`` says how many slots it has and how many are busy."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import aiohttp

from router.backends.base import BackendKind, get_json, root

if TYPE_CHECKING:
    from router.state import ServerState


async def busy_slots(session: aiohttp.ClientSession, base: str, headers: dict[str, str], timeout: float,
                     state: ServerState) -> None:
    data = await get_json(session, root(base) + "/slots", timeout, headers)
    slots = parse_slots(data)
    if slots:
        state.slots, state.running = slots
        state.waiting = 0
        state.kv_tokens = kv_capacity(data)


def kv_capacity(data: Any) -> int | None:
    """Tokens of KV cache: the slots' ``n_ctx`` (each slot's context) summed."""
    total = sum(s["n_ctx"] for s in data if isinstance(s, dict) and type(s.get("n_ctx")) is int and s["n_ctx"] > 0)
    return total or None


def parse_slots(data: Any) -> tuple[int, int] | None:
    """llama.cpp ``/slots``: (slots, busy). Newer servers say ``is_processing``, older ``state`` != 0."""
    if not isinstance(data, list):
        return None
    busy = sum(1 for s in data if isinstance(s, dict) and (s.get("is_processing") or s.get("state", 0) != 0))
    return len(data), busy


KIND = BackendKind("llama_cpp_native", "openai", any_name=True, always_warm=True, load_probe=busy_slots,
                   native_apis=("messages", "count_tokens", "responses", "rerank"))
