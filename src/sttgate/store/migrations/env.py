"""Alembic environment for sttgate.

`sttgate.store.db.upgrade` hands over an open connection (``config.attributes["connection"]``). Developers running
the ``alembic`` command (``alembic -c src/sttgate/store/migrations/alembic.ini …``) get an engine from
``STTGATE_DATABASE_URL`` instead.
"""

from __future__ import annotations

import asyncio
import os

from alembic import context
from sqlalchemy.engine import Connection

from sttgate.store.db import make_engine
from sttgate.store.tables import metadata

config = context.config


def _run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


async def _run_standalone(url: str) -> None:
    engine = make_engine(url)
    try:
        async with engine.begin() as conn:
            await conn.run_sync(_run)
    finally:
        await engine.dispose()


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _run(connection)
    else:
        asyncio.run(_run_standalone(os.environ.get("STTGATE_DATABASE_URL", "sqlite:///./sttgate.db")))


if context.is_offline_mode():
    raise SystemExit("sttgate migrations run online only (sttgate db upgrade)")
run_migrations_online()
