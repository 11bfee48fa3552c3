"""The proxy end to end: real OpenAI SDK client → llm-router → simulated backends."""

from __future__ import annotations

import asyncio
import io

import aiohttp
import openai
import orjson
import pytest

HI = [{"role": "user", "content": "Hi"}]

# (model asked for, deployment id, provider, route)
ROUTES = [
    ("llama3.1:8b", "llama3.1-ollama", "ollama", "exact"),
    ("llama2-13b-vllm", "llama2-13b-vllm", "vllm", "exact"),
    ("llama-cpp-default", "llama-cpp-python", "llama_cpp_python", "exact"),
    ("native", "llama-cpp-native", "llama_cpp_native", "exact"),
    ("general_chat", "llama3.1-ollama", "ollama", "alias"),
    ("qwen-coder", "qwen-coder", "ollama", "id"),
    ("meta-llama/Llama-2-7b-chat-hf", "vllm/*", "vllm", "pattern"),
    ("mistral:7b", "ollama/*", "ollama", "pattern"),
]


_open: list[openai.AsyncOpenAI] = []


def upstream_headers(sim) -> dict[str, str]:
    return {k.lower(): v for k, v in sim.stats.last_headers.items()}


def client(stack, key: str = "sk-client-key") -> openai.AsyncOpenAI:
    c = openai.AsyncOpenAI(base_url=stack.url + "/v1", api_key=key, max_retries=0, timeout=60)
    _open.append(c)
    return c


@pytest.fixture(autouse=True)
async def close_clients():
    yield
    while _open:
        await _open.pop().close()


@pytest.mark.parametrize("model, deployment, provider, route", ROUTES)
async def test_chat_non_streaming_reaches_the_right_backend(stack, model, deployment, provider, route):
    raw = await client(stack).chat.completions.with_raw_response.create(model=model, messages=HI)
    completion = raw.parse()
    assert raw.headers["x-router-deployment"] == deployment
    assert raw.headers["x-router-provider"] == provider
    assert raw.headers["x-router-route"] == route
    assert raw.headers["x-router-attempts"] == "1"
    assert raw.headers["x-request-id"]
    assert completion.choices[0].message.content.strip()
    assert completion.choices[0].finish_reason in ("stop", "length")
    assert completion.usage.completion_tokens > 0


@pytest.mark.parametrize("model, deployment, provider, route", ROUTES)
async def test_chat_streaming_arrives_in_pieces_and_matches_the_non_streaming_text(stack, model, deployment, provider, route):
    c = client(stack)
    whole = (await c.chat.completions.create(model=model, messages=HI)).choices[0].message.content
    pieces, finish = [], None
    async with await c.chat.completions.create(model=model, messages=HI, stream=True) as stream:
        async for chunk in stream:
            for choice in chunk.choices:
                if choice.delta.content:
                    pieces.append(choice.delta.content)
                finish = choice.finish_reason or finish
    assert len(pieces) > 1
    assert "".join(pieces) == whole
    assert finish in ("stop", "length")


async def test_ollama_responses_carry_the_model_name_the_client_asked_for(stack):
    c = client(stack)
    assert (await c.chat.completions.create(model="general_chat", messages=HI)).model == "general_chat"
    async with await c.chat.completions.create(model="general_chat", messages=HI, stream=True) as stream:
        assert {chunk.model async for chunk in stream} == {"general_chat"}


async def test_requests_are_translated_for_ollama(stack):
    await client(stack).chat.completions.create(model="llama3.1:8b", messages=HI, max_tokens=3, temperature=0.1, stop=["x"])
    body = stack.backends["ollama"].stats.last_body
    assert stack.backends["ollama"].stats.last_path == "/api/chat"
    assert body["model"] == "llama3.1:8b" and body["stream"] is False
    assert body["options"] == {"num_predict": 3, "temperature": 0.1, "stop": ["x"]}


async def test_deployment_max_tokens_is_the_default_and_length_is_reported(stack):
    completion = await client(stack).chat.completions.create(model="qwen2.5-coder:7b", messages=HI)
    assert stack.backends["ollama"].stats.last_body["options"]["num_predict"] == 6
    assert completion.usage.completion_tokens <= 6


