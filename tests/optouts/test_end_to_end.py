"""End to end: the emulator delivers webhooks over real HTTP to `listsync web` (uvicorn in a
subprocess), a real Celery worker applies them, and reconciliation catches lost ones."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests
from sqlalchemy import select, update

from tests.conftest import Audience
from tests.helpers import run_listsync, wait_for
from worker import metrics
from worker.addresses import email_hash
from worker.app import app
from worker.cli.processes import free_port
from worker.db import session_scope
from worker.models import (
    FINISHED_JOB_STATES,
    Contact,
    ContactStatus,
    JobState,
    SyncJob,
    utcnow,
)

SECRET = "test-webhook-secret-0123456789"


@dataclass
class Live:
    audience: Audience
    base: str
    log_path: Path

    def web_log(self) -> str:
        return self.log_path.read_text(errors="replace")


@pytest.fixture
def live(
    audience: Audience, celery_worker: object, settings_env: dict[str, str], tmp_path: Path
) -> Iterator[Live]:
    """`listsync web` on a free port, registered as the audience's webhook."""
    emu = audience.emu
    emu.set_webhook_delivery(enabled=True, blocked_emails=[])
    port = free_port()
    log_path = tmp_path / "web.log"
    with log_path.open("wb") as log_file:
        proc = subprocess.Popen(
            [sys.executable, "-m", "worker.cli", "web", "--port", str(port)],
            env={**os.environ, **settings_env},
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
    base = f"http://127.0.0.1:{port}"
    try:

        def up() -> bool:
            assert proc.poll() is None, log_path.read_text()
            try:
                return requests.get(base + "/healthz", timeout=1).ok
            except requests.RequestException:
                return False

        wait_for(up, timeout=30)
        registered = run_listsync("webhook", "register", "--base-url", base, env=settings_env)
        assert registered.returncode == 0, registered.stderr
        assert SECRET not in registered.stdout
        listed = run_listsync("webhook", "list", env=settings_env)
        assert "events=campaign,cleaned,profile,subscribe,unsubscribe,upemail" in listed.stdout
        assert "sources=admin,user" in listed.stdout
        yield Live(audience, base, log_path)
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        emu.set_webhook_delivery(enabled=True, blocked_emails=[])


def local_status(email: str) -> str | None:
    with session_scope() as session:
        return session.scalar(select(Contact.status).where(Contact.email_hash == email_hash(email)))


def test_a_person_unsubscribing_in_mailchimp_is_unsubscribed_locally_within_seconds(
    live: Live, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    email = "river.song@listsync-e2e.org"
    emu, list_id = live.audience.emu, live.audience.list_id
    emu.signup(email, merge_fields={"FNAME": "River"}, list_id=list_id)  # a hosted form
    wait_for(lambda: local_status(email) == ContactStatus.SUBSCRIBED, timeout=20)
    emu.unsubscribe(email, list_id=list_id)
    wait_for(lambda: local_status(email) == ContactStatus.UNSUBSCRIBED, timeout=20)
    with session_scope() as session:
        person = session.scalars(select(Contact).where(Contact.email_hash == email_hash(email)))
        assert person.one().merge_fields == {"FNAME": "River"}
    for text in (live.web_log(), caplog.text):
        assert email not in text
        assert "river" not in text.lower()
        assert SECRET not in text


def test_with_webhook_delivery_off_reconcile_catches_the_unsubscribe(live: Live) -> None:
    email = "amy.pond@listsync-e2e.org"
    emu, list_id = live.audience.emu, live.audience.list_id
    emu.signup(email, list_id=list_id)
    wait_for(lambda: local_status(email) == ContactStatus.SUBSCRIBED, timeout=20)
    emu.set_webhook_delivery(enabled=False)
    emu.unsubscribe(email, list_id=list_id)
    assert local_status(email) == ContactStatus.SUBSCRIBED
    app.send_task("listsync.optouts.reconcile")
    wait_for(lambda: local_status(email) == ContactStatus.UNSUBSCRIBED, timeout=30)
    corrections = metrics.read_counters()["reconcile_corrections_total"]
    assert sum(corrections.values()) == 1


def test_a_new_signup_after_an_unsubscribe_does_not_resubscribe(live: Live) -> None:
    from worker.publish import enqueue_signup

    email = "clara.oswald@listsync-e2e.org"
    emu, list_id = live.audience.emu, live.audience.list_id
    emu.signup(email, list_id=list_id)
    wait_for(lambda: local_status(email) == ContactStatus.SUBSCRIBED, timeout=20)
    emu.unsubscribe(email, list_id=list_id)
    wait_for(lambda: local_status(email) == ContactStatus.UNSUBSCRIBED, timeout=20)

    enqueue_signup(email=email, form="newsletter_signup")

    def settled_job() -> Any:
        with session_scope() as session:
            job = session.scalars(select(SyncJob).where(SyncJob.email_hash == email_hash(email)))
            found = job.one_or_none()
            return found if found is not None and found.state in FINISHED_JOB_STATES else None

    job = wait_for(settled_job, timeout=30)
    assert (job.state, job.outcome) == (JobState.SUPPRESSED, "opted_out:unsubscribed")
    assert live.audience.status(email) == "unsubscribed"
    assert local_status(email) == ContactStatus.UNSUBSCRIBED


def test_a_reconcile_past_its_time_budget_queues_the_rest_of_itself(
    audience: Audience,
    celery_worker: object,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """More than a page of lost opt-outs and a budget spent after the first page: the task
    queues its continuation (kwargs name no member), which finishes the run."""
    import tasks.optouts
    from worker.models import Watermark
    from worker.optouts.reconcile import PAGE_SIZE, SUCCESS_WATERMARK

    monkeypatch.setattr(tasks.optouts, "TASK_TIME_BUDGET_SECONDS", 0.0)
    emails = [f"lost.{n}@listsync-e2e.org" for n in range(PAGE_SIZE + 5)]
    for email in emails:
        audience.emu.seed_member(email, "unsubscribed", list_id=audience.list_id)

    def finished() -> bool:
        with session_scope() as session:
            return session.get(Watermark, SUCCESS_WATERMARK) is not None

    caplog.set_level(logging.INFO, logger="worker.optouts.reconcile")
    app.send_task("listsync.optouts.reconcile")
    wait_for(finished, timeout=120)
    assert "reconcile: time budget spent after 1 pages; continuing" in caplog.messages
    with session_scope() as session:
        statuses = session.scalars(select(Contact.status)).all()
    assert len(statuses) == len(emails) and set(statuses) == {ContactStatus.UNSUBSCRIBED}
    corrections = metrics.read_counters()["reconcile_corrections_total"]
    assert sum(corrections.values()) == len(emails)  # the overlap re-read corrects nothing


def test_an_unsubscribe_landing_between_the_read_and_a_reconfirmation_is_restored(
    live: Live, monkeypatch: pytest.MonkeyPatch
) -> None:
    from config import get_settings
    from worker.models import OPTOUT_RACED, JobKind
    from worker.publish import enqueue_signup
    from worker.signups import flush as sync

    monkeypatch.setenv("LISTSYNC_RESUBSCRIBE_WITH_CONFIRMATION", "true")
    get_settings.cache_clear()
    email = "second.thoughts@listsync-e2e.org"
    emu, list_id = live.audience.emu, live.audience.list_id
    emu.signup(email, list_id=list_id)
    wait_for(lambda: local_status(email) == ContactStatus.SUBSCRIBED, timeout=20)
    emu.unsubscribe(email, list_id=list_id)
    wait_for(lambda: local_status(email) == ContactStatus.UNSUBSCRIBED, timeout=20)
    # Mailchimp dates events to the second: the next opt-out must fall in a later one.
    first = emu.advance_clock(0)[:19]
    wait_for(lambda: emu.advance_clock(0)[:19] > first)
    # The person unsubscribes again (a campaign's link) just as the re-confirmation request
    # reaches Mailchimp: after the flush read the member, before the PUT is applied.
    emu.script_failures(
        "unsubscribe_first", count=1, path=f"/3.0/lists/{list_id}/members/*", method="PUT"
    )
    enqueue_signup(email=email, form="newsletter_signup")  # a new consent, after the opt-out

    def jobs(kind: str) -> list[SyncJob]:
        with session_scope() as session:
            return list(
                session.scalars(
                    select(SyncJob).where(
                        SyncJob.email_hash == email_hash(email), SyncJob.kind == kind
                    )
                )
            )

    # The PUT overwrote the opt-out with `pending`; the opt-out's webhook takes it back.
    restore = wait_for(lambda: jobs(JobKind.OPTOUT), timeout=30)[0]
    with session_scope() as session:  # due at once, or once a request in flight has landed
        session.execute(
            update(SyncJob).where(SyncJob.id == restore.id).values(next_attempt_at=utcnow())
        )

    def restored() -> bool:
        sync.flush()
        return live.audience.status(email) == "unsubscribed"

    wait_for(restored, timeout=30)
    (upsert,) = jobs(JobKind.UPSERT)[-1:]
    assert upsert.outcome == OPTOUT_RACED
    assert jobs(JobKind.OPTOUT)[0].state == JobState.DONE
    assert local_status(email) == ContactStatus.UNSUBSCRIBED
