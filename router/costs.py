"""What one answer cost, in USD: a deployment's prices times the answer's usage.

Prices are ``model_info.input_cost_per_token`` and ``output_cost_per_token`` (USD per
token; the configuration validates them, and copies LiteLLM's older
``litellm_params`` spelling there). Where one is not configured, a local deployment
(one that runs on the team's own servers) costs 0 per token and a hosted one
(``Deployment.hosted``: a cloud API, openai/ without api_base included) has an unknown price.

A cost is never invented: ``cost`` is ``None`` when a side that matters is unknown.
A side is prompt (input) or completion (output), worth price × tokens: it is 0 when
either factor is 0 (a free side needs no count; an embedding's output needs no
price), a number when both are known, and unknown otherwise.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from router.domain import Deployment

INPUT_PRICE = "input_cost_per_token"
OUTPUT_PRICE = "output_cost_per_token"
NO_PRICE, NO_USAGE = "no_price", "no_usage"  # why a cost is unknown (``why_unknown``)


class Prices(NamedTuple):
    """USD per token; ``None``: unknown."""

    input: float | None
    output: float | None


def _price(value: Any, default: float | None) -> float | None:
    if value is None:
        return default
    if type(value) is bool or not isinstance(value, (int, float)) or not value >= 0 or value == float("inf"):
        return None  # not a price (config.py rejects these; should one get here, it is no price, not 0)
    return float(value)


def prices(dep: Deployment) -> Prices:
    """``dep``'s prices: configured, else 0 for a local deployment and unknown for a hosted one."""
    info = dep.model_info
    default = None if dep.hosted or dep.backend.hosted else 0.0
    return Prices(_price(info.get(INPUT_PRICE), default), _price(info.get(OUTPUT_PRICE), default))


def _side(price: float | None, tokens: int | None) -> float | None:
    if price == 0 or tokens == 0:
        return 0.0
    if price is None or tokens is None:
        return None
    return price * tokens


def cost(dep: Deployment, prompt_tokens: int | None, completion_tokens: int | None) -> float | None:
    """USD for an answer of ``dep`` with these token counts (``None``: not reported);
    ``None`` when unknown (see the module's docstring)."""
    info = dep.model_info
    if INPUT_PRICE not in info and OUTPUT_PRICE not in info and not (dep.hosted or dep.backend.hosted):
        return 0.0  # the usual case, first: a local deployment without prices
    p = prices(dep)
    prompt = _side(p.input, prompt_tokens)
    completion = _side(p.output, completion_tokens)
    if prompt is None or completion is None:
        return None
    return prompt + completion


def why_unknown(dep: Deployment, prompt_tokens: int | None, completion_tokens: int | None) -> str | None:
    """Why ``cost`` is ``None`` for these arguments: ``NO_PRICE`` (a price that matters is
    not configured; the fix is in the configuration, so it is named first) or
    ``NO_USAGE`` (the answer did not report a count that matters); ``None`` if known."""
    p = prices(dep)
    sides = ((p.input, prompt_tokens), (p.output, completion_tokens))
    if any(price is None and tokens != 0 for price, tokens in sides):
        return NO_PRICE
    if any(tokens is None and price != 0 for price, tokens in sides):
        return NO_USAGE
    return None


def usd(amount: float) -> str:
    """A cost for a log line: a plain decimal to 10 places without trailing zeros (``0``,
    ``0.00042``, ``12.5``); below a millionth of a dollar, 4 significant digits (``1.5e-07``)."""
    if amount == 0:
        return "0"
    if amount < 1e-6:
        return f"{amount:.4g}"
    return f"{amount:.10f}".rstrip("0").rstrip(".")
