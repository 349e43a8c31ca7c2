"""parked_signup: queued signups that could not be stored (intake's dead letters)

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-04 21:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import worker.models

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "parked_signup",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("parked_at", worker.models.UTCDateTime(timezone=True), nullable=False),
        sa.Column("channel", sa.String(length=16), nullable=False),
        sa.Column("form", sa.String(length=64), nullable=True),
        sa.Column("email_hash", sa.String(length=32), nullable=True),
        sa.Column("error", sa.String(length=64), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("payload", sa.JSON(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_parked_signup")),
    )
    with op.batch_alter_table("parked_signup", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_parked_signup_parked_at"), ["parked_at"], unique=False)
        batch_op.create_index(
            batch_op.f("ix_parked_signup_email_hash"), ["email_hash"], unique=False
        )


def downgrade() -> None:
    op.drop_table("parked_signup")
