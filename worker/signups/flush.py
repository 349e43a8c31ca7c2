"""The outbox flush: claim due sync jobs, send them to Mailchimp, record each outcome.

Three short steps, never holding a database transaction open across a Mailchimp call:
claim (pending → in_flight, `FOR UPDATE SKIP LOCKED` on PostgreSQL; on SQLite the claim is a
single write statement, and SQLite admits one writer at a time), plan and send (the opt-out
guard decides, then one PUT for one member or batch-subscribe for many), record (done,
suppressed, back to pending with a later `next_attempt_at`, or failed after the retry window).

Invariant 2 lives in `plan`: a contact that is unsubscribed, cleaned or erased locally, or
whose hash is suppressed, is never sent; an existing member is never sent a `status`.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from functools import partial

from sqlalchemy import CursorResult, and_, func, or_, select, update
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

from config import get_settings
from worker import metrics, publish
from worker.db import session_scope
from worker.feeds.check import HELD_PREFIX, current_held_forms, run_check
from worker.feeds.member import Feed, Unresolved, feed_of
from worker.feeds.member import merged as merged_feeds
from worker.feeds.schema import AudienceSchema, current_schema
from worker.forms import Form, get_forms
from worker.mailchimp import (
    BatchMember,
    Gateway,
    MailchimpError,
    MemberExtras,
    MemberResult,
    get_gateway,
)
from worker.models import (
    OPTED_OUT,
    OPTOUT_RACED,
    RECONFIRM_SENT,
    AuditEntry,
    ChangeSource,
    Contact,
    ContactStatus,
    JobKind,
    JobState,
    Submission,
    Suppression,
    SuppressionReason,
    SyncJob,
    utcnow,
)

log = logging.getLogger(__name__)

#: A flush stops making calls after this long (or half the in-flight timeout, if less) and
#: hands the rest back to pending, so the sweep never rescues jobs still being worked.
FLUSH_BUDGET_SECONDS = 60.0
#: Retry waits after transient failures: 30 s doubling to at most 30 min, with jitter.
BACKOFF_FIRST_SECONDS = 30.0
BACKOFF_MAX_SECONDS = 1800.0
#: Statuses a successful sync may mirror locally; opt-outs are only ever set, never undone.
MIRRORABLE = frozenset(
    {ContactStatus.NEW, ContactStatus.SUBSCRIBED, ContactStatus.PENDING, ContactStatus.ARCHIVED}
)
#: Member statuses of someone receiving the newsletter (or about to): the only members a
#: flush adds groups, language, permissions and tags to after the fact.
RECEIVING = frozenset({ContactStatus.SUBSCRIBED, ContactStatus.PENDING})
#: Member statuses a flush copies onto such a contact.
MIRRORED_STATUSES = frozenset(
    {
        ContactStatus.SUBSCRIBED,
        ContactStatus.PENDING,
        ContactStatus.ARCHIVED,
        ContactStatus.UNSUBSCRIBED,
        ContactStatus.CLEANED,
    }
)


@dataclass
class FlushReport:
    claimed: int = 0
    done: int = 0
    suppressed: int = 0
    retry: int = 0
    failed: int = 0
    calls: int = 0


@dataclass
class Outcome:
    state: JobState | None  # None: transient, back to pending
    reason: str
    member_status: str | None = None


@dataclass
class Send:
    """One member to send, and the jobs its outcome settles."""

    email_hash: str
    email: str
    merge_fields: dict[str, str]
    job_ids: list[int] = field(default_factory=list)
    resubscribe: bool = False
    #: Never synced (local status `new`): may go into a batch subscribe.
    is_new: bool = True
    #: What the signups' forms add to the write (tags, groups, language, permissions).
    feeds: list[Feed] = field(default_factory=list)
    #: The contact's latest consent (a re-confirmation is sent only for a newer one).
    consent_at: datetime | None = None

    @property
    def feed(self) -> Feed:
        return merged_feeds(self.feeds)


@dataclass
class Plan:
    upserts: dict[str, Send] = field(default_factory=dict)  # by email hash
    updates: dict[str, Send] = field(default_factory=dict)
    erases: dict[str, list[int]] = field(default_factory=dict)
    optouts: dict[str, list[int]] = field(default_factory=dict)  # opt-outs to restore
    settled: dict[int, Outcome] = field(default_factory=dict)  # decided without a call
    #: Jobs whose form names a group or permission the audience lacks: job id -> code.
    unresolved: dict[int, str] = field(default_factory=dict)
    #: The global opt-in rule for forms without their own: LISTSYNC_DOUBLE_OPTIN, else the
    #: audience's setting as last read; None: ask Mailchimp.
    double_optin: bool | None = None


# --- claim ------------------------------------------------------------------------------


def claim(session: Session, limit: int, now: datetime, held: Collection[str] = ()) -> list[int]:
    """Move up to `limit` due pending jobs to in_flight; returns their ids. The upserts of
    `held` forms (their feed disagrees with the audience: worker/feeds/check.py) wait.

    Two statements on purpose: PostgreSQL may re-run an `IN (SELECT ... LIMIT n FOR UPDATE
    SKIP LOCKED)` subquery per row and so claim far more than n. The ids are locked by the
    select; the update re-checks the state, which is what keeps two SQLite claimers (which
    ignore FOR UPDATE, but write one at a time) from claiming the same job.
    """
    stmt = select(SyncJob.id).where(
        SyncJob.state == JobState.PENDING, SyncJob.next_attempt_at <= now
    )
    if held:
        held_submissions = select(Submission.id).where(Submission.form.in_(held))
        stmt = stmt.where(
            or_(SyncJob.kind != JobKind.UPSERT, ~SyncJob.submission_id.in_(held_submissions))
        )
    due = session.scalars(
        stmt.order_by(SyncJob.next_attempt_at, SyncJob.id)
        .limit(limit)
        .with_for_update(skip_locked=True)
    ).all()
    if not due:
        return []
    claimed = session.scalars(
        update(SyncJob)
        .where(SyncJob.id.in_(due), SyncJob.state == JobState.PENDING)
        .values(state=JobState.IN_FLIGHT, claimed_at=now, attempts=SyncJob.attempts + 1)
        .returning(SyncJob.id)
        .execution_options(synchronize_session=False)
    ).all()
    return list(claimed)


# --- plan: the opt-out guard ------------------------------------------------------------


def contacts_of(session: Session, jobs: Sequence[SyncJob]) -> Callable[[SyncJob], Contact | None]:
    """Each job's contact, by id first: a change of address applied while a job was in
    flight re-keys the contact (and its pending jobs), not the job being worked on."""
    ids = {job.contact_id for job in jobs if job.contact_id is not None}
    hashes = {job.email_hash for job in jobs}
    found = list(
        session.scalars(select(Contact).where(Contact.id.in_(ids) | Contact.email_hash.in_(hashes)))
    )
    by_id = {c.id: c for c in found}
    by_hash = {c.email_hash: c for c in found}

    def contact_of(job: SyncJob) -> Contact | None:
        if job.contact_id is not None and job.contact_id in by_id:
            return by_id[job.contact_id]
        return by_hash.get(job.email_hash)

    return contact_of


def plan(
    session: Session,
    job_ids: Sequence[int],
    resubscribe_allowed: bool,
    schema: AudienceSchema | None = None,
) -> Plan:
    """Decide what to send for each claimed job. Pure reads; no call is made here."""
    jobs = session.scalars(select(SyncJob).where(SyncJob.id.in_(job_ids))).all()
    contact_of = contacts_of(session, jobs)
    submitted = {
        sid: (form, fields)
        for sid, form, fields in session.execute(
            select(Submission.id, Submission.form, Submission.fields).where(
                Submission.id.in_({j.submission_id for j in jobs if j.submission_id is not None})
            )
        )
    }
    forms = get_forms()
    hashes = {job.email_hash for job in jobs}
    hashes |= {c.email_hash for c in map(contact_of, jobs) if c is not None}
    erased = set(
        session.scalars(
            select(Suppression.email_hash).where(
                Suppression.email_hash.in_(hashes), Suppression.reason == SuppressionReason.ERASED
            )
        )
    )
    settings = get_settings()
    allowed_tags = settings.merge_fields
    out = Plan()
    out.double_optin = settings.double_optin
    if out.double_optin is None and schema is not None:
        out.double_optin = schema.double_optin
    for job in jobs:
        contact = contact_of(job)
        if job.kind == JobKind.ERASE:
            out.erases.setdefault(job.email_hash, []).append(job.id)
            continue
        if job.kind == JobKind.OPTOUT:
            out.optouts.setdefault(job.email_hash, []).append(job.id)
            continue
        if job.email_hash in erased or (contact is not None and contact.email_hash in erased):
            out.settled[job.id] = Outcome(JobState.SUPPRESSED, "suppressed_hash")
            continue
        if contact is None:
            out.settled[job.id] = Outcome(JobState.SUPPRESSED, "contact_gone")
            continue
        key = contact.email_hash  # the person's address now, should it have changed
        merge = {k: v for k, v in contact.merge_fields.items() if k in allowed_tags}
        if job.kind == JobKind.UPDATE:
            send = out.updates.setdefault(key, Send(key, contact.email, merge))
            send.job_ids.append(job.id)
            continue
        resubscribe = False
        if contact.status in OPTED_OUT:
            resubscribe = (
                resubscribe_allowed
                and contact.status == ContactStatus.UNSUBSCRIBED
                and contact.consent_at is not None
                and contact.consent_at > contact.status_changed_at
            )
            if not resubscribe:
                out.settled[job.id] = Outcome(JobState.SUPPRESSED, f"opted_out:{contact.status}")
                continue
        form_name, fields = submitted.get(job.submission_id or 0, ("", {}))
        form = forms.get(form_name)
        feed = None
        if form is not None:
            try:
                feed = feed_of(form, fields, schema)
            except Unresolved as exc:
                out.unresolved[job.id] = exc.code
                continue
        send = out.upserts.setdefault(
            key, Send(key, contact.email, merge, is_new=contact.status == ContactStatus.NEW)
        )
        if form is not None:
            send.merge_fields.update(_defaults(form, contact, allowed_tags))
        if feed is not None:
            send.feeds.append(feed)
        send.resubscribe = send.resubscribe or resubscribe
        send.consent_at = contact.consent_at
        send.job_ids.append(job.id)
    return out


def _defaults(form: Form, contact: Contact, allowed: Collection[str]) -> dict[str, str]:
    """The form's merge defaults for the fields the person has no value for here: a default
    never overwrites what someone entered."""
    return {
        tag: value
        for tag, value in form.merge_defaults.items()
        if tag in allowed and contact.merge_fields.get(tag) in (None, "")
    }


# --- send -------------------------------------------------------------------------------


def outcome_of(result: MemberResult) -> Outcome:
    """Map one member's result to the state its jobs end in."""
    if result.ok:
        if result.status in ("unsubscribed", "cleaned"):
            # The member exists and opted out: status_if_new left it alone, as it should.
            return Outcome(JobState.SUPPRESSED, f"member_{result.status}", result.status)
        return Outcome(JobState.DONE, f"member_{result.status or 'ok'}", result.status)
    reason = result.reason or "unknown"
    if not result.permanent:
        return Outcome(None, reason)
    if reason == "compliance_state":
        return Outcome(JobState.SUPPRESSED, reason, "unsubscribed")
    if reason == "forgotten":
        return Outcome(JobState.SUPPRESSED, reason)
    return Outcome(JobState.FAILED, reason)


