"""The SQLite fast path against the portable implementation: the same calls give the same outcomes and rows.

Each scenario runs once through a store with the fast path and once through a store without it, each on its own
fresh SQLite file; outcomes, raised errors and every written column (stored text included) must match.
"""

from __future__ import annotations

import contextlib
import json
import re
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from sttgate.core.billing import LedgerWrite, Settlement
from sttgate.core.outcomes import ClosedBy, SessionKind
from sttgate.store import NotFoundError, SessionEnd, SessionProgress, SettleRequest, Store
from sttgate.store.database import hash_secret

PRICE = 208_333
# UTCDateTime on SQLite: naive UTC text in SQLAlchemy's fixed format.
STORED_TIME = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{6}$")


@pytest.fixture
async def pair(tmp_path: Path) -> AsyncIterator[tuple[Store, Store]]:
    """(fast, portable): two stores on two fresh SQLite files."""
    fast = await Store.connect(f"sqlite:///{tmp_path / 'fast.db'}")
    portable_url = f"sqlite:///{tmp_path / 'portable.db'}"
    portable = await Store.connect(portable_url, fast_path=False)
    try:
        assert fast._fast is not None and portable._fast is None
        for store in (fast, portable):  # every charged cycle is pending for each configured sink (docs/export.md)
            store.outbox.sinks = ("sink-a", "sink-b")
        yield fast, portable
    finally:
        await fast.close()
        await portable.close()


async def _outcome(call: Awaitable[Any]) -> Any:
    try:
        return await call
    except (NotFoundError, ValueError) as exc:
        return type(exc).__name__, str(exc)


def _rows(store: Store, accounts: dict[str, str]) -> dict[str, list[tuple[Any, ...]]]:
    """Every column the hot paths write, straight from the file (account ids replaced by their names)."""
    path = store.engine.url.database
    assert path is not None
    with contextlib.closing(sqlite3.connect(path)) as conn:
        names = {v: k for k, v in accounts.items()}
        acct_rows = conn.execute(
            "SELECT id, balance_nanos, balance_event_seq, balance_exhausted FROM accounts ORDER BY name"
        ).fetchall()
        event_rows = conn.execute("SELECT id, account_id, type, payload FROM account_events ORDER BY id").fetchall()
        session_rows = conn.execute(
            "SELECT id, account_id, kind, provider, gateway_id, audio_seconds, cycles, cost_nanos, close_code,"
            " close_reason, closed_by, started_at, lease_expires_at, ended_at, model, rate_usd_per_hour, basis,"
            " api_key_id, held_cycles, held_nanos FROM sessions ORDER BY id"
        ).fetchall()
        outbox_rows = conn.execute(
            "SELECT seq, id, session_id, cycle, account_id, api_key_id, provider, model, basis, seconds, price_nanos,"
            " charged_at FROM usage_outbox ORDER BY seq"
        ).fetchall()
        pending = conn.execute("SELECT sink, seq FROM export_pending ORDER BY sink, seq").fetchall()
    sessions = []
    for row in session_rows:
        started, lease, ended = row[11:14]
        assert STORED_TIME.match(started) and STORED_TIME.match(lease)
        assert ended is None or STORED_TIME.match(ended)
        sessions.append((row[0], names[row[1]], *row[2:11], ended is None, lease > started, *row[14:]))
    events = []
    for event_id, account_id, kind, payload in event_rows:
        doc = json.loads(payload)
        assert doc["id"] == event_id and doc["type"] == kind
        events.append((event_id.replace(account_id, names[account_id]), kind, doc["data"] | {"account_id": None}))
    outbox = []
    for row in outbox_rows:
        assert STORED_TIME.match(row[11])
        outbox.append((*row[:4], names[row[4]], *row[5:11]))
    return {
        "accounts": [(names[a], *rest) for a, *rest in acct_rows],
        "sessions": sessions,
        "events": sorted(events, key=lambda event: event[0]),  # by id with the names in: the uuids differ per store
        "outbox": outbox,
        "pending": pending,
    }


