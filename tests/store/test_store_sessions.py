"""Stream slots, prepaid charges, the ledger, the reaper and usage, on both backends.

Races use several Store instances (one engine each) on one database, as several gateway processes would.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta, timezone

import pytest
from sqlalchemy import insert, select, update

from sttgate.admin import account_view, usage_document
from sttgate.core import refusals
from sttgate.core.billing import LedgerWrite
from sttgate.core.money import cycle_price_nanos, usd_to_nanos
from sttgate.core.outcomes import ClosedBy
from sttgate.providers import names
from sttgate.store import NotFoundError, SessionEnd, SessionProgress, SlotOutcome, Store
from sttgate.store.tables import sessions, tasks

ASSEMBLYAI_CYCLE = cycle_price_nanos("0.15")  # 208_333
ELEVENLABS_CYCLE = cycle_price_nanos("0.39")  # 541_667


@pytest.fixture
async def gateways(db_url: str) -> AsyncIterator[list[Store]]:
    """Four independent stores (engines, pools) on one database: four gateway processes."""
    stores = [await Store.connect(db_url, migrate=i == 0) for i in range(4)]
    try:
        yield stores
    finally:
        for s in stores:
            await s.close()


async def _open(
    store: Store,
    account_id: str,
    *,
    kind: str = "websocket",
    provider: str = "assemblyai",
    gateway_id: str = "gw-1",
    lease_ttl: float = 30.0,
    min_balance_nanos: int = 0,
    accept: bool = True,
) -> str:
    """Take a slot and, unless ``accept`` is false (a handshake still under way), accept it as the gateway does once
    the client has its 101."""
    session_id = str(uuid.uuid4())
    outcome = await store.open_session(
        session_id=session_id,
        account_id=account_id,
        kind=kind,
        provider=provider,
        gateway_id=gateway_id,
        min_balance_nanos=min_balance_nanos,
        lease_ttl=lease_ttl,
    )
    if outcome is not SlotOutcome.OPENED:
        raise _REFUSALS[outcome]()  # as the gateway's handshake does
    if accept:
        await store.accept_sessions([(session_id, datetime.now(UTC))])
    return session_id


_REFUSALS = {
    SlotOutcome.TOO_MANY_STREAMS: refusals.too_many_streams,
    SlotOutcome.INSUFFICIENT_BALANCE: refusals.insufficient_balance,
}


async def _usage(store: Store, account_id: str, **window: datetime) -> dict:
    """The usage document, as ``/api/v2/usage`` and the CLI build it."""
    return usage_document(await store.usage(account_id, **window), names())


async def _end(store: Store, session_id: str, **totals: float) -> None:
    await store.end_session(
        session_id,
        audio_seconds=totals.get("audio_seconds", 0.0),
        cycles=int(totals.get("cycles", 0)),
        cost_nanos=int(totals.get("cost_nanos", 0)),
        close_code=1000,
        close_reason="",
        closed_by="client",
    )


async def _row(store: Store, session_id: str):
    async with store.engine.connect() as conn:
        return (await conn.execute(select(sessions).where(sessions.c.id == session_id))).one()


async def _balance(store: Store, account_id: str) -> int | None:
    return (await _usage(store, account_id))["balance_usd"]


async def test_slot_limit_holds_under_a_race(gateways: list[Store]) -> None:
    acct = await gateways[0].create_account(name="Racer", max_streams=3)

    async def attempt(i: int) -> str | None:
        try:
            return await _open(gateways[i % len(gateways)], acct.id, gateway_id=f"gw-{i % len(gateways)}")
        except refusals.Refusal as refusal:
            assert refusal.code == "too_many_streams"
            return None

    results = await asyncio.gather(*(attempt(i) for i in range(12)))
    opened = [r for r in results if r is not None]
    assert len(opened) == 3

    with pytest.raises(refusals.Refusal) as exc:
        await _open(gateways[1], acct.id)
    assert exc.value.code == "too_many_streams"

    await _end(gateways[2], opened[0])
    freed = await _open(gateways[3], acct.id)  # the ended session's slot is free at once
    with pytest.raises(refusals.Refusal):
        await _open(gateways[0], acct.id)
    assert (await _row(gateways[0], freed)).ended_at is None


async def test_expired_lease_frees_a_slot_and_renewal_keeps_it(store: Store) -> None:
    acct = await store.create_account(name="Leases", max_streams=1)
    stale = await _open(store, acct.id, lease_ttl=-1.0)  # its gateway stopped renewing long ago
    live = await _open(store, acct.id, lease_ttl=-1.0)  # the stale one does not count
    await store.renew_leases([live], lease_ttl=60.0)
    with pytest.raises(refusals.Refusal) as exc:
        await _open(store, acct.id)
    assert exc.value.status == 429
    assert (await _row(store, stale)).lease_expires_at < (await _row(store, live)).lease_expires_at
    await store.renew_leases([], lease_ttl=60.0)
    ended = (await _row(store, stale)).lease_expires_at
    await store.end_sessions([SessionEnd(stale, 0.0, 0, 0, 1000, "", ClosedBy.CLIENT)])
    await store.renew_leases([stale, "no-such-session"], lease_ttl=60.0)  # an ended session is not renewed
    assert (await _row(store, stale)).lease_expires_at == ended


async def test_zero_max_streams_refuses_everything(store: Store) -> None:
    acct = await store.create_account(name="Nothing", max_streams=0)
    with pytest.raises(refusals.Refusal) as exc:
        await _open(store, acct.id)
    assert exc.value.code == "too_many_streams"


async def test_balance_check_comes_after_the_slot_check(store: Store) -> None:
    acct = await store.create_account(name="Poor", max_streams=1, balance_nanos=ASSEMBLYAI_CYCLE - 1)
    with pytest.raises(refusals.Refusal) as exc:
        await _open(store, acct.id, min_balance_nanos=ASSEMBLYAI_CYCLE)
    assert exc.value.code == "insufficient_balance"

    await store.update_account(acct.id, top_up_nanos=1)
    await _open(store, acct.id, min_balance_nanos=ASSEMBLYAI_CYCLE)
    await store.update_account(acct.id, set_balance_nanos=0)
    with pytest.raises(refusals.Refusal) as exc:
        await _open(store, acct.id, min_balance_nanos=ASSEMBLYAI_CYCLE)
    assert exc.value.code == "too_many_streams"  # 429 before 402

    postpaid = await store.create_account(name="Postpaid")
    await _open(store, postpaid.id, min_balance_nanos=ASSEMBLYAI_CYCLE)


async def test_unknown_account_cannot_open(store: Store) -> None:
    with pytest.raises(NotFoundError):
        await _open(store, "no-such-account")


async def test_prepaid_charges_race_never_below_zero(gateways: list[Store]) -> None:
    price = ELEVENLABS_CYCLE
    start = 25 * price + 123
    acct = await gateways[0].create_account(name="Prepaid", max_streams=10, balance_nanos=start)
    session_ids = [await _open(gateways[i % 4], acct.id, provider="elevenlabs") for i in range(5)]
    wants = [1 + i % 3 for i in range(60)]  # 120 cycles wanted, 25 affordable

    async def charge(i: int) -> bool:
        return await gateways[i % 4].charge_cycles(session_ids[i % 5], acct.id, wants[i], price)

    results = await asyncio.gather(*(charge(i) for i in range(len(wants))))
    charged = sum(w for w, ok in zip(wants, results, strict=True) if ok)
    assert 23 <= charged <= 25  # the last few cycles may not fit a 2- or 3-cycle charge

    async with gateways[0].engine.connect() as conn:
        rows = (await conn.execute(select(sessions).where(sessions.c.account_id == acct.id))).all()
    assert sum(r.cycles for r in rows) == charged
    assert sum(r.cost_nanos for r in rows) == charged * price
    balance = account_view(await gateways[1].get_account(acct.id))["balance_usd"]
    assert balance is not None
    from sttgate.core.money import usd_to_nanos

    assert usd_to_nanos(balance) == start - charged * price >= 0

    # Whatever is left cannot pay a cycle it does not cover, and nothing moves when it cannot pay.
    left = start - charged * price
    assert await gateways[2].charge_cycles(session_ids[0], acct.id, left // price + 1, price) is False
    assert usd_to_nanos(account_view(await gateways[1].get_account(acct.id))["balance_usd"]) == left


async def test_charge_exactly_the_last_cycle(store: Store) -> None:
    acct = await store.create_account(name="Exact", balance_nanos=2 * ASSEMBLYAI_CYCLE)
    sid = await _open(store, acct.id)
    assert await store.charge_cycles(sid, acct.id, 2, ASSEMBLYAI_CYCLE) is True
    assert await _balance(store, acct.id) == "0"
    assert await store.charge_cycles(sid, acct.id, 1, ASSEMBLYAI_CYCLE) is False
    row = await _row(store, sid)
    assert (row.cycles, row.cost_nanos) == (2, 2 * ASSEMBLYAI_CYCLE)


async def test_postpaid_charge_writes_nothing_and_flush_records_totals(store: Store) -> None:
    acct = await store.create_account(name="Postpaid")
    sid = await _open(store, acct.id)
    assert await store.charge_cycles(sid, acct.id, 1, ASSEMBLYAI_CYCLE) is True
    assert (await _row(store, sid)).cycles == 0

    await store.flush_progress([SessionProgress(sid, 7.5, 2, 2 * ASSEMBLYAI_CYCLE)])
    row = await _row(store, sid)
    assert (row.audio_seconds, row.cycles, row.cost_nanos) == (7.5, 2, 2 * ASSEMBLYAI_CYCLE)

    other = await _open(store, acct.id)
    await store.flush_progress(
        [SessionProgress(sid, 6.0, 1, ASSEMBLYAI_CYCLE), SessionProgress(other, 1.0, 1, ASSEMBLYAI_CYCLE)]
    )
    assert (await _row(store, sid)).cycles == 2  # a late, smaller total never lowers what was written
    assert (await _row(store, other)).cycles == 1
    await store.flush_progress([])


async def test_end_session_records_the_close(store: Store) -> None:
    acct = await store.create_account(name="Ends")
    sid = await _open(store, acct.id)
    await store.end_session(
        sid,
        audio_seconds=3.2,
        cycles=1,
        cost_nanos=ASSEMBLYAI_CYCLE,
        close_code=4002,
        close_reason="insufficient balance",
        closed_by="gateway",
    )
    row = await _row(store, sid)
    assert row.ended_at is not None and row.ended_at.tzinfo is not None
    assert (row.close_code, row.close_reason, row.closed_by, row.cycles) == (4002, "insufficient balance", "gateway", 1)
    await store.end_session(
        sid,
        audio_seconds=3.2,
        cycles=1,
        cost_nanos=ASSEMBLYAI_CYCLE,
        close_code=1000,
        close_reason="",
        closed_by="client",
    )
    assert (await _row(store, sid)).close_code == 4002  # the first ending stands
    with pytest.raises(NotFoundError):
        await _end(store, "no-such-session")
    with pytest.raises(ValueError):
        await store.end_session(
            sid, audio_seconds=0, cycles=0, cost_nanos=0, close_code=None, close_reason=None, closed_by="someone"
        )


async def test_end_sessions_ends_a_batch_in_one_call_and_names_the_unknown(store: Store) -> None:
    acct = await store.create_account(name="Batch", max_streams=2)
    first, second = await _open(store, acct.id), await _open(store, acct.id)
    missing = await store.end_sessions(
        [
            SessionEnd(first, 3.2, 1, ASSEMBLYAI_CYCLE, 1000, "", ClosedBy.CLIENT),
            SessionEnd("no-such-session", 0.0, 0, 0, None, None, ClosedBy.GATEWAY),
            SessionEnd(second, 0.5, 0, 0, 4002, "refused", ClosedBy.GATEWAY),
        ]
    )
    assert missing == {"no-such-session"}
    rows = [await _row(store, sid) for sid in (first, second)]
    assert [(r.close_code, r.closed_by, r.cycles, r.ended_at is not None) for r in rows] == [
        (1000, "client", 1, True),
        (4002, "gateway", 0, True),
    ]
    assert await _open(store, acct.id)  # both slots are free again


async def test_reaper_closes_dead_sessions_and_keeps_their_cycles(store: Store) -> None:
    acct = await store.create_account(name="Crash", max_streams=10, balance_nanos=10**9)
    expired = await _open(store, acct.id, gateway_id="gw-dead", lease_ttl=-1.0)
    assert await store.charge_cycles(expired, acct.id, 3, ASSEMBLYAI_CYCLE)
    mine = await _open(store, acct.id, gateway_id="gw-dead", kind="pull", lease_ttl=-1.0)
    others = await _open(store, acct.id, gateway_id="gw-alive")
    now = datetime.now(UTC)
    async with store.engine.begin() as conn:
        await conn.execute(
            insert(tasks).values(
                id=mine,
                account_id=acct.id,
                audio_url="rtmp://x/live",
                callback_url="https://x/hook",
                provider="assemblyai",
                params="",
                status="running",
                stop_requested=False,
                created_at=now,
                started_at=now,
            )
        )

    reaped = await store.reap_dead_sessions()
    assert sorted(reaped) == sorted([expired, mine])
    row = await _row(store, expired)
    assert (row.closed_by, row.cycles, row.cost_nanos) == ("gateway_crash", 3, 3 * ASSEMBLYAI_CYCLE)
    assert row.ended_at is not None
    assert (await _row(store, others)).ended_at is None
    async with store.engine.connect() as conn:
        task = (await conn.execute(select(tasks).where(tasks.c.id == mine))).one()
    assert task.status == "gateway_shutdown" and task.ended_at is not None

    assert await store.reap_dead_sessions() == []  # nothing reaped twice

    # A stalled gateway that comes back still records the real end and its totals.
    await store.end_session(
        expired,
        audio_seconds=14.0,
        cycles=3,
        cost_nanos=3 * ASSEMBLYAI_CYCLE,
        close_code=1000,
        close_reason="",
        closed_by="client",
    )
    row = await _row(store, expired)
    assert (row.closed_by, row.audio_seconds) == ("client", 14.0)


async def test_concurrent_reapers_close_each_session_once(gateways: list[Store]) -> None:
    acct = await gateways[0].create_account(name="Crash", max_streams=50)
    dead = {await _open(gateways[0], acct.id, lease_ttl=-1.0) for _ in range(20)}
    results = await asyncio.gather(*(g.reap_dead_sessions() for g in gateways))
    flat = [sid for r in results for sid in r]
    assert sorted(flat) == sorted(dead)


async def test_holds_race_never_below_zero_and_every_nano_is_a_cycle_a_hold_or_the_balance(
    gateways: list[Store],
) -> None:
    """docs/billing.md#holds on four gateways at once: each session's writes record its held cycle and take the next
    hold, charge when it has none; the balance never goes below zero, and start = balance + cost + held throughout;
    the ends refund what is held."""
    price = ASSEMBLYAI_CYCLE
    start = 30 * price + 7
    acct = await gateways[0].create_account(name="Holds", max_streams=10, balance_nanos=start)
    sids = [await _open(gateways[i % 4], acct.id, min_balance_nanos=price) for i in range(6)]
    assert usd_to_nanos(await _balance(gateways[0], acct.id)) == start - 6 * price  # one cycle held each

    async def session(i: int) -> int:
        held, opened = 1, 0
        for _ in range(8):  # eight cycles wanted each: 48 in all, 30 affordable
            write = LedgerWrite(recorded=1, hold=1) if held else LedgerWrite(charged=1, hold=1)
            result = await gateways[i % 4].settle_cycles(sids[i], acct.id, price, write)
            if not result.paid:
                break
            opened += 1
            held = int(result.held)
        return opened

    opened = await asyncio.gather(*(session(i) for i in range(6)))
    async with gateways[0].engine.connect() as conn:
        rows = (await conn.execute(select(sessions).where(sessions.c.account_id == acct.id))).all()
    balance = usd_to_nanos(await _balance(gateways[1], acct.id))
    assert balance >= 0 and balance + sum(r.cost_nanos + r.held_nanos for r in rows) == start
    assert sum(r.cycles for r in rows) == sum(opened) and all(r.held_nanos == r.held_cycles * price for r in rows)
    for sid, n in zip(sids, opened, strict=True):
        await _end(gateways[2], sid, cycles=n, cost_nanos=n * price)
    assert usd_to_nanos(await _balance(gateways[3], acct.id)) == start - sum(opened) * price


async def test_the_reaper_refunds_the_holds_it_finds_once_on_every_gateway(gateways: list[Store]) -> None:
    """A crashed gateway's sessions keep the cycles written; their holds go back, once, however many reapers run."""
    price = ASSEMBLYAI_CYCLE
    acct = await gateways[0].create_account(name="Crash", max_streams=50, balance_nanos=100 * price)
    dead = [await _open(gateways[0], acct.id, min_balance_nanos=price, lease_ttl=-1.0) for _ in range(10)]
    assert await gateways[0].settle_cycles(dead[0], acct.id, price, LedgerWrite(recorded=1, hold=1)) == (True, True)
    assert usd_to_nanos(await _balance(gateways[0], acct.id)) == 89 * price
    results = await asyncio.gather(*(g.reap_dead_sessions() for g in gateways))
    assert sorted(sid for r in results for sid in r) == sorted(dead)
    assert usd_to_nanos(await _balance(gateways[0], acct.id)) == 99 * price  # the one cycle written stays paid
    row = await _row(gateways[0], dead[0])
    assert (row.cycles, row.held_cycles, row.held_nanos, row.closed_by) == (1, 0, 0, "gateway_crash")


