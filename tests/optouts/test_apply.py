"""Applying stored events to local contacts: each type, ordering, idempotence, jobs."""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from freezegun import freeze_time
from sqlalchemy import delete, select

from tests.optouts.payloads import (
    Fields,
    body,
    campaign,
    cleaned,
    profile,
    subscribe,
    unsubscribe,
    upemail,
)
from worker.addresses import email_hash
from worker.db import session_scope
from worker.models import (
    ChangeSource,
    Contact,
    ContactStatus,
    EventState,
    JobState,
    Submission,
    SyncJob,
    WebhookEvent,
    utcnow,
)
from worker.optouts import inbox
from worker.optouts.apply import apply_event

T0 = datetime(2024, 3, 1, 12, 0, 0, tzinfo=UTC)
EMAIL = "zoë.lee@example.org"
NEW_EMAIL = "zoe.new@example.org"

pytestmark = pytest.mark.usefixtures("store")


def deliver(fields: Fields) -> inbox.Receipt:
    """Store an event as the receiver does (without enqueueing it)."""
    from worker.optouts.events import validate_event
    from worker.optouts.form import parse_form

    event = validate_event(parse_form(body(fields)), "a1b2c3d4e5")
    with session_scope() as session:
        return inbox.store(session, event)


def apply(receipt: inbox.Receipt) -> tuple[str, str | None]:
    with session_scope() as session:
        apply_event(session, receipt.event_id)
    with session_scope() as session:
        event = session.get(WebhookEvent, receipt.event_id)
        assert event is not None
        return event.state, event.outcome


def contact(email: str = EMAIL) -> Contact | None:
    with session_scope() as session:
        return session.scalars(
            select(Contact).where(Contact.email_hash == email_hash(email))
        ).one_or_none()


def signed_up(email: str = EMAIL, *, at: datetime = T0, jobs: int = 1, **merge: str) -> int:
    """A contact from a website signup, with pending sync jobs (as intake leaves it)."""
    with session_scope() as session:
        person = Contact(
            email=email,
            email_hash=email_hash(email),
            status=ContactStatus.NEW,
            status_changed_at=at,
            status_source=ChangeSource.SIGNUP,
            merge_fields=dict(merge),
        )
        session.add(person)
        session.flush()
        for n in range(jobs):
            submission = Submission(
                contact_id=person.id,
                form="newsletter_signup",
                fields={},
                newsletter_consent=True,
                submitted_at=at,
                need_until=None,
                retain_after_sync_seconds=3600,
                policy_version="test",
                idempotency_key=f"key-{email_hash(email)}-{n}",
            )
            session.add(submission)
            session.flush()
            session.add(
                SyncJob(
                    contact_id=person.id,
                    email_hash=person.email_hash,
                    submission_id=submission.id,
                )
            )
        return person.id


def jobs(email: str = EMAIL) -> list[SyncJob]:
    with session_scope() as session:
        return list(session.scalars(select(SyncJob).where(SyncJob.email_hash == email_hash(email))))


# --- each event type --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("action", "reason", "expected"),
    [("unsub", "manual", "unsub:manual"), ("delete", "abuse", "delete:abuse")],
)
def test_unsubscribe_marks_the_contact_with_reason_and_time_and_suppresses_its_jobs(
    action: str, reason: str, expected: str
) -> None:
    signed_up(jobs=2)
    fired = T0 + timedelta(minutes=5)
    state, outcome = apply(deliver(unsubscribe(EMAIL, fired, action=action, reason=reason)))
    assert (state, outcome) == (EventState.APPLIED, "status:unsubscribed")
    person = contact()
    assert person is not None
    assert person.status == ContactStatus.UNSUBSCRIBED
    assert person.status_reason == expected
    assert person.status_changed_at == fired
    assert person.status_source == ChangeSource.WEBHOOK
    assert [(j.state, j.outcome) for j in jobs()] == [
        (JobState.SUPPRESSED, "opted_out:unsubscribed")
    ] * 2
    with session_scope() as session:  # their retention clocks started
        assert all(s.need_until is not None for s in session.scalars(select(Submission)))


@pytest.mark.parametrize("reason", ["hard", "abuse"])
def test_cleaned_marks_the_contact_cleaned_and_suppresses_its_jobs(reason: str) -> None:
    signed_up()
    assert apply(deliver(cleaned(EMAIL, T0 + timedelta(seconds=1), reason)))[0] == "applied"
    person = contact()
    assert person is not None
    assert (person.status, person.status_reason) == ("cleaned", f"cleaned:{reason}")
    assert [j.state for j in jobs()] == [JobState.SUPPRESSED]


