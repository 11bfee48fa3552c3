"""Simulated inference backends: fake Ollama, vLLM, llama.cpp and OpenAI-style servers.

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
with ``GET /__sim/stats``.
"""

from .backend import KINDS, ClientGone, SimulatedBackend, run_simulators
from .core import Faults, Generation, Stats, embed, generate

__all__ = [
    "KINDS",
    "ClientGone",
    "Faults",
    "Generation",
    "SimulatedBackend",
    "Stats",
    "embed",
    "generate",
    "run_simulators",
]