async def test_usage_document(store: Store) -> None:
    acct = await store.create_account(name="Usage", balance_nanos=120_000_000 + 3 * ASSEMBLYAI_CYCLE)
    sid = await _open(store, acct.id, provider="assemblyai")
    assert await store.charge_cycles(sid, acct.id, 3, ASSEMBLYAI_CYCLE)
    await _end(store, sid, audio_seconds=12.0, cycles=3, cost_nanos=3 * ASSEMBLYAI_CYCLE)
    empty = await _open(store, acct.id, provider="elevenlabs", kind="pull")

    doc = await _usage(store, acct.id)
    assert doc["account_id"] == acct.id
    assert doc["balance_usd"] == "0.120000000"
    assert doc["totals"] == {
        "assemblyai": {"sessions": 1, "audio_seconds": 12.0, "billed_seconds": 15, "cost_usd": "0.000624999"},
        "elevenlabs": {"sessions": 1, "audio_seconds": 0.0, "billed_seconds": 0, "cost_usd": "0"},
        "deepgram": {"sessions": 0, "audio_seconds": 0.0, "billed_seconds": 0, "cost_usd": "0"},
    }
    first, second = doc["sessions"]
    assert first["id"] == empty and first["ended_at"] is None and first["kind"] == "pull"
    assert second == {
        "id": sid,
        "kind": "websocket",
        "provider": "assemblyai",
        "api_key_id": None,
        "started_at": second["started_at"],
        "ended_at": second["ended_at"],
        "audio_seconds": 12.0,
        "billed_seconds": 15,
        "cost_usd": "0.000624999",
        "close_code": 1000,
        "closed_by": "client",
        "model": None,
        "rate_usd_per_hour": None,
        "basis": None,
        "provider_audio_seconds": None,  # nothing reported by the provider (docs/billing.md#reconciliation)
        "provider_session_seconds": None,
        "session_seconds": second["session_seconds"],
    }
    assert first["session_seconds"] is None and 0 <= second["session_seconds"] < 5
    assert second["started_at"].endswith("Z") and second["ended_at"].endswith("Z")
    assert datetime.fromisoformat(second["started_at"]) <= datetime.fromisoformat(second["ended_at"])

    postpaid = await store.create_account(name="Postpaid")
    doc = await _usage(store, postpaid.id)
    assert doc["balance_usd"] is None
    assert doc["sessions"] == []
    assert doc["totals"]["elevenlabs"] == {"sessions": 0, "audio_seconds": 0.0, "billed_seconds": 0, "cost_usd": "0"}


