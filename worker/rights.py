"""The person's rights (P4, P7, P10): export what is held, correct it, erase it.

Plain functions taking a session; they do not commit. Changes bound for Mailchimp go through
the outbox (a SyncJob in the same transaction), so an outage delays them and never drops them.
Audit entries carry the email hash and the operator's reason, never the address.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import delete, null, select, update
from sqlalchemy.orm import Session

from config import get_settings
from worker.addresses import member_hash
from worker.forms import get_forms
from worker.models import (
    AuditEntry,
    Contact,
    Hold,
    JobKind,
    JobState,
    ParkedSignup,
    Submission,
    SubmissionIP,
    Suppression,
    SuppressionReason,
    SyncJob,
    WebhookEvent,
    utcnow,
)
from worker.retention.holds import (
    InvalidRequest,
    active_holds_for,
    check_reason,
    hash_of,
    is_known,
)

EXPORT_FORMAT = "listsync-export/1"
ERASED_REASON = SuppressionReason.ERASED
#: The second delete-permanent of an erasure waits the in-flight timeout plus this: a call a
#: flush made before the erasure (one that timed out on our side included) has landed at
#: Mailchimp by then, or its job was rescued as stuck and is stopped.
ERASE_AGAIN_MARGIN_SECONDS = 60


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def _contact_of(session: Session, key: str) -> Contact | None:
    return session.scalar(select(Contact).where(Contact.email_hash == key))


# --- export -------------------------------------------------------------------------------


def export(
    session: Session,
    email: str,
    *,
    include_ip: bool = False,
    ip_reason: str | None = None,
    now: datetime | None = None,
) -> dict[str, Any]:
    """Everything held about one address, as JSON-ready data. Audited; IPs only with a reason."""
    now = now or utcnow()
    key = hash_of(email)
    if include_ip:
        ip_reason = check_reason(ip_reason)
    if not is_known(session, key):
        raise InvalidRequest("no records are held for this address")
    contact = _contact_of(session, key)
    submissions: list[Submission] = []
    ips: dict[int, str] = {}
    if contact is not None:
        submissions = list(
            session.scalars(
                select(Submission)
                .where(Submission.contact_id == contact.id)
                .order_by(Submission.id)
            )
        )
        if include_ip and submissions:
            rows = session.execute(
                select(SubmissionIP.submission_id, SubmissionIP.ip).where(
                    SubmissionIP.submission_id.in_([s.id for s in submissions])
                )
            )
            ips = {sid: ip for sid, ip in rows}
    holds = list(
        session.scalars(
            select(Hold)
            .where((Hold.email_hash == key) | Hold.submission_id.in_([s.id for s in submissions]))
            .order_by(Hold.id)
        )
    )
    events = session.scalars(
        select(WebhookEvent).where(WebhookEvent.email_hash == key).order_by(WebhookEvent.fired_at)
    )
    jobs = session.scalars(select(SyncJob).where(SyncJob.email_hash == key).order_by(SyncJob.id))
    suppression = session.get(Suppression, key)
    parked = session.scalars(
        select(ParkedSignup).where(ParkedSignup.email_hash == key).order_by(ParkedSignup.id)
    )

    out: dict[str, Any] = {
        "format": EXPORT_FORMAT,
        "generated_at": now.isoformat(),
        "email_hash": key,
        "contact": None,
        "submissions": [],
        "holds": [
            {
                "id": h.id,
                "submission_id": h.submission_id,
                "whole_address": h.email_hash is not None,
                "reason": h.reason,
                "created_at": _iso(h.created_at),
                "until": _iso(h.until),
                "released_at": _iso(h.released_at),
            }
            for h in holds
        ],
        "webhook_events": [
            {
                "type": e.type,
                "source": e.source,
                "fired_at": _iso(e.fired_at),
                "received_at": _iso(e.received_at),
                "state": e.state,
                "outcome": e.outcome,
                "payload": e.payload,
            }
            for e in events
        ],
        "sync_jobs": [
            {
                "id": j.id,
                "kind": j.kind,
                "state": j.state,
                "submission_id": j.submission_id,
                "attempts": j.attempts,
                "created_at": _iso(j.created_at),
                "finished_at": _iso(j.finished_at),
                "outcome": j.outcome,
                "last_error": j.last_error,
            }
            for j in jobs
        ],
        "parked_signups": [
            {
                "id": p.id,
                "parked_at": _iso(p.parked_at),
                "form": p.form,
                "error": p.error,
                "attempts": p.attempts,
                "message": p.payload,
            }
            for p in parked
        ],
        "suppression": (
            None
            if suppression is None
            else {"reason": suppression.reason, "created_at": _iso(suppression.created_at)}
        ),
        "ip_included": include_ip,
    }
    if contact is not None:
        out["contact"] = {
            "id": contact.id,
            "email": contact.email,
            "status": contact.status,
            "status_changed_at": _iso(contact.status_changed_at),
            "status_source": contact.status_source,
            "status_reason": contact.status_reason,
            "merge_fields": contact.merge_fields,
            "consent_at": _iso(contact.consent_at),
            "created_at": _iso(contact.created_at),
            "updated_at": _iso(contact.updated_at),
        }
    for s in submissions:
        item: dict[str, Any] = {
            "id": s.id,
            "form": s.form,
            "fields": s.fields,
            "newsletter_consent": s.newsletter_consent,
            "consent_text_version": s.consent_text_version,
            "submitted_at": _iso(s.submitted_at),
            "received_at": _iso(s.received_at),
            "need_until": _iso(s.need_until),
            "policy_version": s.policy_version,
            "synced_at": _iso(s.synced_at),
        }
        if include_ip:
            item["ip"] = ips.get(s.id)
        out["submissions"].append(item)

    if include_ip:
        session.add(AuditEntry(action="export_ip", subject=key, detail={"reason": ip_reason}))
    else:
        session.add(AuditEntry(action="export", subject=key, detail={}))
    return out


# --- correct ------------------------------------------------------------------------------


def parse_assignments(items: list[str] | tuple[str, ...]) -> dict[str, str]:
    """FIELD=VALUE pairs; FIELD must be a configured merge field (case-insensitive)."""
    allowed = get_settings().merge_fields
    if not items:
        raise InvalidRequest("give at least one --set FIELD=VALUE")
    changes: dict[str, str] = {}
    for item in items:
        name, sep, value = item.partition("=")
        tag = name.strip().upper()
        if not sep or not tag:
            raise InvalidRequest("--set expects FIELD=VALUE")
        if tag not in allowed:
            raise InvalidRequest(f"unknown field {tag!r} (correctable: {', '.join(allowed)})")
        changes[tag] = value
    return changes


def correct(
    session: Session, email: str, changes: dict[str, str], *, now: datetime | None = None
) -> SyncJob:
    """Correct merge fields locally (contact and the form fields mapped to them) and queue
    the PATCH to Mailchimp. Never touches the member's status."""
    now = now or utcnow()
    allowed = get_settings().merge_fields
    unknown = [tag for tag in changes if tag not in allowed]
    if unknown or not changes:
        raise InvalidRequest(f"unknown field {unknown[0]!r}" if unknown else "nothing to correct")
    key = hash_of(email)
    contact = _contact_of(session, key)
    if contact is None:
        raise InvalidRequest("no contact is held for this address")
    contact.merge_fields = {**contact.merge_fields, **changes}
    forms = get_forms()
    for submission in session.scalars(
        select(Submission).where(Submission.contact_id == contact.id)
    ):
        form = forms.get(submission.form)
        if form is None:
            continue
        fields = dict(submission.fields)
        for field_name, tag in form.merge_fields.items():
            if tag in changes and field_name in fields:
                fields[field_name] = changes[tag]
        if fields != submission.fields:
            submission.fields = fields
    job = _queue_and_audit(
        session,
        SyncJob(kind=JobKind.UPDATE, contact_id=contact.id, email_hash=key, next_attempt_at=now),
        "correct",
        {"fields": sorted(changes)},  # names, not values
    )
    return job


