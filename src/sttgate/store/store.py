"""The store: every database query the gateway and the admin tools make.

Money is integer nano-dollars. Every method is one short transaction. Limits and balances are enforced by the
database (row locks on PostgreSQL, ``BEGIN IMMEDIATE`` on SQLite), so they hold across gateway processes.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import logging
import secrets
import sqlite3
import string
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Float, Integer, and_, bindparam, case, func, insert, literal, or_, select, text, update
from sqlalchemy.engine import Row
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from sttgate.core import refusals
from sttgate.core.money import CYCLE_SECONDS, format_usd
from sttgate.core.outcomes import ClosedBy
from sttgate.store import db
from sttgate.store.tables import UTCDateTime, accounts, api_keys, sessions, tasks

log = logging.getLogger(__name__)

KEY_PREFIX = "sk-mai-"
KEY_DISPLAY_CHARS = 12
# token_urlsafe(32) gives 43 characters; anything far outside that is not one of our keys.
_KEY_MIN_LEN = len(KEY_PREFIX) + 32
_KEY_MAX_LEN = 256
_KEY_ALPHABET = frozenset(string.ascii_letters + string.digits + "-_")
LAST_USED_RESOLUTION_SECONDS = 60.0
# Far above any real balance, far below BIGINT overflow.
MAX_BALANCE_NANOS = 10**18
SESSION_KINDS = ("websocket", "pull")
CLOSED_BY = ("client", "upstream", "gateway", "gateway_crash")
_ID_CHUNK = 1000


class NotFoundError(LookupError):
    """An account, key or session that does not exist (the CLI prints it and exits 1)."""


@dataclass(frozen=True)
class Principal:
    account_id: str
    key_id: str | None
    streaming_enabled: bool
    max_streams: int
    balance_nanos: int | None  # None = postpaid


@dataclass(frozen=True)
class SessionProgress:
    session_id: str
    audio_seconds: float
    cycles: int
    cost_nanos: int


def utcnow() -> datetime:
    return datetime.now(UTC)


def hash_secret(secret: str) -> str:
    """SHA-256 hex of a key or token: they are 256-bit random, so a fast hash loses nothing."""
    return hashlib.sha256(secret.encode()).hexdigest()


def isoformat(value: datetime | None) -> str | None:
    """ISO 8601 UTC with a ``Z``, the form every document of the gateway uses."""
    if value is None:
        return None
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _looks_like_key(candidate: str) -> bool:
    return (
        candidate.startswith(KEY_PREFIX)
        and _KEY_MIN_LEN <= len(candidate) <= _KEY_MAX_LEN
        and _KEY_ALPHABET.issuperset(candidate[len(KEY_PREFIX) :])
    )


def _monotone(column: Any, param: str, type_: Any) -> Any:
    """``max(column, :param)`` on every backend: totals written by batches never go backwards."""
    value = bindparam(param, type_=type_)
    return case((column < value, value), else_=column)


_AUTH_QUERY = (
    select(
        api_keys.c.id.label("key_id"),
        api_keys.c.key_hash,
        api_keys.c.revoked_at,
        api_keys.c.last_used_at,
        accounts.c.id.label("account_id"),
        accounts.c.streaming_enabled,
        accounts.c.max_streams,
        accounts.c.balance_nanos,
    )
    .join(accounts, accounts.c.id == api_keys.c.account_id)
    .where(api_keys.c.key_hash == bindparam("key_hash"))
)


class Store:
    """Async access to the database; one instance per process, shared by all sessions."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        self._reader = db.read_only(engine)
        # SQLite has one writer at a time. Its busy handler polls with sleeps of up to 100 ms, so letting this
        # process's writers queue here instead keeps a write's latency near its own cost (other processes still
        # wait in the busy handler).
        self._write_lock = asyncio.Lock() if engine.dialect.name == "sqlite" else None
        self._last_used_written: dict[str, float] = {}
        self._background: set[asyncio.Task[None]] = set()
        self._time_processor: Any = None
        self._time_reader: Any = None

    @classmethod
    async def connect(cls, url: str, *, migrate: bool = True) -> Store:
        if migrate:
            await db.upgrade(url)
        return cls(db.make_engine(url))

    @asynccontextmanager
    async def write(self) -> AsyncIterator[AsyncConnection]:
        """A write transaction, committed on success; code outside the store that writes should use it too.

        Not re-entrant: do not call another writing Store method inside it.
        """
        if self._write_lock is None:
            async with self.engine.begin() as conn:
                yield conn
        else:
            async with self._write_lock, self.engine.begin() as conn:
                yield conn

    async def _on_sqlite_thread(self, fn: Any, *args: Any, write: bool = True) -> Any:
        """SQLite: run ``fn(dbapi_connection, *args)`` (one whole write transaction, see ``_sqlite_tx``, or one
        read) in one trip to the driver's thread; writes hold this process's write lock. The hot paths use it: each
        statement through SQLAlchemy costs 3-4 trips."""
        assert self._write_lock is not None
        async with contextlib.AsyncExitStack() as stack:
            if write:
                await stack.enter_async_context(self._write_lock)
            conn = await stack.enter_async_context(self.engine.connect())
            raw = await conn.get_raw_connection()
            driver = raw.driver_connection  # the aiosqlite connection
            return await driver._execute(fn, driver._conn, *args)

    def _sqlite_time(self, value: datetime) -> Any:
        """A timestamp as the SQLite columns store it (``UTCDateTime``'s bind processing)."""
        processor = self._time_processor
        if processor is None:
            processor = self._time_processor = (
                UTCDateTime().dialect_impl(self.engine.dialect).bind_processor(self.engine.dialect)
            )
        return processor(value) if processor is not None else value

    def _sqlite_read_time(self, value: Any) -> datetime | None:
        """A stored SQLite timestamp as ``UTCDateTime`` reads it (aware UTC)."""
        processor = self._time_reader
        if processor is None:
            dialect = self.engine.dialect
            processor = self._time_reader = UTCDateTime().dialect_impl(dialect).result_processor(dialect, None)
        return processor(value) if processor is not None else value

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    async def close(self) -> None:
        if self._background:
            await asyncio.gather(*self._background, return_exceptions=True)
        await self.engine.dispose()

    async def ping(self, timeout: float = 5.0) -> bool:
        """True when the database answers within ``timeout`` (for /readyz); never raises."""
        try:
            async with asyncio.timeout(timeout), self._reader.connect() as conn:
                await conn.execute(text("SELECT 1"))
        except Exception:
            log.warning("database ping failed", exc_info=True)
            return False
        return True

    # --- authentication -------------------------------------------------------------------------------------

    async def authenticate(self, api_key: str) -> Principal | None:
        """The account behind a key, or None for an unknown, revoked or malformed key.

        Known and unknown keys cost the same single indexed query on the hash; the secret itself is never
        compared, its hash is (in constant time).
        """
        if not _looks_like_key(api_key):
            return None
        digest = hash_secret(api_key)
        if self._write_lock is not None:
            # SQLite: one statement in autocommit mode, one trip to the driver's thread (no BEGIN/ROLLBACK).
            row = await self._on_sqlite_thread(_auth_sqlite, digest, write=False)
            last_used_at = None if row is None else self._sqlite_read_time(row.last_used_at)
        else:
            async with self._reader.connect() as conn:
                row = (await conn.execute(_AUTH_QUERY, {"key_hash": digest})).first()
            last_used_at = None if row is None else row.last_used_at
        if row is None or not hmac.compare_digest(row.key_hash, digest) or row.revoked_at is not None:
            return None
        self._touch_key(row.key_id, last_used_at)
        return Principal(
            account_id=row.account_id,
            key_id=row.key_id,
            streaming_enabled=bool(row.streaming_enabled),
            max_streams=row.max_streams,
            balance_nanos=row.balance_nanos,
        )

    def _touch_key(self, key_id: str, last_used_at: datetime | None) -> None:
        """Record last_used_at at most once a minute per key, in the background (never on the handshake path)."""
        mono = time.monotonic()
        written = self._last_used_written.get(key_id)
        if written is not None and mono - written < LAST_USED_RESOLUTION_SECONDS:
            return
        self._last_used_written[key_id] = mono
        now = utcnow()
        if last_used_at is not None and (now - last_used_at).total_seconds() < LAST_USED_RESOLUTION_SECONDS:
            return
        task = asyncio.get_running_loop().create_task(self._write_last_used(key_id, now))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _write_last_used(self, key_id: str, at: datetime) -> None:
        try:
            async with self.write() as conn:
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

    # --- sessions (stream slots) ----------------------------------------------------------------------------

    async def open_session(
        self,
        *,
        session_id: str,
        account_id: str,
        kind: str,
        provider: str,
        gateway_id: str,
        min_balance_nanos: int,
        lease_ttl: float,
    ) -> None:
        """Take a stream slot, or raise TOO_MANY_STREAMS (checked first) or INSUFFICIENT_BALANCE.

        One transaction that holds the account's lock from the count to the insert, so concurrent opens of one
        account (in any process) are serialized and the limit is exact.
        """
        if kind not in SESSION_KINDS:
            raise ValueError(f"unknown session kind {kind!r}")
        # The refusal is raised after the transaction: the refusal constants are frozen, and context managers
        # that re-raise need to set their __traceback__.
        refusal: refusals.Refusal | None = None
        now = utcnow()
        if self._write_lock is not None:
            outcome = await self._on_sqlite_thread(
                _open_sqlite,
                session_id,
                account_id,
                kind,
                provider,
                gateway_id,
                min_balance_nanos,
                self._sqlite_time(now),
                self._sqlite_time(now + timedelta(seconds=lease_ttl)),
            )
            if outcome is None:
                raise NotFoundError(f"no account {account_id}")
            if outcome == "streams":
                raise refusals.TOO_MANY_STREAMS
            if outcome == "balance":
                raise refusals.INSUFFICIENT_BALANCE
            return
        live_count = (
            select(func.count())
            .select_from(sessions)
            .where(
                sessions.c.account_id == account_id,
                sessions.c.ended_at.is_(None),
                sessions.c.lease_expires_at > now,
            )
            .scalar_subquery()
        )
        async with self.write() as conn:
            # PostgreSQL: the count must be read after the account's row lock is held (a statement's snapshot
            # predates the lock wait), so two statements.
            account = (
                await conn.execute(
                    select(accounts.c.max_streams, accounts.c.balance_nanos)
                    .where(accounts.c.id == account_id)
                    .with_for_update()
                )
            ).first()
            live = None if account is None else (await conn.execute(select(live_count))).scalar_one()
            if account is None:
                raise NotFoundError(f"no account {account_id}")
            if live >= account.max_streams:
                refusal = refusals.TOO_MANY_STREAMS
            elif account.balance_nanos is not None and account.balance_nanos < min_balance_nanos:
                refusal = refusals.INSUFFICIENT_BALANCE
            else:
                await conn.execute(
                    insert(sessions).values(
                        id=session_id,
                        account_id=account_id,
                        kind=kind,
                        provider=provider,
                        gateway_id=gateway_id,
                        started_at=now,
                        lease_expires_at=now + timedelta(seconds=lease_ttl),
                        audio_seconds=0.0,
                        cycles=0,
                        cost_nanos=0,
                    )
                )
        if refusal is not None:
            raise refusal

    async def charge_cycles(self, session_id: str, account_id: str, cycles: int, price_nanos: int) -> bool:
        """Debit ``cycles × price`` from a prepaid balance, all or nothing; False when the balance cannot pay.

        The debit is a conditional UPDATE (``balance >= amount``), so racing sessions of one account never take
        the balance below zero, and the session's cycles and cost move in the same transaction. Postpaid
        accounts are not written here (flush_progress records their cycles): True.
        """
        if cycles < 0 or price_nanos < 0:
            raise ValueError("cycles and price must not be negative")
        amount = cycles * price_nanos
        if self._write_lock is not None:
            # SQLite: the whole transaction in one trip to the driver's thread (about 13 otherwise); this runs once
            # per prepaid cycle of every live session.
            outcome = await self._on_sqlite_thread(_charge_sqlite, session_id, account_id, cycles, amount)
            if outcome is None:
                raise NotFoundError(f"no account {account_id}")
            if isinstance(outcome, str):
                raise NotFoundError(f"no session {session_id} of account {account_id}")
            return outcome
        async with self.write() as conn:
            debited = await conn.execute(
                update(accounts)
                .where(accounts.c.id == account_id, accounts.c.balance_nanos >= amount)
                .values(balance_nanos=accounts.c.balance_nanos - amount)
            )
            if debited.rowcount == 1:
                recorded = await conn.execute(
                    update(sessions)
                    .where(sessions.c.id == session_id, sessions.c.account_id == account_id)
                    .values(cycles=sessions.c.cycles + cycles, cost_nanos=sessions.c.cost_nanos + amount)
                )
                if recorded.rowcount != 1:
                    raise NotFoundError(f"no session {session_id} of account {account_id}")
                return True
            balance = (await conn.execute(select(accounts.c.balance_nanos).where(accounts.c.id == account_id))).first()
            if balance is None:
                raise NotFoundError(f"no account {account_id}")
            return balance.balance_nanos is None

    async def flush_progress(self, updates: Sequence[SessionProgress]) -> None:
        """Write absolute session totals in one batched transaction; a total never goes backwards."""
        if not updates:
            return
        if self._write_lock is not None:
            rows = [(float(u.audio_seconds), u.cycles, u.cost_nanos, u.session_id) for u in updates]
            await self._on_sqlite_thread(_flush_sqlite, rows)
            return
        stmt = (
            update(sessions)
            .where(sessions.c.id == bindparam("p_id"))
            .values(
                audio_seconds=_monotone(sessions.c.audio_seconds, "p_audio", Float()),
                cycles=_monotone(sessions.c.cycles, "p_cycles", Integer()),
                cost_nanos=_monotone(sessions.c.cost_nanos, "p_cost", sessions.c.cost_nanos.type),
            )
        )
        params = [
            {"p_id": u.session_id, "p_audio": float(u.audio_seconds), "p_cycles": u.cycles, "p_cost": u.cost_nanos}
            for u in updates
        ]
        async with self.write() as conn:
            await conn.execute(stmt, params)

    async def renew_leases(self, session_ids: Sequence[str], lease_ttl: float) -> None:
        """Extend the slots a live gateway still holds (one statement for up to 1000 sessions)."""
        if not session_ids:
            return
        expires = utcnow() + timedelta(seconds=lease_ttl)
        async with self.write() as conn:
            for chunk in _chunks(session_ids):
                await conn.execute(
                    update(sessions)
                    .where(sessions.c.id.in_(chunk), sessions.c.ended_at.is_(None))
                    .values(lease_expires_at=expires)
                )

    async def end_session(
        self,
        session_id: str,
        *,
        audio_seconds: float,
        cycles: int,
        cost_nanos: int,
        close_code: int | None,
        close_reason: str | None,
        closed_by: ClosedBy | str,
    ) -> None:
        """Record the final totals and how the session closed, which frees its slot.

        The final ``audio_seconds`` is the gateway's last word (a batch flushed while a refused chunk was still
        metered may have written more); ``cycles`` and ``cost_nanos`` never go below what was charged. A session a
        reaper closed as ``gateway_crash`` (its gateway stalled past the lease) gets the real ending.
        """
        if closed_by not in CLOSED_BY:
            raise ValueError(f"closed_by must be one of {', '.join(CLOSED_BY)}")
        closed_by = str(closed_by)  # a ClosedBy is stored as its value
        now = utcnow()
        if self._write_lock is not None:
            found = await self._on_sqlite_thread(
                _end_sqlite,
                session_id,
                float(audio_seconds),
                cycles,
                cost_nanos,
                self._sqlite_time(now),
                close_code,
                close_reason,
                closed_by,
            )
            if not found:
                raise NotFoundError(f"no session {session_id}")
            return
        still_open = or_(sessions.c.ended_at.is_(None), sessions.c.closed_by == "gateway_crash")
        stmt = (
            update(sessions)
            .where(sessions.c.id == session_id)
            .values(
                audio_seconds=case((still_open, bindparam("p_audio", type_=Float())), else_=sessions.c.audio_seconds),
                cycles=_monotone(sessions.c.cycles, "p_cycles", Integer()),
                cost_nanos=_monotone(sessions.c.cost_nanos, "p_cost", sessions.c.cost_nanos.type),
                ended_at=case((still_open, literal(now, UTCDateTime())), else_=sessions.c.ended_at),
                close_code=case((still_open, close_code), else_=sessions.c.close_code),
                close_reason=case((still_open, close_reason), else_=sessions.c.close_reason),
                closed_by=case((still_open, closed_by), else_=sessions.c.closed_by),
            )
        )
        async with self.write() as conn:
            result = await conn.execute(
                stmt, {"p_audio": float(audio_seconds), "p_cycles": cycles, "p_cost": cost_nanos}
            )
        if result.rowcount != 1:
            raise NotFoundError(f"no session {session_id}")

    async def reap_dead_sessions(self, *, gateway_id: str | None = None) -> list[str]:
        """Close as ``gateway_crash`` the open sessions whose lease expired (and, at start-up, this gateway's own).

        Cycles and cost already written are kept. Their pull tasks end as ``gateway_shutdown``. Safe to run on
        every gateway at once: each session is closed by exactly one of them.
        """
        now = utcnow()
        dead = sessions.c.lease_expires_at <= now
        if gateway_id is not None:
            dead = or_(dead, sessions.c.gateway_id == gateway_id)
        async with self.write() as conn:
            result = await conn.execute(
                update(sessions)
                .where(sessions.c.ended_at.is_(None), dead)
                .values(ended_at=now, closed_by="gateway_crash")
                .returning(sessions.c.id)
            )
            reaped = [r.id for r in result]
            for chunk in _chunks(reaped):
                await conn.execute(
                    update(tasks)
                    .where(tasks.c.id.in_(chunk), tasks.c.ended_at.is_(None))
                    .values(status="gateway_shutdown", ended_at=now)
                )
        if reaped:
            log.info("closed %d sessions left by a crashed or stalled gateway", len(reaped))
        return reaped

    # --- admin: accounts ------------------------------------------------------------------------------------

    async def create_account(
        self,
        *,
        name: str,
        max_streams: int = 5,
        balance_nanos: int | None = None,
        streaming_enabled: bool = True,
    ) -> dict[str, Any]:
        _check_name(name)
        _check_max_streams(max_streams)
        if balance_nanos is not None:
            _check_amount(balance_nanos, "balance")
        now = utcnow()
        account_id = str(uuid.uuid4())
        async with self.write() as conn:
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
                )
            )
            return await self._account_dict(conn, account_id)

    async def list_accounts(self) -> list[dict[str, Any]]:
        async with self._reader.connect() as conn:
            rows = (await conn.execute(select(accounts).order_by(accounts.c.created_at, accounts.c.id))).all()
        return [_account_view(r) for r in rows]

    async def get_account(self, account_id: str) -> dict[str, Any] | None:
        async with self._reader.connect() as conn:
            row = (await conn.execute(select(accounts).where(accounts.c.id == account_id))).first()
        return None if row is None else _account_view(row)

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
    ) -> dict[str, Any]:
        """Change an account; a top-up adds to the balance atomically (safe while sessions are being charged)."""
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
        async with self.write() as conn:
            current = (
                await conn.execute(
                    select(accounts.c.balance_nanos).where(accounts.c.id == account_id).with_for_update()
                )
            ).first()
            if current is None:
                raise NotFoundError(f"no account {account_id}")
            if top_up_nanos is not None:
                if current.balance_nanos is None:
                    raise ValueError("the account is postpaid and has no balance to top up; set one with --balance")
                if current.balance_nanos + top_up_nanos > MAX_BALANCE_NANOS:
                    raise ValueError("the balance would exceed the largest supported amount")
            if values:
                values["updated_at"] = utcnow()
                await conn.execute(update(accounts).where(accounts.c.id == account_id).values(**values))
            return await self._account_dict(conn, account_id)

    async def webhook_secret(self, account_id: str, *, rotate: bool = False) -> str:
        """The key that signs the account's webhooks (SPEC §6); ``rotate`` replaces it."""
        async with self.write() as conn:
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

    async def _account_dict(self, conn: AsyncConnection, account_id: str) -> dict[str, Any]:
        row = (await conn.execute(select(accounts).where(accounts.c.id == account_id))).first()
        if row is None:
            raise NotFoundError(f"no account {account_id}")
        return _account_view(row)

    # --- admin: keys ----------------------------------------------------------------------------------------

    async def create_key(self, account_id: str) -> dict[str, Any]:
        """A new key; the only time its secret is returned (only its hash is stored)."""
        key = KEY_PREFIX + secrets.token_urlsafe(32)
        key_id = str(uuid.uuid4())
        now = utcnow()
        async with self.write() as conn:
            await self._require_account(conn, account_id)
            await conn.execute(
                insert(api_keys).values(
                    id=key_id,
                    account_id=account_id,
                    key_hash=hash_secret(key),
                    prefix=key[:KEY_DISPLAY_CHARS],
                    created_at=now,
                )
            )
        return {
            "id": key_id,
            "key": key,
            "prefix": key[:KEY_DISPLAY_CHARS],
            "account_id": account_id,
            "created_at": isoformat(now),
        }

    async def list_keys(self, account_id: str) -> list[dict[str, Any]]:
        async with self._reader.connect() as conn:
            await self._require_account(conn, account_id)
            rows = (
                await conn.execute(
                    select(api_keys)
                    .where(api_keys.c.account_id == account_id)
                    .order_by(api_keys.c.created_at, api_keys.c.id)
                )
            ).all()
        return [_key_view(r) for r in rows]

    async def revoke_key(self, key_id: str) -> dict[str, Any]:
        """Revoke a key at once; revoking twice keeps the first time."""
        async with self.write() as conn:
            await conn.execute(
                update(api_keys)
                .where(api_keys.c.id == key_id, api_keys.c.revoked_at.is_(None))
                .values(revoked_at=utcnow())
            )
            row = (await conn.execute(select(api_keys).where(api_keys.c.id == key_id))).first()
        if row is None:
            raise NotFoundError(f"no key {key_id}")
        return _key_view(row)

    @staticmethod
    async def _require_account(conn: AsyncConnection, account_id: str) -> None:
        found = (await conn.execute(select(accounts.c.id).where(accounts.c.id == account_id))).first()
        if found is None:
            raise NotFoundError(f"no account {account_id}")

    # --- usage ----------------------------------------------------------------------------------------------

    async def usage(
        self,
        account_id: str,
        since: datetime | None = None,
        until: datetime | None = None,
        *,
        providers: Sequence[str] = (),
    ) -> dict[str, Any]:
        """The usage document of SPEC §5: sessions that started in ``[since, until)``, newest first.

        ``totals`` has an entry for each of ``providers`` (the registered names, even without sessions) and for any
        other provider that has sessions in the window.
        """
        conditions = [sessions.c.account_id == account_id]
        if since is not None:
            conditions.append(sessions.c.started_at >= since)
        if until is not None:
            conditions.append(sessions.c.started_at < until)
        async with self._reader.connect() as conn:
            account = (await conn.execute(select(accounts.c.balance_nanos).where(accounts.c.id == account_id))).first()
            if account is None:
                raise NotFoundError(f"no account {account_id}")
            rows = (
                await conn.execute(
                    select(
                        sessions.c.id,
                        sessions.c.kind,
                        sessions.c.provider,
                        sessions.c.started_at,
                        sessions.c.ended_at,
                        sessions.c.audio_seconds,
                        sessions.c.cycles,
                        sessions.c.cost_nanos,
                        sessions.c.close_code,
                        sessions.c.closed_by,
                    )
                    .where(and_(*conditions))
                    .order_by(sessions.c.started_at.desc(), sessions.c.id.desc())
                )
            ).all()
        totals: dict[str, dict[str, Any]] = {
            p: {"sessions": 0, "audio_seconds": 0.0, "cycles": 0, "cost_nanos": 0} for p in providers
        }
        for r in rows:
            t = totals.setdefault(r.provider, {"sessions": 0, "audio_seconds": 0.0, "cycles": 0, "cost_nanos": 0})
            t["sessions"] += 1
            t["audio_seconds"] += r.audio_seconds
            t["cycles"] += r.cycles
            t["cost_nanos"] += r.cost_nanos
        return {
            "account_id": account_id,
            "balance_usd": format_usd(account.balance_nanos),
            "totals": {
                provider: {
                    "sessions": t["sessions"],
                    "audio_seconds": _seconds(t["audio_seconds"]),
                    "billed_seconds": t["cycles"] * CYCLE_SECONDS,
                    "cost_usd": format_usd(t["cost_nanos"]),
                }
                for provider, t in totals.items()
            },
            "sessions": [
                {
                    "id": r.id,
                    "kind": r.kind,
                    "provider": r.provider,
                    "started_at": isoformat(r.started_at),
                    "ended_at": isoformat(r.ended_at),
                    "audio_seconds": _seconds(r.audio_seconds),
                    "billed_seconds": r.cycles * CYCLE_SECONDS,
                    "cost_usd": format_usd(r.cost_nanos),
                    "close_code": r.close_code,
                    "closed_by": r.closed_by,
                }
                for r in rows
            ],
        }


