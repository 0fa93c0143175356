"""Sessions carry ``opening``: the slot is held for a handshake that has not been accepted yet.

A row that ends while still opening (a refused handshake, a client gone before its 101, a gateway that died in
between) was never a session: usage leaves it out (docs/contract.md#usage). Rows written by a gateway that predates
this column get the default (false, a session), as before. Existing rows that were handshakes refused after the slot
was taken (ended by the gateway with no close code and nothing charged) are marked.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-29
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("sessions") as batch:
        batch.add_column(sa.Column("opening", sa.Boolean(), nullable=False, server_default=sa.false()))
    sessions = sa.table(
        "sessions",
        sa.column("opening", sa.Boolean()),
        sa.column("ended_at", sa.DateTime(timezone=True)),
        sa.column("closed_by", sa.String()),
        sa.column("close_code", sa.Integer()),
        sa.column("cycles", sa.Integer()),
    )
    op.execute(
        sessions.update()
        .where(
            sessions.c.ended_at.is_not(None),
            sessions.c.closed_by == "gateway",
            sessions.c.close_code.is_(None),
            sessions.c.cycles == 0,
        )
        .values(opening=True)
    )


def downgrade() -> None:
    with op.batch_alter_table("sessions") as batch:
        batch.drop_column("opening")