# --- erase --------------------------------------------------------------------------------


@dataclass
class ErasureReport:
    email_hash: str
    submissions: int
    ips: int
    parked: int
    jobs_suppressed: int
    payloads_dropped: int
    sync_job_id: int
    erase_again_job_id: int


def erase(
    session: Session, email: str, reason: str, *, now: datetime | None = None
) -> ErasureReport:
    """Erase an address: local records go now, Mailchimp's member through the outbox
    (delete-permanent); a suppression hash stays so no stale signup re-adds the person.

    Refused while a hold is active on the address or one of its submissions: a pending
    public-records request or investigation wins over the erasure until released.
    """
    now = now or utcnow()
    reason = check_reason(reason)
    key = hash_of(email)
    if not is_known(session, key):
        raise InvalidRequest("no records are held for this address")
    holds = active_holds_for(session, key, now)
    if holds:
        ids = ", ".join(str(h.id) for h in holds)
        raise InvalidRequest(
            f"records of this address are under hold ({ids}); release the hold first "
            "(`listsync hold release ID`) or wait for it to end"
        )
    contact = _contact_of(session, key)
    # Jobs first, then submissions: the order a flush recording this person's job takes its
    # locks in (worker/signups/flush.py, record), so the two never deadlock on PostgreSQL.
    # Queued signups and corrections must not reach Mailchimp after the erasure, and one a
    # flush is working on records nothing when its call returns: the flush records only jobs
    # still in flight (worker/signups/flush.py, record).
    jobs_suppressed = _count(
        session.execute(
            update(SyncJob)
            .where(
                SyncJob.email_hash == key,
                SyncJob.state.in_([JobState.PENDING, JobState.IN_FLIGHT]),
                SyncJob.kind.in_([JobKind.UPSERT, JobKind.UPDATE]),
            )
            .values(state=JobState.SUPPRESSED, outcome="erased", finished_at=now)
            .execution_options(synchronize_session=False)
        )
    )
    submissions = ips = 0
    if contact is not None:
        ids_q = select(Submission.id).where(Submission.contact_id == contact.id)
        # What the submissions' delete would do to their jobs (ON DELETE SET NULL), done
        # here so that every job row is locked before any submission row.
        session.execute(
            update(SyncJob)
            .where(SyncJob.submission_id.in_(ids_q))
            .values(submission_id=None)
            .execution_options(synchronize_session=False)
        )
        ips = _count(
            session.execute(delete(SubmissionIP).where(SubmissionIP.submission_id.in_(ids_q)))
        )
        submissions = _count(
            session.execute(delete(Submission).where(Submission.contact_id == contact.id))
        )
    parked = _count(session.execute(delete(ParkedSignup).where(ParkedSignup.email_hash == key)))
    # Webhook payloads carry the address; the event and its dedupe key stay (no replay).
    # That includes the events from before a change of address to this one: they are kept
    # under the old address's hash, and the change itself holds both addresses.
    payloads = _count(
        session.execute(
            update(WebhookEvent)
            .where(
                WebhookEvent.email_hash.in_(_former_hashes(session, key) | {key}),
                WebhookEvent.payload.is_not(None),
            )
            .values(payload=null())
            .execution_options(synchronize_session=False)
        )
    )
    if contact is not None:
        session.execute(delete(Contact).where(Contact.id == contact.id))
    suppression = session.get(Suppression, key)
    if suppression is None:
        session.add(Suppression(email_hash=key, reason=ERASED_REASON, created_at=now))
    else:
        suppression.reason = ERASED_REASON
    # A call already out (or one that timed out here but still lands at Mailchimp) may create
    # the member after the first delete answered 404: a second delete follows once any such
    # call has landed. Deleting a member that is not there is harmless.
    again_at = now + timedelta(
        seconds=get_settings().sync_in_flight_timeout_seconds + ERASE_AGAIN_MARGIN_SECONDS
    )
    job = SyncJob(kind=JobKind.ERASE, contact_id=None, email_hash=key, next_attempt_at=now)
    session.add(job)
    session.flush()
    again = _queue_and_audit(
        session,
        SyncJob(kind=JobKind.ERASE, contact_id=None, email_hash=key, next_attempt_at=again_at),
        "erase",
        {
            "reason": reason,
            "submissions": submissions,
            "ips": ips,
            "parked": parked,
            "jobs_suppressed": jobs_suppressed,
            "first_sync_job_id": job.id,  # the second delete is `sync_job_id`
        },
    )
    return ErasureReport(key, submissions, ips, parked, jobs_suppressed, payloads, job.id, again.id)


