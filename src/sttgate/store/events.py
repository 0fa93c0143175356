"""The outbox of account events (docs/contract.md#account-events): written where the occurrence is observed,
claimed and marked by whichever gateway delivers it.

An event row is inserted by the transaction that observed its occurrence (a balance event by the charge or the
refused slot that saw it, with the account row locked or SQLite's single writer), or, for occurrences read from
totals (budget thresholds, expiring keys), under an id that the occurrence determines, inserted only if absent. Either
way one occurrence is one row, however many gateways saw it. Only accounts with a ``webhook_url`` get events.

Delivery claims due rows for a while (``claimed_until``: PostgreSQL ``FOR UPDATE SKIP LOCKED`` so concurrent claimers
take different rows; SQLite has one writer), posts them, and marks each delivered or due again after a backoff.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection

from sttgate.core import account_events as ev
from sttgate.core import budget
from sttgate.core.money import format_usd
from sttgate.store.database import Database, chunks, utcnow
from sttgate.store.tables import account_events, accounts, api_keys, sessions


@dataclass(frozen=True)
class PendingEvent:
    """An event claimed for delivery: its id, the account's URL and signing secret, the exact body to post."""

    id: str
    account_id: str
    type: str
    body: str
    url: str
    secret: str
    attempts: int


@dataclass(frozen=True)
class MonthSpend:
    """An account's budget and the cost of its sessions started this month (UTC), as last read."""

    budget_nanos: int | None
    month_cost_nanos: int


def insert_event(
    conn: AsyncConnection, event_id: str, account_id: str, kind: ev.EventType, data: dict[str, Any]
) -> Any:
    """The statement that records an event unless one with its id exists (the id is the occurrence)."""
    now = utcnow()
    values = {
        "id": event_id,
        "account_id": account_id,
        "type": str(kind),
        "payload": ev.body(event_id, kind, now, data),
        "created_at": now,
        "next_attempt_at": now,
        "attempts": 0,
    }
    dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
    return conn.execute(dialect.insert(account_events).values(**values).on_conflict_do_nothing(index_elements=["id"]))


async def record_balance_event(
    conn: AsyncConnection, account_id: str, kind: ev.EventType, data: dict[str, Any], *, latch: bool = False
) -> None:
    """Inside the transaction that observed it: number the account's next balance event and record it, if the account
    has a webhook URL. ``latch`` (``balance.exhausted``): only if none was recorded since a cycle was last paid."""
    stmt = update(accounts).where(accounts.c.id == account_id, accounts.c.webhook_url.is_not(None))
    values: dict[str, Any] = {"balance_event_seq": accounts.c.balance_event_seq + 1}
    if latch:
        stmt = stmt.where(accounts.c.balance_exhausted.is_(False))
        values["balance_exhausted"] = True
    row = (await conn.execute(stmt.values(**values).returning(accounts.c.balance_event_seq))).first()
    if row is not None:
        event_id = ev.balance_event_id(kind, account_id, row.balance_event_seq)
        await insert_event(conn, event_id, account_id, kind, {"account_id": account_id, **data})


def balance_low_data(balance_nanos: int, low_nanos: int, session_id: str) -> dict[str, Any]:
    return {
        "balance_usd": format_usd(balance_nanos),
        "low_balance_usd": format_usd(low_nanos),
        "session_id": session_id,
    }


def exhausted_data(balance_nanos: int | None, why: str, session_id: str) -> dict[str, Any]:
    """``why``: ``session_cut_off`` (4002) or ``handshake_refused`` (402)."""
    return {"balance_usd": format_usd(balance_nanos), "reason": why, "session_id": session_id}


