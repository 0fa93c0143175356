"""The database handle every aggregate shares: the engine, a read-only view of it, and the SQLite write lock.

Engines, drivers and migrations are in :mod:`sttgate.store.db`; this module is what the aggregates' queries run
through. Every write goes through :meth:`Database.write`, so that on SQLite this process's writers queue on one
``asyncio.Lock`` instead of in SQLite's busy handler.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import sqlite3
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, datetime

import asyncpg
from sqlalchemy import exc as sa_exc
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from sttgate.store import db

log = logging.getLogger(__name__)

# Statements with an IN list take at most this many ids (SQLite's default variable limit is far above).
ID_CHUNK = 1000


class NotFoundError(LookupError):
    """An account, key or session that does not exist (the CLI prints it and exits 1)."""


class ConflictError(ValueError):
    """A change the current state refuses: a unique value taken, an idempotency key reused with other values, a
    postpaid account credited, a session that is no longer live (the admin API answers 409; the CLI prints it)."""


# What a database that is down, full, locked or refusing connections raises, whichever driver and path (SQLAlchemy
# wraps driver errors in DBAPIError; the fast paths raise their driver's own: sqlite3's, and asyncpg's for a lost
# connection, a server out of resources or shutting down; a refused connection may surface as OSError; a bounded wait
# as TimeoutError).
UNAVAILABLE: tuple[type[BaseException], ...] = (
    sa_exc.DBAPIError,
    sa_exc.TimeoutError,
    sqlite3.Error,
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.exceptions.InsufficientResourcesError,
    asyncpg.exceptions.OperatorInterventionError,
    OSError,
    TimeoutError,
)


def unavailable(exc: BaseException) -> bool:
    """Whether ``exc`` says the database could not be used (as opposed to a missing row or a programming error)."""
    return isinstance(exc, UNAVAILABLE)


def utcnow() -> datetime:
    return datetime.now(UTC)


def hash_secret(secret: str) -> str:
    """SHA-256 hex of a key or token: they are 256-bit random, so a fast hash loses nothing."""
    return hashlib.sha256(secret.encode()).hexdigest()


def chunks(ids: Sequence[str]) -> list[Sequence[str]]:
    return [ids[i : i + ID_CHUNK] for i in range(0, len(ids), ID_CHUNK)]


class Database:
    """One engine and how to use it: ``reader`` for reads, ``write()`` for write transactions."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        self.reader = db.read_only(engine)
        self.is_sqlite = engine.dialect.name == "sqlite"
        # SQLite has one writer at a time. Its busy handler polls with sleeps of up to 100 ms, so letting this
        # process's writers queue here instead keeps a write's latency near its own cost (other processes still
        # wait in the busy handler).
        self.write_lock: asyncio.Lock | None = asyncio.Lock() if self.is_sqlite else None
        self._autocommit = engine.execution_options(isolation_level="AUTOCOMMIT")

    @asynccontextmanager
    async def write(self) -> AsyncIterator[AsyncConnection]:
        """A write transaction, committed on success (``BEGIN IMMEDIATE`` on SQLite, see ``db.py``).

        Not re-entrant: do not call another writing store method inside it.
        """
        if self.write_lock is None:
            async with self.engine.begin() as conn:
                yield conn
        else:
            async with self.write_lock, self.engine.begin() as conn:
                yield conn

    @asynccontextmanager
    async def one_statement(self) -> AsyncIterator[AsyncConnection]:
        """A write of exactly one statement (an executemany is one). On PostgreSQL it runs in autocommit: a statement
        is atomic on its own, and BEGIN and COMMIT would be two more round trips. On SQLite it is :meth:`write`."""
        if self.write_lock is None:
            async with self._autocommit.connect() as conn:
                yield conn
        else:
            async with self.write() as conn:
                yield conn

    async def ping(self, timeout: float) -> bool:
        """True when the database answers within ``timeout``; never raises."""
        try:
            async with asyncio.timeout(timeout), self.reader.connect() as conn:
                await conn.execute(text("SELECT 1"))
        except Exception:
            log.warning("database ping failed", exc_info=True)
            return False
        return True

    async def probe_write(self) -> None:
        """Open a write transaction and write nothing: raises when the database refuses connections or writers (a
        locked SQLite file, a read-only database, a PostgreSQL that refuses the role). A full disk shows only in a
        write that needs space, so ``/readyz`` also looks at the outcome of the gateway's own recent writes."""
        async with self.write() as conn:
            if self.is_sqlite:
                # BEGIN IMMEDIATE took the write lock already; nothing more to ask.
                return
            await conn.execute(text("SELECT txid_current()"))

    async def close(self) -> None:
        await self.engine.dispose()