def _former_hashes(session: Session, key: str) -> set[str]:
    """Hashes of the addresses this person had before, from the stored upemail events."""
    renames: dict[str, set[str]] = {}  # new hash -> old hashes
    for old_hash, payload in session.execute(
        select(WebhookEvent.email_hash, WebhookEvent.payload).where(
            WebhookEvent.type == "upemail", WebhookEvent.payload.is_not(None)
        )
    ):
        data = payload.get("data") if isinstance(payload, dict) else None
        new_email = data.get("new_email") if isinstance(data, dict) else None
        if old_hash and isinstance(new_email, str):
            renames.setdefault(member_hash(new_email), set()).add(old_hash)
    found: set[str] = set()
    todo = [key]
    while todo:
        for old_hash in renames.get(todo.pop(), set()) - found - {key}:
            found.add(old_hash)
            todo.append(old_hash)
    return found


def _queue_and_audit(
    session: Session, job: SyncJob, action: str, detail: dict[str, Any]
) -> SyncJob:
    """Put a job in the outbox and audit the request that made it, in the same transaction."""
    session.add(job)
    session.flush()
    session.add(
        AuditEntry(action=action, subject=job.email_hash, detail={**detail, "sync_job_id": job.id})
    )
    return job


def _count(result: Any) -> int:
    return max(int(getattr(result, "rowcount", 0) or 0), 0)
