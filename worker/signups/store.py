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
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
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
    SuppressionReason,
    SyncJob,
    utcnow,
)
from worker.retention.schedule import Schedule, get_schedule

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
    if isinstance(value, str) and ("\x00" in value or not _is_unicode(value)):
        # JSON may carry NULs and lone surrogates; neither is text PostgreSQL or Mailchimp takes.
        raise ValueError("text must be valid Unicode without NUL characters")
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError("numbers must be finite")
    if value is None or isinstance(value, str | bool | int | float):
        return value
    raise ValueError("must be text, a number, true/false or null")


def _is_unicode(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


FieldValue = Annotated[Any, PlainValidator(_field_value)]
#: Names shown in a rejection: anything else (an address used as a key) is not echoed.
_SHOWN_NAME = re.compile(r"[A-Za-z0-9_.:\[\]-]{1,64}")


#: A consent text's version label: short, and no NUL (PostgreSQL text cannot hold one).
VersionLabel = Annotated[str, StringConstraints(max_length=64, pattern=r"^[^\x00]*$")]


class Consent(BaseModel):
    model_config = ConfigDict(extra="forbid")

    newsletter: bool | None = None
    text_version: VersionLabel | None = None


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
            Problem(_where(err["loc"]), err["msg"])
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
    try:
        submitted_at.astimezone(UTC)  # what the database stores; year 1 at +14:00 has no UTC
    except OverflowError:
        raise SignupRejected([Problem("submitted_at", "is out of range")]) from None
    if message.ip is not None and getattr(message.ip, "scope_id", None):
        raise SignupRejected([Problem("ip", "a scoped IPv6 address (with %zone) is not accepted")])
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


def _where(loc: tuple[int | str, ...]) -> str:
    """The field a validation error is about; names that are not plain are not echoed."""
    return ".".join(str(p) if _SHOWN_NAME.fullmatch(str(p)) else "…" for p in loc) or "message"


def _derived_key(form: str, key_hash: str, submitted_at: datetime) -> str:
    # Without a key from the website, the same person, form and instant is the same signup.
    digest = hashlib.sha256(f"{form}|{key_hash}|{submitted_at.isoformat()}".encode()).hexdigest()
    return "derived:" + digest[:48]


def _insert(session: Session) -> Any:
    return pg_insert if session.get_bind().dialect.name == "postgresql" else sqlite_insert


def ingest(session: Session, signup: Signup, *, now: datetime | None = None) -> IngestResult:
    """Store one validated signup (without committing); raises SignupRejected."""
    result = ingest_many(session, [signup], now=now)[0]
    if isinstance(result, SignupRejected):
        raise result
    return result


def ingest_many(
    session: Session, signups: Sequence[Signup], *, now: datetime | None = None
) -> list[IngestResult | SignupRejected]:
    """Store validated signups (without committing): a handful of statements for any number.

    Idempotent on the idempotency key, also within the batch. Returns one result per signup,
    in order: what was stored (or found), or why it was refused.
    """
    from config import get_settings

    now = now or utcnow()
    schedule = get_schedule()
    allowed_tags = get_settings().merge_fields
    keys = {s.idempotency_key for s in signups}
    hashes = {s.email_hash for s in signups}
    known: dict[str, int] = {
        key: submission_id
        for key, submission_id in session.execute(
            select(Submission.idempotency_key, Submission.id).where(
                Submission.idempotency_key.in_(keys)
            )
        )
    }
    suppressed = {
        row.email_hash: row
        for row in session.scalars(select(Suppression).where(Suppression.email_hash.in_(hashes)))
    }
    erased_at = {
        k: row.created_at for k, row in suppressed.items() if row.reason == SuppressionReason.ERASED
    }
    results: list[IngestResult | SignupRejected | None] = [None] * len(signups)
    fresh: dict[str, int] = {}  # idempotency key -> index of the signup that stores it
    for i, signup in enumerate(signups):
        if signup.idempotency_key in known:
            results[i] = IngestResult(known[signup.idempotency_key], created=False)
        elif signup.email_hash in erased_at and signup.submitted_at <= erased_at[signup.email_hash]:
            results[i] = SignupRejected([Problem("email", "address was erased; stale signup")])
        elif signup.idempotency_key not in fresh:
            fresh[signup.idempotency_key] = i
    to_store = [signups[i] for i in fresh.values()]
    stored: dict[str, IngestResult] = {}
    if to_store:
        contacts = _upsert_contacts(session, to_store, now, allowed_tags, suppressed)
        stored = _store(session, to_store, contacts, now, schedule)
        for key, i in fresh.items():
            results[i] = stored[key]
    for i, signup in enumerate(signups):  # repeats of a key stored earlier in this batch
        if results[i] is None:
            first = stored[signup.idempotency_key]
            results[i] = IngestResult(first.submission_id, created=False)
    return [r for r in results if r is not None]


def _upsert_contacts(
    session: Session,
    signups: Sequence[Signup],
    now: datetime,
    allowed_tags: list[str],
    suppressed: dict[str, Suppression],
) -> dict[str, Contact]:
    first_by_hash: dict[str, Signup] = {}
    merge: dict[str, dict[str, str]] = {}  # the latest value of each merge field, per person
    consent_at: dict[str, datetime] = {}  # the latest newsletter consent, per person
    for signup in sorted(signups, key=lambda s: s.submitted_at):
        first_by_hash.setdefault(signup.email_hash, signup)
        merge.setdefault(signup.email_hash, {}).update(signup.merge_fields(allowed_tags))
        if signup.newsletter_consent:
            consent_at[signup.email_hash] = signup.submitted_at

    def new_contact(s: Signup) -> dict[str, Any]:
        row: dict[str, Any] = {
            "email": s.email,
            "email_hash": s.email_hash,
            "status": ContactStatus.NEW,
            "status_changed_at": now,
            "status_source": ChangeSource.SIGNUP,
            "merge_fields": merge[s.email_hash],
            "consent_at": consent_at.get(s.email_hash),
            "created_at": now,
            "updated_at": now,
        }
        was = suppressed.get(s.email_hash)
        if was is not None and was.reason == SuppressionReason.OPTED_OUT:
            # The purge reduced this opted-out contact to its hash; it comes back opted out,
            # so only a consent given after that (and re-confirmation) can change it.
            row.update(
                status=ContactStatus.UNSUBSCRIBED,
                status_changed_at=was.created_at,
                status_source=ChangeSource.RECONCILE,
            )
        return row

    session.execute(
        _insert(session)(Contact)
        .values([new_contact(s) for s in first_by_hash.values()])
        .on_conflict_do_nothing(index_elements=["email_hash"])
    )
    contacts = {
        c.email_hash: c
        for c in session.scalars(select(Contact).where(Contact.email_hash.in_(first_by_hash)))
    }
    # Contacts that existed before: an UPDATE only where something changed.
    for key, contact in contacts.items():
        if any(contact.merge_fields.get(k) != v for k, v in merge[key].items()):
            contact.merge_fields = {**contact.merge_fields, **merge[key]}
        latest = consent_at.get(key)
        if latest is not None and (contact.consent_at is None or latest > contact.consent_at):
            contact.consent_at = latest
    return contacts


def _store(
    session: Session,
    signups: Sequence[Signup],
    contacts: dict[str, Contact],
    now: datetime,
    schedule: Schedule,
) -> dict[str, IngestResult]:
    submissions = []
    for signup in signups:
        rule = schedule.rule_for(signup.form.name)
        clock_starts_at_sync = rule.after_synced and signup.newsletter_consent
        submissions.append(
            Submission(
                contact_id=contacts[signup.email_hash].id,
                form=signup.form.name,
                fields=signup.fields,
                newsletter_consent=signup.newsletter_consent,
                consent_text_version=signup.consent_text_version,
                submitted_at=signup.submitted_at,
                received_at=now,
                need_until=None if clock_starts_at_sync else now + rule.period,
                retain_after_sync_seconds=(
                    int(rule.period.total_seconds()) if clock_starts_at_sync else None
                ),
                policy_version=schedule.policy_version,
                idempotency_key=signup.idempotency_key,
            )
        )
    session.add_all(submissions)
    session.flush()
    jobs: dict[str, SyncJob] = {}
    for signup, submission in zip(signups, submissions, strict=True):
        if signup.ip is not None:
            session.add(SubmissionIP(submission_id=submission.id, ip=signup.ip, received_at=now))
        if signup.newsletter_consent:
            jobs[signup.idempotency_key] = SyncJob(
                kind=JobKind.UPSERT,
                contact_id=contacts[signup.email_hash].id,
                email_hash=signup.email_hash,
                submission_id=submission.id,
                next_attempt_at=now,
                created_at=now,
            )
    session.add_all(jobs.values())
    session.flush()
    return {
        signup.idempotency_key: IngestResult(
            submission.id,
            created=True,
            sync_job_id=jobs[signup.idempotency_key].id if signup.idempotency_key in jobs else None,
        )
        for signup, submission in zip(signups, submissions, strict=True)
    }


def receive(raw: Any, *, channel: str) -> IngestResult:
    """Validate and store one signup in its own transaction, then nudge the flusher.

    A rejected signup is recorded (reason only) and re-raised as SignupRejected.
    """
    result = receive_many([raw], channel=channel)[0]
    if isinstance(result, SignupRejected):
        raise result
    return result


def receive_many(raws: Sequence[Any], *, channel: str) -> list[IngestResult | SignupRejected]:
    """Validate and store many signups in one transaction; rejections are recorded.

    When two deliveries of the same signup race (a unique key clash), the batch is
    retried: the second pass finds the winner's rows. Database outages propagate.
    """
    checked: list[Signup | SignupRejected] = []
    for raw in raws:
        try:
            checked.append(validate(raw))
        except SignupRejected as exc:
            checked.append(exc)
    valid = [c for c in checked if isinstance(c, Signup)]
    for attempt in range(3):
        try:
            with session_scope() as session:
                stored = iter(ingest_many(session, valid))
            break
        except IntegrityError:
            if attempt == 2:
                raise
    results = [next(stored) if isinstance(c, Signup) else c for c in checked]
    rejected = [
        (raw, r) for raw, r in zip(raws, results, strict=True) if isinstance(r, SignupRejected)
    ]
    if rejected:
        record_rejections(rejected, channel)
    _count(valid, results, channel)
    if any(isinstance(r, IngestResult) and r.sync_job_id is not None for r in results):
        from worker.sync import request_flush

        request_flush()
    return results


def _count(
    valid: Sequence[Signup], results: Sequence[IngestResult | SignupRejected], channel: str
) -> None:
    dropped: dict[str, int] = {}
    for signup in valid:
        if signup.dropped_fields:
            dropped[signup.form.name] = dropped.get(signup.form.name, 0) + signup.dropped_fields
    for form, n in dropped.items():
        metrics.incr("signup_fields_dropped_total", n, form=form)
    stored = sum(1 for r in results if isinstance(r, IngestResult) and r.created)
    duplicates = sum(1 for r in results if isinstance(r, IngestResult) and not r.created)
    for result, n in (("stored", stored), ("duplicate", duplicates)):
        if n:
            metrics.incr("signups_received_total", n, channel=channel, result=result)


def record_rejections(rejected: Sequence[tuple[Any, SignupRejected]], channel: str) -> None:
    """Keep a trace of each refused signup: its form (if known) and reasons, no values."""
    forms = get_forms()
    with session_scope() as session:
        for raw, exc in rejected:
            form = raw.get("form") if isinstance(raw, dict) else None
            session.add(
                RejectedSignup(
                    channel=channel,
                    form=form if isinstance(form, str) and form in forms else None,
                    reason=str(exc)[:1000],
                )
            )
    metrics.incr("signups_received_total", len(rejected), channel=channel, result="rejected")
    for _raw, exc in rejected:
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
