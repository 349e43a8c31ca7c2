"""Races around an erasure and a re-confirmation, with the emulator over real HTTP, a real
Celery worker, and each database: a call already out when the person is erased, a message
dated before the erasure, an opt-out overtaking a re-confirmation."""

from __future__ import annotations

from sqlalchemy import select, update

from tests.conftest import Audience
from tests.helpers import wait_for
from worker.addresses import email_hash
from worker.db import session_scope
from worker.models import AuditEntry, JobKind, JobState, SyncJob, utcnow
from worker.signups import flush as sync


def jobs_of(email: str) -> list[SyncJob]:
    with session_scope() as session:
        return list(
            session.scalars(
                select(SyncJob).where(SyncJob.email_hash == email_hash(email)).order_by(SyncJob.id)
            )
        )


def erase_audit(email: str) -> list[object]:
    with session_scope() as session:
        return [
            e.detail["outcome"]
            for e in session.scalars(
                select(AuditEntry)
                .where(AuditEntry.action == "erase_delete", AuditEntry.subject == email_hash(email))
                .order_by(AuditEntry.id)
            )
        ]


def flushed_until(done: object) -> bool:
    sync.flush()
    return bool(done())  # type: ignore[operator]


def test_a_call_in_flight_at_the_erasure_is_deleted_again_once_it_has_landed(
    audience: Audience, celery_worker: object
) -> None:
    from config import get_settings
    from worker.publish import enqueue_signup
    from worker.rights import erase

    email = "late.lander@trust.org"
    # Every batch-subscribe attempt times out on our side (client timeout 2 s) and is held
    # by the emulator, then applied: it lands after the client gave up.
    audience.emu.set_faults(timeout_hold_s=4)
    audience.emu.script_failures(
        "timeout", count=3, path=f"/3.0/lists/{audience.list_id}", method="POST"
    )
    enqueue_signup(email, "newsletter_signup")
    upsert = wait_for(
        lambda: [j for j in jobs_of(email) if j.state == JobState.IN_FLIGHT], timeout=30
    )[0]
    wait_for(lambda: audience.emu.counters()["in_flight"] >= 1)

    erased_at = utcnow()
    with session_scope() as session:
        erase(session, email, "request 31")
    stopped = {j.id: j for j in jobs_of(email)}[upsert.id]
    assert (stopped.state, stopped.outcome) == (JobState.SUPPRESSED, "erased")

    # The first delete goes now, while the create is still on its way: Mailchimp holds no
    # such member yet.
    def first_delete_done() -> bool:
        return any(j.kind == JobKind.ERASE and j.state == JobState.DONE for j in jobs_of(email))

    wait_for(lambda: flushed_until(first_delete_done))
    assert erase_audit(email) == ["not_found"]
    # The held call lands and creates the member; the worker's flush returns and records
    # nothing onto the stopped job.
    wait_for(lambda: audience.status(email) == "subscribed", timeout=30)
    wait_for(lambda: audience.emu.counters()["in_flight"] == 0, timeout=30)
    wait_for(lambda: jobs_of(email)[0].state != JobState.IN_FLIGHT, timeout=30)
    assert {j.id: j for j in jobs_of(email)}[upsert.id].outcome == "erased"

    # The erasure's second delete is due once any call out at the erasure has landed.
    waiting = [j for j in jobs_of(email) if j.kind == JobKind.ERASE and j.state == "pending"]
    timeout = get_settings().sync_in_flight_timeout_seconds
    assert all((j.next_attempt_at - erased_at).total_seconds() > timeout for j in waiting)
    with session_scope() as session:  # its time has come
        session.execute(
            update(SyncJob)
            .where(SyncJob.id.in_([j.id for j in waiting]))
            .values(next_attempt_at=utcnow())
        )
    wait_for(
        lambda: flushed_until(lambda: all(j.state != JobState.PENDING for j in jobs_of(email)))
    )
    assert audience.status(email) in (None, "forgotten")
    assert erase_audit(email) == ["not_found", "deleted"]
    assert all(j.state != JobState.PENDING for j in jobs_of(email))


def test_an_undated_queued_message_never_brings_an_erased_person_back(
    audience: Audience, celery_worker: object
) -> None:
    from worker.app import app
    from worker.models import Contact, RejectedSignup
    from worker.publish import RECEIVE_TASK, enqueue_signup
    from worker.rights import erase
    from worker.signups.store import UNDATED_AFTER_ERASURE

    email = "gone.for.good@trust.org"

    def contacts() -> int:
        with session_scope() as session:
            found = session.scalars(select(Contact).where(Contact.email_hash == email_hash(email)))
            return len(found.all())

    def rejections() -> list[str]:
        with session_scope() as session:
            return [r.reason for r in session.scalars(select(RejectedSignup))]

    enqueue_signup(email, "newsletter_signup")
    wait_for(contacts, timeout=30)
    with session_scope() as session:
        erase(session, email, "request 32")
    # Published without a date before the erasure, delivered after it (a redelivery, a
    # republish): as the broker hands it over, it cannot be told from a new one.
    undated = {"v": 1, "email": email, "form": "newsletter_signup"}
    app.send_task(RECEIVE_TASK, kwargs={"message": undated}, queue="signups")
    reasons = wait_for(rejections, timeout=30)
    assert reasons == [f"submitted_at: {UNDATED_AFTER_ERASURE}"]
    assert contacts() == 0
    # A signup dated after the erasure is a new one, and is stored (its sync stays off).
    enqueue_signup(email, "newsletter_signup")
    wait_for(contacts, timeout=30)


def test_a_reconfirmation_is_not_sent_over_an_opt_out_newer_than_the_consent(
    audience: Audience, db: str, monkeypatch: object
) -> None:
    from datetime import timedelta

    import pytest

    from config import get_settings
    from worker.models import OPTOUT_RACED, Contact, ContactStatus
    from worker.signups.message import build_message
    from worker.signups.store import receive

    assert isinstance(monkeypatch, pytest.MonkeyPatch)
    monkeypatch.setenv("LISTSYNC_RESUBSCRIBE_WITH_CONFIRMATION", "true")
    get_settings.cache_clear()
    email = "not.again@trust.org"
    with session_scope() as session:
        session.add(
            Contact(
                email=email,
                email_hash=email_hash(email),
                status=ContactStatus.UNSUBSCRIBED,
                status_changed_at=utcnow() - timedelta(days=1),
            )
        )
    consent = utcnow()
    job_id = receive(
        build_message(email, "newsletter_signup", submitted_at=consent), channel="queue"
    )
    # The person opts out again at Mailchimp after that consent; its webhook is not here yet.
    later = (consent + timedelta(seconds=2)).isoformat()
    audience.emu.seed_member(email, "unsubscribed", last_changed=later, list_id=audience.list_id)
    sync.flush()
    (job,) = [j for j in jobs_of(email) if j.id == job_id.sync_job_id]
    assert (job.state, job.outcome) == (JobState.SUPPRESSED, OPTOUT_RACED)
    assert audience.status(email) == "unsubscribed"
    assert "PUT /lists/{list_id}/members/{subscriber_hash}" not in audience.emu.counters()["calls"]
