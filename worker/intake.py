"""Signup intake: validate a signup message, then store it in one transaction.

The same path serves the Celery message `listsync.signups.receive` and `POST /v1/signups`.
One transaction writes the contact (upsert on the email hash), the submission, its IP (own
table) and, with newsletter consent, the sync job (the outbox). Invalid input writes nothing
but a `rejected_signup` row whose reason names the field, never its value.
"""

from __future__ import annotations

import hashlib
import logging
import math
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Annotated, Any, Literal

from email_validator import EmailNotValidError, validate_email
from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    IPvAnyAddress,
    PlainValidator,
    StringConstraints,
    ValidationError,
)
from sqlalchemy import select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from worker import metrics
from worker.db import session_scope
from worker.forms import Form, get_forms
from worker.mailchimp import email_hash
from worker.models import (
    ChangeSource,
    Contact,
    ContactStatus,
    JobKind,
    RejectedSignup,
    Submission,
    SubmissionIP,
    Suppression,
    SyncJob,
    utcnow,
)
from worker.retention.schedule import get_schedule

log = logging.getLogger(__name__)

MESSAGE_VERSION = 1
RECEIVE_TASK = "listsync.signups.receive"
MAX_FIELDS = 50
MAX_FIELD_CHARS = 5000
#: Clocks drift; a signup "submitted" further ahead than this is refused as malformed.
MAX_CLOCK_SKEW = timedelta(hours=1)

FieldName = Annotated[str, StringConstraints(min_length=1, max_length=64)]


def _field_value(value: Any) -> str | bool | int | float | None:
    if isinstance(value, str) and len(value) > MAX_FIELD_CHARS:
        raise ValueError(f"text may have at most {MAX_FIELD_CHARS} characters")
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError("numbers must be finite")
    if value is None or isinstance(value, str | bool | int | float):
        return value
    raise ValueError("must be text, a number, true/false or null")


FieldValue = Annotated[Any, PlainValidator(_field_value)]


class Consent(BaseModel):
    model_config = ConfigDict(extra="forbid")

    newsletter: bool | None = None
    text_version: Annotated[str, StringConstraints(max_length=64)] | None = None


class SignupMessage(BaseModel):
    """Version 1 of the signup message (docs/intake.md shows it on the wire)."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    v: Literal[1] = 1
    email: Annotated[str, StringConstraints(min_length=3, max_length=320)]
    form: Annotated[str, StringConstraints(min_length=1, max_length=64)]
    submitted_at: AwareDatetime | None = None
    consent: Consent = Field(default_factory=Consent)
    fields: dict[FieldName, FieldValue] = Field(default_factory=dict, max_length=MAX_FIELDS)
    ip: IPvAnyAddress | None = None
    idempotency_key: (
        Annotated[str, StringConstraints(min_length=8, max_length=128, pattern=r"^[\w.:-]+$")]
        | None
    ) = None


@dataclass(frozen=True)
class Problem:
    field: str
    reason: str


class SignupRejected(ValueError):
    """Invalid signup. The message lists fields and reasons and never quotes the input."""

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = problems
        super().__init__("; ".join(f"{p.field}: {p.reason}" for p in problems))


@dataclass(frozen=True)
class Signup:
    """A validated, normalized signup, ready to store."""

    email: str
    email_hash: str
    form: Form
    submitted_at: datetime
    newsletter_consent: bool
    consent_text_version: str | None
    fields: dict[str, Any]
    dropped_fields: int
    ip: str | None
    idempotency_key: str

    def merge_fields(self, allowed: list[str]) -> dict[str, str]:
        return {
            tag: str(self.fields[name])
            for name, tag in self.form.merge_fields.items()
            if tag in allowed and self.fields.get(name) not in (None, "")
        }


@dataclass(frozen=True)
class IngestResult:
    submission_id: int
    created: bool
    sync_job_id: int | None = None


def normalize_email(email: str) -> str:
    """The normalized address (email-validator, no DNS); raises SignupRejected."""
    try:
        return validate_email(email, check_deliverability=False).normalized
    except EmailNotValidError as exc:
        raise SignupRejected([Problem("email", _without(str(exc), email))]) from None


def _without(text: str, email: str) -> str:
    """email-validator's messages may quote parts of the address: cut them out."""
    local, _, domain = email.rpartition("@")
    for part in sorted({email, local, domain}, key=len, reverse=True):
        if len(part) >= 3:
            text = text.replace(part, "…")
    return text


