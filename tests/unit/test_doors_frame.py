"""The frame every front door shares (``router.doors``): which deployments get the
body passed through and which a translation, what a 404 on a native path teaches,
the chained stream translators, and the stream helpers of ``router.doors.base``."""

from __future__ import annotations

import os
from types import MappingProxyType

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from router import doors
from router.config import ConfigError, load_config
from router.doors import DOORS, Chain, Native, NotServed, Translated, Unserved, adapter, learn_not_native, serves_natively
from router.doors.base import Lines, OpenAIEvents
from router.domain import Deployment
from router.providers.base import Context
from router.providers.ollama import StreamTranslator as OllamaToOpenAI

PROPS = settings(max_examples=200, deadline=None, derandomize=bool(os.environ.get("CI")),
                 suppress_health_check=[HealthCheck.too_slow])
CTX = Context(model="m", id="msg_1", created=1700000000, include_usage=True)


def dep(kind: str, dep_id: str = "d", **info) -> Deployment:
    base = "http://127.0.0.1:1" if kind == "ollama" else "http://127.0.0.1:1/v1"
    return Deployment(id=dep_id, model_name="m", provider=kind, kind=kind, upstream_model="m", api_base=base,
                      model_info=MappingProxyType(info))


@pytest.mark.parametrize("kind, native", [
    ("ollama", {"messages", "responses", "ollama_chat", "ollama_generate", "ollama_embed", "ollama_embeddings"}),
    ("vllm", {"messages", "count_tokens", "responses", "rerank"}),
    ("llama_cpp_native", {"messages", "count_tokens", "responses", "rerank"}),
    ("llama_cpp_python", set()),
    ("openai", set()),
])
def test_each_kind_serves_its_servers_dialects_natively_and_the_rest_is_translated(kind, native):
    d = dep(kind)
    assert {name for name, door in DOORS.items() if serves_natively(d, door)} == native
    for name, door in DOORS.items():
        a = adapter(door, d)
        expected = Native if name in native else Unserved if door.pivot is None else Translated
        assert type(a) is expected, name


def test_model_info_native_apis_overrides_the_kind():
    plain = dep("openai", native_apis=["messages", "rerank"])
    assert type(adapter(DOORS["messages"], plain)) is Native
    assert type(adapter(DOORS["rerank"], plain)) is Native
    assert type(adapter(DOORS["responses"], plain)) is Translated
    none = dep("vllm", native_apis=[])
    assert type(adapter(DOORS["messages"], none)) is Translated
    assert type(adapter(DOORS["rerank"], none)) is Unserved


def test_native_requests_go_to_the_servers_root_path_with_only_the_model_changed():
    body = {"model": "alias", "max_tokens": 5, "messages": [{"role": "user", "content": "Hi"}], "x-extra": [1]}
    url, payload = adapter(DOORS["messages"], dep("vllm")).upstream_request("messages", body, dep("vllm"), "real")
    assert url == "http://127.0.0.1:1/v1/messages"
    assert orjson.loads(payload) == {**body, "model": "real"}
    url, _ = adapter(DOORS["ollama_chat"], dep("ollama")).upstream_request("ollama_chat", {"model": "a", "messages": []},
                                                                            dep("ollama"), "real")
    assert url == "http://127.0.0.1:1/api/chat"


def test_a_door_without_translation_on_a_server_without_the_endpoint_is_skipped_not_counted():
    with pytest.raises(NotServed) as info:
        adapter(DOORS["rerank"], dep("ollama")).upstream_request("rerank", {}, dep("ollama"), "m")
    assert info.value.retryable and not info.value.counts and info.value.status == 400
    assert "native_apis" in info.value.message


def test_a_404_on_a_native_path_switches_that_deployment_to_translation_unless_declared():
    d, declared = dep("ollama", "old-ollama"), dep("ollama", "declared", native_apis=["messages"])
    door = DOORS["messages"]
    assert learn_not_native(adapter(door, d), d, "messages")
    assert type(adapter(door, d)) is Translated and type(adapter(door, dep("ollama", "other"))) is Native
    assert not learn_not_native(adapter(door, declared), declared, "messages")  # the operator said so: an error
    assert not learn_not_native(adapter(door, d), d, "messages")  # already translated: a real 404
    assert not learn_not_native(adapter(DOORS["rerank"], dep("vllm")), dep("vllm"), "rerank")  # nothing to translate to
    doors._LEARNT[("old-ollama", "messages")] -= doors.RELEARN_AFTER + 1  # later: the native path is tried again
    assert type(adapter(door, d)) is Native and ("old-ollama", "messages") not in doors._LEARNT


