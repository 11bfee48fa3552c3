"""GET /metrics: the Prometheus exposition, parsed with prometheus_client's own parser."""

from __future__ import annotations

import aiohttp
import openai
from prometheus_client.parser import text_string_to_metric_families

HI = [{"role": "user", "content": "Hi"}]


async def scrape(url: str) -> dict[tuple[str, tuple], float]:
    async with aiohttp.ClientSession() as s:
        async with s.get(url + "/metrics") as r:
            assert r.status == 200 and r.headers["Content-Type"].startswith("text/plain")
            text = await r.text()
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def value(samples, name: str, **labels) -> float:
    return sum(v for (n, ls), v in samples.items() if n == name and all((k, lv) in ls for k, lv in labels.items()))


async def test_metrics_count_requests_routes_ttft_tokens_decisions_and_states(stack):
    client = openai.AsyncOpenAI(base_url=stack.url + "/v1", api_key="x", max_retries=0, timeout=60)
    try:
        await client.chat.completions.create(model="llama2-13b-vllm", messages=HI, max_tokens=3)
        async for _ in await client.chat.completions.create(model="llama2-13b-vllm", messages=HI, max_tokens=3, stream=True):
            pass
        await client.chat.completions.create(model="meta-llama/Llama-2-7b-chat-hf", messages=HI, max_tokens=3)
        try:
            await client.chat.completions.create(model="gpt-4o", messages=HI)
        except openai.NotFoundError:
            pass
    finally:
        await client.close()
    m = await scrape(stack.url)
    assert value(m, "llm_router_requests_total", model_group="llama2-13b-vllm", status="200") == 2
    assert value(m, "llm_router_requests_total", model_group="pattern:^meta-llama/.*", deployment="vllm/*") == 1
    assert value(m, "llm_router_route_matches_total", route="exact") == 2
    assert value(m, "llm_router_route_matches_total", route="pattern") == 1
    assert value(m, "llm_router_route_matches_total", route="none") == 1
    assert value(m, "llm_router_routing_decision_seconds_count") == 4
    assert value(m, "llm_router_ttft_seconds_count", deployment="llama2-13b-vllm") == 1
    assert value(m, "llm_router_tokens_total", deployment="llama2-13b-vllm", direction="in") > 0
    assert value(m, "llm_router_in_flight", deployment="llama2-13b-vllm") == 0
    assert value(m, "llm_router_deployment_state", deployment="llama2-13b-vllm", state="healthy") == 1
    # exact_match_rate as one PromQL division: sum(route_matches{route="exact"}) / sum(route_matches)
    total = value(m, "llm_router_route_matches_total")
    assert value(m, "llm_router_route_matches_total", route="exact") / total == 0.5


async def test_fallbacks_errors_and_load_balance_effectiveness(make_stack, backends):
    a, b = backends["vllm"].base_url, backends["llama_cpp_python"].base_url
    stack = await make_stack(
        extra_router="fallbacks: [{primary: [llama-cpp-default]}]",
        extra_models=(f'- {{model_name: primary, litellm_params: {{model: hosted_vllm/meta-llama/Llama-2-13b-chat-hf, api_base: "{a}/v1"}}, model_info: {{id: primary-1}}}}\n'
                      f'          - {{model_name: split, litellm_params: {{model: openai/llama-cpp-default, api_base: "{b}/v1", weight: 3, max_parallel_requests: 100}}, model_info: {{id: split-heavy}}}}\n'
                      f'          - {{model_name: split, litellm_params: {{model: openai/llama-cpp-default, api_base: "{b}/v1", weight: 1, max_parallel_requests: 100}}, model_info: {{id: split-light}}}}'))
    backends["vllm"].faults.paths = ("/v1/chat/completions",)
    backends["vllm"].faults.status = 500
    client = openai.AsyncOpenAI(base_url=stack.url + "/v1", api_key="x", max_retries=0, timeout=60)
    try:
        await client.chat.completions.create(model="primary", messages=HI, max_tokens=2)
        for _ in range(200):
            await client.chat.completions.create(model="split", messages=HI, max_tokens=1)
    finally:
        await client.close()
    m = await scrape(stack.url)
    assert value(m, "llm_router_fallbacks_total", from_provider="vllm", to_provider="llama_cpp_python") == 1
    assert value(m, "llm_router_upstream_errors_total", deployment="primary-1", error_class="UpstreamError") == 1
    effectiveness = value(m, "llm_router_load_balance_effectiveness", model_group="split")
    assert 0.85 < effectiveness <= 1.0  # a 3:1 weighted split observed close to 75/25


