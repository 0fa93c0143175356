"""Stream slots and the ledger: a ``sessions`` row with ``ended_at IS NULL`` and a live lease is a slot.

Money is integer nano-dollars. Limits and balances are enforced by the database (row locks on PostgreSQL,
``BEGIN IMMEDIATE`` on SQLite), so they hold across gateway processes. Each method here is the portable
implementation (SQLAlchemy Core); on SQLite the hot ones (open, charge, flush, end) run through
:mod:`sttgate.store.sqlite_fast` instead, which issues the same statements in one trip to a driver thread, and on
PostgreSQL (key, open, accept, settle, end) through :mod:`sttgate.store.pg_fast`, on the asyncpg driver.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import Enum
from typing import TYPE_CHECKING, Any, Protocol

from sqlalchemy import (
    Float,
    Integer,
    Text,
    bindparam,
    case,
    func,
    insert,
    literal,
    or_,
    select,
    update,
)

from sttgate.core.account_events import EventType, crossed_low
from sttgate.core.billing import LedgerWrite, Settlement, hold_refund, ledger_change
from sttgate.core.budget import month_start
from sttgate.core.budget import reached as budget_reached
from sttgate.core.keys import within_key_limit
from sttgate.core.outcomes import ClosedBy, SessionKind, TaskStatus
from sttgate.store.database import Database, NotFoundError, chunks, utcnow
from sttgate.store.events import balance_low_data, exhausted_data, record_balance_event
from sttgate.store.tables import UTCDateTime, accounts, sessions, tasks

if TYPE_CHECKING:
    from sttgate.store.outbox import Outbox
    from sttgate.store.pg_fast import PgFastPath
    from sttgate.store.sqlite_fast import SqliteFastPath

log = logging.getLogger(__name__)


class SlotOutcome(Enum):
    """What ``open_session`` did; the caller turns a refusal into its HTTP answer."""

    OPENED = "opened"
    TOO_MANY_STREAMS = "too_many_streams"
    KEY_TOO_MANY_STREAMS = "key_too_many_streams"  # the key's own limit (docs/contract.md#keys)
    INSUFFICIENT_BALANCE = "insufficient_balance"
    BUDGET_EXCEEDED = "budget_exceeded"  # this month's cost has reached the budget (docs/billing.md#budgets)


@dataclass(frozen=True)
class SlotFigures:
    """What the slot rule reads, in the account's locked transaction: the account's and the key's open sessions and
    limits, the balance, and this month's cost against the budget (the cost is read only when there is a budget)."""

    live: int
    max_streams: int
    key_live: int = 0
    key_max_streams: int | None = None
    balance_nanos: int | None = None  # None = postpaid
    budget_nanos: int | None = None
    month_cost_nanos: int = 0


@dataclass(frozen=True)
class SessionEnd:
    """How one session ended: the arguments of :meth:`Slots.end_session`, as :meth:`Slots.end_sessions` takes them."""

    session_id: str
    audio_seconds: float
    cycles: int
    cost_nanos: int
    close_code: int | None
    close_reason: str | None
    closed_by: ClosedBy


@dataclass(frozen=True)
class SessionProgress:
    session_id: str
    audio_seconds: float
    cycles: int
    cost_nanos: int


@dataclass(frozen=True)
class SettleRequest:
    """One session's ledger write, as :meth:`Slots.settle_cycles` takes it, for a batch of them."""

    session_id: str
    account_id: str
    price_nanos: int
    write: LedgerWrite


def _check_write(price_nanos: int, write: LedgerWrite) -> None:
    if price_nanos < 0 or min(write) < 0:
        raise ValueError("cycles and price must not be negative")


def final_costs(ends: Sequence[SessionEnd]) -> dict[str, int]:
    """Each ended session's final cost in a batch of ends (the largest, should one session be in it twice): what its
    hold is settled against (:func:`hold_refund`)."""
    costs: dict[str, int] = {}
    for end in ends:
        costs[end.session_id] = max(costs.get(end.session_id, 0), end.cost_nanos)
    return costs


