"""What an account used: its balance and its sessions in a time window, as typed rows.

The usage document (docs/contract.md#usage) is built from these in :mod:`sttgate.admin`.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import and_, false, select
from sqlalchemy.engine import Row

from sttgate.core.outcomes import ClosedBy, SessionKind
from sttgate.store.database import Database, NotFoundError
from sttgate.store.tables import accounts, sessions


@dataclass(frozen=True)
class UsageRow:
    id: str
    kind: SessionKind
    provider: str
    started_at: datetime
    ended_at: datetime | None
    audio_seconds: float
    cycles: int
    cost_nanos: int
    close_code: int | None
    closed_by: ClosedBy | None
    provider_audio_seconds: float | None  # what the provider reported (None: nothing)
    provider_session_seconds: float | None
    # The price fixed at the handshake (None for sessions recorded before prices were).
    model: str | None = None
    rate_usd_per_hour: str | None = None
    basis: str | None = None
    api_key_id: str | None = None  # the key that opened it (None for sessions before attribution was recorded)


@dataclass(frozen=True)
class Usage:
    account_id: str
    balance_nanos: int | None  # None = postpaid
    sessions: list[UsageRow]  # newest first


class UsageQueries:
    def __init__(self, database: Database) -> None:
        self._db = database

    async def usage(
        self,
        account_id: str,
        since: datetime | None = None,
        until: datetime | None = None,
        key_id: str | None = None,
    ) -> Usage:
        """The account's balance and the sessions that started in ``[since, until)``, newest first; with ``key_id``
        only that key's sessions (a key of another account matches none: the account is always a condition).

        A row still ``opening`` is a slot held for a handshake that never got its 101 (refused, abandoned, or its
        gateway died first): not a session (docs/contract.md#usage).
        """
        conditions = [sessions.c.account_id == account_id, sessions.c.opening.is_(false())]
        if since is not None:
            conditions.append(sessions.c.started_at >= since)
        if until is not None:
            conditions.append(sessions.c.started_at < until)
        if key_id is not None:
            conditions.append(sessions.c.api_key_id == key_id)
        async with self._db.reader.connect() as conn:
            account = (await conn.execute(select(accounts.c.balance_nanos).where(accounts.c.id == account_id))).first()
            if account is None:
                raise NotFoundError(f"no account {account_id}")
            rows = (
                await conn.execute(
                    select(
                        sessions.c.id,
                        sessions.c.kind,
                        sessions.c.provider,
                        sessions.c.started_at,
                        sessions.c.ended_at,
                        sessions.c.audio_seconds,
                        sessions.c.cycles,
                        sessions.c.cost_nanos,
                        sessions.c.close_code,
                        sessions.c.closed_by,
                        sessions.c.provider_audio_seconds,
                        sessions.c.provider_session_seconds,
                        sessions.c.model,
                        sessions.c.rate_usd_per_hour,
                        sessions.c.basis,
                        sessions.c.api_key_id,
                    )
                    .where(and_(*conditions))
                    .order_by(sessions.c.started_at.desc(), sessions.c.id.desc())
                )
            ).all()
        return Usage(
            account_id=account_id,
            balance_nanos=account.balance_nanos,
            sessions=[usage_row(r) for r in rows],
        )


def usage_row(r: Row[*tuple[Any, ...]]) -> UsageRow:
    """A session row read with the usage columns, as the usage document's session (also the operator's view of it)."""
    return UsageRow(
        id=r.id,
        kind=SessionKind(r.kind),
        provider=r.provider,
        started_at=r.started_at,
        ended_at=r.ended_at,
        audio_seconds=float(r.audio_seconds),
        cycles=r.cycles,
        cost_nanos=r.cost_nanos,
        close_code=r.close_code,
        closed_by=None if r.closed_by is None else ClosedBy(r.closed_by),
        provider_audio_seconds=r.provider_audio_seconds,
        provider_session_seconds=r.provider_session_seconds,
        model=r.model,
        rate_usd_per_hour=r.rate_usd_per_hour,
        basis=r.basis,
        api_key_id=r.api_key_id,
    )
