"""Who is calling: API keys (authenticate) and short-lived gateway tokens (mint, redeem).

Keys and tokens are 256 random bits, stored only as their SHA-256. A token (docs/contract.md#tokens) is
bound to its account and optionally to one provider, expires after 1..600 s, and is redeemed by one conditional
``UPDATE`` so that two connections racing with the same token cannot both win.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import secrets
import string
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

from sqlalchemy import bindparam, or_, select, update
from sqlalchemy import insert as sa_insert

from sttgate.core.keys import allows, expired, parse_providers
from sttgate.store.database import Database, hash_secret
from sttgate.store.tables import accounts, api_keys
from sttgate.store.tables import tokens as tokens_table

if TYPE_CHECKING:
    from sttgate.store.pg_fast import PgFastPath
    from sttgate.store.sqlite_fast import SqliteFastPath

log = logging.getLogger(__name__)

KEY_PREFIX = "sk-mai-"
# token_urlsafe(32) gives 43 characters; anything far outside that is not one of our keys.
_KEY_MIN_LEN = len(KEY_PREFIX) + 32
_KEY_MAX_LEN = 256
_KEY_ALPHABET = frozenset(string.ascii_letters + string.digits + "-_")
LAST_USED_RESOLUTION_SECONDS = 60.0

TOKEN_PREFIX = "sttg_"
MIN_SECONDS = 1
MAX_SECONDS = 600


@dataclass(frozen=True)
class Principal:
    account_id: str
    # The key that authenticated, or for a token the key that minted it (None: a token minted before 0006).
    key_id: str | None
    streaming_enabled: bool
    max_streams: int
    balance_nanos: int | None  # None = postpaid
    # The cap on the session's length carried by the token that opened it (None: only the gateway's limit).
    max_session_seconds: int | None = None
    # The key's own stream limit and provider allow-list (docs/contract.md#keys; None: none of its own).
    key_max_streams: int | None = None
    key_providers: tuple[str, ...] | None = None

    def allows(self, provider: str) -> bool:
        """Whether the key may open a session with ``provider`` (403 ``provider_not_allowed`` otherwise)."""
        return allows(self.key_providers, provider)


@dataclass(frozen=True)
class AuthRow:
    """The key and its account, as one authentication query reads them (both implementations return this)."""

    key_id: str
    key_hash: str
    revoked: bool
    last_used_at: datetime | None
    account_id: str
    streaming_enabled: bool
    max_streams: int
    balance_nanos: int | None
    expires_at: datetime | None = None
    key_max_streams: int | None = None
    key_providers: str | None = None  # as stored: comma-separated, None = every provider


@dataclass(frozen=True)
class MintedToken:
    token: str
    expires_at: datetime


def utcnow() -> datetime:
    """The tokens' clock (a module function so tests can move time without sleeping)."""
    return datetime.now(UTC)


def looks_like_key(candidate: str) -> bool:
    return (
        candidate.startswith(KEY_PREFIX)
        and _KEY_MIN_LEN <= len(candidate) <= _KEY_MAX_LEN
        and _KEY_ALPHABET.issuperset(candidate[len(KEY_PREFIX) :])
    )


def looks_like_token(credential: str) -> bool:
    """Tell a gateway token from an API key where both travel in the same header (some SDKs)."""
    return credential.startswith(TOKEN_PREFIX)


AUTH_QUERY = (
    select(
        api_keys.c.id.label("key_id"),
        api_keys.c.key_hash,
        api_keys.c.revoked_at,
        api_keys.c.last_used_at,
        accounts.c.id.label("account_id"),
        accounts.c.streaming_enabled,
        accounts.c.max_streams,
        accounts.c.balance_nanos,
        api_keys.c.expires_at,
        api_keys.c.max_streams.label("key_max_streams"),
        api_keys.c.providers.label("key_providers"),
    )
    .join(accounts, accounts.c.id == api_keys.c.account_id)
    .where(api_keys.c.key_hash == bindparam("key_hash"))
)


