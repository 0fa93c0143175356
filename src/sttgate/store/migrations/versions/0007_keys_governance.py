"""Per-key governance, budgets and account events (docs/contract.md#keys, docs/billing.md#budgets).

Keys get a name, an expiry, their own stream limit and a provider allow-list. Accounts get a webhook URL for account
events, a low-balance threshold and a monthly budget (nano-dollars, like the balance), the latch that posts
``balance.exhausted`` once per exhaustion and the sequence that numbers balance events. ``account_events``
is the outbox of account events, each row written by the transaction that observed the occurrence.

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-29
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

_ACCOUNT_COLUMNS = (
    ("webhook_url", sa.Text()),
    ("low_balance_nanos", sa.BigInteger()),
    ("monthly_budget_nanos", sa.BigInteger()),
)


def upgrade() -> None:
    # Plain ADD COLUMN on both databases (a SQLite batch would copy ``accounts``, which other tables reference).
    op.add_column("api_keys", sa.Column("name", sa.Text(), nullable=True))
    op.add_column("api_keys", sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True))
    op.add_column("api_keys", sa.Column("max_streams", sa.Integer(), nullable=True))
    op.add_column("api_keys", sa.Column("providers", sa.Text(), nullable=True))
    for name, type_ in _ACCOUNT_COLUMNS:
        op.add_column("accounts", sa.Column(name, type_, nullable=True))
    op.add_column("accounts", sa.Column("balance_event_seq", sa.Integer(), nullable=False, server_default="0"))
    op.add_column(
        "accounts",
        sa.Column("balance_exhausted", sa.Boolean(create_constraint=False), nullable=False, server_default=sa.false()),
    )
    op.create_index("ix_sessions_api_key_id_ended_at", "sessions", ["api_key_id", "ended_at"])
    op.create_table(
        "account_events",
        sa.Column("id", sa.String(200), nullable=False),
        sa.Column("account_id", sa.String(36), nullable=False),
        sa.Column("type", sa.String(32), nullable=False),
        sa.Column("payload", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("next_attempt_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("claimed_until", sa.DateTime(timezone=True), nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("delivered_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_account_events"),
        sa.ForeignKeyConstraint(["account_id"], ["accounts.id"], name="fk_account_events_account_id_accounts"),
    )
    op.create_index(
        "ix_account_events_delivered_at_next_attempt_at", "account_events", ["delivered_at", "next_attempt_at"]
    )


def downgrade() -> None:
    op.drop_index("ix_account_events_delivered_at_next_attempt_at", "account_events")
    op.drop_table("account_events")
    op.drop_index("ix_sessions_api_key_id_ended_at", "sessions")
    for name in ("balance_exhausted", "balance_event_seq", *(n for n, _ in reversed(_ACCOUNT_COLUMNS))):
        op.drop_column("accounts", name)
    for name in ("providers", "max_streams", "expires_at", "name"):
        op.drop_column("api_keys", name)
