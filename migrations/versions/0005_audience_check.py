"""audience_check: the last check of the forms against the Mailchimp audience (one row)

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-04 22:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import worker.models

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "audience_check",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("list_id", sa.String(length=64), nullable=True),
        sa.Column("attempted_at", worker.models.UTCDateTime(timezone=True), nullable=False),
        sa.Column("checked_at", worker.models.UTCDateTime(timezone=True), nullable=True),
        sa.Column("schema", sa.JSON(), nullable=True),
        sa.Column("problems", sa.JSON(), nullable=False),
        sa.Column("error", sa.String(length=64), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_audience_check")),
    )


def downgrade() -> None:
    op.drop_table("audience_check")
