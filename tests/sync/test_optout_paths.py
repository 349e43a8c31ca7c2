"""Invariant 2 on every path that reaches Mailchimp: the batch, the single PUT, the
re-confirmation, a correction's PATCH, an erasure's delete, and the tags and groups a form
adds. Each test here fails if the one rule it names is dropped from the code (the mutation is
named in its docstring), against the emulator over real HTTP."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta

import pytest
from sqlalchemy import select

from tests.conftest import Audience
from tests.helpers import wait_for
from tests.sync.test_flush import job, signup
from worker.addresses import email_hash
from worker.db import session_scope
from worker.models import Contact, ContactStatus, JobState, SyncJob, utcnow
from worker.signups import flush as sync

PARENT = {"role": "Parent"}


def opted_out_contact(email: str, status: str, changed_days_ago: float) -> None:
    """A contact whose opt-out came home `changed_days_ago` days ago."""
    with session_scope() as session:
        session.add(
            Contact(
                email=email,
                email_hash=email_hash(email),
                status=status,
                status_changed_at=utcnow() - timedelta(days=changed_days_ago),
            )
        )


def resubscribe_on(monkeypatch: pytest.MonkeyPatch) -> None:
    from config import get_settings

    monkeypatch.setenv("LISTSYNC_RESUBSCRIBE_WITH_CONFIRMATION", "true")
    get_settings.cache_clear()


def member_tags(audience: Audience, email: str) -> set[str]:
    member = audience.member(email)
    assert member is not None
    return {t["name"] for t in member["tags"]}  # type: ignore[attr-defined]


def member_groups(audience: Audience, email: str) -> dict[str, list[str]]:
    member = audience.member(email)
    assert member is not None
    return {title: on for title, on in member["groups"].items() if on}  # type: ignore[attr-defined]


@pytest.fixture(params=["ignore", "error"])
def batch_unsubscribed(request: pytest.FixtureRequest, audience: Audience) -> Iterator[str]:
    """The emulator answering a batch re-subscribe of an opted-out member either way
    Mailchimp has been seen to: silently ignoring the status, or an error per member."""
    before = audience.emu.settings()["batch_unsubscribed"]
    audience.emu.set_settings(batch_unsubscribed=request.param)
    yield str(request.param)
    audience.emu.set_settings(batch_unsubscribed=before)


# --- the batch ------------------------------------------------------------------------------


def test_a_batch_never_changes_an_existing_member_archived_or_opted_out(
    audience: Audience, db: str, batch_unsubscribed: str
) -> None:
    """Kills: `update_existing: True` in Gateway.batch_subscribe (the archived member would
    come back subscribed, with the form's tags and groups)."""
    existing = {
        "was.archived@trust.org": "archived",
        "was.unsub@trust.org": "unsubscribed",
        "was.cleaned@trust.org": "cleaned",
    }
    for email, status in existing.items():
        audience.emu.seed_member(email, status, list_id=audience.list_id)
    fresh = {f"fresh{i}@trust.org": signup(f"fresh{i}@trust.org", fields=PARENT) for i in range(3)}
    # Unknown here (local status `new`): all six go into one batch.
    known = {email: signup(email, fields=PARENT) for email in existing}
    report = sync.flush()
    assert report.claimed == 6
    assert audience.emu.counters()["calls"]["POST /lists/{list_id}"] == {"200": 1}
    for email, status in existing.items():
        assert audience.status(email) == status, (email, batch_unsubscribed)
        assert member_tags(audience, email) == set()
        assert member_groups(audience, email) == {}
    for email, job_id in fresh.items():
        assert audience.status(email) == "subscribed"
        assert job(job_id).state == JobState.DONE
    # Each existing one learned its status from a PUT with status_if_new.
    assert job(known["was.archived@trust.org"]).state == JobState.DONE
    assert job(known["was.archived@trust.org"]).outcome == "member_archived"
    for email in ("was.unsub@trust.org", "was.cleaned@trust.org"):
        assert job(known[email]).state == JobState.SUPPRESSED
        assert job(known[email]).outcome == f"member_{existing[email]}"


# --- re-confirmation --------------------------------------------------------------------------


def test_a_consent_older_than_the_opt_out_never_asks_for_re_confirmation(
    audience: Audience, db: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Kills: dropping `consent_at > status_changed_at` from the plan (a stale message, its
    consent given before the person unsubscribed, would put them back to pending)."""
    resubscribe_on(monkeypatch)
    email = "stale.consent@trust.org"
    audience.emu.seed_member(email, "unsubscribed", list_id=audience.list_id)
    opted_out_contact(email, ContactStatus.UNSUBSCRIBED, changed_days_ago=1)
    stale = signup(email, submitted_at=utcnow() - timedelta(days=5))
    report = sync.flush()
    assert report.calls == 0
    assert job(stale).state == JobState.SUPPRESSED
    assert job(stale).last_error == "opted_out:unsubscribed"
    assert audience.status(email) == "unsubscribed"
    assert audience.emu.audience(audience.list_id)["confirmations_sent"] == 0


def test_a_cleaned_contact_is_never_asked_to_re_confirm_even_after_a_new_consent(
    audience: Audience, db: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Kills: dropping `status == UNSUBSCRIBED` from the re-confirmation rule (a bounced
    address would get a `status: pending` PUT)."""
    resubscribe_on(monkeypatch)
    email = "bounced@trust.org"
    audience.emu.seed_member(email, "cleaned", list_id=audience.list_id)
    opted_out_contact(email, ContactStatus.CLEANED, changed_days_ago=1)
    fresh = signup(email)  # consent now, after the bounce
    report = sync.flush()
    assert report.calls == 0
    assert audience.emu.counters()["calls"] == {}
    assert job(fresh).state == JobState.SUPPRESSED
    assert job(fresh).last_error == "opted_out:cleaned"
    assert audience.status(email) == "cleaned"


def test_a_later_consent_re_confirms_only_when_switched_on(
    audience: Audience, db: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The other side of the two tests above: the same later consent with re-confirmation
    off sends nothing; switched on, it asks Mailchimp for `pending` once."""
    email = "changed.mind@trust.org"
    audience.emu.seed_member(email, "unsubscribed", list_id=audience.list_id)
    opted_out_contact(email, ContactStatus.UNSUBSCRIBED, changed_days_ago=1)
    off = signup(email)
    assert sync.flush().calls == 0
    assert job(off).last_error == "opted_out:unsubscribed"
    resubscribe_on(monkeypatch)
    on = signup(email)
    sync.flush()
    assert job(on).state == JobState.DONE
    assert audience.status(email) == "pending"
    assert audience.emu.audience(audience.list_id)["confirmations_sent"] == 1


# --- corrections and erasures through the real worker -----------------------------------------


def synced(audience: Audience, email: str, **fields: str) -> None:
    """A person the worker has synced: a member Mailchimp has, subscribed."""
    assert flushed_by_the_worker(signup(email, fields=fields)).state == JobState.DONE
    assert audience.status(email) == "subscribed"


def flushed_by_the_worker(job_id: int) -> SyncJob:
    """Nudge a flush as the rights commands do and wait for the worker to finish the job."""
    from worker.publish import FLUSH

    assert FLUSH.request(force=True)
    wait_for(
        lambda: job(job_id).state not in (JobState.PENDING, JobState.IN_FLIGHT),
        timeout=30,
        what=f"sync job {job_id} to finish",
    )
    return job(job_id)


def test_an_erasure_deletes_the_member_in_mailchimp(
    audience: Audience, celery_worker: object
) -> None:
    """Kills: Gateway.delete_permanent answering done without calling Mailchimp."""
    from worker.rights import erase

    email = "erase.me@trust.org"
    synced(audience, email, first_name="Ern")
    with session_scope() as session:
        report = erase(session, email, "request 2026-41")
    done = flushed_by_the_worker(report.sync_job_id)
    assert done.state == JobState.DONE, done.last_error
    member = audience.member(email)
    assert member is not None and member["status"] == "forgotten"
    assert audience.emu.audience(audience.list_id)["forgotten"] == 1


@pytest.mark.parametrize("status", ["subscribed", "unsubscribed"])
def test_a_correction_reaches_mailchimp_and_never_touches_the_status(
    audience: Audience, celery_worker: object, status: str
) -> None:
    """Kills: a correction's PATCH not sent (or sent with a status)."""
    from worker.rights import correct

    email = f"correct.{status}@trust.org"
    synced(audience, email, first_name="Ada")
    if status == "unsubscribed":
        # The person unsubscribed in Mailchimp; the correction comes after.
        audience.emu.unsubscribe(email, list_id=audience.list_id)
    with session_scope() as session:
        queued = correct(session, email, {"FNAME": "Augusta"})
        job_id = queued.id
    done = flushed_by_the_worker(job_id)
    # The PATCH went through either way; Mailchimp's answer shows the member still opted
    # out, which ends the job suppressed.
    expected = JobState.DONE if status == "subscribed" else JobState.SUPPRESSED
    assert (done.state, done.outcome) == (expected, f"member_{status}")
    member = audience.member(email)
    assert member is not None
    assert member["merge_fields"]["FNAME"] == "Augusta"  # type: ignore[index]
    assert member["status"] == status
    with session_scope() as session:
        contact = session.scalars(
            select(Contact).where(Contact.email_hash == email_hash(email))
        ).one()
        assert contact.merge_fields["FNAME"] == "Augusta"
