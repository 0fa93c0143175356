"""Short-lived, single-use gateway tokens for browsers (SPEC §3c).

An account's backend mints a token with its API key; the browser connects with ``?token=`` and never holds the key.
A token is 256 random bits (nothing of the key is derivable from it), stored only as its SHA-256, bound to its
account and optionally to one provider, expires after 1..600 s, and is redeemed by one conditional ``UPDATE`` so that
two connections racing with the same token cannot both win.
"""

from __future__ import annotations

import hashlib
import secrets
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from sttgate.store.tables import tokens as tokens_table

TOKEN_PREFIX = "sttg_"
MIN_SECONDS = 1
MAX_SECONDS = 600


@dataclass(frozen=True)
class MintedToken:
    token: str
    expires_at: datetime


@dataclass(frozen=True)
class Redeemed:
    """What a redeemed token grants: a session for this account (and this provider, if it was bound)."""

    account_id: str
    provider: str | None


def utcnow() -> datetime:
    """The tokens' clock (a module function so tests can move time without sleeping)."""
    return datetime.now(UTC)


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def looks_like_token(credential: str) -> bool:
    """Tell a gateway token from an API key where both travel in the same header (AssemblyAI's SDK)."""
    return credential.startswith(TOKEN_PREFIX)


async def mint(
    engine: AsyncEngine, account_id: str, expires_in_seconds: int, provider: str | None = None
) -> MintedToken:
    """Create a token for ``account_id``; the caller has authenticated the account and validated the arguments."""
    if not MIN_SECONDS <= expires_in_seconds <= MAX_SECONDS:
        raise ValueError(f"expires_in_seconds must be {MIN_SECONDS}..{MAX_SECONDS}")
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    now = utcnow()
    expires_at = now + timedelta(seconds=expires_in_seconds)
    async with engine.begin() as conn:
        await conn.execute(
            sa.insert(tokens_table).values(
                id=uuid.uuid4().hex,
                token_hash=hash_token(token),
                account_id=account_id,
                provider=provider,
                expires_at=expires_at,
                created_at=now,
            )
        )
    return MintedToken(token, expires_at)


async def redeem(engine: AsyncEngine, token: str, provider: str) -> Redeemed | None:
    """Use ``token`` for a session with ``provider``; None when it is unknown, expired, used or bound elsewhere.

    A token bound to another provider is left unused (the mistake costs the browser nothing). Exactly one of any
    number of concurrent redeems of one token succeeds: the row is claimed by a single conditional UPDATE.
    """
    if not looks_like_token(token):
        return None
    now = utcnow()
    t = tokens_table
    stmt = (
        sa.update(t)
        .where(
            t.c.token_hash == hash_token(token),
            t.c.used_at.is_(None),
            t.c.expires_at > now,
            sa.or_(t.c.provider.is_(None), t.c.provider == provider),
        )
        .values(used_at=now)
        .returning(t.c.account_id, t.c.provider)
    )
    async with engine.begin() as conn:
        row = (await conn.execute(stmt)).first()
    if row is None:
        return None
    return Redeemed(account_id=str(row.account_id), provider=row.provider)
