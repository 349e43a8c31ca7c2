"""The outbox flush against the emulator over real HTTP, with a real Celery worker.

Invariant 2 is the point of most of these: nothing here may re-subscribe anyone.
"""

from __future__ import annotations

import logging
from datetime import timedelta

import pytest
from sqlalchemy import select, update

from tests.conftest import Audience
from tests.helpers import wait_for
from worker.addresses import email_hash
from worker.db import session_scope
from worker.models import Contact, ContactStatus, JobState, SyncJob, utcnow
from worker.signups import flush as sync
from worker.signups.message import build_message
from worker.signups.store import receive


def signup(email: str, form: str = "newsletter_signup", **options: object) -> int:
    result = receive(build_message(email, form, **options), channel="queue")  # type: ignore[arg-type]
    assert result.sync_job_id is not None
    return result.sync_job_id


def erased(email: str) -> None:
    """The address was erased a day ago: only its suppression hash is left."""
    from worker.models import Suppression, SuppressionReason

    with session_scope() as session:
        session.add(
            Suppression(
                email_hash=email_hash(email),
                reason=SuppressionReason.ERASED,
                created_at=utcnow() - timedelta(days=1),
            )
        )


def job(job_id: int) -> SyncJob:
    with session_scope() as session:
        found = session.get(SyncJob, job_id)
        assert found is not None
        return found


def contact_status(email: str) -> str:
    with session_scope() as session:
        contact = session.scalars(
            select(Contact).where(Contact.email_hash == email_hash(email))
        ).one()
        return contact.status


def calls(audience: Audience) -> dict[str, dict[str, int]]:
    return audience.emu.counters()["calls"]


def total_calls(audience: Audience) -> int:
    return sum(sum(v.values()) for v in calls(audience).values())


def test_one_new_signup_becomes_a_subscribed_member_with_one_call(
    audience: Audience, db: str
) -> None:
    job_id = signup("new.person@trust.org", fields={"first_name": "Nia"})
    report = sync.flush()
    assert (report.claimed, report.done, report.calls) == (1, 1, 1)
    assert calls(audience) == {"POST /lists/{list_id}": {"200": 1}}  # a batch of one
    member = audience.member("new.person@trust.org")
    assert member is not None and member["status"] == "subscribed"
    assert member["merge_fields"]["FNAME"] == "Nia"
    assert member.get("ip_signup", "") == "" and member.get("ip_opt", "") == ""
    assert job(job_id).state == JobState.DONE
    assert contact_status("new.person@trust.org") == "subscribed"


def test_the_ip_is_never_sent(audience: Audience, db: str) -> None:
    signup("ip.person@trust.org", ip="198.51.100.7")
    sync.flush()
    member = audience.member("ip.person@trust.org")
    assert member is not None
    assert "198.51.100.7" not in str(member)


