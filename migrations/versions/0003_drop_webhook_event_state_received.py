"""webhook_event: drop the index (state, received_at); (state, fired_at, id) serves the sweep

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-01 20:00:00
"""

from __future__ import annotations

from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Every stored event and every applied one (its state changes) wrote an entry into each
    # index of the table. The sweep, this index's only reader, finds the pending events
    # through the leading `state` of ix_webhook_event_state_fired as well (docs/webhooks.md).
    with op.batch_alter_table("webhook_event", schema=None) as batch_op:
        batch_op.drop_index("ix_webhook_event_state_received")


def downgrade() -> None:
    with op.batch_alter_table("webhook_event", schema=None) as batch_op:
        batch_op.create_index(
            "ix_webhook_event_state_received", ["state", "received_at"], unique=False
        )
