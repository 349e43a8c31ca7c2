"""Erasure removes exactly the person's rows, counts them exactly, and queues both deletes:
people created before and after them (lower and higher ids) keep everything they have."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import func, select, update

from tests.retention.conftest import T0, Rows
from tests.retention.test_rights import EMAIL, HASH, audit
from worker.addresses import email_hash
from worker.models import (
    Contact,
    JobKind,
    JobState,
    Submission,
    SubmissionIP,
    Suppression,
    SyncJob,
    WebhookEvent,
)
from worker.rights import erase

DAY = timedelta(days=1)


def everything_of(rows: Rows, email: str, *, ip: str) -> None:
    """A person with one of each row an erasure touches."""
    from worker.signups.message import build_message
    from worker.signups.parked import park

    contact = rows.contact(email, FNAME="Someone")
    subs = [rows.submission(contact, need_until=T0 + 3650 * DAY, ip=f"{ip}{n}") for n in range(2)]
    rows.event(email, T0)
    pending = rows.job(email, state=JobState.PENDING, finished_at=None, contact_id=contact)
    with rows.session() as s:  # the signup's job points at its submission
        s.execute(update(SyncJob).where(SyncJob.id == pending).values(submission_id=subs[0]))
        s.commit()
    rows.job(email, state=JobState.IN_FLIGHT, finished_at=None, kind=JobKind.UPDATE)
    rows.job(email, state=JobState.DONE, contact_id=contact)
    park(build_message(email, "survey"), error="x", attempts=0, channel="queue")


def rows_of(rows: Rows, email: str) -> dict[str, object]:
    from worker.models import ParkedSignup

    key = email_hash(email)
    with rows.session() as s:
        contact = s.scalar(select(Contact).where(Contact.email_hash == key))
        subs = list(
            s.scalars(select(Submission.id).where(Submission.contact_id == contact.id))
            if contact is not None
            else []
        )
        return {
            "contact": None if contact is None else (contact.id, contact.merge_fields),
            "submissions": subs,
            "ips": list(
                s.scalars(select(SubmissionIP.ip).where(SubmissionIP.submission_id.in_(subs)))
            ),
            "payloads": s.scalar(
                select(func.count())
                .select_from(WebhookEvent)
                .where(WebhookEvent.email_hash == key, WebhookEvent.payload.is_not(None))
            ),
            "jobs": list(
                s.execute(
                    select(SyncJob.kind, SyncJob.state, SyncJob.submission_id)
                    .where(SyncJob.email_hash == key)
                    .order_by(SyncJob.id)
                )
            ),
            "parked": s.scalar(
                select(func.count()).select_from(ParkedSignup).where(ParkedSignup.email_hash == key)
            ),
            "suppressed": s.get(Suppression, key) is not None,
        }


def test_erase_removes_exactly_this_person_s_rows_and_counts_them(rows: Rows) -> None:
    """People created before and after (lower and higher ids) keep every row they have."""
    from config import get_settings
    from worker.rights import ERASE_AGAIN_MARGIN_SECONDS

    everything_of(rows, "before@example.com", ip="192.0.2.1")
    everything_of(rows, EMAIL, ip="192.0.2.2")
    everything_of(rows, "after@example.com", ip="192.0.2.3")
    others = {e: rows_of(rows, e) for e in ("before@example.com", "after@example.com")}
    with rows.session() as s:
        report = erase(s, EMAIL, "request 2026-18", now=T0)
        s.commit()
    assert {e: rows_of(rows, e) for e in others} == others
    assert rows_of(rows, EMAIL) == {
        "contact": None,
        "submissions": [],
        "ips": [],
        "payloads": 0,
        "jobs": [
            (JobKind.UPSERT, JobState.SUPPRESSED, None),
            (JobKind.UPDATE, JobState.SUPPRESSED, None),
            (JobKind.UPSERT, JobState.DONE, None),
            (JobKind.ERASE, JobState.PENDING, None),
            (JobKind.ERASE, JobState.PENDING, None),
        ],
        "parked": 0,
        "suppressed": True,
    }
    assert (report.submissions, report.ips, report.parked) == (2, 2, 1)
    assert (report.jobs_suppressed, report.payloads_dropped) == (2, 1)
    again = T0 + timedelta(
        seconds=get_settings().sync_in_flight_timeout_seconds + ERASE_AGAIN_MARGIN_SECONDS
    )
    with rows.session() as s:
        first = s.get(SyncJob, report.sync_job_id)
        second = s.get(SyncJob, report.erase_again_job_id)
        assert first is not None and second is not None
        assert (first.next_attempt_at, second.next_attempt_at) == (T0, again)
    entry = audit(rows)[-1]
    assert (entry.action, entry.subject) == ("erase", HASH)
    assert entry.detail == {
        "reason": "request 2026-18",
        "submissions": 2,
        "ips": 2,
        "parked": 1,
        "jobs_suppressed": 2,
        "first_sync_job_id": report.sync_job_id,
        "sync_job_id": report.erase_again_job_id,
    }


def test_erase_of_an_address_with_no_contact_counts_no_submissions(rows: Rows) -> None:
    from worker.signups.message import build_message
    from worker.signups.parked import park

    park(build_message(EMAIL, "survey"), error="x", attempts=0, channel="queue")
    with rows.session() as s:
        report = erase(s, EMAIL, "request", now=T0)
        s.commit()
    assert (report.submissions, report.ips, report.parked, report.jobs_suppressed) == (0, 0, 1, 0)
