"""router.costs: a deployment's prices times an answer's counts; unknown stays unknown."""

from __future__ import annotations

import contextlib
import math
import os
from types import MappingProxyType
from typing import Iterator
from unittest import mock

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from router import domain
from router.backends import KINDS
from router.backends.base import BackendKind
from router.costs import NO_PRICE, NO_USAGE, Prices, cost, prices, usd, why_unknown
from router.domain import Deployment

PROPS = settings(max_examples=300, deadline=None, derandomize=bool(os.environ.get("CI")))
CLOUD = BackendKind("cloud-test", "openai", hosted=True)  # as the hosted kinds of issue 18 will be

tokens = st.integers(0, 10**9)
maybe_tokens = st.one_of(st.none(), tokens)
price = st.floats(0, 1e-2, allow_nan=False)  # USD per token
maybe_price = st.one_of(st.none(), price)


@contextlib.contextmanager
def hosted_kind() -> Iterator[None]:
    with mock.patch.object(domain, "KINDS", {**KINDS, CLOUD.name: CLOUD}):
        yield


def dep(kind: str = "vllm", **info: object) -> Deployment:
    return Deployment(id="d", model_name="m", provider=kind, kind=kind, upstream_model="m",
                      api_base="http://127.0.0.1:1/v1", model_info=MappingProxyType(dict(info)))


def priced(kind: str, input_price: float | None, output_price: float | None) -> Deployment:
    info = {}
    if input_price is not None:
        info["input_cost_per_token"] = input_price
    if output_price is not None:
        info["output_cost_per_token"] = output_price
    return dep(kind, **info)


@PROPS
@given(kind=st.sampled_from(sorted(k for k, v in KINDS.items() if not v.hosted)), prompt=maybe_tokens, completion=maybe_tokens)
def test_a_local_deployment_without_prices_costs_nothing_whatever_it_reports(kind, prompt, completion):
    assert prices(dep(kind)) == Prices(0.0, 0.0)
    assert cost(dep(kind), prompt, completion) == 0.0 and why_unknown(dep(kind), prompt, completion) is None


@PROPS
@given(prompt=maybe_tokens, completion=maybe_tokens)
def test_a_hosted_deployment_without_prices_has_an_unknown_cost_unless_it_used_nothing(prompt, completion):
    with hosted_kind():
        d = dep(CLOUD.name)
        assert prices(d) == Prices(None, None)
        if prompt == 0 and completion == 0:
            assert cost(d, prompt, completion) == 0.0
        else:
            assert cost(d, prompt, completion) is None and why_unknown(d, prompt, completion) == NO_PRICE


@PROPS
@given(kind=st.sampled_from(["vllm", CLOUD.name]), a=price, b=price, p=tokens, c=tokens, k=st.integers(0, 1000))
def test_a_priced_answer_costs_price_times_tokens_linearly(kind, a, b, p, c, k):
    with hosted_kind():
        d = priced(kind, a, b)
        assert math.isclose(cost(d, p, c), a * p + b * c, rel_tol=1e-12, abs_tol=1e-18)
        assert math.isclose(cost(d, k * p, k * c), k * cost(d, p, c), rel_tol=1e-9, abs_tol=1e-15)
        assert math.isclose(cost(d, p + k, c + k), cost(d, p, c) + cost(d, k, k), rel_tol=1e-9, abs_tol=1e-15)
        assert why_unknown(d, p, c) is None


@PROPS
@given(kind=st.sampled_from(["vllm", CLOUD.name]), a=maybe_price, b=maybe_price, p=maybe_tokens, c=maybe_tokens)
def test_unknown_propagates_unless_its_factor_is_zero(kind, a, b, p, c):
    """Each side (prompt, completion) is price × tokens: 0 if either is 0, else unknown if
    either is unknown. The cost is unknown if a side is."""
    with hosted_kind():
        d = priced(kind, a, b)
        pa, pb = prices(d)
        hosted = kind == CLOUD.name
        assert (pa, pb) == (a if a is not None else None if hosted else 0.0, b if b is not None else None if hosted else 0.0)
        sides_known = [pr == 0 or n == 0 or (pr is not None and n is not None) for pr, n in ((pa, p), (pb, c))]
        got = cost(d, p, c)
        if all(sides_known):
            assert got is not None and got >= 0 and why_unknown(d, p, c) is None
        else:
            assert got is None and why_unknown(d, p, c) in (NO_PRICE, NO_USAGE)


def test_a_price_on_one_side_only_leaves_the_other_free_locally_and_unknown_when_hosted():
    assert cost(priced("vllm", 1e-6, None), 1000, 500) == 1e-3
    with hosted_kind():
        d = priced(CLOUD.name, 1e-6, None)
        assert cost(d, 1000, 500) is None and why_unknown(d, 1000, 500) == NO_PRICE
        assert cost(d, 1000, 0) == 1e-3  # an embedding: no output, no output price needed


def test_missing_usage_of_a_priced_side_is_no_usage():
    d = priced("vllm", 1e-6, 2e-6)
    assert cost(d, None, 5) is None and why_unknown(d, None, 5) == NO_USAGE
    assert cost(d, None, None) is None and why_unknown(d, None, None) == NO_USAGE


def test_what_is_not_a_price_is_no_price_never_zero():
    for bad in (-1e-6, float("nan"), float("inf"), "0.001", True, [1]):
        d = dep("vllm", input_cost_per_token=bad)
        assert cost(d, 10, 0) is None and why_unknown(d, 10, 0) == NO_PRICE, bad
        assert cost(d, 0, 10) == 0.0  # the output side is still the local default


def test_usd_is_compact():
    assert [usd(x) for x in (0.0, 0.00042, 2.3e-05, 1.5e-07, 12.5, 0.1 + 0.2)] == \
        ["0", "0.00042", "0.000023", "1.5e-07", "12.5", "0.3"]


@PROPS
@given(amount=st.floats(0, 1e6, allow_nan=False))
def test_usd_reads_back_close_to_the_amount(amount):
    assert math.isclose(float(usd(amount)), amount, rel_tol=1e-3, abs_tol=1e-10)


def test_every_cloud_kind_and_openai_without_api_base_have_no_price_unless_configured():
    for name, kind in KINDS.items():
        if kind.hosted:
            assert prices(dep(name)) == Prices(None, None) and cost(dep(name), 10, 10) is None, name
    openai_cloud = Deployment(id="d", model_name="m", provider="openai", kind="openai", upstream_model="gpt-4o",
                              api_base="https://api.openai.com/v1", hosted=True)
    assert cost(openai_cloud, 10, 10) is None
    priced = Deployment(id="d", model_name="m", provider="openai", kind="openai", upstream_model="gpt-4o",
                        api_base="https://api.openai.com/v1", hosted=True,
                        model_info=MappingProxyType({"input_cost_per_token": 2.5e-6, "output_cost_per_token": 1e-5}))
    assert cost(priced, 1000, 100) == pytest.approx(0.0035)
