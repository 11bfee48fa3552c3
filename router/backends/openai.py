"""Any other OpenAI-compatible server (``openai/`` with an ``api_base``): its listing,
nothing more. Such a server holds its model loaded while it runs."""

from __future__ import annotations

from router.backends.base import BackendKind

KIND = BackendKind("openai", "openai", prefixes=("openai",), always_warm=True)