class _AuthRow:
    __slots__ = (
        "account_id",
        "balance_nanos",
        "key_hash",
        "key_id",
        "last_used_at",
        "max_streams",
        "revoked_at",
        "streaming_enabled",
    )

    def __init__(self, row: tuple[Any, ...]) -> None:
        (
            self.key_id,
            self.key_hash,
            self.revoked_at,
            self.last_used_at,
            self.account_id,
            self.streaming_enabled,
            self.max_streams,
            self.balance_nanos,
        ) = row


def _auth_sqlite(dbapi: sqlite3.Connection, digest: str) -> _AuthRow | None:
    """``_AUTH_QUERY`` on SQLite (autocommit: one statement reads one consistent snapshot)."""
    row = dbapi.execute(
        "SELECT api_keys.id, api_keys.key_hash, api_keys.revoked_at, api_keys.last_used_at, accounts.id,"
        " accounts.streaming_enabled, accounts.max_streams, accounts.balance_nanos"
        " FROM api_keys JOIN accounts ON accounts.id = api_keys.account_id WHERE api_keys.key_hash = ?",
        (digest,),
    ).fetchone()
    return None if row is None else _AuthRow(row)


def _sqlite_tx(dbapi: sqlite3.Connection, body: Any, *args: Any) -> Any:
    """Run ``body(dbapi, *args)`` in a BEGIN IMMEDIATE transaction (the connection is in autocommit mode, see db.py);
    committed unless it raises or returns ``(False, result)`` (rolled back)."""
    dbapi.execute("BEGIN IMMEDIATE")
    try:
        commit, result = body(dbapi, *args)
        dbapi.execute("COMMIT" if commit else "ROLLBACK")
    except BaseException:
        if dbapi.in_transaction:
            dbapi.execute("ROLLBACK")
        raise
    return result


