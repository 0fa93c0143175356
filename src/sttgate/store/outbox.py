"""The usage outbox (docs/export.md): charged cycles as events, written in the charging transaction; per-sink delivery.

Writing: every ledger statement that can raise a session's ``cycles`` (a prepaid charge, a postpaid flush, a
session's end) runs inside :meth:`Outbox.recording`, which reads the sessions' cycles before the statement (locking
their rows on PostgreSQL) and after it, and inserts one event per added cycle
(:func:`sttgate.core.usage_events.added_cycles`) with one ``export_pending`` row per configured sink, in the same
transaction (on PostgreSQL the events and all their pending rows in one statement). A refused or rolled-back charge
adds no cycle, so it leaves no event. The SQLite fast path does the same with :func:`record_sqlite`
(``sqlite_fast.py``).

Delivery: each sink has a row in ``export_sinks`` whose lease one exporter holds at a time, across every gateway on
the database (claimed with ``FOR UPDATE SKIP LOCKED`` on PostgreSQL; SQLite has one writer). The holder reads the
sink's pending events in ``seq`` order (cycle order within a session), sends them, and deletes their pending rows.
"""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import String, column, delete, func, insert, literal, select, true, update, values
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection

from sttgate.core.money import CYCLE_SECONDS
from sttgate.core.usage_events import UsageEvent, added_cycles, event_id
from sttgate.store.database import ID_CHUNK, Database, chunks, utcnow
from sttgate.store.tables import accounts, export_pending, export_sinks, sessions, usage_outbox

# What the outbox copies from a session row, in this order.
_SESSION_FIELDS = ("id", "cycles", "cost_nanos", "account_id", "api_key_id", "provider", "model", "basis")


@dataclass(frozen=True)
class _Before:
    cycles: int
    cost_nanos: int


def event_rows(before: dict[str, _Before], after: Sequence[Sequence[Any]], now: Any) -> list[dict[str, Any]]:
    """The outbox rows for the cycles added between ``before`` and ``after`` (session rows in ``_SESSION_FIELDS``
    order). The cost added is spread over the added cycles (the last takes any remainder), so the events of a
    session add up to its cost exactly."""
    rows: list[dict[str, Any]] = []
    for sid, cycles, cost, account_id, api_key_id, provider, model, basis in after:
        old = before.get(sid)
        if old is None:
            continue
        added = added_cycles(old.cycles, cycles)
        if not added:
            continue
        spent = max(0, cost - old.cost_nanos)
        price, remainder = divmod(spent, len(added))
        for cycle in added:
            rows.append(
                {
                    "id": event_id(sid, cycle),
                    "session_id": sid,
                    "cycle": cycle,
                    "account_id": account_id,
                    "api_key_id": api_key_id,
                    "provider": provider,
                    "model": model,
                    "basis": basis,
                    "seconds": CYCLE_SECONDS,
                    "price_nanos": price + (remainder if cycle == added[-1] else 0),
                    "charged_at": now,
                }
            )
    return rows


@dataclass(frozen=True)
class SinkStatus:
    """One sink as ``sttgate export status`` shows it."""

    name: str
    pending: int
    oldest_pending_at: datetime | None
    last_success_at: datetime | None
    last_error: str | None
    last_error_at: datetime | None
    sent_total: int
    lease_owner: str | None


