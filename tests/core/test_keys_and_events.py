"""What a key may do (sttgate.core.keys) and account-event ids and bodies (sttgate.core.account_events)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

from hypothesis import given
from hypothesis import strategies as st

from sttgate.core import account_events as ev
from sttgate.core.keys import allows, expired, parse_providers, stored_providers, within_key_limit

NOW = datetime(2026, 11, 29, 12, tzinfo=UTC)
names = st.lists(st.sampled_from(["assemblyai", "elevenlabs", "deepgram"]), min_size=1)


def test_expiry_is_the_first_refused_moment():
    assert not expired(None, NOW)
    assert not expired(NOW + timedelta(microseconds=1), NOW)
    assert expired(NOW, NOW) and expired(NOW - timedelta(days=1), NOW)


@given(providers=st.none() | names, asked=st.sampled_from(["assemblyai", "elevenlabs", "deepgram"]))
def test_the_allow_list_round_trips_and_decides(providers, asked):
    stored = parse_providers(stored_providers(providers))
    assert stored == (None if providers is None else tuple(dict.fromkeys(providers)))
    assert allows(stored, asked) == (providers is None or asked in providers)


@given(live=st.integers(0, 50), limit=st.none() | st.integers(0, 50))
def test_the_keys_own_limit(live, limit):
    assert within_key_limit(live, limit) == (limit is None or live < limit)


@given(low=st.none() | st.integers(0, 100), before=st.integers(0, 100), debit=st.integers(0, 100))
def test_a_crossing_is_seen_by_exactly_one_debit(low, before, debit):
    after = before - debit
    assert ev.crossed_low(low, before, after) == (low is not None and after < low <= before)


def test_ids_name_the_occurrence_and_bodies_follow_standard_webhooks():
    assert ev.balance_event_id(ev.EventType.BALANCE_LOW, "acct", 3) == "balance.low:acct:3"
    assert ev.budget_threshold_id("acct", "2026-11", 80) == "budget.threshold:acct:2026-11:80"
    assert ev.key_expiring_id("k", NOW) == "key.expiring:k:2026-11-29T12:00:00+00:00"
    body = json.loads(ev.body("id-1", ev.EventType.KEY_EXPIRING, NOW, {"key_id": "k"}))
    assert body == {"id": "id-1", "type": "key.expiring", "timestamp": NOW.isoformat(), "data": {"key_id": "k"}}