async def test_usage_since_until(store: Store) -> None:
    acct = await store.create_account(name="Window")
    base = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
    ids = []
    for day in range(3):
        sid = await _open(store, acct.id)
        await _end(store, sid, audio_seconds=1.0, cycles=1, cost_nanos=ASSEMBLYAI_CYCLE)
        async with store.engine.begin() as conn:
            await conn.execute(
                update(sessions)
                .where(sessions.c.id == sid)
                .values(started_at=base + timedelta(days=day), ended_at=base + timedelta(days=day, seconds=1))
            )
        ids.append(sid)

    def listed(doc: dict) -> list[str]:
        return [s["id"] for s in doc["sessions"]]

    assert listed(await _usage(store, acct.id)) == ids[::-1]
    assert listed(await _usage(store, acct.id, since=base + timedelta(days=1))) == [ids[2], ids[1]]
    assert listed(await _usage(store, acct.id, until=base + timedelta(days=1))) == [ids[0]]
    window = await _usage(store, acct.id, since=base + timedelta(hours=1), until=base + timedelta(days=2))
    assert listed(window) == [ids[1]]
    assert window["totals"]["assemblyai"]["sessions"] == 1
    assert window["totals"]["assemblyai"]["cost_usd"] == "0.000208333"
    assert (await _usage(store, acct.id, since=base + timedelta(days=5)))["sessions"] == []
    assert listed(await _usage(store, acct.id, since=base.astimezone(timezone(timedelta(hours=-5))))) == ids[::-1]


