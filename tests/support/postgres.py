"""The test PostgreSQL (127.0.0.1:5432, database ``test``): a fresh schema per test, or a skip that says why.

Each schema is selected through the URL's ``options=-csearch_path=…`` and dropped afterwards, so concurrent test
runs on the shared database never see each other's rows.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from urllib.parse import quote

import asyncpg
import pytest

PG_URLS = [
    url
    for url in (
        os.environ.get("STTGATE_TEST_POSTGRES_URL"),
        "postgresql://postgres@127.0.0.1:5432/test",
        "postgresql://root@127.0.0.1:5432/test",
    )
    if url
]


@asynccontextmanager
async def fresh_schema(prefix: str) -> AsyncIterator[str]:
    """A database URL on a new, empty schema; skips the test when no PostgreSQL answers."""
    errors = []
    for url in PG_URLS:
        try:
            admin = await asyncpg.connect(url, timeout=5)
            break
        except (OSError, asyncpg.PostgresError) as exc:
            errors.append(f"{url}: {exc}")
    else:
        pytest.skip("PostgreSQL unreachable: " + "; ".join(errors))
    schema = f"{prefix}_{uuid.uuid4().hex[:16]}"
    await admin.execute(f'CREATE SCHEMA "{schema}"')
    try:
        yield f"{url}?options={quote(f'-csearch_path={schema}')}"
    finally:
        await admin.execute(f'DROP SCHEMA "{schema}" CASCADE')
        await admin.close()