def validate(raw: Any, *, now: datetime | None = None) -> Signup:
    """Validate and normalize a signup message; raises SignupRejected naming each problem."""
    now = now or utcnow()
    try:
        message = SignupMessage.model_validate(raw)
    except ValidationError as exc:
        problems = [
            Problem(".".join(str(p) for p in err["loc"])[:80] or "message", err["msg"])
            for err in exc.errors(include_input=False, include_url=False)
        ]
        raise SignupRejected(problems) from None
    form = get_forms().get(message.form)
    if form is None:
        raise SignupRejected([Problem("form", "unknown form")])
    email = normalize_email(message.email)
    submitted_at = message.submitted_at or now
    if submitted_at > now + MAX_CLOCK_SKEW:
        raise SignupRejected([Problem("submitted_at", "is in the future")])
    kept = {k: v for k, v in message.fields.items() if k in form.fields}
    key_hash = email_hash(email)
    idempotency_key = message.idempotency_key or _derived_key(form.name, key_hash, submitted_at)
    return Signup(
        email=email,
        email_hash=key_hash,
        form=form,
        submitted_at=submitted_at,
        newsletter_consent=form.newsletter_consent(kept, message.consent.newsletter),
        consent_text_version=message.consent.text_version,
        fields=kept,
        dropped_fields=len(message.fields) - len(kept),
        ip=str(message.ip) if message.ip is not None else None,
        idempotency_key=idempotency_key,
    )


def _derived_key(form: str, key_hash: str, submitted_at: datetime) -> str:
    # Without a key from the website, the same person, form and instant is the same signup.
    digest = hashlib.sha256(f"{form}|{key_hash}|{submitted_at.isoformat()}".encode()).hexdigest()
    return "derived:" + digest[:48]


def _insert(session: Session) -> Any:
    return pg_insert if session.get_bind().dialect.name == "postgresql" else sqlite_insert


def ingest(session: Session, signup: Signup, *, now: datetime | None = None) -> IngestResult:
    """Store a validated signup (without committing). Idempotent on the idempotency key."""
    now = now or utcnow()
    existing = session.scalar(
        select(Submission.id).where(Submission.idempotency_key == signup.idempotency_key)
    )
    if existing is not None:
        return IngestResult(existing, created=False)
    suppression = session.get(Suppression, signup.email_hash)
    if suppression is not None and signup.submitted_at <= suppression.created_at:
        raise SignupRejected([Problem("email", "address was erased before this signup; dropped")])

    from config import get_settings

    merge = signup.merge_fields(get_settings().merge_fields)
    session.execute(
        _insert(session)(Contact)
        .values(
            email=signup.email,
            email_hash=signup.email_hash,
            status=ContactStatus.NEW,
            status_changed_at=now,
            status_source=ChangeSource.SIGNUP,
            merge_fields={},
            created_at=now,
            updated_at=now,
        )
        .on_conflict_do_nothing(index_elements=["email_hash"])
    )
    contact = session.scalars(select(Contact).where(Contact.email_hash == signup.email_hash)).one()
    if merge:
        contact.merge_fields = {**contact.merge_fields, **merge}
    if signup.newsletter_consent and (
        contact.consent_at is None or signup.submitted_at > contact.consent_at
    ):
        contact.consent_at = signup.submitted_at

    rule = get_schedule().rule_for(signup.form.name)
    will_sync = signup.newsletter_consent
    submission = Submission(
        contact_id=contact.id,
        form=signup.form.name,
        fields=signup.fields,
        newsletter_consent=signup.newsletter_consent,
        consent_text_version=signup.consent_text_version,
        submitted_at=signup.submitted_at,
        received_at=now,
        need_until=None if (rule.after_synced and will_sync) else now + rule.period,
        retain_after_sync_seconds=(
            int(rule.period.total_seconds()) if (rule.after_synced and will_sync) else None
        ),
        policy_version=get_schedule().policy_version,
        idempotency_key=signup.idempotency_key,
    )
    session.add(submission)
    session.flush()
    if signup.ip is not None:
        session.add(SubmissionIP(submission_id=submission.id, ip=signup.ip, received_at=now))
    job_id = None
    if will_sync:
        job = SyncJob(
            kind=JobKind.UPSERT,
            contact_id=contact.id,
            email_hash=signup.email_hash,
            submission_id=submission.id,
            next_attempt_at=now,
            created_at=now,
        )
        session.add(job)
        session.flush()
        job_id = job.id
    return IngestResult(submission.id, created=True, sync_job_id=job_id)


