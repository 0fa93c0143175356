"""SQLite only: the hot statements (authenticate, open, charge, flush, end) in one trip to a database thread.

Through SQLAlchemy and aiosqlite each statement costs 3-4 hops between the event loop and the driver's thread, and
these run on every handshake and every prepaid cycle of every live session. Here each whole transaction is one
plain function on the standard ``sqlite3`` module, run on a connection of this module's own by a thread of its own
(:class:`_Worker`): one hop. The statements are those of the portable implementations in ``auth.py`` and ``slots.py``
(``tests/store/test_sqlite_fast.py`` runs both and compares). Writes hold the process's SQLite write lock, like
every other write of the store; reads use a second connection and thread, so they never queue behind a write.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import threading
from collections.abc import Callable, Sequence
from datetime import datetime
from queue import SimpleQueue
from typing import Any, TypeVar

from sqlalchemy.engine import Dialect

from sttgate.core.account_events import EventType, balance_event_id, body, crossed_low
from sttgate.core.billing import LedgerWrite, Settlement, hold_refund, ledger_change
from sttgate.core.outcomes import ClosedBy, SessionKind
from sttgate.store import db
from sttgate.store.auth import AuthRow
from sttgate.store.database import Database, NotFoundError, utcnow
from sttgate.store.events import balance_low_data, exhausted_data
from sttgate.store.outbox import Outbox, sqlite_before, sqlite_record
from sttgate.store.slots import (
    SessionEnd,
    SessionProgress,
    SettleRequest,
    SlotFigures,
    SlotOutcome,
    decide_open,
)
from sttgate.store.tables import UTCDateTime

T = TypeVar("T")
# A call for the worker's thread: the caller's loop and future, the function and its arguments after the connection.
_Call = tuple[asyncio.AbstractEventLoop, "asyncio.Future[Any]", Callable[..., Any], tuple[Any, ...]]


class _Worker:
    """One ``sqlite3`` connection used only from one thread of its own (opened there on first use). A call is one hop
    each way: queued to the thread, its result handed back with ``call_soon_threadsafe``. A single-thread pool with
    ``run_in_executor`` costs twice the CPU per call, its futures chained across threads (``bench/bench_worker.py``:
    about 80 against 36 µs of CPU, both threads, for a ``SELECT 1``)."""

    def __init__(self, path: str, name: str) -> None:
        self._path = path
        self._calls: SimpleQueue[_Call | None] = SimpleQueue()
        # A daemon: a process that exits without closing its store is not held up (an unfinished transaction is
        # rolled back by SQLite).
        self._thread = threading.Thread(target=self._serve, name=name, daemon=True)
        self._conn: sqlite3.Connection | None = None

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            # Autocommit (isolation_level=None): the functions below issue their own BEGIN IMMEDIATE, as db.py's
            # engine does for SQLAlchemy's connections.
            conn = sqlite3.connect(self._path, isolation_level=None, check_same_thread=False)
            for pragma in db.SQLITE_PRAGMAS:
                conn.execute(pragma)
            self._conn = conn
        return self._conn

    def _serve(self) -> None:
        while (call := self._calls.get()) is not None:
            loop, future, fn, args = call
            try:
                result = fn(self._connection(), *args)
            except BaseException as exc:
                _answer(loop, future, None, exc)
            else:
                _answer(loop, future, result, None)
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        if not self._thread.is_alive():
            self._thread.start()
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        self._calls.put((loop, future, fn, args))
        return await future

    async def close(self) -> None:
        """Close the connection (after the calls queued before) and end the thread."""
        if not self._thread.is_alive():
            return
        self._calls.put(None)
        await asyncio.to_thread(self._thread.join)


def _answer(
    loop: asyncio.AbstractEventLoop, future: asyncio.Future[Any], result: Any, error: BaseException | None
) -> None:
    """From the worker's thread: settle ``future`` on its loop (unless the loop is gone: nobody waits any more)."""
    with contextlib.suppress(RuntimeError):  # the loop is closed
        loop.call_soon_threadsafe(_resolve, future, result, error)


def _resolve(future: asyncio.Future[Any], result: Any, error: BaseException | None) -> None:
    if future.done():  # the caller stopped waiting (cancelled, timed out)
        return
    if error is None:
        future.set_result(result)
    else:
        future.set_exception(error)