async def test_openai_compatible_backends_get_the_upstream_model_name_and_key_never_the_clients(stack):
    await client(stack).chat.completions.create(model="llama2-13b-vllm", messages=HI)
    vllm = stack.backends["vllm"].stats
    assert vllm.last_body["model"] == "meta-llama/Llama-2-13b-chat-hf"
    assert upstream_headers(stack.backends["vllm"]).get("authorization") == "Bearer sk-upstream-vllm"
    await client(stack).chat.completions.create(model="native", messages=HI)
    assert "authorization" not in upstream_headers(stack.backends["llama_cpp_native"])


async def test_stream_usage_when_the_client_asks_for_it(stack):
    for model in ("llama3.1:8b", "llama2-13b-vllm"):
        usage = None
        async with await client(stack).chat.completions.create(model=model, messages=HI, stream=True,
                                                                stream_options={"include_usage": True}) as stream:
            async for chunk in stream:
                usage = chunk.usage or usage
        assert usage is not None and usage.completion_tokens > 0 and usage.total_tokens == usage.prompt_tokens + usage.completion_tokens


@pytest.mark.parametrize("model", ["llama3.1:8b", "llama2-13b-vllm", "llama-cpp-default"])
async def test_completions_streaming_and_not(stack, model):
    c = client(stack)
    whole = await c.completions.create(model=model, prompt="Once upon a time", max_tokens=5)
    assert whole.choices[0].text and whole.choices[0].finish_reason == "length"
    pieces = [ch.choices[0].text async for ch in await c.completions.create(model=model, prompt="Once upon a time", max_tokens=5, stream=True) if ch.choices]
    assert "".join(pieces) == whole.choices[0].text


@pytest.mark.parametrize("model", ["nomic-embed", "llama2-13b-vllm"])
async def test_embeddings(stack, model):
    result = await client(stack).embeddings.create(model=model, input=["one", "two"])
    assert [d.index for d in result.data] == [0, 1]
    assert len(result.data[0].embedding) > 0 and result.data[0].embedding != result.data[1].embedding


async def test_models_list_with_and_without_v1_prefix(stack):
    ids = {m.id async for m in client(stack).models.list()}
    assert {"llama3.1:8b", "llama2-13b-vllm", "llama-cpp-default", "native", "general_chat"} <= ids
    async with aiohttp.ClientSession() as s:
        async with s.get(stack.url + "/models") as r:
            assert {m["id"] for m in (await r.json())["data"]} == ids


async def test_unknown_model_is_a_404_model_not_found(stack):
    with pytest.raises(openai.NotFoundError) as info:
        await client(stack).chat.completions.create(model="gpt-4o", messages=HI)
    assert info.value.body["code"] == "model_not_found" and info.value.body["type"] == "invalid_request_error"
    assert any("[ROUTER] Model: gpt-4o -> no route (404)" in line for line in stack.log_lines())


async def test_backend_that_lacks_the_model_gives_404_too(stack):
    with pytest.raises(openai.NotFoundError) as info:
        await client(stack).chat.completions.create(model="phi3:14b", messages=HI)  # pattern -> ollama, not pulled
    assert info.value.body["code"] == "model_not_found"


@pytest.mark.parametrize("body, param", [
    (b"{not json", None),
    (b'["a list"]', None),
    (b'{"messages": [{"role": "user", "content": "x"}]}', "model"),
    (b'{"model": "llama3.1:8b"}', "messages"),
    (b'{"model": "llama3.1:8b", "messages": [], "stream": "yes"}', "messages"),
    (b'{"model": "llama3.1:8b", "messages": [{"role": "user", "content": "x"}], "stream": "yes"}', "stream"),
    (b'{"model": 7, "messages": [{"role": "user", "content": "x"}]}', "model"),
])
async def test_bad_requests_get_openai_style_400s_logged_once(stack, body, param):
    async with aiohttp.ClientSession() as s:
        async with s.post(stack.url + "/v1/chat/completions", data=body) as r:
            assert r.status == 400
            err = (await r.json())["error"]
            rid = r.headers["x-request-id"]
    assert err["type"] == "invalid_request_error" and err["param"] == param and err["message"]
    assert sum(rid in line for line in stack.log_lines()) == 1


