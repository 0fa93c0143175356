"""Store tests run against a real SQLite file and, when it is reachable, the real PostgreSQL.

Each PostgreSQL test gets its own schema (via the URL's ``options=-csearch_path=…``), dropped afterwards, so
concurrent test runs on the shared ``test`` database never see each other's rows.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from sttgate.store import Store
from tests.support.postgres import fresh_schema


@pytest.fixture(params=["sqlite", "postgresql"])
async def db_url(request: pytest.FixtureRequest, tmp_path) -> AsyncIterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path}/store.db"
        return
    async with fresh_schema("sttgate_test") as url:
        yield url


@pytest.fixture
async def store(db_url: str) -> AsyncIterator[Store]:
    s = await Store.connect(db_url)
    try:
        yield s
    finally:
        await s.close()
