"""Rules of the sync plan (worker/signups/flush.py `plan`) that `make mutation` found no test
for: each test names the mutants it kills (docs/reliability.md, "Mutation testing")."""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest
from sqlalchemy import delete, update

from tests.conftest import Audience
from tests.feeds.test_feeds import sign_up, tags
from tests.sync.test_flush import erased, job, signup
from tests.sync.test_optout_paths import resubscribe_on
from worker.addresses import email_hash
from worker.db import session_scope
from worker.feeds.check import run_check
from worker.mailchimp import get_gateway
from worker.models import (
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
from worker.rights import correct, erase
from worker.signups import flush as sync


def local_contact(email: str, status: str, changed_at: datetime) -> None:
    with session_scope() as session:
        session.add(
            Contact(
                email=email,
                email_hash=email_hash(email),
                status=status,
                status_changed_at=changed_at,
            )
        )


def puts_and_batches(audience: Audience) -> tuple[int, int]:
    counters = audience.emu.counters()["calls"]
    puts = sum(v for k, d in counters.items() if k.startswith("PUT") for v in d.values())
    batches = sum(counters.get("POST /lists/{list_id}", {}).values())
    return puts, batches


def first_job(audience: Audience, kind: str) -> tuple[int, JobState, str | None]:
    """A job the plan settles or routes on its own, and how it must end."""
    email = f"first.{kind}@trust.org"
    if kind == "erased":
        erased(email)
        return signup(email), JobState.SUPPRESSED, "suppressed_hash"
    if kind == "gone":
        job_id = signup(email)
        with session_scope() as session:
            session.execute(delete(Contact).where(Contact.email_hash == email_hash(email)))
        return job_id, JobState.SUPPRESSED, "contact_gone"
    if kind == "opted_out":
        local_contact(email, ContactStatus.UNSUBSCRIBED, utcnow() - timedelta(days=1))
        return signup(email), JobState.SUPPRESSED, "opted_out:unsubscribed"
    if kind == "erase":
        signup(email)
        sync.flush()
        with session_scope() as session:
            return erase(session, email, "test").sync_job_id, JobState.DONE, None
    if kind == "optout":
        # The restore an opt-out that overtook a re-confirmation request leaves behind
        # (worker/optouts/apply.py): the member is pending again at Mailchimp.
        audience.emu.seed_member(email, "pending", list_id=audience.list_id)
        local_contact(email, ContactStatus.UNSUBSCRIBED, utcnow() - timedelta(minutes=1))
        with session_scope() as session:
            contact = session.query(Contact).filter_by(email_hash=email_hash(email)).one()
            restore = SyncJob(
                kind=JobKind.OPTOUT,
                contact_id=contact.id,
                email_hash=contact.email_hash,
                next_attempt_at=utcnow() - timedelta(seconds=1),
            )
            session.add(restore)
            session.flush()
            return restore.id, JobState.DONE, None
    if kind == "unresolved":
        # A group renamed in Mailchimp since the website's form named it: the signup waits.
        parent = audience.emu.interest_id("Parent", category="I am a", list_id=audience.list_id)
        audience.emu.rename_interest(parent, "Parent or carer", list_id=audience.list_id)
        assert run_check(get_gateway()).ok
        return sign_up(email, role="Parent"), JobState.PENDING, "check:unknown_group"
    assert kind == "correction"
    signup(email)
    sync.flush()
    with session_scope() as session:
        return correct(session, email, {"FNAME": "Augusta"}).id, JobState.DONE, None


KINDS = ["erased", "gone", "opted_out", "correction", "erase", "optout", "unresolved"]


@pytest.mark.parametrize("kind", KINDS)
def test_a_job_the_plan_settles_itself_never_holds_up_the_jobs_after_it(
    audience: Audience, db: str, kind: str
) -> None:
    """Kills: `break` for the plan's `continue` after a job it settles without a call (an
    erased address, a contact gone, an opt-out), routes apart (a correction, an erasure, an
    opt-out to restore) or holds back (a group Mailchimp no longer has): the jobs after it in
    the same flush would be left in flight, unsent. Also `contact is None` for `contact is
    not None` in the erased test (a job whose contact is gone would raise), and `kind is
    OPTOUT` or `kind < OPTOUT` for `kind == OPTOUT` (the restore would take the upsert path,
    which suppresses it for the opt-out it is there to restore)."""
    first, state, error = first_job(audience, kind)
    kept = [signup(f"kept{i}@trust.org") for i in range(3)]
    sync.flush()
    assert (job(first).state, job(first).last_error) == (state, error)
    if kind in ("erase", "optout"):
        assert audience.status(f"first.{kind}@trust.org") == (
            "forgotten" if kind == "erase" else "unsubscribed"
        )
    assert [job(j).state for j in kept] == [JobState.DONE] * 3
    assert all(audience.status(f"kept{i}@trust.org") == "subscribed" for i in range(3))


def test_an_archived_contact_signing_up_again_gets_a_put_never_a_batch(
    audience: Audience, db: str
) -> None:
    """Kills: `status <= NEW` for `status == NEW` as the plan's test of a contact never
    synced ("archived" sorts before "new"): an archived member would go into a batch, which
    is only for members Mailchimp does not have."""
    email = "archived@trust.org"
    audience.emu.seed_member(email, "archived", list_id=audience.list_id)
    local_contact(email, ContactStatus.ARCHIVED, utcnow() - timedelta(days=1))
    again = signup(email)
    audience.emu.reset_counters()
    sync.flush()
    assert puts_and_batches(audience) == (1, 0)
    assert job(again).state == JobState.DONE


def test_a_consent_dated_the_same_instant_as_the_opt_out_does_not_re_confirm(
    audience: Audience, db: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Kills: `consent_at >= status_changed_at` for `>`: only a consent newer than the
    opt-out may ask for re-confirmation, and one that ties with it is not newer."""
    resubscribe_on(monkeypatch)
    email = "tied.consent@trust.org"
    at = (utcnow() - timedelta(days=1)).replace(microsecond=0)
    audience.emu.seed_member(email, "unsubscribed", list_id=audience.list_id)
    local_contact(email, ContactStatus.UNSUBSCRIBED, at)
    tied = signup(email, submitted_at=at)
    with session_scope() as session:
        contact = session.get(Contact, job(tied).contact_id)
        assert contact is not None and contact.consent_at == contact.status_changed_at == at
    assert sync.flush().calls == 0
    assert (job(tied).state, job(tied).last_error) == (
        JobState.SUPPRESSED,
        "opted_out:unsubscribed",
    )
    assert audience.status(email) == "unsubscribed"
    assert audience.emu.audience(audience.list_id)["confirmations_sent"] == 0


def test_a_correction_never_creates_a_member_mailchimp_does_not_have(
    audience: Audience, db: str
) -> None:
    """Kills: `job.kind is JobKind.UPDATE` for `==` (kinds are stored as plain strings, so it
    never holds): a correction would take the upsert path, whose PUT creates the member."""
    email = "not.in.mailchimp@trust.org"
    local_contact(email, ContactStatus.SUBSCRIBED, utcnow() - timedelta(days=1))
    with session_scope() as session:
        correction = correct(session, email, {"FNAME": "Augusta"}).id
    sync.flush()
    assert job(correction).state != JobState.PENDING
    assert audience.status(email) is None


def test_a_job_of_an_erased_address_whose_contact_is_gone_is_settled_as_erased(
    audience: Audience, db: str
) -> None:
    """Kills: `and` for the `or` between the job's address and its contact's in the plan's
    erased test: the job would be recorded as `contact_gone`, not as the erasure it is."""
    email = "erased.gone@trust.org"
    erased = signup(email)
    with session_scope() as session:
        session.execute(delete(Contact).where(Contact.email_hash == email_hash(email)))
        session.add(
            Suppression(
                email_hash=email_hash(email), reason=SuppressionReason.ERASED, created_at=utcnow()
            )
        )
    assert sync.flush().calls == 0
    assert (job(erased).state, job(erased).last_error) == (JobState.SUPPRESSED, "suppressed_hash")


def test_a_job_without_a_submission_takes_no_form_s_tags(audience: Audience, db: str) -> None:
    """Kills: `submitted.get(job.submission_id or 1, ...)` for `or 0`: a job whose
    submission is gone (purged or erased: the column is set to NULL) would take the form of
    submission 1 if that one is in the same flush, and its tags with it."""
    first = signup("first.form@trust.org")
    orphan = sign_up("orphan@trust.org", "contact_form", newsletter_opt_in=True)
    with session_scope() as session:
        assert session.get(SyncJob, first).submission_id == 1  # a fresh database
        session.execute(update(SyncJob).where(SyncJob.id == orphan).values(submission_id=None))
        assert session.get(Submission, 1) is not None
    sync.flush()
    assert job(orphan).state == job(first).state == JobState.DONE
    assert "newsletter" in tags(audience, "first.form@trust.org")
    assert tags(audience, "orphan@trust.org") == set()
