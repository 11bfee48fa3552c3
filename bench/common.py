"""Helpers shared by the benchmarks: a free port, waiting for a server, percentiles.

Cheap to import (aiohttp is imported only by wait_up), so that short-lived
processes such as bench/loadgen.py start fast.
"""

from __future__ import annotations

import asyncio
import socket
import time


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def wait_up(url: str, deadline: float = 30) -> None:
    import aiohttp

    end = time.monotonic() + deadline
    async with aiohttp.ClientSession() as s:
        while time.monotonic() < end:
            try:
                async with s.get(url) as r:
                    if r.status < 500:
                        return
            except aiohttp.ClientConnectionError:
                await asyncio.sleep(0.1)
    raise SystemExit(f"{url} did not come up")


def pct(values: list[float], p: float) -> float:
    """The p-th percentile of values (seconds), in milliseconds; NaN when empty."""
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(round(p / 100 * (len(values) - 1))))] * 1000
