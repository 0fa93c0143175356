"""Sessions record the provider's own end-of-session figures beside the gateway's (reconciliation).

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-29
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("sessions") as batch:
        batch.add_column(sa.Column("provider_audio_seconds", sa.Float(), nullable=True))
        batch.add_column(sa.Column("provider_session_seconds", sa.Float(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("sessions") as batch:
        batch.drop_column("provider_session_seconds")
        batch.drop_column("provider_audio_seconds")
