"""The retention purge: deletes what the schedule says is no longer needed (P3, P4, invariant 4).

Safety design, in the manner of zulip's retention.py:
- Set-based and chunked: each step selects at most `chunk_size` ids (LIMIT) and deletes them
  with `WHERE id IN (...)`, re-checking the due/held condition in the same transaction; each
  chunk is its own short transaction, committed before the next. Intake only ever inserts
  new rows, so it never waits on more than one chunk (and on PostgreSQL, rows another
  transaction has locked are skipped: FOR UPDATE SKIP LOCKED).
- Crash-safe: every committed chunk is final and the next run simply finds what is still due.
  The run's audit row is updated in each chunk's transaction, so its counts stay exact even
  when the process dies midway (its finished_at then stays empty).
- One at a time: a PostgreSQL advisory lock held on a dedicated connection, or on SQLite an
  flock() on a file beside the database. Both vanish with the process that held them, so a
  killed purge never blocks the next; a second purge returns at once as `locked_out`.
- Held records (an active hold on the submission or on the contact's email hash) are skipped
  by every step.
- No PII anywhere: the audit row, logs and metrics carry counts, kinds and durations only.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Delete,
    Engine,
    Select,
    Update,
    and_,
    any_,
    delete,
    exists,
    func,
    insert,
    literal,
    null,
    or_,
    select,
    text,
    update,
)
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.orm import Session, sessionmaker

from worker import metrics
from worker.db import get_engine, get_sessionmaker
from worker.files import private_dir
from worker.models import (
    Contact,
    ContactStatus,
    EventState,
    Hold,
    JobState,
    ParkedSignup,
    PurgeRun,
    RejectedSignup,
    Submission,
    SubmissionIP,
    Suppression,
    SuppressionReason,
    SyncJob,
    Watermark,
    WebhookEvent,
    utcnow,
)
from worker.retention.schedule import Schedule, get_schedule

log = logging.getLogger(__name__)

#: Ids per transaction: small enough that a chunk commits in milliseconds.
CHUNK_SIZE = 1000
#: Advisory lock class for PostgreSQL ("lspu" packed into a signed 32-bit integer). The lock's
#: second key is the hash of the schema the tables live in: it guards those tables, so two
#: deployments (or test processes) in one database, each in its own schema, do not exclude
#: each other.
PG_LOCK_CLASS = 0x6C73_7075
_PG_LOCK = "(:k, hashtext(current_schema()))"
#: The watermark /metrics and `listsync status` read: the end of the last complete real run.
WATERMARK = "purge_success"
#: Suppression reason for opted-out contacts reduced to their hash.
OPTED_OUT_REASON = SuppressionReason.OPTED_OUT
#: Contact states reduced to a suppression hash once they have no submission left.
REDUCIBLE = (ContactStatus.UNSUBSCRIBED, ContactStatus.CLEANED)

#: The kinds of rows a purge removes, in the order it removes them. Finished sync jobs go
#: before submissions so deleting a submission rarely has a job to set NULL (the costliest
#: foreign-key action); submissions before contacts so a contact whose last submission went
#: in this run is reduced in the same run.
KINDS = (
    "sync_jobs",
    "submissions",
    "ips",
    "webhook_payloads",
    "webhook_events",
    "contacts",
    "purge_runs",
    "parked_signups",
    "rejected_signups",
)

Progress = Callable[[str, int], None]


@dataclass
class PurgeResult:
    cutoff: datetime
    dry_run: bool
    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(KINDS, 0))
    held_skipped: int = 0
    duration_seconds: float = 0.0
    longest_transaction_seconds: float = 0.0
    complete: bool = True  # False: stopped at the time budget; run again to continue
    locked_out: bool = False  # another purge holds the lock; nothing was done
    run_id: int | None = None

    @property
    def total(self) -> int:
        return sum(self.counts.values())


# --- which rows are held ----------------------------------------------------------------


def active_hold(now: datetime) -> ColumnElement[bool]:
    """A hold counts until it is released or its `until` has passed."""
    return and_(Hold.released_at.is_(None), or_(Hold.until.is_(None), Hold.until > now))


def _hash_held(hash_column: Any, now: datetime) -> ColumnElement[bool]:
    return exists().where(active_hold(now), Hold.email_hash == hash_column)


def _submission_held(submission_id: Any, contact_id: Any, now: datetime) -> ColumnElement[bool]:
    by_submission = exists().where(active_hold(now), Hold.submission_id == submission_id)
    by_contact = exists().where(
        active_hold(now), Hold.email_hash == Contact.email_hash, Contact.id == contact_id
    )
    return or_(by_submission, by_contact)


# --- the steps: which rows are due, and how to remove them -------------------------------


@dataclass(frozen=True)
class Step:
    kind: str
    key: Any  # the id column selected in chunks
    due: Callable[[Schedule, datetime], ColumnElement[bool]]
    remove: Callable[[Session, ColumnElement[bool], Schedule, datetime], dict[str, int]]
    #: What a dry run counts for this kind, when the step is not the only one removing it.
    counted: Callable[[Schedule, datetime], ColumnElement[bool]] | None = None

    def select_due(self, schedule: Schedule, now: datetime) -> Select[Any]:
        return select(self.key).where(self.due(schedule, now))


def _due_submission(_: Schedule, now: datetime) -> ColumnElement[bool]:
    # need_until NULL: an "after synced" period that has not started; never due.
    return and_(
        Submission.need_until <= now,
        ~_submission_held(Submission.id, Submission.contact_id, now),
    )


def _remove_submissions(
    session: Session, chunk: ColumnElement[bool], s: Schedule, now: datetime
) -> dict[str, int]:
    # The due condition is checked again in the delete: a hold added since the select wins.
    # IPs go explicitly (not only by cascade) so they are counted.
    doomed = select(Submission.id).where(chunk, _due_submission(s, now))
    ips = _bulk(session, delete(SubmissionIP).where(SubmissionIP.submission_id.in_(doomed)))
    subs = _bulk(session, delete(Submission).where(chunk, _due_submission(s, now)))
    return {"submissions": subs, "ips": ips}


def _due_ip(s: Schedule, now: datetime) -> ColumnElement[bool]:
    submission = Submission.__table__.alias("ip_submission")
    # Past its own retention, never while held. (An IP whose submission is due goes with it,
    # in the submissions step; asking for those here too made this step scan every IP row.)
    return and_(
        SubmissionIP.received_at <= now - s.ip_retention,
        ~exists().where(
            submission.c.id == SubmissionIP.submission_id,
            _submission_held(submission.c.id, submission.c.contact_id, now),
        ),
    )


def _ip_goes(s: Schedule, now: datetime) -> ColumnElement[bool]:
    """Every IP a purge removes: its own step's, and those of due submissions."""
    return or_(
        _due_ip(s, now),
        SubmissionIP.submission_id.in_(select(Submission.id).where(_due_submission(s, now))),
    )


