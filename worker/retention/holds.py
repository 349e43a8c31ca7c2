"""Holds: keep a submission, or everything about one address, from the purge (P3, P10).

Every add and release is audited. Functions take a session and do not commit; bad input
raises InvalidRequest with a message free of PII, before anything is written.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from worker.addresses import InvalidAddress, email_hash, normalize_email
from worker.models import (
    AuditEntry,
    Contact,
    Hold,
    ParkedSignup,
    Submission,
    Suppression,
    SyncJob,
    WebhookEvent,
    utcnow,
)

MAX_REASON_CHARS = 500


class InvalidRequest(ValueError):
    """Bad input from an operator: unknown address or id, malformed value. Nothing changed."""


def hash_of(email: str) -> str:
    """The email hash of an address as typed by an operator (normalized like intake does)."""
    try:
        normalized = normalize_email(email.strip())
    except InvalidAddress:
        raise InvalidRequest("not a valid email address") from None
    return email_hash(normalized)


def is_known(session: Session, key: str) -> bool:
    """Whether anything at all is held under this email hash."""
    for stmt in (
        select(Contact.id).where(Contact.email_hash == key),
        select(ParkedSignup.id).where(ParkedSignup.email_hash == key),
        select(Suppression.email_hash).where(Suppression.email_hash == key),
        select(WebhookEvent.id).where(WebhookEvent.email_hash == key),
        select(SyncJob.id).where(SyncJob.email_hash == key),
    ):
        if session.scalar(stmt.limit(1)) is not None:
            return True
    return False


def check_reason(reason: str | None) -> str:
    reason = (reason or "").strip()
    if not reason:
        raise InvalidRequest("a reason is required (--reason TEXT)")
    if len(reason) > MAX_REASON_CHARS:
        raise InvalidRequest(f"the reason may have at most {MAX_REASON_CHARS} characters")
    # Reasons outlive the records they explain (an erasure's audit row stays): an address
    # written into one would survive its own erasure.
    if "@" in reason:
        raise InvalidRequest(
            "the reason must not hold an address (it contains @): "
            "give the request's reference number instead"
        )
    return reason


def add_hold(
    session: Session,
    *,
    reason: str,
    submission_id: int | None = None,
    email: str | None = None,
    until: datetime | None = None,
    now: datetime | None = None,
) -> Hold:
    """Place a hold on one submission or on every record of one address."""
    now = now or utcnow()
    reason = check_reason(reason)
    if (submission_id is None) == (email is None):
        raise InvalidRequest("give exactly one of --submission ID or --email EMAIL")
    if until is not None and until <= now:
        raise InvalidRequest("--until must be in the future")
    key: str | None = None
    if submission_id is not None:
        if session.get(Submission, submission_id) is None:
            raise InvalidRequest(f"no submission with id {submission_id}")
        subject = f"submission:{submission_id}"
    else:
        assert email is not None
        key = hash_of(email)
        if not is_known(session, key):
            raise InvalidRequest("no records are held for this address")
        subject = key
    hold = Hold(submission_id=submission_id, email_hash=key, reason=reason, until=until)
    session.add(hold)
    session.flush()
    session.add(
        AuditEntry(
            action="hold_add",
            subject=subject,
            detail={
                "hold_id": hold.id,
                "reason": reason,
                "until": until.isoformat() if until else None,
            },
        )
    )
    return hold


def list_holds(
    session: Session, *, include_released: bool = False, now: datetime | None = None
) -> list[Hold]:
    now = now or utcnow()
    stmt = select(Hold).order_by(Hold.id)
    if not include_released:
        stmt = stmt.where(Hold.released_at.is_(None), or_(Hold.until.is_(None), Hold.until > now))
    return list(session.scalars(stmt))


def release_hold(session: Session, hold_id: int, *, now: datetime | None = None) -> bool:
    """Release a hold; its records fall due at the next purge. False if already released."""
    now = now or utcnow()
    hold = session.get(Hold, hold_id)
    if hold is None:
        raise InvalidRequest(f"no hold with id {hold_id}")
    if hold.released_at is not None:
        return False
    hold.released_at = now
    session.add(
        AuditEntry(
            action="hold_release",
            subject=f"hold:{hold_id}",
            detail={"hold_id": hold_id},
        )
    )
    return True


def active_holds_for(session: Session, key: str, now: datetime | None = None) -> list[Hold]:
    """Active holds on this address or on any of its submissions."""
    now = now or utcnow()
    submission_ids = (
        select(Submission.id).join(Contact, Contact.id == Submission.contact_id)
    ).where(Contact.email_hash == key)
    stmt = select(Hold).where(
        Hold.released_at.is_(None),
        or_(Hold.until.is_(None), Hold.until > now),
        or_(Hold.email_hash == key, Hold.submission_id.in_(submission_ids)),
    )
    return list(session.scalars(stmt.order_by(Hold.id)))
