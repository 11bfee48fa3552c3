"""The front doors (issue 17), driven by each dialect's official client against every
backend kind in the simulator: Anthropic Messages (``anthropic``), OpenAI Responses
(``openai``), Ollama's API (``ollama``) and rerank. Each kind either serves the
dialect natively (the body is passed through: the simulator counts the hit on its
native path) or gets a translation (the hit lands on its chat path)."""

from __future__ import annotations

import json
import textwrap

import aiohttp
import anthropic
import ollama
import openai
import pytest

from router.config import load_config
from router.simulate import SimulatedBackend
from tests.conftest import start_proxy

KINDS = ("ollama", "vllm", "llama_cpp_native", "llama_cpp_python", "openai")
MODELS = {"ollama": "llama3.1:8b", "vllm": "meta-llama/Llama-3.1-8B-Instruct", "llama_cpp_native": "tiny.gguf",
          "llama_cpp_python": "llama-cpp-default", "openai": "gpt-sim"}
# Where each kind's server takes each dialect: natively (its own path) or translated (its chat path).
CHAT_PATH = {"ollama": "/api/chat", "vllm": "/v1/chat/completions", "llama_cpp_native": "/v1/chat/completions",
             "llama_cpp_python": "/v1/chat/completions", "openai": "/v1/chat/completions"}
