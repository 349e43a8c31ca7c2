"""Addresses with an internationalized domain are keyed by their ASCII (IDNA) form

Contacts whose address has a Unicode domain get the ASCII form and its key, and every row
under their old key (sync jobs, webhook events, holds, parked signups, suppressions, audit
subjects) moves with them. A contact whose new key is already taken (one created from a
webhook under the ASCII spelling) keeps its old key: the other one is the person from now
on, and intake still finds suppressions under the old key (worker/addresses.py).

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-04 23:40:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from worker.addresses import InvalidAddress, email_hash, normalize_email

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

#: Tables whose email_hash moves with the contact.
KEYED = ("sync_job", "webhook_event", "hold", "parked_signup")


def upgrade() -> None:
    bind = op.get_bind()
    contacts = bind.execute(sa.text("SELECT id, email, email_hash FROM contact")).all()
    taken = {row.email_hash for row in contacts}
    for contact_id, email, old in contacts:
        if email.isascii():
            continue
        try:
            new_email = normalize_email(email)
        except InvalidAddress:
            continue
        new = email_hash(new_email)
        if new == old or new in taken:
            continue
        taken.add(new)
        moved = {"old": old, "new": new}
        bind.execute(
            sa.text("UPDATE contact SET email = :email, email_hash = :new WHERE id = :id"),
            {"email": new_email, "new": new, "id": contact_id},
        )
        for name in KEYED:
            table = sa.table(name, sa.column("email_hash"))
            bind.execute(table.update().where(table.c.email_hash == old).values(email_hash=new))
        bind.execute(sa.text("UPDATE audit_entry SET subject = :new WHERE subject = :old"), moved)
        bind.execute(
            sa.text(
                "UPDATE suppression SET email_hash = :new WHERE email_hash = :old AND NOT EXISTS "
                "(SELECT 1 FROM suppression s WHERE s.email_hash = :new)"
            ),
            moved,
        )


def downgrade() -> None:
    """Keys are not moved back: the Unicode form is not kept. Nothing to undo in the schema."""