def _open_sqlite(dbapi: sqlite3.Connection, *args: Any) -> str | None:
    """``Store.open_session`` on SQLite: "ok", "streams", "balance", or None (no account)."""
    return _sqlite_tx(dbapi, _open_body, *args)


def _open_body(
    dbapi: sqlite3.Connection,
    session_id: str,
    account_id: str,
    kind: str,
    provider: str,
    gateway_id: str,
    min_balance_nanos: int,
    now: Any,
    expires: Any,
) -> tuple[bool, str | None]:
    # BEGIN IMMEDIATE serializes writers, so the account and its live count can come in one statement.
    row = dbapi.execute(
        "SELECT max_streams, balance_nanos, (SELECT count(*) FROM sessions WHERE account_id = ? AND ended_at IS NULL"
        " AND lease_expires_at > ?) FROM accounts WHERE id = ?",
        (account_id, now, account_id),
    ).fetchone()
    if row is None:
        return False, None
    max_streams, balance, live = row
    if live >= max_streams:
        return False, "streams"
    if balance is not None and balance < min_balance_nanos:
        return False, "balance"
    dbapi.execute(
        "INSERT INTO sessions (id, account_id, kind, provider, gateway_id, started_at, lease_expires_at, audio_seconds,"
        " cycles, cost_nanos) VALUES (?, ?, ?, ?, ?, ?, ?, 0.0, 0, 0)",
        (session_id, account_id, kind, provider, gateway_id, now, expires),
    )
    return True, "ok"


