"""PostgreSQL only: the statements of every session (authenticate, open, accept, settle, end) on the driver itself.

Through SQLAlchemy each statement costs the event loop about a millisecond of CPU (compilation cache lookups, result
processing, the greenlet hop into its synchronous core); a session runs several. Here each is one call on the
asyncpg connection taken from the engine's own pool (same connections, same settings, same checkout check), with the
text of the portable statement: ``auth.AUTH_QUERY``, ``sttgate_open_session`` (migration 0011),
``Slots.accept_sessions``'s UPDATE, and ``Slots.end_sessions``'s transaction with its usage events
(``outbox.recording``'s reads, ``outbox.event_rows``). A prepaid cycle's ledger write (``Slots.settle_cycles``) reads
and locks its session and account in one statement, decides in Python with the portable rules, and writes every
change in one more; a batch of them is one read for all and one pipelined write (``executemany``).
``tests/store/test_pg_fast.py`` runs both and compares.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy.util import greenlet_spawn

from sttgate.core.account_events import EventType, balance_event_id, body, crossed_low
from sttgate.core.billing import LedgerWrite, Settlement, hold_refund, ledger_change
from sttgate.core.outcomes import ClosedBy
from sttgate.store.auth import AuthRow
from sttgate.store.database import Database, NotFoundError, utcnow
from sttgate.store.events import balance_low_data, exhausted_data
from sttgate.store.outbox import _SESSION_FIELDS, Outbox, _Before, event_rows
from sttgate.store.slots import SessionEnd, SessionProgress, SettleRequest, final_costs

_AUTH_SQL = (
    "SELECT api_keys.id, api_keys.key_hash, api_keys.revoked_at, api_keys.last_used_at, accounts.id,"
    " accounts.streaming_enabled, accounts.max_streams, accounts.balance_nanos, api_keys.expires_at,"
    " api_keys.max_streams, api_keys.providers"
    " FROM api_keys JOIN accounts ON accounts.id = api_keys.account_id WHERE api_keys.key_hash = $1"
)
_OPEN_SQL = "SELECT * FROM sttgate_open_session($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15)"
_ACCEPT_SQL = "UPDATE sessions SET opening = false, started_at = $2 WHERE id = $1"
# Slots.renew_leases: the live rows locked in id order first, as every multi-row ledger write locks sessions.
_RENEW_SQL = (
    "UPDATE sessions SET lease_expires_at = $1 WHERE id IN (SELECT id FROM sessions WHERE id = ANY($2::text[])"
    " AND ended_at IS NULL ORDER BY id FOR UPDATE)"
)
# Slots._end_portable's statement.
_STILL_OPEN = "(ended_at IS NULL OR closed_by = 'gateway_crash')"
_END_SQL = (
    "UPDATE sessions SET"
    f" audio_seconds = CASE WHEN {_STILL_OPEN} THEN $1::float8 ELSE audio_seconds END,"
    " cycles = CASE WHEN cycles < $2::int THEN $2::int ELSE cycles END,"
    " cost_nanos = CASE WHEN cost_nanos < $3::bigint THEN $3::bigint ELSE cost_nanos END,"
    f" ended_at = CASE WHEN {_STILL_OPEN} THEN $4::timestamptz ELSE ended_at END,"
    f" close_code = CASE WHEN {_STILL_OPEN} THEN $5::int ELSE close_code END,"
    f" close_reason = CASE WHEN {_STILL_OPEN} THEN $6::text ELSE close_reason END,"
    f" closed_by = CASE WHEN {_STILL_OPEN} THEN $7::text ELSE closed_by END,"
    " held_cycles = 0, held_nanos = 0"
    " WHERE id = $8"
)
# Slots.flush_progress's statement: totals never go backwards.
_FLUSH_SQL = (
    "UPDATE sessions SET"
    " audio_seconds = CASE WHEN audio_seconds < $1::float8 THEN $1::float8 ELSE audio_seconds END,"
    " cycles = CASE WHEN cycles < $2::int THEN $2::int ELSE cycles END,"
    " cost_nanos = CASE WHEN cost_nanos < $3::bigint THEN $3::bigint ELSE cost_nanos END"
    " WHERE id = $4"
)
# outbox.recording: the counts before (rows locked), the rows after, the events and their pending rows in one statement.
_BEFORE_SQL = (
    "SELECT id, cycles, cost_nanos, account_id, held_nanos FROM sessions WHERE id = ANY($1::text[]) ORDER BY id"
    " FOR UPDATE"
)
_REFUND_SQL = "UPDATE accounts SET balance_nanos = balance_nanos + $1 WHERE id = $2 AND balance_nanos IS NOT NULL"
_AFTER_SQL = f"SELECT {', '.join(_SESSION_FIELDS)} FROM sessions WHERE id = ANY($1::text[])"
_EVENT_COLUMNS = (
    "id",
    "session_id",
    "cycle",
    "account_id",
    "api_key_id",
    "provider",
    "model",
    "basis",
    "seconds",
    "price_nanos",
    "charged_at",
)
_EVENTS_SQL = (
    f"WITH added AS (INSERT INTO usage_outbox ({', '.join(_EVENT_COLUMNS)})"
    " SELECT * FROM unnest($1::text[], $2::text[], $3::int[], $4::text[], $5::text[], $6::text[], $7::text[],"
    " $8::text[], $9::int[], $10::bigint[], $11::timestamptz[]) RETURNING seq)"
    " INSERT INTO export_pending (sink, seq) SELECT sink, added.seq FROM added CROSS JOIN unnest($12::text[]) AS sink"
)

# Slots.settle_cycles: the session (outbox.recording's lock and read) and its account, both locked, in one statement.
_SETTLE_READ_SQL = (
    "SELECT s.cycles, s.cost_nanos, s.ended_at IS NULL, s.held_cycles, s.held_nanos, s.api_key_id, s.provider,"
    " s.model, s.basis, a.balance_nanos, a.low_balance_nanos, a.webhook_url IS NOT NULL, a.balance_exhausted,"
    " a.balance_event_seq FROM sessions s JOIN accounts a ON a.id = s.account_id WHERE s.id = $1 AND s.account_id = $2"
    " FOR UPDATE OF s, a"
)
# The same for a batch: every (session, account) pair at once, locked in account then session order (the rows are
# locked as the sort returns them), each row led by its session's id.
_SETTLE_READ_MANY_SQL = (
    "SELECT s.id, s.cycles, s.cost_nanos, s.ended_at IS NULL, s.held_cycles, s.held_nanos, s.api_key_id, s.provider,"
    " s.model, s.basis, a.balance_nanos, a.low_balance_nanos, a.webhook_url IS NOT NULL, a.balance_exhausted,"
    " a.balance_event_seq FROM sessions s JOIN accounts a ON a.id = s.account_id"
    " WHERE (s.id, s.account_id) IN (SELECT * FROM unnest($1::text[], $2::text[]))"
    " ORDER BY s.account_id, s.id FOR UPDATE OF s, a"
)
_ACCOUNT_EXISTS_SQL = "SELECT EXISTS (SELECT 1 FROM accounts WHERE id = $1)"
# Every change the settlement decided, in one statement: the account's row (its locked values were read, so the new
# ones are written as such), its balance events, the session's increments, the usage events and their pending rows.
_SETTLE_WRITE_SQL = (
    "WITH acct AS (UPDATE accounts SET balance_nanos = $3::bigint, balance_exhausted = $4::bool,"
    " balance_event_seq = $5::int WHERE id = $2 AND $1::bool),"
    " account_event AS (INSERT INTO account_events (id, account_id, type, payload, created_at, next_attempt_at,"
    " attempts) SELECT id, $2, type, payload, $8::timestamptz, $8::timestamptz, 0"
    " FROM unnest($6::text[], $7::text[], $9::text[]) AS e (id, type, payload) ON CONFLICT (id) DO NOTHING),"
    " sess AS (UPDATE sessions SET cycles = cycles + $11::int, cost_nanos = cost_nanos + $12::bigint,"
    " held_cycles = held_cycles + $13::int, held_nanos = held_nanos + $14::bigint,"
    " opening = CASE WHEN $11::int > 0 THEN false ELSE opening END WHERE id = $15 AND $10::bool),"
    f" added AS (INSERT INTO usage_outbox ({', '.join(_EVENT_COLUMNS)})"
    " SELECT * FROM unnest($16::text[], $17::text[], $18::int[], $19::text[], $20::text[], $21::text[], $22::text[],"
    " $23::text[], $24::int[], $25::bigint[], $26::timestamptz[]) RETURNING seq)"
    " INSERT INTO export_pending (sink, seq) SELECT sink, added.seq FROM added CROSS JOIN unnest($27::text[]) AS sink"
)


@dataclass
class _AccountState:
    """An account's row as a settlement reads and moves it: balance, low-balance threshold, whether it has a webhook,
    the exhausted latch, the balance events' sequence."""

    balance: int | None
    low: int | None
    hooked: bool
    exhausted: bool
    seq: int


