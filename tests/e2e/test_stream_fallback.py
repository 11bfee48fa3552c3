"""The point of no return of a stream is the first translated, non-empty byte the client
gets, not the upstream's status line: a 200 stream that ends, or says it failed, before
that falls back like a non-streamed failure would (issue 14)."""

from __future__ import annotations

import aiohttp
import openai
import pytest

from router.config import load_config
from router.simulate import SimulatedBackend
from tests.conftest import start_proxy
from tests.e2e.test_upstream_misbehaviour import ScriptedBackend, text


@pytest.fixture
async def fronted(tmp_path):
    """Scripted primaries (OpenAI-compatible and Ollama) with LiteLLM fallbacks to a simulated vLLM."""
    primary, backup = ScriptedBackend(), SimulatedBackend("vllm", ["m"])
    await primary.start()
    await backup.start()
    (tmp_path / "c.yaml").write_text(f"""
model_list:
  - {{model_name: compat, litellm_params: {{model: openai/m, api_base: "{primary.url}/v1", timeout: 5}}, model_info: {{id: compat-1}}}}
  - {{model_name: olla, litellm_params: {{model: ollama_chat/m, api_base: "{primary.url}", timeout: 5}}, model_info: {{id: olla-1}}}}
  - {{model_name: alone, litellm_params: {{model: ollama_chat/m, api_base: "{primary.url}", timeout: 5}}, model_info: {{id: alone-1}}}}
  - {{model_name: backup, litellm_params: {{model: hosted_vllm/m, api_base: "{backup.base_url}/v1"}}, model_info: {{id: backup-1}}}}
router_settings:
  num_retries: 0
  monitor_interval: 60
  fallbacks: [{{compat: [backup]}}, {{olla: [backup]}}]
""")
    runner, url = await start_proxy(load_config(str(tmp_path / "c.yaml")))
    client = openai.AsyncOpenAI(base_url=url + "/v1", api_key="x", max_retries=0)
    yield primary, backup, client
    await client.close()
    await runner.cleanup()
    await primary.runner.cleanup()
    await backup.stop()


SSE = "text/event-stream"
NDJSON = "application/x-ndjson"


@pytest.mark.parametrize("model, body, content_type", [
    ("compat", "", SSE),  # a 200 with an empty body
    ("compat", "\n\n", SSE),  # only blank lines, then the end
    ("compat", 'data: {"error": {"message": "CUDA out of memory", "type": "InternalServerError", "code": 500}}\n\n', SSE),
    ("compat", "data: {\"id\": \"x\", \"choi", SSE),  # half an event, then the end
    ("compat", ': ping\n\nevent: error\ndata: {"error": {"message": "overloaded"}}\n\n', SSE),  # no output before it
    ("compat", ": ping\n\n: ping\n\n", SSE),  # only comments, then the end
    ("compat", 'event: error\ndata: {"message": "overloaded"}\n\n', SSE),  # an error event by its name
    ("compat", "retry: 100\nid: 5\n\n", SSE),  # fields without data, then the end
    ("compat", '\ufeffdata: {"error": {"message": "CUDA out of memory"}}\n\n', SSE),  # after a BOM
    ("compat", "data: [DONE]\n\n", SSE),  # the end, and nothing before it
    ("compat", 'data: {"error": {"message": "x"}}\r\r', SSE),  # \r line ends
    ("olla", '{"error": "model runner has unexpectedly stopped"}\n', NDJSON),
    ("olla", "", NDJSON),
    ("olla", "{not json\n", NDJSON),
])
async def test_a_stream_that_fails_before_its_first_output_falls_back(fronted, model, body, content_type):
    primary, backup, client = fronted
    primary.reply = text(body, content_type=content_type)
    raw = await client.chat.completions.with_raw_response.create(
        model=model, messages=[{"role": "user", "content": "Hi"}], max_tokens=5, stream=True)
    text_out = "".join([chunk.choices[0].delta.content or "" async for chunk in raw.parse() if chunk.choices])
    assert (raw.headers["x-router-deployment"], raw.headers["x-router-attempts"]) == ("backup-1", "2")
    assert text_out and backup.stats.requests["/v1/chat/completions"] == 1


async def test_a_stream_failing_before_output_with_no_fallback_is_an_error_status_not_a_200(fronted):
    primary, _, client = fronted
    primary.reply = text('{"error": "model runner has unexpectedly stopped"}\n', content_type=NDJSON)
    with pytest.raises(openai.APIStatusError) as info:  # an HTTP error, not a 200 carrying only an error event
        await client.chat.completions.create(model="alone", messages=[{"role": "user", "content": "Hi"}], stream=True)
    assert info.value.status_code == 502 and "model runner has unexpectedly stopped" in info.value.message


async def test_comments_before_the_first_data_and_a_bom_reach_the_client_as_a_normal_stream(fronted):
    """Comments (keep-alive pings) before the first data are held until it comes, then
    relayed with it; a leading BOM is dropped (an SSE parser would read the first field
    name with it, and lose that event)."""
    primary, backup, client = fronted
    event = '{"id":"x","object":"chat.completion.chunk","created":1,"model":"m","choices":[{"index":0,"delta":{"content":"Hello"},"finish_reason":null}]}'
    last = '{"id":"x","object":"chat.completion.chunk","created":1,"model":"m","choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}'
    primary.reply = text(f"\ufeff: ping\n\n: ping\n\ndata: {event}\n\ndata: {last}\n\ndata: [DONE]\n\n", content_type=SSE)
    raw = await client.chat.completions.with_raw_response.create(
        model="compat", messages=[{"role": "user", "content": "Hi"}], stream=True)
    got = "".join([chunk.choices[0].delta.content or "" async for chunk in raw.parse() if chunk.choices])
    assert got == "Hello" and raw.headers["x-router-attempts"] == "1"
    assert backup.stats.requests["/v1/chat/completions"] == 0
    # the bytes themselves: no BOM, the pings, then the events
    async with aiohttp.ClientSession() as s:
        async with s.post(f"{client.base_url}chat/completions", json={"model": "compat", "stream": True,
                                                                      "messages": [{"role": "user", "content": "Hi"}]}) as r:
            body = await r.read()
    assert body.startswith(b": ping\n\n: ping\n\ndata: ") and body.endswith(b"data: [DONE]\n\n")


@pytest.mark.parametrize("body", ['{"error": "model runner crashed"}', ' { "error" : {"message": "CUDA error", "code": 500}}'])
async def test_a_non_streamed_200_whose_body_is_an_error_falls_back(fronted, body):
    primary, backup, client = fronted
    primary.reply = text(body)
    raw = await client.chat.completions.with_raw_response.create(model="compat", messages=[{"role": "user", "content": "Hi"}])
    assert raw.parse().choices[0].message.content
    assert (raw.headers["x-router-deployment"], raw.headers["x-router-attempts"]) == ("backup-1", "2")