_END_SQL = (
    "UPDATE sessions SET"
    " audio_seconds = CASE WHEN (ended_at IS NULL OR closed_by = 'gateway_crash') THEN ?1 ELSE audio_seconds END,"
    " cycles = CASE WHEN cycles < ?2 THEN ?2 ELSE cycles END,"
    " cost_nanos = CASE WHEN cost_nanos < ?3 THEN ?3 ELSE cost_nanos END,"
    " ended_at = CASE WHEN (ended_at IS NULL OR closed_by = 'gateway_crash') THEN ?4 ELSE ended_at END,"
    " close_code = CASE WHEN (ended_at IS NULL OR closed_by = 'gateway_crash') THEN ?5 ELSE close_code END,"
    " close_reason = CASE WHEN (ended_at IS NULL OR closed_by = 'gateway_crash') THEN ?6 ELSE close_reason END,"
    " closed_by = CASE WHEN (ended_at IS NULL OR closed_by = 'gateway_crash') THEN ?7 ELSE closed_by END"
    " WHERE id = ?8"
)


def _end_sqlite(dbapi: sqlite3.Connection, session_id: str, *values: Any) -> bool:
    """``Store.end_session`` on SQLite (the same statement as the portable path): True when the session exists."""
    return _sqlite_tx(dbapi, _end_body, session_id, *values)