Scenario = Callable[[Store, dict[str, str]], Awaitable[list[Any]]]


async def _both(pair: tuple[Store, Store], scenario: Scenario) -> None:
    results = []
    for store in pair:
        accounts = {
            # Five cycles: each open session holds one of them (docs/billing.md#holds).
            "prepaid": (await store.create_account(name="prepaid", max_streams=2, balance_nanos=5 * PRICE)).id,
            "postpaid": (await store.create_account(name="postpaid", max_streams=1)).id,
            "poor": (await store.create_account(name="poor", balance_nanos=PRICE - 1)).id,
        }
        outcomes = repr(await scenario(store, accounts))
        for name, account_id in accounts.items():
            outcomes = outcomes.replace(account_id, name)  # error messages name the account
        results.append((outcomes, _rows(store, accounts)))
    assert results[0] == results[1]


async def _open(store: Store, account_id: str, session_id: str, **kwargs: Any) -> Any:
    values: dict[str, Any] = {
        "kind": SessionKind.WEBSOCKET,
        "provider": "assemblyai",
        "gateway_id": "gw-1",
        "min_balance_nanos": PRICE,
        "lease_ttl": 30.0,
    }
    values.update(kwargs)
    return await _outcome(store.open_session(session_id=session_id, account_id=account_id, **values))


async def test_open_session(pair: tuple[Store, Store]) -> None:
    async def scenario(store: Store, a: dict[str, str]) -> list[Any]:
        return [
            await _open(store, a["prepaid"], "s1", api_key_id="key-1"),
            await _open(
                store,
                a["prepaid"],
                "s2",
                kind=SessionKind.PULL,
                provider="elevenlabs",
                model="scribe_v2_realtime",
                rate_usd_per_hour="0.39",
                basis="audio",
                api_key_id="key-2",
            ),
            await _open(store, a["prepaid"], "s3"),  # too many streams
            await _open(store, a["poor"], "s4"),  # insufficient balance
            await _open(store, a["postpaid"], "s5", lease_ttl=-1.0),  # expired at once: does not count
            await _open(store, a["postpaid"], "s6"),
            await _open(store, a["postpaid"], "s7"),  # too many streams
            await _open(store, "no-such-account", "s8"),
        ]

    await _both(pair, scenario)


