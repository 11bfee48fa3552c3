"""What the background monitor reads from backends: Prometheus gauges, llama.cpp slots, model listings."""

from __future__ import annotations

from router.probes import parse_listing, parse_prometheus_sum, parse_slots

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
