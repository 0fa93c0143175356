"""PostgreSQL's ``sttgate_open_session`` (migration 0011) against the slot rule it mirrors, ``slots.decide_open``.

Each example builds an account with random limits, balance, budget and sessions (live ones, some of them the key's,
and others that must not count: ended, lease expired, last month's) on the real PostgreSQL, calls the function, and
checks that the figures it read are the ones built, that it opened exactly when ``decide_open`` says OPENED on them,
and what an opening wrote (the slot row, and a first prepaid hold debited from the balance). A hold that would cross
the account's low-balance threshold opens nothing there (the portable transaction records ``balance.low`` with it).
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sttgate.core.account_events import crossed_low
from sttgate.core.budget import month_start
from sttgate.store.db import upgrade
from sttgate.store.slots import SlotFigures, SlotOutcome, decide_open
from tests.support.postgres import PG_URLS

NOW = datetime(2026, 11, 29, 12, tzinfo=UTC)


@pytest.fixture(scope="module")
def schema() -> Iterator[tuple[str, str]]:
    """(url of a migrated fresh schema, schema name); one for the module's examples (each uses its own account)."""

    async def connect() -> asyncpg.Connection:
        errors = []
        for url in PG_URLS:
            try:
                return await asyncpg.connect(url, timeout=5)
            except (OSError, asyncpg.PostgresError) as exc:
                errors.append(f"{url}: {exc}")
        pytest.skip("PostgreSQL unreachable: " + "; ".join(errors))

    async def create() -> str:
        admin = await connect()
        await admin.execute(f'CREATE SCHEMA "{name}"')
        await admin.close()
        return f"{PG_URLS[0]}?options=-csearch_path%3D{name}"

    async def drop() -> None:
        admin = await connect()
        await admin.execute(f'DROP SCHEMA "{name}" CASCADE')
        await admin.close()

    name = f"sttgate_pgopen_{uuid.uuid4().hex[:16]}"
    url = asyncio.run(create())
    try:
        asyncio.run(upgrade(url))
        yield url, name
    finally:
        asyncio.run(drop())


@dataclass(frozen=True)
class Case:
    max_streams: int
    live: int
    key_live: int
    key_max_streams: int | None
    has_key: bool
    balance: int | None
    min_balance: int
    budget: int | None
    month_costs: tuple[int, ...]
    hold: int  # 1: the first cycle is held (min_balance), 0: no hold
    low: int | None  # the account's low-balance threshold: a hold that crosses it is left to the portable path


@st.composite
def cases(draw: st.DrawFn) -> Case:
    live = draw(st.integers(0, 4))
    return Case(
        max_streams=draw(st.integers(1, 4)),
        live=live,
        key_live=draw(st.integers(0, live)),
        key_max_streams=draw(st.none() | st.integers(0, 3)),
        has_key=draw(st.booleans()),
        balance=draw(st.none() | st.integers(0, 2_000)),
        min_balance=draw(st.integers(0, 2_000)),
        budget=draw(st.none() | st.integers(0, 3_000)),
        month_costs=tuple(draw(st.lists(st.integers(0, 1_500), max_size=3))),
        hold=int(draw(st.booleans())),
        low=draw(st.none() | st.integers(0, 2_000)),
    )


async def _run(url_schema: tuple[str, str], case: Case) -> None:
    url, schema = url_schema
    conn = await asyncpg.connect(url.split("?")[0], server_settings={"search_path": schema})
    try:
        account, key, sid = str(uuid.uuid4()), str(uuid.uuid4()), str(uuid.uuid4())
        await conn.execute(
            "INSERT INTO accounts (id, name, streaming_enabled, max_streams, balance_nanos, webhook_secret, created_at,"
            " updated_at, monthly_budget_nanos, low_balance_nanos) VALUES ($1, 'a', true, $2, $3, 's', $4, $4, $5, $6)",
            account,
            case.max_streams,
            case.balance,
            NOW,
            case.budget,
            case.low,
        )

        async def session(*, key_id: str | None, started: datetime, ended: bool, expires: datetime, cost: int) -> None:
            await conn.execute(
                "INSERT INTO sessions (id, account_id, kind, provider, gateway_id, started_at, ended_at,"
                " lease_expires_at, audio_seconds, cycles, cost_nanos, opening, api_key_id)"
                " VALUES ($1, $2, 'stream', 'p', 'g', $3, $4, $5, 0, 0, $6, false, $7)",
                str(uuid.uuid4()),
                account,
                started,
                NOW if ended else None,
                expires,
                cost,
                key_id,
            )

        later, earlier = NOW + timedelta(seconds=30), NOW - timedelta(seconds=1)
        for i in range(case.live):  # live: counted (the first key_live are the key's)
            await session(key_id=key if i < case.key_live else None, started=NOW, ended=False, expires=later, cost=0)
        for cost in case.month_costs:  # ended this month: their cost counts against the budget, not the slots
            await session(key_id=key, started=NOW, ended=True, expires=later, cost=cost)
        # Never counted: a lease expired (a crashed gateway's), and last month's spending.
        await session(key_id=key, started=NOW, ended=False, expires=earlier, cost=0)
        await session(key_id=key, started=month_start(NOW) - timedelta(days=1), ended=True, expires=earlier, cost=999)

        hold = case.hold * case.min_balance
        key_id = key if case.has_key else None
        row = await conn.fetchrow(
            "SELECT * FROM sttgate_open_session($1, $2, 'stream', 'p', 'g', $3, $4, $5, $6, 'm', '0.72', 'audio', $7,"
            " $8, $9)",
            sid,
            account,
            case.min_balance,
            NOW,
            later,
            month_start(NOW),
            key_id,
            case.key_max_streams,
            hold,
        )
        assert row is not None
        expected = SlotFigures(
            live=case.live,
            max_streams=case.max_streams,
            key_live=case.key_live if case.has_key and case.key_max_streams is not None else 0,
            key_max_streams=case.key_max_streams,
            balance_nanos=case.balance,
            budget_nanos=case.budget,
            month_cost_nanos=sum(case.month_costs) if case.budget is not None else 0,
        )
        opened, live, max_streams, key_live, balance, budget, month_cost, low = row
        read = SlotFigures(live, max_streams, key_live, case.key_max_streams, balance, budget, month_cost)
        assert read == expected
        assert low == case.low
        crosses = case.balance is not None and hold > 0 and crossed_low(case.low, case.balance, case.balance - hold)
        assert opened == (decide_open(expected, case.min_balance) is SlotOutcome.OPENED and not crosses)

        slot = await conn.fetchrow(
            "SELECT opening, ended_at, lease_expires_at, api_key_id, held_cycles, held_nanos"
            " FROM sessions WHERE id = $1",
            sid,
        )
        after = await conn.fetchval("SELECT balance_nanos FROM accounts WHERE id = $1", account)
        if not opened:
            assert slot is None and after == case.balance
            return
        held = hold if case.balance is not None and hold > 0 else 0
        assert slot is not None
        assert (slot["opening"], slot["ended_at"], slot["lease_expires_at"]) == (True, None, later)
        assert slot["api_key_id"] == key_id
        assert (slot["held_cycles"], slot["held_nanos"]) == (1 if held else 0, held)
        assert after == (None if case.balance is None else case.balance - held)
    finally:
        await conn.close()


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(case=cases())
def test_the_function_reads_the_figures_and_opens_exactly_when_decide_open_says_so(
    schema: tuple[str, str], case: Case
) -> None:
    asyncio.run(_run(schema, case))