def test_an_unsubscribe_for_an_unknown_address_creates_the_contact_opted_out() -> None:
    apply(deliver(unsubscribe(EMAIL, T0)))
    person = contact()
    assert person is not None
    assert (person.email, person.status) == (EMAIL, ContactStatus.UNSUBSCRIBED)


def test_subscribe_from_a_mailchimp_form_creates_a_subscribed_contact_with_merge_fields() -> None:
    apply(deliver(subscribe(EMAIL, T0, FNAME="Zoë", LNAME="", PHONE="555")))
    person = contact()
    assert person is not None
    assert person.status == ContactStatus.SUBSCRIBED
    assert person.merge_fields == {"FNAME": "Zoë"}  # PHONE is not configured; LNAME empty


def test_profile_updates_only_configured_merge_fields_and_clears_empty_ones() -> None:
    signed_up(FNAME="Old", LNAME="Name")
    fields = [
        *profile(EMAIL, T0 + timedelta(minutes=1), FNAME="Zoë", LNAME="", PHONE="555"),
        ("data[merges][ADDRESS][addr1]", "1 Main St"),
        ("data[merges][ADDRESS][city]", "Boston"),
    ]
    assert apply(deliver(fields)) == (EventState.APPLIED, "profile")
    person = contact()
    assert person is not None
    assert person.merge_fields == {
        "FNAME": "Zoë",
        "ADDRESS": {"addr1": "1 Main St", "city": "Boston"},
    }
    assert person.status == ContactStatus.NEW  # a profile event never changes status


def test_profile_for_an_unknown_address_changes_nothing() -> None:
    assert apply(deliver(profile(EMAIL, T0, FNAME="Zoë"))) == (EventState.APPLIED, "no_contact")
    assert contact() is None


def test_campaign_is_recorded_and_changes_nothing() -> None:
    signed_up()
    assert apply(deliver(campaign(T0))) == (EventState.APPLIED, "recorded")
    person = contact()
    assert person is not None and person.status == ContactStatus.NEW


def test_upemail_moves_the_contact_and_later_events_find_the_new_address() -> None:
    signed_up()
    assert apply(deliver(upemail(EMAIL, NEW_EMAIL, T0 + timedelta(minutes=1))))[1] == (
        "email_changed"
    )
    assert contact(EMAIL) is None
    moved = contact(NEW_EMAIL)
    assert moved is not None and moved.email == NEW_EMAIL
    assert [j.state for j in jobs(NEW_EMAIL)] == [JobState.PENDING]  # the job followed
    apply(deliver(unsubscribe(NEW_EMAIL, T0 + timedelta(minutes=2))))
    moved = contact(NEW_EMAIL)
    assert moved is not None and moved.status == ContactStatus.UNSUBSCRIBED
    assert [j.state for j in jobs(NEW_EMAIL)] == [JobState.SUPPRESSED]


def test_upemail_onto_an_existing_contact_merges_keeping_the_most_restrictive_status() -> None:
    signed_up(EMAIL)
    apply(deliver(unsubscribe(EMAIL, T0 + timedelta(minutes=1))))
    new_id = signed_up(NEW_EMAIL, jobs=1)
    assert apply(deliver(upemail(EMAIL, NEW_EMAIL, T0 + timedelta(minutes=2))))[1] == (
        "email_merged"
    )
    assert contact(EMAIL) is None
    merged = contact(NEW_EMAIL)
    assert merged is not None
    assert (merged.id, merged.status) == (new_id, ContactStatus.UNSUBSCRIBED)
    with session_scope() as session:
        owners = set(session.scalars(select(Submission.contact_id)))
    assert owners == {new_id}  # both submissions now belong to the survivor
    assert {j.state for j in jobs(NEW_EMAIL)} == {JobState.SUPPRESSED}


def test_a_repeated_upemail_is_a_no_op() -> None:
    signed_up()
    apply(deliver(upemail(EMAIL, NEW_EMAIL, T0)))
    with session_scope() as session:  # as if the dedupe key had been purged
        session.execute(delete(WebhookEvent))
    assert apply(deliver(upemail(EMAIL, NEW_EMAIL, T0)))[1] == "unchanged"
    assert contact(NEW_EMAIL) is not None


