"""llama-cpp-python's server: OpenAI-compatible, one model under any name, one
request at a time (it even cuts a running stream short when a second request
arrives, with its default ``interrupt_requests``): the router queues for it instead
(``max_parallel_requests`` 1 unless configured).

Its ``/v1/models`` takes the model lock too, so a probe of it would cut a running
stream short: ours or another client's. Its
listing tells nothing we need, so its probe only checks that the server answers
(FastAPI's 404 for ``/health`` does not touch the model)."""

from __future__ import annotations

from router.backends.base import BackendKind

KIND = BackendKind("llama_cpp_python", "openai", liveness_only=True, any_name=True, serial=1, always_warm=True)
