"""Per-request costs against simulated backends: the ``cost=`` of the ``[ROUTER]`` line,
``llm_router_spend_total{key, deployment}``, ``llm_router_spend_unknown_total``, the
``x-litellm-response-cost`` header and the status page's spend. A priced deployment
(``model_info.input_cost_per_token``/``output_cost_per_token``) costs what its answer's
usage says; a local one without prices costs 0; an answer without usage has an unknown
cost, never 0."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from router.app import PROXY
from router.config import load_config
from router.costs import usd
from router.simulate import SimulatedBackend
from tests.conftest import start_proxy

HI = [{"role": "user", "content": "Hi"}]
IN, OUT = 1.5e-06, 4e-06  # USD per token
# as plain decimals in YAML: PyYAML (YAML 1.1) reads 4e-06, without a dot, as a string
PRICES = f"input_cost_per_token: {IN:.12f}, output_cost_per_token: {OUT:.12f}"
MASTER, TEAM = "sk-master-cost-test-1", "sk-team-cost-secret-2"
COST = "x-litellm-response-cost"


@pytest.fixture
async def stack(make_stack, backends):
    vllm = backends["vllm"].base_url
    return await make_stack(
        extra_general=f"master_key: {MASTER}, api_keys: [{{name: team-a, key: {TEAM}}}]",
        extra_models=f'- {{model_name: priced, litellm_params: {{model: hosted_vllm/meta-llama/Llama-2-13b-chat-hf, '
                     f'api_base: "{vllm}/v1"}}, model_info: {{id: priced-1, {PRICES}}}}}')


@dataclass
class Answer:
    status: int
    headers: Any
    usage: dict[str, Any] | None  # the body's usage, or a stream's last usage

    @property
    def rid(self) -> str:
        return self.headers["x-request-id"]

    @property
    def cost(self) -> float:
        """What the usage the client got costs at the priced deployment's prices."""
        assert self.usage is not None
        return IN * self.usage["prompt_tokens"] + OUT * self.usage["completion_tokens"]


async def ask(url: str, path: str = "/v1/chat/completions", key: str = TEAM, **body: Any) -> Answer:
    body = {"messages": HI, "max_tokens": 5, **body}
    async with aiohttp.ClientSession() as s:
        async with s.post(url + path, json=body, headers={"Authorization": f"Bearer {key}"}) as r:
            raw = await r.read()
    if not body.get("stream"):
        return Answer(r.status, r.headers, json.loads(raw).get("usage"))
    events = [line[5:].strip() for line in raw.decode().splitlines() if line.startswith("data:")]
    assert events[-1] == "[DONE]"
    usages = [e["usage"] for e in map(json.loads, events[:-1]) if e.get("usage")]
    return Answer(r.status, r.headers, usages[-1] if usages else None)


async def router_line(log_lines, rid: str) -> str:
    """The request's [ROUTER] line (a stream's is written just after its last byte went out)."""
    for _ in range(100):
        found = [ln for ln in log_lines() if f"request_id={rid}" in ln and "Model:" in ln]
        if found:
            return found[0] + " "
        await asyncio.sleep(0.02)
    raise AssertionError(f"no [ROUTER] line for {rid}")


async def scrape(url: str) -> tuple[str, dict[tuple[str, tuple], float]]:
    async with aiohttp.ClientSession() as s:
        async with s.get(url + "/metrics") as r:
            text = await r.text()
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return text, samples


def value(samples, name: str, **labels) -> float | None:
    """The sum of the samples of ``name`` with these labels; None if there is none."""
    found = [v for (n, ls), v in samples.items() if n == name and all((k, lv) in ls for k, lv in labels.items())]
    return sum(found) if found else None


async def test_a_priced_answer_costs_its_usage_in_the_line_the_header_and_the_spend(stack):
    plain = await ask(stack.url, model="priced")
    streamed = await ask(stack.url, model="priced", max_tokens=7, stream=True, stream_options={"include_usage": True})
    assert plain.status == streamed.status == 200 and plain.usage["completion_tokens"] > 0
    assert float(plain.headers[COST]) == pytest.approx(plain.cost, rel=1e-11)  # LiteLLM's header: a number
    assert COST not in streamed.headers  # a stream's cost is known only after its headers went out
    assert f" cost={usd(plain.cost)} " in await router_line(stack.log_lines, plain.rid)
    assert f" cost={usd(streamed.cost)} " in await router_line(stack.log_lines, streamed.rid)
    _, m = await scrape(stack.url)
    assert value(m, "llm_router_spend_total", key="team-a", deployment="priced-1") == \
        pytest.approx(plain.cost + streamed.cost, rel=1e-12)
    assert value(m, "llm_router_spend_unknown_total", deployment="priced-1") is None


async def test_a_stream_without_usage_has_an_unknown_cost_counted_apart_never_as_zero(stack):
    known = await ask(stack.url, model="priced", key=MASTER)
    streamed = await ask(stack.url, model="priced", stream=True)  # no stream_options: the server sends no usage
    assert streamed.status == 200 and streamed.usage is None
    assert " cost=unknown(no_usage) " in await router_line(stack.log_lines, streamed.rid)
    _, m = await scrape(stack.url)
    assert value(m, "llm_router_spend_unknown_total", deployment="priced-1", reason="no_usage") == 1
    assert value(m, "llm_router_spend_total", key="master", deployment="priced-1") == pytest.approx(known.cost)
    assert value(m, "llm_router_spend_total", key="team-a", deployment="priced-1") is None  # nothing added, not 0


