"""llm-router: an OpenAI-compatible routing proxy for local inference servers."""

__version__ = "0.1.0"