async def test_key_limits_budgets_and_balance_events(pair: tuple[Store, Store]) -> None:
    """The key's own stream limit, the month's budget, and the balance events the slot and charge transactions
    record (docs/contract.md#account-events), the same on both implementations."""

    async def scenario(store: Store, a: dict[str, str]) -> list[Any]:
        for name in ("prepaid", "poor"):
            await store.update_account(a[name], webhook_url="http://127.0.0.1:9/events", low_balance_nanos=2 * PRICE)
        await store.update_account(a["postpaid"], monthly_budget_nanos=2 * PRICE)
        out = [
            await _open(store, a["prepaid"], "s1", api_key_id="k1", key_max_streams=1),
            await _open(store, a["prepaid"], "s2", api_key_id="k1", key_max_streams=1),  # the key's limit
            await _open(store, a["prepaid"], "s3", api_key_id="k2", key_max_streams=1),  # another key: opens
            await _outcome(store.charge_cycles("s1", a["prepaid"], 1, PRICE)),  # 3 → 2 cycles: not below low
            await _outcome(store.charge_cycles("s1", a["prepaid"], 1, PRICE)),  # 2 → 1: balance.low
            await _outcome(store.charge_cycles("s3", a["prepaid"], 1, PRICE)),  # 1 → 0: still low, no new event
            await _outcome(store.charge_cycles("s3", a["prepaid"], 1, PRICE)),  # refused: balance.exhausted
            await _outcome(store.charge_cycles("s1", a["prepaid"], 1, PRICE)),  # refused again: latched
            await _open(store, a["poor"], "s4"),  # 402: balance.exhausted of "poor"
            await _open(store, a["poor"], "s5"),  # 402 again: latched
            await _open(store, a["postpaid"], "s6"),
        ]
        await store.flush_progress([SessionProgress("s6", 10.0, 2, 2 * PRICE)])
        await store.end_session(
            "s6",
            audio_seconds=10.0,
            cycles=2,
            cost_nanos=2 * PRICE,
            close_code=1000,
            close_reason="",
            closed_by="client",
        )
        out.append(await _open(store, a["postpaid"], "s7"))  # the month's budget is reached: 402
        await store.update_account(a["prepaid"], top_up_nanos=5 * PRICE)
        out.append(await _outcome(store.charge_cycles("s1", a["prepaid"], 1, PRICE)))  # paid: the latch opens
        out.append(await _outcome(store.charge_cycles("s1", a["prepaid"], 4, PRICE)))  # 4 → 0: balance.low again
        out.append(await _outcome(store.charge_cycles("s1", a["prepaid"], 1, PRICE)))  # balance.exhausted again
        return out

    await _both(pair, scenario)
    fast, _ = pair
    by_name = {a.name: a.id for a in await fast.list_accounts()}
    listed = await fast.events.list_events(by_name["prepaid"])
    assert [(e["id"].split(":", 2)[::2], e["data"].get("reason")) for e in listed] == [
        (["balance.low", "1"], None),
        (["balance.exhausted", "2"], "session_cut_off"),
        (["balance.low", "3"], None),
        (["balance.exhausted", "4"], "session_cut_off"),
    ]
    assert listed[0]["data"] == {
        "account_id": by_name["prepaid"],
        "balance_usd": "0.000208333",
        "low_balance_usd": "0.000416666",
        "session_id": "s1",
    }
    poor = await fast.events.list_events(by_name["poor"])
    assert [(e["type"], e["data"]["reason"], e["data"]["session_id"]) for e in poor] == [
        ("balance.exhausted", "handshake_refused", "s4")
    ]
    assert await fast.events.list_events(by_name["postpaid"]) == []  # no webhook URL: no events


async def test_charge_cycles(pair: tuple[Store, Store]) -> None:
    async def scenario(store: Store, a: dict[str, str]) -> list[Any]:
        await _open(store, a["prepaid"], "s1")
        await _open(store, a["postpaid"], "s2")
        await store.update_account(a["prepaid"], set_balance_nanos=3 * PRICE)  # three cycles besides the hold
        return [
            await _outcome(store.charge_cycles("s1", a["prepaid"], 2, PRICE)),
            await _outcome(store.charge_cycles("s1", a["prepaid"], 2, PRICE)),  # cannot pay: nothing moves
            await _outcome(store.charge_cycles("s1", a["prepaid"], 1, PRICE)),  # exactly the last cycle
            await _outcome(store.charge_cycles("s2", a["postpaid"], 5, PRICE)),  # postpaid: True, nothing written
            await _outcome(store.charge_cycles("no-such-session", a["prepaid"], 0, PRICE)),
            await _outcome(store.charge_cycles("s1", "no-such-account", 1, PRICE)),
            await _outcome(store.charge_cycles("s1", a["prepaid"], -1, PRICE)),
        ]

    await _both(pair, scenario)


