"""Accounts and their API keys (the operator's admin operations), as typed rows.

Money is integer nano-dollars; times are aware UTC datetimes. The documents the CLI prints and the web layer
serves are built from these rows in :mod:`sttgate.admin`.
"""

from __future__ import annotations

import base64
import re
import secrets
import uuid
from collections.abc import Collection
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import Enum
from typing import Any, Final

from sqlalchemy import and_, insert, or_, select, update
from sqlalchemy.engine import Row
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from sttgate.core.accounts import AccountState
from sttgate.core.keys import parse_providers, stored_providers
from sttgate.providers import get_provider, names
from sttgate.store.auth import KEY_PREFIX
from sttgate.store.database import ConflictError, Database, NotFoundError, chunks, hash_secret, utcnow
from sttgate.store.tables import accounts, api_keys, credits

KEY_DISPLAY_CHARS = 12
# Far above any real balance, far below BIGINT overflow.
MAX_BALANCE_NANOS = 10**18
# Far above any real limit; it keeps the value inside the column's integer type on every database.
MAX_STREAMS = 1_000_000
# A key's lifetime: up to 100 years (keeps the expiry a valid datetime).
MAX_KEY_LIFETIME_SECONDS = 100 * 366 * 86400
MAX_EXTERNAL_ID_CHARS = 255
MAX_WEBHOOK_URL_CHARS = 2048
# An absolute http(s) URL: a DNS name or bracketed IPv6 address, an optional port, then printable ASCII (anything
# else percent-encoded). The admin API's OpenAPI document publishes this same pattern.
WEBHOOK_URL_PATTERN = r"^https?://([A-Za-z0-9-]+(\.[A-Za-z0-9-]+)*\.?|\[[0-9A-Fa-f:.]+\])(:[0-9]{1,5})?([/?#][!-~]*)?$"
MAX_IDEMPOTENCY_KEY_CHARS = 255
MAX_PAGE = 1000


class Keep(Enum):
    """An optional account field left as it is by an update (``None`` clears it)."""

    KEEP = "keep"


KEEP: Final = Keep.KEEP


@dataclass(frozen=True)
class Account:
    id: str
    name: str
    streaming_enabled: bool
    max_streams: int
    balance_nanos: int | None  # None = postpaid
    created_at: datetime
    updated_at: datetime
    # Revision-2 fields (docs/contract.md#accounts); None = not set.
    external_id: str | None = None
    webhook_url: str | None = None
    low_balance_nanos: int | None = None
    monthly_budget_nanos: int | None = None


@dataclass(frozen=True)
class Credit:
    """A credit posted with an idempotency key; ``balance_nanos`` is the balance right after it. ``replayed``: this
    call credited nothing, it found the credit an earlier call with the same key made."""

    id: str
    account_id: str
    idempotency_key: str
    amount_nanos: int
    balance_nanos: int
    created_at: datetime
    replayed: bool = False


@dataclass(frozen=True)
class ApiKey:
    """A key as listed: never its secret, which is not stored."""

    id: str
    account_id: str
    prefix: str
    created_at: datetime
    last_used_at: datetime | None
    revoked_at: datetime | None
    # docs/contract.md#keys (None: not set; providers None: every provider).
    name: str | None = None
    expires_at: datetime | None = None
    max_streams: int | None = None
    providers: tuple[str, ...] | None = None


@dataclass(frozen=True)
class KeyOptions:
    """The optional fields of a new key (docs/contract.md#keys): a label, a lifetime in seconds, a stream limit of its
    own (within the account's), the providers it may open."""

    name: str | None = None
    expires_in_seconds: int | None = None
    max_streams: int | None = None
    providers: tuple[str, ...] | None = None


@dataclass(frozen=True)
class NewKey:
    """A key just created: the only time its secret exists outside the caller's hands."""

    id: str
    key: str
    prefix: str
    account_id: str
    created_at: datetime
    name: str | None = None
    expires_at: datetime | None = None
    max_streams: int | None = None
    providers: tuple[str, ...] | None = None