class SqliteFastPath:
    """The single-trip implementations; same arguments and results as their portable counterparts."""

    def __init__(self, path: str, dialect: Dialect, write_lock: asyncio.Lock, outbox: Outbox) -> None:
        self._outbox = outbox
        self._reader = _Worker(path, "sttgate-sqlite-read")
        self._writer = _Worker(path, "sttgate-sqlite-write")
        self._write_lock = write_lock
        impl = UTCDateTime().dialect_impl(dialect)
        self._bind_time: Callable[[datetime], Any] | None = impl.bind_processor(dialect)
        self._read_time: Callable[[Any], datetime | None] | None = impl.result_processor(dialect, None)

    @classmethod
    def for_database(cls, database: Database, outbox: Outbox) -> SqliteFastPath | None:
        """The fast path for a SQLite file; None for PostgreSQL (and for an in-memory database, which a second
        connection would not share)."""
        if database.write_lock is None:
            return None
        path = database.engine.url.database
        if not path or path == ":memory:" or path.startswith("file:"):
            return None
        return cls(path, database.engine.dialect, database.write_lock, outbox)

    def _time(self, value: datetime) -> Any:
        """A timestamp as the SQLite columns store it (``UTCDateTime``'s bind processing)."""
        return self._bind_time(value) if self._bind_time is not None else value

    async def _write(self, fn: Callable[..., T], *args: Any) -> T:
        async with self._write_lock:
            return await self._writer.run(fn, *args)

    async def _write_recording(self, session_ids: Sequence[str], body: Callable[..., tuple[bool, T]], *args: Any) -> T:
        """``body`` in a transaction that also records the cycles it adds to ``session_ids`` in the usage outbox."""
        recording = (session_ids, self._time(utcnow()), self._outbox.sinks)
        return await self._write(_transaction, _recording, recording, body, *args)

    async def authenticate(self, digest: str) -> AuthRow | None:
        row = await self._reader.run(_auth, digest)
        if row is None:
            return None
        key_id, key_hash, revoked_at, last_used_at, account_id, streaming_enabled, max_streams, balance = row[:8]
        expires_at, key_max_streams, key_providers = row[8:]
        return AuthRow(
            key_id=key_id,
            key_hash=key_hash,
            revoked=revoked_at is not None,
            last_used_at=None if self._read_time is None else self._read_time(last_used_at),
            account_id=account_id,
            streaming_enabled=bool(streaming_enabled),
            max_streams=max_streams,
            balance_nanos=balance,
            expires_at=None if self._read_time is None else self._read_time(expires_at),
            key_max_streams=key_max_streams,
            key_providers=key_providers,
        )

    async def open_session(
        self,
        session_id: str,
        account_id: str,
        kind: SessionKind,
        provider: str,
        gateway_id: str,
        min_balance_nanos: int,
        now: datetime,
        expires: datetime,
        price: tuple[str | None, str | None, str | None] = (None, None, None),
        api_key_id: str | None = None,
        key_max_streams: int | None = None,
        month: datetime | None = None,
    ) -> SlotOutcome:
        args = (session_id, account_id, kind.value, provider, gateway_id, min_balance_nanos)
        key = (api_key_id, key_max_streams)
        times = (self._time(now), self._time(expires), self._time(month or now), now)
        outcome: SlotOutcome | None = await self._write(_transaction, _open, *args, times, price, key)
        if outcome is None:
            raise NotFoundError(f"no account {account_id}")
        return outcome

    async def settle_cycles(self, session_id: str, account_id: str, price_nanos: int, write: LedgerWrite) -> Settlement:
        now = utcnow()
        outcome: Settlement | str = await self._write_recording(
            [session_id], _settle, session_id, account_id, price_nanos, write, (self._time(now), now)
        )
        if outcome == "account":
            raise NotFoundError(f"no account {account_id}")
        if outcome == "session":
            raise NotFoundError(f"no session {session_id} of account {account_id}")
        assert isinstance(outcome, Settlement)
        return outcome

    async def settle_cycles_batch(self, requests: Sequence[SettleRequest]) -> list[Settlement | BaseException]:
        now = utcnow()
        ids = [r.session_id for r in requests]
        outcomes: list[Settlement | str] = await self._write_recording(
            ids, _settle_each, requests, (self._time(now), now)
        )
        results: list[Settlement | BaseException] = []
        for request, outcome in zip(requests, outcomes, strict=True):
            if outcome == "account":
                results.append(NotFoundError(f"no account {request.account_id}"))
            elif outcome == "session":
                results.append(NotFoundError(f"no session {request.session_id} of account {request.account_id}"))
            else:
                assert isinstance(outcome, Settlement)
                results.append(outcome)
        return results

    async def flush_progress(self, updates: Sequence[SessionProgress]) -> None:
        rows = [(float(u.audio_seconds), u.cycles, u.cost_nanos, u.session_id) for u in updates]
        await self._write_recording([u.session_id for u in updates], _flush, rows)

    async def accept_sessions(self, accepted: Sequence[tuple[str, datetime]]) -> None:
        rows = [(self._time(started), session_id) for session_id, started in accepted]
        await self._write(_transaction, _executemany, _ACCEPT_SQL, rows)

    async def renew_leases(self, session_ids: Sequence[str], expires: datetime) -> None:
        rows = [(self._time(expires), session_id) for session_id in session_ids]
        await self._write(_transaction, _executemany, _RENEW_SQL, rows)

    async def record_provider_figures_batch(self, rows: Sequence[tuple[str, float | None, float | None]]) -> None:
        values = [(audio, seconds, session_id) for session_id, audio, seconds in rows]
        await self._write(_transaction, _executemany, _FIGURES_SQL, values)

    async def end_sessions(self, ends: Sequence[SessionEnd], now: datetime) -> set[str]:
        at = self._time(now)
        rows = [
            (e.audio_seconds, e.cycles, e.cost_nanos, at, e.close_code, e.close_reason, ClosedBy(e.closed_by).value)
            for e in ends
        ]
        ids = [e.session_id for e in ends]
        missing: set[str] = await self._write_recording(ids, _end, ids, rows)
        return missing

    async def close(self) -> None:
        async with self._write_lock:
            await self._writer.close()
        await self._reader.close()