def _remove_ips(
    session: Session, chunk: ColumnElement[bool], s: Schedule, now: datetime
) -> dict[str, int]:
    return {"ips": _bulk(session, delete(SubmissionIP).where(chunk, _due_ip(s, now)))}


def _due_payload(s: Schedule, now: datetime) -> ColumnElement[bool]:
    # Pending events are still to be applied: their payload stays until they are.
    return and_(
        WebhookEvent.received_at <= now - s.webhook_payload_retention,
        WebhookEvent.payload.is_not(None),
        WebhookEvent.state != EventState.PENDING,
        ~_hash_held(WebhookEvent.email_hash, now),
    )


def _remove_payloads(
    session: Session, chunk: ColumnElement[bool], s: Schedule, now: datetime
) -> dict[str, int]:
    # null(): SQL NULL rather than the JSON value null, so `payload IS NULL` finds it.
    stmt = update(WebhookEvent).where(chunk, _due_payload(s, now)).values(payload=null())
    return {"webhook_payloads": _bulk(session, stmt)}


def _due_event(s: Schedule, now: datetime) -> ColumnElement[bool]:
    # The whole row, dedupe key included: Mailchimp retries a delivery for about 75 minutes,
    # so a redelivery of an event this old does not come, and applying one would be stale.
    return and_(
        WebhookEvent.received_at <= now - s.webhook_event_retention,
        WebhookEvent.state != EventState.PENDING,
        ~_hash_held(WebhookEvent.email_hash, now),
    )


def _remove_events(
    session: Session, chunk: ColumnElement[bool], s: Schedule, now: datetime
) -> dict[str, int]:
    return {"webhook_events": _bulk(session, delete(WebhookEvent).where(chunk, _due_event(s, now)))}