class Outbox:
    """The outbox of one store: what the ledger statements record, and each sink's delivery."""

    def __init__(self, database: Database) -> None:
        self._db = database
        # The sinks configured in this process (``[[export]]``): each new event is pending for each of them.
        self.sinks: tuple[str, ...] = ()

    # -- writing (inside the ledger's transactions) ---------------------------------------------------------------

    @asynccontextmanager
    async def recording(self, conn: AsyncConnection, session_ids: Sequence[str]) -> AsyncIterator[set[str]]:
        """Record the cycles the statements run in this block add to ``session_ids``, in ``conn``'s transaction; the
        block is given the ids of the sessions that exist (the others add nothing)."""
        ids = sorted(set(session_ids))
        locked = select(sessions.c.id, sessions.c.cycles, sessions.c.cost_nanos).order_by(sessions.c.id)
        before: dict[str, _Before] = {}
        for chunk in chunks(ids):
            # FOR UPDATE (PostgreSQL): no other transaction moves these counts between the two reads.
            for row in await conn.execute(locked.where(sessions.c.id.in_(chunk)).with_for_update()):
                before[row.id] = _Before(row.cycles, row.cost_nanos)
        yield set(before)
        fields = [sessions.c[name] for name in _SESSION_FIELDS]
        after: list[Sequence[Any]] = []
        for chunk in chunks(list(before)):
            after.extend(tuple(r) for r in await conn.execute(select(*fields).where(sessions.c.id.in_(chunk))))
        rows = event_rows(before, after, utcnow())
        if rows and self.sinks and conn.dialect.name == "postgresql":
            # One statement writes the events and their pending rows for every sink (instead of one per sink).
            sinks = values(column("sink", String()), name="sinks").data([(sink,) for sink in self.sinks])
            for start in range(0, len(rows), ID_CHUNK):
                added = insert(usage_outbox).values(rows[start : start + ID_CHUNK]).returning(usage_outbox.c.seq)
                added_cte = added.cte("added")
                pending_rows = select(sinks.c.sink, added_cte.c.seq).select_from(added_cte.join(sinks, true()))
                await conn.execute(insert(export_pending).from_select(["sink", "seq"], pending_rows))
        elif rows:
            await conn.execute(insert(usage_outbox), rows)
            for sink in self.sinks:
                ids_added = [r["id"] for r in rows]
                for chunk in chunks(ids_added):
                    pending = select(literal(sink), usage_outbox.c.seq).where(usage_outbox.c.id.in_(chunk))
                    await conn.execute(insert(export_pending).from_select(["sink", "seq"], pending))

    # -- delivery -------------------------------------------------------------------------------------------------

    async def register_sinks(self, names: Sequence[str]) -> None:
        """These sinks are configured here: new events are pending for them, and each has its lease row."""
        self.sinks = tuple(names)
        if not names:
            return
        async with self._db.write() as conn:
            for name in names:
                await conn.execute(_insert_ignore(export_sinks, conn).values(name=name, sent_total=0))

    async def claim(self, sink: str, owner: str, ttl: float) -> bool:
        """Take (or renew) ``sink``'s lease for ``owner``; False while another exporter holds it."""
        now = utcnow()
        lease = select(export_sinks.c.lease_owner, export_sinks.c.lease_expires_at).where(export_sinks.c.name == sink)
        async with self._db.reader.connect() as conn:
            seen = (await conn.execute(lease)).first()
        if seen is not None and seen.lease_owner not in (None, owner) and seen.lease_expires_at > now:
            return False  # held elsewhere: no write transaction for the processes that wait
        async with self._db.write() as conn:
            row = (await conn.execute(lease.with_for_update(skip_locked=True))).first()
            if row is None:  # locked by another gateway's claim right now (or not registered)
                return False
            held = row.lease_owner not in (None, owner) and row.lease_expires_at is not None
            if held and row.lease_expires_at > now:
                return False
            await conn.execute(
                update(export_sinks)
                .where(export_sinks.c.name == sink)
                .values(lease_owner=owner, lease_expires_at=now + timedelta(seconds=ttl))
            )
        return True

    async def release(self, sink: str, owner: str) -> None:
        """Give the lease up (at shutdown), so another gateway takes over at once."""
        async with self._db.write() as conn:
            await conn.execute(
                update(export_sinks)
                .where(export_sinks.c.name == sink, export_sinks.c.lease_owner == owner)
                .values(lease_owner=None, lease_expires_at=None)
            )

    async def pending(self, sink: str, limit: int, *, linked_only: bool = False) -> list[UsageEvent]:
        """The next ``limit`` events ``sink`` has to send, oldest first, with the account's current external id;
        ``linked_only``: only those of accounts that have one (the others wait, pending, until they do)."""
        o = usage_outbox.c
        query = (
            select(*usage_outbox.c, accounts.c.external_id)
            .select_from(
                export_pending.join(usage_outbox, usage_outbox.c.seq == export_pending.c.seq).outerjoin(
                    accounts, accounts.c.id == o.account_id
                )
            )
            .where(export_pending.c.sink == sink)
            .order_by(export_pending.c.seq)
            .limit(limit)
        )
        if linked_only:
            query = query.where(accounts.c.external_id.is_not(None))
        async with self._db.reader.connect() as conn:
            result = await conn.execute(query)
            return [
                UsageEvent(
                    id=r.id,
                    seq=r.seq,
                    account_id=r.account_id,
                    external_id=r.external_id,
                    api_key_id=r.api_key_id,
                    session_id=r.session_id,
                    cycle=r.cycle,
                    provider=r.provider,
                    model=r.model,
                    basis=r.basis,
                    seconds=r.seconds,
                    price_nanos=r.price_nanos,
                    charged_at=r.charged_at,
                )
                for r in result
            ]

    async def delivered(self, sink: str, seqs: Sequence[int]) -> None:
        """``sink`` accepted these events: they are no longer pending for it."""
        now = utcnow()
        async with self._db.write() as conn:
            for i in range(0, len(seqs), 1000):
                chunk = seqs[i : i + 1000]
                await conn.execute(
                    delete(export_pending).where(export_pending.c.sink == sink, export_pending.c.seq.in_(chunk))
                )
            await conn.execute(
                update(export_sinks)
                .where(export_sinks.c.name == sink)
                .values(last_success_at=now, sent_total=export_sinks.c.sent_total + len(seqs))
            )

    async def failed(self, sink: str, error: str) -> None:
        """Record a failed send (shown by ``sttgate export status``)."""
        async with self._db.write() as conn:
            await conn.execute(
                update(export_sinks)
                .where(export_sinks.c.name == sink)
                .values(last_error=error[:500], last_error_at=utcnow())
            )

    async def replay(self, sink: str, since: datetime) -> int:
        """Make every event charged at or after ``since`` pending again for ``sink`` (same ids); how many were not
        pending already."""
        async with self._db.write() as conn:
            await conn.execute(_insert_ignore(export_sinks, conn).values(name=sink, sent_total=0))
            already = select(export_pending.c.seq).where(
                export_pending.c.sink == sink, export_pending.c.seq == usage_outbox.c.seq
            )
            again = select(literal(sink), usage_outbox.c.seq).where(
                usage_outbox.c.charged_at >= since, ~already.exists()
            )
            result = await conn.execute(insert(export_pending).from_select(["sink", "seq"], again))
            return int(result.rowcount or 0)

    async def status(self, names: Sequence[str]) -> list[SinkStatus]:
        """Each of ``names`` (configured sinks) and every sink known to the database, by name."""
        pending = (
            select(
                export_pending.c.sink,
                func.count().label("n"),
                func.min(usage_outbox.c.charged_at).label("oldest"),
            )
            .select_from(export_pending.join(usage_outbox, usage_outbox.c.seq == export_pending.c.seq))
            .group_by(export_pending.c.sink)
        )
        async with self._db.reader.connect() as conn:
            counts = {r.sink: (r.n, r.oldest) for r in await conn.execute(pending)}
            known = {r.name: r for r in await conn.execute(select(export_sinks))}
        out: list[SinkStatus] = []
        for name in sorted({*names, *known, *counts}):
            row = known.get(name)
            n, oldest = counts.get(name, (0, None))
            out.append(
                SinkStatus(
                    name=name,
                    pending=int(n),
                    oldest_pending_at=oldest,
                    last_success_at=None if row is None else row.last_success_at,
                    last_error=None if row is None else row.last_error,
                    last_error_at=None if row is None else row.last_error_at,
                    sent_total=0 if row is None else int(row.sent_total),
                    lease_owner=None if row is None else row.lease_owner,
                )
            )
        return out

    async def oldest_pending(self, sink: str) -> datetime | None:
        """When the oldest event ``sink`` has still to send was charged (None: nothing pending)."""
        query = (
            select(func.min(usage_outbox.c.charged_at))
            .select_from(export_pending.join(usage_outbox, usage_outbox.c.seq == export_pending.c.seq))
            .where(export_pending.c.sink == sink)
        )
        async with self._db.reader.connect() as conn:
            oldest: datetime | None = (await conn.execute(query)).scalar_one()
        return oldest


