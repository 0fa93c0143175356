"""The admin API on PostgreSQL with two gateways on one database: idempotent credits hold across both, even when
the same post reaches both at once (skipped with the reason when PostgreSQL is unreachable)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from decimal import Decimal

import pytest

from sttgate.store import Store
from tests.support.admin_api import AdminApi, running_admin_api
from tests.support.gateway import gateway_settings
from tests.support.postgres import fresh_schema


@pytest.fixture
async def two_gateways() -> AsyncIterator[tuple[AdminApi, AdminApi, Store]]:
    """Gateways A and B, each with its own store (connection pool) on one fresh schema, and a third store to look."""
    async with fresh_schema("sttgate_adminapi") as url, AsyncExitStack() as stack:
        stores = [await Store.connect(url, migrate=i == 0) for i in range(3)]
        for s in stores:
            stack.push_async_callback(s.close)
        apis = [
            await stack.enter_async_context(
                running_admin_api(gateway_settings("ws://127.0.0.1:9", database_url=url, gateway_id=name), s)
            )
            for name, s in zip(("a", "b"), stores, strict=False)
        ]
        yield apis[0], apis[1], stores[2]


async def test_one_idempotency_key_posted_concurrently_on_two_gateways_credits_once(two_gateways) -> None:
    a, b, store = two_gateways
    status, account = await a.call("POST", "/accounts", json={"name": "pg", "balance_usd": "1"})
    assert status == 201
    path = f"/accounts/{account['id']}/credits"
    for round_ in range(5):
        key = f"invoice-{round_}"
        body = {"amount_usd": "2.5", "idempotency_key": key}
        answers = await asyncio.gather(*(gw.call("POST", path, json=body) for gw in (a, b) * 4))
        assert {status for status, _ in answers} == {200}
        assert len({str(doc) for _, doc in answers}) == 1, answers  # every post answers the one credit
    fresh = await store.get_account(account["id"])
    assert fresh is not None and fresh.balance_nanos == 1_000_000_000 + 5 * 2_500_000_000
    status, doc = await b.call("GET", f"/accounts/{account['id']}")
    assert doc["balance_usd"] == "13.500000000"


async def test_concurrent_credits_with_distinct_keys_all_count(two_gateways) -> None:
    a, b, store = two_gateways
    _, account = await a.call("POST", "/accounts", json={"name": "pg", "balance_usd": "0"})
    path = f"/accounts/{account['id']}/credits"
    answers = await asyncio.gather(
        *(
            gw.call("POST", path, json={"amount_usd": "1", "idempotency_key": f"k{i}"})
            for i, gw in enumerate((a, b) * 5)
        )
    )
    assert [s for s, _ in answers] == [200] * 10
    # Each credit saw the balance the one before it left: 1, 2, ... 10, in some order.
    assert sorted(Decimal(doc["balance_usd"]) for _, doc in answers) == list(range(1, 11))
    fresh = await store.get_account(account["id"])
    assert fresh is not None and fresh.balance_nanos == 10 * 10**9


async def test_an_external_id_taken_on_one_gateway_is_refused_on_the_other(two_gateways) -> None:
    a, b, _ = two_gateways
    answers = await asyncio.gather(
        a.call("POST", "/accounts", json={"name": "x", "external_id": "cus_1"}),
        b.call("POST", "/accounts", json={"name": "y", "external_id": "cus_1"}),
    )
    assert sorted(status for status, _ in answers) == [201, 409]
    status, page = await b.call("GET", "/accounts", params={"external_id": "cus_1"})
    assert status == 200 and len(page["data"]) == 1
