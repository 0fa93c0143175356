"""Sessions record their price: model, rate (USD per hour, a decimal string) and basis, fixed at the handshake.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-29
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # batch mode: SQLite cannot ALTER a table in place beyond adding columns; nullable columns need no default, and
    # sessions written before this revision have no recorded price (null in the usage document).
    with op.batch_alter_table("sessions") as batch:
        batch.add_column(sa.Column("model", sa.Text(), nullable=True))
        batch.add_column(sa.Column("rate_usd_per_hour", sa.String(32), nullable=True))
        batch.add_column(sa.Column("basis", sa.String(16), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("sessions") as batch:
        batch.drop_column("basis")
        batch.drop_column("rate_usd_per_hour")
        batch.drop_column("model")
