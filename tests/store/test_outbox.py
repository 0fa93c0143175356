"""The usage outbox on both backends: one event per charged cycle, written with the charge; delivery by lease."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import pytest
from sqlalchemy import update

from sttgate.core.outcomes import ClosedBy, SessionKind
from sttgate.store import NotFoundError, SessionProgress, Store
from sttgate.store.database import utcnow
from sttgate.store.tables import accounts

PRICE = 208_333


async def _open(store: Store, account_id: str, session_id: str) -> None:
    await store.open_session(
        session_id=session_id,
        account_id=account_id,
        kind=SessionKind.WEBSOCKET,
        provider="assemblyai",
        gateway_id="gw",
        min_balance_nanos=PRICE,
        lease_ttl=30.0,
        model="universal-streaming-english",
        rate_usd_per_hour="0.15",
        basis="audio",
        api_key_id="key-1",
    )


async def _end(store: Store, session_id: str, cycles: int) -> None:
    await store.end_session(
        session_id,
        audio_seconds=cycles * 5.0,
        cycles=cycles,
        cost_nanos=cycles * PRICE,
        close_code=1000,
        close_reason="",
        closed_by=ClosedBy.CLIENT,
    )


async def test_each_charged_cycle_is_one_event_and_a_refused_charge_none(store: Store) -> None:
    await store.outbox.register_sinks(["ce"])
    prepaid = await store.create_account(name="prepaid", balance_nanos=4 * PRICE)  # one is held while "pre" is open
    postpaid = await store.create_account(name="postpaid")
    await _open(store, prepaid.id, "pre")
    await _open(store, postpaid.id, "post")
    await store.accept_sessions([("post", utcnow())])
    assert await store.charge_cycles("pre", prepaid.id, 2, PRICE)
    assert not await store.charge_cycles("pre", prepaid.id, 2, PRICE)  # refused: no event
    assert await store.charge_cycles("pre", prepaid.id, 1, PRICE)
    assert await store.charge_cycles("post", postpaid.id, 1, PRICE)  # postpaid: the flush books it
    await store.flush_progress([SessionProgress("post", 9.0, 2, 2 * PRICE), SessionProgress("pre", 9.0, 1, PRICE)])
    await store.flush_progress([SessionProgress("post", 4.0, 1, PRICE)])  # totals never go down: nothing new
    await _end(store, "post", 4)
    await _end(store, "pre", 3)

    events = await store.outbox.pending("ce", 100)
    assert [e.id for e in events] == ["pre:1", "pre:2", "pre:3", "post:1", "post:2", "post:3", "post:4"]
    assert {e.price_nanos for e in events} == {PRICE}
    first = events[0]
    assert (first.account_id, first.api_key_id, first.provider, first.model, first.basis, first.seconds) == (
        prepaid.id,
        "key-1",
        "assemblyai",
        "universal-streaming-english",
        "audio",
        5,
    )
    assert first.subject == prepaid.id and first.charged_at.tzinfo is not None
    usages = [await store.usage(account.id) for account in (prepaid, postpaid)]
    assert sum(row.cycles for usage in usages for row in usage.sessions) == len(events)


async def test_a_charge_rolled_back_leaves_no_event(store: Store) -> None:
    """The debit succeeds but the session row is missing: the transaction (debit and events) is rolled back."""
    await store.outbox.register_sinks(["ce"])
    account = await store.create_account(name="prepaid", balance_nanos=3 * PRICE)
    with pytest.raises(NotFoundError):
        await store.charge_cycles("no-such-session", account.id, 1, PRICE)
    assert await store.outbox.pending("ce", 10) == []
    assert (await store.usage(account.id)).balance_nanos == 3 * PRICE


async def test_the_external_id_is_read_when_the_event_is_sent(store: Store) -> None:
    await store.outbox.register_sinks(["ce"])
    acct = await store.create_account(name="later linked")
    await _open(store, acct.id, "s")
    await store.flush_progress([SessionProgress("s", 5.0, 1, PRICE)])
    async with store.database.write() as conn:
        await conn.execute(update(accounts).where(accounts.c.id == acct.id).values(external_id="cus_123"))
    [event] = await store.outbox.pending("ce", 10)
    assert event.subject == "cus_123"


async def test_one_exporter_holds_a_sink_at_a_time_and_delivery_empties_it(store: Store) -> None:
    await store.outbox.register_sinks(["ce", "stripe"])
    acct = await store.create_account(name="a")
    await _open(store, acct.id, "s")
    await store.flush_progress([SessionProgress("s", 15.0, 3, 3 * PRICE)])

    claims = await asyncio.gather(*(store.outbox.claim("ce", f"gw-{i}", 30.0) for i in range(4)))
    assert sum(claims) == 1
    holder = f"gw-{claims.index(True)}"
    assert await store.outbox.claim("ce", holder, 30.0)  # renewed by its holder
    other = "gw-x"
    assert not await store.outbox.claim("ce", other, 30.0)
    await store.outbox.release("ce", holder)
    assert await store.outbox.claim("ce", other, 30.0)

    events = await store.outbox.pending("ce", 2)
    assert [e.id for e in events] == ["s:1", "s:2"]
    await store.outbox.delivered("ce", [e.seq for e in events])
    await store.outbox.failed("ce", "HTTP 500")
    status = {s.name: s for s in await store.outbox.status(["ce"])}
    assert status["ce"].pending == 1 and status["ce"].sent_total == 2 and status["ce"].last_error == "HTTP 500"
    assert status["ce"].oldest_pending_at is not None and status["ce"].last_success_at is not None
    assert status["stripe"].pending == 3  # each sink has its own pending events

    assert await store.outbox.replay("ce", utcnow() - timedelta(hours=1)) == 2  # the two sent, pending again
    assert [e.id for e in await store.outbox.pending("ce", 10)] == ["s:1", "s:2", "s:3"]
