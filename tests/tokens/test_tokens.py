"""Tokens over a real migrated database (SQLite, and PostgreSQL when one is reachable): single use, expiry,
binding, races, hashing."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa

from sttgate.store import Principal, Store, auth
from sttgate.store.database import hash_secret
from sttgate.store.tables import tokens as tokens_table
from tests.support.postgres import fresh_schema


@pytest.fixture(params=["sqlite", "postgresql"])
async def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    """A fresh database: a SQLite file, or a schema of its own on the test PostgreSQL (dropped afterwards)."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'tokens.db'}"
        return
    async with fresh_schema("sttgate_tokens") as url:
        yield url


@pytest.fixture
async def store(db_url: str) -> AsyncIterator[Store]:
    s = await Store.connect(db_url)
    yield s
    await s.close()


async def _account(store: Store, **kwargs: object) -> str:
    return (await store.create_account(name="t", **kwargs)).id


async def test_mint_then_redeem_once(store: Store) -> None:
    account = await _account(store, max_streams=3, balance_nanos=5_000)
    minted = await store.mint_token(account, 60)
    assert minted.token.startswith("sttg_") and len(minted.token) >= 40
    assert timedelta(seconds=59) < minted.expires_at - datetime.now(UTC) <= timedelta(seconds=60)
    principal = await store.redeem_token(minted.token, "assemblyai")
    assert principal == Principal(
        account_id=account, key_id=None, streaming_enabled=True, max_streams=3, balance_nanos=5_000
    )
    assert await store.redeem_token(minted.token, "assemblyai") is None


async def test_a_token_carries_its_session_cap(store: Store) -> None:
    account = await _account(store)
    minted = await store.mint_token(account, 60, "assemblyai", max_session_seconds=300)
    principal = await store.redeem_token(minted.token, "assemblyai")
    assert principal is not None and principal.max_session_seconds == 300
    with pytest.raises(ValueError):
        await store.mint_token(account, 60, max_session_seconds=0)


async def test_principal_reflects_the_account_at_redeem_time(store: Store) -> None:
    account = await _account(store, streaming_enabled=False)
    minted = await store.mint_token(account, 60)
    principal = await store.redeem_token(minted.token, "elevenlabs")
    assert principal is not None and not principal.streaming_enabled and principal.balance_nanos is None


async def test_only_the_hash_is_stored(store: Store) -> None:
    minted = await store.mint_token(await _account(store), 60)
    async with store.engine.connect() as conn:
        row = (await conn.execute(sa.select(tokens_table))).one()
    assert minted.token not in [str(v) for v in row]
    assert row.token_hash == hash_secret(minted.token)


async def test_unknown_and_malformed_tokens_are_refused(store: Store) -> None:
    await store.mint_token(await _account(store), 60)
    assert await store.redeem_token("sttg_" + "A" * 43, "elevenlabs") is None
    assert await store.redeem_token("sk-mai-not-a-token", "elevenlabs") is None
    assert await store.redeem_token("", "elevenlabs") is None


async def test_expired_token_is_refused(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    minted = await store.mint_token(await _account(store), 5)
    monkeypatch.setattr(auth, "utcnow", lambda: minted.expires_at)
    assert await store.redeem_token(minted.token, "elevenlabs") is None
    monkeypatch.setattr(auth, "utcnow", lambda: minted.expires_at - timedelta(microseconds=1))
    assert await store.redeem_token(minted.token, "elevenlabs") is not None


async def test_provider_binding(store: Store) -> None:
    account = await _account(store)
    minted = await store.mint_token(account, 60, provider="elevenlabs")
    # The wrong provider is refused and does not consume the token.
    assert await store.redeem_token(minted.token, "assemblyai") is None
    principal = await store.redeem_token(minted.token, "elevenlabs")
    assert principal is not None and principal.account_id == account


async def test_tokens_are_bound_to_their_account(store: Store) -> None:
    first, second = await _account(store), await _account(store)
    a = await store.mint_token(first, 60)
    b = await store.mint_token(second, 60)
    redeemed_b = await store.redeem_token(b.token, "assemblyai")
    redeemed_a = await store.redeem_token(a.token, "assemblyai")
    assert redeemed_b is not None and redeemed_b.account_id == second
    assert redeemed_a is not None and redeemed_a.account_id == first


@pytest.mark.parametrize("seconds", [0, 601, -1])
async def test_lifetime_bounds(store: Store, seconds: int) -> None:
    with pytest.raises(ValueError):
        await store.mint_token(await _account(store), seconds)


async def test_racing_redeems_have_exactly_one_winner(db_url: str) -> None:
    # Two stores = two independent connection pools, as with two gateway processes on one database.
    stores = [await Store.connect(db_url), await Store.connect(db_url, migrate=False)]
    try:
        account = await _account(stores[0])
        for _ in range(10):
            minted = await stores[0].mint_token(account, 60)
            results = await asyncio.gather(*(s.redeem_token(minted.token, "assemblyai") for s in stores * 2))
            assert sum(r is not None for r in results) == 1
    finally:
        for s in stores:
            await s.close()


async def test_a_token_carries_its_minting_key(store: Store) -> None:
    """The session a token opens is attributed to the key that minted it (docs/contract.md#usage)."""
    account = await _account(store)
    key = await store.create_key(account)
    minted = await store.mint_token(account, 60, "assemblyai", key_id=key.id)
    principal = await store.redeem_token(minted.token, "assemblyai")
    assert principal is not None and principal.key_id == key.id and principal.account_id == account
