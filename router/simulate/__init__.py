"""Simulated inference backends: fake Ollama, vLLM, llama.cpp and OpenAI-style servers,
and the hosted Anthropic API.

They speak each real server's wire format (paths, JSON shapes, streaming
framing, error bodies) closely enough to test the router without GPUs, answer
deterministically (same request → same text), and carry fault-injection hooks
and counters for reliability tests::

    b = SimulatedBackend(kind="ollama", models=["llama3.1:8b"], tokens_per_s=20)
    await b.start()                       # b.base_url == "http://127.0.0.1:PORT"
    b.faults.status, b.faults.status_count = 503, 1
    ...
    await b.stop()

Faults can also be set over HTTP (``POST /__sim/faults``) and counters read
with ``GET /__sim/stats``. Hooks (see :class:`Faults`): ``status`` /
``status_count`` with ``retry_after``, ``hang`` / ``hang_count``,
``first_byte_delay``, ``garbage`` / ``garbage_count`` (200 with a proxy's
HTML page or a broken stream line), and inside streams ``drop_after_chunks`` /
``drop_count`` and ``hang_after_chunks`` / ``hang_after_count``; ``paths``
limits them all. ``await b.pause_listening()`` / ``await b.resume_listening()``
play a killed and restarted server on the same port.

Beside chat, each kind serves the native dialects its real server serves, in
that server's bytes (:mod:`router.simulate.doors`): Anthropic Messages on
vLLM, llama-server and Ollama (``count_tokens`` not on Ollama), OpenAI
Responses on the same three, rerank on vLLM and llama-server. A chat that
offers tools makes the simulated model call one (:mod:`router.simulate.tools`),
streamed in each server's shape; after a tool's result it answers with text.

The kind ``anthropic`` is the hosted Messages API (:mod:`router.simulate.anthropic_api`):
its own ids, event sequence and error bodies, ``x-api-key`` checked when the backend
has an ``api_key``, ``anthropic-version`` required.

Prompt caching (:mod:`router.simulate.prefix`), off unless ``prefix_cache_tokens``
is set: each server keeps one prompt cache — vLLM, llama-server and Ollama an
LRU of ``prefix_cache_tokens // cache_block_tokens`` blocks (16 tokens, vLLM's
default) keyed by chained hashes of the prompt's simulated token ids;
llama-cpp-python only its previous prompt, matched token by token. Prompts
render prefix-stably (tools first, as a seed of the hash chain, then one line per
message), so a conversation's next turn finds its earlier turn's blocks. A
request's cached tokens are its longest run of leading blocks still held (never
the last prompt token: every server evaluates it to sample); once seated, it
spends ``uncached / prefill_tokens_per_s`` seconds of prefill before the first
token, on top of ``ttft``, then inserts its blocks (evicting the least recently
used, a prompt's tail before its head); decode runs at ``tokens_per_s``. Answers
report the cached tokens as the real servers do: vLLM
``usage.prompt_tokens_details.cached_tokens`` when non-zero (its
``--enable-prompt-tokens-details``; the Anthropic door's
``cache_read_input_tokens``), llama-server ``timings.cache_n`` / ``prompt_n`` and
``usage.prompt_tokens_details.cached_tokens`` (always, 0 without a cache),
Ollama only through ``prompt_eval_duration`` (``prompt_eval_count`` is the whole
prompt, except in 0.30.0: set ``version="0.30.0"``), llama-cpp-python not at
all. ``stats.prompt_tokens`` / ``stats.cached_tokens`` (and
``prefix_cache_blocks`` in ``GET /__sim/stats``) are the servers' true figures;
vLLM's ``/metrics`` also shows the cache (``vllm:cache_config_info`` with
``block_size`` and ``num_gpu_blocks``, ``vllm:prefix_cache_queries_total`` /
``vllm:prefix_cache_hits_total``)::

    b = SimulatedBackend(kind="vllm", models=["m"], prefix_cache_tokens=65536, prefill_tokens_per_s=4000)

Load and model metadata are exposed as the real servers do: vLLM ``GET /metrics``
(``max_num_seqs``), llama-server ``GET /slots``, ``/metrics`` and ``/props``
(``slots``), Ollama ``/api/ps``, ``/api/tags`` and ``/api/show``; sizes come
from the model name or ``model_meta`` (see :mod:`router.simulate.load`).
"""

from .backend import KINDS, ClientGone, SimulatedBackend, run_simulators
from .core import Faults, Generation, ModelMeta, Stats, embed, generate, model_meta
from .load import Scheduler, Seat

__all__ = [
    "KINDS",
    "ClientGone",
    "Faults",
    "Generation",
    "ModelMeta",
    "Scheduler",
    "Seat",
    "SimulatedBackend",
    "Stats",
    "embed",
    "generate",
    "model_meta",
    "run_simulators",
]
