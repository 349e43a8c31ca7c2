"""What became of a signup, for the website that sent it: `GET /v1/signups/{key}`.

The answer names a state and a reason code, never personal data, so a site can tell a
person "check your inbox to confirm" or "you unsubscribed earlier" (docs/website.md).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from worker.models import ContactStatus, JobKind, JobState, Submission, SyncJob

QUEUED = "queued"
SYNCED = "synced"
PENDING_CONFIRMATION = "pending_confirmation"
SUPPRESSED = "suppressed"
FAILED = "failed"
STATES = (QUEUED, SYNCED, PENDING_CONFIRMATION, SUPPRESSED, FAILED)

#: A finished job's outcome code -> (state, reason) for the website.
_OUTCOMES: dict[str, tuple[str, str | None]] = {
    "member_subscribed": (SYNCED, None),
    "member_ok": (SYNCED, None),
    "member_pending": (PENDING_CONFIRMATION, None),
    "reconfirm_sent": (PENDING_CONFIRMATION, None),
    # An opt-out newer than the signup's consent: before the request, or overtaking it.
    "optout_raced": (SUPPRESSED, "previously_unsubscribed"),
    "member_archived": (SUPPRESSED, "archived"),
    "member_unsubscribed": (SUPPRESSED, "previously_unsubscribed"),
    "compliance_state": (SUPPRESSED, "previously_unsubscribed"),
    "opted_out:unsubscribed": (SUPPRESSED, "previously_unsubscribed"),
    "member_cleaned": (SUPPRESSED, "bounced"),
    "opted_out:cleaned": (SUPPRESSED, "bounced"),
    "forgotten": (SUPPRESSED, "forgotten"),
    "opted_out:erased": (SUPPRESSED, "erased"),
    "suppressed_hash": (SUPPRESSED, "erased"),
    "contact_gone": (SUPPRESSED, "erased"),
    "fake_or_invalid": (SUPPRESSED, "invalid_address"),
    "throttled": (FAILED, "signup_throttled"),
}


@dataclass(frozen=True)
class SignupState:
    key: str
    state: str
    reason: str | None
    received_at: datetime

    def to_json(self) -> dict[str, str | None]:
        return {
            "key": self.key,
            "state": self.state,
            "reason": self.reason,
            "received_at": self.received_at.isoformat(),
        }


def signup_state(session: Session, key: str) -> SignupState | None:
    """The state of the signup stored under idempotency key `key`; None when none is (not
    stored yet, refused, or purged after its retention period)."""
    submission = session.scalars(
        select(Submission).where(Submission.idempotency_key == key)
    ).one_or_none()
    if submission is None:
        return None
    job = session.scalars(
        select(SyncJob)
        .where(SyncJob.submission_id == submission.id, SyncJob.kind == JobKind.UPSERT)
        .order_by(SyncJob.id.desc())
        .limit(1)
    ).one_or_none()
    state, reason = _state(submission, job)
    return SignupState(key, state, reason, submission.received_at)


def _state(submission: Submission, job: SyncJob | None) -> tuple[str, str | None]:
    if job is None:
        return (SUPPRESSED, "no_consent") if not submission.newsletter_consent else (QUEUED, None)
    if job.state in (JobState.PENDING, JobState.IN_FLIGHT):
        return QUEUED, None
    outcome = job.outcome or ""
    if outcome in _OUTCOMES:
        return _OUTCOMES[outcome]
    if job.state == JobState.DONE:
        contact = submission.contact
        if contact is not None and contact.status == ContactStatus.PENDING:
            return PENDING_CONFIRMATION, None
        return SYNCED, None
    if job.state == JobState.SUPPRESSED:
        return SUPPRESSED, outcome.split(":", 1)[0] or None
    # A reason code, never a text that could quote the person's data.
    return FAILED, outcome.removeprefix("gave_up:").split(":", 1)[0] or None
