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
