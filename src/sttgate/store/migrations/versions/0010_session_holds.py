"""Prepaid holds: the cycles a session has paid ahead of opening them (docs/billing.md#holds).

``held_cycles`` and ``held_nanos`` are what the balance was debited for cycles the session has not opened yet. They
are refunded to the balance when the session ends (or is reaped after a crash), less the cycles it did open.

Revision ID: 0010
Revises: 0009
Create Date: 2026-11-29
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("sessions", sa.Column("held_cycles", sa.Integer(), nullable=False, server_default="0"))
    op.add_column("sessions", sa.Column("held_nanos", sa.BigInteger(), nullable=False, server_default="0"))


def downgrade() -> None:
    with op.batch_alter_table("sessions") as batch:
        batch.drop_column("held_nanos")
        batch.drop_column("held_cycles")