def send(
    gateway: Gateway,
    work: Plan,
    batch_size: int,
    report: FlushReport,
    outcomes: dict[int, Outcome],
) -> None:
    """Make the calls the plan asks for, putting an outcome per job id into `outcomes` as
    each call returns, so that a caller catching an error midway still records what the
    calls made so far achieved."""
    outcomes.update(work.settled)

    started = time.monotonic()
    budget = min(FLUSH_BUDGET_SECONDS, get_settings().sync_in_flight_timeout_seconds / 2)
    outage: str | None = None  # set by the first transient failure: defer the rest

    def settle(job_ids: Iterable[int], outcome: Outcome) -> None:
        nonlocal outage
        for job_id in job_ids:
            outcomes[job_id] = outcome
        if outcome.state is None and outage is None:
            outage = outcome.reason

    def deferred(job_ids: Iterable[int]) -> bool:
        """True (and the jobs back to pending) when this flush should make no more calls:
        Mailchimp just failed transiently, or the flush ran past its budget. Without this
        a flush of 500 single PUTs against a slow Mailchimp would run for hours."""
        reason = outage
        if reason is None and time.monotonic() - started > budget:
            reason = "flush_budget"
        if reason is None:
            return False
        for job_id in job_ids:
            outcomes[job_id] = Outcome(None, reason)
        return True

    def call(job_ids: list[int], make: Callable[[], MemberResult]) -> MemberResult | None:
        """One call for one member, unless the flush is deferring."""
        if deferred(job_ids):
            return None
        report.calls += 1
        result = make()
        settle(job_ids, outcome_of(result))
        return result

    def upsert(s: Send, status_if_new: str, status: str | None = None) -> None:
        """PUT the member (merge fields, status_if_new, and tags, which count only if the PUT
        creates it); then, only once the answer shows it subscribed or pending, its form's
        groups, language and permissions (a PATCH) and the tags it lacks (the tags endpoint).
        A member who opted out in Mailchimp, which the PUT is how we may first learn, gets
        nothing more."""
        tags_only = MemberExtras(tags=s.feed.extras.tags)
        result = call(
            s.job_ids,
            partial(
                gateway.upsert_member,
                s.email,
                s.merge_fields,
                status_if_new,
                status=status,
                extras=tags_only,
            ),
        )
        if result is None or not result.ok or result.status not in RECEIVING:
            return
        feed = s.feed.extras
        follow_ups: list[Callable[[], MemberResult]] = []
        if feed.profile.body():
            follow_ups.append(partial(gateway.update_member, s.email_hash, {}, feed.profile))
        if missing := [t for t in feed.tags if t not in (result.tags or ())]:
            follow_ups.append(partial(gateway.add_tags, s.email_hash, missing))
        for make in follow_ups:
            # Only a failure changes the jobs' outcome: the PUT's, and the status it learned,
            # stands otherwise.
            if deferred(s.job_ids):
                return
            report.calls += 1
            done = make()
            if not done.ok:
                settle(s.job_ids, outcome_of(done))
                return

    # Only members we never synced go into a batch, even alone (its `status`, tags, groups,
    # language and permissions apply only to members it creates; it never touches one that
    # exists): one Mailchimp already knows gets a PUT with `status_if_new` only, so no call
    # ever sends `status` for an existing member, whatever the batch API does.
    plain = [s for s in work.upserts.values() if not s.resubscribe and s.is_new]
    singles = [s for s in work.upserts.values() if not s.resubscribe and not s.is_new]
    confirm = [s for s in work.upserts.values() if s.resubscribe]
    rule: list[str] = []  # the global rule's status, read from the audience once if needed

    def status_if_new(s: Send) -> str:
        double_optin = s.feed.double_optin
        if double_optin is None:
            double_optin = work.double_optin
        if double_optin is not None:
            return "pending" if double_optin else "subscribed"
        if not rule:
            rule.append(gateway.status_if_new())
        return rule[0]

    if plain:
        for start in range(0, len(plain), batch_size):
            chunk = plain[start : start + batch_size]
            if deferred(j for s in chunk for j in s.job_ids):
                continue
            members = [
                BatchMember(s.email, s.merge_fields, status_if_new(s), s.feed.extras) for s in chunk
            ]
            report.calls += 1
            try:
                batch = gateway.batch_subscribe(members)
            except MailchimpError as exc:
                for s in chunk:
                    settle(s.job_ids, outcome_of(_failed(s, exc)))
                continue
            for s in chunk:
                result = batch.results.get(s.email_hash)
                if result is None or result.exists:
                    # An existing member, or one the batch said nothing about: a PUT with
                    # status_if_new learns its status safely.
                    singles.append(s)
                else:
                    settle(s.job_ids, outcome_of(result))
    for s in singles:
        upsert(s, status_if_new(s))
    for s in confirm:
        # A new, explicit consent after an opt-out, with re-confirmation switched on: ask
        # Mailchimp to email a confirmation. It may refuse; that ends the job suppressed.
        # Read the member first: `status: pending` overwrites whatever it holds, so it is
        # sent only to a member still unsubscribed from before the consent. (An opt-out
        # landing between this read and the write is taken back when its webhook arrives:
        # worker/optouts/apply.py.)
        seen = call(s.job_ids, partial(gateway.read_member, s.email_hash))
        if seen is None or (not seen.ok and seen.reason != "not_found"):
            continue  # deferred, or the read failed: its outcome stands
        if seen.ok and seen.status in ("subscribed", "pending", "cleaned"):
            continue  # nothing to ask (or an opt-out to keep): the read's outcome stands
        if (
            seen.ok
            and seen.last_changed is not None
            and (s.consent_at is None or seen.last_changed > s.consent_at)
        ):
            settle(s.job_ids, Outcome(JobState.SUPPRESSED, OPTOUT_RACED, "unsubscribed"))
            continue
        upsert(s, "pending", status="pending")
        for job_id in s.job_ids:
            sent = outcomes.get(job_id)
            if sent is not None and sent.state == JobState.DONE and sent.member_status == "pending":
                outcomes[job_id] = Outcome(JobState.DONE, RECONFIRM_SENT, "pending")
    for s in work.updates.values():
        call(s.job_ids, partial(gateway.update_member, s.email_hash, s.merge_fields))
    for key, job_ids in work.erases.items():
        call(job_ids, partial(gateway.delete_permanent, key))
    for key, job_ids in work.optouts.items():
        restored = call(job_ids, partial(gateway.unsubscribe_member, key))
        if restored is not None and restored.ok:
            # Done, whatever status the answer shows: no status of it is mirrored here.
            settle(job_ids, Outcome(JobState.DONE, f"restored_{restored.status or 'ok'}"[:32]))