async def test_holds(pair: tuple[Store, Store]) -> None:
    """Holds (docs/billing.md#holds): taken at the open, recorded as cycles, taken again, refused, refunded at the end
    and by the reaper, with the balance events they observe."""

    async def settle(store: Store, session_id: str, account_id: str, *write: int) -> Any:
        return await _outcome(store.settle_cycles(session_id, account_id, PRICE, LedgerWrite(*write)))

    async def scenario(store: Store, a: dict[str, str]) -> list[Any]:
        await store.update_account(a["prepaid"], webhook_url="http://127.0.0.1:9/events", low_balance_nanos=2 * PRICE)
        out = [
            await _open(store, a["prepaid"], "s1"),  # 5 → 4, s1 holds 1
            await _open(store, a["prepaid"], "s2", lease_ttl=-1.0),  # 4 → 3, s2 holds 1 (its gateway dies)
            await _open(store, a["postpaid"], "s3"),  # postpaid: nothing held
            await settle(store, "s1", a["prepaid"], 1, 0, 0, 1),  # cycle 1 from the hold, hold again: 3 → 2
            await settle(store, "s1", a["prepaid"], 1, 0, 2, 1),  # burst: cycle 2 recorded, 2 more charged (2 → 0)
            await settle(store, "s1", a["prepaid"], 0, 0, 1, 1),  # refused: balance.exhausted, no hold
            await settle(store, "s3", a["postpaid"], 0, 0, 1, 1),  # postpaid: paid; nothing held, moved or debited
            await settle(store, "nobody", a["prepaid"], 1, 0, 0, 0),
            await settle(store, "s1", "no-such-account", 0, 0, 1, 0),
            await settle(store, "s1", a["prepaid"], -1, 0, 0, 0),
        ]
        out.append(await store.reap_dead_sessions())  # s2: its hold goes back (0 → 1)
        out.append(await settle(store, "s2", a["prepaid"], 1, 0, 0, 1))  # after the reaper: nothing moves
        await store.update_account(a["prepaid"], top_up_nanos=3 * PRICE)
        out.append(await settle(store, "s1", a["prepaid"], 0, 0, 1, 1))  # paid and held: 4 → 2
        out.append(await settle(store, "s1", a["prepaid"], 0, 1, 1, 1))  # one from the hold, one paid, held: 2 → 0
        for sid, cycles in (("s1", 7), ("s2", 0), ("s1", 7)):  # s1: its hold unused, refunded (0 → 1); once
            out.append(
                await _outcome(
                    store.end_session(
                        sid,
                        audio_seconds=cycles * 5.0,
                        cycles=cycles,
                        cost_nanos=cycles * PRICE,
                        close_code=1000,
                        close_reason="",
                        closed_by=ClosedBy.CLIENT,
                    )
                )
            )
        return out

    await _both(pair, scenario)
    fast, _ = pair
    by_name = {a.name: a.id for a in await fast.list_accounts()}
    account = await fast.get_account(by_name["prepaid"])
    assert account is not None and account.balance_nanos == PRICE
    listed = await fast.events.list_events(by_name["prepaid"])
    assert [e["type"] for e in listed] == ["balance.low", "balance.exhausted", "balance.low"]


async def test_settle_cycles_batch(pair: tuple[Store, Store]) -> None:
    """Several sessions' ledger writes in one batch (group-committed by the gateway): each has its own outcome, a
    request without its session or account fails alone, and what is written is what the writes one by one write."""

    async def scenario(store: Store, a: dict[str, str]) -> list[Any]:
        await _open(store, a["prepaid"], "s1")  # 5 → 4
        await _open(store, a["prepaid"], "s2")  # 4 → 3
        await _open(store, a["postpaid"], "s3")
        batch = [
            SettleRequest("s1", a["prepaid"], PRICE, LedgerWrite(1, 0, 0, 1)),  # from the hold, held again: 3 → 2
            SettleRequest("nobody", a["prepaid"], PRICE, LedgerWrite(1, 0, 0, 0)),
            SettleRequest("s3", a["postpaid"], PRICE, LedgerWrite(0, 0, 1, 1)),
            SettleRequest("s2", "no-such-account", PRICE, LedgerWrite(0, 0, 1, 0)),
            SettleRequest("s2", a["prepaid"], PRICE, LedgerWrite(1, 0, 2, 1)),  # 2 charged (2 → 0), no hold left
        ]
        outcomes = await store.settle_cycles_batch(batch)
        out: list[Any] = [o if isinstance(o, Settlement) else (type(o).__name__, str(o)) for o in outcomes]
        out.append(
            await _outcome(store.settle_cycles_batch([SettleRequest("s1", a["prepaid"], PRICE, LedgerWrite(-1))]))
        )
        return out

    await _both(pair, scenario)
    fast, _ = pair
    by_name = {a.name: a.id for a in await fast.list_accounts()}
    account = await fast.get_account(by_name["prepaid"])
    assert account is not None and account.balance_nanos == 0


