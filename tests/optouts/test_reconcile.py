"""Reconciliation against a members source that behaves like Mailchimp's paged listing."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import select

from worker import metrics
from worker.addresses import email_hash
from worker.db import session_scope
from worker.mailchimp import TransientError
from worker.models import (
    ChangeSource,
    Contact,
    ContactStatus,
    JobState,
    SyncJob,
    Watermark,
    WebhookEvent,
)
from worker.optouts.reconcile import OVERLAP, SUCCESS_WATERMARK, reconcile, watermark_name

T0 = datetime(2024, 3, 1, 12, 0, 0, tzinfo=UTC)

pytestmark = pytest.mark.usefixtures("store")


class FakeMembers:
    """Sorted by last_changed, filtered by since_last_changed, paged by offset and count."""

    list_id = "a1b2c3d4e5"

    def __init__(self) -> None:
        self.members: list[dict[str, Any]] = []
        self.calls: list[tuple[str, datetime | None, int, int]] = []
        self.fail_on_call: int | None = None

    def add(self, email: str, status: str, changed: datetime, reason: str = "") -> None:
        self.members = [m for m in self.members if m["email_address"] != email]
        self.members.append(
            {
                "id": email_hash(email),
                "email_address": email,
                "status": status,
                "last_changed": changed.isoformat(),
                "unsubscribe_reason": reason,
            }
        )

    def list_members(
        self, status: str, since_last_changed: datetime | None, offset: int, count: int = 1000
    ) -> tuple[list[dict[str, Any]], int]:
        self.calls.append((status, since_last_changed, offset, count))
        if self.fail_on_call is not None and len(self.calls) == self.fail_on_call:
            raise TransientError("server_error", 500)
        rows = sorted(
            (
                m
                for m in self.members
                if m["status"] == status
                and (
                    since_last_changed is None
                    or datetime.fromisoformat(m["last_changed"]) >= since_last_changed
                )
            ),
            key=lambda m: m["last_changed"],
        )
        return rows[offset : offset + count], len(rows)


def local(email: str, status: str = ContactStatus.SUBSCRIBED, *, job: bool = False) -> None:
    with session_scope() as session:
        person = Contact(
            email=email,
            email_hash=email_hash(email),
            status=status,
            status_changed_at=T0 - timedelta(days=30),
            status_source=ChangeSource.SIGNUP,
        )
        session.add(person)
        session.flush()
        if job:
            session.add(SyncJob(contact_id=person.id, email_hash=person.email_hash))


def status_of(email: str) -> str | None:
    with session_scope() as session:
        return session.scalar(select(Contact.status).where(Contact.email_hash == email_hash(email)))


def watermark(name: str) -> datetime | None:
    with session_scope() as session:
        row = session.get(Watermark, name)
        return row.value if row else None


def corrections_metric() -> float:
    return sum(metrics.read_counters()["reconcile_corrections_total"].values())


def test_a_missed_unsubscribe_and_a_missed_bounce_are_corrected_and_counted() -> None:
    source = FakeMembers()
    local("a@example.org", job=True)
    local("b@example.org")
    local("c@example.org", ContactStatus.UNSUBSCRIBED)  # already known: not a correction
    source.add("a@example.org", "unsubscribed", T0, "N/A (Unsubscribed from a campaign)")
    source.add("b@example.org", "cleaned", T0 + timedelta(minutes=1))
    source.add("c@example.org", "unsubscribed", T0 + timedelta(minutes=2))
    report = reconcile(source)
    assert report.corrections == 2
    assert report.by_status == {"unsubscribed": 1, "cleaned": 1}
    assert status_of("a@example.org") == ContactStatus.UNSUBSCRIBED
    assert status_of("b@example.org") == ContactStatus.CLEANED
    with session_scope() as session:
        person = session.scalars(
            select(Contact).where(Contact.email_hash == email_hash("a@example.org"))
        ).one()
        assert person.status_source == ChangeSource.RECONCILE
        assert person.status_changed_at == T0
        assert session.scalars(select(SyncJob.state)).all() == [JobState.SUPPRESSED]
        audit = session.scalars(select(WebhookEvent)).all()
        assert {(e.source, e.type) for e in audit} == {
            ("reconcile", "unsubscribe"),
            ("reconcile", "cleaned"),
        }
    assert corrections_metric() == 2


def test_unknown_opted_out_members_are_created_so_a_stale_signup_cannot_resubscribe() -> None:
    source = FakeMembers()
    source.add("hosted-form@example.org", "unsubscribed", T0)
    reconcile(source)
    assert status_of("hosted-form@example.org") == ContactStatus.UNSUBSCRIBED


def test_the_watermark_moves_to_the_newest_change_and_the_next_run_overlaps_it() -> None:
    source = FakeMembers()
    source.add("a@example.org", "unsubscribed", T0)
    source.add("b@example.org", "unsubscribed", T0 + timedelta(hours=1))
    reconcile(source)
    assert watermark(watermark_name("unsubscribed")) == T0 + timedelta(hours=1)
    assert watermark(SUCCESS_WATERMARK) is not None
    source.calls.clear()
    second = reconcile(source)
    assert source.calls[0][1] == T0 + timedelta(hours=1) - OVERLAP
    assert second.corrections == 0  # re-reading the overlap is a no-op


def test_pages_of_count_are_walked_and_each_page_commit_advances_the_watermark() -> None:
    source = FakeMembers()
    for n in range(250):
        source.add(f"p{n}@example.org", "unsubscribed", T0 + timedelta(seconds=n))
    source.fail_on_call = 4  # unsubscribed pages at offsets 0, 80, 160; then Mailchimp fails
    with pytest.raises(TransientError):
        reconcile(source, page_size=100)
    assert [c[2] for c in source.calls[:3]] == [0, 80, 160]
    assert all(c[3] == 100 for c in source.calls)
    # Only committed pages count: the third page ended at member 249.
    assert watermark(watermark_name("unsubscribed")) == T0 + timedelta(seconds=249)
    assert status_of("p249@example.org") == ContactStatus.UNSUBSCRIBED
    assert watermark(SUCCESS_WATERMARK) is None


def test_a_failure_before_a_page_is_committed_leaves_the_watermark_where_it_was() -> None:
    source = FakeMembers()
    for n in range(150):
        source.add(f"p{n}@example.org", "unsubscribed", T0 + timedelta(seconds=n))
    source.fail_on_call = 2
    with pytest.raises(TransientError):
        reconcile(source, page_size=100)
    assert watermark(watermark_name("unsubscribed")) == T0 + timedelta(seconds=99)
    source.fail_on_call = None
    source.calls.clear()
    report = reconcile(source, page_size=100)
    assert source.calls[0][1] == T0 + timedelta(seconds=99) - OVERLAP
    assert status_of("p149@example.org") == ContactStatus.UNSUBSCRIBED
    assert report.corrections == 50


def test_a_member_resubscribed_locally_later_by_webhook_is_not_reverted() -> None:
    source = FakeMembers()
    with session_scope() as session:
        session.add(
            Contact(
                email="r@example.org",
                email_hash=email_hash("r@example.org"),
                status=ContactStatus.SUBSCRIBED,
                status_changed_at=T0 + timedelta(hours=1),
                status_source=ChangeSource.WEBHOOK,
            )
        )
    source.add("r@example.org", "unsubscribed", T0)  # an older view of the member
    assert reconcile(source).corrections == 0
    assert status_of("r@example.org") == ContactStatus.SUBSCRIBED


def test_a_run_past_its_time_budget_stops_at_a_page_and_its_continuation_goes_on_from_there() -> (
    None
):
    source = FakeMembers()
    for n in range(250):
        source.add(f"p{n}@example.org", "unsubscribed", T0 + timedelta(seconds=n))
    source.add("c@example.org", "cleaned", T0)
    first = reconcile(source, page_size=100, time_budget_seconds=0)
    assert first.resume == {"status": "unsubscribed", "since": None, "offset": 80}
    assert first.pages == 1 and len(source.calls) == 1
    assert status_of("p99@example.org") == ContactStatus.UNSUBSCRIBED
    assert status_of("p100@example.org") is None
    assert watermark(SUCCESS_WATERMARK) is None  # not a finished run yet

    # Each continuation picks up the listing where the last one stopped, never from the top
    # (members changed in one burst can fill more than a run's budget inside the overlap).
    report, offsets = first, []
    while report.resume is not None:
        source.calls.clear()
        report = reconcile(source, page_size=100, time_budget_seconds=0, resume=report.resume)
        offsets.append(source.calls[0][2])
    assert offsets == [80, 160]
    assert source.calls[-1][0] == "cleaned"  # the last continuation went on to the next status
    assert status_of("p249@example.org") == ContactStatus.UNSUBSCRIBED
    assert status_of("c@example.org") == ContactStatus.CLEANED
    assert watermark(SUCCESS_WATERMARK) is not None


@pytest.mark.parametrize(
    ("resume", "field"),
    [
        ({"status": "subscribed", "since": None, "offset": 0}, "status"),
        ({"status": "cleaned", "since": "yesterday", "offset": 0}, "since"),
        ({"status": "cleaned", "since": None, "offset": -1}, "offset"),
        ({"status": "cleaned", "since": None, "offset": "80"}, "offset"),
    ],
)
def test_a_bad_continuation_is_refused_naming_the_field_before_anything_is_read(
    resume: dict[str, Any], field: str
) -> None:
    source = FakeMembers()
    source.add("c@example.org", "cleaned", T0)
    with pytest.raises(ValueError, match=f"resume: {field} "):
        reconcile(source, resume=resume)
    assert source.calls == [] and status_of("c@example.org") is None