# --- ordering and idempotence -----------------------------------------------------------


def test_an_older_subscribe_arriving_after_an_unsubscribe_does_not_undo_it() -> None:
    late = deliver(subscribe(EMAIL, T0))
    apply(deliver(unsubscribe(EMAIL, T0 + timedelta(minutes=1))))
    assert apply(late) == (EventState.IGNORED, "stale")
    person = contact()
    assert person is not None and person.status == ContactStatus.UNSUBSCRIBED


def test_an_older_unsubscribe_arriving_after_a_resubscribe_does_not_undo_it() -> None:
    late = deliver(unsubscribe(EMAIL, T0))
    apply(deliver(subscribe(EMAIL, T0 + timedelta(hours=1))))
    assert apply(late) == (EventState.IGNORED, "stale")
    person = contact()
    assert person is not None and person.status == ContactStatus.SUBSCRIBED


@pytest.mark.parametrize("unsubscribe_first", [True, False])
def test_within_the_same_second_the_opt_out_wins_whatever_the_order(
    unsubscribe_first: bool,
) -> None:
    pair = [deliver(unsubscribe(EMAIL, T0)), deliver(subscribe(EMAIL, T0))]
    for receipt in pair if unsubscribe_first else reversed(pair):
        apply(receipt)
    person = contact()
    assert person is not None and person.status == ContactStatus.UNSUBSCRIBED


def test_an_opt_out_fired_before_a_local_signup_change_still_applies() -> None:
    # The local clock cannot be ordered against Mailchimp's to the second: opt-outs win.
    signed_up(at=T0 + timedelta(seconds=30))
    assert apply(deliver(unsubscribe(EMAIL, T0)))[0] == EventState.APPLIED
    person = contact()
    assert person is not None and person.status == ContactStatus.UNSUBSCRIBED


def test_applying_an_event_twice_changes_nothing_the_second_time() -> None:
    receipt = deliver(unsubscribe(EMAIL, T0))
    apply(receipt)
    first = contact()
    with session_scope() as session:
        assert apply_event(session, receipt.event_id) is None
    again = contact()
    assert first is not None and again is not None
    assert (first.status, first.status_changed_at, first.updated_at) == (
        again.status,
        again.status_changed_at,
        again.updated_at,
    )


def test_a_replay_a_day_later_is_a_duplicate_and_changes_nothing() -> None:
    apply(deliver(unsubscribe(EMAIL, T0)))
    apply(deliver(subscribe(EMAIL, T0 + timedelta(hours=2))))  # re-subscribed in Mailchimp
    with freeze_time(utcnow() + timedelta(days=1)):
        replay = deliver(unsubscribe(EMAIL, T0))
    assert not replay.created
    person = contact()
    assert person is not None and person.status == ContactStatus.SUBSCRIBED


def test_an_erased_contact_is_never_changed_by_events() -> None:
    signed_up()
    with session_scope() as session:
        person = session.scalars(select(Contact)).one()
        person.status = ContactStatus.ERASED
        person.status_source = ChangeSource.ADMIN
    assert apply(deliver(subscribe(EMAIL, T0 + timedelta(days=1)))) == ("ignored", "erased")
    assert apply(deliver(profile(EMAIL, T0 + timedelta(days=1), FNAME="X")))[1] == "erased"


def test_applying_never_calls_mailchimp(monkeypatch: pytest.MonkeyPatch) -> None:
    import worker.mailchimp

    def refuse(*_: Any, **__: Any) -> Any:
        raise AssertionError("apply must not call Mailchimp")

    monkeypatch.setattr(worker.mailchimp, "get_gateway", refuse)
    monkeypatch.setattr(worker.mailchimp.Gateway, "call", refuse)
    signed_up()
    for fields in (
        subscribe(EMAIL, T0 + timedelta(seconds=1)),
        profile(EMAIL, T0 + timedelta(seconds=2), FNAME="Z"),
        unsubscribe(EMAIL, T0 + timedelta(seconds=3)),
        upemail(EMAIL, NEW_EMAIL, T0 + timedelta(seconds=4)),
        cleaned(NEW_EMAIL, T0 + timedelta(seconds=5)),
    ):
        assert apply(deliver(fields))[0] == EventState.APPLIED


# --- erased people stay erased; IPs are not kept; one bad event blocks nothing ------------


