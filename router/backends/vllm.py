"""vLLM: OpenAI-compatible; its ``/metrics`` says how many requests run and wait."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Iterable

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from router.backends.base import BackendKind, root

if TYPE_CHECKING:
    from router.state import ServerState


async def queue_depth(session: aiohttp.ClientSession, base: str, headers: dict[str, str], timeout: float,
                      state: ServerState) -> None:
    async with session.get(root(base) + "/metrics", headers=headers, timeout=aiohttp.ClientTimeout(total=timeout)) as resp:
        text = (await resp.read()).decode("utf-8", "replace") if resp.status == 200 else ""
    running = parse_prometheus_sum(text, "vllm:num_requests_running")
    if running is not None:
        state.running = int(running)
        state.waiting = int(parse_prometheus_sum(text, "vllm:num_requests_waiting") or 0)
    state.kv_tokens = kv_capacity(text)


def kv_capacity(text: str) -> int | None:
    """Tokens of KV cache: ``num_gpu_blocks`` × ``block_size``, labels of vLLM's
    ``vllm:cache_config_info`` gauge (one per engine: summed); None where it is not there."""
    if "vllm:cache_config_info" not in text:
        return None
    total = 0
    for line in text.splitlines():
        if not line.startswith("vllm:cache_config_info{"):
            continue
        try:
            families = list(text_string_to_metric_families(line + "\n"))
        except ValueError:
            continue
        for family in families:
            for sample in family.samples:
                blocks, size = sample.labels.get("num_gpu_blocks", ""), sample.labels.get("block_size", "")
                if blocks.isdigit() and size.isdigit():
                    total += int(blocks) * int(size)
    return total or None


def parse_prometheus_sum(text: str, metric: str) -> float | None:
    """Sum of every sample of ``metric`` (any labels) in Prometheus text format.

    prometheus_client's parser: a sample's optional timestamp is not its value
    (``name{...} 3 1712345678000`` is 3), quoted label values may hold spaces, and
    NaN/Inf samples are skipped. A text the parser refuses as a whole is parsed
    again line by line, so one malformed line elsewhere does not hide the metric.
    """
    try:
        return _sum_samples(text_string_to_metric_families(text), metric)
    except ValueError:
        pass
    total, seen = 0.0, False
    for line in text.splitlines():
        if not (line.startswith(metric) and line[len(metric):len(metric) + 1] in ("{", " ")):
            continue
        try:
            value = _sum_samples(text_string_to_metric_families(line + "\n"), metric)
        except ValueError:
            continue
        if value is not None:
            total, seen = total + value, True
    return total if seen else None


def _sum_samples(families: Iterable[Any], metric: str) -> float | None:
    total, seen = 0.0, False
    for family in families:
        for sample in family.samples:
            if sample.name == metric and math.isfinite(sample.value):
                total += sample.value
                seen = True
    return total if seen else None


KIND = BackendKind("vllm", "openai", prefixes=("hosted_vllm",), always_warm=True, load_probe=queue_depth,
                   native_apis=("messages", "count_tokens", "responses", "rerank"))