def test_config_refuses_an_unknown_native_api(tmp_path):
    (tmp_path / "c.yaml").write_text(
        "model_list:\n  - model_name: m\n    litellm_params: {model: openai/m, api_base: 'http://127.0.0.1:1/v1'}\n"
        "    model_info: {native_apis: [messages, chat]}\n")
    with pytest.raises(ConfigError) as info:
        load_config(str(tmp_path / "c.yaml"))
    assert "c.yaml:4: model_list[0].model_info.native_apis: must be a list" in str(info.value)


OLLAMA_STREAM = (b'{"model":"m","created_at":"2024-01-01T00:00:00Z","message":{"role":"assistant","content":"Hel"},"done":false}\n'
                 b'{"model":"m","created_at":"2024-01-01T00:00:00Z","message":{"role":"assistant","content":"lo"},"done":false}\n'
                 b'{"model":"m","created_at":"2024-01-01T00:00:00Z","message":{"role":"assistant","content":""},'
                 b'"done_reason":"stop","done":true,"prompt_eval_count":7,"eval_count":2}\n')


def _through(translator, data: bytes, cuts: list[int]) -> bytes:
    out, last = bytearray(), 0
    for cut in sorted(set(cuts)) + [len(data)]:
        out += translator.feed(data[last:cut])
        last = cut
    return bytes(out + translator.close())


@PROPS
@given(st.lists(st.integers(min_value=0, max_value=len(OLLAMA_STREAM)), max_size=12))
def test_a_chained_translation_gives_the_same_stream_for_any_split(cuts):
    """Ollama NDJSON → OpenAI SSE → the door's dialect: the chain is as good as its links."""
    door = DOORS["messages"]
    whole = _through(Chain(OllamaToOpenAI("chat", CTX), door.pivot_stream(CTX)), OLLAMA_STREAM, [])
    split = Chain(OllamaToOpenAI("chat", CTX), door.pivot_stream(CTX))
    assert _through(split, OLLAMA_STREAM, cuts) == whole
    assert split.finished and not split.failed and split.usage["prompt_tokens"] == 7
    assert b"event: message_stop" in whole and b'"text":"Hel"' in whole


def test_a_chain_cut_short_fails_in_the_doors_dialect():
    chain = Chain(OllamaToOpenAI("chat", CTX), DOORS["messages"].pivot_stream(CTX))
    out = chain.feed(OLLAMA_STREAM[:120]) + chain.close()
    assert chain.failed and out.rstrip().split(b"\n\n")[-1].startswith(b"event: error\ndata: ")


@PROPS
@given(st.lists(st.binary(max_size=40).filter(lambda b: b"\n" not in b), max_size=8),
       st.lists(st.integers(min_value=0, max_value=400), max_size=10), st.booleans())
def test_lines_gives_every_line_whole_for_any_split(lines, cuts, crlf):
    end = b"\r\n" if crlf else b"\n"
    data = b"".join(line + end for line in lines)
    splitter, got, last = Lines(), [], 0
    for cut in sorted(c for c in set(cuts) if c <= len(data)) + [len(data)]:
        got += splitter.feed(data[last:cut])
        last = cut
    # only the line ending goes: one \r before the \n, whatever the line holds
    assert got == [line if crlf or not line.endswith(b"\r") else line[:-1] for line in lines]
    assert splitter.rest() == b""


def test_openai_events_reads_data_lines_to_done_and_refuses_garbage():
    events = OpenAIEvents()
    got = list(events.feed(b': comment\n\ndata: {"a":1}\n\ndata:{"b":2}\r\n\r\ndata: [DONE]\n\ndata: {"c":3}\n\n'))
    assert got == [{"a": 1}, {"b": 2}] and events.done
    with pytest.raises(ValueError):
        list(OpenAIEvents().feed(b"data: {not json\n\n"))