class AccountEvents:
    """Budget figures for live sessions, the events read from totals, and the delivery side of the outbox."""

    def __init__(self, database: Database) -> None:
        self._db = database

    async def month_spend(self, account_ids: Sequence[str], now: datetime) -> dict[str, MonthSpend]:
        """The budgeted accounts among ``account_ids`` and their spending this month, in one read per 1000."""
        spend: dict[str, MonthSpend] = {}
        start = budget.month_start(now)
        cost = (
            select(func.coalesce(func.sum(sessions.c.cost_nanos), 0))
            .where(sessions.c.account_id == accounts.c.id, sessions.c.started_at >= start)
            .scalar_subquery()
        )
        async with self._db.reader.connect() as conn:
            for chunk in chunks(list(account_ids)):
                rows = await conn.execute(
                    select(accounts.c.id, accounts.c.monthly_budget_nanos, cost.label("cost")).where(
                        accounts.c.id.in_(chunk), accounts.c.monthly_budget_nanos.is_not(None)
                    )
                )
                for r in rows:
                    spend[r.id] = MonthSpend(r.monthly_budget_nanos, int(r.cost))
        return spend

    async def record_budget_thresholds(self, spend: dict[str, MonthSpend], now: datetime) -> int:
        """Record ``budget.threshold`` for every threshold reached this month by an account with a webhook URL (a
        threshold already recorded is not recorded again). How many were new."""
        month = budget.month_label(now)
        due = {a: budget.thresholds_passed(s.budget_nanos, s.month_cost_nanos) for a, s in spend.items()}
        due = {a: p for a, p in due.items() if p}
        if not due:
            return 0
        new = 0
        async with self._db.write() as conn:
            hooked = {
                r.id
                for r in await conn.execute(
                    select(accounts.c.id).where(accounts.c.id.in_(list(due)), accounts.c.webhook_url.is_not(None))
                )
            }
            for account_id in hooked:
                s = spend[account_id]
                for percent in due[account_id]:
                    data = {
                        "account_id": account_id,
                        "month": month,
                        "percent": percent,
                        "month_cost_usd": format_usd(s.month_cost_nanos),
                        "monthly_budget_usd": format_usd(s.budget_nanos),
                    }
                    result = await insert_event(
                        conn,
                        ev.budget_threshold_id(account_id, month, percent),
                        account_id,
                        ev.EventType.BUDGET_THRESHOLD,
                        data,
                    )
                    new += result.rowcount
        return new

    async def record_expiring_keys(self, now: datetime) -> int:
        """Record ``key.expiring`` for every unrevoked key expiring within 7 days whose account has a webhook URL."""
        soon = now + ev.KEY_EXPIRING_WITHIN
        new = 0
        async with self._db.write() as conn:
            rows = (
                await conn.execute(
                    select(
                        api_keys.c.id, api_keys.c.account_id, api_keys.c.name, api_keys.c.prefix, api_keys.c.expires_at
                    )
                    .join(accounts, accounts.c.id == api_keys.c.account_id)
                    .where(
                        api_keys.c.revoked_at.is_(None),
                        api_keys.c.expires_at > now,
                        api_keys.c.expires_at <= soon,
                        accounts.c.webhook_url.is_not(None),
                    )
                )
            ).all()
            for r in rows:
                data = {
                    "account_id": r.account_id,
                    "key_id": r.id,
                    "name": r.name,
                    "prefix": r.prefix,
                    "expires_at": r.expires_at.isoformat(),
                }
                result = await insert_event(
                    conn, ev.key_expiring_id(r.id, r.expires_at), r.account_id, ev.EventType.KEY_EXPIRING, data
                )
                new += result.rowcount
        return new

    async def claim(self, limit: int, hold_seconds: float) -> list[PendingEvent]:
        """Up to ``limit`` due, undelivered events, claimed for ``hold_seconds`` (no other gateway takes them
        meanwhile), oldest first. Every gateway asks every second: when nothing is due (nearly always) that is one
        read, not a write transaction (which on SQLite would hold the one writer's lock, delaying charges and ends)."""
        now = utcnow()
        e = account_events
        due = (
            select(e.c.id)
            .join(accounts, accounts.c.id == e.c.account_id)
            .where(
                e.c.delivered_at.is_(None),
                e.c.next_attempt_at <= now,
                or_(e.c.claimed_until.is_(None), e.c.claimed_until <= now),
                accounts.c.webhook_url.is_not(None),  # a URL removed since: kept, posted if one is set again
            )
            .order_by(e.c.created_at, e.c.id)
        )
        async with self._db.reader.connect() as conn:
            if (await conn.execute(due.limit(1))).first() is None:
                return []
        due = due.limit(limit)
        if not self._db.is_sqlite:
            due = due.with_for_update(skip_locked=True, of=e)
        async with self._db.write() as conn:
            ids = [r.id for r in await conn.execute(due)]
            if not ids:
                return []
            until = now + timedelta(seconds=hold_seconds)
            await conn.execute(update(e).where(e.c.id.in_(ids)).values(claimed_until=until))
            rows = await conn.execute(
                select(
                    e.c.id,
                    e.c.account_id,
                    e.c.type,
                    e.c.payload,
                    e.c.attempts,
                    accounts.c.webhook_url,
                    accounts.c.webhook_secret,
                )
                .join(accounts, accounts.c.id == e.c.account_id)
                .where(e.c.id.in_(ids))
                .order_by(e.c.created_at, e.c.id)
            )
            return [
                PendingEvent(r.id, r.account_id, r.type, r.payload, r.webhook_url or "", r.webhook_secret, r.attempts)
                for r in rows
            ]

    async def delivered(self, event_id: str) -> None:
        async with self._db.write() as conn:
            await conn.execute(
                update(account_events)
                .where(account_events.c.id == event_id)
                .values(
                    delivered_at=utcnow(), claimed_until=None, attempts=account_events.c.attempts + 1, last_error=None
                )
            )

    async def failed(self, event_id: str, error: str, retry_in_seconds: float) -> None:
        async with self._db.write() as conn:
            await conn.execute(
                update(account_events)
                .where(account_events.c.id == event_id)
                .values(
                    next_attempt_at=utcnow() + timedelta(seconds=retry_in_seconds),
                    claimed_until=None,
                    attempts=account_events.c.attempts + 1,
                    last_error=error[:500],
                )
            )

    async def list_events(self, account_id: str) -> list[dict[str, Any]]:
        """An account's events, oldest first, with their delivery state (for the operator and the tests)."""
        e = account_events
        async with self._db.reader.connect() as conn:
            rows = await conn.execute(select(e).where(e.c.account_id == account_id).order_by(e.c.created_at, e.c.id))
            return [
                {
                    "id": r.id,
                    "type": r.type,
                    "data": json.loads(r.payload)["data"],
                    "created_at": r.created_at.isoformat(),
                    "attempts": r.attempts,
                    "delivered_at": None if r.delivered_at is None else r.delivered_at.isoformat(),
                    "last_error": r.last_error,
                }
                for r in rows
            ]
