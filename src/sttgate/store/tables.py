"""The schema, as SQLAlchemy Core tables (the store issues Core statements: no ORM identity map on the hot path).

The migrations in ``migrations/versions`` create exactly these tables; a change here needs a new migration.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    Column,
    DateTime,
    Dialect,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    TypeDecorator,
    UniqueConstraint,
    false,
)


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC in Python on every backend.

    PostgreSQL stores ``timestamptz``. SQLite has no time zones: values are stored as naive UTC text in one fixed
    format, so comparisons between stored values and bound parameters stay correct as plain string comparisons.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to the store; use timezone-aware UTC")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        stored: datetime = value
        return stored.replace(tzinfo=UTC) if stored.tzinfo is None else stored.astimezone(UTC)


metadata = MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)

accounts = Table(
    "accounts",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("name", Text, nullable=False),
    Column("streaming_enabled", Boolean, nullable=False, default=True),
    Column("max_streams", Integer, nullable=False, default=5),
    # NULL = postpaid (accrues only); otherwise the prepaid balance, never below zero.
    Column("balance_nanos", BigInteger, nullable=True),
    Column("webhook_secret", String(128), nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
    Column("updated_at", UTCDateTime, nullable=False),
    # Revision-2 account fields (docs/contract.md#accounts), migrations 0007 and 0008: the operator's own id for the
    # customer (unique when set), where account events are posted (docs/contract.md#account-events), the balance
    # below which ``balance.low`` is posted, and the spending cap per calendar month (UTC, docs/billing.md#budgets),
    # in nano-dollars.
    Column("external_id", Text, nullable=True),
    Column("webhook_url", Text, nullable=True),
    Column("low_balance_nanos", BigInteger, nullable=True),
    Column("monthly_budget_nanos", BigInteger, nullable=True),
    # Numbers the account's balance events (``balance.low``, ``balance.exhausted``: their stable ids), and whether
    # ``balance.exhausted`` was recorded since the last cycle the balance paid (once per exhaustion).
    Column("balance_event_seq", Integer, nullable=False, server_default="0"),
    Column("balance_exhausted", Boolean, nullable=False, server_default=false()),
    CheckConstraint("balance_nanos IS NULL OR balance_nanos >= 0", name="ck_accounts_balance_not_negative"),
    CheckConstraint("max_streams >= 0", name="ck_accounts_max_streams_not_negative"),
    # A unique index rather than a constraint: SQLite can add one without rebuilding the table (a rebuild of a table
    # other rows reference fails with foreign keys on). NULLs do not collide.
    Index("uq_accounts_external_id", "external_id", unique=True),
)

api_keys = Table(
    "api_keys",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("account_id", String(36), ForeignKey("accounts.id"), nullable=False, index=True),
    Column("key_hash", String(64), nullable=False),
    Column("prefix", String(16), nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
    Column("last_used_at", UTCDateTime, nullable=True),
    Column("revoked_at", UTCDateTime, nullable=True),
    # Migration 0007 (docs/contract.md#keys): a label; an expiry (refused like a revoked key once past); a stream
    # limit of the key's own within the account's; the providers it may open, comma-separated (null: all).
    Column("name", Text, nullable=True),
    Column("expires_at", UTCDateTime, nullable=True),
    Column("max_streams", Integer, nullable=True),
    Column("providers", Text, nullable=True),
    UniqueConstraint("key_hash"),
)

# A session row with ended_at IS NULL and a lease in the future is a stream slot. ``opening`` is true from the slot
# until the session is accepted (the client's 101, or its pull task started); a row that ended while opening was a
# refused handshake, not a session (docs/contract.md#usage), and ``started_at`` is the slot's time until acceptance
# sets it to the provider's 101.
sessions = Table(
    "sessions",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("account_id", String(36), ForeignKey("accounts.id"), nullable=False),
    Column("kind", String(16), nullable=False),
    Column("provider", String(32), nullable=False),
    Column("gateway_id", String(128), nullable=False),
    Column("started_at", UTCDateTime, nullable=False),
    Column("ended_at", UTCDateTime, nullable=True),
    Column("lease_expires_at", UTCDateTime, nullable=False),
    Column("audio_seconds", Float, nullable=False, default=0.0),
    Column("cycles", Integer, nullable=False, default=0),
    Column("cost_nanos", BigInteger, nullable=False, default=0),
    Column("close_code", Integer, nullable=True),
    Column("close_reason", Text, nullable=True),
    Column("closed_by", String(16), nullable=True),
    # What the provider itself reported at the end (docs/billing.md#reconciliation); null where it reports nothing.
    Column("provider_audio_seconds", Float, nullable=True),
    Column("provider_session_seconds", Float, nullable=True),
    Column("opening", Boolean, nullable=False, server_default=false()),
    # The price fixed at the handshake (docs/billing.md#the-price-book); null for sessions before it was recorded.
    Column("model", Text, nullable=True),
    Column("rate_usd_per_hour", String(32), nullable=True),
    Column("basis", String(16), nullable=True),
    # The API key that opened the session; for a token, the key that minted it (docs/contract.md#usage). Migration
    # 0006; null for sessions before it. A pull task is attributed through its session (same id).
    Column("api_key_id", String(36), nullable=True),
    # An operator asked for the session to end (docs/admin-api.md#close-a-session); the gateway running it polls for
    # this and ends it with 1008 "closed by operator". Migration 0007.
    Column("close_requested_at", UTCDateTime, nullable=True, index=True),
    # Cycles debited from a prepaid balance ahead of opening them, and their amount (docs/billing.md#holds); refunded
    # at the end less what the session opened. Migration 0010.
    Column("held_cycles", Integer, nullable=False, server_default="0"),
    Column("held_nanos", BigInteger, nullable=False, server_default="0"),
    Index(None, "account_id", "ended_at"),
    Index(None, "account_id", "started_at"),
    Index(None, "ended_at", "lease_expires_at"),
    Index(None, "api_key_id", "ended_at"),
    # The admin API's session list across accounts, newest first (migration 0007).
    Index(None, "started_at"),
)

tasks = Table(
    "tasks",
    metadata,
    Column("id", String(36), ForeignKey("sessions.id"), primary_key=True),
    Column("account_id", String(36), ForeignKey("accounts.id"), nullable=False, index=True),
    Column("audio_url", Text, nullable=False),
    Column("callback_url", Text, nullable=False),
    Column("provider", String(32), nullable=False),
    Column("params", Text, nullable=False, default=""),
    Column("status", String(32), nullable=False),
    Column("last_error", Text, nullable=True),
    Column("stop_requested", Boolean, nullable=False, default=False),
    Column("created_at", UTCDateTime, nullable=False),
    Column("started_at", UTCDateTime, nullable=True),
    Column("ended_at", UTCDateTime, nullable=True),
)

webhook_attempts = Table(
    "webhook_attempts",
    metadata,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True),
    Column("task_id", String(36), ForeignKey("tasks.id"), nullable=False),
    Column("seq", Integer, nullable=False),
    Column("attempt", Integer, nullable=False),
    Column("status_code", Integer, nullable=True),
    Column("error", Text, nullable=True),
    Column("at", UTCDateTime, nullable=False),
    Index(None, "task_id", "seq"),
)

tokens = Table(
    "tokens",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("token_hash", String(64), nullable=False),
    Column("account_id", String(36), ForeignKey("accounts.id"), nullable=False),
    Column("provider", String(32), nullable=True),
    Column("expires_at", UTCDateTime, nullable=False),
    Column("used_at", UTCDateTime, nullable=True),
    Column("created_at", UTCDateTime, nullable=False),
    # Caps the length of the session the token opens (seconds; None: the gateway's limit only). Migration 0002.
    Column("max_session_seconds", Integer, nullable=True),
    # The key that minted the token; the session it opens is attributed to it. Migration 0006.
    Column("api_key_id", String(36), nullable=True),
    UniqueConstraint("token_hash"),
)

# The outbox of account events (docs/contract.md#account-events): each row is written by the transaction that observed
# the occurrence, under its stable id (the primary key, so a second writer of the same occurrence writes nothing), and
# posted by whichever gateway claims it (``claimed_until``), retried with backoff until delivered. Migration 0007.
account_events = Table(
    "account_events",
    metadata,
    Column("id", String(200), primary_key=True),
    Column("account_id", String(36), ForeignKey("accounts.id"), nullable=False),
    Column("type", String(32), nullable=False),
    Column("payload", Text, nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
    Column("next_attempt_at", UTCDateTime, nullable=False),
    Column("claimed_until", UTCDateTime, nullable=True),
    Column("attempts", Integer, nullable=False, server_default="0"),
    Column("delivered_at", UTCDateTime, nullable=True),
    Column("last_error", Text, nullable=True),
    Index(None, "delivered_at", "next_attempt_at"),
)

# Operator credentials for the admin API (docs/admin-api.md#authentication), stored only as their SHA-256.
admin_tokens = Table(
    "admin_tokens",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("name", Text, nullable=False),
    Column("token_hash", String(64), nullable=False),
    Column("prefix", String(16), nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
    Column("last_used_at", UTCDateTime, nullable=True),
    Column("revoked_at", UTCDateTime, nullable=True),
    UniqueConstraint("token_hash"),
)

# Every credit posted through the admin API, once per (account, idempotency key): the unique constraint is what
# makes a repeated or concurrent post credit nothing more (docs/admin-api.md#credits). ``balance_nanos`` is the
# balance right after this credit, so a repeat answers exactly what the first post answered.
credits = Table(
    "credits",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("account_id", String(36), ForeignKey("accounts.id"), nullable=False),
    Column("idempotency_key", String(255), nullable=False),
    Column("amount_nanos", BigInteger, nullable=False),
    Column("balance_nanos", BigInteger, nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
    UniqueConstraint("account_id", "idempotency_key"),
)

# The usage outbox (docs/export.md): one row per charged cycle, inserted in the transaction that charges it (a prepaid
# debit, a postpaid ledger write, a session's end). Kept after delivery: it is what ``sttgate export replay`` re-sends.
# ``seq`` orders the rows (within a session, cycle order); ``id`` is "<session_id>:<cycle>". No index on
# ``charged_at``: only a replay reads by it, and each index is one more b-tree written with every cycle. Migration 0007.
usage_outbox = Table(
    "usage_outbox",
    metadata,
    Column("seq", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True),
    Column("id", String(64), nullable=False),
    Column("session_id", String(36), nullable=False),
    Column("cycle", Integer, nullable=False),
    Column("account_id", String(36), nullable=False),
    Column("api_key_id", String(36), nullable=True),
    Column("provider", String(32), nullable=False),
    Column("model", Text, nullable=True),
    Column("basis", String(16), nullable=True),
    Column("seconds", Integer, nullable=False),
    Column("price_nanos", BigInteger, nullable=False),
    Column("charged_at", UTCDateTime, nullable=False),
    UniqueConstraint("id"),
)

# What each configured sink has still to send: one row per (sink, outbox row), inserted with the outbox row (for the
# sinks configured then) or by a replay, deleted once the sink accepted it. Written with every charged cycle, so
# SQLite keeps it as its primary key alone (WITHOUT ROWID: one b-tree, not two). Migration 0007.
export_pending = Table(
    "export_pending",
    metadata,
    Column("sink", String(64), primary_key=True),
    Column("seq", BigInteger().with_variant(Integer, "sqlite"), primary_key=True),
    sqlite_with_rowid=False,
)

# One row per sink: the lease that lets exactly one exporter (of all gateways on the database) send its events, and
# the delivery status ``sttgate export status`` shows. Migration 0007.
export_sinks = Table(
    "export_sinks",
    metadata,
    Column("name", String(64), primary_key=True),
    Column("lease_owner", String(128), nullable=True),
    Column("lease_expires_at", UTCDateTime, nullable=True),
    Column("last_success_at", UTCDateTime, nullable=True),
    Column("last_error", Text, nullable=True),
    Column("last_error_at", UTCDateTime, nullable=True),
    Column("sent_total", BigInteger, nullable=False, default=0),
)
