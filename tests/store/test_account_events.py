"""The account-event outbox on both databases (docs/contract.md#account-events): recorded once per occurrence,
claimed by one deliverer at a time, retried, and the figures budgets are enforced from."""

from __future__ import annotations

from datetime import timedelta

from sttgate.core.outcomes import SessionKind
from sttgate.store import Store
from sttgate.store.accounts import KeyOptions
from sttgate.store.database import utcnow

PRICE = 208_333
HOOK = "http://127.0.0.1:9/events"


async def _open(store: Store, account_id: str, session_id: str) -> None:
    await store.open_session(
        session_id=session_id,
        account_id=account_id,
        kind=SessionKind.WEBSOCKET,
        provider="assemblyai",
        gateway_id="gw",
        min_balance_nanos=PRICE,
        lease_ttl=30.0,
    )


async def test_a_crossing_records_balance_low_once(store: Store) -> None:
    acct = await store.create_account(name="a", balance_nanos=5 * PRICE)
    await store.update_account(acct.id, webhook_url=HOOK, low_balance_nanos=2 * PRICE)
    await _open(store, acct.id, "s1")  # holds one cycle (docs/billing.md#holds): 4 left
    for _ in range(4):
        assert await store.charge_cycles("s1", acct.id, 1, PRICE)
    assert not await store.charge_cycles("s1", acct.id, 1, PRICE)
    assert not await store.charge_cycles("s1", acct.id, 1, PRICE)
    events = await store.events.list_events(acct.id)
    assert [e["id"] for e in events] == [f"balance.low:{acct.id}:1", f"balance.exhausted:{acct.id}:2"]
    assert events[0]["data"]["balance_usd"] == "0.000208333"  # 2 → 1 cycle left: the crossing


async def test_the_hold_an_opening_takes_records_balance_low_when_it_crosses(store: Store) -> None:
    """The first hold is debited by the slot's own transaction (on PostgreSQL one that crosses the threshold leaves
    the one-statement slot for the transaction that records the event): recorded once, with the balance after it."""
    acct = await store.create_account(name="a", balance_nanos=3 * PRICE)
    await store.update_account(acct.id, webhook_url=HOOK, low_balance_nanos=2 * PRICE + 1)
    await _open(store, acct.id, "s1")  # 3 → 2 cycles: below the threshold
    await _open(store, acct.id, "s2")  # 2 → 1: already below, nothing more
    events = await store.events.list_events(acct.id)
    assert [e["id"] for e in events] == [f"balance.low:{acct.id}:1"]
    assert events[0]["data"]["balance_usd"] == "0.000416666"
    assert (await store.get_account(acct.id)).balance_nanos == PRICE  # type: ignore[union-attr]


async def test_claim_deliver_and_retry(store: Store) -> None:
    acct = await store.create_account(name="a", balance_nanos=2 * PRICE)
    await store.update_account(acct.id, webhook_url=HOOK, low_balance_nanos=PRICE)
    await _open(store, acct.id, "s1")  # holds one cycle: PRICE left
    assert await store.charge_cycles("s1", acct.id, 1, PRICE)  # balance.low
    claimed = await store.events.claim(10, 30)
    assert [(e.id, e.url, e.attempts) for e in claimed] == [(f"balance.low:{acct.id}:1", HOOK, 0)]
    assert claimed[0].secret == await store.webhook_secret(acct.id)
    assert await store.events.claim(10, 30) == []  # claimed: nobody else takes it
    await store.events.failed(claimed[0].id, "HTTP 500", 0)
    again = await store.events.claim(10, 30)
    assert [(e.id, e.attempts, e.body) for e in again] == [(claimed[0].id, 1, claimed[0].body)]
    await store.events.delivered(again[0].id)
    assert await store.events.claim(10, 30) == []
    (listed,) = await store.events.list_events(acct.id)
    assert listed["delivered_at"] is not None and listed["attempts"] == 2


async def test_budget_thresholds_and_expiring_keys_are_recorded_once(store: Store) -> None:
    acct = await store.create_account(name="a")
    await store.update_account(acct.id, webhook_url=HOOK, monthly_budget_nanos=10 * PRICE)
    now = utcnow()
    await _open(store, acct.id, "s1")
    await store.end_session(
        "s1", audio_seconds=40, cycles=8, cost_nanos=8 * PRICE, close_code=1000, close_reason="", closed_by="client"
    )
    spend = await store.events.month_spend([acct.id], now)
    assert spend[acct.id].month_cost_nanos == 8 * PRICE and spend[acct.id].budget_nanos == 10 * PRICE
    assert await store.events.record_budget_thresholds(spend, now) == 2  # 50 % and 80 %
    assert await store.events.record_budget_thresholds(spend, now) == 0
    month = now.strftime("%Y-%m")
    ids = [e["id"] for e in await store.events.list_events(acct.id)]
    assert ids == [f"budget.threshold:{acct.id}:{month}:50", f"budget.threshold:{acct.id}:{month}:80"]

    soon = await store.create_key(acct.id, KeyOptions(expires_in_seconds=3 * 86400))
    await store.create_key(acct.id, KeyOptions(expires_in_seconds=30 * 86400))  # not within 7 days
    revoked = await store.create_key(acct.id, KeyOptions(expires_in_seconds=86400))
    await store.revoke_key(revoked.id)
    assert await store.events.record_expiring_keys(now) == 1
    assert await store.events.record_expiring_keys(now + timedelta(seconds=1)) == 0
    expiring = [e for e in await store.events.list_events(acct.id) if e["type"] == "key.expiring"]
    assert [e["data"]["key_id"] for e in expiring] == [soon.id]