async def test_accept_sessions_and_provider_figures(pair: tuple[Store, Store]) -> None:
    """The end batch's other two writes: handshakes accepted (a row becomes a session, started at the provider's 101)
    and the provider's own figures; a session that does not exist is skipped, as by the portable statements."""
    started = datetime(2026, 11, 29, 12, 0, 0, 123456, tzinfo=UTC)

    async def scenario(store: Store, a: dict[str, str]) -> list[Any]:
        await _open(store, a["postpaid"], "s1")
        await _open(store, a["prepaid"], "s2")
        await store.accept_sessions([("s2", started), ("gone", started)])
        await store.record_provider_figures_batch([("s1", 4.5, None), ("s2", None, 6.25), ("gone", 1.0, 1.0)])
        path = store.engine.url.database
        assert path is not None
        with contextlib.closing(sqlite3.connect(path)) as conn:
            return conn.execute(
                "SELECT id, opening, started_at = ?, provider_audio_seconds, provider_session_seconds FROM sessions"
                " ORDER BY id",
                ("2026-11-29 12:00:00.123456",),
            ).fetchall()

    await _both(pair, scenario)
    fast, _ = pair
    path = fast.engine.url.database
    assert path is not None
    with contextlib.closing(sqlite3.connect(path)) as conn:
        rows = conn.execute("SELECT id, opening, provider_audio_seconds, provider_session_seconds FROM sessions")
        assert sorted(rows) == [("s1", 1, 4.5, None), ("s2", 0, None, 6.25)]


async def test_renew_leases(pair: tuple[Store, Store]) -> None:
    """Live sessions' leases are extended; an ended session's and an unknown id are left alone."""

    async def scenario(store: Store, a: dict[str, str]) -> list[Any]:
        await _open(store, a["postpaid"], "s1", lease_ttl=-1.0)
        await _open(store, a["prepaid"], "s2", lease_ttl=-1.0)
        await store.end_sessions([SessionEnd("s2", 0.0, 0, 0, 1000, "", ClosedBy.CLIENT)])
        await store.renew_leases(["s1", "s2", "gone"], lease_ttl=60.0)
        return _renewed(store)

    await _both(pair, scenario)
    fast, _ = pair
    assert _renewed(fast) == [("s1", 1), ("s2", 0)]


def _renewed(store: Store) -> list[Any]:
    """Per session: is its lease now later than its start (those opened with an expired lease: renewed)?"""
    path = store.engine.url.database
    assert path is not None
    with contextlib.closing(sqlite3.connect(path)) as conn:
        return conn.execute("SELECT id, lease_expires_at > started_at FROM sessions ORDER BY id").fetchall()


async def test_flush_progress(pair: tuple[Store, Store]) -> None:
    async def scenario(store: Store, a: dict[str, str]) -> list[Any]:
        await _open(store, a["postpaid"], "s1")
        await _open(store, a["prepaid"], "s2")
        return [
            await store.flush_progress([SessionProgress("s1", 7.5, 2, 2 * PRICE), SessionProgress("s2", 1.0, 1, 9)]),
            await store.flush_progress([SessionProgress("s1", 6.0, 1, PRICE), SessionProgress("gone", 1.0, 1, 1)]),
            await store.flush_progress([SessionProgress("s2", 2.25, 1, 9)]),
        ]

    await _both(pair, scenario)