class Auth:
    """Keys and tokens; one per store. Key lookups take the fast path (SQLite's or PostgreSQL's) when there is one."""

    def __init__(self, database: Database, fast: SqliteFastPath | PgFastPath | None) -> None:
        self._db = database
        self._fast = fast
        self._last_used_written: dict[str, float] = {}
        self._background: set[asyncio.Task[None]] = set()

    async def lookup_key(self, digest: str) -> AuthRow | None:
        """The portable key lookup (the fast path's equivalent is ``SqliteFastPath.authenticate``)."""
        async with self._db.reader.connect() as conn:
            row = (await conn.execute(AUTH_QUERY, {"key_hash": digest})).first()
        if row is None:
            return None
        return AuthRow(
            key_id=row.key_id,
            key_hash=row.key_hash,
            revoked=row.revoked_at is not None,
            last_used_at=row.last_used_at,
            account_id=row.account_id,
            streaming_enabled=bool(row.streaming_enabled),
            max_streams=row.max_streams,
            balance_nanos=row.balance_nanos,
            expires_at=row.expires_at,
            key_max_streams=row.key_max_streams,
            key_providers=row.key_providers,
        )

    async def authenticate(self, api_key: str) -> Principal | None:
        """The account behind a key, or None for an unknown, revoked, expired or malformed key.

        Known and unknown keys cost the same single indexed query on the hash; the secret itself is never
        compared, its hash is (in constant time).
        """
        if not looks_like_key(api_key):
            return None
        digest = hash_secret(api_key)
        row = await (self._fast.authenticate(digest) if self._fast is not None else self.lookup_key(digest))
        if row is None or not hmac.compare_digest(row.key_hash, digest) or row.revoked:
            return None
        if expired(row.expires_at, utcnow()):
            return None
        self._touch_key(row.key_id, row.last_used_at)
        return Principal(
            account_id=row.account_id,
            key_id=row.key_id,
            streaming_enabled=row.streaming_enabled,
            max_streams=row.max_streams,
            balance_nanos=row.balance_nanos,
            key_max_streams=row.key_max_streams,
            key_providers=parse_providers(row.key_providers),
        )

    def _touch_key(self, key_id: str, last_used_at: datetime | None) -> None:
        """Record last_used_at at most once a minute per key, in the background (never on the handshake path)."""
        mono = time.monotonic()
        written = self._last_used_written.get(key_id)
        if written is not None and mono - written < LAST_USED_RESOLUTION_SECONDS:
            return
        self._last_used_written[key_id] = mono
        now = datetime.now(UTC)
        if last_used_at is not None and (now - last_used_at).total_seconds() < LAST_USED_RESOLUTION_SECONDS:
            return
        task = asyncio.get_running_loop().create_task(self._write_last_used(key_id, now))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _write_last_used(self, key_id: str, at: datetime) -> None:
        try:
            async with self._db.write() as conn:
                await conn.execute(
                    update(api_keys)
                    .where(
                        api_keys.c.id == key_id,
                        or_(api_keys.c.last_used_at.is_(None), api_keys.c.last_used_at < at),
                    )
                    .values(last_used_at=at)
                )
        except Exception:
            log.warning("could not record last use of key %s", key_id, exc_info=True)

    async def mint_token(
        self,
        account_id: str,
        expires_in_seconds: int,
        provider: str | None = None,
        *,
        max_session_seconds: int | None = None,
        key_id: str | None = None,
    ) -> MintedToken:
        """Create a token for ``account_id``; the caller has authenticated the account and validated the arguments.

        ``max_session_seconds`` caps the length of the session the token opens (docs/contract.md#tokens);
        ``key_id`` is the minting key, to which that session is attributed (docs/contract.md#usage)."""
        if not MIN_SECONDS <= expires_in_seconds <= MAX_SECONDS:
            raise ValueError(f"expires_in_seconds must be {MIN_SECONDS}..{MAX_SECONDS}")
        if max_session_seconds is not None and max_session_seconds < 1:
            raise ValueError("max_session_seconds must be at least 1")
        token = TOKEN_PREFIX + secrets.token_urlsafe(32)
        now = utcnow()
        expires_at = now + timedelta(seconds=expires_in_seconds)
        async with self._db.write() as conn:
            await conn.execute(
                sa_insert(tokens_table).values(
                    id=uuid.uuid4().hex,
                    token_hash=hash_secret(token),
                    account_id=account_id,
                    provider=provider,
                    max_session_seconds=max_session_seconds,
                    api_key_id=key_id,
                    expires_at=expires_at,
                    created_at=now,
                )
            )
        return MintedToken(token, expires_at)

    async def redeem_token(self, token: str, provider: str) -> Principal | None:
        """Use ``token`` for a session with ``provider``: the token's account, or None (401 ``invalid_token``).

        None when the token is unknown, expired, used, or bound to another provider; a token bound elsewhere is
        left unused (the mistake costs the browser nothing). A token outlives nothing: one whose minting key has been
        revoked or has expired since is refused too, and left unused (docs/contract.md#keys). Exactly one of any
        number of concurrent redeems of one token wins: the row is claimed by a single conditional UPDATE. The
        principal's ``key_id`` is the key that minted the token; it carries the token's session cap and the key's
        stream limit and provider allow-list.
        """
        if not looks_like_token(token):
            return None
        now = utcnow()
        t = tokens_table
        key_valid = (
            select(api_keys.c.id)
            .where(
                api_keys.c.id == t.c.api_key_id,
                api_keys.c.revoked_at.is_(None),
                or_(api_keys.c.expires_at.is_(None), api_keys.c.expires_at > now),
            )
            .exists()
        )
        claim = (
            update(t)
            .where(
                t.c.token_hash == hash_secret(token),
                t.c.used_at.is_(None),
                t.c.expires_at > now,
                or_(t.c.provider.is_(None), t.c.provider == provider),
                or_(t.c.api_key_id.is_(None), key_valid),
            )
            .values(used_at=now)
            .returning(t.c.account_id, t.c.max_session_seconds, t.c.api_key_id)
        )
        async with self._db.write() as conn:
            claimed = (await conn.execute(claim)).one_or_none()
            if claimed is None:
                return None
            account_id = claimed.account_id
            account = (
                await conn.execute(
                    select(accounts.c.streaming_enabled, accounts.c.max_streams, accounts.c.balance_nanos).where(
                        accounts.c.id == account_id
                    )
                )
            ).one()
            key = None
            if claimed.api_key_id is not None:
                key = (
                    await conn.execute(
                        select(api_keys.c.max_streams, api_keys.c.providers).where(api_keys.c.id == claimed.api_key_id)
                    )
                ).first()
        return Principal(
            account_id=account_id,
            key_id=claimed.api_key_id,
            streaming_enabled=bool(account.streaming_enabled),
            max_streams=account.max_streams,
            balance_nanos=account.balance_nanos,
            max_session_seconds=claimed.max_session_seconds,
            key_max_streams=None if key is None else key.max_streams,
            key_providers=None if key is None else parse_providers(key.providers),
        )

    async def close(self) -> None:
        """Wait for the background last-used writes."""
        if self._background:
            await asyncio.gather(*self._background, return_exceptions=True)