def _end_body(dbapi: sqlite3.Connection, session_id: str, *values: Any) -> tuple[bool, bool]:
    return True, dbapi.execute(_END_SQL, (*values, session_id)).rowcount == 1


_FLUSH_SQL = (
    "UPDATE sessions SET"
    " audio_seconds = CASE WHEN audio_seconds < ?1 THEN ?1 ELSE audio_seconds END,"
    " cycles = CASE WHEN cycles < ?2 THEN ?2 ELSE cycles END,"
    " cost_nanos = CASE WHEN cost_nanos < ?3 THEN ?3 ELSE cost_nanos END"
    " WHERE id = ?4"
)


def _flush_sqlite(dbapi: sqlite3.Connection, rows: list[tuple[float, int, int, str]]) -> None:
    """``Store.flush_progress`` on SQLite (the same statement as the portable path), one transaction."""
    _sqlite_tx(dbapi, _flush_body, rows)


def _flush_body(dbapi: sqlite3.Connection, rows: list[tuple[float, int, int, str]]) -> tuple[bool, None]:
    dbapi.executemany(_FLUSH_SQL, rows)
    return True, None


def _charge_sqlite(
    dbapi: sqlite3.Connection, session_id: str, account_id: str, cycles: int, amount: int
) -> bool | str | None:
    """``Store.charge_cycles`` on SQLite, run on the driver's thread (autocommit mode: explicit BEGIN IMMEDIATE).

    The same statements as the portable path; returns the result, None for no account, "session" for no session.
    """
    dbapi.execute("BEGIN IMMEDIATE")
    try:
        debited = dbapi.execute(
            "UPDATE accounts SET balance_nanos = balance_nanos - ? WHERE id = ? AND balance_nanos >= ?",
            (amount, account_id, amount),
        ).rowcount
        if debited == 1:
            recorded = dbapi.execute(
                "UPDATE sessions SET cycles = cycles + ?, cost_nanos = cost_nanos + ? WHERE id = ? AND account_id = ?",
                (cycles, amount, session_id, account_id),
            ).rowcount
            if recorded != 1:
                dbapi.execute("ROLLBACK")
                return "session"
            result: bool | None = True
        else:
            row = dbapi.execute("SELECT balance_nanos FROM accounts WHERE id = ?", (account_id,)).fetchone()
            result = None if row is None else row[0] is None
        dbapi.execute("COMMIT")
    except BaseException:
        if dbapi.in_transaction:
            dbapi.execute("ROLLBACK")
        raise
    return result


