"""PostgreSQL's fast path (store/pg_fast.py) against the portable implementation: the same calls give the same
outcomes and rows. Each scenario runs through a store with the fast path and one without it, each on its own fresh
schema of the real PostgreSQL."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy import func, select
from sqlalchemy.dialects.postgresql import aggregate_order_by

from sttgate.core.billing import LedgerWrite, Settlement
from sttgate.core.outcomes import ClosedBy, SessionKind
from sttgate.store import NotFoundError, SessionEnd, SessionProgress, SettleRequest, Store
from sttgate.store.database import hash_secret
from sttgate.store.pg_fast import PgFastPath
from sttgate.store.tables import account_events, accounts, export_pending, sessions, usage_outbox
from tests.support.postgres import fresh_schema

PRICE = 208_333


@pytest.fixture
async def pair() -> AsyncIterator[tuple[Store, Store]]:
    """(fast, portable): two stores on two fresh schemas."""
    async with fresh_schema("sttgate_pgfast") as fast_url, fresh_schema("sttgate_pgportable") as portable_url:
        fast = await Store.connect(fast_url)
        portable = await Store.connect(portable_url, fast_path=False)
        try:
            assert fast._pg_fast is not None and portable._pg_fast is None
            yield fast, portable
        finally:
            await fast.close()
            await portable.close()


async def _outcome(call: Any) -> Any:
    try:
        return await call
    except (NotFoundError, ValueError) as exc:
        return type(exc).__name__, str(exc)


async def _scenario(store: Store) -> tuple[list[Any], list[Any], list[Any]]:
    names = {}
    for name, kwargs in {
        "prepaid": {"max_streams": 2, "balance_nanos": 3 * PRICE},
        "postpaid": {"max_streams": 3, "monthly_budget_nanos": 10 * PRICE},
        "poor": {"balance_nanos": PRICE - 1, "webhook_url": "http://127.0.0.1:9/events"},
    }.items():
        names[(await store.create_account(name=name, **kwargs)).id] = name

    by_name = {v: k for k, v in names.items()}

    async def open_(account: str, sid: str, **kwargs: Any) -> Any:
        values: dict[str, Any] = {
            "kind": SessionKind.WEBSOCKET,
            "provider": "assemblyai",
            "gateway_id": "gw-1",
            "min_balance_nanos": PRICE,
            "lease_ttl": 30.0,
            "model": "universal",
            "rate_usd_per_hour": "0.15",
            "basis": "session",
        }
        values.update(kwargs)
        return await _outcome(store.open_session(session_id=sid, account_id=by_name.get(account, account), **values))

    outcomes = [
        await open_("prepaid", "s1", api_key_id="k1", key_max_streams=1),
        await open_("prepaid", "s2", api_key_id="k1", key_max_streams=1),  # the key's limit
        await open_("prepaid", "s3", api_key_id="k2"),
        await open_("prepaid", "s4"),  # the account's limit
        await open_("poor", "s5"),  # 402: balance.exhausted recorded
        await open_("poor", "s6"),  # 402 again: latched
        await open_("postpaid", "s7", lease_ttl=-1.0),  # expired at once: does not count
        await open_("postpaid", "s8", kind=SessionKind.PULL, provider="elevenlabs"),
        await open_("no-such-account", "s9"),
    ]
    await store.accept_sessions([("s1", datetime(2026, 11, 29, 12, tzinfo=UTC)), ("s8", datetime.now(UTC))])
    store.outbox.sinks = ("sink-a", "sink-b")  # every cycle an end adds is pending for each (docs/export.md)
    await store.flush_progress(
        [SessionProgress("s8", 5.0, 1, PRICE), SessionProgress("s3", 2.5, 0, 0), SessionProgress("gone", 1.0, 1, 1)]
    )
    await store.flush_progress([SessionProgress("s8", 4.0, 1, PRICE)])  # a late, lower total: nothing goes back
    ends = [
        SessionEnd("s8", 14.0, 3, 3 * PRICE + 1, 1000, "", ClosedBy.CLIENT),  # adds cycles 2 and 3
        SessionEnd("gone", 1.0, 0, 0, None, None, ClosedBy.GATEWAY),
        SessionEnd("s1", 0.5, 0, 0, 4002, "refused", "gateway"),  # type: ignore[arg-type]
    ]
    outcomes.append(sorted(await store.end_sessions(ends)))
    outcomes.append(await _outcome(store.end_sessions([SessionEnd("s3", 0.0, 0, 0, None, None, "someone")])))  # type: ignore[arg-type]
    rows, state = await _state(store, names)
    described = repr(outcomes)
    for account_id, name in names.items():
        described = described.replace(account_id, name)
    return [described], rows, state


async def _state(store: Store, names: dict[str, str]) -> tuple[list[Any], list[Any]]:
    """The sessions' rows, the accounts' balances and latches, their events, the usage outbox and pending rows."""
    async with store.database.reader.connect() as conn:
        rows = [
            (r.id, names[r.account_id], *r[2:])
            for r in await conn.execute(
                select(
                    sessions.c.id,
                    sessions.c.account_id,
                    sessions.c.kind,
                    sessions.c.provider,
                    sessions.c.gateway_id,
                    sessions.c.opening,
                    sessions.c.model,
                    sessions.c.rate_usd_per_hour,
                    sessions.c.basis,
                    sessions.c.api_key_id,
                    sessions.c.ended_at.is_(None),
                    sessions.c.audio_seconds,
                    sessions.c.cost_nanos,
                    sessions.c.close_code,
                    sessions.c.close_reason,
                    sessions.c.closed_by,
                    sessions.c.cycles,
                    sessions.c.held_cycles,
                    sessions.c.held_nanos,
                    sessions.c.started_at == datetime(2026, 11, 29, 12, tzinfo=UTC),
                ).order_by(sessions.c.id)
            )
        ]
        state = [
            (names[r.id], r.balance_nanos, r.balance_event_seq, r.balance_exhausted)
            for r in await conn.execute(select(accounts).order_by(accounts.c.name))
        ]
        for r in await conn.execute(select(account_events).order_by(account_events.c.id)):
            name, posted = names[r.account_id], json.loads(r.payload)
            data = {k: name if k == "account_id" else v for k, v in posted["data"].items()}
            same = (posted["id"], posted["type"], r.created_at, r.attempts) == (r.id, r.type, r.next_attempt_at, 0)
            state.append(("event", name, r.type, r.id.replace(r.account_id, name), data, same))
        o = usage_outbox.c
        state += [
            (r.id, r.cycle, names[r.account_id], r.provider, r.model, r.basis, r.seconds, r.price_nanos, r.pending)
            for r in await conn.execute(
                select(o.id, o.cycle, o.account_id, o.provider, o.model, o.basis, o.seconds, o.price_nanos)
                .add_columns(
                    select(func.string_agg(export_pending.c.sink, aggregate_order_by(",", export_pending.c.sink)))
                    .where(export_pending.c.seq == o.seq)
                    .scalar_subquery()
                    .label("pending")
                )
                .order_by(o.seq)
            )
        ]
    return rows, state


async def test_open_accept_and_end_agree_with_the_portable_transactions(pair: tuple[Store, Store]) -> None:
    fast, portable = pair
    assert await _scenario(fast) == await _scenario(portable)


async def test_the_key_lookup_reads_the_same_row(pair: tuple[Store, Store]) -> None:
    fast, _ = pair
    acct = await fast.create_account(name="keys", max_streams=3, balance_nanos=42)
    live, revoked = await fast.create_key(acct.id), await fast.create_key(acct.id)
    await fast.revoke_key(revoked.id)
    assert await fast.authenticate(live.key) is not None
    await fast.auth.close()  # the background last-used write
    pg = PgFastPath(fast.database, fast.outbox)
    for key in (live.key, revoked.key, "sk-mai-" + "A" * 43):
        digest = hash_secret(key)
        assert await pg.authenticate(digest) == await fast.auth.lookup_key(digest)
    row = await pg.authenticate(hash_secret(live.key))
    assert row is not None and row.last_used_at is not None and row.last_used_at.tzinfo is not None
    principals = [await fast.authenticate(k) for k in (live.key, revoked.key, "sk-mai-short", "")]
    assert principals[0] is not None and principals[0].key_id == live.id
    assert principals[1:] == [None, None, None]


HOOK = {"webhook_url": "http://127.0.0.1:9/events"}


async def _accounts_with_sessions(
    store: Store, accounts: dict[str, dict[str, Any]], sessions: list[tuple[str, str]], **session: Any
) -> tuple[dict[str, str], dict[str, str]]:
    """Create the named accounts and open the (session id, account name) sessions; (id -> name, name -> id)."""
    names = {}
    for name, kwargs in accounts.items():
        names[(await store.create_account(name=name, max_streams=5, **kwargs)).id] = name
    by_name = {v: k for k, v in names.items()}
    for sid, account in sessions:
        await store.open_session(
            session_id=sid,
            account_id=by_name[account],
            kind=SessionKind.WEBSOCKET,
            provider="assemblyai",
            gateway_id="gw-1",
            lease_ttl=30.0,
            **session,
        )
    return names, by_name


async def _settle_scenario(store: Store) -> tuple[list[Any], list[Any], list[Any]]:
    """Every path of a prepaid ledger write: paid, crossing low, a hold taken and one refused, recorded-only, a
    refusal (latched), an ended session, postpaid, and the errors."""
    store.outbox.sinks = ("sink-a", "sink-b")
    names, by_name = await _accounts_with_sessions(
        store,
        {
            "rich": {"balance_nanos": 10 * PRICE, "low_balance_nanos": 6 * PRICE, **HOOK},
            "poor": {"balance_nanos": 2 * PRICE, **HOOK},
            "quiet": {"balance_nanos": PRICE},  # no webhook URL: no events, no latch
            "postpaid": {},
        },
        [("r1", "rich"), ("r2", "rich"), ("p1", "poor"), ("q1", "quiet"), ("x1", "postpaid")],
        min_balance_nanos=0,
        model="universal",
        rate_usd_per_hour="0.15",
        basis="session",
        api_key_id="k1",
    )

    async def settle(sid: str, account: str, write: LedgerWrite, price: int = PRICE) -> Any:
        return await _outcome(store.slots.settle_cycles(sid, by_name.get(account, account), price, write))

    outcomes = [
        await settle("r1", "rich", LedgerWrite(charged=1)),  # paid: cycle 1
        await settle("r1", "rich", LedgerWrite(charged=3, hold=1)),  # the hold taken crosses low: balance.low
        await settle("r1", "rich", LedgerWrite(recorded=1)),  # from the hold, no balance move
        await settle("r2", "rich", LedgerWrite(covered=0, charged=1, hold=9)),  # paid, hold refused
        await settle("p1", "poor", LedgerWrite(charged=3)),  # refused: balance.exhausted
        await settle("p1", "poor", LedgerWrite(charged=3)),  # refused again: latched
        await settle("p1", "poor", LedgerWrite(charged=1, hold=1)),  # paid (clears the latch) and held
        await settle("p1", "poor", LedgerWrite(recorded=1, covered=0, charged=5)),  # refused, recorded still
        await settle("q1", "quiet", LedgerWrite(charged=2)),  # refused without a webhook URL
        await settle("x1", "postpaid", LedgerWrite(charged=2, hold=1)),  # postpaid: paid, nothing written
        await settle("r1", "rich", LedgerWrite(charged=1), price=0),
        await settle("gone", "rich", LedgerWrite(charged=1)),
        await settle("r1", "poor", LedgerWrite(charged=1)),  # another account's session
        await settle("r1", "no-such-account", LedgerWrite(charged=1)),
        await settle("r1", "no-such-account", LedgerWrite(recorded=1)),
        await settle("r1", "rich", LedgerWrite(charged=-1)),
    ]
    await store.end_sessions([SessionEnd("r2", 10.0, 1, PRICE, 1000, "", ClosedBy.CLIENT)])
    outcomes.append(await settle("r2", "rich", LedgerWrite(recorded=1, covered=1, charged=1, hold=1)))  # ended
    outcomes.append(await store.slots.charge_cycles("r1", by_name["rich"], 1, PRICE))
    rows, state = await _state(store, names)
    described = repr(outcomes)
    for account_id, name in names.items():
        described = described.replace(account_id, name)
    return [described], rows, state


async def _batch_scenario(store: Store, batched: bool) -> tuple[list[Any], list[Any], list[Any]]:
    """Background ledger writes of several sessions, as one batch or one by one in the order the batch takes them
    (by account, then session: the usage events' sequence numbers follow it)."""
    names, by_name = await _accounts_with_sessions(
        store,
        {
            "rich": {"balance_nanos": 10 * PRICE, "low_balance_nanos": 9 * PRICE, **HOOK},
            "poor": {"balance_nanos": 2 * PRICE, **HOOK},
            "postpaid": {},
        },
        [("r1", "rich"), ("r2", "rich"), ("p1", "poor"), ("p2", "poor"), ("x1", "postpaid")],
        min_balance_nanos=PRICE,
    )
    # Two sessions of one account in a batch: the second is decided against the balance the first left.
    requests = [
        SettleRequest("r2", by_name["rich"], PRICE, LedgerWrite(recorded=1, hold=1)),  # after r1's: crosses low
        SettleRequest("r1", by_name["rich"], PRICE, LedgerWrite(recorded=1, hold=1)),
        SettleRequest("gone", by_name["rich"], PRICE, LedgerWrite(recorded=1)),
        SettleRequest("p2", by_name["poor"], PRICE, LedgerWrite(charged=2)),  # after p1's refusal: paid, unlatched
        SettleRequest("p1", by_name["poor"], PRICE, LedgerWrite(recorded=1, charged=3, hold=1)),  # refused
        SettleRequest("x1", by_name["postpaid"], PRICE, LedgerWrite(recorded=1, hold=1)),
    ]
    if batched:
        outcomes: list[Any] = list(await store.settle_cycles_batch(requests))
    else:
        outcomes = [None] * len(requests)
        for i in sorted(range(len(requests)), key=lambda i: (requests[i].account_id, requests[i].session_id)):
            r = requests[i]
            try:
                outcomes[i] = await store.slots.settle_cycles(r.session_id, r.account_id, r.price_nanos, r.write)
            except NotFoundError as exc:
                outcomes[i] = exc
    described = repr([o if isinstance(o, Settlement) else (type(o).__name__, str(o)) for o in outcomes])
    rows, state = await _state(store, names)
    for account_id, name in names.items():
        described = described.replace(account_id, name)
    return [described], rows, state


async def test_a_batch_of_ledger_writes_agrees_with_the_writes_one_by_one(pair: tuple[Store, Store]) -> None:
    fast, portable = pair
    got = await _batch_scenario(fast, batched=True)
    expected = await _batch_scenario(portable, batched=False)
    # The usage events follow the order of the accounts' ids, which differ between the two stores.
    assert (got[0], got[1], sorted(map(repr, got[2]))) == (expected[0], expected[1], sorted(map(repr, expected[2])))
    assert "Settlement(paid=False" in got[0][0] and "no session gone" in got[0][0]
    types = [row[2] for row in got[2] if row[0] == "event"]
    assert (types.count("balance.low"), types.count("balance.exhausted")) == (1, 1)


async def test_settling_cycles_agrees_with_the_portable_transaction(pair: tuple[Store, Store]) -> None:
    fast, portable = pair
    got = await _settle_scenario(fast)
    assert got == await _settle_scenario(portable)
    described = got[0][0]
    assert "Settlement(paid=False" in described and "no account" in described and "no session" in described
    events = [(e[1], e[2], e[3], e[5]) for e in got[2] if e[0] == "event"]
    assert events == [
        ("poor", "balance.exhausted", "balance.exhausted:poor:1", True),
        ("poor", "balance.exhausted", "balance.exhausted:poor:2", True),
        ("rich", "balance.low", "balance.low:rich:1", True),
    ]


async def _same_session_twice(store: Store, batched: bool) -> tuple[list[Any], list[Any], list[Any]]:
    """Two writes of one session in one batch (the gateway never makes such a batch: one write per session at a
    time), or one after the other."""
    names, by_name = await _accounts_with_sessions(
        store, {"rich": {"balance_nanos": 10 * PRICE, **HOOK}}, [("r1", "rich")], min_balance_nanos=PRICE
    )
    requests = [
        SettleRequest("r1", by_name["rich"], PRICE, LedgerWrite(recorded=1, hold=1)),
        SettleRequest("r1", by_name["rich"], PRICE, LedgerWrite(recorded=1, charged=1)),
    ]
    if batched:
        outcomes: list[Any] = list(await store.settle_cycles_batch(requests))
    else:
        outcomes = [
            await store.slots.settle_cycles(r.session_id, r.account_id, r.price_nanos, r.write) for r in requests
        ]
    rows, state = await _state(store, names)
    return [repr(outcomes)], rows, state


async def test_a_batch_with_one_session_twice_is_written_in_order(pair: tuple[Store, Store]) -> None:
    fast, portable = pair
    got = await _same_session_twice(fast, batched=True)
    expected = await _same_session_twice(portable, batched=False)
    assert (got[0], got[1], sorted(map(repr, got[2]))) == (expected[0], expected[1], sorted(map(repr, expected[2])))
    assert got[0] == ["[Settlement(paid=True, held=True), Settlement(paid=True, held=False)]"]
