"""Any other OpenAI-compatible server (``openai/`` with an ``api_base``): its listing,
nothing more. Such a server holds its model loaded while it runs. Without an
``api_base``, ``openai/`` is OpenAI's own API (``router.backends.hosted.OPENAI``):
hosted, so not probed."""

from __future__ import annotations

from router.backends.base import BackendKind
from router.backends.hosted import OPENAI

KIND = BackendKind("openai", "openai", prefixes=("openai",), always_warm=True, cloud=OPENAI)
