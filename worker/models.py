"""The tables of listsync (docs/architecture.md, "The data").

Contacts mirror the audience; submissions and their IPs are what the retention schedule
deletes; sync jobs are the outbox towards Mailchimp and webhook events the inbox from it.
Timestamps are timezone-aware UTC everywhere.
"""

from __future__ import annotations

import enum
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, ClassVar

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    TypeDecorator,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship


class UTCDateTime(TypeDecorator[datetime]):
    """Stores aware datetimes; SQLite gives naive ones back, which we mark as UTC."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is not None and value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        if value is not None and dialect.name == "sqlite":
            return value.astimezone(UTC).replace(tzinfo=None)
        return value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is not None and value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value


def utcnow() -> datetime:
    return datetime.now(UTC)


# BIGINT on PostgreSQL, INTEGER (the rowid alias) on SQLite.
BigID = BigInteger().with_variant(Integer(), "sqlite")
intpk = Annotated[int, mapped_column(BigID, primary_key=True, autoincrement=True)]
created = Annotated[datetime, mapped_column(UTCDateTime, default=utcnow, nullable=False)]
email_hash = Annotated[str, mapped_column(String(32), nullable=False)]

NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)
    type_annotation_map: ClassVar[dict[Any, Any]] = {datetime: UTCDateTime, dict[str, Any]: JSON}


class ContactStatus(enum.StrEnum):
    NEW = "new"
    SUBSCRIBED = "subscribed"
    PENDING = "pending"
    UNSUBSCRIBED = "unsubscribed"
    CLEANED = "cleaned"
    ARCHIVED = "archived"
    ERASED = "erased"


#: A contact in one of these states is never sent to Mailchimp again (invariant 2).
OPTED_OUT = frozenset({ContactStatus.UNSUBSCRIBED, ContactStatus.CLEANED, ContactStatus.ERASED})


class SuppressionReason(enum.StrEnum):
    ERASED = "erased"  # an erasure request: final, never sent to Mailchimp again
    OPTED_OUT = "opted_out"  # the purge reduced an opted-out contact to its hash


class ChangeSource(enum.StrEnum):
    SIGNUP = "signup"
    SYNC = "sync"
    WEBHOOK = "webhook"
    RECONCILE = "reconcile"
    ADMIN = "admin"


class JobState(enum.StrEnum):
    PENDING = "pending"
    IN_FLIGHT = "in_flight"
    DONE = "done"
    SUPPRESSED = "suppressed"
    FAILED = "failed"


FINISHED_JOB_STATES = frozenset({JobState.DONE, JobState.SUPPRESSED, JobState.FAILED})


class JobKind(enum.StrEnum):
    UPSERT = "upsert"  # add a member (status_if_new) or update merge fields
    UPDATE = "update"  # PATCH merge fields after a correction; never touches status
    ERASE = "erase"  # delete-permanent after an erasure request
    #: Set a member back to unsubscribed: an opt-out that a re-confirmation request
    #: (status pending) overtook at Mailchimp (worker/optouts/apply.py)
    OPTOUT = "optout"


#: A re-confirmation request (status pending) that Mailchimp took: the outcome of its jobs,
#: which an opt-out arriving afterwards may find overtook it (worker/optouts/apply.py).
RECONFIRM_SENT = "reconfirm_sent"
#: An opt-out raced a re-confirmation: seen just before it (not sent), or arriving after it
#: was sent (taken back with an OPTOUT job).
OPTOUT_RACED = "optout_raced"


class EventState(enum.StrEnum):
    PENDING = "pending"
    APPLIED = "applied"
    IGNORED = "ignored"  # unknown type, or older than the contact's last change
    FAILED = "failed"


class Contact(Base):
    __tablename__ = "contact"

    id: Mapped[intpk]
    email: Mapped[str] = mapped_column(String(320))
    email_hash: Mapped[email_hash] = mapped_column(unique=True)
    status: Mapped[str] = mapped_column(String(16), default=ContactStatus.NEW)
    status_changed_at: Mapped[datetime] = mapped_column(default=utcnow)
    status_source: Mapped[str] = mapped_column(String(16), default=ChangeSource.SIGNUP)
    status_reason: Mapped[str | None] = mapped_column(String(64))
    merge_fields: Mapped[dict[str, Any]] = mapped_column(default=dict)
    consent_at: Mapped[datetime | None]  # latest explicit newsletter consent
    created_at: Mapped[created]
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)

    submissions: Mapped[list[Submission]] = relationship(back_populates="contact")

    def __repr__(self) -> str:  # no address in reprs: they end up in logs and tracebacks
        return f"<Contact id={self.id} hash={self.email_hash[:8]}… status={self.status}>"


class Submission(Base):
    __tablename__ = "submission"
    __table_args__ = (Index("ix_submission_need_until", "need_until"),)

    id: Mapped[intpk]
    contact_id: Mapped[int] = mapped_column(
        ForeignKey("contact.id", ondelete="CASCADE"), index=True
    )
    form: Mapped[str] = mapped_column(String(64))
    fields: Mapped[dict[str, Any]] = mapped_column(default=dict)
    newsletter_consent: Mapped[bool] = mapped_column(Boolean)
    consent_text_version: Mapped[str | None] = mapped_column(String(64))
    submitted_at: Mapped[datetime]
    received_at: Mapped[created]
    # None while an "after synced" period has not started; then retain_after_sync_seconds
    # (fixed at intake, so a later schedule change does not apply retroactively) counts from
    # the moment the sync job finished.
    need_until: Mapped[datetime | None]
    retain_after_sync_seconds: Mapped[int | None] = mapped_column(Integer)
    policy_version: Mapped[str] = mapped_column(String(32))
    idempotency_key: Mapped[str] = mapped_column(String(128), unique=True)
    synced_at: Mapped[datetime | None]

    contact: Mapped[Contact] = relationship(back_populates="submissions")

    def sync_ended(self, now: datetime) -> None:
        """Its sync job ended (synced or suppressed): an "after synced" period starts now."""
        if self.need_until is None and self.retain_after_sync_seconds is not None:
            self.need_until = now + timedelta(seconds=self.retain_after_sync_seconds)

    def __repr__(self) -> str:
        return f"<Submission id={self.id} form={self.form}>"


class SubmissionIP(Base):
    """The IP received with a form: its own table, never sent to Mailchimp (P4)."""

    __tablename__ = "submission_ip"

    submission_id: Mapped[int] = mapped_column(
        BigID, ForeignKey("submission.id", ondelete="CASCADE"), primary_key=True
    )
    ip: Mapped[str] = mapped_column(String(45))
    received_at: Mapped[created] = mapped_column(index=True)

    def __repr__(self) -> str:
        return f"<SubmissionIP submission={self.submission_id}>"


class SyncJob(Base):
    """The outbox: written with the submission, claimed and flushed to Mailchimp."""

    __tablename__ = "sync_job"
    __table_args__ = (Index("ix_sync_job_state_next", "state", "next_attempt_at"),)

    id: Mapped[intpk]
    kind: Mapped[str] = mapped_column(String(16), default=JobKind.UPSERT)
    contact_id: Mapped[int | None] = mapped_column(
        ForeignKey("contact.id", ondelete="SET NULL"), index=True
    )
    email_hash: Mapped[email_hash]
    submission_id: Mapped[int | None] = mapped_column(
        ForeignKey("submission.id", ondelete="SET NULL"), index=True
    )
    state: Mapped[str] = mapped_column(String(16), default=JobState.PENDING)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime] = mapped_column(default=utcnow)
    claimed_at: Mapped[datetime | None]
    created_at: Mapped[created]
    finished_at: Mapped[datetime | None] = mapped_column(index=True)
    outcome: Mapped[str | None] = mapped_column(String(32))
    last_error: Mapped[str | None] = mapped_column(Text)  # never contains PII

    def __repr__(self) -> str:
        return f"<SyncJob id={self.id} kind={self.kind} state={self.state}>"


class WebhookEvent(Base):
    """The inbox: every Mailchimp event stored before the webhook answers."""

    __tablename__ = "webhook_event"
    __table_args__ = (
        # An apply run claims the oldest pending events: an index scan, not a sort of them all.
        # The sweep counts the pending events through it too (state comes first).
        Index("ix_webhook_event_state_fired", "state", "fired_at", "id"),
    )

    id: Mapped[intpk]
    dedupe_key: Mapped[str] = mapped_column(String(64), unique=True)
    type: Mapped[str] = mapped_column(String(32))
    source: Mapped[str] = mapped_column(String(16), default=ChangeSource.WEBHOOK)
    fired_at: Mapped[datetime]
    email_hash: Mapped[str | None] = mapped_column(String(32), index=True)
    payload: Mapped[dict[str, Any] | None]  # dropped by the purge; the dedupe key stays
    received_at: Mapped[created]
    state: Mapped[str] = mapped_column(String(16), default=EventState.PENDING)
    applied_at: Mapped[datetime | None]
    outcome: Mapped[str | None] = mapped_column(String(64))

    def __repr__(self) -> str:
        return f"<WebhookEvent id={self.id} type={self.type} state={self.state}>"


class Hold(Base):
    """Keeps a submission, or all records of a contact, from the purge."""

    __tablename__ = "hold"

    id: Mapped[intpk]
    submission_id: Mapped[int | None] = mapped_column(
        ForeignKey("submission.id", ondelete="CASCADE"), index=True
    )
    email_hash: Mapped[str | None] = mapped_column(String(32), index=True)
    reason: Mapped[str] = mapped_column(Text)
    created_at: Mapped[created]
    until: Mapped[datetime | None]
    released_at: Mapped[datetime | None]


class PurgeRun(Base):
    """The audit of one retention run; counts only, no PII."""

    __tablename__ = "purge_run"

    id: Mapped[intpk]
    started_at: Mapped[created] = mapped_column(index=True)
    finished_at: Mapped[datetime | None]
    cutoff: Mapped[datetime]
    dry_run: Mapped[bool] = mapped_column(Boolean)
    counts: Mapped[dict[str, Any]] = mapped_column(default=dict)
    held_skipped: Mapped[int] = mapped_column(Integer, default=0)
    duration_seconds: Mapped[float | None]
    error: Mapped[str | None] = mapped_column(Text)


class Suppression(Base):
    """Hashes of erased (or long opted-out) addresses: never re-added by a stale message."""

    __tablename__ = "suppression"

    email_hash: Mapped[str] = mapped_column(String(32), primary_key=True)
    reason: Mapped[str] = mapped_column(String(32))
    created_at: Mapped[created]


class RejectedSignup(Base):
    """A queued signup that failed validation: acked and recorded with its reason, no PII."""

    __tablename__ = "rejected_signup"

    id: Mapped[intpk]
    received_at: Mapped[created] = mapped_column(index=True)
    channel: Mapped[str] = mapped_column(String(16))  # queue | http
    form: Mapped[str | None] = mapped_column(String(64))
    reason: Mapped[str] = mapped_column(Text)


class ParkedSignup(Base):
    """A queued signup that could not be stored for a reason other than the database being
    away (intake's dead letters): kept with an error code for a person to look at and replay
    (`listsync failed list|retry`), purged on its own schedule (`keep.parked_signups`).

    `payload` is the message as it came, personal data included: exported and erased with the
    address (`email_hash`, when the message had one).
    """

    __tablename__ = "parked_signup"

    id: Mapped[intpk]
    parked_at: Mapped[created] = mapped_column(index=True)
    channel: Mapped[str] = mapped_column(String(16))
    form: Mapped[str | None] = mapped_column(String(64))
    email_hash: Mapped[str | None] = mapped_column(String(32), index=True)
    error: Mapped[str] = mapped_column(String(64))  # a code: never the exception's text
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    payload: Mapped[dict[str, Any]] = mapped_column(default=dict)

    def __repr__(self) -> str:
        return f"<ParkedSignup id={self.id} error={self.error}>"


class AudienceCheck(Base):
    """The last check of the forms against the audience (one row): the audience's shape as
    last read, each form's problems, and why the latest reading failed, if it did. While
    Mailchimp cannot be reached the last good result stands."""

    __tablename__ = "audience_check"
    SINGLE_ROW: ClassVar[int] = 1

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    #: The audience read: a check of another one (the setting changed) counts for nothing.
    list_id: Mapped[str | None] = mapped_column(String(64))
    attempted_at: Mapped[datetime]
    checked_at: Mapped[datetime | None]  # the last reading that succeeded
    schema: Mapped[dict[str, Any] | None]
    #: form name -> its problems ({key, code, message, severity}); no personal data.
    problems: Mapped[dict[str, Any]] = mapped_column(default=dict)
    error: Mapped[str | None] = mapped_column(String(64))


class AuditEntry(Base):
    """Who asked for what: holds, exports with IPs, erasures, corrections. No PII."""

    __tablename__ = "audit_entry"

    id: Mapped[intpk]
    at: Mapped[created] = mapped_column(index=True)
    action: Mapped[str] = mapped_column(String(32))
    subject: Mapped[str] = mapped_column(String(64))  # an id or an email hash
    detail: Mapped[dict[str, Any]] = mapped_column(default=dict)


class Watermark(Base):
    """Small named timestamps: the reconcile watermark, last successful runs."""

    __tablename__ = "watermark"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[datetime]
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


__all__ = [
    "OPTED_OUT",
    "AudienceCheck",
    "AuditEntry",
    "Base",
    "ChangeSource",
    "Contact",
    "ContactStatus",
    "EventState",
    "Hold",
    "JobKind",
    "JobState",
    "ParkedSignup",
    "PurgeRun",
    "RejectedSignup",
    "Submission",
    "SubmissionIP",
    "Suppression",
    "SuppressionReason",
    "SyncJob",
    "Watermark",
    "WebhookEvent",
    "utcnow",
]
