"""Sessions as the operator sees them (docs/admin-api.md#sessions): every gateway's, live or ended, and the close
request an operator leaves for the gateway that runs one.

A session is live while its row has no end and a lease in the future (the lease is what every gateway renews for
the sessions it runs), so one query sees the live sessions of every gateway on the database. Closing goes through
the database too: ``close_requested_at`` is set here, and the gateway running the session polls for it
(:meth:`sttgate.gateway.manager.SessionManager.close_requested`) and ends it with 1008 "closed by operator".
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, and_, false, or_, select, update
from sqlalchemy.engine import Row

from sttgate.store.accounts import MAX_PAGE
from sttgate.store.database import ConflictError, Database, NotFoundError, utcnow
from sttgate.store.tables import sessions
from sttgate.store.usage import UsageRow, usage_row


@dataclass(frozen=True)
class OperatorSession:
    """A session with what the operator needs beyond the usage row: whose, where it runs, whether it is live."""

    row: UsageRow
    account_id: str
    gateway_id: str
    live: bool
    close_requested_at: datetime | None


class OperatorSessions:
    def __init__(self, database: Database) -> None:
        self._db = database

    async def list(
        self,
        *,
        live: bool = False,
        account_id: str | None = None,
        after: str | None = None,
        limit: int = 100,
    ) -> list[OperatorSession]:
        """Sessions newest first (rows still ``opening`` are handshakes, not sessions); ``live``: only those with no
        end and a fresh lease, on any gateway; ``after``: those after that session (a page's cursor)."""
        if not 1 <= limit <= MAX_PAGE:
            raise ValueError(f"limit must be 1..{MAX_PAGE}")
        now = utcnow()
        conditions: list[ColumnElement[bool]] = [sessions.c.opening.is_(false())]
        if live:
            conditions += [sessions.c.ended_at.is_(None), sessions.c.lease_expires_at > now]
        if account_id is not None:
            conditions.append(sessions.c.account_id == account_id)
        async with self._db.reader.connect() as conn:
            if after is not None:
                last = (await conn.execute(select(sessions.c.started_at).where(sessions.c.id == after))).first()
                if last is None:
                    raise ValueError(f"the cursor {after!r} names no session")
                conditions.append(
                    or_(
                        sessions.c.started_at < last.started_at,
                        and_(sessions.c.started_at == last.started_at, sessions.c.id < after),
                    )
                )
            rows = (
                await conn.execute(
                    select(sessions)
                    .where(and_(*conditions))
                    .order_by(sessions.c.started_at.desc(), sessions.c.id.desc())
                    .limit(limit)
                )
            ).all()
        return [_session(r, now) for r in rows]

    async def get(self, session_id: str) -> OperatorSession:
        async with self._db.reader.connect() as conn:
            row = (await conn.execute(select(sessions).where(sessions.c.id == session_id))).first()
        if row is None:
            raise NotFoundError(f"no session {session_id}")
        return _session(row, utcnow())

    async def request_close(self, session_id: str) -> OperatorSession:
        """Ask the gateway running the session to end it; the first request's time is kept. A session that has
        ended, or whose gateway stopped renewing its lease, is a :class:`ConflictError`."""
        now = utcnow()
        async with self._db.write() as conn:
            row = (await conn.execute(select(sessions).where(sessions.c.id == session_id))).first()
            if row is None:
                raise NotFoundError(f"no session {session_id}")
            if row.ended_at is not None or row.lease_expires_at <= now:
                raise ConflictError(f"the session {session_id} is not live")
            if row.close_requested_at is None:
                await conn.execute(
                    update(sessions)
                    .where(sessions.c.id == session_id, sessions.c.close_requested_at.is_(None))
                    .values(close_requested_at=now)
                )
            row = (await conn.execute(select(sessions).where(sessions.c.id == session_id))).one()
        return _session(row, now)

    async def close_requests(self) -> set[str]:
        """The ids of sessions not yet ended that an operator asked to close (on any gateway: the caller picks its
        own). Indexed on ``close_requested_at``, which few rows have."""
        async with self._db.reader.connect() as conn:
            rows = await conn.execute(
                select(sessions.c.id).where(sessions.c.close_requested_at.is_not(None), sessions.c.ended_at.is_(None))
            )
            return {r.id for r in rows}


def _session(r: Row[Any], now: datetime) -> OperatorSession:
    return OperatorSession(
        row=usage_row(r),
        account_id=r.account_id,
        gateway_id=r.gateway_id,
        live=r.ended_at is None and r.lease_expires_at > now,
        close_requested_at=r.close_requested_at,
    )
