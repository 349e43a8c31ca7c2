"""Factories for retention tests: rows made directly with the models, at chosen times."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy.orm import Session

from worker.addresses import email_hash
from worker.models import (
    Contact,
    ContactStatus,
    EventState,
    Hold,
    JobKind,
    JobState,
    Submission,
    SubmissionIP,
    SyncJob,
    WebhookEvent,
)
from worker.retention.schedule import get_schedule

T0 = datetime(2026, 1, 15, 12, 0, tzinfo=UTC)


@pytest.fixture(autouse=True)
def _fresh_schedule() -> Iterator[None]:
    get_schedule.cache_clear()  # type: ignore[attr-defined]
    yield
    get_schedule.cache_clear()  # type: ignore[attr-defined]


class Rows:
    """Creates rows and commits each; returns ids so tests never hold stale objects."""

    _seq = itertools.count(1)

    def __init__(self, url: str) -> None:
        from worker.db import get_sessionmaker

        self.sessions = get_sessionmaker(url)

    def session(self) -> Session:
        return self.sessions()

    def contact(
        self,
        email: str = "ada@example.com",
        status: str = ContactStatus.SUBSCRIBED,
        changed_at: datetime = T0,
        **merge: str,
    ) -> int:
        with self.sessions() as s:
            contact = Contact(
                email=email,
                email_hash=email_hash(email),
                status=status,
                status_changed_at=changed_at,
                merge_fields=merge,
                created_at=changed_at,
            )
            s.add(contact)
            s.commit()
            return contact.id

    def submission(
        self,
        contact_id: int,
        *,
        form: str = "contact_form",
        received_at: datetime = T0,
        need_until: datetime | None = None,
        ip: str | None = None,
        fields: dict[str, Any] | None = None,
        by_schedule: bool = False,
    ) -> int:
        """need_until given, or (by_schedule) derived from the schedule as intake does."""
        schedule = get_schedule()
        if by_schedule:
            need_until = received_at + schedule.rule_for(form).period
        with self.sessions() as s:
            sub = Submission(
                contact_id=contact_id,
                form=form,
                fields=fields or {"first_name": "Ada", "message": "hello"},
                newsletter_consent=True,
                submitted_at=received_at,
                received_at=received_at,
                need_until=need_until,
                policy_version=schedule.policy_version,
                idempotency_key=f"test-{next(self._seq)}",
            )
            s.add(sub)
            s.flush()
            if ip is not None:
                s.add(SubmissionIP(submission_id=sub.id, ip=ip, received_at=received_at))
            s.commit()
            return sub.id

    def hold(
        self,
        *,
        submission_id: int | None = None,
        email: str | None = None,
        until: datetime | None = None,
        released_at: datetime | None = None,
    ) -> int:
        with self.sessions() as s:
            hold = Hold(
                submission_id=submission_id,
                email_hash=email_hash(email) if email else None,
                reason="records request 2026-17",
                until=until,
                released_at=released_at,
            )
            s.add(hold)
            s.commit()
            return hold.id

    def event(self, email: str, received_at: datetime, state: str = EventState.APPLIED) -> int:
        with self.sessions() as s:
            event = WebhookEvent(
                dedupe_key=f"evt-{next(self._seq)}",
                type="unsubscribe",
                fired_at=received_at,
                email_hash=email_hash(email),
                payload={"data[email]": email},
                received_at=received_at,
                state=state,
            )
            s.add(event)
            s.commit()
            return event.id

    def job(
        self,
        email: str,
        *,
        state: str = JobState.DONE,
        finished_at: datetime | None = T0,
        kind: str = JobKind.UPSERT,
        contact_id: int | None = None,
    ) -> int:
        with self.sessions() as s:
            job = SyncJob(
                kind=kind,
                contact_id=contact_id,
                email_hash=email_hash(email),
                state=state,
                created_at=finished_at or T0,
                finished_at=finished_at,
            )
            s.add(job)
            s.commit()
            return job.id

    def count(self, model: Any, *where: Any) -> int:
        from sqlalchemy import func, select

        with self.sessions() as s:
            return int(s.scalar(select(func.count()).select_from(model).where(*where)) or 0)

    def exists(self, model: Any, key: Any) -> bool:
        with self.sessions() as s:
            return s.get(model, key) is not None


@pytest.fixture
def rows(db: str) -> Rows:
    return Rows(db)


def seconds(n: int) -> timedelta:
    return timedelta(seconds=n)
