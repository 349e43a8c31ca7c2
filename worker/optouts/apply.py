"""Applying Mailchimp's changes to local contacts: one code path for webhook events and
reconciliation. Never calls Mailchimp (no echo loops).

Ordering (events arrive late and repeated):
- an erased contact is never changed;
- when the contact's status last came from Mailchimp (webhook, reconcile), Mailchimp's own
  times are compared: an older event is stale; at an equal time the more restrictive status
  wins (fired_at has one-second resolution);
- when it last came from a local source (signup, sync, admin), whose clock Mailchimp's cannot
  be ordered against to the second, an opt-out always applies (opt-outs happen in Mailchimp)
  and a subscribe applies only when fired after the local change.
Restrictiveness, most first:
    erased > cleaned > unsubscribed > archived > pending > subscribed > new.
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Select, and_, inspect, or_, select, update
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

from config import get_settings
from worker.addresses import member_hash
from worker.db import dialect_insert, session_scope
from worker.models import (
    OPTED_OUT,
    OPTOUT_RACED,
    RECONFIRM_SENT,
    ChangeSource,
    Contact,
    ContactStatus,
    EventState,
    Hold,
    JobKind,
    JobState,
    Submission,
    Suppression,
    SuppressionReason,
    SyncJob,
    WebhookEvent,
    utcnow,
)

log = logging.getLogger(__name__)

RESTRICTIVENESS: dict[str, int] = {
    ContactStatus.NEW: 0,
    ContactStatus.SUBSCRIBED: 1,
    ContactStatus.PENDING: 2,
    ContactStatus.ARCHIVED: 3,
    ContactStatus.UNSUBSCRIBED: 4,
    ContactStatus.CLEANED: 5,
    ContactStatus.ERASED: 6,
}
#: Events applied per task run; a run that reaches it queues another.
APPLY_BATCH = 500
#: Events applied per transaction within a run.
APPLY_CHUNK = 100
MAILCHIMP_SOURCES = frozenset({ChangeSource.WEBHOOK, ChangeSource.RECONCILE})
#: Slack between Mailchimp's clock (an event's fired_at, to the second) and ours when an
#: opt-out is ordered against a re-confirmation request.
RECONFIRM_RACE_MARGIN = timedelta(seconds=120)


def more_restrictive(a: str, b: str) -> bool:
    """True when status `a` is strictly more restrictive than `b`."""
    return RESTRICTIVENESS.get(a, 0) > RESTRICTIVENESS.get(b, 0)


@dataclass(frozen=True)
class Change:
    """What Mailchimp says happened to one member, from a webhook event or a members page."""

    kind: str  # status | upemail | profile | none
    source: ChangeSource
    fired_at: datetime
    email: str | None = None
    status: str | None = None
    reason: str | None = None
    new_email: str | None = None
    merges: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Result:
    state: EventState
    outcome: str  # short code, no PII
    changed_status: bool = False


def change_from_event(event: WebhookEvent) -> Change:
    """The Change an inbox row describes (its payload was validated when stored)."""
    payload = event.payload or {}
    data = payload.get("data") or {}
    raw_merges = data.get("merges")
    merges: dict[str, Any] = raw_merges if isinstance(raw_merges, dict) else {}
    source = ChangeSource(event.source)
    fired_at = event.fired_at
    email = str(data.get("email") or "").strip() or None
    reason = str(data.get("reason") or "") or None
    if event.type == "unsubscribe":
        action = str(data.get("action") or "unsub")
        return Change(
            "status",
            source,
            fired_at,
            email,
            ContactStatus.UNSUBSCRIBED,
            f"{action}:{reason or 'unknown'}"[:64],
        )
    if event.type == "cleaned":
        return Change(
            "status",
            source,
            fired_at,
            email,
            ContactStatus.CLEANED,
            f"cleaned:{reason or 'hard'}"[:64],
        )
    if event.type == "subscribe":
        return Change("status", source, fired_at, email, ContactStatus.SUBSCRIBED, merges=merges)
    if event.type == "profile":
        return Change("profile", source, fired_at, email, merges=merges)
    if event.type == "upemail":
        return Change(
            "upemail",
            source,
            fired_at,
            str(data.get("old_email") or "").strip(),
            new_email=str(data.get("new_email") or "").strip(),
        )
    return Change("none", source, fired_at)


def apply_event(session: Session, event_id: int) -> Result | None:
    """Apply one inbox event, once. None when it is gone or already settled (idempotent)."""
    event = session.scalars(
        select(WebhookEvent).where(WebhookEvent.id == event_id).with_for_update(skip_locked=True)
    ).one_or_none()
    if event is None or event.state != EventState.PENDING:
        return None
    return _settle(session, event)


def _settle(session: Session, event: WebhookEvent, known: Prefetched | None = None) -> Result:
    if event.payload is None:  # purged before it was applied: nothing left to act on
        result = Result(EventState.IGNORED, "payload_purged")
    else:
        result = apply_change(session, change_from_event(event), known)
    event.state = result.state
    event.outcome = result.outcome
    event.applied_at = utcnow()
    return result


def apply_pending(limit: int = APPLY_BATCH) -> int:
    """Apply up to `limit` pending inbox events, oldest `fired_at` first; returns how many.

    Each transaction claims the next `APPLY_CHUNK` pending events (on PostgreSQL with
    FOR UPDATE SKIP LOCKED, so runs side by side take different events) and applies them.
    A chunk that fails for a reason other than the database being away is rolled back and
    applied again one event per transaction, so one bad event is parked (`failed`) and
    every other one still applies. A caller seeing `limit` should run again.
    """
    done = 0
    while done < limit:
        claimed = _apply_chunk(min(APPLY_CHUNK, limit - done))
        done += claimed
        if claimed < APPLY_CHUNK:
            break
    return done


def _apply_chunk(size: int) -> int:
    event_ids: list[int] = []
    try:
        with session_scope() as session:
            events = _claim(session, size)
            event_ids = [event.id for event in events]
            known = _prefetch(session, events)
            results = [(event.id, _settle(session, event, known)) for event in events]
    except OperationalError as exc:
        if not event_ids or not _deadlock(exc):
            raise  # the database is away: the task retries the whole run
        fallback: Exception = exc  # a deadlock with another run, which one event at a time avoids
    except Exception as exc:
        if not event_ids:
            raise  # the claim itself failed: nothing to apply one at a time
        fallback = exc
    else:
        for event_id, result in results:  # after the commit: a rolled-back chunk logs nothing
            _log_applied(event_id, result)
        return len(event_ids)
    log.warning(
        "optouts: a chunk of %d events failed (%s); applying them one at a time",
        len(event_ids),
        type(fallback).__name__,
    )
    for event_id in event_ids:
        _apply_alone(event_id)
    return len(event_ids)


def _claim(session: Session, size: int) -> list[WebhookEvent]:
    """The next `size` pending events, oldest first, for this transaction alone.

    PostgreSQL locks them (FOR UPDATE SKIP LOCKED: a run beside this one takes others).
    SQLite ignores FOR UPDATE, so two runs can read the same events; as `worker.signups.flush.claim`
    does, a write then re-checks their state, and SQLite's one-writer-at-a-time lock makes
    the run that comes second keep only the events the first did not apply.
    """
    events = session.scalars(
        select(WebhookEvent)
        .where(WebhookEvent.state == EventState.PENDING)
        .order_by(WebhookEvent.fired_at, WebhookEvent.id)
        .limit(size)
        .with_for_update(skip_locked=True)
    ).all()
    if not events or session.get_bind().dialect.name == "postgresql":
        return list(events)
    still_pending = set(
        session.scalars(
            update(WebhookEvent)
            .where(
                WebhookEvent.id.in_([event.id for event in events]),
                WebhookEvent.state == EventState.PENDING,
            )
            .values(state=WebhookEvent.state)  # a write that changes nothing
            .returning(WebhookEvent.id)
            .execution_options(synchronize_session=False)
        )
    )
    return [event for event in events if event.id in still_pending]


def _deadlock(exc: OperationalError) -> bool:
    return getattr(exc.orig, "sqlstate", None) == "40P01"


@dataclass
class Prefetched:
    """What a chunk looked up once for all its events, instead of once per event; handed to
    the functions that apply them (reconcile applies one change at a time, without it)."""

    hashes: frozenset[str]  # the keys looked up
    erased: frozenset[str]  # those erased
    contacts: dict[str, Contact]  # their contacts, locked FOR UPDATE (in id order)
    #: Their pending upserts and updates; None once an address change of the chunk moved
    #: jobs to another hash (they no longer say whose they are).
    jobs: dict[str, list[SyncJob]] | None


def _prefetch(session: Session, events: Sequence[WebhookEvent]) -> Prefetched | None:
    hashes = frozenset(event.email_hash for event in events if event.email_hash)
    if not hashes:
        return None
    erased = frozenset(
        session.scalars(
            select(Suppression.email_hash).where(
                Suppression.email_hash.in_(hashes),
                Suppression.reason == SuppressionReason.ERASED,
            )
        )
    )
    contacts = {
        contact.email_hash: contact
        for contact in session.scalars(
            select(Contact)
            .where(Contact.email_hash.in_(hashes))
            .order_by(Contact.id)
            .with_for_update()
        )
    }
    contacts.update(_create_contacts(session, events, erased, contacts))
    jobs: dict[str, list[SyncJob]] = {}
    for job in session.scalars(_pending_jobs_of(hashes)):
        jobs.setdefault(job.email_hash, []).append(job)
    return Prefetched(hashes, erased, contacts, jobs)


def _create_contacts(
    session: Session,
    events: Sequence[WebhookEvent],
    erased: frozenset[str],
    existing: dict[str, Contact],
) -> dict[str, Contact]:
    """Create, in one INSERT, the contacts `_ensure_contact` would create one by one: people
    first heard of through a status event of this chunk.

    Only where that status event is the chunk's first about them and no address change in
    the chunk names them; everywhere else the event-by-event path decides, so the end state
    is the same either way.
    """
    first: dict[str, dict[str, Any]] = {}
    seen: set[str] = set(existing) | erased
    renamed: set[str] = set()
    now = utcnow()
    for event in events:
        if event.payload is None:
            continue
        change = change_from_event(event)
        if change.kind == "upemail":
            renamed.update(member_hash(e) for e in (change.email, change.new_email) if e)
        elif change.email and (key := member_hash(change.email)) not in seen:
            seen.add(key)
            if change.kind == "status" and change.status is not None:
                first[key] = _new_contact(change.email, key, change, now)
    # In key order, as the inbox inserts: two runs creating the same people cannot deadlock.
    rows = [first[key] for key in sorted(first) if key not in renamed]
    if not rows:
        return {}
    insert = (
        dialect_insert(session)(Contact)
        .on_conflict_do_nothing(index_elements=["email_hash"])
        .returning(Contact)
    )
    # Another transaction may have created one meanwhile: it is not returned, and the
    # event-by-event path finds and locks it.
    return {contact.email_hash: contact for contact in session.scalars(insert, rows)}


def _new_contact(email: str, key: str, change: Change, now: datetime) -> dict[str, Any]:
    return {
        "email": email,
        "email_hash": key,
        "status": ContactStatus.NEW,
        # Older than any event, so the event itself decides the status.
        "status_changed_at": change.fired_at - timedelta(seconds=1),
        "status_source": change.source,
        "merge_fields": {},
        "created_at": now,
        "updated_at": now,
    }


def _apply_alone(event_id: int) -> None:
    try:
        with session_scope() as session:
            result = apply_event(session, event_id)
    except OperationalError:
        raise
    except Exception as exc:
        # One bad event must not hold back every later one: park it, visibly, for a
        # human (listsync status counts failed events). The type only: texts carry PII.
        log.error("optouts: event %d failed (%s)", event_id, type(exc).__name__)
        _mark_failed(event_id, type(exc).__name__)
        return
    _log_applied(event_id, result)


def _log_applied(event_id: int, result: Result | None) -> None:
    if result is not None:
        log.info("optouts: event %d -> %s %s", event_id, result.state, result.outcome)


def _mark_failed(event_id: int, reason: str) -> None:
    with session_scope() as session:
        session.execute(
            update(WebhookEvent)
            .where(WebhookEvent.id == event_id, WebhookEvent.state == EventState.PENDING)
            .values(state=EventState.FAILED, outcome=f"error:{reason}"[:64], applied_at=utcnow())
        )


def is_erased(session: Session, key: str, known: Prefetched | None = None) -> bool:
    """True when the address behind `key` was erased: nothing may be stored for it again."""
    if known is not None and key in known.hashes:
        return key in known.erased
    return (
        session.scalar(
            select(Suppression.email_hash).where(
                Suppression.email_hash == key, Suppression.reason == SuppressionReason.ERASED
            )
        )
        is not None
    )


def apply_change(session: Session, change: Change, known: Prefetched | None = None) -> Result:
    """Apply one change to the local records (without committing)."""
    if change.kind == "status":
        return _apply_status(session, change, known)
    if change.kind == "profile":
        return _apply_profile(session, change, known)
    if change.kind == "upemail":
        return _apply_upemail(session, change, known)
    return Result(EventState.APPLIED, "recorded")


# --- status -----------------------------------------------------------------------------


def _locked_contact(session: Session, key: str, known: Prefetched | None) -> Contact | None:
    cached = known.contacts.get(key) if known is not None else None
    if cached is not None and _still_theirs(session, cached, key):
        return cached
    return session.scalars(
        select(Contact).where(Contact.email_hash == key).with_for_update()
    ).one_or_none()


def _still_theirs(session: Session, contact: Contact, key: str) -> bool:
    """Not renamed, merged away or deleted by an earlier event of the chunk."""
    return (
        contact.email_hash == key and inspect(contact).persistent and contact not in session.deleted
    )


def _ensure_contact(
    session: Session, email: str, change: Change, known: Prefetched | None
) -> Contact:
    """The contact for `email`, created with the event's status if we never saw them.

    Creating it is what stops a later, stale signup from subscribing them again.
    """
    key = member_hash(email)
    if (
        known is not None
        and key in known.contacts
        and (found := _locked_contact(session, key, known))
    ):
        return found
    created = session.scalars(
        dialect_insert(session)(Contact)
        .values(_new_contact(email, key, change, utcnow()))
        .on_conflict_do_nothing(index_elements=["email_hash"])
        .returning(Contact)
    ).one_or_none()
    if created is not None:  # new, so no other transaction can see it yet
        return created
    contact = _locked_contact(session, key, known)
    assert contact is not None
    return contact


def _is_stale(contact: Contact, change: Change) -> bool:
    new = str(change.status)
    if contact.status_source in MAILCHIMP_SOURCES:
        if change.fired_at == contact.status_changed_at:
            return not more_restrictive(new, contact.status)
        return change.fired_at < contact.status_changed_at
    if new in OPTED_OUT:
        return False
    return change.fired_at <= contact.status_changed_at


def _apply_status(session: Session, change: Change, known: Prefetched | None) -> Result:
    if not change.email or change.status is None:
        return Result(EventState.IGNORED, "no_email")
    if is_erased(session, member_hash(change.email), known):
        # A late webhook or a reconcile page must not bring an erased person back.
        return Result(EventState.IGNORED, "erased")
    contact = _ensure_contact(session, change.email, change, known)
    if contact.status == ContactStatus.ERASED:
        return Result(EventState.IGNORED, "erased")
    if _is_stale(contact, change):
        return Result(EventState.IGNORED, "stale")
    # What the flush's plan reads as "re-confirm": unsubscribed, with a newer consent.
    reconfirming = (
        contact.status == ContactStatus.UNSUBSCRIBED
        and contact.consent_at is not None
        and contact.consent_at > contact.status_changed_at
    )
    # Only a contact a re-confirmation request can have been sent for (unsubscribed with a
    # newer consent, or pending) can have one to take back: no query for every other opt-out.
    if change.status in OPTED_OUT and (reconfirming or contact.status == ContactStatus.PENDING):
        _take_back_reconfirmations(session, contact, change.fired_at, reconfirming)
    if change.status == ContactStatus.SUBSCRIBED:
        _update_merges(contact, change.merges)
    if contact.status == change.status:
        if change.fired_at > contact.status_changed_at:
            contact.status_changed_at = change.fired_at
            contact.status_source = change.source
            contact.status_reason = change.reason or contact.status_reason
        return Result(EventState.APPLIED, "unchanged")
    previous = contact.status
    contact.status = change.status
    contact.status_changed_at = change.fired_at
    contact.status_source = change.source
    contact.status_reason = change.reason
    suppressed = 0
    if change.status in OPTED_OUT:
        suppressed = suppress_pending_jobs(session, contact, f"opted_out:{change.status}", known)
    log.info(
        "optouts: contact %d %s -> %s by %s (%d sync jobs suppressed)",
        contact.id,
        previous,
        change.status,
        change.source,
        suppressed,
    )
    return Result(EventState.APPLIED, f"status:{change.status}", changed_status=True)


def _take_back_reconfirmations(
    session: Session, contact: Contact, fired_at: datetime, reconfirming: bool
) -> int:
    """An opt-out that fired while a re-confirmation request was on its way may have landed
    at Mailchimp first; the request (`status: pending`) then overwrote it. Mailchimp offers
    no conditional write, so the opt-out is restored after the fact: the request's jobs end
    `optout_raced` and an OPTOUT job sets the member back to unsubscribed. When the opt-out
    in fact came after the request, the member is unsubscribed already and the write changes
    nothing. Returns how many requests were taken back.

    A job still in flight (a re-confirmation, if the contact is `reconfirming`) is stopped,
    so its flush records nothing, and the restore waits until its call has surely landed.
    """
    now = utcnow()
    settings = get_settings()
    jobs = list(
        session.scalars(
            select(SyncJob).where(
                SyncJob.contact_id == contact.id,
                SyncJob.kind == JobKind.UPSERT,
                SyncJob.claimed_at.is_not(None),
                SyncJob.claimed_at <= fired_at + RECONFIRM_RACE_MARGIN,
                or_(
                    SyncJob.state == JobState.IN_FLIGHT,
                    and_(SyncJob.state == JobState.DONE, SyncJob.outcome == RECONFIRM_SENT),
                ),
            )
        )
    )
    due = now
    taken = 0
    for job in jobs:
        if job.state == JobState.IN_FLIGHT:
            if not (reconfirming and settings.resubscribe_with_confirmation):
                continue
            assert job.claimed_at is not None
            landed_by = job.claimed_at + timedelta(seconds=settings.sync_in_flight_timeout_seconds)
            due = max(due, landed_by + RECONFIRM_RACE_MARGIN)
            job.state = JobState.SUPPRESSED
            job.finished_at = now
        elif job.finished_at is not None and fired_at > job.finished_at + RECONFIRM_RACE_MARGIN:
            continue  # an opt-out well after the request: it stands at Mailchimp
        job.outcome = OPTOUT_RACED
        job.last_error = f"{OPTOUT_RACED} (an opt-out overtook the re-confirmation)"
        taken += 1
    if taken:
        session.add(
            SyncJob(
                kind=JobKind.OPTOUT,
                contact_id=contact.id,
                email_hash=contact.email_hash,
                next_attempt_at=due,
            )
        )
        log.warning("optouts: contact %d: %d re-confirmation(s) taken back", contact.id, taken)
    return taken


def _pending_jobs_of(hashes: Collection[str]) -> Select[SyncJob]:
    return select(SyncJob).where(
        SyncJob.email_hash.in_(hashes),
        SyncJob.state == JobState.PENDING,
        SyncJob.kind.in_([JobKind.UPSERT, JobKind.UPDATE]),
    )


def suppress_pending_jobs(
    session: Session, contact: Contact, reason: str, known: Prefetched | None = None
) -> int:
    """End the contact's pending upserts and updates as suppressed; returns how many.

    Their submissions' retention clock starts now, as it does for jobs the flush suppresses.
    """
    now = utcnow()
    key = contact.email_hash
    if known is not None and known.jobs is not None and key in known.hashes:
        jobs = [job for job in known.jobs.get(key, []) if job.state == JobState.PENDING]
    else:
        jobs = list(session.scalars(_pending_jobs_of([key])))
    for job in jobs:
        job.state = JobState.SUPPRESSED
        job.outcome = reason
        job.last_error = f"{reason} (Mailchimp webhook or reconcile)"
        job.finished_at = now
        if job.submission_id is not None:
            submission = session.get(Submission, job.submission_id)
            if submission is not None:
                submission.sync_ended(now)
    return len(jobs)


# --- profile ----------------------------------------------------------------------------


def _update_merges(contact: Contact, merges: dict[str, Any]) -> bool:
    """Copy the configured merge fields only; an empty value clears the local one."""
    allowed = get_settings().merge_fields
    fields = dict(contact.merge_fields or {})
    for tag in allowed:
        if tag not in merges:
            continue
        value = merges[tag]
        if value in ("", None, {}):
            fields.pop(tag, None)
        else:
            fields[tag] = value
    if fields == contact.merge_fields:
        return False
    contact.merge_fields = fields
    return True


def _apply_profile(session: Session, change: Change, known: Prefetched | None) -> Result:
    if not change.email:
        return Result(EventState.IGNORED, "no_email")
    contact = _locked_contact(session, member_hash(change.email), known)
    if contact is None:
        return Result(EventState.APPLIED, "no_contact")
    if contact.status == ContactStatus.ERASED:
        return Result(EventState.IGNORED, "erased")
    changed = _update_merges(contact, change.merges)
    return Result(EventState.APPLIED, "profile" if changed else "unchanged")


# --- upemail ----------------------------------------------------------------------------


def _apply_upemail(session: Session, change: Change, known: Prefetched | None) -> Result:
    if not change.email or not change.new_email:
        return Result(EventState.IGNORED, "no_email")
    old_hash, new_hash = member_hash(change.email), member_hash(change.new_email)
    if is_erased(session, new_hash, known):
        return Result(EventState.IGNORED, "erased")
    if old_hash == new_hash:  # a change of case only: same member
        contact = _locked_contact(session, old_hash, known)
        if contact is not None and contact.status != ContactStatus.ERASED:
            contact.email = change.new_email
        return Result(EventState.APPLIED, "unchanged")
    old = _locked_contact(session, old_hash, known)
    new = _locked_contact(session, new_hash, known)
    if old is None:
        return Result(EventState.APPLIED, "unchanged" if new is not None else "no_contact")
    if old.status == ContactStatus.ERASED:
        return Result(EventState.IGNORED, "erased")
    if new is None:
        old.email = change.new_email
        old.email_hash = new_hash
        _rehash(session, old_hash, new_hash, known)
        return Result(EventState.APPLIED, "email_changed")
    _rehash(session, old_hash, new_hash, known)
    _merge(session, old, new, known)
    return Result(EventState.APPLIED, "email_merged")


def _rehash(session: Session, old_hash: str, new_hash: str, known: Prefetched | None) -> None:
    """Pending jobs and holds follow the person to the new address."""
    if known is not None:
        known.jobs = None  # the chunk's prefetched jobs no longer say whose they are
    session.execute(
        update(SyncJob)
        .where(SyncJob.email_hash == old_hash, SyncJob.state == JobState.PENDING)
        .values(email_hash=new_hash)
        .execution_options(synchronize_session=False)
    )
    session.execute(
        update(Hold)
        .where(Hold.email_hash == old_hash)
        .values(email_hash=new_hash)
        .execution_options(synchronize_session=False)
    )


def _merge(session: Session, old: Contact, new: Contact, known: Prefetched | None) -> None:
    """Fold `old` into `new` (which already has the new address), keeping the most
    restrictive status, then delete `old`."""
    if more_restrictive(old.status, new.status):
        new.status = old.status
        new.status_changed_at = old.status_changed_at
        new.status_source = old.status_source
        new.status_reason = old.status_reason
    new.merge_fields = {**(old.merge_fields or {}), **(new.merge_fields or {})}
    if old.consent_at is not None and (new.consent_at is None or old.consent_at > new.consent_at):
        new.consent_at = old.consent_at
    session.execute(
        update(Submission)
        .where(Submission.contact_id == old.id)
        .values(contact_id=new.id)
        .execution_options(synchronize_session=False)
    )
    session.execute(
        update(SyncJob)
        .where(SyncJob.contact_id == old.id)
        .values(contact_id=new.id)
        .execution_options(synchronize_session=False)
    )
    session.flush()
    session.delete(old)
    session.flush()
    if new.status in OPTED_OUT:
        suppress_pending_jobs(session, new, f"opted_out:{new.status}", known)
