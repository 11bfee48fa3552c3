"""Hosted providers by LiteLLM prefix (issue 18), each against a loopback server that
speaks its wire format (``api_base`` pointed at it): the OpenAI-compatible clouds,
Azure OpenAI, OpenAI's own API through ``OPENAI_BASE_URL``; a local deployment failing
over to a cloud one; spill-over past a saturated local backend; a config with
providers we do not speak; and no secret anywhere a user or operator can look."""

from __future__ import annotations

import asyncio
import io
import textwrap

import aiohttp
import openai
import orjson
import pytest
from aiohttp import web

from router import log
from router.config import load_config
from router.simulate import SimulatedBackend
from tests.conftest import start_proxy

SECRETS = ("sk-groq-secret-1", "sk-openai-secret-2", "azure-secret-3", "sk-fw-secret-4", "sk-ant-secret-5")


class Azure:
    """Azure OpenAI's wire format: deployment URLs, ``api-version``, ``api-key``; the
    answers are OpenAI's (a chat completion, or its SSE stream)."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, str, dict[str, str], dict]] = []  # path, query, headers, body
        self.runner: web.AppRunner | None = None
        self.url = ""

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/openai/deployments/{deployment}/chat/completions", self._chat)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.url = f"http://127.0.0.1:{self.runner.addresses[0][1]}"

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        self.seen.append((request.path, request.query_string, dict(request.headers), body))
        if request.headers.get("api-key") != "azure-secret-3":
            return web.json_response({"error": {"code": "401", "message": "Access denied due to invalid subscription key."}}, status=401)
        chunk = {"id": "chatcmpl-az", "object": "chat.completion.chunk", "created": 1, "model": "gpt-4o-2024-08-06",
                 "choices": [{"index": 0, "delta": {"role": "assistant", "content": "from azure"}, "finish_reason": None}]}
        if body.get("stream"):
            resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
            await resp.prepare(request)
            end = {**chunk, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}
            await resp.write(b"data: " + orjson.dumps(chunk) + b"\n\ndata: " + orjson.dumps(end) + b"\n\ndata: [DONE]\n\n")
            await resp.write_eof()
            return resp
        return web.json_response({"id": "chatcmpl-az", "object": "chat.completion", "created": 1, "model": "gpt-4o-2024-08-06",
                                  "choices": [{"index": 0, "message": {"role": "assistant", "content": "from azure"},
                                               "finish_reason": "stop"}],
                                  "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}})


@pytest.fixture
async def clouds(tmp_path, monkeypatch):
    """A local vLLM, three "clouds" (simulated OpenAI-compatible servers behind groq/,
    fireworks_ai/ and OpenAI's own openai/) and an Azure server; keys from the config
    and from LiteLLM's environment variables."""
    local = SimulatedBackend("vllm", ["local-m"])
    groq = SimulatedBackend("vllm", ["llama-3.3-70b-versatile"])
    fireworks = SimulatedBackend("vllm", ["accounts/fireworks/models/llama-v3p1-8b"])
    oai = SimulatedBackend("vllm", ["gpt-4o"])
    ant = SimulatedBackend("anthropic", ["claude-sonnet-4-5"], api_key="sk-ant-secret-5")
    azure = Azure()
    for s in (local, groq, fireworks, oai, ant):
        await s.start()
    await azure.start()
    monkeypatch.setenv("GROQ_API_KEY", "sk-groq-secret-1")
    monkeypatch.setenv("OPENAI_API_KEY", "sk-openai-secret-2")
    monkeypatch.setenv("OPENAI_BASE_URL", oai.base_url + "/v1")
    monkeypatch.setenv("AZURE_API_VERSION", "2024-10-21")
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-secret-5")
    (tmp_path / "c.yaml").write_text(textwrap.dedent(f"""
        model_list:
          - model_name: local
            litellm_params: {{model: hosted_vllm/local-m, api_base: "{local.base_url}/v1", timeout: 5}}
            model_info: {{id: local-1}}
          - model_name: fast
            litellm_params: {{model: groq/llama-3.3-70b-versatile, api_base: "{groq.base_url}/v1"}}
            model_info: {{id: groq-1}}
          - model_name: fw
            litellm_params: {{model: fireworks_ai/llama-v3p1-8b, api_base: "{fireworks.base_url}/v1", api_key: sk-fw-secret-4}}
          - model_name: gpt-4o
            litellm_params: {{model: openai/gpt-4o}}
          - model_name: az
            litellm_params: {{model: azure/prod-gpt4o, api_base: "{azure.url}", api_key: azure-secret-3}}
          - model_name: claude
            litellm_params: {{model: anthropic/claude-sonnet-4-5, api_base: "{ant.base_url}"}}
          - model_name: titan
            litellm_params: {{model: bedrock/amazon.titan-text-express-v1, aws_region_name: us-east-1}}
          - model_name: gemini
            litellm_params: {{model: vertex_ai/gemini-1.5-pro, vertex_project: p}}
        router_settings:
          num_retries: 0
          fallbacks: [{{local: [fast]}}, {{fast: [titan]}}]
        general_settings: {{master_key: sk-master-xyz}}
        """))
    buf = io.StringIO()
    log.configure("human", "info", stream=buf)
    config = load_config(str(tmp_path / "c.yaml"))
    runner, url = await start_proxy(config)
    client = openai.AsyncOpenAI(base_url=url + "/v1", api_key="sk-master-xyz", max_retries=0)
    yield {"local": local, "groq": groq, "fireworks": fireworks, "oai": oai, "ant": ant, "azure": azure, "url": url,
           "client": client, "log": buf, "config": config}
    await client.close()
    await runner.cleanup()
    log.configure()
    for s in (local, groq, fireworks, oai, ant):
        await s.stop()
    await azure.runner.cleanup()


HI = [{"role": "user", "content": "Hi"}]


async def _both(client: openai.AsyncOpenAI, model: str) -> tuple[str, str, str]:
    """The answer's text non-streamed and streamed, and the deployment that served the stream."""
    whole = await client.chat.completions.create(model=model, messages=HI, max_tokens=5)
    raw = await client.chat.completions.with_raw_response.create(model=model, messages=HI, max_tokens=5, stream=True)
    streamed = "".join([c.choices[0].delta.content or "" async for c in raw.parse() if c.choices])
    return whole.choices[0].message.content, streamed, raw.headers["x-router-deployment"]


async def test_openai_compatible_clouds_get_their_key_as_a_bearer_token_and_their_model_name(clouds):
    client = clouds["client"]
    whole, streamed, _ = await _both(client, "fast")
    assert whole and streamed
    sent = clouds["groq"].stats.last_headers
    assert sent["Authorization"] == "Bearer sk-groq-secret-1"  # GROQ_API_KEY, as LiteLLM reads it
    assert clouds["groq"].stats.requests["/v1/chat/completions"] == 2
    await _both(client, "fw")  # the simulator serves only the prefixed name: the router added it
    assert clouds["fireworks"].stats.last_headers["Authorization"] == "Bearer sk-fw-secret-4"  # api_key wins


async def test_openai_without_api_base_goes_where_openai_base_url_says_with_openai_api_key(clouds):
    whole, streamed, _ = await _both(clouds["client"], "gpt-4o")
    assert whole and streamed
    assert clouds["oai"].stats.last_headers["Authorization"] == "Bearer sk-openai-secret-2"


async def test_azure_gets_its_deployment_url_api_version_and_api_key_header(clouds):
    whole, streamed, dep = await _both(clouds["client"], "az")
    assert (whole, streamed, dep) == ("from azure", "from azure", "az@azure")
    path, query, headers, body = clouds["azure"].seen[-1]
    assert path == "/openai/deployments/prod-gpt4o/chat/completions" and query == "api-version=2024-10-21"
    assert headers["api-key"] == "azure-secret-3" and "Authorization" not in headers
    assert body["stream"] is True and body["messages"] == HI


@pytest.mark.parametrize("stream", [False, True])
async def test_a_local_deployment_fails_over_to_the_cloud(clouds, stream):
    clouds["local"].faults.status, clouds["local"].faults.status_count = 503, 1
    clouds["local"].faults.paths = ("/v1/chat",)  # not the background probe's listing
    raw = await clouds["client"].chat.completions.with_raw_response.create(model="local", messages=HI, max_tokens=5, stream=stream)
    if stream:
        text = "".join([c.choices[0].delta.content or "" async for c in raw.parse() if c.choices])
    else:
        text = raw.parse().choices[0].message.content
    assert text and raw.headers["x-router-deployment"] == "groq-1" and raw.headers["x-router-attempts"] == "2"
    assert clouds["groq"].stats.last_headers["Authorization"] == "Bearer sk-groq-secret-1"


async def test_unsupported_providers_load_disabled_and_the_rest_serves(clouds):
    client, url = clouds["client"], clouds["url"]
    warnings = [str(w) for w in clouds["config"].warnings]
    assert any("model_list[6].litellm_params.model: llm-router does not speak LiteLLM's bedrock/ provider" in w for w in warnings)
    assert any("vertex_ai/" in w for w in warnings)
    assert any("fallbacks of 'fast' (titan) are all disabled" in w for w in warnings)
    with pytest.raises(openai.NotFoundError) as err:
        await client.chat.completions.create(model="titan", messages=HI)
    assert "configured but disabled" in err.value.message and "bedrock/" in err.value.message
    assert (await client.chat.completions.create(model="local", messages=HI, max_tokens=3)).choices[0].message.content
    auth = {"Authorization": "Bearer sk-master-xyz"}
    async with aiohttp.ClientSession(headers=auth) as http:
        async with http.get(url + "/health") as resp:
            health = await resp.json()
        async with http.get(url + "/router/explain", params={"model": "gemini"}) as resp:
            explained = (resp.status, await resp.text())
        async with http.get(url + "/ui/data") as resp:
            ui = await resp.json()
    disabled = {e["model_name"]: e for e in health["disabled_endpoints"]}
    assert set(disabled) == {"titan", "gemini"} and disabled["titan"]["state"] == "disabled"
    assert "bedrock/" in disabled["titan"]["error"] and health["disabled_count"] == 2
    hosted = {e["id"]: e for e in health["healthy_endpoints"]}
    assert hosted["groq-1"]["hosted"] is True  # not probed: healthy until its answers say otherwise
    assert explained[0] == 404 and "disabled" in explained[1] and "vertex_ai/" in explained[1]
    assert {r["model_name"]: r["state"] for r in ui["disabled"]} == {"titan": "disabled", "gemini": "disabled"}


async def test_no_provider_secret_shows_in_logs_errors_health_ui_explain_or_metrics(clouds):
    client, url = clouds["client"], clouds["url"]
    await _both(client, "fast")
    await _both(client, "az")
    await _both(client, "claude")
    clouds["ant"].faults.status, clouds["ant"].faults.status_count = 401, 2
    with pytest.raises(openai.APIStatusError) as refused:
        await client.chat.completions.create(model="claude", messages=HI)
    clouds["groq"].faults.status, clouds["groq"].faults.status_count = 401, 2  # the cloud refuses our key
    clouds["groq"].faults.paths = ("/v1/chat",)
    with pytest.raises(openai.APIStatusError) as err:
        await client.chat.completions.create(model="fast", messages=HI)
    seen = [err.value.message, str(err.value.body), refused.value.message, str(refused.value.body)]
    async with aiohttp.ClientSession(headers={"Authorization": "Bearer sk-master-xyz"}) as http:
        for path in ("/health", "/ui/data", "/metrics", "/router/explain?model=fast", "/router/explain?model=az",
                     "/router/explain?model=claude",
                     "/router/stats", "/v1/models"):
            async with http.get(url + path) as resp:
                seen.append(await resp.text())
    seen.append(clouds["log"].getvalue())
    seen.append(repr(clouds["config"]))
    for secret in SECRETS:
        for text in seen:
            assert secret not in text


@pytest.fixture
async def spill_stack(tmp_path):
    """A serial local vLLM (max_parallel_requests 1, slow) with a cloud behind it in the
    policy's chain; ``make(spill_when)`` starts the router."""
    local = SimulatedBackend("vllm", ["local-m"], tokens_per_s=25)
    cloud = SimulatedBackend("vllm", ["llama-3.3-70b-versatile"])
    await local.start()
    await cloud.start()
    runners = []

    async def make(spill_when: str) -> str:
        (tmp_path / "c.yaml").write_text(textwrap.dedent(f"""
            model_list:
              - model_name: local
                litellm_params: {{model: hosted_vllm/local-m, api_base: "{local.base_url}/v1", max_parallel_requests: 1}}
                model_info: {{id: local-1}}
              - model_name: fast
                litellm_params: {{model: groq/llama-3.3-70b-versatile, api_base: "{cloud.base_url}/v1", api_key: sk-groq-secret-1}}
                model_info: {{id: groq-1}}
            router_settings: {{num_retries: 0, queue_timeout: 30}}
            """))
        (tmp_path / "model-mappings.yaml").write_text(textwrap.dedent(f"""
            providers:
              local: {{type: vllm, api_base: "{local.base_url}"}}
              cloud: {{type: groq, api_base: "{cloud.base_url}/v1"}}
            fallback_chains:
              default:
                chain:
                  - primary: local
                  - secondary: cloud
                    preferred_model: fast
                    spill_when: {spill_when}
            """))
        runner, url = await start_proxy(load_config(str(tmp_path / "c.yaml")))
        runners.append(runner)
        return url

    yield make, local, cloud
    for r in runners:
        await r.cleanup()
    await local.stop()
    await cloud.stop()


async def _hold_the_slot(client: openai.AsyncOpenAI) -> tuple[asyncio.Task, asyncio.Event]:
    """A long stream on the local deployment, started: the task ends when it does."""
    started = asyncio.Event()

    async def run() -> str:
        raw = await client.chat.completions.with_raw_response.create(model="local", messages=HI, max_tokens=40, stream=True)
        out = []
        async for c in raw.parse():
            started.set()
            out.append(c.choices[0].delta.content or "" if c.choices else "")
        return raw.headers["x-router-deployment"]

    task = asyncio.create_task(run())
    await asyncio.wait_for(started.wait(), 10)
    return task, started


@pytest.mark.parametrize("stream", [False, True])
async def test_a_request_spills_to_the_cloud_when_the_local_backend_is_saturated(spill_stack, stream):
    make, local, cloud = spill_stack
    buf = io.StringIO()
    log.configure("human", "info", stream=buf)
    url = await make("saturated")
    client = openai.AsyncOpenAI(base_url=url + "/v1", api_key="x", max_retries=0)
    holder, _ = await _hold_the_slot(client)
    raw = await client.chat.completions.with_raw_response.create(model="local", messages=HI, max_tokens=5, stream=stream)
    if stream:
        assert "".join([c.choices[0].delta.content or "" async for c in raw.parse() if c.choices])
    else:
        assert raw.parse().choices[0].message.content
    assert raw.headers["x-router-deployment"] == "groq-1" and not holder.done()  # at once, not after the local stream
    assert await holder == "local-1"
    async with aiohttp.ClientSession() as http:
        async with http.get(url + "/metrics") as resp:
            assert 'llm_router_spillovers_total{from_provider="local",to_provider="cloud"} 1.0' in await resp.text()
    spilled = [line for line in buf.getvalue().splitlines() if "deployment=groq-1" in line]
    log.configure()
    assert len(spilled) == 1 and "spill=saturated" in spilled[0] and "cost=" in spilled[0]
    after = await client.chat.completions.with_raw_response.create(model="local", messages=HI, max_tokens=3)
    assert after.headers["x-router-deployment"] == "local-1"  # a free slot: local again
    assert cloud.stats.requests["/v1/chat/completions"] == 1
    await client.close()


@pytest.mark.parametrize("threshold, served_by", [(200, "groq-1"), (60_000, "local-1")])
async def test_spill_over_by_expected_queue_wait_spills_past_the_threshold_and_queues_under_it(spill_stack, threshold, served_by):
    make, local, cloud = spill_stack
    client = openai.AsyncOpenAI(base_url=await make(f"queue_wait_ms > {threshold}") + "/v1", api_key="x", max_retries=0)
    await client.chat.completions.create(model="local", messages=HI, max_tokens=10)  # a sample of how long a slot is held (~0.4 s)
    holder, _ = await _hold_the_slot(client)
    raw = await client.chat.completions.with_raw_response.create(model="local", messages=HI, max_tokens=3)
    assert raw.headers["x-router-deployment"] == served_by
    assert (served_by == "local-1") == holder.done()  # queued behind the stream, or served at once
    await holder
    await client.close()


@pytest.fixture
async def claude(tmp_path, monkeypatch):
    """A local vLLM with the hosted Anthropic API (simulated, key required) behind it."""
    local = SimulatedBackend("vllm", ["local-m"])
    cloud = SimulatedBackend("anthropic", ["claude-sonnet-4-5"], api_key="sk-ant-secret-5")
    await local.start()
    await cloud.start()
    (tmp_path / "c.yaml").write_text(textwrap.dedent(f"""
        model_list:
          - model_name: local
            litellm_params: {{model: hosted_vllm/local-m, api_base: "{local.base_url}/v1"}}
            model_info: {{id: local-1}}
          - model_name: claude
            litellm_params: {{model: anthropic/claude-sonnet-4-5, api_base: "{cloud.base_url}", api_key: os.environ/MY_ANTHROPIC_KEY}}
            model_info: {{id: claude-1}}
        router_settings:
          num_retries: 0
          fallbacks: [{{local: [claude]}}]
        """))
    monkeypatch.setenv("MY_ANTHROPIC_KEY", "sk-ant-secret-5")
    buf = io.StringIO()
    log.configure("human", "info", stream=buf)
    runner, url = await start_proxy(load_config(str(tmp_path / "c.yaml")))
    client = openai.AsyncOpenAI(base_url=url + "/v1", api_key="x", max_retries=0)
    yield client, local, cloud, url, buf
    await client.close()
    await runner.cleanup()
    log.configure()
    await local.stop()
    await cloud.stop()


async def test_anthropic_gets_messages_with_system_on_top_its_key_and_version_and_answers_in_openai_shape(claude):
    client, _, cloud, _, _ = claude
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    whole = await client.chat.completions.create(model="claude", messages=messages, max_tokens=20)
    assert whole.object == "chat.completion" and whole.model == "claude" and whole.choices[0].message.content
    assert whole.choices[0].finish_reason in ("stop", "length") and whole.usage.completion_tokens > 0
    sent, body = cloud.stats.last_headers, cloud.stats.last_body
    assert sent["x-api-key"] == "sk-ant-secret-5" and sent["anthropic-version"] == "2023-06-01"
    assert "Authorization" not in sent
    assert body["system"] == "Be brief." and [m["role"] for m in body["messages"]] == ["user"]
    assert body["model"] == "claude-sonnet-4-5" and body["max_tokens"] == 20
    chunks = [c async for c in await client.chat.completions.create(
        model="claude", messages=messages, max_tokens=20, stream=True, stream_options={"include_usage": True})]
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content  # the simulator is deterministic: same text both ways
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == [whole.choices[0].finish_reason]


async def test_anthropic_tool_calls_map_both_ways(claude):
    client, _, cloud, _, _ = claude
    tools = [{"type": "function", "function": {"name": "get_weather", "description": "Weather in a city",
                                               "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                                                              "required": ["city"]}}}]
    first = await client.chat.completions.create(model="claude", messages=HI, tools=tools, max_tokens=50)
    call = first.choices[0].message.tool_calls[0]
    assert first.choices[0].finish_reason == "tool_calls" and call.function.name == "get_weather"
    assert cloud.stats.last_body["tools"][0]["input_schema"]["required"] == ["city"]
    follow = HI + [first.choices[0].message.model_dump(exclude_none=True),
                   {"role": "tool", "tool_call_id": call.id, "content": "sunny"}]
    second = await client.chat.completions.create(model="claude", messages=follow, tools=tools, max_tokens=30)
    assert second.choices[0].finish_reason in ("stop", "length") and second.choices[0].message.content
    sent = cloud.stats.last_body["messages"]
    assert sent[1]["content"][0]["type"] == "tool_use" and sent[1]["content"][0]["id"] == call.id
    assert sent[2]["content"][0] == {"type": "tool_result", "tool_use_id": call.id, "content": "sunny"}
    chunks = [c async for c in await client.chat.completions.create(model="claude", messages=HI, tools=tools, stream=True)]
    streamed = [tc for c in chunks if c.choices for tc in (c.choices[0].delta.tool_calls or [])]
    assert streamed[0].function.name == "get_weather"
    assert orjson.loads("".join(tc.function.arguments or "" for tc in streamed)) == orjson.loads(call.function.arguments)


@pytest.mark.parametrize("stream", [False, True])
async def test_a_local_failure_falls_over_to_anthropic(claude, stream):
    client, local, _, _, _ = claude
    local.faults.status, local.faults.status_count, local.faults.paths = 500, 1, ("/v1/chat",)
    raw = await client.chat.completions.with_raw_response.create(model="local", messages=HI, max_tokens=8, stream=stream)
    text = "".join([c.choices[0].delta.content or "" async for c in raw.parse() if c.choices]) if stream \
        else raw.parse().choices[0].message.content
    assert text and raw.headers["x-router-deployment"] == "claude-1" and raw.headers["x-router-attempts"] == "2"


@pytest.mark.parametrize("status", [429, 529])
async def test_anthropic_429_and_529_rest_the_deployment_for_its_retry_after(claude, status):
    client, _, cloud, url, _ = claude
    cloud.faults.status, cloud.faults.status_count, cloud.faults.retry_after = status, 1, 7
    with pytest.raises(openai.RateLimitError) as err:
        await client.chat.completions.create(model="claude", messages=HI, max_tokens=5)
    assert err.value.status_code == 429
    assert 6 <= float(err.value.response.headers["retry-after"]) <= 7
    async with aiohttp.ClientSession() as http:
        async with http.get(url + "/health") as resp:
            row = next(r for r in (await resp.json())["unhealthy_endpoints"] if r["id"] == "claude-1")
    assert row["state"] == "cooldown" and 5 < row["cooldown_left_s"] <= 7


async def test_claude_code_talks_to_anthropic_through_the_router_unchanged(claude):
    """An Anthropic client's Messages pass through to an anthropic/ deployment: our key
    replaces its, and its API version and betas go along."""
    import anthropic
    _, _, cloud, url, logbuf = claude
    client = anthropic.AsyncAnthropic(base_url=url, api_key="client-key-not-forwarded", max_retries=0,
                                      default_headers={"anthropic-beta": "interleaved-thinking-2025-05-14"})
    msg = await client.messages.create(model="claude", max_tokens=20, system="Be brief.",
                                       messages=[{"role": "user", "content": "Hi"}])
    assert msg.id.startswith("msg_01") and msg.content[0].text  # the hosted API's own answer, relayed
    sent = cloud.stats.last_headers
    assert sent["x-api-key"] == "sk-ant-secret-5" and sent["anthropic-beta"] == "interleaved-thinking-2025-05-14"
    assert "client-key-not-forwarded" not in str(sent)
    async with client.messages.stream(model="claude", max_tokens=20, system="Be brief.",
                                      messages=[{"role": "user", "content": "Hi"}]) as s:
        assert await s.get_final_text() == msg.content[0].text
    await client.close()
    assert "via=native" in logbuf.getvalue() and "sk-ant-secret-5" not in logbuf.getvalue()


async def test_the_issues_config_local_ollama_plus_three_clouds_loads_and_serves_every_model(tmp_path, monkeypatch):
    """The config that did not load (issue 18): one local Ollama model, openai/gpt-4o with no
    api_base, anthropic/ and groq/; the clouds pointed at loopback servers of their formats."""
    ollama = SimulatedBackend("ollama", ["llama3.1:8b"], loaded=["llama3.1:8b"])
    oai = SimulatedBackend("vllm", ["gpt-4o"])
    ant = SimulatedBackend("anthropic", ["claude-sonnet-4-5"], api_key="sk-ant-secret-5")
    groq = SimulatedBackend("vllm", ["llama-3.3-70b-versatile"])
    for s in (ollama, oai, ant, groq):
        await s.start()
    monkeypatch.setenv("OPENAI_API_KEY", "sk-openai-secret-2")
    monkeypatch.setenv("OPENAI_BASE_URL", oai.base_url + "/v1")
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-secret-5")
    monkeypatch.setenv("GROQ_API_KEY", "sk-groq-secret-1")
    (tmp_path / "cloud.yaml").write_text(textwrap.dedent(f"""
        model_list:
          - model_name: llama3.1
            litellm_params:
              model: ollama_chat/llama3.1:8b
              api_base: "{ollama.base_url}"
          - model_name: gpt-4o
            litellm_params:
              model: openai/gpt-4o
          - model_name: claude
            litellm_params:
              model: anthropic/claude-sonnet-4-5
              api_base: "{ant.base_url}"
          - model_name: groq-llama
            litellm_params:
              model: groq/llama-3.3-70b-versatile
              api_base: "{groq.base_url}/v1"
        """))
    config = load_config(str(tmp_path / "cloud.yaml"))
    assert config.warnings == () and len(config.deployments) == 4
    runner, url = await start_proxy(config)
    client = openai.AsyncOpenAI(base_url=url + "/v1", api_key="x", max_retries=0)
    try:
        for model in ("llama3.1", "gpt-4o", "claude", "groq-llama"):
            whole, streamed, _ = await _both(client, model)
            assert whole and streamed, model
        listed = {m.id async for m in client.models.list()}
        assert {"llama3.1", "gpt-4o", "claude", "groq-llama"} <= listed
    finally:
        await client.close()
        await runner.cleanup()
        for s in (ollama, oai, ant, groq):
            await s.stop()


@pytest.mark.parametrize("status", [500, 529])
async def test_a_spilled_request_that_fails_on_the_cloud_is_served_locally_after_the_queue(spill_stack, status):
    make, local, cloud = spill_stack
    client = openai.AsyncOpenAI(base_url=await make("saturated") + "/v1", api_key="x", max_retries=0)
    cloud.faults.status, cloud.faults.status_count, cloud.faults.paths = status, 1, ("/v1/chat",)
    holder, _ = await _hold_the_slot(client)
    raw = await client.chat.completions.with_raw_response.create(model="local", messages=HI, max_tokens=3)
    assert raw.parse().choices[0].message.content and raw.headers["x-router-deployment"] == "local-1"
    assert raw.headers["x-router-attempts"] == "2" and holder.done()  # the cloud failed, then the local slot
    await client.close()
