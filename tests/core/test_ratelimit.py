"""The per-client token bucket (sttgate.core.ratelimit): burst, refill, retry-after, independence, bounded table."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sttgate.core.ratelimit import RateLimiter, Verdict


def test_a_burst_then_one_token_per_refill_interval() -> None:
    limiter = RateLimiter(rate=0.1, burst=3, max_clients=10)  # 6 a minute, 3 at once
    assert [limiter.take("a", 0.0).allowed for _ in range(3)] == [True, True, True]
    refused = limiter.take("a", 0.0)
    assert refused == Verdict(False, 10.0) and refused.retry_after_whole_seconds == 10
    assert limiter.take("a", 4.0) == Verdict(False, pytest.approx(6.0))
    assert limiter.take("a", 10.0).allowed
    assert not limiter.take("a", 10.0).allowed


def test_a_quiet_client_refills_up_to_the_burst_only() -> None:
    limiter = RateLimiter(rate=1.0, burst=2, max_clients=10)
    assert limiter.take("a", 0.0).allowed
    assert [limiter.take("a", 1000.0).allowed for _ in range(3)] == [True, True, False]


def test_clients_have_their_own_buckets() -> None:
    limiter = RateLimiter(rate=0.01, burst=1, max_clients=10)
    assert limiter.take("a", 0.0).allowed
    assert not limiter.take("a", 0.0).allowed
    assert limiter.take("b", 0.0).allowed


def test_the_table_forgets_the_least_recently_heard_client() -> None:
    limiter = RateLimiter(rate=0.01, burst=1, max_clients=2)
    limiter.take("a", 0.0)
    limiter.take("b", 1.0)
    limiter.take("a", 2.0)  # a was heard last: b is the one forgotten
    limiter.take("c", 3.0)
    assert len(limiter) == 2
    assert not limiter.take("a", 4.0).allowed  # still remembered, still empty
    assert limiter.take("b", 4.0).allowed  # forgotten: a fresh bucket


def test_a_clock_reading_from_the_past_refills_nothing() -> None:
    limiter = RateLimiter(rate=1.0, burst=1, max_clients=10)
    assert limiter.take("a", 100.0).allowed
    assert not limiter.take("a", 50.0).allowed
    assert not limiter.take("a", 100.5).allowed


@pytest.mark.parametrize("args", [(0.0, 1, 1), (1.0, 0, 1), (1.0, 1, 0)])
def test_nonsense_limits_are_refused(args: tuple[float, int, int]) -> None:
    rate, burst, max_clients = args
    with pytest.raises(ValueError):
        RateLimiter(rate=rate, burst=burst, max_clients=max_clients)


rates = st.sampled_from([0.05, 0.1, 0.5, 1.0, 3.0])
bursts = st.integers(min_value=1, max_value=5)
gaps = st.lists(st.floats(min_value=0.0, max_value=30.0, allow_nan=False), min_size=1, max_size=60)


@given(rates, bursts, gaps)
def test_never_more_than_the_burst_plus_the_refill_in_any_window(rate: float, burst: int, steps: list[float]) -> None:
    limiter = RateLimiter(rate=rate, burst=burst, max_clients=4)
    times, now = [], 0.0
    for step in steps:
        now += step
        times.append(now)
    allowed = [t for t in times if limiter.take("a", t).allowed]
    for i, start in enumerate(allowed):
        for end in allowed[i:]:
            in_window = sum(1 for t in allowed if start <= t <= end)
            assert in_window <= burst + rate * (end - start) + 1e-6


@given(rates, bursts, gaps)
def test_a_refused_client_that_waits_as_told_is_let_through(rate: float, burst: int, steps: list[float]) -> None:
    limiter = RateLimiter(rate=rate, burst=burst, max_clients=4)
    now = 0.0
    for step in steps:
        now += step
        verdict = limiter.take("a", now)
        if not verdict.allowed:
            assert verdict.retry_after > 0
            assert limiter.take("a", now + verdict.retry_after).allowed
            now += verdict.retry_after


@given(st.lists(st.tuples(st.integers(min_value=0, max_value=20), st.floats(min_value=0, max_value=5)), max_size=80))
def test_the_table_stays_within_its_bound(requests: list[tuple[int, float]]) -> None:
    limiter = RateLimiter(rate=1.0, burst=2, max_clients=5)
    now = 0.0
    for client, step in requests:
        now += step
        limiter.take(str(client), now)
        assert len(limiter) <= 5