def test_double_optin_audience_gets_pending(
    audience: Audience, db: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from config import get_settings
    from worker.cli.processes import emulator_audience

    list_id = audience.emu.create_list(**{**emulator_audience(), "double_optin": True})
    monkeypatch.setenv("LISTSYNC_MAILCHIMP_LIST_ID", list_id)
    get_settings.cache_clear()
    signup("careful@trust.org")
    sync.flush()
    member = audience.emu.member("careful@trust.org", list_id=list_id)
    assert member is not None and member["status"] == "pending"


@pytest.mark.parametrize(
    ("mailchimp_status", "job_state", "local_status"),
    [
        ("subscribed", JobState.DONE, "subscribed"),
        ("unsubscribed", JobState.SUPPRESSED, "unsubscribed"),
        ("cleaned", JobState.SUPPRESSED, "cleaned"),
        ("archived", JobState.DONE, "archived"),
        ("forgotten", JobState.SUPPRESSED, "new"),
    ],
)
def test_existing_member_is_never_resubscribed(
    audience: Audience, db: str, mailchimp_status: str, job_state: JobState, local_status: str
) -> None:
    email = f"existing.{mailchimp_status}@trust.org"
    audience.emu.seed_member(email, mailchimp_status, list_id=audience.list_id)
    job_id = signup(email)
    sync.flush()
    found = job(job_id)
    assert found.state == job_state, found.last_error
    assert audience.status(email) == mailchimp_status
    assert contact_status(email) == local_status


def test_locally_opted_out_contact_is_not_sent_at_all(audience: Audience, db: str) -> None:
    email = "gone@trust.org"
    signup(email)
    sync.flush()
    with session_scope() as session:
        session.execute(update(Contact).values(status=ContactStatus.UNSUBSCRIBED))
    before = total_calls(audience)
    job_id = signup(email, fields={"first_name": "Again"})
    report = sync.flush()
    assert report.calls == 0 and total_calls(audience) == before
    assert job(job_id).state == JobState.SUPPRESSED
    assert job(job_id).last_error == "opted_out:unsubscribed"


def test_resubscribe_with_confirmation_sends_pending_only_for_later_consent(
    audience: Audience, db: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from config import get_settings

    monkeypatch.setenv("LISTSYNC_RESUBSCRIBE_WITH_CONFIRMATION", "true")
    get_settings.cache_clear()
    email = "changed.mind@trust.org"
    audience.emu.seed_member(email, "unsubscribed", list_id=audience.list_id)
    with session_scope() as session:
        session.add(
            Contact(
                email=email,
                email_hash=email_hash(email),
                status=ContactStatus.UNSUBSCRIBED,
                status_changed_at=utcnow() - timedelta(days=1),
            )
        )
    job_id = signup(email)  # consent now, after the opt-out a day ago
    sync.flush()
    assert audience.status(email) == "pending"
    assert job(job_id).state == JobState.DONE


def test_many_waiting_jobs_go_in_one_batch_with_per_member_outcomes(
    audience: Audience, db: str
) -> None:
    audience.emu.seed_member("was.unsub@trust.org", "unsubscribed", list_id=audience.list_id)
    audience.emu.seed_member("was.sub@trust.org", "subscribed", list_id=audience.list_id)
    fresh = [signup(f"batch{i}@trust.org") for i in range(40)]
    unsub = signup("was.unsub@trust.org")
    sub = signup("was.sub@trust.org")
    fake = signup("someone@example.com")
    report = sync.flush()
    assert report.claimed == 43
    assert calls(audience)["POST /lists/{list_id}"] == {"200": 1}  # one batch-subscribe
    assert all(job(j).state == JobState.DONE for j in fresh)
    assert job(unsub).state == JobState.SUPPRESSED
    assert audience.status("was.unsub@trust.org") == "unsubscribed"
    assert job(sub).state == JobState.DONE
    assert job(fake).state == JobState.FAILED and job(fake).last_error == "fake_or_invalid"
    assert audience.status("batch7@trust.org") == "subscribed"


@pytest.mark.parametrize("fault", ["429", "429_empty", "403_empty", "500", "502", "503", "drop"])
def test_transient_fault_puts_the_job_back_then_it_completes(
    audience: Audience, db: str, fault: str
) -> None:
    email = f"fault.{fault}@trust.org"
    job_id = signup(email)
    audience.emu.script_failures(fault, count=10, path="/3.0/lists/*")
    report = sync.flush()
    assert report.retry == 1
    pending = job(job_id)
    assert pending.state == JobState.PENDING and pending.next_attempt_at > utcnow()
    assert pending.last_error and "@" not in pending.last_error
    assert audience.status(email) is None
    audience.emu.reset_faults()
    with session_scope() as session:
        session.execute(update(SyncJob).values(next_attempt_at=utcnow()))
    sync.flush()
    assert job(job_id).state == JobState.DONE
    assert audience.status(email) == "subscribed"


def test_a_read_timeout_is_transient(audience: Audience, db: str) -> None:
    job_id = signup("slow@trust.org")
    audience.emu.set_faults(timeout_hold_s=3)
    audience.emu.script_failures("timeout", count=3, path="/3.0/lists/*")
    sync.flush()
    assert job(job_id).state == JobState.PENDING and job(job_id).last_error == "timeout"


def test_job_fails_visibly_after_the_retry_window(audience: Audience, db: str) -> None:
    job_id = signup("never@trust.org")
    with session_scope() as session:
        session.execute(update(SyncJob).values(created_at=utcnow() - timedelta(hours=49)))
    audience.emu.script_failures("503", count=10)
    sync.flush()
    failed = job(job_id)
    assert failed.state == JobState.FAILED and failed.outcome == "gave_up:server_error"
    with session_scope() as session:
        assert [j.id for j in sync.failed_jobs(session)] == [job_id]
        assert sync.retry_failed(session, None) == 1
    audience.emu.reset_faults()
    sync.flush()
    assert job(job_id).state == JobState.DONE


def test_sweep_rescues_jobs_stuck_in_flight(audience: Audience, db: str) -> None:
    job_id = signup("stuck@trust.org")
    with session_scope() as session:
        sync.claim(session, 10, utcnow())
        session.execute(update(SyncJob).values(claimed_at=utcnow() - timedelta(minutes=10)))
    assert job(job_id).state == JobState.IN_FLIGHT
    assert sync.sweep().rescued == 1
    assert job(job_id).state == JobState.PENDING


def test_no_address_appears_in_logs(
    audience: Audience, db: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    signup("private.person@trust.org", fields={"first_name": "Private"})
    audience.emu.script_failures("500", count=1)
    sync.flush()
    with session_scope() as session:
        session.execute(update(SyncJob).values(next_attempt_at=utcnow()))
    sync.flush()
    text = caplog.text.lower()
    assert "private.person" not in text and "private" not in text.replace("private.person", "")
    assert "flush: claimed=1" in caplog.text


def test_celery_worker_takes_a_queued_signup_all_the_way_to_mailchimp(
    audience: Audience, celery_worker: object, caplog: pytest.LogCaptureFixture
) -> None:
    from worker.publish import enqueue_signup

    caplog.set_level(logging.DEBUG)
    enqueue_signup("queued.person@trust.org", "newsletter_signup", fields={"first_name": "Q"})
    wait_for(lambda: audience.status("queued.person@trust.org") == "subscribed", timeout=30)
    wait_for(lambda: contact_status("queued.person@trust.org") == "subscribed", timeout=10)
    assert "queued.person" not in caplog.text.lower()


def test_invalid_queue_message_is_acked_and_recorded(
    audience: Audience, celery_worker: object
) -> None:
    from worker.app import app
    from worker.models import RejectedSignup

    app.send_task("listsync.signups.receive", kwargs={"message": {"v": 1, "form": "x"}})

    def rejected() -> list[str]:
        with session_scope() as session:
            return [r.reason for r in session.scalars(select(RejectedSignup))]

    reasons = wait_for(rejected, timeout=20)
    assert "email" in reasons[0]


def test_signup_for_an_erased_address_is_never_sent(audience: Audience, db: str) -> None:
    email = "erased.person@trust.org"
    erased(email)
    job_id = signup(email)  # a fresh signup after the erasure: stored, not sent
    assert sync.flush().calls == 0
    assert job(job_id).state == JobState.SUPPRESSED and job(job_id).last_error == "suppressed_hash"
    assert audience.status(email) is None


def test_reduced_opted_out_contact_comes_back_opted_out(
    audience: Audience, db: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from config import get_settings
    from worker.models import Suppression, SuppressionReason

    email = "long.gone@trust.org"
    audience.emu.seed_member(email, "unsubscribed", list_id=audience.list_id)
    with session_scope() as session:
        session.add(
            Suppression(
                email_hash=email_hash(email),
                reason=SuppressionReason.OPTED_OUT,
                created_at=utcnow() - timedelta(days=3),
            )
        )
    stale = signup(email, submitted_at=utcnow() - timedelta(days=5))
    assert contact_status(email) == "unsubscribed"
    assert sync.flush().calls == 0
    assert job(stale).last_error == "opted_out:unsubscribed"
    # A consent given after the reduction, with re-confirmation on, asks Mailchimp to confirm.
    monkeypatch.setenv("LISTSYNC_RESUBSCRIBE_WITH_CONFIRMATION", "true")
    get_settings.cache_clear()
    fresh = signup(email)
    sync.flush()
    assert job(fresh).state == JobState.DONE
    assert audience.status(email) == "pending"


def synced(emails: list[str]) -> None:
    """Members Mailchimp has and the contacts know as subscribed."""
    for email in emails:
        signup(email)
    sync.flush()
    assert all(contact_status(e) == "subscribed" for e in emails)


def puts_and_batches(audience: Audience) -> tuple[int, int]:
    counters = calls(audience)
    puts = sum(v for k, d in counters.items() if k.startswith("PUT") for v in d.values())
    batches = sum(counters.get("POST /lists/{list_id}", {}).values())
    return puts, batches


def test_a_contact_already_synced_gets_a_put_with_status_if_new_never_a_batch(
    audience: Audience, db: str
) -> None:
    known = [f"known{i}@trust.org" for i in range(4)]
    synced(known)
    # One of them unsubscribes in Mailchimp and the webhook has not arrived yet.
    audience.emu.unsubscribe(known[0], list_id=audience.list_id)
    audience.emu.reset_counters()
    again = {email: signup(email) for email in known}
    fresh = [signup("fresh@trust.org")]
    sync.flush()
    # The four known ones get PUTs with status_if_new only; the one new person a batch of one,
    # which creates members and never touches one that exists (update_existing: false).
    assert puts_and_batches(audience) == (4, 1)
    # status_if_new left the opt-out alone: "member_unsubscribed", not a refused `status`.
    assert job(again[known[0]]).state == JobState.SUPPRESSED
    assert job(again[known[0]]).outcome == "member_unsubscribed"
    assert audience.status(known[0]) == "unsubscribed"
    assert contact_status(known[0]) == "unsubscribed"
    assert all(job(j).state == JobState.DONE for j in fresh)


def test_a_transient_failure_defers_the_rest_of_the_flush_instead_of_calling_on(
    audience: Audience, db: str
) -> None:
    known = [f"again{i}@trust.org" for i in range(5)]
    synced(known)
    ids = [signup(email) for email in known]  # five single PUTs next time
    audience.emu.reset_counters()
    audience.emu.script_failures("503", count=3, path="/3.0/lists/*/members/*")
    report = sync.flush()
    assert report.calls == 1 and report.retry == 5
    assert {job(j).last_error for j in ids} == {"server_error"}
    assert puts_and_batches(audience) == (3, 0)  # one call, its in-call retries, no more


def test_an_outcome_code_longer_than_its_column_is_cut_not_fatal(
    audience: Audience, db: str
) -> None:
    job_id = signup("long.reason@trust.org")
    with session_scope() as session:
        assert sync.claim(session, 10, utcnow()) == [job_id]
    outcome = sync.Outcome(JobState.FAILED, "schema_error:" + "F" * 60)
    with session_scope() as session:
        sync.record(session, {job_id: outcome}, utcnow(), sync.FlushReport())
    assert job(job_id).state == JobState.FAILED
    assert job(job_id).outcome == ("schema_error:" + "F" * 60)[:32]


def test_a_change_of_address_while_a_job_is_in_flight_follows_the_person(
    audience: Audience, db: str
) -> None:
    from worker.models import ChangeSource
    from worker.optouts.apply import Change, apply_change

    job_id = signup("before@trust.org")
    with session_scope() as session:
        assert sync.claim(session, 10, utcnow()) == [job_id]
    # The person changes address in Mailchimp; the webhook is applied while the job is out.
    with session_scope() as session:
        change = Change(
            "upemail",
            ChangeSource.WEBHOOK,
            utcnow(),
            "before@trust.org",
            new_email="after@trust.org",
        )
        assert apply_change(session, change).outcome == "email_changed"
    with session_scope() as session:
        sync.record(
            session, {job_id: sync.Outcome(None, "server_error")}, utcnow(), sync.FlushReport()
        )
    assert job(job_id).email_hash == email_hash("after@trust.org")
    with session_scope() as session:
        session.execute(update(SyncJob).values(next_attempt_at=utcnow()))
    sync.flush()
    assert job(job_id).state == JobState.DONE
    assert audience.status("after@trust.org") == "subscribed"
    assert contact_status("after@trust.org") == "subscribed"


def test_a_flush_never_overwrites_an_opt_out_committed_while_it_was_out(
    audience: Audience, db: str
) -> None:
    from worker.db import get_sessionmaker
    from worker.models import ChangeSource
    from worker.optouts.apply import Change, apply_change

    email = "racing@trust.org"
    job_id = signup(email)
    with session_scope() as session:
        sync.claim(session, 10, utcnow())
    flusher = get_sessionmaker()()
    try:
        # The flush reads the contact (still `new`) ...
        # (kept referenced: the session's identity map holds objects weakly)
        read = flusher.scalars(select(Contact).where(Contact.email_hash == email_hash(email))).one()
        assert read.status == ContactStatus.NEW
        # ... a bounce arrives and is applied and committed while its call is out ...
        with session_scope() as session:
            bounce = Change("status", ChangeSource.WEBHOOK, utcnow(), email, "cleaned", "hard")
            assert apply_change(session, bounce).changed_status
        # ... then it records what Mailchimp answered before the bounce.
        done = sync.Outcome(JobState.DONE, "member_subscribed", "subscribed")
        sync.record(flusher, {job_id: done}, utcnow(), sync.FlushReport())
        flusher.commit()
    finally:
        flusher.close()
    assert job(job_id).state == JobState.DONE
    assert contact_status(email) == "cleaned"
