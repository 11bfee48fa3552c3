"""What differs between the kinds of backend server: one ``BackendKind`` per kind,
one module each, found through a registry (like the strategies and the adapters).

A kind says which wire format the server speaks (``router.providers`` has one
adapter per format), which LiteLLM model prefixes name it, how the monitor probes
it (its model listing, or only whether it answers; what it says about load and
loaded models), whether it serves one request at a time, whether it keeps its
model loaded while it runs, and how to make it load one. The rest of the router
asks the kind; nothing else tests ``Deployment.kind``.
"""

from __future__ import annotations

from types import MappingProxyType
from typing import Mapping

from router.backends import hosted, llama_cpp_native, llama_cpp_python, ollama, openai, vllm
from router.backends.base import BackendKind

KINDS: Mapping[str, BackendKind] = MappingProxyType(
    {k.name: k for k in (ollama.KIND, openai.KIND, vllm.KIND, llama_cpp_python.KIND, llama_cpp_native.KIND,
                         *hosted.KINDS)})

# Provider kinds we know how to talk to, and the wire format each one speaks.
WIRE_FORMATS: Mapping[str, str] = MappingProxyType({k.name: k.wire for k in KINDS.values()})

# LiteLLM model prefixes we accept, and the provider kind each implies.
PREFIX_KINDS: Mapping[str, str] = MappingProxyType({p: k.name for k in KINDS.values() for p in k.prefixes})

# LiteLLM model prefixes of providers we do not speak: disabled with a warning, not refused.
UNSUPPORTED_PREFIXES = hosted.UNSUPPORTED

__all__ = ["KINDS", "PREFIX_KINDS", "UNSUPPORTED_PREFIXES", "WIRE_FORMATS", "BackendKind"]