async def test_request_id_is_echoed_or_generated(stack):
    async with aiohttp.ClientSession() as s:
        payload = orjson.dumps({"model": "native", "messages": HI})
        async with s.post(stack.url + "/v1/chat/completions", data=payload, headers={"x-request-id": "abc-123"}) as r:
            assert r.headers["x-request-id"] == "abc-123"
        assert upstream_headers(stack.backends["llama_cpp_native"]).get("x-request-id") == "abc-123"
        async with s.post(stack.url + "/v1/chat/completions", data=payload) as r:
            assert len(r.headers["x-request-id"]) == 32


async def test_router_log_lines_name_model_provider_and_route(stack):
    c = client(stack)
    await c.chat.completions.create(model="llama3.1:8b", messages=HI)
    await c.chat.completions.create(model="meta-llama/Llama-2-7b-chat-hf", messages=HI)
    lines = stack.log_lines()
    exact = [l for l in lines if "[ROUTER] Model: llama3.1:8b -> Provider: ollama (exact match)" in l]
    pattern = [l for l in lines if "[ROUTER] Model: meta-llama/Llama-2-7b-chat-hf -> Provider: vllm (pattern match)" in l]
    assert len(exact) == 1 and len(pattern) == 1
    assert "deployment=llama3.1-ollama" in exact[0] and "status=200" in exact[0] and "latency_ms=" in exact[0]
    assert "sk-upstream-vllm" not in stack.log.getvalue() and "sk-client-key" not in stack.log.getvalue()


async def test_debug_router_logs_the_decision_trace(make_stack):
    stack = await make_stack(extra_router="debug_router: true")
    await client(stack).chat.completions.create(model="mistral:7b", messages=HI)
    trace = [l for l in stack.log_lines() if "[ROUTER] trace:" in l]
    assert any("exact: no model_list name" in l for l in trace)
    assert any("pattern: '.*:\\\\d+[bB]$' matches -> provider ollama" in l for l in trace), trace


async def test_master_key_is_required_when_configured(make_stack):
    stack = await make_stack(extra_general="master_key: sk-master")
    with pytest.raises(openai.AuthenticationError):
        await client(stack).chat.completions.create(model="native", messages=HI)
    ok = client(stack, "sk-master")
    assert (await ok.chat.completions.create(model="native", messages=HI)).choices
    assert "authorization" not in upstream_headers(stack.backends["llama_cpp_native"])  # never forwarded
    async with aiohttp.ClientSession() as s:
        async with s.get(stack.url + "/health/liveliness") as r:
            assert r.status == 200 and await r.json() == "I'm alive!"
        for admin in ("/router/explain?model=native", "/router/stats", "/health"):
            async with s.get(stack.url + admin) as r:
                assert r.status == 401, admin
            async with s.get(stack.url + admin, headers={"Authorization": "Bearer sk-master"}) as r:
                assert r.status == 200, admin


async def test_backend_down_is_a_502_and_hang_is_a_504(stack):
    await stack.backends["llama_cpp_python"].stop()
    with pytest.raises(openai.APIStatusError) as info:
        await client(stack).chat.completions.create(model="llama-cpp-default", messages=HI)
    assert info.value.status_code == 502 and info.value.body["code"] == "upstream_unavailable"
    stack.backends["llama_cpp_native"].faults.hang = True  # "native" has timeout: 2
    with pytest.raises(openai.APIStatusError) as info:
        await client(stack).chat.completions.create(model="native", messages=HI)
    assert info.value.status_code == 504 and info.value.body["code"] == "upstream_timeout"
    stack.backends["llama_cpp_native"].faults.clear()