def erased(email: str = EMAIL) -> None:
    """What `listsync erase` leaves behind: no contact, only the suppression hash."""
    from worker.models import Suppression, SuppressionReason

    with session_scope() as session:
        session.add(
            Suppression(
                email_hash=email_hash(email), reason=SuppressionReason.ERASED, created_at=T0
            )
        )


@pytest.mark.parametrize(
    "event",
    [
        unsubscribe(EMAIL, T0 + timedelta(minutes=5), action="delete"),
        cleaned(EMAIL, T0 + timedelta(minutes=5)),
        subscribe(EMAIL, T0 + timedelta(minutes=5), FNAME="Zoë"),
    ],
    ids=["unsubscribe", "cleaned", "subscribe"],
)
def test_a_late_event_for_an_erased_address_does_not_bring_the_contact_back(
    event: Fields,
) -> None:
    erased()
    assert apply(deliver(event)) == (EventState.IGNORED, "erased")
    assert contact() is None


def test_an_email_change_onto_an_erased_address_changes_nothing() -> None:
    signed_up()
    erased(NEW_EMAIL)
    assert apply(deliver(upemail(EMAIL, NEW_EMAIL, T0 + timedelta(minutes=5)))) == (
        EventState.IGNORED,
        "erased",
    )
    assert contact() is not None and contact(NEW_EMAIL) is None


def test_the_ips_mailchimp_echoes_are_not_stored() -> None:
    receipt = deliver(subscribe(EMAIL, T0 + timedelta(minutes=5)))
    with session_scope() as session:
        event = session.get(WebhookEvent, receipt.event_id)
        assert event is not None and event.payload is not None
        assert "10.20.10.30" not in str(event.payload)
        assert event.payload["data"]["email"] == EMAIL


def test_an_event_that_fails_to_apply_is_parked_and_later_events_still_apply() -> None:
    from worker.optouts.apply import apply_pending

    signed_up()
    with session_scope() as session:
        # A row no current receiver would store (say, from an older version): `data` is a list.
        session.add(
            WebhookEvent(
                dedupe_key="broken-row",
                type="unsubscribe",
                source=ChangeSource.WEBHOOK,
                fired_at=T0 + timedelta(minutes=1),
                email_hash=email_hash(EMAIL),
                payload={"type": "unsubscribe", "data": ["not", "a", "group"]},
            )
        )
    good = deliver(unsubscribe(EMAIL, T0 + timedelta(minutes=5)))
    assert apply_pending() == 2
    with session_scope() as session:
        broken = session.scalars(
            select(WebhookEvent).where(WebhookEvent.dedupe_key == "broken-row")
        ).one()
        assert (broken.state, broken.outcome) == (EventState.FAILED, "error:AttributeError")
        later = session.get(WebhookEvent, good.event_id)
        assert later is not None and later.state == EventState.APPLIED
    person = contact()
    assert person is not None and person.status == ContactStatus.UNSUBSCRIBED


def test_a_reason_longer_than_the_column_is_cut_not_fatal() -> None:
    signed_up()
    long_reason = "x" * 64  # the receiver allows 64 characters; "cleaned:" makes it 72
    event = [(k, long_reason if k == "data[reason]" else v) for k, v in cleaned(EMAIL, T0)]
    assert apply(deliver(event)) == (EventState.APPLIED, "status:cleaned")
    person = contact()
    assert person is not None and person.status_reason == ("cleaned:" + long_reason)[:64]


