"""PostgreSQL's connection pool: no ping per checkout, yet a connection the server closed is never handed out."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import asyncpg
import pytest
from sqlalchemy import text

from sttgate.store import Store, unavailable
from tests.support.postgres import PG_URLS, fresh_schema
from tests.support.waiting import wait_for


@pytest.fixture
async def pg_store() -> AsyncIterator[Store]:
    async with fresh_schema("sttgate_pool") as url:
        store = await Store.connect(url)
        try:
            yield store
        finally:
            await store.close()


async def test_a_connection_closed_by_the_server_is_replaced_at_checkout(pg_store: Store) -> None:
    async with pg_store.database.reader.connect() as conn:
        pid = (await conn.execute(text("SELECT pg_backend_pid()"))).scalar_one()
        driver = (await conn.get_raw_connection()).driver_connection
    assert driver is not None
    closed = asyncio.Event()
    driver.add_termination_listener(lambda _conn: closed.set())
    admin = await asyncpg.connect(PG_URLS[0])
    try:
        assert await admin.fetchval("SELECT pg_terminate_backend($1)", pid) is True
    finally:
        await admin.close()
    async with asyncio.timeout(10):  # the driver reads the server's goodbye and the closed socket
        await closed.wait()

    # A write, then a read: each checks a connection out of the pool.
    account = await pg_store.create_account(name="after restart")
    assert (await pg_store.get_account(account.id)).name == "after restart"
    async with pg_store.database.reader.connect() as conn:
        assert (await conn.execute(text("SELECT pg_backend_pid()"))).scalar_one() != pid


async def test_a_connection_lost_under_the_fast_path_is_the_database_unavailable(pg_store: Store) -> None:
    """The handshake statements run on the driver itself (store/pg_fast.py): what asyncpg raises for a connection
    lost under a statement is an unavailable database (the handshake answers 503), not a programming error."""
    assert pg_store._pg_fast is not None
    admin = await asyncpg.connect(PG_URLS[0])
    try:
        async with pg_store._pg_fast._driver() as driver:
            pid = await driver.fetchval("SELECT pg_backend_pid()")
            running = asyncio.ensure_future(driver.fetchval("SELECT pg_sleep(30)"))
            # Terminated while the statement runs on the server (not before it is sent: another failure).
            await wait_for(lambda: _sleeping(admin, pid), 10, 0.01, "the statement running on the server")
            await admin.fetchval("SELECT pg_terminate_backend($1)", pid)
            with pytest.raises(Exception) as raised:
                await running
    finally:
        await admin.close()
    assert unavailable(raised.value)


async def _sleeping(admin: asyncpg.Connection, pid: int) -> bool:
    query = "SELECT count(*) FROM pg_stat_activity WHERE pid = $1 AND state = 'active' AND query LIKE '%pg_sleep%'"
    return bool(await admin.fetchval(query, pid))


async def test_a_burst_reuses_the_connections_an_earlier_burst_opened(pg_store: Store) -> None:
    """Statements that run at once each hold a connection; once returned, the connections stay open for the next
    burst (no pool overflow that is closed on return and opened again: docs/operations.md#several-gateways)."""
    assert pg_store._pg_fast is not None
    fast = pg_store._pg_fast

    async def backend() -> int:
        async with fast._driver() as driver:
            pid: int = await driver.fetchval("SELECT pg_backend_pid() FROM pg_sleep(0.2)")
            return pid

    first = set(await asyncio.gather(*(backend() for _ in range(25))))
    second = set(await asyncio.gather(*(backend() for _ in range(25))))
    assert len(first) == 25  # they ran at once, each on a connection of its own
    assert second <= first