# --- the transactions (run on the worker's thread) -----------------------------------------------------------------


def _transaction(conn: sqlite3.Connection, body: Callable[..., tuple[bool, T]], *args: Any) -> T:
    """``body(conn, *args)`` in a BEGIN IMMEDIATE transaction; committed unless it raises or returns
    ``(False, result)`` (rolled back)."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        commit, result = body(conn, *args)
        conn.execute("COMMIT" if commit else "ROLLBACK")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    return result


def _recording(
    conn: sqlite3.Connection,
    recording: tuple[Sequence[str], Any, Sequence[str]],
    body: Callable[..., tuple[bool, T]],
    *args: Any,
) -> tuple[bool, T]:
    """``body`` plus the usage events of the cycles it adds (``outbox.Outbox.recording`` on this path)."""
    session_ids, now, sinks = recording
    before = sqlite_before(conn, session_ids)
    commit, result = body(conn, *args)
    if commit:
        sqlite_record(conn, before, now, sinks)
    return commit, result


def _auth(conn: sqlite3.Connection, digest: str) -> tuple[Any, ...] | None:
    """``auth.AUTH_QUERY`` (autocommit: one statement reads one consistent snapshot)."""
    row: tuple[Any, ...] | None = conn.execute(
        "SELECT api_keys.id, api_keys.key_hash, api_keys.revoked_at, api_keys.last_used_at, accounts.id,"
        " accounts.streaming_enabled, accounts.max_streams, accounts.balance_nanos,"
        " api_keys.expires_at, api_keys.max_streams, api_keys.providers"
        " FROM api_keys JOIN accounts ON accounts.id = api_keys.account_id WHERE api_keys.key_hash = ?",
        (digest,),
    ).fetchone()
    return row


def _open(
    conn: sqlite3.Connection,
    session_id: str,
    account_id: str,
    kind: str,
    provider: str,
    gateway_id: str,
    min_balance_nanos: int,
    times: tuple[Any, Any, Any, datetime],
    price: tuple[str | None, str | None, str | None],
    key: tuple[str | None, int | None],
) -> tuple[bool, SlotOutcome | None]:
    now, expires, month, aware_now = times
    api_key_id, key_max_streams = key
    # BEGIN IMMEDIATE serializes writers, so the account and its live counts can come in one statement.
    row = conn.execute(
        "SELECT max_streams, balance_nanos, monthly_budget_nanos,"
        " (SELECT count(*) FROM sessions WHERE account_id = ?1 AND ended_at IS NULL AND lease_expires_at > ?2),"
        " CASE WHEN ?4 IS NULL THEN 0 ELSE (SELECT count(*) FROM sessions WHERE api_key_id = ?4 AND ended_at IS NULL"
        " AND lease_expires_at > ?2) END,"
        " CASE WHEN monthly_budget_nanos IS NULL THEN 0 ELSE (SELECT coalesce(sum(cost_nanos), 0) FROM sessions"
        " WHERE account_id = ?1 AND started_at >= ?3) END"
        " FROM accounts WHERE id = ?1",
        (account_id, now, month, api_key_id if key_max_streams is not None else None),
    ).fetchone()
    if row is None:
        return False, None
    max_streams, balance, budget, live, key_live, month_cost = row
    figures = SlotFigures(live, max_streams, key_live, key_max_streams, balance, budget, month_cost)
    outcome = decide_open(figures, min_balance_nanos)
    if outcome is SlotOutcome.INSUFFICIENT_BALANCE:
        data = exhausted_data(balance, "handshake_refused", session_id)
        recorded = _balance_event(conn, account_id, EventType.BALANCE_EXHAUSTED, data, aware_now, now, latch=True)
        return recorded, outcome
    if outcome is not SlotOutcome.OPENED:
        return False, outcome
    hold = min_balance_nanos if balance is not None and min_balance_nanos > 0 else 0
    if hold:
        _debit(conn, account_id, session_id, hold, (now, aware_now))
    conn.execute(
        "INSERT INTO sessions (id, account_id, kind, provider, gateway_id, started_at, lease_expires_at, audio_seconds,"
        " cycles, cost_nanos, opening, model, rate_usd_per_hour, basis, api_key_id, held_cycles, held_nanos)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, 0.0, 0, 0, 1, ?, ?, ?, ?, ?, ?)",
        (session_id, account_id, kind, provider, gateway_id, now, expires, *price, api_key_id, int(hold > 0), hold),
    )
    return True, outcome


def _debit(conn: sqlite3.Connection, account_id: str, session_id: str, amount: int, now: tuple[Any, datetime]) -> bool:
    """``Slots._debit``: debit ``amount`` if the balance has it, recording ``balance.low`` on a crossing."""
    debited = conn.execute(
        "UPDATE accounts SET balance_nanos = balance_nanos - ?1, balance_exhausted = 0"
        " WHERE id = ?2 AND balance_nanos >= ?1 RETURNING balance_nanos, low_balance_nanos",
        (amount, account_id),
    ).fetchall()
    if not debited:
        return False
    after, low = debited[0]
    if crossed_low(low, after + amount, after):
        _balance_event(
            conn, account_id, EventType.BALANCE_LOW, balance_low_data(after, low, session_id), now[1], now[0]
        )
    return True


def _settle_each(
    conn: sqlite3.Connection, requests: Sequence[SettleRequest], now: tuple[Any, datetime]
) -> tuple[bool, list[Settlement | str]]:
    """:func:`_settle` for each request in one transaction, each in a savepoint: a request that finds no account or
    session is rolled back alone."""
    results: list[Settlement | str] = []
    for r in requests:
        conn.execute("SAVEPOINT settle")
        try:
            commit, result = _settle(conn, r.session_id, r.account_id, r.price_nanos, r.write, now)
            if not commit:
                conn.execute("ROLLBACK TO settle")
        finally:
            conn.execute("RELEASE settle")
        results.append(result)
    return True, results


def _settle(
    conn: sqlite3.Connection,
    session_id: str,
    account_id: str,
    price_nanos: int,
    write: LedgerWrite,
    now: tuple[Any, datetime],
) -> tuple[bool, Settlement | str]:
    """``Slots.settle_cycles``; "account" for no account, "session" for no session (rolled back)."""
    paid = debited = True
    if write.charged:
        debited = _debit(conn, account_id, session_id, write.charged * price_nanos, now)
        if not debited:
            row = conn.execute("SELECT balance_nanos FROM accounts WHERE id = ?", (account_id,)).fetchone()
            if row is None:
                return False, "account"
            if row[0] is not None:
                paid = False
                data = exhausted_data(row[0], "session_cut_off", session_id)
                _balance_event(conn, account_id, EventType.BALANCE_EXHAUSTED, data, now[1], now[0], latch=True)
    session = conn.execute(
        "SELECT ended_at IS NULL, held_cycles, held_nanos FROM sessions WHERE id = ? AND account_id = ?",
        (session_id, account_id),
    ).fetchone()
    if session is None:
        return False, "session"
    live, held_cycles, held_nanos = session
    change = ledger_change(write, price_nanos, paid, debited, bool(live), held_cycles, held_nanos)
    held = bool(change.hold_nanos) and _debit(conn, account_id, session_id, change.hold_nanos, now)
    moves = change.increments(held)
    sets = [f"{column} = {column} + ?" for column in moves]
    if change.added:
        sets.append("opening = 0")
    if sets:
        conn.execute(f"UPDATE sessions SET {', '.join(sets)} WHERE id = ?", (*moves.values(), session_id))
    return True, Settlement(paid, held)


def _balance_event(
    conn: sqlite3.Connection,
    account_id: str,
    kind: EventType,
    data: dict[str, Any],
    at: datetime,
    stored_at: Any,
    *,
    latch: bool = False,
) -> bool:
    """``events.record_balance_event``: True when an event was recorded."""
    latched = (", balance_exhausted = 1", " AND balance_exhausted = 0") if latch else ("", "")
    row = conn.execute(
        f"UPDATE accounts SET balance_event_seq = balance_event_seq + 1{latched[0]}"
        f" WHERE id = ? AND webhook_url IS NOT NULL{latched[1]} RETURNING balance_event_seq",
        (account_id,),
    ).fetchall()
    if not row:
        return False
    event_id = balance_event_id(kind, account_id, row[0][0])
    conn.execute(
        "INSERT OR IGNORE INTO account_events (id, account_id, type, payload, created_at, next_attempt_at, attempts)"
        " VALUES (?, ?, ?, ?, ?, ?, 0)",
        (
            event_id,
            account_id,
            str(kind),
            body(event_id, kind, at, {"account_id": account_id, **data}),
            stored_at,
            stored_at,
        ),
    )
    return True


_FLUSH_SQL = (
    "UPDATE sessions SET"
    " audio_seconds = CASE WHEN audio_seconds < ?1 THEN ?1 ELSE audio_seconds END,"
    " cycles = CASE WHEN cycles < ?2 THEN ?2 ELSE cycles END,"
    " cost_nanos = CASE WHEN cost_nanos < ?3 THEN ?3 ELSE cost_nanos END"
    " WHERE id = ?4"
)


def _flush(conn: sqlite3.Connection, rows: list[tuple[float, int, int, str]]) -> tuple[bool, None]:
    conn.executemany(_FLUSH_SQL, rows)
    return True, None


_STILL_OPEN = "(ended_at IS NULL OR closed_by = 'gateway_crash')"
_END_SQL = (
    "UPDATE sessions SET"
    f" audio_seconds = CASE WHEN {_STILL_OPEN} THEN ?1 ELSE audio_seconds END,"
    " cycles = CASE WHEN cycles < ?2 THEN ?2 ELSE cycles END,"
    " cost_nanos = CASE WHEN cost_nanos < ?3 THEN ?3 ELSE cost_nanos END,"
    f" ended_at = CASE WHEN {_STILL_OPEN} THEN ?4 ELSE ended_at END,"
    f" close_code = CASE WHEN {_STILL_OPEN} THEN ?5 ELSE close_code END,"
    f" close_reason = CASE WHEN {_STILL_OPEN} THEN ?6 ELSE close_reason END,"
    f" closed_by = CASE WHEN {_STILL_OPEN} THEN ?7 ELSE closed_by END,"
    " held_cycles = 0, held_nanos = 0"
    " WHERE id = ?8"
)


_ACCEPT_SQL = "UPDATE sessions SET opening = 0, started_at = ? WHERE id = ?"
_RENEW_SQL = "UPDATE sessions SET lease_expires_at = ? WHERE id = ? AND ended_at IS NULL"
_FIGURES_SQL = "UPDATE sessions SET provider_audio_seconds = ?, provider_session_seconds = ? WHERE id = ?"


def _executemany(conn: sqlite3.Connection, sql: str, rows: list[tuple[Any, ...]]) -> tuple[bool, None]:
    """One statement for every row (``Slots.accept_sessions``, ``renew_leases``, ``record_provider_figures_batch``)."""
    conn.executemany(sql, rows)
    return True, None


def _end(conn: sqlite3.Connection, ids: list[str], rows: list[tuple[Any, ...]]) -> tuple[bool, set[str]]:
    """The ids of the sessions not found. Each session's hold is settled as ``Slots.end_sessions`` does."""
    missing = set()
    for sid, values in zip(ids, rows, strict=True):
        held = conn.execute("SELECT account_id, cost_nanos, held_nanos FROM sessions WHERE id = ?", (sid,)).fetchone()
        if conn.execute(_END_SQL, (*values, sid)).rowcount != 1:
            missing.add(sid)
        if held is not None:
            refund = hold_refund(held[1], values[2], held[2])
            if refund:
                conn.execute(
                    "UPDATE accounts SET balance_nanos = balance_nanos + ? WHERE id = ? AND balance_nanos IS NOT NULL",
                    (refund, held[0]),
                )
    return True, missing
