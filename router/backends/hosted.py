"""The hosted APIs an existing LiteLLM config may name, one row each.

Each cloud is a ``BackendKind`` whose ``cloud`` says where it lives when the
config gives no ``api_base``, and which environment variables LiteLLM reads for
its key and its base URL (taken from LiteLLM's source: ``litellm/main.py``,
``litellm_core_utils/get_llm_provider_logic.py`` and each provider's
``llms/<name>/chat/transformation.py``). ``api_base`` and ``api_key`` in the
config always win; then the first variable that is set; then the default base.

A hosted deployment is never probed (a cloud's health is learnt from its answers:
failures cool it down, 429s rate-limit it) and has no local cost default
(``router.costs``). The OpenAI-compatible clouds share the ``openai`` wire
adapter; Anthropic and Azure OpenAI have their own (``router.providers``).

``UNSUPPORTED``: LiteLLM providers we do not speak. A deployment naming one is
disabled with a warning, not refused (``router.config``).
"""

from __future__ import annotations

from router.backends.base import BackendKind, Cloud


def _cloud(name: str, base: str, keys: tuple[str, ...], bases: tuple[str, ...] = (), wire: str = "openai",
           native_apis: tuple[str, ...] = (), **extra: str) -> BackendKind:
    return BackendKind(name, wire, prefixes=(name,), always_warm=True, hosted=True, native_apis=native_apis,
                       cloud=Cloud(base, keys, bases, **extra))


KINDS = (
    _cloud("groq", "https://api.groq.com/openai/v1", ("GROQ_API_KEY",), ("GROQ_API_BASE",)),
    _cloud("together_ai", "https://api.together.xyz/v1",
           ("TOGETHER_API_KEY", "TOGETHER_AI_API_KEY", "TOGETHERAI_API_KEY", "TOGETHER_AI_TOKEN"),
           ("TOGETHER_AI_API_BASE",)),
    _cloud("openrouter", "https://openrouter.ai/api/v1", ("OPENROUTER_API_KEY", "OR_API_KEY"),
           ("OPENROUTER_API_BASE",)),
    _cloud("deepseek", "https://api.deepseek.com/beta", ("DEEPSEEK_API_KEY",), ("DEEPSEEK_API_BASE",)),
    _cloud("mistral", "https://api.mistral.ai/v1", ("MISTRAL_API_KEY",), ("MISTRAL_API_BASE",)),
    _cloud("fireworks_ai", "https://api.fireworks.ai/inference/v1",
           ("FIREWORKS_API_KEY", "FIREWORKS_AI_API_KEY", "FIREWORKSAI_API_KEY", "FIREWORKS_AI_TOKEN"),
           ("FIREWORKS_API_BASE",), model_prefix="accounts/fireworks/models/"),
    _cloud("xai", "https://api.x.ai/v1", ("XAI_API_KEY",), ("XAI_API_BASE",)),
    _cloud("cerebras", "https://api.cerebras.ai/v1", ("CEREBRAS_API_KEY",), ("CEREBRAS_API_BASE",)),
    _cloud("deepinfra", "https://api.deepinfra.com/v1/openai", ("DEEPINFRA_API_KEY",), ("DEEPINFRA_API_BASE",)),
    _cloud("anthropic", "https://api.anthropic.com", ("ANTHROPIC_API_KEY",),
           ("ANTHROPIC_API_BASE", "ANTHROPIC_BASE_URL"), wire="anthropic", native_apis=("messages", "count_tokens")),
    # Azure OpenAI has no default host: each resource has its own (api_base or AZURE_API_BASE).
    _cloud("azure", "", ("AZURE_OPENAI_API_KEY", "AZURE_API_KEY"), ("AZURE_API_BASE",), wire="azure",
           version_env="AZURE_API_VERSION", default_version="2025-02-01-preview"),
)

# OpenAI's own API: the ``openai`` kind (router.backends.openai) without an api_base.
OPENAI = Cloud("https://api.openai.com/v1", ("OPENAI_API_KEY",), ("OPENAI_BASE_URL", "OPENAI_API_BASE"))

# LiteLLM provider prefixes we do not speak: such a deployment is disabled, with a warning.
UNSUPPORTED = frozenset({
    "bedrock", "bedrock_converse", "sagemaker", "sagemaker_chat", "vertex_ai", "vertex_ai_beta", "gemini",
    "palm", "cohere", "cohere_chat", "huggingface", "replicate", "databricks", "azure_ai", "azure_text",
    "watsonx", "watsonx_text", "ai21", "ai21_chat", "nlp_cloud", "aleph_alpha", "petals", "baseten",
    "cloudflare", "voyage", "perplexity", "anyscale", "predibase", "clarifai", "friendliai", "github",
    "nvidia_nim", "sambanova", "snowflake", "volcengine", "dashscope", "moonshot", "novita", "nebius",
    "lm_studio", "llamafile", "text-completion-openai", "text-completion-codestral", "codestral",
    "custom_openai", "openai_like", "litellm_proxy", "oci", "jina_ai", "infinity", "triton", "featherless_ai",
    "nscale", "hyperbolic", "lambda_ai", "galadriel", "topaz", "assemblyai", "elevenlabs", "deepgram",
})
