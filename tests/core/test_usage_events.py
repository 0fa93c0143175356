"""Usage events, sans I/O: which cycles a ledger statement adds, their ids, the event document, the retry schedule."""

from __future__ import annotations

import random
from datetime import UTC, datetime

from hypothesis import given
from hypothesis import strategies as st

from sttgate.core.usage_events import RetryPolicy, StripeValue, UsageEvent, added_cycles


@given(st.integers(0, 10_000), st.integers(0, 10_000))
def test_a_statement_adds_exactly_the_cycles_above_the_stored_count(before: int, after: int) -> None:
    added = added_cycles(before, after)
    assert list(added) == list(range(before + 1, after + 1))
    assert len(added) == max(0, after - before)


@given(st.integers(0, 200), st.integers(0, 2**32))
def test_the_backoff_is_jittered_within_its_ceiling(failures: int, seed: int) -> None:
    policy = RetryPolicy(0.5, 30.0)
    delay = policy.delay(failures, random.Random(seed))
    if failures == 0:
        assert delay == 0.0
    else:
        ceiling = min(30.0, 0.5 * 2 ** min(failures - 1, 30))
        assert ceiling / 2 <= delay <= ceiling


def test_the_event_as_the_sinks_see_it() -> None:
    event = UsageEvent(
        id="s:2",
        seq=7,
        account_id="acct",
        external_id=None,
        api_key_id="key",
        session_id="s",
        cycle=2,
        provider="assemblyai",
        model="universal-streaming-english",
        basis="audio",
        seconds=5,
        price_nanos=208_333,
        charged_at=datetime(2026, 11, 29, tzinfo=UTC),
    )
    assert event.subject == "acct"
    assert event.data() == {
        "account": "acct",
        "key": "key",
        "session": "s",
        "cycle": 2,
        "provider": "assemblyai",
        "model": "universal-streaming-english",
        "basis": "audio",
        "seconds": 5,
        "price_usd": "0.000208333",
    }
    assert (event.stripe_value(StripeValue.SECONDS), event.stripe_value(StripeValue.NANOS)) == (5, 208_333)