def _failed(s: Send, exc: MailchimpError) -> MemberResult:
    return MemberResult(s.email_hash, ok=False, reason=exc.reason, permanent=exc.permanent)


# --- record -----------------------------------------------------------------------------


def backoff(attempts: int) -> timedelta:
    base = min(BACKOFF_MAX_SECONDS, BACKOFF_FIRST_SECONDS * 2 ** max(0, attempts - 1))
    return timedelta(seconds=base * random.uniform(0.8, 1.2))


def record(
    session: Session, outcomes: dict[int, Outcome], now: datetime, report: FlushReport
) -> None:
    """Write each job's outcome, mirror learned statuses, start retention clocks."""
    window = timedelta(hours=get_settings().sync_retry_window_hours)
    ids = list(outcomes)
    # Lock the jobs before reading them: an erasure or an opt-out may stop a job while its
    # call is out, and what it committed must win over this record. This first write takes
    # the rows' locks on PostgreSQL (the read below then sees the latest version) and the
    # database's write lock on SQLite, whose driver would otherwise read outside the write
    # transaction and write over a commit made in between.
    session.execute(
        update(SyncJob)
        .where(SyncJob.id.in_(ids))
        .values(attempts=SyncJob.attempts)
        .execution_options(synchronize_session=False)
    )
    jobs = session.scalars(select(SyncJob).where(SyncJob.id.in_(ids))).all()
    contact_of = contacts_of(session, jobs)
    finished: dict[int, bool] = {}  # submission id -> synced
    mirror: dict[str, set[int]] = {}  # member status Mailchimp reported -> contact ids
    for job in jobs:
        if job.state != JobState.IN_FLIGHT:
            continue  # rescued by the sweep and finished by another flusher meanwhile
        outcome = outcomes[job.id]
        contact = contact_of(job)
        if outcome.state is None and now - job.created_at < window:
            if contact is not None and job.kind != JobKind.ERASE:
                job.email_hash = contact.email_hash  # follows a change of address
            job.state = JobState.PENDING
            job.next_attempt_at = now + backoff(job.attempts)
            job.last_error = outcome.reason
            report.retry += 1
            continue
        state = outcome.state or JobState.FAILED
        job.state = state
        job.finished_at = now
        # The column holds 32 characters; a longer code (a schema error's field name) must
        # not fail the whole batch's record on PostgreSQL.
        job.outcome = (outcome.reason if outcome.state else f"gave_up:{outcome.reason}")[:32]
        if state == JobState.DONE:
            report.done += 1
        else:
            job.last_error = outcome.reason
            if state == JobState.SUPPRESSED:
                report.suppressed += 1
            else:
                report.failed += 1
        if job.kind == JobKind.ERASE:
            # Each delete of an erasure, audited: `deleted`, `not_found` (Mailchimp held no
            # such member), or why it gave up. The hash only.
            session.add(
                AuditEntry(
                    action="erase_delete",
                    subject=job.email_hash,
                    detail={"sync_job_id": job.id, "outcome": _erase_outcome(outcome)},
                )
            )
        if contact is not None and outcome.member_status in MIRRORED_STATUSES:
            mirror.setdefault(str(outcome.member_status), set()).add(contact.id)
        if job.submission_id is not None:
            finished[job.submission_id] = state == JobState.DONE
    _mirror(session, mirror)
    _start_retention_clocks(session, finished, now)
    for state, count in (
        (JobState.DONE, report.done),
        (JobState.SUPPRESSED, report.suppressed),
        (JobState.FAILED, report.failed),
    ):
        if count:
            metrics.incr("sync_members_total", count, outcome=str(state))


