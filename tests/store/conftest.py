"""Store tests run against a real SQLite file and, when it is reachable, the real PostgreSQL.

Each PostgreSQL test gets its own schema (via the URL's ``options=-csearch_path=…``), dropped afterwards, so
concurrent test runs on the shared ``test`` database never see each other's rows.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator
from urllib.parse import quote

import pytest

from sttgate.store import Store

PG_CANDIDATES = [
    url
    for url in (
        os.environ.get("STTGATE_TEST_POSTGRES_URL"),
        "postgresql://postgres@127.0.0.1:5432/test",
        "postgresql://root@127.0.0.1:5432/test",
    )
    if url
]


async def _pg_admin() -> tuple[object, str] | tuple[None, str]:
    import asyncpg

    errors = []
    for url in PG_CANDIDATES:
        try:
            return await asyncpg.connect(url, timeout=5), url
        except Exception as exc:
            errors.append(f"{url}: {exc}")
    return None, "; ".join(errors)


@pytest.fixture(params=["sqlite", "postgresql"])
async def db_url(request: pytest.FixtureRequest, tmp_path) -> AsyncIterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path}/store.db"
        return
    admin, base_or_error = await _pg_admin()
    if admin is None:
        pytest.skip(f"PostgreSQL unreachable: {base_or_error}")
    schema = f"sttgate_test_{uuid.uuid4().hex[:16]}"
    await admin.execute(f'CREATE SCHEMA "{schema}"')
    try:
        yield f"{base_or_error}?options={quote(f'-csearch_path={schema}')}"
    finally:
        await admin.execute(f'DROP SCHEMA "{schema}" CASCADE')
        await admin.close()


@pytest.fixture
async def store(db_url: str) -> AsyncIterator[Store]:
    s = await Store.connect(db_url)
    try:
        yield s
    finally:
        await s.close()