async def test_backend_500_is_a_502_and_its_4xx_passes_through(stack):
    vllm = stack.backends["vllm"]
    vllm.faults.paths = ("/v1/chat/completions",)  # the background monitor's probes are not to use up the faults
    vllm.faults.status, vllm.faults.status_count = 500, 1
    with pytest.raises(openai.APIStatusError) as info:
        await client(stack).chat.completions.create(model="llama2-13b-vllm", messages=HI)
    assert info.value.status_code == 502 and info.value.response.headers["x-router-attempts"] == "1"
    vllm.faults.status, vllm.faults.status_count = 400, 1
    with pytest.raises(openai.BadRequestError):
        await client(stack).chat.completions.create(model="llama2-13b-vllm", messages=HI, stream=True)


async def test_stream_cut_by_the_backend_ends_with_an_error_event_not_silence(stack):
    for name, model in (("vllm", "llama2-13b-vllm"), ("ollama", "llama3.1:8b")):
        stack.backends[name].faults.drop_after_chunks = 2
        received = []
        with pytest.raises(openai.APIError) as info:
            async with await client(stack).chat.completions.create(model=model, messages=HI, stream=True) as stream:
                async for chunk in stream:
                    received.append(chunk)
        assert received, "some chunks arrived before the cut"
        assert "dropped the connection mid-response" in info.value.message
        stack.backends[name].faults.clear()


async def test_client_disconnect_mid_stream_closes_the_upstream_request(stack):
    for name, model in (("llama_cpp_python", "llama-cpp-default"), ("ollama", "llama3.1:8b")):
        sim = stack.backends[name]
        sim.tokens_per_s = 5  # slow stream: ~0.2 s per token
        async with aiohttp.ClientSession() as s:
            resp = await s.post(stack.url + "/v1/chat/completions",
                                data=orjson.dumps({"model": model, "messages": HI, "stream": True, "max_tokens": 50}))
            assert resp.status == 200
            await resp.content.readany()  # the first bytes arrived
            resp.close()  # the client goes away
        await asyncio.wait_for(sim.stats.disconnected.wait(), timeout=1.0)
        assert sim.stats.disconnects == 1


async def test_health_reports_every_deployment_with_a_live_probe(stack):
    await stack.backends["llama_cpp_native"].stop()
    async with aiohttp.ClientSession() as s:
        async with s.get(stack.url + "/health") as r:
            health = await r.json()
        async with s.get(stack.url + "/health/readiness") as r:
            assert r.status == 200 and (await r.json())["status"] == "healthy"
    healthy = {e["id"] for e in health["healthy_endpoints"]}
    unhealthy = {e["id"]: e for e in health["unhealthy_endpoints"]}
    assert {"llama3.1-ollama", "llama2-13b-vllm", "llama-cpp-python"} <= healthy
    assert "llama-cpp-native" in unhealthy and unhealthy["llama-cpp-native"]["error"]
    assert "sk-upstream-vllm" not in orjson.dumps(health).decode()


async def test_max_parallel_requests_queues_the_excess_then_429s_after_queue_timeout(make_stack, backends):
    base = backends["llama_cpp_native"].base_url
    stack = await make_stack(extra_router="queue_timeout: 0.3",
                             extra_models=f'- {{model_name: capped, litellm_params: {{model: openai/tiny.gguf, api_base: "{base}/v1", max_parallel_requests: 1}}, model_info: {{id: capped-1}}}}')
    sim = backends["llama_cpp_native"]
    sim.faults.paths = ("/v1/chat/completions",)
    sim.faults.hang = True
    c = client(stack)
    first = asyncio.create_task(c.chat.completions.create(model="capped", messages=HI))
    while sim.stats.open == 0:  # wait until the first request is in flight at the backend
        await asyncio.sleep(0.01)
    start = asyncio.get_running_loop().time()
    with pytest.raises(openai.RateLimitError) as info:  # queued for queue_timeout, then told to retry
        await c.chat.completions.create(model="capped", messages=HI)
    assert asyncio.get_running_loop().time() - start >= 0.3
    assert info.value.body["code"] == "max_parallel_requests" and info.value.response.headers["retry-after"] == "1"
    second = asyncio.create_task(c.chat.completions.create(model="capped", messages=HI))
    sim.faults.clear()  # the hung request completes; the queued one gets the slot
    assert (await first).choices and (await second).choices
    assert sim.stats.requests["/v1/chat/completions"] == 2  # never two at once: the queued one waited


