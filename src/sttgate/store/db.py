"""Database engines and migrations.

One URL names the database everywhere (``sqlite:///path`` or ``postgresql://…``); this module picks the async
driver and the connection settings that the store's locking relies on.
"""

from __future__ import annotations

import shlex
import sqlite3
from importlib import resources
from typing import Any

from sqlalchemy import event, text
from sqlalchemy.engine import URL, Connection, make_url
from sqlalchemy.exc import DisconnectionError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

SQLITE_BUSY_TIMEOUT_MS = 15_000
PG_CONNECT_TIMEOUT_SECONDS = 10
# Every SQLite connection of the store (the pool's and the fast path's) runs these on connect.
SQLITE_PRAGMAS = (
    "PRAGMA journal_mode=WAL",
    "PRAGMA synchronous=NORMAL",
    f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}",
    "PRAGMA foreign_keys=ON",
)
# Execution option: a transaction that only reads, so SQLite may start it deferred instead of IMMEDIATE.
READ_ONLY = "sttgate_read_only"
# Any fixed number: serializes concurrent `upgrade()` calls of several gateways on one PostgreSQL database.
_MIGRATION_LOCK_ID = 0x5774_6761_7465


def async_url(url: str) -> URL:
    """Map a user-facing URL to the async driver: sqlite → aiosqlite, postgresql/postgres → asyncpg."""
    if url.startswith("postgres://"):
        url = "postgresql://" + url.removeprefix("postgres://")
    parsed = make_url(url)
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        return parsed.set(drivername="sqlite+aiosqlite")
    if backend == "postgresql":
        return parsed.set(drivername="postgresql+asyncpg")
    raise ValueError(f"unsupported database URL (use sqlite:///path or postgresql://…): {parsed.drivername}")


def sqlite_file(url: str) -> str | None:
    """The file a ``sqlite:///path`` URL names; ``None`` for other databases and in-memory SQLite."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite" or not parsed.database or parsed.database == ":memory:":
        return None
    return parsed.database


def make_engine(url: str) -> AsyncEngine:
    """An async engine for ``url``, configured for the store's transactions."""
    target = async_url(url)
    if target.get_backend_name() == "sqlite":
        return _sqlite_engine(target)
    return _postgres_engine(target)


def read_only(engine: AsyncEngine) -> AsyncEngine:
    """A view of ``engine`` for reads: no write lock on SQLite, no BEGIN/ROLLBACK round trips on PostgreSQL."""
    if engine.dialect.name == "postgresql":
        return engine.execution_options(isolation_level="AUTOCOMMIT")
    return engine.execution_options(**{READ_ONLY: True})


def _sqlite_engine(url: URL) -> AsyncEngine:
    # The Connection ends every transaction itself (commit, or rollback on close): no second rollback on return.
    engine = create_async_engine(url, pool_size=5, max_overflow=15, pool_reset_on_return=None)

    @event.listens_for(engine.sync_engine, "do_connect")
    def _open_file_first(_dialect: Any, _record: Any, cargs: list[Any], cparams: dict[str, Any]) -> None:
        # aiosqlite opens the file on its worker thread and, when that fails (missing directory, permissions), stops
        # the thread without waiting for it; the thread then reports to the event loop, which may be closed by then
        # ("Event loop is closed" from a thread at exit). Opening the file here first raises those errors in the
        # caller instead, before aiosqlite starts a thread. A local open is short; it happens once per pooled
        # connection.
        sqlite3.connect(*cargs, **cparams).close()

    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # The driver's own implicit BEGIN is turned off; `_on_begin` emits ours, so that writers start
        # with BEGIN IMMEDIATE and take the write lock up front (the slot check must not race).
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        for pragma in SQLITE_PRAGMAS:
            cursor.execute(pragma)
        cursor.close()

    @event.listens_for(engine.sync_engine, "begin")
    def _on_begin(conn: Connection) -> None:
        read_only = conn.get_execution_options().get(READ_ONLY, False)
        conn.exec_driver_sql("BEGIN" if read_only else "BEGIN IMMEDIATE")

    return engine


