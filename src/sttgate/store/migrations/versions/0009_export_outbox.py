"""Usage export: the outbox of charged cycles, each sink's pending events and its lease.

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-29
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

_SEQ = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "usage_outbox",
        sa.Column("seq", _SEQ, primary_key=True, autoincrement=True),
        sa.Column("id", sa.String(64), nullable=False),
        sa.Column("session_id", sa.String(36), nullable=False),
        sa.Column("cycle", sa.Integer(), nullable=False),
        sa.Column("account_id", sa.String(36), nullable=False),
        sa.Column("api_key_id", sa.String(36), nullable=True),
        sa.Column("provider", sa.String(32), nullable=False),
        sa.Column("model", sa.Text(), nullable=True),
        sa.Column("basis", sa.String(16), nullable=True),
        sa.Column("seconds", sa.Integer(), nullable=False),
        sa.Column("price_nanos", sa.BigInteger(), nullable=False),
        sa.Column("charged_at", TS, nullable=False),
        sa.PrimaryKeyConstraint("seq", name="pk_usage_outbox"),
        sa.UniqueConstraint("id", name="uq_usage_outbox_id"),
    )
    op.create_table(
        "export_pending",
        sa.Column("sink", sa.String(64), nullable=False),
        sa.Column("seq", _SEQ, nullable=False),
        sa.PrimaryKeyConstraint("sink", "seq", name="pk_export_pending"),
        sqlite_with_rowid=False,
    )
    op.create_table(
        "export_sinks",
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("lease_owner", sa.String(128), nullable=True),
        sa.Column("lease_expires_at", TS, nullable=True),
        sa.Column("last_success_at", TS, nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("last_error_at", TS, nullable=True),
        sa.Column("sent_total", sa.BigInteger(), nullable=False, server_default="0"),
        sa.PrimaryKeyConstraint("name", name="pk_export_sinks"),
    )


def downgrade() -> None:
    op.drop_table("export_sinks")
    op.drop_table("export_pending")
    op.drop_table("usage_outbox")
