"""What the background monitor reads from backends: Prometheus gauges, llama.cpp slots, model listings."""

from __future__ import annotations

import asyncio
import os

from hypothesis import example, given, settings, strategies as st

from router.backends.llama_cpp_native import parse_slots
from router.backends.vllm import parse_prometheus_sum
from router.probes import parse_listing

VLLM_METRICS = """# HELP vllm:num_requests_running Number of requests in model execution batches.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{engine="0",model_name="meta-llama/Llama-2-13b-chat-hf"} 3.0
vllm:num_requests_running{engine="1",model_name="meta-llama/Llama-2-13b-chat-hf"} 1.0
# HELP vllm:num_requests_waiting Number of requests waiting to be processed.
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{engine="0",model_name="meta-llama/Llama-2-13b-chat-hf"} 2.0
vllm:num_requests_waiting_by_reason{reason="capacity"} 9.0
"""


def test_prometheus_gauges_are_summed_over_labels_and_prefix_lookalikes_ignored():
    assert parse_prometheus_sum(VLLM_METRICS, "vllm:num_requests_running") == 4.0
    assert parse_prometheus_sum(VLLM_METRICS, "vllm:num_requests_waiting") == 2.0
    assert parse_prometheus_sum(VLLM_METRICS, "vllm:gpu_cache_usage_perc") is None


def test_llama_cpp_slots_old_and_new_formats():
    assert parse_slots([{"id": 0, "is_processing": True}, {"id": 1, "is_processing": False}]) == (2, 1)
    assert parse_slots([{"id": 0, "state": 1}, {"id": 1, "state": 0}, {"id": 2, "state": 0}]) == (3, 1)
    assert parse_slots({"error": "slots endpoint disabled"}) is None


def test_listings_give_names_sizes_and_contexts():
    tags = {"models": [{"name": "llama3.1:8b", "details": {"parameter_size": "8.0B"}},
                       {"name": "smollm:135m", "details": {"parameter_size": "134.52M"}}]}
    names, sizes, _ = parse_listing(tags, "ollama")
    assert names == {"llama3.1:8b", "smollm:135m"} and sizes["llama3.1:8b"] == 8.0 and round(sizes["smollm:135m"], 3) == 0.135
    models = {"data": [{"id": "tiny.gguf", "meta": {"n_params": 1_500_000_000, "n_ctx_train": 4096}},
                       {"id": "meta-llama/Llama-2-13b-chat-hf", "max_model_len": 4096}]}
    names, sizes, contexts = parse_listing(models, "openai")
    assert sizes == {"tiny.gguf": 1.5} and contexts == {"tiny.gguf": 4096, "meta-llama/Llama-2-13b-chat-hf": 4096}


def test_a_sample_with_a_timestamp_is_read_as_its_value_not_its_timestamp():
    text = ("# TYPE vllm:num_requests_running gauge\n"
            'vllm:num_requests_running{model_name="m a"} 3 1712345678000\n'
            'vllm:num_requests_running{model_name="m b"} 1.0 1712345678000\n'
            "# TYPE vllm:num_requests_waiting gauge\n"
            "vllm:num_requests_waiting 2 1712345678000\n")
    assert parse_prometheus_sum(text, "vllm:num_requests_running") == 4.0
    assert parse_prometheus_sum(text, "vllm:num_requests_waiting") == 2.0


def test_a_malformed_line_elsewhere_or_a_nan_sample_does_not_hide_or_poison_the_metric():
    text = ("vllm:num_requests_running 3 1712345678000\n"
            "vllm:num_requests_running{engine=\"1\"} NaN\n"
            "this is { not prometheus\n"
            "vllm:num_requests_waiting 2\n")
    assert parse_prometheus_sum(text, "vllm:num_requests_running") == 3.0
    assert parse_prometheus_sum(text, "vllm:num_requests_waiting") == 2.0


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(
        st.sampled_from(["data", "models", "id", "name", "model", "details", "meta", "parameter_size", "n_params",
                         "max_model_len", "n_ctx_train", "x"]), inner, max_size=5),
    max_leaves=20)


@settings(max_examples=300, deadline=None, derandomize=bool(os.environ.get("CI")))
@given(data=json_values, wire=st.sampled_from(["openai", "ollama", "llama_cpp"]))
@example(data={"data": 5}, wire="openai")  # raised TypeError and ended the monitor for good
@example(data={"models": [{"name": "a", "details": {"parameter_size": 7}}]}, wire="ollama")
def test_a_listing_of_any_shape_never_raises(data, wire):
    names, sizes, contexts = parse_listing(data, wire)
    assert all(isinstance(n, str) for n in names) and set(sizes) <= names and set(contexts) <= names


async def test_the_monitor_outlives_a_failing_round():
    """Any unexpected error in a round ended the monitor task: health states froze
    until a restart. Now the round is logged and the next one comes."""
    from router.probes import Monitor
    from router.state import StateTable

    monitor = Monitor(None, [], StateTable(), interval=0.001)  # type: ignore[arg-type]
    rounds = 0

    async def flaky() -> None:
        nonlocal rounds
        rounds += 1
        if rounds <= 2:
            raise TypeError("'int' object is not iterable")

    monitor.probe_all = flaky  # type: ignore[method-assign]
    task = asyncio.create_task(monitor.run())
    try:
        while rounds < 5:
            await asyncio.sleep(0.005)
            assert not task.done(), task.exception()
    finally:
        task.cancel()