def test_every_dashboard_and_cheat_sheet_query_names_an_exported_metric():
    import json
    import re
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    exported = {"llm_router_requests_total", "llm_router_request_duration_seconds_bucket", "llm_router_ttft_seconds_bucket",
                "llm_router_routing_decision_seconds_bucket", "llm_router_route_matches_total", "llm_router_route_adjustments_total",
                "llm_router_fallbacks_total", "llm_router_in_flight", "llm_router_deployment_state", "llm_router_cache_total",
                "llm_router_upstream_errors_total", "llm_router_tokens_total", "llm_router_load_balance_effectiveness",
                "llm_router_model_group_healthy_deployments", "llm_router_redis_sharing_up", "llm_router_build_info",
                "llm_router_config_generation", "llm_router_door_requests_total", "llm_router_spend_total",
                "llm_router_spend_unknown_total", "llm_router_spillovers_total",
                "llm_router_prefix_evictions_total", "llm_router_cached_prompt_tokens_total",
                "llm_router_queue_waiting", "llm_router_queue_wait_seconds_bucket", "llm_router_queue_rejected_total"}
    dashboard = json.loads((root / "docs/grafana-dashboard.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]] + [(root / "docs/promql.md").read_text()]
    for expr in exprs:
        for name in re.findall(r"llm_router_[a-z_]+", expr):
            assert name in exported, name


async def test_the_proxys_own_overhead_is_a_header_and_a_histogram_without_the_upstream_wait(stack):
    stack.backends["vllm"].faults.first_byte_delay = 0.3  # the backend takes 300 ms: none of it is ours
    client = openai.AsyncOpenAI(base_url=stack.url + "/v1", api_key="x", max_retries=0, timeout=60)
    try:
        plain = await client.chat.completions.with_raw_response.create(model="llama2-13b-vllm", messages=HI, max_tokens=3)
        async with client.chat.completions.with_streaming_response.create(
                model="llama2-13b-vllm", messages=HI, max_tokens=3, stream=True) as streamed:
            async for _ in streamed.iter_lines():
                pass
    finally:
        await client.close()
        stack.backends["vllm"].faults.clear()
    for raw in (plain, streamed):
        overhead_ms = float(raw.headers["x-router-overhead-ms"])
        assert 0 < overhead_ms < 100, overhead_ms  # the 300 ms upstream wait is excluded
    samples = await scrape(stack.url)
    assert value(samples, "llm_router_overhead_seconds_count") == 2
    assert value(samples, "llm_router_overhead_seconds_sum") < 0.2


async def test_a_scrape_leaves_the_event_loop_turning(aiohttp_client, tmp_path, monkeypatch):
    """With thousands of deployments under --workers, building the text took seconds on
    the event loop: every request on that worker stalled and the supervisor killed it as
    hung (no heartbeat). The text is now built off the loop: a loop callback keeps
    running while a (deliberately slow) exposition is being built."""
    import asyncio
    import time as _time

    from router.app import PROXY, create_app
    from router.config import load_config

    cfg = tmp_path / "c.yaml"
    cfg.write_text("model_list:\n  - {model_name: a, litellm_params: {model: openai/x, api_base: 'http://127.0.0.1:9/v1'}}\n")
    app = create_app(load_config(str(cfg)))
    metrics = app[PROXY].metrics
    real = metrics.generate

    def slow() -> bytes:
        _time.sleep(0.5)  # blocks whichever thread runs it
        return real()

    monkeypatch.setattr(metrics, "generate", slow)
    client = await aiohttp_client(app)
    ticks = 0

    async def tick() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0.01)

    ticker = asyncio.create_task(tick())
    try:
        await asyncio.sleep(0.02)
        before = ticks
        r = await client.get("/metrics")
        assert r.status == 200 and "llm_router_build_info" in await r.text()
        assert ticks - before >= 10, ticks - before  # 0 or 1 when the loop itself sleeps 0.5 s
    finally:
        ticker.cancel()
