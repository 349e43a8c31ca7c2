"""Signup intake: validation, normalization, one-transaction storage, idempotency."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from worker.db import session_scope
from worker.models import (
    Contact,
    RejectedSignup,
    Submission,
    SubmissionIP,
    Suppression,
    SyncJob,
)
from worker.signups.message import SignupRejected, build_message, masked_repr, validate
from worker.signups.store import ingest, receive

EMAIL = "Ada.Lovelace@Analytical.org"


def counts(session: Session) -> dict[str, int]:
    return {
        model.__tablename__: session.scalar(select(func.count()).select_from(model)) or 0
        for model in (Contact, Submission, SubmissionIP, SyncJob)
    }


def test_newsletter_signup_writes_contact_submission_and_sync_job(db: str) -> None:
    result = receive(
        build_message(EMAIL, "newsletter_signup", fields={"first_name": "Ada"}, ip="203.0.113.9"),
        channel="queue",
    )
    assert result.created and result.sync_job_id is not None
    with session_scope() as session:
        contact = session.scalars(select(Contact)).one()
        submission = session.get(Submission, result.submission_id)
        assert submission is not None
        assert contact.email == "Ada.Lovelace@analytical.org"  # domain normalized
        assert contact.merge_fields == {"FNAME": "Ada"}
        assert submission.newsletter_consent is True
        assert submission.fields == {"first_name": "Ada"}
        assert submission.policy_version
        assert session.get(SubmissionIP, submission.id).ip == "203.0.113.9"  # type: ignore[union-attr]
        assert "ip" not in submission.fields
        assert counts(session) == {"contact": 1, "submission": 1, "submission_ip": 1, "sync_job": 1}


def test_email_hash_is_md5_of_the_lowercased_address(db: str) -> None:
    import hashlib

    signup = validate(build_message(EMAIL, "newsletter_signup"))
    expected = hashlib.md5(EMAIL.lower().encode(), usedforsecurity=False).hexdigest()
    assert signup.email_hash == expected


def test_contact_form_without_checkbox_is_stored_but_not_synced(db: str) -> None:
    result = receive(
        build_message(
            EMAIL, "contact_form", fields={"message": "hello", "newsletter_opt_in": False}
        ),
        channel="queue",
    )
    assert result.created and result.sync_job_id is None
    with session_scope() as session:
        assert counts(session)["submission"] == 1
        assert counts(session)["sync_job"] == 0
        assert session.scalars(select(Submission)).one().newsletter_consent is False


@pytest.mark.parametrize("checkbox", [True, "yes", "on"])
def test_contact_form_with_checkbox_is_synced(db: str, checkbox: object) -> None:
    message = build_message(EMAIL, "contact_form", fields={"newsletter_opt_in": checkbox})
    assert receive(message, channel="queue").sync_job_id is not None


def test_explicit_no_in_consent_overrides_the_form(db: str) -> None:
    result = receive(build_message(EMAIL, "newsletter_signup", newsletter=False), channel="queue")
    assert result.sync_job_id is None


def test_unknown_fields_are_dropped_and_never_stored(db: str) -> None:
    message = build_message(
        EMAIL, "newsletter_signup", fields={"first_name": "Ada", "ssn": "078-05-1120"}
    )
    result = receive(message, channel="queue")
    with session_scope() as session:
        submission = session.get(Submission, result.submission_id)
        assert submission is not None and submission.fields == {"first_name": "Ada"}


def test_same_idempotency_key_gives_the_same_submission(db: str) -> None:
    message = build_message(EMAIL, "newsletter_signup", idempotency_key="web-form-123456")
    first = receive(message, channel="queue")
    second = receive(message, channel="http")
    assert second.submission_id == first.submission_id and not second.created
    with session_scope() as session:
        assert counts(session) == {"contact": 1, "submission": 1, "submission_ip": 0, "sync_job": 1}


def test_without_a_key_the_same_message_twice_is_one_submission(db: str) -> None:
    message = build_message(EMAIL, "newsletter_signup")
    receive(message, channel="queue")
    receive(message, channel="queue")
    with session_scope() as session:
        assert counts(session)["submission"] == 1


def test_a_redelivered_message_without_key_or_time_is_still_one_submission(
    celery_worker: object,
) -> None:
    from tests.helpers import wait_for
    from worker.app import app
    from worker.publish import RECEIVE_TASK

    def stored() -> list[str]:
        with session_scope() as session:
            return list(session.scalars(select(Submission.idempotency_key)))

    def handled() -> float:
        """Queued signups intake has finished with, stored or found to be a duplicate."""
        from worker.metrics import read_counters

        return sum(read_counters()["signups_received_total"].values())

    key = "celery:" + hashlib.sha256(b"redelivered-0001").hexdigest()[:40]
    # As a non-Python website might publish it: neither idempotency_key nor submitted_at.
    # (A contact form without the newsletter box: no sync job, so no flush task outlives
    # the test once intake has counted both messages.)
    message = {"v": 1, "email": EMAIL, "form": "contact_form"}
    app.send_task(RECEIVE_TASK, kwargs={"message": message}, task_id="redelivered-0001")
    assert wait_for(stored, timeout=20) == [key]
    # The same message again, as Redis hands it out after a worker died before its ack.
    app.send_task(RECEIVE_TASK, kwargs={"message": message}, task_id="redelivered-0001")
    wait_for(lambda: handled() == 2, timeout=20)
    assert stored() == [key]


def test_second_signup_of_the_same_person_reuses_the_contact(db: str) -> None:
    receive(build_message(EMAIL, "newsletter_signup"), channel="queue")
    receive(build_message(EMAIL.upper(), "contact_form", fields={"message": "hi"}), channel="queue")
    with session_scope() as session:
        assert counts(session)["contact"] == 1
        assert counts(session)["submission"] == 2


BAD: list[tuple[dict[str, Any], str, str]] = [
    ({"email": "not-an-address"}, "email", "@"),
    ({"email": "ada@"}, "email", ""),
    ({"form": "no_such_form"}, "form", "unknown form"),
    ({"v": 2}, "v", "1"),
    ({"submitted_at": "2026-01-01T10:00:00"}, "submitted_at", "timezone"),
    ({"ip": "999.1.1.1"}, "ip", "IP"),
    ({"surprise": 1}, "surprise", "Extra inputs"),
    ({"fields": {"first_name": "x" * 6000}}, "fields.first_name", "at most"),
    ({"idempotency_key": "no spaces allowed"}, "idempotency_key", "pattern"),
]


@pytest.mark.parametrize(("change", "field", "words"), BAD)
def test_invalid_signup_names_the_field_and_writes_only_a_rejection(
    db: str, change: dict[str, Any], field: str, words: str
) -> None:
    message = {**build_message("grace@navy.example.net", "newsletter_signup"), **change}
    with pytest.raises(SignupRejected) as info:
        receive(message, channel="queue")
    assert any(p.field == field and words in p.reason for p in info.value.problems), info.value
    assert "grace@" not in str(info.value)
    with session_scope() as session:
        assert counts(session) == {"contact": 0, "submission": 0, "submission_ip": 0, "sync_job": 0}
        rejected = session.scalars(select(RejectedSignup)).one()
        assert field in rejected.reason and "grace" not in rejected.reason


def test_submitted_in_the_future_is_refused(db: str) -> None:
    late = datetime.now(UTC) + timedelta(days=2)
    with pytest.raises(SignupRejected, match="submitted_at: is in the future"):
        validate(build_message(EMAIL, "newsletter_signup", submitted_at=late))


def test_stale_signup_for_an_erased_address_is_dropped(db: str) -> None:
    signup = validate(
        build_message(
            EMAIL, "newsletter_signup", submitted_at=datetime.now(UTC) - timedelta(hours=1)
        )
    )
    with session_scope() as session:
        session.add(Suppression(email_hash=signup.email_hash, reason="erased"))
    with pytest.raises(SignupRejected, match="erased"), session_scope() as session:
        ingest(session, signup)
    with session_scope() as session:
        assert counts(session)["contact"] == 0


def test_masked_repr_never_shows_the_address() -> None:
    text = masked_repr(build_message(EMAIL, "newsletter_signup"))
    assert "Ada" not in text and "analytical" not in text.lower() and "newsletter_signup" in text
