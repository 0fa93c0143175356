"""The admin API: admin tokens, idempotent credits, the revision-2 account fields, an operator's close request.

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
    with op.batch_alter_table("accounts") as batch:
        batch.add_column(sa.Column("external_id", sa.Text(), nullable=True))
        batch.add_column(sa.Column("webhook_url", sa.Text(), nullable=True))
        batch.add_column(sa.Column("low_balance_nanos", sa.BigInteger(), nullable=True))
        batch.add_column(sa.Column("monthly_budget_nanos", sa.BigInteger(), nullable=True))
        batch.create_unique_constraint("uq_accounts_external_id", ["external_id"])
    with op.batch_alter_table("sessions") as batch:
        batch.add_column(sa.Column("close_requested_at", TS, nullable=True))
        batch.create_index("ix_sessions_close_requested_at", ["close_requested_at"])
        batch.create_index("ix_sessions_started_at", ["started_at"])


def downgrade() -> None:
    with op.batch_alter_table("sessions") as batch:
        batch.drop_index("ix_sessions_started_at")
        batch.drop_index("ix_sessions_close_requested_at")
        batch.drop_column("close_requested_at")
    with op.batch_alter_table("accounts") as batch:
        batch.drop_constraint("uq_accounts_external_id", type_="unique")
        batch.drop_column("monthly_budget_nanos")
        batch.drop_column("low_balance_nanos")
        batch.drop_column("webhook_url")
        batch.drop_column("external_id")
    op.drop_table("credits")
    op.drop_table("admin_tokens")
