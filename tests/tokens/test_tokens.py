"""Tokens over a real migrated SQLite database: single use, expiry, binding, races, hashing."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from sttgate import tokens
from sttgate.store import db
from sttgate.store.tables import accounts
from sttgate.store.tables import tokens as tokens_table


@pytest.fixture
async def engine(tmp_path: Path) -> AsyncIterator[AsyncEngine]:
    url = f"sqlite:///{tmp_path / 'tokens.db'}"
    await db.upgrade(url)
    eng = db.make_engine(url)
    yield eng
    await eng.dispose()


async def _account(engine: AsyncEngine) -> str:
    account_id = str(uuid.uuid4())
    now = datetime.now(UTC)
    async with engine.begin() as conn:
        await conn.execute(
            sa.insert(accounts).values(
                id=account_id,
                name="t",
                streaming_enabled=True,
                max_streams=5,
                balance_nanos=None,
                webhook_secret="s",
                created_at=now,
                updated_at=now,
            )
        )
    return account_id


async def test_mint_then_redeem_once(engine: AsyncEngine) -> None:
    account = await _account(engine)
    minted = await tokens.mint(engine, account, 60)
    assert minted.token.startswith("sttg_") and len(minted.token) >= 40
    assert timedelta(seconds=59) < minted.expires_at - datetime.now(UTC) <= timedelta(seconds=60)
    assert await tokens.redeem(engine, minted.token, "assemblyai") == tokens.Redeemed(account, None)
    assert await tokens.redeem(engine, minted.token, "assemblyai") is None


async def test_only_the_hash_is_stored(engine: AsyncEngine) -> None:
    minted = await tokens.mint(engine, await _account(engine), 60)
    async with engine.connect() as conn:
        row = (await conn.execute(sa.select(tokens_table))).one()
    assert minted.token not in [str(v) for v in row]
    assert row.token_hash == tokens.hash_token(minted.token)


async def test_unknown_and_malformed_tokens_are_refused(engine: AsyncEngine) -> None:
    await tokens.mint(engine, await _account(engine), 60)
    assert await tokens.redeem(engine, "sttg_" + "A" * 43, "elevenlabs") is None
    assert await tokens.redeem(engine, "sk-mai-not-a-token", "elevenlabs") is None
    assert await tokens.redeem(engine, "", "elevenlabs") is None


async def test_expired_token_is_refused(engine: AsyncEngine, monkeypatch: pytest.MonkeyPatch) -> None:
    minted = await tokens.mint(engine, await _account(engine), 5)
    later = minted.expires_at
    monkeypatch.setattr(tokens, "utcnow", lambda: later)
    assert await tokens.redeem(engine, minted.token, "elevenlabs") is None
    just_before = later - timedelta(microseconds=1)
    monkeypatch.setattr(tokens, "utcnow", lambda: just_before)
    assert await tokens.redeem(engine, minted.token, "elevenlabs") is not None


async def test_provider_binding(engine: AsyncEngine) -> None:
    account = await _account(engine)
    minted = await tokens.mint(engine, account, 60, provider="elevenlabs")
    # The wrong provider is refused and does not consume the token.
    assert await tokens.redeem(engine, minted.token, "assemblyai") is None
    assert await tokens.redeem(engine, minted.token, "elevenlabs") == tokens.Redeemed(account, "elevenlabs")


async def test_tokens_are_bound_to_their_account(engine: AsyncEngine) -> None:
    first, second = await _account(engine), await _account(engine)
    a = await tokens.mint(engine, first, 60)
    b = await tokens.mint(engine, second, 60)
    assert (await tokens.redeem(engine, b.token, "assemblyai")).account_id == second
    assert (await tokens.redeem(engine, a.token, "assemblyai")).account_id == first


@pytest.mark.parametrize("seconds", [0, 601, -1])
async def test_lifetime_bounds(engine: AsyncEngine, seconds: int) -> None:
    with pytest.raises(ValueError):
        await tokens.mint(engine, await _account(engine), seconds)


async def test_racing_redeems_have_exactly_one_winner(tmp_path: Path) -> None:
    # Two engines = two independent connection pools, as with two gateway processes on one database.
    url = f"sqlite:///{tmp_path / 'race.db'}"
    await db.upgrade(url)
    engines = [db.make_engine(url), db.make_engine(url)]
    try:
        account = await _account(engines[0])
        for _ in range(10):
            minted = await tokens.mint(engines[0], account, 60)
            results = await asyncio.gather(*(tokens.redeem(e, minted.token, "assemblyai") for e in engines * 2))
            assert sum(r is not None for r in results) == 1
    finally:
        for e in engines:
            await e.dispose()