class SlotDisagreement(RuntimeError):
    """PostgreSQL's ``sttgate_open_session`` decided otherwise than :func:`decide_open` on the figures it read (a bug:
    ``tests/store/test_pg_open.py`` compares both)."""


def monotone(column: Any, param: str, type_: Any) -> Any:
    """``max(column, :param)`` on every backend: totals written by batches never go backwards."""
    value = bindparam(param, type_=type_)
    return case((column < value, value), else_=column)


def decide_open(figures: SlotFigures, min_balance_nanos: int) -> SlotOutcome:
    """The slot rule, shared by both implementations, in the order of docs/contract.md#refusals: the account's stream
    limit, the key's, then the balance, then the month's budget."""
    if figures.live >= figures.max_streams:
        return SlotOutcome.TOO_MANY_STREAMS
    if not within_key_limit(figures.key_live, figures.key_max_streams):
        return SlotOutcome.KEY_TOO_MANY_STREAMS
    if figures.balance_nanos is not None and figures.balance_nanos < min_balance_nanos:
        return SlotOutcome.INSUFFICIENT_BALANCE
    if budget_reached(figures.budget_nanos, figures.month_cost_nanos):
        return SlotOutcome.BUDGET_EXCEEDED
    return SlotOutcome.OPENED


class LedgerDriver(Protocol):
    """The ledger writes both driver-level paths (``sqlite_fast.SqliteFastPath``, ``pg_fast.PgFastPath``) implement
    with the portable methods' meaning, called once those have checked their arguments."""

    async def accept_sessions(self, accepted: Sequence[tuple[str, datetime]]) -> None: ...

    async def settle_cycles(
        self, session_id: str, account_id: str, price_nanos: int, write: LedgerWrite
    ) -> Settlement: ...

    async def settle_cycles_batch(self, requests: Sequence[SettleRequest]) -> list[Settlement | BaseException]: ...

    async def flush_progress(self, updates: Sequence[SessionProgress]) -> None: ...

    async def renew_leases(self, session_ids: Sequence[str], expires: datetime) -> None: ...

    async def end_sessions(self, ends: Sequence[SessionEnd], now: datetime) -> set[str]: ...