class Accounts:
    """Create, read and change accounts; create, list and revoke keys; the webhook signing secret."""

    def __init__(self, database: Database) -> None:
        self._db = database

    async def create_account(
        self,
        *,
        name: str,
        max_streams: int = 5,
        balance_nanos: int | None = None,
        streaming_enabled: bool = True,
        external_id: str | None = None,
        webhook_url: str | None = None,
        low_balance_nanos: int | None = None,
        monthly_budget_nanos: int | None = None,
    ) -> Account:
        _check_name(name)
        _check_max_streams(max_streams)
        if balance_nanos is not None:
            _check_amount(balance_nanos, "balance")
        optional = _optional_fields(external_id, webhook_url, low_balance_nanos, monthly_budget_nanos)
        now = utcnow()
        account_id = str(uuid.uuid4())
        try:
            async with self._db.write() as conn:
                await conn.execute(
                    insert(accounts).values(
                        id=account_id,
                        name=name.strip(),
                        streaming_enabled=streaming_enabled,
                        max_streams=max_streams,
                        balance_nanos=balance_nanos,
                        webhook_secret=_new_webhook_secret(),
                        created_at=now,
                        updated_at=now,
                        **optional,
                    )
                )
                return await _read_account(conn, account_id)
        except IntegrityError as exc:
            raise _external_id_taken(external_id) from exc

    async def list_accounts(
        self, *, external_id: str | None = None, after: str | None = None, limit: int | None = None
    ) -> list[Account]:
        """Accounts oldest first; ``external_id``: only the account with that id; ``after``: those that come after
        that account (a page's cursor); ``limit``: at most that many."""
        query = select(accounts).order_by(accounts.c.created_at, accounts.c.id)
        if external_id is not None:
            query = query.where(accounts.c.external_id == external_id)
        if limit is not None:
            if not 1 <= limit <= MAX_PAGE:
                raise ValueError(f"limit must be 1..{MAX_PAGE}")
            query = query.limit(limit)
        async with self._db.reader.connect() as conn:
            if after is not None:
                last = (await conn.execute(select(accounts.c.created_at).where(accounts.c.id == after))).first()
                if last is None:
                    raise ValueError(f"the cursor {after!r} names no account")
                query = query.where(
                    or_(
                        accounts.c.created_at > last.created_at,
                        and_(accounts.c.created_at == last.created_at, accounts.c.id > after),
                    )
                )
            rows = (await conn.execute(query)).all()
        return [_account(r) for r in rows]

    async def account_states(self, account_ids: Collection[str]) -> dict[str, AccountState]:
        """What live sessions need of their accounts (docs/billing.md#account-changes), in one read."""
        if not account_ids:
            return {}
        states: dict[str, AccountState] = {}
        async with self._db.reader.connect() as conn:
            for chunk in chunks(list(account_ids)):
                rows = await conn.execute(
                    select(accounts.c.id, accounts.c.streaming_enabled, accounts.c.balance_nanos).where(
                        accounts.c.id.in_(chunk)
                    )
                )
                for r in rows:
                    states[r.id] = AccountState(bool(r.streaming_enabled), r.balance_nanos is not None)
        return states

    async def get_account(self, account_id: str) -> Account | None:
        async with self._db.reader.connect() as conn:
            row = (await conn.execute(select(accounts).where(accounts.c.id == account_id))).first()
        return None if row is None else _account(row)

    async def update_account(
        self,
        account_id: str,
        *,
        name: str | None = None,
        max_streams: int | None = None,
        streaming_enabled: bool | None = None,
        set_balance_nanos: int | None = None,
        top_up_nanos: int | None = None,
        postpaid: bool = False,
        external_id: str | Keep | None = KEEP,
        webhook_url: str | Keep | None = KEEP,
        low_balance_nanos: int | Keep | None = KEEP,
        monthly_budget_nanos: int | Keep | None = KEEP,
    ) -> Account:
        """Change an account; a top-up adds to the balance atomically (safe while sessions are being charged). The
        revision-2 fields are kept unless given; ``None`` clears one."""
        if sum((set_balance_nanos is not None, top_up_nanos is not None, postpaid)) > 1:
            raise ValueError("choose one of: set the balance, top up, or make the account postpaid")
        values: dict[str, Any] = {}
        if name is not None:
            _check_name(name)
            values["name"] = name.strip()
        if max_streams is not None:
            _check_max_streams(max_streams)
            values["max_streams"] = max_streams
        if streaming_enabled is not None:
            values["streaming_enabled"] = streaming_enabled
        if set_balance_nanos is not None:
            _check_amount(set_balance_nanos, "balance")
            values["balance_nanos"] = set_balance_nanos
        if top_up_nanos is not None:
            _check_amount(top_up_nanos, "top-up")
            if top_up_nanos == 0:
                raise ValueError("a top-up must be more than zero")
            values["balance_nanos"] = accounts.c.balance_nanos + top_up_nanos
        if postpaid:
            values["balance_nanos"] = None
        values |= _optional_fields(external_id, webhook_url, low_balance_nanos, monthly_budget_nanos)
        try:
            async with self._db.write() as conn:
                balance_nanos = await _locked_balance(conn, account_id)
                if top_up_nanos is not None:
                    if balance_nanos is None:
                        raise ValueError("the account is postpaid and has no balance to top up; set one with --balance")
                    if balance_nanos + top_up_nanos > MAX_BALANCE_NANOS:
                        raise ValueError("the balance would exceed the largest supported amount")
                if values:
                    values["updated_at"] = utcnow()
                    await conn.execute(update(accounts).where(accounts.c.id == account_id).values(**values))
                return await _read_account(conn, account_id)
        except IntegrityError as exc:
            raise _external_id_taken(values.get("external_id")) from exc

    async def credit(self, account_id: str, amount_nanos: int, idempotency_key: str) -> Credit:
        """Add ``amount_nanos`` to a prepaid balance once per ``idempotency_key`` (docs/admin-api.md#credits).

        The credit row and the balance change are one transaction that first locks the account row (PostgreSQL
        ``FOR UPDATE``, SQLite ``BEGIN IMMEDIATE``), so concurrent posts of one key, on any number of gateways, queue
        there and the later ones find the first one's row; the unique constraint on (account, key) is the backstop
        that makes a second credit impossible even so. A repeat answers the first credit, ``replayed``; a repeat
        with another amount is a :class:`ConflictError`.
        """
        _check_amount(amount_nanos, "amount")
        if amount_nanos == 0:
            raise ValueError("a credit must be more than zero")
        if not idempotency_key or len(idempotency_key) > MAX_IDEMPOTENCY_KEY_CHARS:
            raise ValueError(f"the idempotency key must be 1..{MAX_IDEMPOTENCY_KEY_CHARS} characters")
        try:
            async with self._db.write() as conn:
                balance_nanos = await _locked_balance(conn, account_id)
                earlier = await _find_credit(conn, account_id, idempotency_key)
                if earlier is not None:
                    return _replay(earlier, amount_nanos)
                if balance_nanos is None:
                    raise ConflictError("the account is postpaid: it has no balance to credit")
                balance = balance_nanos + amount_nanos
                if balance > MAX_BALANCE_NANOS:
                    raise ConflictError("the balance would exceed the largest supported amount")
                made = Credit(
                    id=str(uuid.uuid4()),
                    account_id=account_id,
                    idempotency_key=idempotency_key,
                    amount_nanos=amount_nanos,
                    balance_nanos=balance,
                    created_at=utcnow(),
                )
                await conn.execute(
                    insert(credits).values(
                        id=made.id,
                        account_id=account_id,
                        idempotency_key=idempotency_key,
                        amount_nanos=amount_nanos,
                        balance_nanos=balance,
                        created_at=made.created_at,
                    )
                )
                await conn.execute(
                    update(accounts)
                    .where(accounts.c.id == account_id)
                    .values(balance_nanos=accounts.c.balance_nanos + amount_nanos, updated_at=made.created_at)
                )
                return made
        except IntegrityError:
            # Another transaction inserted the key between our read and our insert (the lock makes this unlikely,
            # the constraint makes it harmless): this one rolled back and credited nothing.
            async with self._db.reader.connect() as conn:
                earlier = await _find_credit(conn, account_id, idempotency_key)
            if earlier is None:
                raise
            return _replay(earlier, amount_nanos)

    async def webhook_secret(self, account_id: str, *, rotate: bool = False) -> str:
        """The key that signs the account's webhooks (docs/pull.md#webhooks); ``rotate`` replaces it."""
        async with self._db.write() as conn:
            if rotate:
                secret = _new_webhook_secret()
                result = await conn.execute(
                    update(accounts)
                    .where(accounts.c.id == account_id)
                    .values(webhook_secret=secret, updated_at=utcnow())
                )
                if result.rowcount != 1:
                    raise NotFoundError(f"no account {account_id}")
                return secret
            row = (await conn.execute(select(accounts.c.webhook_secret).where(accounts.c.id == account_id))).first()
        if row is None:
            raise NotFoundError(f"no account {account_id}")
        return str(row.webhook_secret)

    async def create_key(self, account_id: str, options: KeyOptions | None = None) -> NewKey:
        """A new key; the only time its secret is returned (only its hash is stored). ``options``: its name, expiry,
        stream limit and provider allow-list (docs/contract.md#keys); a provider that is not registered is refused
        (ValueError), as is an empty allow-list."""
        opts = options or KeyOptions()
        _check_key_options(opts)
        key = KEY_PREFIX + secrets.token_urlsafe(32)
        key_id = str(uuid.uuid4())
        now = utcnow()
        expires_at = None if opts.expires_in_seconds is None else now + timedelta(seconds=opts.expires_in_seconds)
        providers = None if opts.providers is None else tuple(dict.fromkeys(opts.providers))
        name = None if opts.name is None else opts.name.strip()
        async with self._db.write() as conn:
            await _require_account(conn, account_id)
            await conn.execute(
                insert(api_keys).values(
                    id=key_id,
                    account_id=account_id,
                    key_hash=hash_secret(key),
                    prefix=key[:KEY_DISPLAY_CHARS],
                    created_at=now,
                    name=name,
                    expires_at=expires_at,
                    max_streams=opts.max_streams,
                    providers=stored_providers(providers),
                )
            )
        return NewKey(
            id=key_id,
            key=key,
            prefix=key[:KEY_DISPLAY_CHARS],
            account_id=account_id,
            created_at=now,
            name=name,
            expires_at=expires_at,
            max_streams=opts.max_streams,
            providers=providers,
        )

    async def list_keys(self, account_id: str) -> list[ApiKey]:
        async with self._db.reader.connect() as conn:
            await _require_account(conn, account_id)
            rows = (
                await conn.execute(
                    select(api_keys)
                    .where(api_keys.c.account_id == account_id)
                    .order_by(api_keys.c.created_at, api_keys.c.id)
                )
            ).all()
        return [_key(r) for r in rows]

    async def revoke_key(self, key_id: str) -> ApiKey:
        """Revoke a key at once; revoking twice keeps the first time."""
        async with self._db.write() as conn:
            await conn.execute(
                update(api_keys)
                .where(api_keys.c.id == key_id, api_keys.c.revoked_at.is_(None))
                .values(revoked_at=utcnow())
            )
            row = (await conn.execute(select(api_keys).where(api_keys.c.id == key_id))).first()
        if row is None:
            raise NotFoundError(f"no key {key_id}")
        return _key(row)