# The most PostgreSQL connections one gateway process holds (its statements wait for a free one beyond that).
PG_POOL_SIZE = 30


def _postgres_engine(url: URL) -> AsyncEngine:
    # An unreachable server fails in seconds, not asyncpg's default minute.
    connect_args: dict[str, Any] = {"timeout": PG_CONNECT_TIMEOUT_SECONDS}
    query = dict(url.query)
    # libpq spellings that asyncpg does not take as such.
    if "options" in query:
        connect_args["server_settings"] = _parse_pg_options(str(query.pop("options")))
    if "sslmode" in query:
        query["ssl"] = query.pop("sslmode")
    url = url.set(query=query)
    engine = create_async_engine(
        url,
        # Up to PG_POOL_SIZE connections per process, each kept once opened (docs/operations.md#several-gateways): an
        # overflow above a smaller steady pool was closed on return, so a burst of handshakes opened and closed
        # PostgreSQL connections all the time (docs/benchmarks.md: about one per eight sessions, and 15 % more CPU per
        # session).
        pool_size=PG_POOL_SIZE,
        max_overflow=0,
        pool_timeout=30,
        pool_recycle=1800,
        connect_args=connect_args,
    )

    @event.listens_for(engine.sync_engine.pool, "checkout")
    def _closed_is_discarded(_dbapi: Any, record: Any, _proxy: Any) -> None:
        # Instead of ``pool_pre_ping``, which costs three round trips per checkout with asyncpg (BEGIN, a query,
        # ROLLBACK; docs/architecture.md#key-decisions, "The control plane on PostgreSQL"): a connection the server
        # closed (a restart, an idle timeout) is seen closed by the driver, which reads every socket, so it is
        # replaced here at no cost. A connection that dies mid-statement fails that statement; SQLAlchemy then
        # invalidates the whole pool, so the next checkouts reconnect.
        if record.driver_connection is None or record.driver_connection.is_closed():
            raise DisconnectionError("the server closed this connection")

    return engine


def _parse_pg_options(options: str) -> dict[str, str]:
    """``-c search_path=x -c statement_timeout=5s`` → server settings."""
    settings: dict[str, str] = {}
    tokens = shlex.split(options)
    i = 0
    while i < len(tokens):
        token = tokens[i]
        if token == "-c" and i + 1 < len(tokens):
            token, i = tokens[i + 1], i + 1
        elif token.startswith("-c") or token.startswith("--"):
            token = token[2:]
        name, sep, value = token.partition("=")
        if not sep:
            raise ValueError(f"cannot read PostgreSQL option {token!r}; expected -c name=value")
        settings[name.replace("-", "_")] = value
        i += 1
    return settings


def migrations_dir() -> str:
    """The Alembic scripts shipped inside the package."""
    return str(resources.files("sttgate.store") / "migrations")


def alembic_config() -> Any:
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", migrations_dir())
    return cfg


def head_revision() -> str:
    """The newest migration shipped with this version (what ``upgrade`` brings a database to)."""
    from alembic.script import ScriptDirectory

    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert head is not None, "the package ships its migrations"
    return str(head)


async def upgrade(url: str, revision: str = "head") -> None:
    """Apply every pending migration; idempotent, and safe when several processes start at once."""
    from alembic import command

    cfg = alembic_config()
    engine = make_engine(url)
    try:
        async with engine.begin() as conn:
            if conn.dialect.name == "postgresql":
                await conn.execute(text("SELECT pg_advisory_xact_lock(:id)"), {"id": _MIGRATION_LOCK_ID})

            def run(sync_conn: Connection) -> None:
                cfg.attributes["connection"] = sync_conn
                command.upgrade(cfg, revision)

            await conn.run_sync(run)
    finally:
        await engine.dispose()


async def current_revision(url: str) -> str | None:
    """The revision the database is at (None before the first migration)."""
    from alembic.runtime.migration import MigrationContext

    engine = make_engine(url)
    try:
        async with engine.connect() as conn:
            return await conn.run_sync(lambda c: MigrationContext.configure(c).get_current_revision())
    finally:
        await engine.dispose()
