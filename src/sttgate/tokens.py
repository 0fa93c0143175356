"""Short-lived, single-use gateway tokens for browsers (SPEC §3c).

An account's backend mints a token with its API key; the browser connects with ``?token=`` and never holds the key.
A token is 256 random bits (nothing of the key is derivable from it), stored only as its SHA-256, bound to its
account and optionally to one provider, expires after 1..600 s, and is redeemed by one conditional ``UPDATE`` so that
two connections racing with the same token cannot both win.
"""

from __future__ import annotations

import secrets
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import sqlalchemy as sa

from sttgate.store import Principal, Store
from sttgate.store.store import hash_secret
from sttgate.store.tables import accounts
from sttgate.store.tables import tokens as tokens_table

TOKEN_PREFIX = "sttg_"
MIN_SECONDS = 1
MAX_SECONDS = 600


@dataclass(frozen=True)
class MintedToken:
    token: str
    expires_at: datetime


def utcnow() -> datetime:
    """The tokens' clock (a module function so tests can move time without sleeping)."""
    return datetime.now(UTC)


def looks_like_token(credential: str) -> bool:
    """Tell a gateway token from an API key where both travel in the same header (some SDKs)."""
    return credential.startswith(TOKEN_PREFIX)


async def mint(store: Store, account_id: str, expires_in_seconds: int, provider: str | None = None) -> MintedToken:
    """Create a token for ``account_id``; the caller has authenticated the account and validated the arguments."""
    if not MIN_SECONDS <= expires_in_seconds <= MAX_SECONDS:
        raise ValueError(f"expires_in_seconds must be {MIN_SECONDS}..{MAX_SECONDS}")
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    now = utcnow()
    expires_at = now + timedelta(seconds=expires_in_seconds)
    async with store.engine.begin() as conn:
        await conn.execute(
            sa.insert(tokens_table).values(
                id=uuid.uuid4().hex,
                token_hash=hash_secret(token),
                account_id=account_id,
                provider=provider,
                expires_at=expires_at,
                created_at=now,
            )
        )
    return MintedToken(token, expires_at)


async def redeem(store: Store, token: str, provider: str) -> Principal | None:
    """Use ``token`` for a session with ``provider``: the token's account, or None (401 ``invalid_token``).

    None when the token is unknown, expired, used, or bound to another provider; a token bound elsewhere is left
    unused (the mistake costs the browser nothing). Exactly one of any number of concurrent redeems of one token
    wins: the row is claimed by a single conditional UPDATE. The principal has no ``key_id``: it came from a token.
    """
    if not looks_like_token(token):
        return None
    now = utcnow()
    t = tokens_table
    claim = (
        sa.update(t)
        .where(
            t.c.token_hash == hash_secret(token),
            t.c.used_at.is_(None),
            t.c.expires_at > now,
            sa.or_(t.c.provider.is_(None), t.c.provider == provider),
        )
        .values(used_at=now)
        .returning(t.c.account_id)
    )
    async with store.engine.begin() as conn:
        account_id = (await conn.execute(claim)).scalar_one_or_none()
        if account_id is None:
            return None
        account = (
            await conn.execute(
                sa.select(accounts.c.streaming_enabled, accounts.c.max_streams, accounts.c.balance_nanos).where(
                    accounts.c.id == account_id
                )
            )
        ).one()
    return Principal(
        account_id=account_id,
        key_id=None,
        streaming_enabled=bool(account.streaming_enabled),
        max_streams=account.max_streams,
        balance_nanos=account.balance_nanos,
    )
