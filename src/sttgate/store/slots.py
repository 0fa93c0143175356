"""Stream slots and the ledger: a ``sessions`` row with ``ended_at IS NULL`` and a live lease is a slot.

Money is integer nano-dollars. Limits and balances are enforced by the database (row locks on PostgreSQL,
``BEGIN IMMEDIATE`` on SQLite), so they hold across gateway processes. Each method here is the portable
implementation (SQLAlchemy Core); on SQLite the hot ones (open, charge, flush, end) run through
:mod:`sttgate.store.sqlite_fast` instead, which issues the same statements in one trip to a driver thread.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import Enum
from typing import TYPE_CHECKING, Any

from sqlalchemy import Float, Integer, bindparam, case, func, insert, literal, or_, select, update

from sttgate.core.outcomes import ClosedBy, SessionKind, TaskStatus
from sttgate.store.database import Database, NotFoundError, chunks, utcnow
from sttgate.store.tables import UTCDateTime, accounts, sessions, tasks

if TYPE_CHECKING:
    from sttgate.store.outbox import Outbox
    from sttgate.store.sqlite_fast import SqliteFastPath

log = logging.getLogger(__name__)


class SlotOutcome(Enum):
    """What ``open_session`` did; the caller turns a refusal into its HTTP answer."""

    OPENED = "opened"
    TOO_MANY_STREAMS = "too_many_streams"
    INSUFFICIENT_BALANCE = "insufficient_balance"


@dataclass(frozen=True)
class SessionProgress:
    session_id: str
    audio_seconds: float
    cycles: int
    cost_nanos: int


def monotone(column: Any, param: str, type_: Any) -> Any:
    """``max(column, :param)`` on every backend: totals written by batches never go backwards."""
    value = bindparam(param, type_=type_)
    return case((column < value, value), else_=column)


def decide_open(live: int, max_streams: int, balance_nanos: int | None, min_balance_nanos: int) -> SlotOutcome:
    """The slot rule, shared by both implementations: the stream limit is checked first, then the balance."""
    if live >= max_streams:
        return SlotOutcome.TOO_MANY_STREAMS
    if balance_nanos is not None and balance_nanos < min_balance_nanos:
        return SlotOutcome.INSUFFICIENT_BALANCE
    return SlotOutcome.OPENED


class Slots:
    """Open, charge, flush, renew, end and reap sessions."""

    def __init__(self, database: Database, fast: SqliteFastPath | None, outbox: Outbox) -> None:
        self._db = database
        self._fast = fast
        # Every statement that can raise a session's cycles runs in ``outbox.recording`` (docs/export.md).
        self._outbox = outbox

    async def open_session(
        self,
        *,
        session_id: str,
        account_id: str,
        kind: SessionKind,
        provider: str,
        gateway_id: str,
        min_balance_nanos: int,
        lease_ttl: float,
        model: str | None = None,
        rate_usd_per_hour: str | None = None,
        basis: str | None = None,
        api_key_id: str | None = None,
    ) -> SlotOutcome:
        """Take a stream slot (OPENED), or say why not: too many streams (checked first), or too little balance.

        One transaction that holds the account's lock from the count to the insert, so concurrent opens of one
        account (in any process) are serialized and the limit is exact. ``model``, ``rate_usd_per_hour`` (a decimal
        string) and ``basis`` are the session's price, recorded on its row; ``api_key_id`` the key that opened it
        (for a token, the key that minted it; docs/contract.md#usage).
        """
        kind = SessionKind(kind)
        now = utcnow()
        expires = now + timedelta(seconds=lease_ttl)
        if self._fast is not None:
            return await self._fast.open_session(
                session_id,
                account_id,
                kind,
                provider,
                gateway_id,
                min_balance_nanos,
                now,
                expires,
                (model, rate_usd_per_hour, basis),
                api_key_id,
            )
        live_count = (
            select(func.count())
            .select_from(sessions)
            .where(
                sessions.c.account_id == account_id,
                sessions.c.ended_at.is_(None),
                sessions.c.lease_expires_at > now,
            )
            .scalar_subquery()
        )
        async with self._db.write() as conn:
            # PostgreSQL: the count must be read after the account's row lock is held (a statement's snapshot
            # predates the lock wait), so two statements.
            account = (
                await conn.execute(
                    select(accounts.c.max_streams, accounts.c.balance_nanos)
                    .where(accounts.c.id == account_id)
                    .with_for_update()
                )
            ).first()
            if account is None:
                raise NotFoundError(f"no account {account_id}")
            live = (await conn.execute(select(live_count))).scalar_one()
            outcome = decide_open(live, account.max_streams, account.balance_nanos, min_balance_nanos)
            if outcome is SlotOutcome.OPENED:
                await conn.execute(
                    insert(sessions).values(
                        id=session_id,
                        account_id=account_id,
                        kind=kind.value,
                        provider=provider,
                        gateway_id=gateway_id,
                        started_at=now,
                        lease_expires_at=expires,
                        audio_seconds=0.0,
                        cycles=0,
                        cost_nanos=0,
                        opening=True,
                        model=model,
                        rate_usd_per_hour=rate_usd_per_hour,
                        basis=basis,
                        api_key_id=api_key_id,
                    )
                )
        return outcome

    async def accept_sessions(self, accepted: Sequence[tuple[str, datetime]]) -> None:
        """These handshakes succeeded (the client got its 101, or the pull task is recorded): from now on each row is
        a session (docs/contract.md#usage), started at the given moment, the provider's 101. One statement for all.

        Until then a row only holds a slot: if its handshake fails, or its gateway dies first, it ends still
        ``opening`` and usage leaves it out. A prepaid charge marks its session accepted too (a session with a cost is
        always listed).
        """
        if not accepted:
            return
        stmt = (
            update(sessions)
            .where(sessions.c.id == bindparam("p_id"))
            .values(opening=False, started_at=bindparam("p_started", type_=UTCDateTime()))
        )
        async with self._db.write() as conn:
            await conn.execute(stmt, [{"p_id": sid, "p_started": started} for sid, started in accepted])

    async def charge_cycles(self, session_id: str, account_id: str, cycles: int, price_nanos: int) -> bool:
        """Debit ``cycles × price`` from a prepaid balance, all or nothing; False when the balance cannot pay.

        The debit is a conditional UPDATE (``balance >= amount``), so racing sessions of one account never take
        the balance below zero, and the session's cycles and cost move in the same transaction. Postpaid
        accounts are not written here (flush_progress records their cycles): True.
        """
        if cycles < 0 or price_nanos < 0:
            raise ValueError("cycles and price must not be negative")
        amount = cycles * price_nanos
        if self._fast is not None:
            # Once per prepaid cycle of every live session: one trip instead of about 13.
            return await self._fast.charge_cycles(session_id, account_id, cycles, amount)
        async with self._db.write() as conn, self._outbox.recording(conn, [session_id]):
            debited = await conn.execute(
                update(accounts)
                .where(accounts.c.id == account_id, accounts.c.balance_nanos >= amount)
                .values(balance_nanos=accounts.c.balance_nanos - amount)
            )
            if debited.rowcount == 1:
                recorded = await conn.execute(
                    update(sessions)
                    .where(sessions.c.id == session_id, sessions.c.account_id == account_id)
                    .values(cycles=sessions.c.cycles + cycles, cost_nanos=sessions.c.cost_nanos + amount, opening=False)
                )
                if recorded.rowcount != 1:
                    raise NotFoundError(f"no session {session_id} of account {account_id}")
                return True
            balance = (await conn.execute(select(accounts.c.balance_nanos).where(accounts.c.id == account_id))).first()
            if balance is None:
                raise NotFoundError(f"no account {account_id}")
            return balance.balance_nanos is None

    async def flush_progress(self, updates: Sequence[SessionProgress]) -> None:
        """Write absolute session totals in one batched transaction; a total never goes backwards."""
        if not updates:
            return
        if self._fast is not None:
            await self._fast.flush_progress(updates)
            return
        stmt = (
            update(sessions)
            .where(sessions.c.id == bindparam("p_id"))
            .values(
                audio_seconds=monotone(sessions.c.audio_seconds, "p_audio", Float()),
                cycles=monotone(sessions.c.cycles, "p_cycles", Integer()),
                cost_nanos=monotone(sessions.c.cost_nanos, "p_cost", sessions.c.cost_nanos.type),
            )
        )
        params = [
            {"p_id": u.session_id, "p_audio": float(u.audio_seconds), "p_cycles": u.cycles, "p_cost": u.cost_nanos}
            for u in updates
        ]
        async with self._db.write() as conn, self._outbox.recording(conn, [u.session_id for u in updates]):
            await conn.execute(stmt, params)

    async def renew_leases(self, session_ids: Sequence[str], lease_ttl: float) -> None:
        """Extend the slots a live gateway still holds (one statement for up to 1000 sessions)."""
        if not session_ids:
            return
        expires = utcnow() + timedelta(seconds=lease_ttl)
        async with self._db.write() as conn:
            for chunk in chunks(session_ids):
                await conn.execute(
                    update(sessions)
                    .where(sessions.c.id.in_(chunk), sessions.c.ended_at.is_(None))
                    .values(lease_expires_at=expires)
                )

    async def end_session(
        self,
        session_id: str,
        *,
        audio_seconds: float,
        cycles: int,
        cost_nanos: int,
        close_code: int | None,
        close_reason: str | None,
        closed_by: ClosedBy,
    ) -> None:
        """Record the final totals and how the session closed, which frees its slot.

        The final ``audio_seconds`` is the gateway's last word (a batch flushed while a refused chunk was still
        metered may have written more); ``cycles`` and ``cost_nanos`` never go below what was charged. A session a
        reaper closed as ``gateway_crash`` (its gateway stalled past the lease) gets the real ending.
        """
        try:
            closed_by = ClosedBy(closed_by)
        except ValueError:
            raise ValueError(f"closed_by must be one of {', '.join(ClosedBy)}") from None
        now = utcnow()
        if self._fast is not None:
            found = await self._fast.end_session(
                session_id, float(audio_seconds), cycles, cost_nanos, now, close_code, close_reason, closed_by
            )
        else:
            found = await self._end_portable(
                session_id, float(audio_seconds), cycles, cost_nanos, now, close_code, close_reason, closed_by
            )
        if not found:
            raise NotFoundError(f"no session {session_id}")

    async def record_provider_figures(
        self, session_id: str, audio_seconds: float | None, session_seconds: float | None
    ) -> None:
        """Record what the provider reported at the end of a session, beside the gateway's own totals
        (docs/billing.md#reconciliation). Written once, after ``end_session``; never part of the bill."""
        async with self._db.write() as conn:
            await conn.execute(
                update(sessions)
                .where(sessions.c.id == session_id)
                .values(provider_audio_seconds=audio_seconds, provider_session_seconds=session_seconds)
            )

    async def _end_portable(
        self,
        session_id: str,
        audio_seconds: float,
        cycles: int,
        cost_nanos: int,
        now: Any,
        close_code: int | None,
        close_reason: str | None,
        closed_by: ClosedBy,
    ) -> bool:
        still_open = or_(sessions.c.ended_at.is_(None), sessions.c.closed_by == ClosedBy.GATEWAY_CRASH.value)
        stmt = (
            update(sessions)
            .where(sessions.c.id == session_id)
            .values(
                audio_seconds=case((still_open, bindparam("p_audio", type_=Float())), else_=sessions.c.audio_seconds),
                cycles=monotone(sessions.c.cycles, "p_cycles", Integer()),
                cost_nanos=monotone(sessions.c.cost_nanos, "p_cost", sessions.c.cost_nanos.type),
                ended_at=case((still_open, literal(now, UTCDateTime())), else_=sessions.c.ended_at),
                close_code=case((still_open, close_code), else_=sessions.c.close_code),
                close_reason=case((still_open, close_reason), else_=sessions.c.close_reason),
                closed_by=case((still_open, closed_by.value), else_=sessions.c.closed_by),
            )
        )
        async with self._db.write() as conn, self._outbox.recording(conn, [session_id]):
            result = await conn.execute(stmt, {"p_audio": audio_seconds, "p_cycles": cycles, "p_cost": cost_nanos})
        return bool(result.rowcount == 1)

    async def reap_dead_sessions(self, *, gateway_id: str | None = None) -> list[str]:
        """Close as ``gateway_crash`` the open sessions whose lease expired (and, at start-up, this gateway's own).

        Cycles and cost already written are kept. Their pull tasks end as ``gateway_shutdown``. Safe to run on
        every gateway at once: each session is closed by exactly one of them.
        """
        now = utcnow()
        dead = sessions.c.lease_expires_at <= now
        if gateway_id is not None:
            dead = or_(dead, sessions.c.gateway_id == gateway_id)
        async with self._db.write() as conn:
            result = await conn.execute(
                update(sessions)
                .where(sessions.c.ended_at.is_(None), dead)
                .values(ended_at=now, closed_by=ClosedBy.GATEWAY_CRASH.value)
                .returning(sessions.c.id)
            )
            reaped: list[str] = [r.id for r in result]
            for chunk in chunks(reaped):
                await conn.execute(
                    update(tasks)
                    .where(tasks.c.id.in_(chunk), tasks.c.ended_at.is_(None))
                    .values(status=TaskStatus.GATEWAY_SHUTDOWN.value, ended_at=now)
                )
        if reaped:
            log.info("closed %d sessions left by a crashed or stalled gateway", len(reaped))
        return reaped
