"""errors: a backend's Retry-After is parsed without ever raising and within bounds."""

from __future__ import annotations

import math
from datetime import datetime, timezone
from email.utils import format_datetime

from hypothesis import given, settings, strategies as st

from router.errors import MAX_RETRY_AFTER, UpstreamRateLimited, _retry_after, retry_after, upstream_error

NOW = 1_700_000_000.0


def test_retry_after_values_are_clamped_and_nonsense_is_absent():
    assert _retry_after("30") == 30 and _retry_after(" 2.5 ") == 2.5 and _retry_after("0") == 0
    assert _retry_after("99999999999") == MAX_RETRY_AFTER
    for bad in ("1e400", "inf", "-inf", "nan", "-5", "soon", "", "1_000x", None):
        assert _retry_after(bad) is None, bad


def test_an_http_date_is_seconds_from_now_clamped():
    def date(offset: float) -> str:
        return format_datetime(datetime.fromtimestamp(NOW + offset, timezone.utc), usegmt=True)

    assert _retry_after(date(120), now=NOW) == 120
    assert _retry_after(date(-120), now=NOW) == 0  # already past: retry now
    assert _retry_after(date(10 * 365 * 86400), now=NOW) == MAX_RETRY_AFTER
    assert _retry_after("Fri, 31 Dec 9999 23:59:59 GMT", now=NOW) == MAX_RETRY_AFTER
    assert _retry_after("Sun, 06 Nov 1994 08:49:37 GMT", now=NOW) == 0


@settings(max_examples=500)
@given(st.one_of(st.text(), st.from_regex(r"\A\s*[-+]?[0-9.eE]{1,20}\s*\Z"),
                 st.datetimes(timezones=st.just(timezone.utc)).map(lambda d: format_datetime(d, usegmt=True))))
def test_any_retry_after_string_parses_within_bounds(value):
    seconds = _retry_after(value)
    assert seconds is None or 0 <= seconds <= MAX_RETRY_AFTER
    header = UpstreamRateLimited("x", seconds).headers()
    assert not header or 1 <= int(header["Retry-After"]) <= MAX_RETRY_AFTER


@given(st.floats(allow_nan=True, allow_infinity=True))
def test_the_retry_after_header_is_always_whole_seconds_within_bounds(seconds):
    assert 1 <= int(retry_after(seconds)["Retry-After"]) <= MAX_RETRY_AFTER


def test_an_upstream_429_with_an_absurd_retry_after_is_a_bounded_429():
    err = upstream_error(429, b'{"error": "slow down"}', "vllm", "1e400")
    assert err.status == 429 and err.retry_after is None and err.headers() == {}
    err = upstream_error(429, b'{"error": "slow down"}', "vllm", "99999999999")
    assert err.retry_after == MAX_RETRY_AFTER and err.headers() == {"Retry-After": str(int(MAX_RETRY_AFTER))}
    assert math.isfinite(err.retry_after)


def test_a_retry_after_of_zero_is_relayed_as_the_shortest_wait_not_dropped() -> None:
    err = upstream_error(429, b'{"error": "slow down"}', "vllm", "0")
    assert err.headers() == {"Retry-After": "1"}