async def _locked_balance(conn: AsyncConnection, account_id: str) -> int | None:
    """The account's balance (None: postpaid), its row locked for the rest of the transaction (PostgreSQL
    ``FOR UPDATE``; SQLite's write transaction holds the database); :class:`NotFoundError` without the account."""
    row = (
        await conn.execute(select(accounts.c.balance_nanos).where(accounts.c.id == account_id).with_for_update())
    ).first()
    if row is None:
        raise NotFoundError(f"no account {account_id}")
    balance: int | None = row.balance_nanos
    return balance


async def _find_credit(conn: AsyncConnection, account_id: str, idempotency_key: str) -> Credit | None:
    row = (
        await conn.execute(
            select(credits).where(credits.c.account_id == account_id, credits.c.idempotency_key == idempotency_key)
        )
    ).first()
    if row is None:
        return None
    return Credit(
        id=row.id,
        account_id=row.account_id,
        idempotency_key=row.idempotency_key,
        amount_nanos=row.amount_nanos,
        balance_nanos=row.balance_nanos,
        created_at=row.created_at,
        replayed=True,
    )


def _replay(earlier: Credit, amount_nanos: int) -> Credit:
    if earlier.amount_nanos != amount_nanos:
        raise ConflictError("the idempotency key was already used for a credit of another amount")
    return earlier


