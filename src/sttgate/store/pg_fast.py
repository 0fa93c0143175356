"""PostgreSQL only: the statements of every handshake (authenticate, open, accept) on the driver itself.

Through SQLAlchemy each statement costs the event loop about a millisecond of CPU (compilation cache lookups, result
processing, the greenlet hop into its synchronous core); a handshake runs several. Here each is one call on the
asyncpg connection taken from the engine's own pool (same connections, same settings, same checkout check), with the
text of the portable statement: ``auth.AUTH_QUERY``, ``sttgate_open_session`` (migration 0011) and
``Slots.accept_sessions``'s UPDATE. ``tests/store/test_pg_fast.py`` runs both and compares.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Any

from sttgate.store.auth import AuthRow
from sttgate.store.database import Database

_AUTH_SQL = (
    "SELECT api_keys.id, api_keys.key_hash, api_keys.revoked_at, api_keys.last_used_at, accounts.id,"
    " accounts.streaming_enabled, accounts.max_streams, accounts.balance_nanos, api_keys.expires_at,"
    " api_keys.max_streams, api_keys.providers"
    " FROM api_keys JOIN accounts ON accounts.id = api_keys.account_id WHERE api_keys.key_hash = $1"
)
_OPEN_SQL = "SELECT * FROM sttgate_open_session($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15)"
_ACCEPT_SQL = "UPDATE sessions SET opening = false, started_at = $2 WHERE id = $1"


class PgFastPath:
    """The driver-level implementations; same arguments and results as their portable counterparts."""

    def __init__(self, database: Database) -> None:
        self._engine = database.engine

    @classmethod
    def for_database(cls, database: Database) -> PgFastPath | None:
        """The fast path on PostgreSQL; None on SQLite (which has its own, ``sqlite_fast.py``)."""
        return None if database.is_sqlite else cls(database)

    @asynccontextmanager
    async def _driver(self) -> AsyncIterator[Any]:
        """An asyncpg connection of the engine's pool, outside any transaction (each statement commits alone)."""
        async with self._engine.connect() as conn:
            raw = await conn.get_raw_connection()
            yield raw.driver_connection

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