def _erase_outcome(outcome: Outcome) -> str:
    if outcome.state == JobState.DONE and outcome.member_status:
        return outcome.member_status  # deleted, not_found
    return (outcome.reason if outcome.state else f"gave_up:{outcome.reason}")[:32]


def _mirror(session: Session, by_status: dict[str, set[int]]) -> None:
    """Mirror what Mailchimp told us. Opt-outs learned here stick; nothing undoes one.

    A conditional UPDATE, not an assignment to the loaded contact: an opt-out a webhook or
    reconcile committed while this flush was out must not be overwritten by a status read
    before it (the fault drill caught exactly that). status_changed_at is left alone on
    purpose: it orders webhook events, and an opt-out event fired before this call must
    still apply when it arrives late.
    """
    for member_status, contact_ids in by_status.items():
        session.execute(
            update(Contact)
            .where(
                Contact.id.in_(contact_ids),
                Contact.status.in_(MIRRORABLE),
                # Rows already as Mailchimp says are left alone (no new row version).
                or_(Contact.status != member_status, Contact.status_source != ChangeSource.SYNC),
            )
            .values(status=member_status, status_source=ChangeSource.SYNC)
            .execution_options(synchronize_session=False)
        )


def _start_retention_clocks(session: Session, finished: dict[int, bool], now: datetime) -> None:
    """Submissions whose sync job ended: note when they synced, start their retention clock."""
    if not finished:
        return
    for submission in session.scalars(select(Submission).where(Submission.id.in_(finished))):
        if finished[submission.id] and submission.synced_at is None:
            submission.synced_at = now
        submission.sync_ended(now)


