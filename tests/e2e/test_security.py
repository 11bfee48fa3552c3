"""Access control: client keys, per-model permissions, the admin surface, rpm limits,
secrets kept out of every response and log, nothing of the client's forwarded."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import aiohttp
import openai
import pytest

from tests.e2e.test_cli import ROOT, free_ports, processes, wait_until_up  # noqa: F401 (a fixture)
from tests.e2e.test_proxy import HI, client, upstream_headers

MASTER = "sk-master-key-123"
TEAM = "sk-team-a-key-456"  # may use llama3.1:8b and anything under meta-llama/
OTHER = "sk-other-key-789"  # every model, 2 requests per minute
KEYS = (f"master_key: {MASTER}, api_keys: ["
        f"{{name: team-a, key: {TEAM}, models: [llama3.1:8b, general_chat, 'meta-llama/*']}}, "
        f"{{name: batch, key: {OTHER}, rpm_limit: 2}}]")


async def get(url: str, key: str | None = None) -> tuple[int, dict, dict]:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    async with aiohttp.ClientSession() as s:
        async with s.get(url, headers=headers) as r:
            body = await r.json(content_type=None) if r.content_type == "application/json" else await r.text()
            return r.status, body, dict(r.headers)


async def test_each_key_reaches_only_its_models_and_not_the_admin_surface(make_stack):
    stack = await make_stack(extra_general=KEYS)
    team = client(stack, TEAM)
    assert (await team.chat.completions.create(model="llama3.1:8b", messages=HI)).choices
    assert (await team.chat.completions.create(model="general_chat", messages=HI)).choices  # an alias it was given
    assert (await team.chat.completions.create(model="meta-llama/Llama-2-7b-chat-hf", messages=HI)).choices  # glob
    with pytest.raises(openai.PermissionDeniedError) as info:
        await team.chat.completions.create(model="llama2-13b-vllm", messages=HI)
    assert info.value.status_code == 403 and info.value.body["type"] == "permission_error"
    assert "team-a" in info.value.body["message"] and TEAM not in info.value.body["message"]
    with pytest.raises(openai.PermissionDeniedError):  # a model that does not exist: 403 too, nothing revealed
        await team.chat.completions.create(model="no-such-model", messages=HI)
    with pytest.raises(openai.PermissionDeniedError):  # a capability resolving to a model it may not use
        await team.embeddings.create(model="nomic-embed", input="x")
    assert sorted(m.id for m in (await team.models.list()).data) == ["general_chat", "llama3.1:8b"]
    with pytest.raises(openai.PermissionDeniedError):
        await team.models.retrieve("native")

    everything = client(stack, OTHER)
    assert (await everything.chat.completions.create(model="native", messages=HI)).choices
    assert len((await everything.models.list()).data) > 2

    with pytest.raises(openai.AuthenticationError) as info:
        await client(stack, "sk-wrong").chat.completions.create(model="llama3.1:8b", messages=HI)
    assert info.value.body["code"] == "invalid_api_key"

    for path in ("/health", "/router/stats", "/router/explain?model=native", "/ui/data"):
        assert (await get(stack.url + path))[0] == 401, path
        status, body, _ = await get(stack.url + path, TEAM)
        assert status == 403 and body["error"]["type"] == "permission_error", path
        assert (await get(stack.url + path, MASTER))[0] == 200, path
    for path in ("/health/liveliness", "/health/readiness", "/metrics", "/ui"):
        assert (await get(stack.url + path))[0] == 200, path  # probes, the scrape and the page shell stay open
    assert MASTER not in str(await get(stack.url + "/ui", MASTER))


async def test_metrics_can_require_the_master_key(make_stack):
    stack = await make_stack(extra_general=KEYS + ", metrics_require_auth: true")
    assert (await get(stack.url + "/metrics"))[0] == 401
    assert (await get(stack.url + "/metrics", TEAM))[0] == 403
    status, text, _ = await get(stack.url + "/metrics", MASTER)
    assert status == 200 and "router_requests_total" in text
    assert (await get(stack.url + "/health/readiness"))[0] == 200


async def test_rpm_limits_per_key_and_global_answer_429_with_retry_after(make_stack):
    while int(time.time()) % 60 > 50:  # limits count per wall-clock minute: start well inside one
        time.sleep(0.2)
    stack = await make_stack(extra_general=KEYS + ", global_rpm_limit: 4")
    limited = client(stack, OTHER)
    for _ in range(2):
        await limited.chat.completions.create(model="native", messages=HI)
    with pytest.raises(openai.RateLimitError) as info:
        await limited.chat.completions.create(model="native", messages=HI)
    assert info.value.body["code"] == "rate_limit_exceeded" and "`batch`" in info.value.body["message"]
    assert 1 <= int(info.value.response.headers["Retry-After"]) <= 60
    team = client(stack, TEAM)  # other keys are not held back by batch's limit...
    for _ in range(2):
        await team.chat.completions.create(model="llama3.1:8b", messages=HI)
    with pytest.raises(openai.RateLimitError) as info:  # ...but all four requests together hit the global one
        await team.chat.completions.create(model="llama3.1:8b", messages=HI)
    assert "all clients" in info.value.body["message"]
    assert stack.backends["llama_cpp_native"].stats.requests["/v1/chat/completions"] == 2
    assert sum(1 for line in stack.log_lines() if "Rate limit reached" in line) == 2  # each 429 logged once


async def test_secrets_never_leave_and_client_headers_are_not_forwarded(make_stack):
    # llama2-13b-vllm has api_key sk-upstream-vllm in its litellm_params
    stack = await make_stack(extra_general=f"master_key: {MASTER}")
    raw = await client(stack, MASTER).chat.completions.with_raw_response.create(
        model="llama2-13b-vllm", messages=HI,
        extra_headers={"Connection": "keep-alive, X-Hop", "X-Hop": "1", "Proxy-Authorization": "Basic eDp5",
                       "TE": "trailers", "Cookie": "session=abc", "X-Forwarded-For": "6.6.6.6"})
    sent = upstream_headers(stack.backends["vllm"])
    assert sent["authorization"] == "Bearer sk-upstream-vllm"  # our upstream key, not the client's
    for name in ("x-hop", "proxy-authorization", "te", "cookie", "x-forwarded-for", "x-api-key"):
        assert name not in sent, name
    assert MASTER not in str(sent)
    assert not {h.lower() for h in raw.headers} & {"keep-alive", "proxy-authenticate", "set-cookie", "server-timing"}

    stack.backends["vllm"].faults.status = 401  # the backend refuses our key: the error must not echo it
    with pytest.raises(openai.APIStatusError) as info:
        await client(stack, MASTER).chat.completions.create(model="llama2-13b-vllm", messages=HI)
    stack.backends["vllm"].faults.clear()
    seen = [str(info.value.body)]
    for path in ("/health", "/router/explain?model=llama2-13b-vllm", "/router/stats", "/ui/data", "/metrics"):
        seen.append(str(await get(stack.url + path, MASTER)))
    seen.append(stack.log.getvalue())
    for text in seen:
        assert "sk-upstream-vllm" not in text and MASTER not in text


async def test_a_model_name_is_data_never_part_of_a_url_or_header(make_stack):
    stack = await make_stack()
    hostile = ["../../../admin", "llama3.1:8b/../../api/pull", "%2e%2e%2fapi%2fdelete", "x?y=1#z", "a b"]
    for name in hostile:
        with pytest.raises(openai.NotFoundError):
            await client(stack).chat.completions.create(model=name, messages=HI)
    probes = {"/api/tags", "/v1/models", "/api/ps", "/slots", "/metrics", "/health"}  # the monitor's own GETs
    for sim in stack.backends.values():  # nothing else reached a backend, on any path
        assert set(sim.stats.requests) <= probes, sim.stats.requests
    for name in ("x\r\nX-Injected: 1", "x\nHost: evil", "x\x00y"):
        with pytest.raises(openai.BadRequestError) as info:
            await client(stack).chat.completions.create(model=name, messages=HI)
        assert info.value.body["param"] == "model"
    # a pattern route sends the client's name upstream in the JSON body, not in the URL
    await client(stack).chat.completions.create(model="meta-llama/Llama-2-7b-chat-hf", messages=HI)
    assert stack.backends["vllm"].stats.requests["/v1/chat/completions"] == 1


def serve_args(tmp_path, port: int) -> list[str]:
    (tmp_path / "c.yaml").write_text("model_list:\n  - {model_name: m, litellm_params: {model: openai/m, api_base: 'http://127.0.0.1:9/v1'}}\n")
    (tmp_path / "model-mappings.yaml").write_text("{}\n")
    return [sys.executable, "-m", "router", "serve", "--config", str(tmp_path / "c.yaml"), "--host", "0.0.0.0", "--port", str(port)]


def test_no_key_on_a_public_address_refuses_to_start(tmp_path):
    port, = free_ports(1)
    env = {k: v for k, v in os.environ.items() if k != "LLM_ROUTER_MASTER_KEY"}
    done = subprocess.run(serve_args(tmp_path, port), cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert "refusing to listen on 0.0.0.0 without an API key" in done.stderr and "--allow-unauthenticated" in done.stderr
    assert "Traceback" not in done.stderr


async def test_public_address_with_a_key_or_with_allow_unauthenticated(tmp_path, processes):
    ports = free_ports(2)
    env = {k: v for k, v in os.environ.items() if k != "LLM_ROUTER_MASTER_KEY"}
    keyed = subprocess.Popen(serve_args(tmp_path, ports[0]), cwd=ROOT, env={**env, "LLM_ROUTER_MASTER_KEY": MASTER},
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    open_ = subprocess.Popen(serve_args(tmp_path, ports[1]) + ["--allow-unauthenticated"], cwd=ROOT, env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    processes += [keyed, open_]
    async with aiohttp.ClientSession() as s:
        for port in ports:
            await wait_until_up(s, f"http://127.0.0.1:{port}/health/liveliness", keyed if port == ports[0] else open_)
    assert (await get(f"http://127.0.0.1:{ports[0]}/v1/models"))[0] == 401
    assert (await get(f"http://127.0.0.1:{ports[0]}/v1/models", MASTER))[0] == 200
    assert (await get(f"http://127.0.0.1:{ports[1]}/v1/models"))[0] == 200
    open_.terminate()
    assert "UNAUTHENTICATED: listening on 0.0.0.0" in "".join(open_.communicate(timeout=30))