async def test_an_oversized_body_is_a_413_logged_once(stack):
    async with aiohttp.ClientSession() as s:
        async with s.post(stack.url + "/v1/chat/completions", data=io.BytesIO(b"x" * (33 * 1024 * 1024))) as r:
            assert r.status == 413
            assert (await r.json())["error"]["code"] == "request_too_large"
            rid = r.headers["x-request-id"]
    assert sum(rid in line for line in stack.log_lines()) == 1


async def test_health_probe_script_reports_up_and_down(stack):
    import subprocess
    import sys

    async def probe(*args: str) -> subprocess.CompletedProcess:
        return await asyncio.get_running_loop().run_in_executor(None, lambda: subprocess.run(
            [sys.executable, "-m", "router", "health-probe", "--url", stack.url, *args], capture_output=True, text=True, timeout=30))

    ok = await probe()
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "UP   llama-cpp-native provider=llama_cpp_native" in ok.stdout
    await stack.backends["llama_cpp_native"].stop()
    down = await probe()
    assert down.returncode == 1 and "DOWN llama-cpp-native provider=llama_cpp_native" in down.stdout
    only_up = await probe("--deployment", "llama3.1-ollama")
    assert only_up.returncode == 0 and only_up.stdout.count("\n") == 1


async def test_test_routing_script_sends_one_request_per_name_or_explains_with_dry_run(stack):
    import subprocess
    import sys

    def run(*extra: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "router", "test-routing", "--config", stack.config.file, "--url", stack.url, *extra],
                              capture_output=True, text=True, timeout=60)

    loop = asyncio.get_running_loop()
    before = stack.backends["vllm"].stats.requests["/v1/chat/completions"]
    out = await loop.run_in_executor(None, run)
    assert out.returncode == 0, out.stdout + out.stderr
    line = next(l for l in out.stdout.splitlines() if l.startswith("llama2-13b-vllm "))
    assert line.split()[1:4] == ["200", "exact", "llama2-13b-vllm"]
    assert any(l.startswith("general_chat ") and " alias " in l for l in out.stdout.splitlines())
    assert stack.backends["vllm"].stats.requests["/v1/chat/completions"] == before + 1
    dry = await loop.run_in_executor(None, run, "--dry-run", "--json")
    assert dry.returncode == 0 and stack.backends["vllm"].stats.requests["/v1/chat/completions"] == before + 1
    assert {"model": "native", "capability": None, "status": 200, "deployment": "llama-cpp-native"}.items() <= \
        next(r for r in orjson.loads(dry.stdout) if r["model"] == "native").items()


def test_router_logs_filters_router_lines(tmp_path):
    import subprocess
    from pathlib import Path

    log_file = tmp_path / "router.log"
    log_file.write_text("x [ROUTER] Model: a -> Provider: ollama (exact match) request_id=r1\n"
                        "x [ROUTER] Model: b -> Provider: vllm (pattern match) request_id=r2\n"
                        "x WARNING [ROUTER] Fallback triggered: ollama -> vllm request_id=r3\n"
                        "x [SERVER] listening\n")
    script = str(Path(__file__).resolve().parents[2] / "scripts" / "router-logs")
    run = lambda *a: subprocess.run(["bash", script, "--file", str(log_file), *a], capture_output=True, text=True).stdout  # noqa: E731
    assert run().count("\n") == 3
    assert run("--model", "a").strip().endswith("request_id=r1")
    assert [l.split("request_id=")[1] for l in run("--provider", "vllm").splitlines()] == ["r2", "r3"]
    assert run("--request-id", "r3").count("\n") == 1


async def test_message_contents_are_logged_only_with_log_bodies(stack):
    from router.app import PROXY

    c = client(stack)
    private = [{"role": "user", "content": "my very private question"}]
    await c.chat.completions.create(model="native", messages=private)
    assert "private question" not in stack.log.getvalue()
    stack.app[PROXY].log_bodies = True  # what --log-bodies sets
    await c.chat.completions.create(model="native", messages=private)
    line = [l for l in stack.log_lines() if "private question" in l]
    assert len(line) == 1 and "request_body=" in line[0] and "[ROUTER] Model: native" in line[0]