def _external_id_taken(external_id: object) -> ConflictError:
    return ConflictError(f"the external id {external_id!r} is already used by another account")


def _optional_fields(
    external_id: str | Keep | None,
    webhook_url: str | Keep | None,
    low_balance_nanos: int | Keep | None,
    monthly_budget_nanos: int | Keep | None,
) -> dict[str, Any]:
    """The revision-2 fields given (``KEEP`` ones left out), checked."""
    values: dict[str, Any] = {}
    if not isinstance(external_id, Keep):
        if external_id is not None and not 1 <= len(external_id) <= MAX_EXTERNAL_ID_CHARS:
            raise ValueError(f"the external id must be 1..{MAX_EXTERNAL_ID_CHARS} characters")
        values["external_id"] = external_id
    if not isinstance(webhook_url, Keep):
        if webhook_url is not None:
            _check_webhook_url(webhook_url)
        values["webhook_url"] = webhook_url
    if not isinstance(low_balance_nanos, Keep):
        if low_balance_nanos is not None:
            _check_amount(low_balance_nanos, "low-balance threshold")
        values["low_balance_nanos"] = low_balance_nanos
    if not isinstance(monthly_budget_nanos, Keep):
        if monthly_budget_nanos is not None:
            _check_amount(monthly_budget_nanos, "monthly budget")
        values["monthly_budget_nanos"] = monthly_budget_nanos
    return values