def _chunks(ids: Sequence[str]) -> list[Sequence[str]]:
    return [ids[i : i + _ID_CHUNK] for i in range(0, len(ids), _ID_CHUNK)]


def _seconds(value: float) -> float:
    """Audio seconds for documents: float sums carry noise below the millisecond, which nobody bills."""
    return round(float(value), 3)


def _new_webhook_secret() -> str:
    return "whsec_" + secrets.token_urlsafe(32)


def _check_name(name: str) -> None:
    if not name or not name.strip():
        raise ValueError("the account name must not be empty")


def _check_max_streams(max_streams: int) -> None:
    if max_streams < 0:
        raise ValueError("max streams must be zero or more")


def _check_amount(nanos: int, what: str) -> None:
    if nanos < 0:
        raise ValueError(f"the {what} must not be negative")
    if nanos > MAX_BALANCE_NANOS:
        raise ValueError(f"the {what} is larger than the largest supported amount")


def _account_view(row: Row[Any]) -> dict[str, Any]:
    return {
        "id": row.id,
        "name": row.name,
        "streaming_enabled": bool(row.streaming_enabled),
        "max_streams": row.max_streams,
        "balance_usd": format_usd(row.balance_nanos),
        "created_at": isoformat(row.created_at),
        "updated_at": isoformat(row.updated_at),
    }


def _key_view(row: Row[Any]) -> dict[str, Any]:
    return {
        "id": row.id,
        "prefix": row.prefix,
        "created_at": isoformat(row.created_at),
        "last_used_at": isoformat(row.last_used_at),
        "revoked_at": isoformat(row.revoked_at),
    }