async def test_end_session_has_the_last_word_on_audio_but_never_lowers_money(store: Store) -> None:
    acct = await store.create_account(name="Refund", balance_nanos=ASSEMBLYAI_CYCLE)
    sid = await _open(store, acct.id)
    assert await store.charge_cycles(sid, acct.id, 1, ASSEMBLYAI_CYCLE)
    # A flush ran while the chunk that opens cycle 2 was metered, before its charge was refused.
    await store.flush_progress([SessionProgress(sid, 5.1, 1, ASSEMBLYAI_CYCLE)])
    await store.end_session(
        sid,
        audio_seconds=5.0,
        cycles=0,
        cost_nanos=0,
        close_code=4002,
        close_reason="insufficient balance",
        closed_by="gateway",
    )
    row = await _row(store, sid)
    assert (row.audio_seconds, row.cycles, row.cost_nanos) == (5.0, 1, ASSEMBLYAI_CYCLE)
    await store.end_session(
        sid,
        audio_seconds=9.0,
        cycles=1,
        cost_nanos=ASSEMBLYAI_CYCLE,
        close_code=1000,
        close_reason="",
        closed_by="client",
    )
    assert (await _row(store, sid)).audio_seconds == 5.0  # a second ending changes nothing


async def test_a_handshake_that_never_got_its_101_is_not_a_session(store: Store) -> None:
    """docs/contract.md#usage: a slot taken for a handshake that then fails frees the slot at once and is no session;
    neither is one left by a gateway that died before the 101 (the reaper closes it)."""
    acct = await store.create_account(name="Refused", max_streams=1)
    refused = await _open(store, acct.id, accept=False)
    await store.end_session(
        refused,
        audio_seconds=0.0,
        cycles=0,
        cost_nanos=0,
        close_code=None,
        close_reason="upstream_unavailable",
        closed_by="gateway",
    )
    crashed = await _open(store, acct.id, accept=False, lease_ttl=-1.0)  # the slot was free again at once
    assert await store.reap_dead_sessions() == [crashed]
    assert (await _row(store, crashed)).closed_by == "gateway_crash"
    doc = await _usage(store, acct.id)
    assert doc["sessions"] == [] and doc["totals"]["assemblyai"]["sessions"] == 0

    accepted = await _open(store, acct.id)
    await _end(store, accepted, audio_seconds=1.0)
    assert [s["id"] for s in (await _usage(store, acct.id))["sessions"]] == [accepted]