# --- the flush, the sweep, failed jobs --------------------------------------------------


def flush(limit: int | None = None) -> FlushReport:
    """Claim, send, record. Returns counts; re-queues itself when more jobs wait."""
    settings = get_settings()
    limit = limit or settings.sync_batch_size
    report = FlushReport()
    publish.FLUSH.clear()
    with session_scope() as session:
        job_ids = claim(session, limit, utcnow(), current_held_forms())
    report.claimed = len(job_ids)
    if not job_ids:
        return report
    if len(job_ids) == limit:
        publish.FLUSH.request(force=True)  # more may be waiting: let another flusher start now
    outcomes: dict[int, Outcome] = {}
    try:
        gateway = get_gateway()
        work = _plan(job_ids, settings.resubscribe_with_confirmation, current_schema())
        if work.unresolved:
            # Never read yet, or a group or permission renamed in Mailchimp since: read the
            # audience again (and check every form against it) before calling it unknown.
            checked = run_check(gateway)
            work = _plan(job_ids, settings.resubscribe_with_confirmation, checked.schema)
            for job_id, code in work.unresolved.items():
                # Mailchimp away: that is the reason, and it passes.
                work.settled[job_id] = Outcome(None, checked.error or f"{HELD_PREFIX}{code}")
        send(gateway, work, settings.sync_batch_size, report, outcomes)
    except Exception as exc:
        # Mailchimp could not be reached at all (audience settings unreadable, cap wait), or
        # anything else went wrong (a bug, Redis away mid-flush): what was sent is recorded,
        # the rest goes back to pending rather than wait in flight for the sweep's timeout.
        if isinstance(exc, MailchimpError):
            reason = exc.reason
        else:  # the type only: exception texts may quote an address
            reason = f"internal:{type(exc).__name__}"[:32]
            log.error("flush: unexpected %s; unsent jobs go back to pending", type(exc).__name__)
        for job_id in job_ids:
            outcomes.setdefault(job_id, Outcome(None, reason))
    counts = replace(report)
    for attempt in range(3):
        try:
            with session_scope() as session:
                record(session, outcomes, utcnow(), report)
            break
        except OperationalError as exc:
            # An opt-out applied at this moment locks its contact, then the job it takes back
            # (worker/optouts/apply.py), the other way round from this record: PostgreSQL may
            # end either as a deadlock. Recording again sees the other's commit.
            if attempt == 2 or getattr(exc.orig, "sqlstate", None) != "40P01":
                raise
            report.__dict__.update(replace(counts).__dict__)
    log.info(
        "flush: claimed=%d done=%d suppressed=%d retry=%d failed=%d calls=%d",
        report.claimed,
        report.done,
        report.suppressed,
        report.retry,
        report.failed,
        report.calls,
    )
    return report


