"""The admin API: admin tokens, idempotent credits, the operator's external id of an account, an operator's close
request.

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-29
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "admin_tokens",
        sa.Column("id", sa.String(36), nullable=False),
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("token_hash", sa.String(64), nullable=False),
        sa.Column("prefix", sa.String(16), nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("last_used_at", TS, nullable=True),
        sa.Column("revoked_at", TS, nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_admin_tokens"),
        sa.UniqueConstraint("token_hash", name="uq_admin_tokens_token_hash"),
    )
    op.create_table(
        "credits",
        sa.Column("id", sa.String(36), nullable=False),
        sa.Column("account_id", sa.String(36), nullable=False),
        sa.Column("idempotency_key", sa.String(255), nullable=False),
        sa.Column("amount_nanos", sa.BigInteger(), nullable=False),
        sa.Column("balance_nanos", sa.BigInteger(), nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_credits"),
        sa.ForeignKeyConstraint(["account_id"], ["accounts.id"], name="fk_credits_account_id_accounts"),
        sa.UniqueConstraint("account_id", "idempotency_key", name="uq_credits_account_id_idempotency_key"),
    )
    # Plain ALTER TABLE ADD COLUMN and CREATE INDEX on both backends: nothing here may make SQLite rebuild a table
    # (rebuilding ``accounts`` fails once other rows reference it, with foreign keys on).
    op.add_column("accounts", sa.Column("external_id", sa.Text(), nullable=True))
    op.create_index("uq_accounts_external_id", "accounts", ["external_id"], unique=True)
    op.add_column("sessions", sa.Column("close_requested_at", TS, nullable=True))
    op.create_index("ix_sessions_close_requested_at", "sessions", ["close_requested_at"])
    op.create_index("ix_sessions_started_at", "sessions", ["started_at"])


def downgrade() -> None:
    op.drop_index("ix_sessions_started_at", "sessions")
    op.drop_index("ix_sessions_close_requested_at", "sessions")
    op.drop_index("uq_accounts_external_id", "accounts")
    # ALTER TABLE DROP COLUMN (SQLite 3.35+), not a batch rebuild, for the same reason as above.
    op.drop_column("sessions", "close_requested_at")
    op.drop_column("accounts", "external_id")
    op.drop_table("credits")
    op.drop_table("admin_tokens")