def receive(raw: Any, *, channel: str) -> IngestResult:
    """Validate and store one signup in its own transaction, then nudge the flusher.

    A rejected signup is recorded (reason only) and re-raised as SignupRejected.
    """
    try:
        signup = validate(raw)
    except SignupRejected as exc:
        record_rejection(raw, channel, exc)
        raise
    if signup.dropped_fields:
        metrics.incr("signup_fields_dropped_total", signup.dropped_fields, form=signup.form.name)
    for attempt in range(3):
        try:
            with session_scope() as session:
                result = ingest(session, signup)
            break
        except SignupRejected as exc:
            record_rejection(raw, channel, exc)
            raise
        except IntegrityError:
            # Two deliveries of the same signup raced; the next pass finds the winner's row.
            if attempt == 2:
                raise
    metrics.incr(
        "signups_received_total",
        channel=channel,
        result="stored" if result.created else "duplicate",
    )
    if result.sync_job_id is not None:
        from worker.sync import request_flush

        request_flush()
    return result


def record_rejection(raw: Any, channel: str, exc: SignupRejected) -> None:
    form = raw.get("form") if isinstance(raw, dict) else None
    known_form = form if isinstance(form, str) and form in get_forms() else None
    with session_scope() as session:
        session.add(RejectedSignup(channel=channel, form=known_form, reason=str(exc)[:1000]))
    metrics.incr("signups_received_total", channel=channel, result="rejected")
    log.info("signup rejected (%s): %s", channel, exc)


def build_message(
    email: str,
    form: str,
    *,
    fields: dict[str, Any] | None = None,
    newsletter: bool | None = None,
    consent_text_version: str | None = None,
    submitted_at: datetime | None = None,
    ip: str | None = None,
    idempotency_key: str | None = None,
) -> dict[str, Any]:
    message: dict[str, Any] = {
        "v": MESSAGE_VERSION,
        "email": email,
        "form": form,
        "submitted_at": (submitted_at or utcnow()).isoformat(),
        "consent": {"newsletter": newsletter, "text_version": consent_text_version},
        "fields": fields or {},
    }
    if ip is not None:
        message["ip"] = ip
    if idempotency_key is not None:
        message["idempotency_key"] = idempotency_key
    return message


def enqueue_signup(email: str, form: str, **options: Any) -> str:
    """Publish a signup to the `signups` queue; returns the Celery task id.

    The message is validated first, so a Python caller hears about bad input at once.
    What Flower and `inspect` show of it is masked: the address never appears there.
    """
    from worker.app import app

    message = build_message(email, form, **options)
    validate(message)
    result = app.send_task(
        RECEIVE_TASK,
        kwargs={"message": message},
        queue="signups",
        argsrepr="()",
        kwargsrepr=masked_repr(message),
    )
    return str(result.id)


def masked_repr(message: dict[str, Any]) -> str:
    """What Flower shows of a signup message: the form and key, never the address."""
    return repr(
        {"message": {"v": message.get("v"), "form": message.get("form"), "email": "<masked>"}}
    )