MESSAGES_PATH = {**CHAT_PATH, "ollama": "/v1/messages", "vllm": "/v1/messages", "llama_cpp_native": "/v1/messages"}
RESPONSES_PATH = {**CHAT_PATH, "ollama": "/v1/responses", "vllm": "/v1/responses", "llama_cpp_native": "/v1/responses"}
OLLAMA_PATH = {**CHAT_PATH, "ollama": "/api/chat"}
WEATHER = {"name": "get_weather", "description": "The weather in a city",
           "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}


def _entry(kind: str, b: SimulatedBackend, name: str | None = None, dep_id: str | None = None) -> str:
    model = MODELS[kind]
    if kind == "ollama":
        params = f'model: "ollama_chat/{model}", api_base: "{b.base_url}"'
    elif kind == "vllm":
        params = f'model: "hosted_vllm/{model}", api_base: "{b.base_url}/v1"'
    else:
        params = f'model: "openai/{model}", api_base: "{b.base_url}/v1"'
    provider = f", provider: {kind}" if kind in ("llama_cpp_native", "llama_cpp_python") else ""
    return (f'  - {{model_name: "{name or "on-" + kind}", litellm_params: {{{params}, timeout: 10}}, '
            f'model_info: {{id: "{dep_id or kind + "-1"}"{provider}}}}}\n')


@pytest.fixture
async def fleet(tmp_path):
    sims = {k: SimulatedBackend(k, [MODELS[k]]) for k in KINDS}
    for s in sims.values():
        await s.start()
    yaml = "model_list:\n" + "".join(_entry(k, s) for k, s in sims.items())
    # a pair for fallbacks: the primary is an Ollama, the backup a vLLM
    yaml += _entry("ollama", sims["ollama"], "pair", "pair-primary") + _entry("vllm", sims["vllm"], "backup", "pair-backup")
    yaml += textwrap.dedent("""
        router_settings:
          num_retries: 0
          monitor_interval: 60
          fallbacks: [{pair: [backup]}]
        """)
    (tmp_path / "c.yaml").write_text(yaml)
    runner, url = await start_proxy(load_config(str(tmp_path / "c.yaml")))
    yield url, sims
    await runner.cleanup()
    for s in sims.values():
        await s.stop()


def hits(sim: SimulatedBackend, path: str) -> int:
    return sim.stats.requests.get(path, 0)


# -- Anthropic Messages ---------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
async def test_messages_answers_from_every_backend_kind(fleet, kind):
    url, sims = fleet
    async with anthropic.AsyncAnthropic(base_url=url, api_key="x", max_retries=0) as client:
        raw = await client.messages.with_raw_response.create(
            model=f"on-{kind}", max_tokens=20, system="Be brief.",
            messages=[{"role": "user", "content": "Say hello"}])
        msg = await raw.parse()
    assert msg.type == "message" and msg.role == "assistant"
    assert msg.content[0].type == "text" and msg.content[0].text
    assert msg.stop_reason in ("end_turn", "max_tokens")
    assert msg.usage.input_tokens > 0 and msg.usage.output_tokens > 0
    assert raw.headers["x-router-deployment"] == f"{kind}-1"
    assert hits(sims[kind], MESSAGES_PATH[kind]) == 1


@pytest.mark.parametrize("kind", KINDS)
async def test_messages_streams_anthropic_events_from_every_backend_kind(fleet, kind):
    url, sims = fleet
    async with anthropic.AsyncAnthropic(base_url=url, api_key="x", max_retries=0) as client:
        async with client.messages.stream(model=f"on-{kind}", max_tokens=20,
                                          messages=[{"role": "user", "content": "Say hello"}]) as stream:
            events = [e.type async for e in stream]
            final = await stream.get_final_message()
    assert events[0] == "message_start" and events[-1] == "message_stop"
    assert "content_block_start" in events and "content_block_stop" in events and "message_delta" in events
    text = "".join(b.text for b in final.content if b.type == "text")
    assert text and final.stop_reason in ("end_turn", "max_tokens")
    # llama-cpp-python's streams carry no usage (it ignores stream_options): nothing to report, nothing invented
    assert final.usage.output_tokens > 0 or kind == "llama_cpp_python"
    assert hits(sims[kind], MESSAGES_PATH[kind]) == 1


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("stream", [False, True])
async def test_messages_tool_use_round_trip(fleet, kind, stream):
    if kind == "llama_cpp_python":
        pytest.skip("llama-cpp-python calls tools only with a function-calling chat_format; the simulator answers text")
    url, _ = fleet
    ask = [{"role": "user", "content": "What is the weather in Paris?"}]
    async with anthropic.AsyncAnthropic(base_url=url, api_key="x", max_retries=0) as client:
        if stream:
            async with client.messages.stream(model=f"on-{kind}", max_tokens=50, tools=[WEATHER], messages=ask) as s:
                first = await s.get_final_message()
        else:
            first = await client.messages.create(model=f"on-{kind}", max_tokens=50, tools=[WEATHER], messages=ask)
        assert first.stop_reason == "tool_use"
        call = next(b for b in first.content if b.type == "tool_use")
        assert call.name == "get_weather" and isinstance(call.input, dict) and "city" in call.input
        follow = ask + [{"role": "assistant", "content": [b.model_dump(exclude_none=True) for b in first.content]},
                        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": call.id, "content": "Sunny, 21 C"}]}]
        second = await client.messages.create(model=f"on-{kind}", max_tokens=50, tools=[WEATHER], messages=follow)
    assert second.stop_reason in ("end_turn", "max_tokens") and second.content[0].type == "text"


async def test_messages_falls_back_in_its_own_dialect(fleet):
    url, sims = fleet
    faults = sims["ollama"].faults
    faults.status, faults.status_count, faults.paths = 503, 1, ("/v1/messages",)
    async with anthropic.AsyncAnthropic(base_url=url, api_key="x", max_retries=0) as client:
        async with client.messages.stream(model="pair", max_tokens=20,
                                          messages=[{"role": "user", "content": "Hi"}]) as stream:
            final = await stream.get_final_message()
            headers = stream.response.headers
    assert headers["x-router-deployment"] == "pair-backup" and headers["x-router-attempts"] == "2"
    assert final.content[0].text


@pytest.mark.parametrize("kind", ["ollama", "vllm", "llama_cpp_python"])
async def test_a_messages_stream_broken_midway_ends_with_an_anthropic_error_event(fleet, kind):
    url, sims = fleet
    sims[kind].faults.drop_after_chunks = 3
    async with aiohttp.ClientSession() as http:
        async with http.post(url + "/v1/messages", json={
                "model": f"on-{kind}", "max_tokens": 40, "stream": True,
                "messages": [{"role": "user", "content": "Tell me a long story"}]}) as resp:
            assert resp.status == 200
            body = (await resp.read()).decode()
    assert body.startswith("event: message_start")
    last = body.strip().split("\n\n")[-1]
    assert last.startswith("event: error\ndata: ")
    err = json.loads(last.split("data: ", 1)[1])
    assert err["type"] == "error" and err["error"]["type"] in ("api_error", "overloaded_error")
    assert "message_stop" not in body


async def test_messages_errors_use_anthropics_shape(fleet):
    url, _ = fleet
    async with anthropic.AsyncAnthropic(base_url=url, api_key="x", max_retries=0) as client:
        with pytest.raises(anthropic.NotFoundError) as nf:
            await client.messages.create(model="no-such-model", max_tokens=5, messages=[{"role": "user", "content": "Hi"}])
        with pytest.raises(anthropic.BadRequestError) as bad:
            await client.messages.create(model="on-vllm", max_tokens=0, messages=[{"role": "user", "content": "Hi"}])
    assert nf.value.body["type"] == "error" and nf.value.body["error"]["type"] == "not_found_error"
    assert bad.value.body["error"]["type"] == "invalid_request_error" and "max_tokens" in bad.value.body["error"]["message"]


@pytest.mark.parametrize("kind", ["vllm", "ollama", "llama_cpp_python"])
async def test_count_tokens_counts_what_a_chat_would(fleet, kind):
    url, sims = fleet
    msgs = [{"role": "user", "content": "Count the tokens of this sentence, please."}]
    async with anthropic.AsyncAnthropic(base_url=url, api_key="x", max_retries=0) as client:
        counted = await client.messages.count_tokens(model=f"on-{kind}", messages=msgs)
        msg = await client.messages.create(model=f"on-{kind}", max_tokens=5, messages=msgs)
    assert counted.input_tokens > 0
    assert counted.input_tokens == msg.usage.input_tokens


# -- OpenAI Responses -----------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
async def test_responses_answer_from_every_backend_kind(fleet, kind):
    url, sims = fleet
    async with openai.AsyncOpenAI(base_url=url + "/v1", api_key="x", max_retries=0) as client:
        resp = await client.responses.create(model=f"on-{kind}", input="Say hello", instructions="Be brief.",
                                             max_output_tokens=20)
    assert resp.object == "response" and resp.status in ("completed", "incomplete")
    assert resp.output_text
    assert hits(sims[kind], RESPONSES_PATH[kind]) == 1


@pytest.mark.parametrize("kind", KINDS)
async def test_responses_stream_typed_events_from_every_backend_kind(fleet, kind):
    url, sims = fleet
    async with openai.AsyncOpenAI(base_url=url + "/v1", api_key="x", max_retries=0) as client:
        stream = await client.responses.create(model=f"on-{kind}", input="Say hello", max_output_tokens=20, stream=True)
        events = [e async for e in stream]
    types = [e.type for e in events]
    assert types[0] == "response.created" and types[-1] in ("response.completed", "response.incomplete")
    if kind != "llama_cpp_native":  # llama-server's own Responses stream has no sequence numbers: relayed as it is
        assert [e.sequence_number for e in events] == list(range(len(events)))
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert text and text == events[-1].response.output_text


@pytest.mark.parametrize("kind", ["ollama", "vllm", "openai"])
async def test_responses_function_call_round_trip(fleet, kind):
    url, _ = fleet
    tool = {"type": "function", "name": "get_weather", "description": "The weather in a city",
            "parameters": WEATHER["input_schema"]}
    async with openai.AsyncOpenAI(base_url=url + "/v1", api_key="x", max_retries=0) as client:
        first = await client.responses.create(model=f"on-{kind}", input="Weather in Paris?", tools=[tool])
        call = next(o for o in first.output if o.type == "function_call")
        assert call.name == "get_weather" and "city" in json.loads(call.arguments)
        second = await client.responses.create(model=f"on-{kind}", tools=[tool], input=[
            {"role": "user", "content": "Weather in Paris?"},
            {"type": "function_call", "call_id": call.call_id, "name": call.name, "arguments": call.arguments},
            {"type": "function_call_output", "call_id": call.call_id, "output": "Sunny"}])
    assert second.output_text


async def test_responses_refuse_what_needs_a_store(fleet):
    url, _ = fleet
    async with openai.AsyncOpenAI(base_url=url + "/v1", api_key="x", max_retries=0) as client:
        for extra in ({"store": True}, {"previous_response_id": "resp_123"}):
            with pytest.raises(openai.BadRequestError) as info:
                await client.responses.create(model="on-vllm", input="Hi", **extra)
            assert "store" in info.value.message or "previous_response_id" in info.value.message


# -- Ollama's API ---------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
async def test_ollama_chat_from_every_backend_kind(fleet, kind):
    url, sims = fleet
    async with ollama.AsyncClient(host=url) as client:
        resp = await client.chat(model=f"on-{kind}", messages=[{"role": "user", "content": "Say hello"}],
                                 options={"num_predict": 20}, stream=False)
        assert resp.message.role == "assistant" and resp.message.content and resp.done
        parts = [p async for p in await client.chat(model=f"on-{kind}", messages=[{"role": "user", "content": "Say hello"}],
                                                    options={"num_predict": 20}, stream=True)]
        assert parts[-1].done and parts[-1].done_reason in ("stop", "length")
        assert parts[-1].eval_count or kind == "llama_cpp_python"  # its streams carry no usage: none is invented
        assert "".join(p.message.content for p in parts) == resp.message.content
        assert hits(sims[kind], OLLAMA_PATH[kind]) == 2


@pytest.mark.parametrize("kind", KINDS)
async def test_ollama_generate_and_embed_from_every_backend_kind(fleet, kind):
    url, _ = fleet
    async with ollama.AsyncClient(host=url) as client:
        gen = await client.generate(model=f"on-{kind}", prompt="Once upon a time", options={"num_predict": 10})
        assert gen.response and gen.done
        emb = await client.embed(model=f"on-{kind}", input=["one", "two"])
        assert len(emb.embeddings) == 2 and len(emb.embeddings[0]) > 0


async def test_an_open_webui_session(fleet):
    """What Open WebUI does when it connects to an Ollama URL and chats: version, tags, ps, a streamed chat."""
    url, _ = fleet
    async with aiohttp.ClientSession() as http:
        async with http.get(url + "/api/version") as r:
            assert r.status == 200 and (await r.json())["version"]
        async with http.get(url + "/api/tags") as r:
            names = [m["name"] for m in (await r.json())["models"]]
        assert {f"on-{k}" for k in KINDS} <= set(names)
        async with http.get(url + "/api/ps") as r:
            assert r.status == 200 and isinstance((await r.json())["models"], list)
        async with http.post(url + "/api/chat", json={"model": "on-ollama", "messages": [
                {"role": "user", "content": "Hi"}], "options": {"num_predict": 8}}) as r:
            assert r.headers["Content-Type"].startswith("application/x-ndjson")
            lines = [json.loads(x) for x in (await r.read()).splitlines() if x.strip()]
    assert lines[-1]["done"] is True and all(not x["done"] for x in lines[:-1])


async def test_ollama_errors_use_ollamas_shape(fleet):
    url, _ = fleet
    async with ollama.AsyncClient(host=url) as client:
        with pytest.raises(ollama.ResponseError) as info:
            await client.chat(model="no-such-model", messages=[{"role": "user", "content": "Hi"}])
        assert info.value.status_code == 404 and "no-such-model" in info.value.error


# -- rerank -------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["vllm", "llama_cpp_native"])
async def test_rerank_passes_through_to_the_servers_that_serve_it(fleet, kind):
    url, sims = fleet
    async with aiohttp.ClientSession() as http:
        async with http.post(url + "/v1/rerank", json={"model": f"on-{kind}", "query": "capital of France",
                                                       "documents": ["Paris is the capital of France", "Bananas"]}) as r:
            assert r.status == 200, await r.text()
            data = await r.json()
    assert {x["index"] for x in data["results"]} == {0, 1}
    best = max(data["results"], key=lambda x: x["relevance_score"])
    assert best["index"] == 0


async def test_rerank_on_a_server_without_it_is_a_clear_400(fleet):
    url, _ = fleet
    async with aiohttp.ClientSession() as http:
        async with http.post(url + "/rerank", json={"model": "on-ollama", "query": "q", "documents": ["a"]}) as r:
            assert r.status == 400
            err = (await r.json())["error"]
    assert "does not serve" in err["message"] and "native_apis" in err["message"]


async def test_each_door_counts_its_requests_passed_through_or_translated(fleet):
    """/metrics and the [ROUTER] line say which door a request came in by and how it reached its backend."""
    url, _ = fleet
    async with anthropic.AsyncAnthropic(base_url=url, api_key="x", max_retries=0) as client:
        for kind in ("vllm", "vllm", "openai"):
            await client.messages.create(model=f"on-{kind}", max_tokens=5, messages=[{"role": "user", "content": "Hi"}])
    async with aiohttp.ClientSession() as http:
        async with http.get(url + "/metrics") as r:
            text = await r.text()
    assert 'llm_router_door_requests_total{door="messages",status="200",via="native"} 2.0' in text
    assert 'llm_router_door_requests_total{door="messages",status="200",via="translated"} 1.0' in text


async def test_responses_and_ollama_fall_back_in_their_own_dialect(fleet):
    url, sims = fleet
    faults = sims["ollama"].faults
    faults.status, faults.status_count, faults.paths = 503, 2, ("/v1/responses", "/api/chat")
    async with openai.AsyncOpenAI(base_url=url + "/v1", api_key="x", max_retries=0) as client:
        raw = await client.responses.with_raw_response.create(model="pair", input="Hi", max_output_tokens=10,
                                                              stream=True)
        events = [e async for e in raw.parse()]
    assert raw.headers["x-router-deployment"] == "pair-backup" and events[-1].type in ("response.completed",
                                                                                          "response.incomplete")
    async with aiohttp.ClientSession() as http:
        async with http.post(url + "/api/chat", json={"model": "pair", "messages": [{"role": "user", "content": "Hi"}],
                                                      "options": {"num_predict": 8}}) as r:
            assert r.status == 200 and r.headers["x-router-deployment"] == "pair-backup"
            lines = [json.loads(x) for x in (await r.read()).splitlines() if x.strip()]
    assert lines[-1]["done"] is True  # the vLLM backup's answer, translated into Ollama's stream


@pytest.mark.parametrize("kind", ["ollama", "vllm", "llama_cpp_python"])
async def test_responses_and_ollama_streams_broken_midway_end_with_their_dialects_error(fleet, kind):
    url, sims = fleet
    sims[kind].faults.drop_after_chunks = 3
    async with aiohttp.ClientSession() as http:
        async with http.post(url + "/v1/responses", json={"model": f"on-{kind}", "input": "Tell me a long story",
                                                          "max_output_tokens": 40, "stream": True}) as r:
            assert r.status == 200
            body = (await r.read()).decode()
        async with http.post(url + "/api/chat", json={"model": f"on-{kind}", "messages": [
                {"role": "user", "content": "Tell me a long story"}], "options": {"num_predict": 40}}) as r:
            assert r.status == 200
            lines = [json.loads(x) for x in (await r.read()).splitlines() if x.strip()]
    events = [json.loads(e.split("data: ", 1)[1]) for e in body.strip().split("\n\n") if "data: " in e]
    assert events[-1]["type"] == "response.failed" and any(e["type"] == "error" for e in events[-2:])
    assert "error" in lines[-1] and not any(x.get("done") for x in lines)
