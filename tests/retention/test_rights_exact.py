"""Erasure and correction touch exactly the person's rows: people created before and after
them (lower and higher ids) keep everything they have. Erasure counts what it removed and
queues both deletes."""

from __future__ import annotations

from datetime import timedelta

import pytest
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
from worker.retention.holds import InvalidRequest
from worker.rights import correct, erase

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


def test_a_correction_changes_only_this_person_s_contact_and_submissions(rows: Rows) -> None:
    people = ("before@example.com", EMAIL, "after@example.com")
    retired = {"first_name": "Someone"}
    for email in people:
        contact = rows.contact(email, FNAME="Someone")
        fields = {"first_name": "Someone", "last_name": "Else", "message": "hi"}
        if email == EMAIL:  # first, a submission of a form the site no longer has: left as is
            rows.submission(contact, form="retired_form", fields=retired)
        rows.submission(contact, fields=fields)
    with rows.session() as s:
        job = correct(s, EMAIL, {"FNAME": "Augusta"}, now=T0)
        s.commit()
    with rows.session() as s:
        names = {
            c.email: (c.merge_fields["FNAME"], [sub.fields for sub in subs])
            for c in s.scalars(select(Contact))
            for subs in [
                s.scalars(
                    select(Submission).where(Submission.contact_id == c.id).order_by(Submission.id)
                )
            ]
        }
        queued = s.get(SyncJob, job.id)
        assert queued is not None
        assert (queued.kind, queued.email_hash, queued.next_attempt_at) == (
            JobKind.UPDATE,
            HASH,
            T0,
        )
    corrected = {"first_name": "Augusta", "last_name": "Else", "message": "hi"}
    assert names == {
        "before@example.com": ("Someone", [fields]),
        EMAIL: ("Augusta", [retired, corrected]),
        "after@example.com": ("Someone", [fields]),
    }


def test_only_a_change_of_address_links_an_older_address_to_the_erased_one(rows: Rows) -> None:
    """An event of another type that happens to carry `new_email` (a profile update, or an
    unknown type stored as ignored) is no change of address: the payloads of the address it
    came from are someone else's and stay."""
    person = rows.contact(EMAIL)
    rows.submission(person, need_until=T0)
    stranger = "stranger@example.com"
    with rows.session() as s:
        for n, kind in enumerate(["profile", "campaign", "zz-unknown"]):
            s.add(
                WebhookEvent(
                    dedupe_key=f"not-a-rename-{n}",
                    type=kind,
                    fired_at=T0,
                    email_hash=email_hash(stranger),
                    payload={"data": {"email": stranger, "new_email": EMAIL}},
                    received_at=T0,
                    state="applied",
                )
            )
        # Changes of address that name no old or no new address link nothing either.
        for n, (old_hash, data) in enumerate(
            [(None, {"new_email": EMAIL}), (email_hash(stranger), {"old_email": stranger})]
        ):
            s.add(
                WebhookEvent(
                    dedupe_key=f"half-a-rename-{n}",
                    type="upemail",
                    fired_at=T0,
                    email_hash=old_hash,
                    payload={"data": data},
                    received_at=T0,
                    state="ignored",
                )
            )
        s.commit()
    with rows.session() as s:
        assert erase(s, EMAIL, "request", now=T0).payloads_dropped == 0
        s.commit()
    with rows.session() as s:
        kept = s.scalar(
            select(func.count()).select_from(WebhookEvent).where(WebhookEvent.payload.is_not(None))
        )
    assert kept == 5


def test_a_correction_of_a_field_that_cannot_be_corrected_names_it(rows: Rows) -> None:
    rows.contact(EMAIL)
    for changes in ({"NOPE": "x"}, {"NOPE": "x", "ALSO": "y"}, {"NOPE": "x", "FNAME": "Ada"}):
        with rows.session() as s, pytest.raises(InvalidRequest, match=r"^unknown field 'NOPE'$"):
            correct(s, EMAIL, changes)
    with rows.session() as s, pytest.raises(InvalidRequest, match=r"^nothing to correct$"):
        correct(s, EMAIL, {})
