"""Rules of the webhook inbox and of applying a change that `make mutation` found no test for
(docs/reliability.md, "Mutation testing"): each test names what it pins down."""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from freezegun import freeze_time
from sqlalchemy import select, update

from tests.optouts.payloads import LIST_ID, unsubscribe
from tests.optouts.test_apply import EMAIL, contact, deliver
from worker.addresses import email_hash
from worker.db import session_scope
from worker.models import (
    OPTOUT_RACED,
    RECONFIRM_SENT,
    ChangeSource,
    Contact,
    ContactStatus,
    EventState,
    JobKind,
    JobState,
    SyncJob,
    WebhookEvent,
)
from worker.optouts.apply import Change, Result, apply_change

pytestmark = pytest.mark.usefixtures("store")

T0 = datetime(2024, 3, 1, 12, 0, 0, tzinfo=UTC)


def local(status: str, at: datetime, source: str, *, consent_at: datetime | None = None) -> None:
    with session_scope() as session:
        session.add(
            Contact(
                email=EMAIL,
                email_hash=email_hash(EMAIL),
                status=status,
                status_changed_at=at,
                status_source=source,
                status_reason="earlier",
                consent_at=consent_at,
            )
        )


def change(
    status: str | None,
    at: datetime,
    *,
    email: str | None = EMAIL,
    reason: str | None = None,
    merges: dict[str, Any] | None = None,
) -> Result:
    with session_scope() as session:
        return apply_change(
            session,
            Change(
                kind="status",
                source=ChangeSource.WEBHOOK,
                fired_at=at,
                email=email,
                status=status,
                reason=reason,
                merges=merges or {},
            ),
        )


def status_of() -> tuple[str, datetime, str | None, str | None]:
    person = contact()
    assert person is not None
    return person.status, person.status_changed_at, person.status_source, person.status_reason


# --- the inbox row --------------------------------------------------------------------------


def test_an_unknown_type_is_stored_whole_and_settled_at_receipt() -> None:
    with freeze_time(T0):
        unknown = deliver(
            [
                ("type", "x" * 32),
                ("fired_at", "2024-03-01 11:00:00"),
                ("data[list_id]", LIST_ID),
                ("data[email]", EMAIL),
            ]
        )
        known = deliver(unsubscribe(EMAIL, T0 - timedelta(hours=1)))
    with session_scope() as session:
        stored = session.get(WebhookEvent, unknown.event_id)
        pending = session.get(WebhookEvent, known.event_id)
        assert stored is not None and pending is not None
        assert (stored.type, stored.state, stored.outcome) == (
            "x" * 32,
            EventState.IGNORED,
            "unknown_type",
        )
        assert stored.applied_at == T0
        assert (pending.type, pending.state, pending.outcome) == (
            "unsubscribe",
            EventState.PENDING,
            None,
        )
        assert pending.applied_at is None


# --- which change is stale ------------------------------------------------------------------


def test_the_same_status_again_in_the_same_second_from_mailchimp_is_stale() -> None:
    """Within one second only a more restrictive status wins; an equal one is not more.
    (The same event delivered twice is a duplicate before this: this is a second event, a
    reconcile page's, say.)"""
    local(ContactStatus.UNSUBSCRIBED, T0, ChangeSource.WEBHOOK)
    assert change(ContactStatus.UNSUBSCRIBED, T0) == Result(EventState.IGNORED, "stale")
    assert change(ContactStatus.CLEANED, T0).outcome == "status:cleaned"


def test_a_subscribe_no_newer_than_a_local_change_is_stale() -> None:
    """Against a change made here (a signup, a sync), a status that is not an opt-out needs to
    be strictly newer: older or the same instant is stale."""
    at = T0 + timedelta(minutes=5)
    local(ContactStatus.PENDING, at, ChangeSource.SYNC)
    assert change(ContactStatus.SUBSCRIBED, at - timedelta(minutes=1)).outcome == "stale"
    assert change(ContactStatus.SUBSCRIBED, at).outcome == "stale"
    assert change(ContactStatus.SUBSCRIBED, at + timedelta(seconds=1)).outcome == (
        "status:subscribed"
    )


