"""webhook_event: index (state, fired_at, id) for the apply run's claim

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-01 15:00:00
"""

from __future__ import annotations

from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # The claim takes the oldest pending events (ORDER BY fired_at, id LIMIT n): with this
    # index it reads them in order instead of sorting every pending event for each chunk.
    with op.batch_alter_table("webhook_event", schema=None) as batch_op:
        batch_op.create_index(
            "ix_webhook_event_state_fired", ["state", "fired_at", "id"], unique=False
        )


def downgrade() -> None:
    with op.batch_alter_table("webhook_event", schema=None) as batch_op:
        batch_op.drop_index("ix_webhook_event_state_fired")
