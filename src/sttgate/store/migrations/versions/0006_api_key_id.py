"""Attribution: sessions and tokens record the API key that opened (or minted) them.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-29
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Nullable: rows written before this revision have no recorded key (null in the usage document). Pull tasks share
    # their session's id, so they are attributed through the session.
    with op.batch_alter_table("sessions") as batch:
        batch.add_column(sa.Column("api_key_id", sa.String(36), nullable=True))
    with op.batch_alter_table("tokens") as batch:
        batch.add_column(sa.Column("api_key_id", sa.String(36), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("tokens") as batch:
        batch.drop_column("api_key_id")
    with op.batch_alter_table("sessions") as batch:
        batch.drop_column("api_key_id")