def test_a_chunk_applied_together_ends_as_the_same_events_applied_one_by_one(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """apply_pending looks up a chunk's contacts and erasures once; renames, merges, new
    contacts and erased people within one chunk must come out as they do event by event."""
    from worker.models import Suppression, SuppressionReason
    from worker.optouts.apply import apply_pending

    other, new_person, erased = "ola.sky@example.org", "new.one@example.org", "gone@example.org"
    third, moved_to = "kim.park@example.org", "kim.new@example.org"
    deliveries = [
        upemail(EMAIL, other, T0 + timedelta(minutes=1)),  # merges into an existing contact
        unsubscribe(other, T0 + timedelta(minutes=2)),  # under the address it merged into
        profile(EMAIL, T0 + timedelta(minutes=3), FNAME="Old"),  # the old address, now gone
        unsubscribe(new_person, T0 + timedelta(minutes=4)),  # never seen: created unsubscribed
        subscribe(new_person, T0 + timedelta(minutes=5), FNAME="New"),
        cleaned(new_person, T0 + timedelta(minutes=6)),
        unsubscribe(erased, T0 + timedelta(minutes=7)),
        unsubscribe(EMAIL.upper(), T0 + timedelta(minutes=8)),  # the renamed address again
        upemail(third, moved_to, T0 + timedelta(minutes=9)),  # onto an address never seen
        unsubscribe(moved_to, T0 + timedelta(minutes=10)),  # its moved job is suppressed
    ]

    Rows = list[tuple[Any, ...]]

    def run(together: bool) -> tuple[Rows, Rows, Rows]:
        with session_scope() as session:
            for table in (SyncJob, Submission, WebhookEvent, Contact, Suppression):
                session.execute(delete(table))
            session.add(Suppression(email_hash=email_hash(erased), reason=SuppressionReason.ERASED))
        signed_up(EMAIL, FNAME="Zoë")
        signed_up(other)
        signed_up(third)
        receipts = [deliver(fields) for fields in deliveries]
        if together:
            assert apply_pending() == len(deliveries)
        else:
            for receipt in receipts:
                apply(receipt)
        with session_scope() as session:
            people = session.execute(
                select(Contact.email_hash, Contact.status, Contact.status_reason).order_by(
                    Contact.email_hash
                )
            ).all()
            settled = session.execute(
                select(WebhookEvent.state, WebhookEvent.outcome).order_by(WebhookEvent.fired_at)
            ).all()
            queued = session.execute(
                select(SyncJob.email_hash, SyncJob.state).order_by(SyncJob.id)
            ).all()
            return (
                [tuple(p) for p in people],
                [tuple(e) for e in settled],
                [tuple(j) for j in queued],
            )

    one_by_one = run(together=False)
    with caplog.at_level(logging.WARNING, logger="worker.optouts.apply"):
        together = run(together=True)
    assert together == one_by_one
    assert "applying them one at a time" not in caplog.text  # together, not by the fallback
    people, settled, queued = together
    # The merged contact, the renamed address (seen again, so created again) and the contact
    # renamed onto a new address unsubscribed, the new person cleaned, the erased person
    # nowhere; every job suppressed, the moved one under its new address.
    assert sorted(status for _, status, _ in people) == [
        ContactStatus.CLEANED,
        ContactStatus.UNSUBSCRIBED,
        ContactStatus.UNSUBSCRIBED,
        ContactStatus.UNSUBSCRIBED,
    ]
    assert (EventState.APPLIED, "email_changed") in settled
    assert (email_hash(moved_to), JobState.SUPPRESSED) in queued
    assert {state for _, state in queued} == {JobState.SUPPRESSED}
    assert email_hash(erased) not in {key for key, _, _ in people}
    assert (EventState.IGNORED, "erased") in settled


def test_a_run_beside_another_never_applies_the_events_that_run_claimed(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Two apply runs at once (the default two worker processes) take different events. On
    SQLite, which has no row locks, the claim must be a write: a read would let both apply."""
    import threading

    from sqlalchemy import event

    from worker.db import get_engine
    from worker.optouts.apply import _claim, _settle, apply_pending

    for n in range(5):
        deliver(unsubscribe(f"person.{n}@example.org", T0 + timedelta(minutes=n)))
    claimed, second_read = threading.Event(), threading.Event()

    def note_second_run_read(*_: Any) -> None:
        if threading.current_thread() is threading.main_thread():
            second_read.set()  # the second run's claim has gone to the database

    def first_run() -> None:
        with session_scope() as session:
            events = _claim(session, 100)
            claimed.set()
            # Settle only once the second run has read: a read-only claim would see these
            # events as pending and apply them again after this commit.
            assert second_read.wait(10)
            for event in events:
                _settle(session, event)

    event.listen(get_engine(), "after_cursor_execute", note_second_run_read)
    first = threading.Thread(target=first_run)
    first.start()
    assert claimed.wait(5)
    try:
        with caplog.at_level(logging.INFO, logger="worker.optouts.apply"):
            assert apply_pending() == 0
    finally:
        event.remove(get_engine(), "after_cursor_execute", note_second_run_read)
    first.join(10)
    with session_scope() as session:
        states = session.scalars(select(WebhookEvent.state)).all()
    assert states == [EventState.APPLIED] * 5
    assert "-> applied" not in caplog.text  # the second run applied nothing