async def test_an_opening_handshake_holds_its_slot(store: Store) -> None:
    acct = await store.create_account(name="Opening", max_streams=1)
    await _open(store, acct.id, accept=False)
    with pytest.raises(type(refusals.too_many_streams())):
        await _open(store, acct.id)
    assert (await _usage(store, acct.id))["sessions"] == []


async def test_accepting_starts_the_session_at_the_providers_101(store: Store) -> None:
    acct = await store.create_account(name="Accept")
    sid = await _open(store, acct.id, accept=False)
    slot_taken = (await _row(store, sid)).started_at
    provider_101 = slot_taken + timedelta(seconds=2)
    await store.accept_sessions([(sid, provider_101)])
    row = await _row(store, sid)
    assert (row.started_at, row.opening) == (provider_101, False)
    async with store.engine.begin() as conn:
        await conn.execute(
            update(sessions).where(sessions.c.id == sid).values(ended_at=provider_101 + timedelta(seconds=12.8))
        )
    [session] = (await _usage(store, acct.id))["sessions"]
    assert session["session_seconds"] == 12.8
    assert datetime.fromisoformat(session["started_at"]) == provider_101


async def test_a_slot_never_accepted_is_no_session_once_ended(store: Store) -> None:
    """A client gone before its 101 (or a refused handshake): the slot ends still opening, and usage leaves it out."""
    acct = await store.create_account(name="Never accepted")
    sid = await _open(store, acct.id, accept=False)
    await _end(store, sid)
    assert (await _row(store, sid)).opening
    assert (await _usage(store, acct.id))["sessions"] == []


async def test_a_prepaid_charge_marks_its_session_accepted(store: Store) -> None:
    """A session with a cost is always listed, even before the ledger tick that writes its acceptance."""
    acct = await store.create_account(name="Charged", balance_nanos=10**9)
    sid = await _open(store, acct.id, accept=False)
    assert await store.charge_cycles(sid, acct.id, 1, 1000)
    assert not (await _row(store, sid)).opening
    assert [s["id"] for s in (await _usage(store, acct.id))["sessions"]] == [sid]