def test_a_change_without_an_address_or_a_status_is_ignored() -> None:
    local(ContactStatus.SUBSCRIBED, T0, ChangeSource.SYNC)
    later = T0 + timedelta(hours=1)
    assert change(None, later) == Result(EventState.IGNORED, "no_email")
    assert change(ContactStatus.UNSUBSCRIBED, later, email=None) == Result(
        EventState.IGNORED, "no_email"
    )
    assert status_of()[0] == ContactStatus.SUBSCRIBED


@pytest.mark.parametrize("status", [ContactStatus.ARCHIVED, ContactStatus.CLEANED])
def test_only_an_erased_contact_ignores_every_change(status: str) -> None:
    """Archived and cleaned sort before "erased": neither is treated as erased."""
    local(status, T0, ChangeSource.WEBHOOK)
    result = change(ContactStatus.SUBSCRIBED, T0 + timedelta(hours=1))
    assert result == Result(EventState.APPLIED, "status:subscribed", changed_status=True)


@pytest.mark.parametrize(
    "status", [ContactStatus.SUBSCRIBED, ContactStatus.UNSUBSCRIBED, ContactStatus.CLEANED]
)
def test_only_a_subscribe_brings_its_merge_fields_along(status: str) -> None:
    local(ContactStatus.PENDING, T0, ChangeSource.WEBHOOK)
    with session_scope() as session:
        session.execute(update(Contact).values(merge_fields={"FNAME": "Ada"}))
    change(ContactStatus(status).value, T0 + timedelta(hours=1), merges={"FNAME": "Augusta"})
    person = contact()
    assert person is not None and person.status == status
    assert person.merge_fields == {"FNAME": "Augusta" if status == "subscribed" else "Ada"}


# --- the same status again ------------------------------------------------------------------


def test_the_same_status_newer_moves_its_time_source_and_reason_forward() -> None:
    local(ContactStatus.UNSUBSCRIBED, T0, ChangeSource.WEBHOOK)
    later = T0 + timedelta(hours=1)
    assert change(ContactStatus.UNSUBSCRIBED, later, reason="abuse").outcome == "unchanged"
    assert status_of() == (ContactStatus.UNSUBSCRIBED, later, ChangeSource.WEBHOOK, "abuse")
    # No reason given: the one recorded stays.
    assert change(ContactStatus.UNSUBSCRIBED, later + timedelta(hours=1)).outcome == "unchanged"
    assert status_of()[3] == "abuse"


@pytest.mark.parametrize("offset", [timedelta(0), timedelta(hours=-1)])
def test_the_same_opt_out_no_newer_than_a_local_change_leaves_it_as_recorded(
    offset: timedelta,
) -> None:
    """An opt-out is never stale against a local change, but one that is not newer leaves
    the local record's time, source and reason as they are."""
    local(ContactStatus.UNSUBSCRIBED, T0, ChangeSource.SYNC)
    result = change(ContactStatus.UNSUBSCRIBED, T0 + offset, reason="abuse")
    assert result == Result(EventState.APPLIED, "unchanged")
    assert status_of() == (ContactStatus.UNSUBSCRIBED, T0, ChangeSource.SYNC, "earlier")


def test_a_status_change_logs_how_many_jobs_it_suppressed(
    caplog: pytest.LogCaptureFixture,
) -> None:
    local(ContactStatus.PENDING, T0, ChangeSource.WEBHOOK)
    caplog.set_level(logging.INFO, logger="worker.optouts.apply")
    assert change(ContactStatus.SUBSCRIBED, T0 + timedelta(hours=1)).changed_status
    assert "-> subscribed by webhook (0 sync jobs suppressed)" in caplog.text


# --- taking back a re-confirmation request an opt-out overtook ------------------------------