def _check_webhook_url(url: str) -> None:
    """Its form only; where it may point is checked when events are delivered."""
    if len(url) > MAX_WEBHOOK_URL_CHARS or re.fullmatch(WEBHOOK_URL_PATTERN, url) is None:
        raise ValueError(
            f"the webhook URL must be an absolute http or https URL of at most {MAX_WEBHOOK_URL_CHARS} characters"
        )


async def _read_account(conn: AsyncConnection, account_id: str) -> Account:
    row = (await conn.execute(select(accounts).where(accounts.c.id == account_id))).first()
    if row is None:
        raise NotFoundError(f"no account {account_id}")
    return _account(row)


async def _require_account(conn: AsyncConnection, account_id: str) -> None:
    found = (await conn.execute(select(accounts.c.id).where(accounts.c.id == account_id))).first()
    if found is None:
        raise NotFoundError(f"no account {account_id}")


def _account(row: Row[Any]) -> Account:
    return Account(
        id=row.id,
        name=row.name,
        streaming_enabled=bool(row.streaming_enabled),
        max_streams=row.max_streams,
        balance_nanos=row.balance_nanos,
        created_at=row.created_at,
        updated_at=row.updated_at,
        external_id=row.external_id,
        webhook_url=row.webhook_url,
        low_balance_nanos=row.low_balance_nanos,
        monthly_budget_nanos=row.monthly_budget_nanos,
    )


def _key(row: Row[Any]) -> ApiKey:
    return ApiKey(
        id=row.id,
        account_id=row.account_id,
        prefix=row.prefix,
        created_at=row.created_at,
        last_used_at=row.last_used_at,
        revoked_at=row.revoked_at,
        name=row.name,
        expires_at=row.expires_at,
        max_streams=row.max_streams,
        providers=parse_providers(row.providers),
    )


def _new_webhook_secret() -> str:
    """``whsec_`` + standard base64 of 32 random bytes: a Standard Webhooks secret as is (docs/pull.md#signatures)."""
    return "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()


def _check_name(name: str) -> None:
    if not name or not name.strip():
        raise ValueError("the account name must not be empty")


def _check_key_options(opts: KeyOptions) -> None:
    if opts.name is not None and not opts.name.strip():
        raise ValueError("the key name must not be empty")
    if opts.expires_in_seconds is not None and not 1 <= opts.expires_in_seconds <= MAX_KEY_LIFETIME_SECONDS:
        raise ValueError(f"the key's lifetime must be between 1 and {MAX_KEY_LIFETIME_SECONDS:,} seconds")
    if opts.max_streams is not None:
        _check_max_streams(opts.max_streams)
    if opts.providers is not None:
        if not opts.providers:
            raise ValueError("the provider allow-list must name at least one provider")
        unknown = [p for p in opts.providers if get_provider(p) is None]
        if unknown:
            raise ValueError(f"unknown provider {unknown[0]!r}; valid providers: {', '.join(names())}")


def _check_max_streams(max_streams: int) -> None:
    if not 0 <= max_streams <= MAX_STREAMS:
        raise ValueError(f"max streams must be between 0 and {MAX_STREAMS:,}")


def _check_amount(nanos: int, what: str) -> None:
    if nanos < 0:
        raise ValueError(f"the {what} must not be negative")
    if nanos > MAX_BALANCE_NANOS:
        raise ValueError(f"the {what} is larger than the largest supported amount")