def _plan(job_ids: Sequence[int], resubscribe: bool, schema: AudienceSchema | None) -> Plan:
    with session_scope() as session:
        return plan(session, job_ids, resubscribe, schema)


@dataclass
class SweepReport:
    rescued: int
    due: int


def sweep() -> SweepReport:
    """Put back jobs stuck in_flight (their worker died) and queue a flush for due jobs.

    This is also what recovers jobs whose flush message Redis lost.
    """
    settings = get_settings()
    now = utcnow()
    stuck_before = now - timedelta(seconds=settings.sync_in_flight_timeout_seconds)
    with session_scope() as session:
        rescued = _rowcount(
            session.execute(
                update(SyncJob)
                .where(SyncJob.state == JobState.IN_FLIGHT, SyncJob.claimed_at < stuck_before)
                .values(state=JobState.PENDING, next_attempt_at=now)
                .execution_options(synchronize_session=False)
            )
        )
        due = (
            session.scalar(
                select(func.count()).where(
                    and_(SyncJob.state == JobState.PENDING, SyncJob.next_attempt_at <= now)
                )
            )
            or 0
        )
    if due:
        publish.FLUSH.request(force=True)
    if rescued:
        log.warning("sweep: %d sync jobs were stuck in flight and are pending again", rescued)
    return SweepReport(rescued=rescued, due=due)


def failed_jobs(session: Session, limit: int = 100) -> list[SyncJob]:
    return list(
        session.scalars(
            select(SyncJob)
            .where(SyncJob.state == JobState.FAILED)
            .order_by(SyncJob.id)
            .limit(limit)
        )
    )


def retry_failed(session: Session, job_ids: Sequence[int] | None) -> int:
    """Make failed jobs pending again (all of them when job_ids is None)."""
    stmt = update(SyncJob).where(SyncJob.state == JobState.FAILED)
    if job_ids is not None:
        stmt = stmt.where(SyncJob.id.in_(job_ids))
    now = utcnow()
    result = session.execute(
        stmt.values(
            state=JobState.PENDING,
            next_attempt_at=now,
            created_at=now,  # a replayed job re-enters the outbox with a fresh retry window
            attempts=0,
            finished_at=None,
            outcome=None,
        ).execution_options(synchronize_session=False)
    )
    return _rowcount(result)


def _rowcount(result: object) -> int:
    assert isinstance(result, CursorResult)
    return int(result.rowcount or 0)