def _due_job(s: Schedule, now: datetime) -> ColumnElement[bool]:
    finished = and_(
        SyncJob.state.in_([JobState.DONE, JobState.SUPPRESSED]),
        SyncJob.finished_at <= now - s.finished_job_retention,
    )
    failed = and_(
        SyncJob.state == JobState.FAILED, SyncJob.finished_at <= now - s.failed_job_retention
    )
    return and_(or_(finished, failed), ~_hash_held(SyncJob.email_hash, now))


def _remove_jobs(
    session: Session, chunk: ColumnElement[bool], s: Schedule, now: datetime
) -> dict[str, int]:
    return {"sync_jobs": _bulk(session, delete(SyncJob).where(chunk, _due_job(s, now)))}


def _due_contact(s: Schedule, now: datetime) -> ColumnElement[bool]:
    return and_(
        Contact.status.in_(REDUCIBLE),
        Contact.status_changed_at <= now - s.opted_out_contact_retention,
        ~exists().where(Submission.contact_id == Contact.id),
        ~_hash_held(Contact.email_hash, now),
    )


def _remove_contacts(
    session: Session, chunk: ColumnElement[bool], s: Schedule, now: datetime
) -> dict[str, int]:
    # The hash stays so the opt-out is still honoured; everything else about them goes.
    when = literal(now, Suppression.created_at.type)
    session.execute(
        insert(Suppression).from_select(
            ["email_hash", "reason", "created_at"],
            select(Contact.email_hash, literal(OPTED_OUT_REASON), when).where(
                chunk,
                _due_contact(s, now),
                ~exists().where(Suppression.email_hash == Contact.email_hash),
            ),
        )
    )
    return {"contacts": _bulk(session, delete(Contact).where(chunk, _due_contact(s, now)))}


def _due_run(s: Schedule, now: datetime) -> ColumnElement[bool]:
    return PurgeRun.started_at <= now - s.purge_run_retention


def _remove_runs(
    session: Session, chunk: ColumnElement[bool], s: Schedule, now: datetime
) -> dict[str, int]:
    return {"purge_runs": _bulk(session, delete(PurgeRun).where(chunk, _due_run(s, now)))}


def _due_parked(s: Schedule, now: datetime) -> ColumnElement[bool]:
    return and_(
        ParkedSignup.parked_at <= now - s.parked_signup_retention,
        ~_hash_held(ParkedSignup.email_hash, now),
    )


def _remove_parked(
    session: Session, chunk: ColumnElement[bool], s: Schedule, now: datetime
) -> dict[str, int]:
    stmt = delete(ParkedSignup).where(chunk, _due_parked(s, now))
    return {"parked_signups": _bulk(session, stmt)}


def _due_rejected(s: Schedule, now: datetime) -> ColumnElement[bool]:
    return RejectedSignup.received_at <= now - s.rejected_signup_retention


def _remove_rejected(
    session: Session, chunk: ColumnElement[bool], s: Schedule, now: datetime
) -> dict[str, int]:
    stmt = delete(RejectedSignup).where(chunk, _due_rejected(s, now))
    return {"rejected_signups": _bulk(session, stmt)}


STEPS = (
    Step("sync_jobs", SyncJob.id, _due_job, _remove_jobs),
    Step("submissions", Submission.id, _due_submission, _remove_submissions),
    Step("ips", SubmissionIP.submission_id, _due_ip, _remove_ips, counted=_ip_goes),
    Step("webhook_payloads", WebhookEvent.id, _due_payload, _remove_payloads),
    Step("webhook_events", WebhookEvent.id, _due_event, _remove_events),
    Step("contacts", Contact.id, _due_contact, _remove_contacts),
    Step("purge_runs", PurgeRun.id, _due_run, _remove_runs),
    Step("parked_signups", ParkedSignup.id, _due_parked, _remove_parked),
    Step("rejected_signups", RejectedSignup.id, _due_rejected, _remove_rejected),
)


def _bulk(session: Session, stmt: Delete | Update) -> int:
    """Run a set-based DELETE or UPDATE and return how many rows it changed.

    The purge's sessions hold no objects of the tables they delete from, so there is nothing
    to synchronize; by default SQLAlchemy would add RETURNING and walk every deleted id in
    Python, a fifth of the purge's CPU."""
    result = session.execute(stmt.execution_options(synchronize_session=False))
    return max(int(getattr(result, "rowcount", 0) or 0), 0)


