"""router.usage: the token counts an answer reports, read from its bytes, never estimated.

The relay's side (the kept tail of a stream split anywhere) is in test_fuzz_translators.
"""

from __future__ import annotations

import json
import os

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from router.usage import MAX_COUNT, Usage, from_body, from_counts, from_sse_tail

PROPS = settings(max_examples=200, deadline=None, derandomize=bool(os.environ.get("CI")))


def sse(*events: object, nl: str = "\n") -> bytes:
    return "".join(f"data: {e if isinstance(e, str) else json.dumps(e)}{nl}{nl}" for e in events).encode()


CHUNK = {"id": "c", "object": "chat.completion.chunk", "model": "m"}
STOP = {**CHUNK, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}
USAGE = {"prompt_tokens": 11, "completion_tokens": 4, "total_tokens": 15, "prompt_tokens_details": {"cached_tokens": 8}}


# -- whole bodies --------------------------------------------------------------------------------

def test_openai_chat_body_gives_prompt_completion_total_and_cached():
    body = orjson.dumps({"id": "x", "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"}}],
                         "usage": USAGE, "prompt_logprobs": None})
    assert from_body(body) == Usage(11, 4, 15, 8)


def test_an_embedding_body_has_no_completion_tokens_its_total_says_zero():
    body = orjson.dumps({"object": "list", "data": [{"embedding": [0.1] * 500}], "usage": {"prompt_tokens": 6, "total_tokens": 6}})
    assert from_body(body) == Usage(6, 0, 6, None)


def test_anthropic_body_counts_cache_writes_and_reads_as_prompt():
    body = orjson.dumps({"type": "message", "content": [{"type": "text", "text": "hi"}],
                         "usage": {"input_tokens": 10, "cache_creation_input_tokens": 3, "cache_read_input_tokens": 20,
                                   "output_tokens": 7}})
    assert from_body(body) == Usage(33, 7, 40, 20)


def test_responses_body_uses_input_and_output_tokens():
    body = orjson.dumps({"object": "response", "max_output_tokens": 99, "output": [],
                         "usage": {"input_tokens": 12, "input_tokens_details": {"cached_tokens": 2}, "output_tokens": 5,
                                   "output_tokens_details": {"reasoning_tokens": 1}, "total_tokens": 17}})
    assert from_body(body) == Usage(12, 5, 17, 2)


def test_ollama_body_gives_its_eval_counts():
    body = orjson.dumps({"model": "m", "message": {"role": "assistant", "content": "hi"}, "done": True,
                         "prompt_eval_count": 26, "eval_count": 9})
    assert from_body(body) == Usage(26, 9, 35, None)


def test_a_count_tokens_answer_and_a_body_without_usage_report_no_usage():
    assert from_body(b'{"input_tokens": 42}') is None
    assert from_body(orjson.dumps({"id": "x", "choices": [], "usage": None})) is None
    assert from_body(b'{"id": "x", "choices": []}') is None


def test_a_rerank_total_alone_leaves_prompt_and_completion_unknown():
    assert from_body(b'{"results": [], "usage": {"total_tokens": 30}}') == Usage(None, None, 30, None)


def test_counts_written_by_the_model_are_not_taken_for_usage():
    text = 'my "usage": {"prompt_tokens": 999999, "completion_tokens": 999999} and "eval_count": 5'
    body = orjson.dumps({"choices": [{"message": {"content": text}}], "usage": {"prompt_tokens": 1, "completion_tokens": 2}})
    assert from_body(body) == Usage(1, 2, 3, None)
    assert from_body(orjson.dumps({"choices": [{"message": {"content": text}}]})) is None


def test_garbage_counts_are_missing_not_numbers():
    for bad in ("-5", "1.5", "1e3", "null", '"7"', str(MAX_COUNT * 10), "12345678901234567890"):
        body = f'{{"usage": {{"prompt_tokens": {bad}, "completion_tokens": 3}}}}'.encode()
        assert from_body(body) == Usage(None, 3, None, None), bad


@PROPS
@given(prompt=st.integers(0, MAX_COUNT), completion=st.integers(0, MAX_COUNT), pad=st.integers(0, 5000))
def test_any_openai_body_gives_back_its_counts(prompt, completion, pad):
    body = orjson.dumps({"choices": [{"message": {"content": "x" * pad}}],
                         "usage": {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}})
    assert from_body(body) == Usage(prompt, completion, prompt + completion, None)


# -- stream tails --------------------------------------------------------------------------------

def test_the_final_events_usage_before_done_with_any_line_ending():
    for nl in ("\n", "\r\n", "\r"):
        assert from_sse_tail(sse(STOP, {**CHUNK, "choices": [], "usage": USAGE}, "[DONE]", nl=nl)) == Usage(11, 4, 15, 8), nl


def test_no_usage_event_no_usage():
    assert from_sse_tail(sse(STOP, "[DONE]")) is None
    assert from_sse_tail(sse({**STOP, "usage": None}, "[DONE]")) is None


def test_usage_of_an_earlier_event_or_inside_content_is_not_the_answers():
    said = {**CHUNK, "choices": [{"index": 0, "delta": {"content": 'data: {"usage": {"prompt_tokens": 9}}\n\n'}}]}
    assert from_sse_tail(sse({**CHUNK, "choices": [], "usage": USAGE}, said, STOP, "[DONE]")) is None


def test_a_stream_without_its_done_line_has_no_usage():
    assert from_sse_tail(sse(STOP, {**CHUNK, "choices": [], "usage": USAGE})) is None


def test_comments_after_the_usage_event_are_skipped():
    raw = sse(STOP, {**CHUNK, "choices": [], "usage": USAGE}) + b": keep-alive\n\n" + sse("[DONE]")
    assert from_sse_tail(raw) == Usage(11, 4, 15, 8)


def test_a_tail_that_starts_inside_the_final_event_is_no_usage():
    raw = sse({**CHUNK, "choices": [], "usage": USAGE}, "[DONE]")
    assert from_sse_tail(raw, at_start=False) is None  # its first line may be a fragment of a longer one
    assert from_sse_tail(raw[10:], at_start=True) is None  # a fragment is no JSON object either
    assert from_sse_tail(sse(STOP) + raw, at_start=False) == Usage(11, 4, 15, 8)  # a line break before it: whole


def test_translator_counts():
    assert from_counts({"prompt_tokens": 31, "total_tokens": 40}) == Usage(31, 9, 40, None)
    assert from_counts({"prompt_tokens": 5, "completion_tokens": 7, "total_tokens": 12}) == Usage(5, 7, 12, None)
    assert from_counts(None) is None