async def test_end_session(pair: tuple[Store, Store]) -> None:
    async def end(store: Store, session_id: str, closed_by: Any, code: int | None, audio: float = 3.0) -> Any:
        return await _outcome(
            store.end_session(
                session_id,
                audio_seconds=audio,
                cycles=1,
                cost_nanos=PRICE,
                close_code=code,
                close_reason=f"reason {code}",
                closed_by=closed_by,
            )
        )

    async def scenario(store: Store, a: dict[str, str]) -> list[Any]:
        await _open(store, a["prepaid"], "s1")
        await _open(store, a["prepaid"], "s2", gateway_id="gw-dead", lease_ttl=-1.0)
        await store.flush_progress([SessionProgress("s1", 9.0, 3, 3 * PRICE)])
        reaped = await store.reap_dead_sessions()
        return [
            reaped,
            await end(store, "s1", ClosedBy.GATEWAY, 4002),  # never lowers cycles or cost; audio is final
            await end(store, "s1", ClosedBy.CLIENT, 1000, audio=99.0),  # the first ending stands
            await end(store, "s2", "client", 1000),  # a reaped session gets its real ending
            await end(store, "no-such-session", ClosedBy.CLIENT, 1000),
            await end(store, "s1", "someone", 1000),
        ]

    await _both(pair, scenario)


async def test_end_sessions_in_one_batch(pair: tuple[Store, Store]) -> None:
    """A batch of ends (the session manager's group commit): the unknown session is reported, the others end, and
    the cycles the ends add are exported (docs/export.md)."""

    async def scenario(store: Store, a: dict[str, str]) -> list[Any]:
        await _open(store, a["postpaid"], "s1")
        await _open(store, a["postpaid"], "s2")
        await store.flush_progress([SessionProgress("s1", 5.0, 1, PRICE)])
        ends = [
            SessionEnd("s1", 12.0, 3, 3 * PRICE, 1000, "", ClosedBy.CLIENT),
            SessionEnd("gone", 1.0, 0, 0, None, None, ClosedBy.GATEWAY),
            SessionEnd("s2", 2.0, 0, 0, 4002, "refused", ClosedBy.GATEWAY),
        ]
        return [sorted(await store.end_sessions(ends)), await store.end_sessions([])]

    await _both(pair, scenario)


async def test_authenticate(pair: tuple[Store, Store]) -> None:
    """The key lookup itself (the row both implementations read, times included), then what callers see."""
    for store in pair:
        acct = await store.create_account(name="keys", max_streams=3, balance_nanos=42)
        live, revoked = await store.create_key(acct.id), await store.create_key(acct.id)
        await store.revoke_key(revoked.id)
        assert await store.authenticate(live.key) is not None
        await store.auth.close()  # the background last-used write
        for key in (live.key, revoked.key, "sk-mai-" + "A" * 43):
            digest = hash_secret(key)
            assert await fast_path_lookup(store, digest) == await store.auth.lookup_key(digest)
        row = await store.auth.lookup_key(hash_secret(live.key))
        assert row is not None and row.last_used_at is not None and row.last_used_at.tzinfo is not None
        principals = [await store.authenticate(k) for k in (live.key, revoked.key, "sk-mai-short", "")]
        assert principals[0] is not None and principals[0].key_id == live.id
        assert principals[1:] == [None, None, None]


async def fast_path_lookup(store: Store, digest: str) -> Any:
    """The fast path's lookup on ``store``'s file (a fast-path store of its own for the portable one)."""
    if store._fast is not None:
        return await store._fast.authenticate(digest)
    other = Store(store.engine)
    try:
        assert other._fast is not None
        return await other._fast.authenticate(digest)
    finally:
        await other.auth.close()
        if other._fast is not None:
            await other._fast.close()