# --- counting (dry runs, progress totals) ------------------------------------------------


def count_due(session: Session, schedule: Schedule, now: datetime) -> dict[str, int]:
    """How many rows of each kind a purge at `now` would remove."""
    counts: dict[str, int] = {}
    for step in STEPS:
        counted = step.counted or step.due
        sub = select(step.key).where(counted(schedule, now)).subquery()
        counts[step.kind] = int(session.scalar(select(func.count()).select_from(sub)) or 0)
    return counts


def count_held(session: Session, now: datetime) -> int:
    """Submissions that are due but kept by a hold."""
    stmt = select(func.count(Submission.id)).where(
        Submission.need_until <= now,
        _submission_held(Submission.id, Submission.contact_id, now),
    )
    return int(session.scalar(stmt) or 0)


def due_between(session: Session, start: datetime, end: datetime) -> int:
    """Submissions whose need date falls in (start, end] (for `retention show`)."""
    stmt = select(func.count(Submission.id)).where(
        Submission.need_until > start, Submission.need_until <= end
    )
    return int(session.scalar(stmt) or 0)


# --- the lock ---------------------------------------------------------------------------


@contextlib.contextmanager
def purge_lock(engine: Engine) -> Iterator[bool]:
    """Yields True when this process holds the purge lock, False when another one does."""
    if engine.dialect.name == "postgresql":
        with engine.connect() as conn:
            got = bool(
                conn.scalar(text(f"SELECT pg_try_advisory_lock{_PG_LOCK}"), {"k": PG_LOCK_CLASS})
            )
            conn.commit()  # a session-level lock: no transaction left open meanwhile
            try:
                yield got
            finally:
                if got:
                    conn.scalar(text(f"SELECT pg_advisory_unlock{_PG_LOCK}"), {"k": PG_LOCK_CLASS})
                    conn.commit()
        return
    with open(_sqlite_lock_path(engine), "a+b") as handle:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def _sqlite_lock_path(engine: Engine) -> Path:
    database = engine.url.database
    if database and database != ":memory:":
        return Path(database + ".purge-lock")
    from config import get_settings

    var_dir = private_dir(get_settings().var_dir, narrow=True)
    return var_dir / f"purge-{os.getuid()}.lock"


# --- the run ----------------------------------------------------------------------------


def purge(
    *,
    dry_run: bool = False,
    now: datetime | None = None,
    chunk_size: int = CHUNK_SIZE,
    time_budget_seconds: float | None = None,
    progress: Progress | None = None,
    url: str | None = None,
) -> PurgeResult:
    """Run one purge (or count it, with dry_run). Commits chunk by chunk.

    With a time budget the run stops after the chunk that crosses it and returns
    complete=False; the caller runs it again to continue (the Celery task re-queues itself).
    """
    schedule = get_schedule()
    sessions = get_sessionmaker(url)
    now = now or utcnow()
    started = time.monotonic()
    result = PurgeResult(cutoff=now, dry_run=dry_run)

    if dry_run:
        with sessions() as session:
            result.counts = count_due(session, schedule, now)
            result.held_skipped = count_held(session, now)
            for kind, n in result.counts.items():
                if progress is not None:
                    progress(kind, n)
            result.duration_seconds = time.monotonic() - started
            result.run_id = _write_run(session, result, now)
            session.commit()
        return result

    with purge_lock(get_engine(url)) as got:
        if not got:
            log.info("purge: another purge is running; nothing to do")
            result.locked_out = True
            return result
        _Run(
            sessions, schedule, now, chunk_size, time_budget_seconds, progress, result, started
        ).run()
    return result