def reconfirm_job(state: str, claimed_at: datetime) -> int:
    """A re-confirmation request: sent (done, reconfirm_sent) or still on its way (in flight)."""
    with session_scope() as session:
        person = session.scalars(
            select(Contact).where(Contact.email_hash == email_hash(EMAIL))
        ).one()
        job = SyncJob(
            kind=JobKind.UPSERT,
            contact_id=person.id,
            email_hash=person.email_hash,
            state=state,
            claimed_at=claimed_at,
            finished_at=claimed_at if state == JobState.DONE else None,
            outcome=RECONFIRM_SENT if state == JobState.DONE else None,
        )
        session.add(job)
        session.flush()
        return job.id


def taken_back(job_id: int) -> tuple[bool, str | None]:
    """Whether an OPTOUT job was queued, and the request's outcome now."""
    with session_scope() as session:
        restores = session.scalars(select(SyncJob).where(SyncJob.kind == JobKind.OPTOUT)).all()
        job = session.get(SyncJob, job_id)
        assert job is not None
        return bool(restores), job.outcome


SENT = T0 + timedelta(hours=1)  # the request went out; the opt-out fires 10 s later


@pytest.mark.parametrize(
    ("status", "consent_at", "expected"),
    [
        # Unsubscribed with a newer consent: the request was sent; the opt-out takes it back.
        (ContactStatus.UNSUBSCRIBED, SENT - timedelta(minutes=1), (True, OPTOUT_RACED)),
        # Pending (the request landed): the opt-out takes it back too.
        (ContactStatus.PENDING, None, (True, OPTOUT_RACED)),
        # No newer consent, or one tied with the opt-out: no request can be out.
        (ContactStatus.UNSUBSCRIBED, T0 - timedelta(days=1), (False, RECONFIRM_SENT)),
        (ContactStatus.UNSUBSCRIBED, T0, (False, RECONFIRM_SENT)),
        # Any other status is no re-confirmation, whatever its consent.
        (ContactStatus.SUBSCRIBED, SENT - timedelta(minutes=1), (False, RECONFIRM_SENT)),
        (ContactStatus.NEW, SENT - timedelta(minutes=1), (False, RECONFIRM_SENT)),
    ],
    ids=["reconfirming", "pending", "older_consent", "tied_consent", "subscribed", "new"],
)
def test_an_opt_out_takes_back_a_re_confirmation_only_where_one_can_be_out(
    status: str, consent_at: datetime | None, expected: tuple[bool, str]
) -> None:
    local(status, T0, ChangeSource.WEBHOOK, consent_at=consent_at)
    request = reconfirm_job(JobState.DONE, SENT)
    with freeze_time(SENT + timedelta(seconds=20)):
        result = change(ContactStatus.UNSUBSCRIBED, SENT + timedelta(seconds=10))
    assert result.state == EventState.APPLIED
    assert taken_back(request) == expected


@pytest.mark.parametrize("reconfirming", [True, False])
def test_a_request_in_flight_is_stopped_only_for_a_contact_re_confirming(
    reconfirming: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A signup in flight for a subscribed person who then opts out is theirs to finish (it
    never re-subscribes anyone); only a re-confirmation in flight is stopped and undone."""
    from config import get_settings

    monkeypatch.setenv("LISTSYNC_RESUBSCRIBE_WITH_CONFIRMATION", "true")
    get_settings.cache_clear()
    status = ContactStatus.UNSUBSCRIBED if reconfirming else ContactStatus.SUBSCRIBED
    local(status, T0, ChangeSource.WEBHOOK, consent_at=SENT - timedelta(minutes=1))
    request = reconfirm_job(JobState.IN_FLIGHT, SENT)
    with freeze_time(SENT + timedelta(seconds=20)):
        change(ContactStatus.UNSUBSCRIBED, SENT + timedelta(seconds=10))
    with session_scope() as session:
        job = session.get(SyncJob, request)
        assert job is not None
        state = job.state
    assert (state, taken_back(request)) == (
        (JobState.SUPPRESSED, (True, OPTOUT_RACED))
        if reconfirming
        else (JobState.IN_FLIGHT, (False, None))
    )