class PgFastPath:
    """The driver-level implementations; same arguments and results as their portable counterparts."""

    def __init__(self, database: Database, outbox: Outbox) -> None:
        self._engine = database.engine
        self._outbox = outbox

    @classmethod
    def for_database(cls, database: Database, outbox: Outbox) -> PgFastPath | None:
        """The fast path on PostgreSQL; None on SQLite (which has its own, ``sqlite_fast.py``)."""
        return None if database.is_sqlite else cls(database, outbox)

    @asynccontextmanager
    async def _driver(self) -> AsyncIterator[Any]:
        """An asyncpg connection of the engine's pool, outside any transaction (each statement commits alone).

        Checked out as the pool's raw connection, without the engine's connection objects around it (their making and
        closing cost about 80 µs of CPU per checkout, more than the statement's round trip); the pool's own checks at
        checkout and its reset on return (run where it may wait on the driver) are the same."""
        proxied = await self._engine.raw_connection()
        try:
            yield proxied.driver_connection
        finally:
            await greenlet_spawn(proxied.close)

    async def authenticate(self, digest: str) -> AuthRow | None:
        async with self._driver() as driver:
            row = await driver.fetchrow(_AUTH_SQL, digest)
        if row is None:
            return None
        key_id, key_hash, revoked_at, last_used_at, account_id, streaming_enabled, max_streams, balance = row[:8]
        expires_at, key_max_streams, key_providers = row[8:]
        return AuthRow(
            key_id=key_id,
            key_hash=key_hash,
            revoked=revoked_at is not None,
            last_used_at=last_used_at,
            account_id=account_id,
            streaming_enabled=bool(streaming_enabled),
            max_streams=max_streams,
            balance_nanos=balance,
            expires_at=expires_at,
            key_max_streams=key_max_streams,
            key_providers=key_providers,
        )

    async def open_session(self, args: Sequence[Any]) -> tuple[Any, ...] | None:
        """The row ``sttgate_open_session`` returns for ``args`` (in its parameters' order); None: no account."""
        async with self._driver() as driver:
            row = await driver.fetchrow(_OPEN_SQL, *args)
        return None if row is None else tuple(row)

    async def accept_sessions(self, accepted: Sequence[tuple[str, datetime]]) -> None:
        """One executemany: a single round trip, atomic (one implicit transaction up to its Sync)."""
        async with self._driver() as driver:
            await driver.executemany(_ACCEPT_SQL, list(accepted))

    async def renew_leases(self, session_ids: Sequence[str], expires: datetime) -> None:
        """One statement for every session, in one implicit transaction."""
        async with self._driver() as driver:
            await driver.execute(_RENEW_SQL, expires, list(session_ids))

    async def end_sessions(self, ends: Sequence[SessionEnd], now: datetime) -> set[str]:
        """``Slots.end_sessions`` in one transaction: lock and read the counts, one executemany, read the rows, one
        statement for the usage events; the ids of the sessions not found."""
        ids = sorted({e.session_id for e in ends})
        rows = [
            (
                float(e.audio_seconds),
                e.cycles,
                e.cost_nanos,
                now,
                e.close_code,
                e.close_reason,
                ClosedBy(e.closed_by).value,
                e.session_id,
            )
            for e in ends
        ]
        async with self._driver() as driver, driver.transaction():
            locked = await driver.fetch(_BEFORE_SQL, ids)
            before = {r[0]: _Before(r[1], r[2]) for r in locked}
            await driver.executemany(_END_SQL, rows)
            # Each session's hold is settled in the same transaction (docs/billing.md#holds).
            final_cost = final_costs(ends)
            refunds = [(hold_refund(r[2], final_cost[r[0]], r[4]), r[3]) for r in locked if r[4]]
            if any(amount for amount, _ in refunds):
                await driver.executemany(_REFUND_SQL, [(a, acct) for a, acct in refunds if a])
            await self._record_usage(driver, before)
        return set(ids) - set(before)

    async def flush_progress(self, updates: Sequence[SessionProgress]) -> None:
        """``Slots.flush_progress`` in one transaction: lock and read the counts, one executemany, read the rows, one
        statement for the usage events of the cycles it added (as ``end_sessions``)."""
        ids = sorted({u.session_id for u in updates})
        rows = [(float(u.audio_seconds), u.cycles, u.cost_nanos, u.session_id) for u in updates]
        async with self._driver() as driver, driver.transaction():
            before = {r[0]: _Before(r[1], r[2]) for r in await driver.fetch(_BEFORE_SQL, ids)}
            await driver.executemany(_FLUSH_SQL, rows)
            await self._record_usage(driver, before)

    async def _record_usage(self, driver: Any, before: dict[str, _Before]) -> None:
        """The usage events of the cycles this transaction added to the sessions counted in ``before`` (locked and
        read by ``_BEFORE_SQL``), with their pending rows: ``outbox.Outbox.recording`` on this path."""
        after = [tuple(r) for r in await driver.fetch(_AFTER_SQL, list(before))] if before else []
        events = event_rows(before, after, utcnow())
        if events:
            columns = [[event[name] for event in events] for name in _EVENT_COLUMNS]
            await driver.execute(_EVENTS_SQL, *columns, list(self._outbox.sinks))

    async def settle_cycles(self, session_id: str, account_id: str, price_nanos: int, write: LedgerWrite) -> Settlement:
        """``Slots.settle_cycles`` in one transaction of two statements: lock and read the session and its account,
        decide as the portable code does (its debits, ``balance.low`` / ``balance.exhausted`` with the account's event
        sequence and latch as ``events.record_balance_event`` moves them, ``ledger_change``), write it all."""
        request = SettleRequest(session_id, account_id, price_nanos, write)
        async with self._driver() as driver, driver.transaction():
            row = await driver.fetchrow(_SETTLE_READ_SQL, session_id, account_id)
            if row is None:
                raise await self._missing(driver, request)
            settlement, args = self._decide(request, tuple(row[:9]), _AccountState(*row[9:]))
            await driver.execute(_SETTLE_WRITE_SQL, *args)
            return settlement

    async def settle_cycles_batch(self, requests: Sequence[SettleRequest]) -> list[Settlement | BaseException]:
        """``Slots.settle_cycles_batch``: every request in one transaction (one commit, one WAL flush) of two
        statements whatever its size: one read that locks every session and account in account then session order
        (so two gateways' batches lock the accounts they share in the same order), one pipelined write of each
        request's changes. The requests of one account are decided in that order against its balance as the earlier
        ones left it. A request without its session or account fails before it writes anything, alone; any other
        failure (a deadlock PostgreSQL broke with another kind of write, say) fails the batch, and each session's write
        is then what a failed write is (docs/billing.md#holds: nothing lost, the next cycle charged as it opens)."""
        by_session = {r.session_id: i for i, r in enumerate(requests)}
        if len(by_session) < len(requests):  # one write per session at a time: never, but not at any price
            return [await self._settle_alone(r) for r in requests]
        outcomes: dict[int, Settlement | BaseException] = {}
        async with self._driver() as driver, driver.transaction():
            rows = await driver.fetch(
                _SETTLE_READ_MANY_SQL, [r.session_id for r in requests], [r.account_id for r in requests]
            )
            accounts: dict[str, _AccountState] = {}
            writes = []
            for row in rows:
                i = by_session[row[0]]
                request = requests[i]
                state = accounts.get(request.account_id) or _AccountState(*row[10:])
                settlement, args = self._decide(request, tuple(row[1:10]), state)
                accounts[request.account_id] = state
                outcomes[i] = settlement
                writes.append(args)
            for i, request in enumerate(requests):
                if i not in outcomes:
                    outcomes[i] = await self._missing(driver, request)
            if writes:
                await driver.executemany(_SETTLE_WRITE_SQL, writes)
        return [outcomes[i] for i in range(len(requests))]

    async def _settle_alone(self, request: SettleRequest) -> Settlement | BaseException:
        try:
            return await self.settle_cycles(request.session_id, request.account_id, request.price_nanos, request.write)
        except NotFoundError as exc:
            return exc

    @staticmethod
    async def _missing(driver: Any, request: SettleRequest) -> NotFoundError:
        """The portable code's first failure: a refused charge finds no account, else no session (of it)."""
        if request.write.charged and not await driver.fetchval(_ACCOUNT_EXISTS_SQL, request.account_id):
            return NotFoundError(f"no account {request.account_id}")
        return NotFoundError(f"no session {request.session_id} of account {request.account_id}")

    def _decide(
        self, request: SettleRequest, session: tuple[Any, ...], account: _AccountState
    ) -> tuple[Settlement, tuple[Any, ...]]:
        """One settlement decided against the locked session row and ``account`` (updated in place: the next request
        of the same account in a batch starts from it); the arguments of ``_SETTLE_WRITE_SQL`` that write it."""
        session_id, account_id, price_nanos, write = (
            request.session_id,
            request.account_id,
            request.price_nanos,
            request.write,
        )
        cycles, cost, live, held_cycles, held_nanos, api_key_id, provider, model, basis = session
        now = utcnow()
        events: list[tuple[str, str, str]] = []  # (id, type, payload) of the account's balance events
        account_moved = False

        def record(kind: EventType, data: dict[str, Any]) -> None:
            account.seq += 1
            event_id = balance_event_id(kind, account_id, account.seq)
            events.append((event_id, str(kind), body(event_id, kind, now, {"account_id": account_id, **data})))

        def debit(amount: int) -> bool:
            nonlocal account_moved
            balance = account.balance
            if balance is None or balance < amount:
                return False
            account.balance = balance - amount
            account.exhausted, account_moved = False, True
            low = account.low
            if low is not None and crossed_low(low, balance, account.balance) and account.hooked:
                record(EventType.BALANCE_LOW, balance_low_data(account.balance, low, session_id))
            return True

        paid = debited = True
        if write.charged:
            debited = debit(write.charged * price_nanos)
            if not debited and account.balance is not None:
                paid = False
                if account.hooked and not account.exhausted:
                    account.exhausted, account_moved = True, True
                    record(EventType.BALANCE_EXHAUSTED, exhausted_data(account.balance, "session_cut_off", session_id))
        change = ledger_change(write, price_nanos, paid, debited, live, held_cycles, held_nanos)
        held = bool(change.hold_nanos) and debit(change.hold_nanos)
        moves = change.increments(held)
        added = event_rows(
            {session_id: _Before(cycles, cost)},
            [
                (
                    session_id,
                    cycles + change.added,
                    cost + change.added_nanos,
                    account_id,
                    api_key_id,
                    provider,
                    model,
                    basis,
                )
            ],
            now,
        )
        args = (
            account_moved or bool(events),
            account_id,
            account.balance,
            account.exhausted,
            account.seq,
            [e[0] for e in events],
            [e[1] for e in events],
            now,
            [e[2] for e in events],
            bool(moves),
            moves.get("cycles", 0),
            moves.get("cost_nanos", 0),
            moves.get("held_cycles", 0),
            moves.get("held_nanos", 0),
            session_id,
            *[[event[name] for event in added] for name in _EVENT_COLUMNS],
            list(self._outbox.sinks),
        )
        return Settlement(paid, held), args