class Slots:
    """Open, charge, flush, renew, end and reap sessions."""

    def __init__(
        self, database: Database, fast: SqliteFastPath | None, outbox: Outbox, pg_fast: PgFastPath | None
    ) -> None:
        self._db = database
        self._fast = fast
        # PostgreSQL: open by one call of ``sttgate_open_session``; accept, settle, end on the driver (None: portable).
        self._pg_fast = pg_fast
        # The batched ledger writes, on whichever driver-level path this database has (None: the portable code).
        self._driver: LedgerDriver | None = fast or pg_fast
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
        key_max_streams: int | None = None,
    ) -> SlotOutcome:
        """Take a stream slot (OPENED), or say why not (:func:`decide_open`): too many streams for the account or for
        the key (``key_max_streams``, the key's own limit), too little balance, or a monthly budget reached.

        ``min_balance_nanos`` is the price of one of the session's cycles: a prepaid account needs that much, and the
        opening **holds** it (docs/billing.md#holds): debited from the balance in the same transaction, recorded on
        the new row as ``held_cycles = 1``, ``held_nanos = min_balance_nanos`` (nothing held when it is 0 or the
        account postpaid). A hold that takes the balance below ``low_balance_usd`` records ``balance.low``.

        One transaction that holds the account's lock from the count to the insert, so concurrent opens of one
        account (in any process) are serialized and both limits are exact. A refusal for the balance records the
        account's ``balance.exhausted`` event in the same transaction (docs/contract.md#account-events).
        ``model``, ``rate_usd_per_hour`` (a decimal string) and ``basis`` are the session's price, recorded on its
        row; ``api_key_id`` the key that opened it (for a token, the key that minted it; docs/contract.md#usage).
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
                key_max_streams,
                month_start(now),
            )
        if self._pg_fast is not None:
            args: tuple[Any, ...] = (session_id, account_id, kind.value, provider, gateway_id, min_balance_nanos)
            args += (now, expires, month_start(now), model, rate_usd_per_hour, basis, api_key_id, key_max_streams)
            args += (min_balance_nanos,)  # the first hold: one cycle (nothing for a postpaid account)
            decided = await self._open_pg(self._pg_fast, args, min_balance_nanos, key_max_streams)
            if decided is not None:
                return decided
            # A refusal for the balance: the transaction below decides again and records the account event.
        return await self._open_portable(
            session_id=session_id,
            account_id=account_id,
            kind=kind,
            provider=provider,
            gateway_id=gateway_id,
            min_balance_nanos=min_balance_nanos,
            now=now,
            expires=expires,
            price=(model, rate_usd_per_hour, basis),
            api_key_id=api_key_id,
            key_max_streams=key_max_streams,
        )

    async def _open_pg(
        self, pg: PgFastPath, args: tuple[Any, ...], min_balance_nanos: int, key_max_streams: int | None
    ) -> SlotOutcome | None:
        """One autocommit statement: ``sttgate_open_session`` (migration 0011) locks the account, counts, decides as
        :func:`decide_open` does and inserts the slot (with the last argument, a hold, debited as the first held
        cycle; docs/billing.md#holds). It returns the figures it read: ``decide_open`` on them is the outcome, and a
        function that decided otherwise raises :class:`SlotDisagreement`. None for a refusal for the balance, or a
        first hold that takes the balance below its low threshold (the caller runs the portable transaction, which
        records the account event)."""
        row = await pg.open_session(args)
        if row is None:
            raise NotFoundError(f"no account {args[1]}")
        opened, live, max_streams, key_live, balance, budget, month_cost, low = row
        figures = SlotFigures(live, max_streams, key_live, key_max_streams, balance, budget, int(month_cost))
        outcome = decide_open(figures, min_balance_nanos)
        # A hold that crosses the low-balance threshold records balance.low: the function leaves it to the portable
        # transaction, like a refusal for the balance.
        slow_hold = (
            outcome is SlotOutcome.OPENED
            and balance is not None
            and min_balance_nanos > 0
            and crossed_low(low, balance, balance - min_balance_nanos)
        )
        if bool(opened) != (outcome is SlotOutcome.OPENED and not slow_hold):
            raise SlotDisagreement(f"sttgate_open_session opened={opened}; decide_open: {outcome.value} on {figures}")
        return None if outcome is SlotOutcome.INSUFFICIENT_BALANCE or slow_hold else outcome

    async def _open_portable(
        self,
        *,
        session_id: str,
        account_id: str,
        kind: SessionKind,
        provider: str,
        gateway_id: str,
        min_balance_nanos: int,
        now: datetime,
        expires: datetime,
        price: tuple[str | None, str | None, str | None],
        api_key_id: str | None,
        key_max_streams: int | None,
    ) -> SlotOutcome:
        model, rate_usd_per_hour, basis = price

        def live_count(*where: Any) -> Any:
            return (
                select(func.count())
                .select_from(sessions)
                .where(*where, sessions.c.ended_at.is_(None), sessions.c.lease_expires_at > now)
            )

        async with self._db.write() as conn:
            # PostgreSQL: the count must be read after the account's row lock is held (a statement's snapshot
            # predates the lock wait), so two statements.
            account = (
                await conn.execute(
                    select(accounts.c.max_streams, accounts.c.balance_nanos, accounts.c.monthly_budget_nanos)
                    .where(accounts.c.id == account_id)
                    .with_for_update()
                )
            ).first()
            if account is None:
                raise NotFoundError(f"no account {account_id}")
            live = (await conn.execute(live_count(sessions.c.account_id == account_id))).scalar_one()
            key_live = 0
            if key_max_streams is not None and api_key_id is not None:
                key_live = (await conn.execute(live_count(sessions.c.api_key_id == api_key_id))).scalar_one()
            month_cost = 0
            if account.monthly_budget_nanos is not None:
                month_cost = (
                    await conn.execute(
                        select(func.coalesce(func.sum(sessions.c.cost_nanos), 0)).where(
                            sessions.c.account_id == account_id, sessions.c.started_at >= month_start(now)
                        )
                    )
                ).scalar_one()
            figures = SlotFigures(
                live,
                account.max_streams,
                key_live,
                key_max_streams,
                account.balance_nanos,
                account.monthly_budget_nanos,
                int(month_cost),
            )
            outcome = decide_open(figures, min_balance_nanos)
            if outcome is SlotOutcome.INSUFFICIENT_BALANCE:
                data = exhausted_data(account.balance_nanos, "handshake_refused", session_id)
                await record_balance_event(conn, account_id, EventType.BALANCE_EXHAUSTED, data, latch=True)
            if outcome is SlotOutcome.OPENED:
                hold = min_balance_nanos if account.balance_nanos is not None and min_balance_nanos > 0 else 0
                if hold:
                    await self._debit(conn, account_id, session_id, hold)
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
                        held_cycles=1 if hold else 0,
                        held_nanos=hold,
                    )
                )
        return outcome

    @staticmethod
    async def _debit(conn: Any, account_id: str, session_id: str, amount: int) -> bool:
        """Debit ``amount`` if the balance has it (a paid cycle or a hold; it clears the ``balance.exhausted``
        latch) and record ``balance.low`` when the debit crosses the account's threshold; False when refused."""
        debited = (
            await conn.execute(
                update(accounts)
                .where(accounts.c.id == account_id, accounts.c.balance_nanos >= amount)
                .values(balance_nanos=accounts.c.balance_nanos - amount, balance_exhausted=False)
                .returning(accounts.c.balance_nanos, accounts.c.low_balance_nanos)
            )
        ).first()
        if debited is None:
            return False
        after, low = debited.balance_nanos, debited.low_balance_nanos
        if crossed_low(low, after + amount, after):
            await record_balance_event(
                conn, account_id, EventType.BALANCE_LOW, balance_low_data(after, low, session_id)
            )
        return True

    async def accept_sessions(self, accepted: Sequence[tuple[str, datetime]]) -> None:
        """These handshakes succeeded (the client got its 101, or the pull task is recorded): from now on each row is
        a session (docs/contract.md#usage), started at the given moment, the provider's 101. One statement for all.

        Until then a row only holds a slot: if its handshake fails, or its gateway dies first, it ends still
        ``opening`` and usage leaves it out. A prepaid charge marks its session accepted too (a session with a cost is
        always listed).
        """
        if not accepted:
            return
        accepted = sorted(accepted)  # rows locked in id order, as every multi-row ledger write does (no deadlock)
        if self._driver is not None:
            await self._driver.accept_sessions(accepted)
            return
        stmt = (
            update(sessions)
            .where(sessions.c.id == bindparam("p_id"))
            .values(opening=False, started_at=bindparam("p_started", type_=UTCDateTime()))
        )
        async with self._db.one_statement() as conn:
            await conn.execute(stmt, [{"p_id": sid, "p_started": started} for sid, started in accepted])

    async def charge_cycles(self, session_id: str, account_id: str, cycles: int, price_nanos: int) -> bool:
        """Debit ``cycles × price`` from a prepaid balance, all or nothing, with the session's cycles and cost; False
        when the balance cannot pay (:meth:`settle_cycles` with only ``charged``; postpaid: nothing written, True)."""
        return (await self.settle_cycles(session_id, account_id, price_nanos, LedgerWrite(charged=cycles))).paid

    async def settle_cycles(self, session_id: str, account_id: str, price_nanos: int, write: LedgerWrite) -> Settlement:
        """One ledger write of a prepaid session (:class:`~sttgate.core.billing.LedgerWrite`, in cycles at
        ``price_nanos``), in one transaction, in this order:

        1. ``charged``: debit ``charged × price`` from the balance, all or nothing, by a conditional UPDATE
           (``balance >= amount``), so racing sessions of one account never take the balance below zero. Refused:
           ``paid`` is False and ``balance.exhausted`` is recorded (once, until a cycle is paid again). A postpaid
           account is not debited and its cycles not written here (flush_progress does): paid.
        2. ``recorded`` and (when paid) ``covered`` cycles move from the session's hold to its cycles and cost (no
           balance move; never more than is held), with the paid ``charged`` cycles. A session that has ended (its
           end, or a reaper's ``gateway_crash`` that refunded its hold) records nothing here: its end writes the
           gateway's totals.
        3. ``hold`` (when paid, and the session has not ended): debit ``hold × price`` ahead if the balance has it;
           ``held`` says whether it did. A refused hold records nothing: it cuts nothing off.

        A debit that takes the balance below ``low_balance_usd`` records ``balance.low``. Only the transaction that
        made a change sees it, so each occurrence is recorded once however many gateways charge the account. The
        usage outbox gets one event per cycle added (docs/export.md).
        """
        _check_write(price_nanos, write)
        if self._driver is not None:
            # SQLite: one trip to the writer thread instead of about 13; PostgreSQL: two statements on the driver
            # instead of about seven through SQLAlchemy.
            return await self._driver.settle_cycles(session_id, account_id, price_nanos, write)
        charged = write.charged
        async with self._db.write() as conn, self._outbox.recording(conn, [session_id]):
            paid = debited = True
            if charged:
                debited = await self._debit(conn, account_id, session_id, charged * price_nanos)
                if not debited:
                    balance = (
                        await conn.execute(select(accounts.c.balance_nanos).where(accounts.c.id == account_id))
                    ).first()
                    if balance is None:
                        raise NotFoundError(f"no account {account_id}")
                    if balance.balance_nanos is not None:
                        paid = False
                        data = exhausted_data(balance.balance_nanos, "session_cut_off", session_id)
                        await record_balance_event(conn, account_id, EventType.BALANCE_EXHAUSTED, data, latch=True)
            row = (
                await conn.execute(
                    select(sessions.c.ended_at, sessions.c.held_cycles, sessions.c.held_nanos).where(
                        sessions.c.id == session_id, sessions.c.account_id == account_id
                    )
                )
            ).first()
            if row is None:
                raise NotFoundError(f"no session {session_id} of account {account_id}")
            live = row.ended_at is None
            change = ledger_change(write, price_nanos, paid, debited, live, row.held_cycles, row.held_nanos)
            held = bool(change.hold_nanos) and await self._debit(conn, account_id, session_id, change.hold_nanos)
            moves: dict[Any, Any] = {sessions.c[k]: sessions.c[k] + v for k, v in change.increments(held).items()}
            if change.added:
                moves[sessions.c.opening] = False  # a session with a cost is always listed
            if moves:
                await conn.execute(update(sessions).where(sessions.c.id == session_id).values(moves))
            return Settlement(paid, held)

    async def settle_cycles_batch(self, requests: Sequence[SettleRequest]) -> list[Settlement | BaseException]:
        """:meth:`settle_cycles` for several sessions, one outcome each, in order (a request's failure is its
        outcome: the others are not affected). On a SQLite file they share one transaction, each in a savepoint (one
        trip to the writer thread and one commit for all), on PostgreSQL one transaction (one commit); the portable
        code runs them concurrently, one transaction each."""
        for request in requests:
            _check_write(request.price_nanos, request.write)
        if self._driver is not None:
            return await self._driver.settle_cycles_batch(requests)
        outcomes = await asyncio.gather(
            *(self.settle_cycles(r.session_id, r.account_id, r.price_nanos, r.write) for r in requests),
            return_exceptions=True,
        )
        return list(outcomes)

    async def flush_progress(self, updates: Sequence[SessionProgress]) -> None:
        """Write absolute session totals in one batched transaction; a total never goes backwards."""
        if not updates:
            return
        if self._driver is not None:
            await self._driver.flush_progress(updates)
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
        """Extend the slots a live gateway still holds (one statement for up to 1000 sessions; on a SQLite file one
        trip to the writer thread, on PostgreSQL one statement on the driver).

        PostgreSQL: the rows are locked in id order first (``ORDER BY id FOR UPDATE`` in the subquery), the order every
        multi-row ledger write locks sessions in, so a renewal and a flush or a batch of ends never deadlock."""
        if not session_ids:
            return
        expires = utcnow() + timedelta(seconds=lease_ttl)
        ordered = sorted(session_ids)
        if self._driver is not None:
            await self._driver.renew_leases(ordered, expires)
            return
        async with self._db.write() as conn:
            for chunk in chunks(ordered):
                locked = (
                    select(sessions.c.id)
                    .where(sessions.c.id.in_(chunk), sessions.c.ended_at.is_(None))
                    .order_by(sessions.c.id)
                    .with_for_update()
                )
                await conn.execute(
                    update(sessions).where(sessions.c.id.in_(locked.scalar_subquery())).values(lease_expires_at=expires)
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
        """Record the final totals and how the session closed, which frees its slot (:meth:`end_sessions` for one)."""
        end = SessionEnd(session_id, audio_seconds, cycles, cost_nanos, close_code, close_reason, closed_by)
        if await self.end_sessions([end]):
            raise NotFoundError(f"no session {session_id}")

    async def end_sessions(self, ends: Sequence[SessionEnd]) -> set[str]:
        """Record the final totals and how each session closed, which frees their slots, in one transaction (one
        statement for all on PostgreSQL, one trip on SQLite); the ids of the sessions that do not exist.

        The final ``audio_seconds`` is the gateway's last word (a batch flushed while a refused chunk was still
        metered may have written more); ``cycles`` and ``cost_nanos`` never go below what was charged. A session a
        reaper closed as ``gateway_crash`` (its gateway stalled past the lease) gets the real ending.

        The same transaction settles the session's hold (docs/billing.md#holds): the cost beyond the row's was paid
        by the hold (never more than it holds), the rest of ``held_nanos`` is refunded to the balance, and the row
        holds nothing any more. Written twice, the second end finds nothing held.
        """
        if not ends:
            return set()
        for end in ends:
            try:
                ClosedBy(end.closed_by)
            except ValueError:
                raise ValueError(f"closed_by must be one of {', '.join(ClosedBy)}") from None
        now = utcnow()
        if self._driver is not None:
            return await self._driver.end_sessions(ends, now)
        return await self._end_portable(ends, now)

    async def record_provider_figures(
        self, session_id: str, audio_seconds: float | None, session_seconds: float | None
    ) -> None:
        """Record what the provider reported at the end of a session, beside the gateway's own totals
        (docs/billing.md#reconciliation). Written once, after ``end_session``; never part of the bill."""
        await self.record_provider_figures_batch([(session_id, audio_seconds, session_seconds)])

    async def record_provider_figures_batch(self, rows: Sequence[tuple[str, float | None, float | None]]) -> None:
        """:meth:`record_provider_figures` for several sessions (session id, audio seconds, session seconds): one
        statement."""
        if not rows:
            return
        if self._fast is not None:
            await self._fast.record_provider_figures_batch(rows)
            return
        stmt = (
            update(sessions)
            .where(sessions.c.id == bindparam("p_id"))
            .values(
                provider_audio_seconds=bindparam("p_audio", type_=Float()),
                provider_session_seconds=bindparam("p_session", type_=Float()),
            )
        )
        async with self._db.one_statement() as conn:
            await conn.execute(stmt, [{"p_id": sid, "p_audio": a, "p_session": t} for sid, a, t in rows])

    async def _end_portable(self, ends: Sequence[SessionEnd], now: datetime) -> set[str]:
        still_open = or_(sessions.c.ended_at.is_(None), sessions.c.closed_by == ClosedBy.GATEWAY_CRASH.value)
        stmt = (
            update(sessions)
            .where(sessions.c.id == bindparam("p_id"))
            .values(
                audio_seconds=case((still_open, bindparam("p_audio", type_=Float())), else_=sessions.c.audio_seconds),
                cycles=monotone(sessions.c.cycles, "p_cycles", Integer()),
                cost_nanos=monotone(sessions.c.cost_nanos, "p_cost", sessions.c.cost_nanos.type),
                ended_at=case((still_open, literal(now, UTCDateTime())), else_=sessions.c.ended_at),
                close_code=case((still_open, bindparam("p_code", type_=Integer())), else_=sessions.c.close_code),
                close_reason=case((still_open, bindparam("p_reason", type_=Text())), else_=sessions.c.close_reason),
                closed_by=case((still_open, bindparam("p_closed_by", type_=Text())), else_=sessions.c.closed_by),
            )
        )
        params = [
            {
                "p_id": e.session_id,
                "p_audio": float(e.audio_seconds),
                "p_cycles": e.cycles,
                "p_cost": e.cost_nanos,
                "p_code": e.close_code,
                "p_reason": e.close_reason,
                "p_closed_by": ClosedBy(e.closed_by).value,
            }
            for e in ends
        ]
        ids = [e.session_id for e in ends]
        # Each session's hold is settled in the same transaction (docs/billing.md#holds): the cost beyond the row's was
        # paid by it, the rest goes back to the balance, and the row holds nothing any more.
        final_cost = final_costs(ends)
        held = select(sessions.c.id, sessions.c.account_id, sessions.c.cost_nanos, sessions.c.held_nanos)
        async with self._db.write() as conn, self._outbox.recording(conn, ids) as found:
            rows = (await conn.execute(held.where(sessions.c.id.in_(final_cost), sessions.c.held_nanos > 0))).all()
            # One executemany: a single round trip on PostgreSQL (asyncpg pipelines the rows).
            await conn.execute(stmt.values(held_cycles=0, held_nanos=0), params)
            for row in rows:
                await _refund(conn, row.account_id, hold_refund(row.cost_nanos, final_cost[row.id], row.held_nanos))
        return set(ids) - found

    async def reap_dead_sessions(self) -> list[str]:
        """Close as ``gateway_crash`` the open sessions whose lease expired, and only those: a session whose lease
        is renewed belongs to a live gateway, whichever it is.

        Cycles and cost already written are kept, and each session's hold is refunded (docs/billing.md#holds: a cycle
        opened from it that its gateway had not written is not billed, like any cycle not written). Their pull tasks
        end as ``gateway_shutdown``. Safe to run on every gateway at once: each session is closed by exactly one of
        them (PostgreSQL: the rows are locked first, and a reaper that waited finds them ended).
        """
        now = utcnow()
        async with self._db.write() as conn:
            expired = (
                await conn.execute(
                    select(sessions.c.id, sessions.c.account_id, sessions.c.held_nanos)
                    .where(sessions.c.ended_at.is_(None), sessions.c.lease_expires_at <= now)
                    .order_by(sessions.c.id)  # the outbox's order: rows are locked in one order everywhere
                    .with_for_update()
                )
            ).all()
            reaped: list[str] = []
            refunds: dict[str, int] = {}
            for chunk in chunks([r.id for r in expired]):
                result = await conn.execute(
                    update(sessions)
                    .where(sessions.c.id.in_(chunk), sessions.c.ended_at.is_(None))
                    .values(ended_at=now, closed_by=ClosedBy.GATEWAY_CRASH.value, held_cycles=0, held_nanos=0)
                    .returning(sessions.c.id)
                )
                reaped.extend(r.id for r in result)
            closed = set(reaped)
            for r in expired:
                if r.id in closed and r.held_nanos:
                    refunds[r.account_id] = refunds.get(r.account_id, 0) + r.held_nanos
            for account_id, amount in sorted(refunds.items()):
                await _refund(conn, account_id, amount)
            for chunk in chunks(reaped):
                await conn.execute(
                    update(tasks)
                    .where(tasks.c.id.in_(chunk), tasks.c.ended_at.is_(None))
                    .values(status=TaskStatus.GATEWAY_SHUTDOWN.value, ended_at=now)
                )
        if reaped:
            log.info("closed %d sessions left by a crashed or stalled gateway", len(reaped))
        return reaped


async def _refund(conn: Any, account_id: str, amount: int) -> None:
    """Give ``amount`` of a hold back to a prepaid balance (an account made postpaid since has none: nothing)."""
    if amount:
        await conn.execute(
            update(accounts)
            .where(accounts.c.id == account_id, accounts.c.balance_nanos.is_not(None))
            .values(balance_nanos=accounts.c.balance_nanos + amount)
        )