def _insert_ignore(table: Any, conn: AsyncConnection) -> Any:
    """``INSERT ... ON CONFLICT DO NOTHING`` in the connection's dialect."""
    if conn.dialect.name == "postgresql":
        return postgresql.insert(table).on_conflict_do_nothing()
    return sqlite.insert(table).on_conflict_do_nothing()


# --- the SQLite fast path (run on its writer thread, inside its transaction) -------------------------------------


def sqlite_before(conn: sqlite3.Connection, session_ids: Sequence[str]) -> dict[str, _Before]:
    """The cycles and cost of ``session_ids`` before a fast-path statement."""
    before: dict[str, _Before] = {}
    for chunk in chunks(sorted(set(session_ids))):
        marks = ",".join("?" * len(chunk))
        for sid, cycles, cost in conn.execute(
            f"SELECT id, cycles, cost_nanos FROM sessions WHERE id IN ({marks})", tuple(chunk)
        ):
            before[sid] = _Before(cycles, cost)
    return before


def sqlite_record(conn: sqlite3.Connection, before: dict[str, _Before], now: Any, sinks: Sequence[str]) -> None:
    """:meth:`Outbox.recording`'s second half on the fast path: the events of the cycles added since ``before``."""
    after: list[Sequence[Any]] = []
    for chunk in chunks(list(before)):
        marks = ",".join("?" * len(chunk))
        after.extend(
            conn.execute(f"SELECT {', '.join(_SESSION_FIELDS)} FROM sessions WHERE id IN ({marks})", tuple(chunk))
        )
    rows = event_rows(before, after, now)
    if not rows:
        return
    conn.executemany(
        "INSERT INTO usage_outbox (id, session_id, cycle, account_id, api_key_id, provider, model, basis, seconds,"
        " price_nanos, charged_at) VALUES (:id, :session_id, :cycle, :account_id, :api_key_id, :provider, :model,"
        " :basis, :seconds, :price_nanos, :charged_at)",
        rows,
    )
    ids = [r["id"] for r in rows]
    for sink in sinks:
        for chunk in chunks(ids):
            marks = ",".join("?" * len(chunk))
            conn.execute(
                f"INSERT INTO export_pending (sink, seq) SELECT ?, seq FROM usage_outbox WHERE id IN ({marks})",
                (sink, *chunk),
            )