async def test_a_local_deployment_without_prices_costs_zero_with_or_without_usage(stack):
    plain = await ask(stack.url, model="llama2-13b-vllm")
    streamed = await ask(stack.url, model="llama2-13b-vllm", stream=True)  # no usage: still free
    ollama = await ask(stack.url, model="llama3.1:8b")  # translated from Ollama's own counts
    assert plain.headers[COST] == ollama.headers[COST] == "0.0"
    for answer in (plain, streamed, ollama):
        assert " cost=0 " in await router_line(stack.log_lines, answer.rid)
    _, m = await scrape(stack.url)
    assert value(m, "llm_router_spend_total", deployment="llama2-13b-vllm") is None  # nothing to add
    assert value(m, "llm_router_spend_unknown_total") is None  # and nothing unknown


async def test_an_anthropic_request_passed_through_costs_the_backends_input_and_output_tokens(stack):
    body = {"model": "priced", "max_tokens": 5, "messages": HI}
    answer = await ask(stack.url, "/v1/messages", **body)
    assert answer.status == 200 and answer.headers.get("x-router-deployment") == "priced-1"
    usage = answer.usage
    cost = IN * usage["input_tokens"] + OUT * usage["output_tokens"]
    assert usage["output_tokens"] > 0 and float(answer.headers[COST]) == pytest.approx(cost, rel=1e-12)
    assert f" cost={usd(cost)} " in await router_line(stack.log_lines, answer.rid)

    async with aiohttp.ClientSession() as s:  # streamed: Anthropic's events carry the counts
        async with s.post(stack.url + "/v1/messages", json={**body, "stream": True},
                          headers={"Authorization": f"Bearer {TEAM}"}) as r:
            events = [json.loads(line[5:]) for line in (await r.text()).splitlines() if line.startswith("data:")]
            rid = r.headers["x-request-id"]
    prompt = events[0]["message"]["usage"]["input_tokens"]
    output = [e["usage"]["output_tokens"] for e in events if e["type"] == "message_delta"][-1]
    assert output > 0 and f" cost={usd(IN * prompt + OUT * output)} " in await router_line(stack.log_lines, rid)


async def test_no_key_and_no_upstream_secret_is_ever_in_the_metrics(stack):
    await ask(stack.url, model="priced")
    await ask(stack.url, model="llama2-13b-vllm", key=MASTER)
    text, m = await scrape(stack.url)
    assert value(m, "llm_router_spend_total", key="team-a") is not None  # the key's name labels the spend
    for secret in (TEAM, MASTER, "sk-upstream-vllm"):
        assert secret not in text


async def test_the_status_page_data_shows_spend_and_unknown_answers_per_deployment_and_in_total(stack):
    priced = await ask(stack.url, model="priced")
    await ask(stack.url, model="priced", stream=True)  # unknown
    await ask(stack.url, model="llama2-13b-vllm")  # 0
    async with aiohttp.ClientSession() as s:
        async with s.get(stack.url + "/ui/data", headers={"Authorization": f"Bearer {MASTER}"}) as r:
            data = await r.json()
    rows = {d["id"]: d for d in data["deployments"]}
    assert (rows["priced-1"]["spend_usd"], rows["priced-1"]["spend_unknown"]) == (pytest.approx(priced.cost), 1)
    assert (rows["llama2-13b-vllm"]["spend_usd"], rows["llama2-13b-vllm"]["spend_unknown"]) == (0, 0)
    assert data["spend"] == {"usd": pytest.approx(priced.cost), "unknown": 1}


async def test_a_cache_hit_costs_nothing(tmp_path):
    sim = SimulatedBackend("vllm", ["m"])
    await sim.start()
    (tmp_path / "c.yaml").write_text(f"""
model_list:
  - {{model_name: m, litellm_params: {{model: hosted_vllm/m, api_base: "{sim.base_url}/v1"}},
     model_info: {{{PRICES}}}}}
router_settings: {{num_retries: 0}}
litellm_settings:
  cache: true
  cache_params: {{type: local, ttl: 60}}
""")
    (tmp_path / "model-mappings.yaml").write_text("{}\n")
    runner, url = await start_proxy(load_config(str(tmp_path / "c.yaml")))
    try:
        first = await ask(url, model="m")
        await asyncio.gather(*runner.app[PROXY]._background)  # the cache write landed
        again = await ask(url, model="m")
        _, m = await scrape(url)
    finally:
        await runner.cleanup()
        await sim.stop()
    assert (first.headers["x-router-cache"], again.headers["x-router-cache"]) == ("miss", "hit")
    assert float(first.headers[COST]) == pytest.approx(first.cost, rel=1e-11) and first.cost > 0
    assert again.headers[COST] == "0.0"
    assert value(m, "llm_router_spend_total", key="none") == pytest.approx(first.cost)  # no keys configured
