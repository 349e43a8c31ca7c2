"""Storing signups: one transaction writes the contact (upsert on the email hash), the
submission, its IP (own table) and, with newsletter consent, the sync job (the outbox).

The same path serves the queue (tasks/signups.py) and `POST /v1/signups`. Invalid input
writes nothing but a `rejected_signup` row whose reason names the field, never its value.
After the commit it asks for a flush (worker/publish.py).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from config import get_settings
from worker import metrics, publish
from worker.addresses import unicode_hash
from worker.db import dialect_insert, session_scope
from worker.feeds.schema import current_schema
from worker.forms import get_forms
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
from worker.signups.message import Problem, Signup, SignupRejected, validate

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class IngestResult:
    key: str  # the signup's idempotency key (given, or derived)
    submission_id: int
    created: bool
    sync_job_id: int | None = None


#: Why an undated queued signup for an erased address is refused (a fixed text: no value).
UNDATED_AFTER_ERASURE = "missing; a queued signup for an erased address must be dated"


def ingest(session: Session, signup: Signup, *, now: datetime | None = None) -> IngestResult:
    """Store one validated signup (without committing); raises SignupRejected."""
    result = ingest_many(session, [signup], now=now)[0]
    if isinstance(result, SignupRejected):
        raise result
    return result


def ingest_many(
    session: Session,
    signups: Sequence[Signup],
    *,
    now: datetime | None = None,
    queued: bool = False,
) -> list[IngestResult | SignupRejected]:
    """Store validated signups (without committing): a handful of statements for any number.

    Idempotent on the idempotency key, also within the batch. Returns one result per signup,
    in order: what was stored (or found), or why it was refused.

    A signup dated at or before its address's erasure is stale. So is a `queued` one that
    came without `submitted_at` for an erased address: it may have waited in the queue (or
    been delivered again) since before the erasure, and the time it was taken off the queue
    says nothing about when the person signed up (docs/intake.md, "Dating a signup").
    """
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
    # An internationalized address may be suppressed under its old, Unicode key (addresses.py).
    old_keys = {s.email_hash: old for s in signups if (old := unicode_hash(s.email))}
    rows = {
        row.email_hash: row
        for row in session.scalars(
            select(Suppression).where(Suppression.email_hash.in_(hashes | set(old_keys.values())))
        )
    }
    suppressed = {
        key: row for key in hashes if (row := rows.get(key) or rows.get(old_keys.get(key, "")))
    }
    erased_at = {
        k: row.created_at for k, row in suppressed.items() if row.reason == SuppressionReason.ERASED
    }
    results: list[IngestResult | SignupRejected | None] = [None] * len(signups)
    fresh: dict[str, int] = {}  # idempotency key -> index of the signup that stores it
    for i, signup in enumerate(signups):
        if signup.idempotency_key in known:
            results[i] = IngestResult(
                signup.idempotency_key, known[signup.idempotency_key], created=False
            )
        elif signup.email_hash in erased_at and signup.submitted_at <= erased_at[signup.email_hash]:
            results[i] = SignupRejected([Problem("email", "address was erased; stale signup")])
        elif signup.email_hash in erased_at and queued and not signup.dated:
            results[i] = SignupRejected([Problem("submitted_at", UNDATED_AFTER_ERASURE)])
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
            results[i] = IngestResult(signup.idempotency_key, first.submission_id, created=False)
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
        dialect_insert(session)(Contact)
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
            signup.idempotency_key,
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
    schema = current_schema()
    for raw in raws:
        try:
            checked.append(validate(raw, schema=schema))
        except SignupRejected as exc:
            checked.append(exc)
    valid = [c for c in checked if isinstance(c, Signup)]
    for attempt in range(3):
        try:
            with session_scope() as session:
                stored = iter(ingest_many(session, valid, queued=channel == "queue"))
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
        publish.FLUSH.request()
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
