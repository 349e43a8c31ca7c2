"""Migration 0006: contacts with a Unicode domain move to the key of their ASCII form."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import select

from worker.addresses import email_hash
from worker.db import dispose_engines, session_scope
from worker.migrate import upgrade
from worker.models import AuditEntry, Contact, ContactStatus, JobKind, Suppression, SyncJob

ASCII_KEY = email_hash("ann@xn--mnchen-3ya.de")
UNICODE_KEY = email_hash("ann@münchen.de")


def test_migration_0006_moves_a_unicode_keyed_contact_and_its_rows_to_the_ascii_key(
    settings_env: dict[str, str],
) -> None:
    url = settings_env["LISTSYNC_DATABASE_URL"]
    upgrade(url, "0005")
    now = datetime.now(UTC)
    with session_scope() as session:
        contact = Contact(
            email="Ann@münchen.de",
            email_hash=UNICODE_KEY,
            status=ContactStatus.SUBSCRIBED,
            status_changed_at=now,
            status_source="signup",
            merge_fields={},
            created_at=now,
            updated_at=now,
        )
        session.add(contact)
        session.flush()
        session.add(SyncJob(kind=JobKind.UPSERT, contact_id=contact.id, email_hash=UNICODE_KEY))
        session.add(AuditEntry(action="correct", subject=UNICODE_KEY, detail={}))
        session.add(Suppression(email_hash=UNICODE_KEY, reason="opted_out", created_at=now))

    upgrade(url)
    dispose_engines()

    with session_scope() as session:
        found = [(c.email, c.email_hash, c.status) for c in session.scalars(select(Contact))]
    assert found == [("Ann@xn--mnchen-3ya.de", ASCII_KEY, ContactStatus.SUBSCRIBED)]
    with session_scope() as session:
        assert session.scalars(select(SyncJob.email_hash)).all() == [ASCII_KEY]
        assert session.scalars(select(AuditEntry.subject)).all() == [ASCII_KEY]
        assert session.scalars(select(Suppression.email_hash)).all() == [ASCII_KEY]