@dataclass
class _Run:
    """One real purge run: what every step and chunk of it needs."""

    sessions: sessionmaker[Session]
    schedule: Schedule
    now: datetime
    chunk_size: int
    budget: float | None  # seconds
    progress: Progress | None
    result: PurgeResult
    started: float  # time.monotonic() at the start

    def run(self) -> None:
        result = self.result
        with self.sessions() as session:
            result.held_skipped = count_held(session, self.now)
            result.run_id = _write_run(session, result, self.now)
            session.commit()
        try:
            # One session (one pooled connection) for the whole run; each chunk commits its
            # own transaction.
            with self.sessions() as session:
                for step in STEPS:
                    if not self.step(session, step):
                        result.complete = False
                        break
        except Exception as exc:
            self.finish(error=type(exc).__name__)
            raise
        self.finish(error=None)

    def finish(self, error: str | None) -> None:
        """Close the run's audit row; a complete, successful run also sets the watermark."""
        result = self.result
        result.duration_seconds = time.monotonic() - self.started
        finished = utcnow()
        with self.sessions() as session:
            session.execute(
                update(PurgeRun)
                .where(PurgeRun.id == result.run_id)
                .values(
                    finished_at=finished,
                    counts=dict(result.counts),
                    duration_seconds=result.duration_seconds,
                    error=error,
                )
            )
            if error is None and result.complete:
                watermark = session.get(Watermark, WATERMARK)
                if watermark is None:
                    session.add(Watermark(name=WATERMARK, value=finished))
                else:
                    watermark.value = finished
            session.commit()
        log.info(
            "purge: %s in %.1fs (held skipped %d%s)",
            ", ".join(f"{k}={v}" for k, v in result.counts.items()),
            result.duration_seconds,
            result.held_skipped,
            "" if result.complete else "; time budget reached, continuing in a new run",
        )

    def step(self, session: Session, step: Step) -> bool:
        """Purge one kind chunk by chunk until none is due. False: stopped at the budget."""
        result = self.result
        while True:
            tx_started = time.monotonic()
            taken, removed = self.chunk(session, step)
            seconds = time.monotonic() - tx_started
            result.longest_transaction_seconds = max(result.longest_transaction_seconds, seconds)
            log.debug("purge: %s chunk of %d: %s in %.3fs", step.kind, taken, removed, seconds)
            for kind, n in removed.items():
                if n:
                    metrics.incr("purged_rows_total", amount=n, kind=kind)
                if self.progress is not None:
                    self.progress(kind, n)
            if taken < self.chunk_size:
                return True
            # Checked after a chunk, so every run makes progress however small the budget.
            if self.budget is not None and time.monotonic() - self.started >= self.budget:
                return False

    def chunk(self, session: Session, step: Step) -> tuple[int, dict[str, int]]:
        """One transaction: take up to `chunk_size` due ids of `step`, remove them, and add
        their counts to the run's audit row in the same commit. Returns (ids taken, removed)."""
        postgres = session.get_bind().dialect.name == "postgresql"
        stmt = step.select_due(self.schedule, self.now).limit(self.chunk_size)
        if postgres:
            # A chunk lost in a database crash is purged again by the next run (its audit
            # counts roll back with it), so its commit need not wait for the disk; the run's
            # final, synchronous commit (finish) makes every chunk before it durable.
            session.execute(text("SET LOCAL synchronous_commit = off"))
            # Rows another transaction holds (a flush setting need_until) wait for the next
            # chunk or run rather than stall either side.
            stmt = stmt.with_for_update(of=step.key.table, skip_locked=True)
        ids = list(session.scalars(stmt))
        chunk = _among(step.key, ids, postgres)
        removed = step.remove(session, chunk, self.schedule, self.now) if ids else {}
        counts = self.result.counts
        for kind, n in removed.items():
            counts[kind] += n
        session.execute(
            update(PurgeRun).where(PurgeRun.id == self.result.run_id).values(counts=dict(counts))
        )
        session.commit()
        return len(ids), removed


def _among(key: Any, ids: list[Any], postgres: bool) -> ColumnElement[bool]:
    """`key IN ids`. On PostgreSQL as `key = ANY(:array)`: one parameter instead of a
    thousand, which SQLAlchemy and psycopg would otherwise render into each statement anew."""
    if postgres:
        return key == any_(literal(ids, ARRAY(key.type)))
    return key.in_(ids)


def _write_run(session: Session, result: PurgeResult, now: datetime) -> int:
    run = PurgeRun(
        started_at=now,
        cutoff=result.cutoff,
        dry_run=result.dry_run,
        counts=dict(result.counts),
        held_skipped=result.held_skipped,
        duration_seconds=result.duration_seconds if result.dry_run else None,
        finished_at=now if result.dry_run else None,
    )
    session.add(run)
    session.flush()
    return run.id
