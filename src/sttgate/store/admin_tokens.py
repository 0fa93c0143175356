"""Admin tokens: the operator's credentials for the admin API (docs/admin-api.md#authentication).

Like API keys they are 256 random bits shown once at creation and stored only as their SHA-256 and a display prefix.
Unlike an API key, a revoked admin token is told apart from an unknown one (403 rather than 401), so an operator's
integration that still uses a revoked token learns why it is refused.
"""

from __future__ import annotations

import hmac
import secrets
import uuid
from dataclasses import dataclass
from datetime import datetime
from enum import Enum
from typing import Any

from sqlalchemy import insert, or_, select, update
from sqlalchemy.engine import Row

from sttgate.store.database import Database, NotFoundError, hash_secret, utcnow
from sttgate.store.tables import admin_tokens

ADMIN_TOKEN_PREFIX = "sta_"
_DISPLAY_CHARS = 12
_MAX_LEN = 256
# last_used_at is a hint for the operator, written at most this often per token.
LAST_USED_RESOLUTION_SECONDS = 60.0


class AdminTokenCheck(Enum):
    """What a presented admin token is."""

    VALID = "valid"
    UNKNOWN = "unknown"
    REVOKED = "revoked"


@dataclass(frozen=True)
class AdminToken:
    """An admin token as listed: never its secret."""

    id: str
    name: str
    prefix: str
    created_at: datetime
    last_used_at: datetime | None
    revoked_at: datetime | None


@dataclass(frozen=True)
class NewAdminToken:
    """An admin token just created: the only time its secret exists outside the caller's hands."""

    id: str
    name: str
    token: str
    prefix: str
    created_at: datetime


class AdminTokens:
    def __init__(self, database: Database) -> None:
        self._db = database

    async def create(self, name: str) -> NewAdminToken:
        if not name or not name.strip():
            raise ValueError("the admin token's name must not be empty")
        token = ADMIN_TOKEN_PREFIX + secrets.token_urlsafe(32)
        token_id = str(uuid.uuid4())
        now = utcnow()
        async with self._db.write() as conn:
            await conn.execute(
                insert(admin_tokens).values(
                    id=token_id,
                    name=name.strip(),
                    token_hash=hash_secret(token),
                    prefix=token[:_DISPLAY_CHARS],
                    created_at=now,
                )
            )
        return NewAdminToken(token_id, name.strip(), token, token[:_DISPLAY_CHARS], now)

    async def list(self) -> list[AdminToken]:
        async with self._db.reader.connect() as conn:
            rows = (
                await conn.execute(select(admin_tokens).order_by(admin_tokens.c.created_at, admin_tokens.c.id))
            ).all()
        return [_token(r) for r in rows]

    async def revoke(self, token_id: str) -> AdminToken:
        """Revoke at once; revoking twice keeps the first time."""
        async with self._db.write() as conn:
            await conn.execute(
                update(admin_tokens)
                .where(admin_tokens.c.id == token_id, admin_tokens.c.revoked_at.is_(None))
                .values(revoked_at=utcnow())
            )
            row = (await conn.execute(select(admin_tokens).where(admin_tokens.c.id == token_id))).first()
        if row is None:
            raise NotFoundError(f"no admin token {token_id}")
        return _token(row)

    async def check(self, token: str) -> AdminTokenCheck:
        """Whether ``token`` is a valid, revoked or unknown admin token: one indexed query on its hash, the hash
        compared in constant time; a valid token's ``last_used_at`` is refreshed at most once a minute."""
        if not token.startswith(ADMIN_TOKEN_PREFIX) or len(token) > _MAX_LEN:
            return AdminTokenCheck.UNKNOWN
        digest = hash_secret(token)
        async with self._db.reader.connect() as conn:
            row = (
                await conn.execute(
                    select(
                        admin_tokens.c.id,
                        admin_tokens.c.token_hash,
                        admin_tokens.c.revoked_at,
                        admin_tokens.c.last_used_at,
                    ).where(admin_tokens.c.token_hash == digest)
                )
            ).first()
        if row is None or not hmac.compare_digest(row.token_hash, digest):
            return AdminTokenCheck.UNKNOWN
        if row.revoked_at is not None:
            return AdminTokenCheck.REVOKED
        now = utcnow()
        if row.last_used_at is None or (now - row.last_used_at).total_seconds() >= LAST_USED_RESOLUTION_SECONDS:
            async with self._db.write() as conn:
                await conn.execute(
                    update(admin_tokens)
                    .where(
                        admin_tokens.c.id == row.id,
                        or_(admin_tokens.c.last_used_at.is_(None), admin_tokens.c.last_used_at < now),
                    )
                    .values(last_used_at=now)
                )
        return AdminTokenCheck.VALID


def _token(row: Row[Any]) -> AdminToken:
    return AdminToken(
        id=row.id,
        name=row.name,
        prefix=row.prefix,
        created_at=row.created_at,
        last_used_at=row.last_used_at,
        revoked_at=row.revoked_at,
    )
