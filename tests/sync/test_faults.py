"""Invariant 1 under faults: a worker SIGKILLed mid-flush, Redis emptied, the call cap held."""

from __future__ import annotations

import os
import signal
import threading
from datetime import timedelta

import pytest
from sqlalchemy import func, select, update

from tests.conftest import Audience, Broker
from tests.helpers import wait_for, worker_process
from worker.db import session_scope
from worker.models import JobState, Submission, SyncJob, utcnow
from worker.publish import enqueue_signup
from worker.signups import flush as sync
from worker.signups.message import build_message
from worker.signups.store import receive


def jobs_in(state: JobState) -> int:
    with session_scope() as session:
        return session.scalar(select(func.count()).where(SyncJob.state == state)) or 0


def test_worker_killed_mid_flush_then_every_job_completes(
    audience: Audience, db: str, settings_env: dict[str, str], broker: Broker
) -> None:
    emails = [f"killed{i}@trust.org" for i in range(30)]
    for email in emails:
        receive(build_message(email, "newsletter_signup"), channel="queue")
    audience.emu.set_faults(latency_ms=3000)  # the batch call is still running when we kill
    env = {**settings_env, "LISTSYNC_BROKER_URL": os.environ["LISTSYNC_BROKER_URL"]}
    with worker_process(env) as proc:
        wait_for(lambda: jobs_in(JobState.IN_FLIGHT) == 30, timeout=60)
        wait_for(lambda: audience.emu.counters()["in_flight"] >= 1, timeout=30)
        os.killpg(proc.pid, signal.SIGKILL)
    assert jobs_in(JobState.IN_FLIGHT) == 30  # stuck: their worker is gone
    audience.emu.reset_faults()
    # The in-flight timeout (minutes) has passed: moved in the database, not waited for.
    with session_scope() as session:
        session.execute(update(SyncJob).values(claimed_at=utcnow() - timedelta(minutes=10)))
    with worker_process(env):
        assert sync.sweep().rescued == 30
        wait_for(lambda: jobs_in(JobState.DONE) == 30, timeout=60)
    assert all(audience.status(email) == "subscribed" for email in emails)


def test_broker_emptied_with_jobs_pending_then_the_sweep_recovers_them(
    audience: Audience, db: str, settings_env: dict[str, str], broker: Broker
) -> None:
    for i in range(5):
        receive(build_message(f"lost.message{i}@trust.org", "newsletter_signup"), channel="queue")
    assert broker.queued("sync") >= 1  # a flush was queued ...
    broker.lose_everything()  # ... and the broker lost it
    env = {**settings_env, "LISTSYNC_BROKER_URL": os.environ["LISTSYNC_BROKER_URL"]}
    with worker_process(env):
        assert sync.sweep().due == 5
        wait_for(lambda: jobs_in(JobState.DONE) == 5, timeout=60)
    assert audience.status("lost.message3@trust.org") == "subscribed"


def test_concurrent_flushers_never_exceed_the_call_cap(
    audience: Audience, db: str, monkeypatch: pytest.MonkeyPatch, broker: Broker
) -> None:
    from config import get_settings

    monkeypatch.setenv("LISTSYNC_MAILCHIMP_CONCURRENCY", "3")
    # A call the client gave up on still holds its connection at the emulator, and its slot
    # is free again: the held calls must never time out, however slow the machine.
    monkeypatch.setenv("LISTSYNC_MAILCHIMP_TIMEOUT_SECONDS", "30")
    get_settings.cache_clear()
    for i in range(40):
        receive(build_message(f"capped{i}@trust.org", "newsletter_signup"), channel="queue")
    # Each call held at Mailchimp until the cap has filled: eight flushers want a slot, three
    # get one.
    audience.emu.set_faults(latency_ms=1500)
    # The emulator is the test process's: a call an earlier test's killed worker left running
    # there must end before the peak is counted.
    wait_for(lambda: audience.emu.counters()["in_flight"] == 0, timeout=60)
    audience.emu.reset_counters()

    def flusher() -> None:
        while sync.flush(limit=1).claimed:
            pass

    threads = [threading.Thread(target=flusher) for _ in range(8)]
    for thread in threads:
        thread.start()
    try:
        wait_for(lambda: audience.emu.counters()["in_flight"] == 3, timeout=60)
    finally:
        audience.emu.set_faults(latency_ms=0)  # the rest without delay
    for thread in threads:
        thread.join(120)
    counters = audience.emu.counters()
    assert jobs_in(JobState.DONE) == 40
    assert counters["peak_in_flight"] == 3, counters
    assert counters["limit_rejections"] == 0


def test_queued_signups_are_stored_in_batches(
    audience: Audience, db: str, broker: Broker, monkeypatch: pytest.MonkeyPatch
) -> None:
    from celery.contrib.testing.worker import start_worker

    from tasks.signups import receive_signups
    from tests.conftest import reset_batch_tasks
    from worker.app import app

    reset_batch_tasks(app)
    # A batch of 20 and a flush timer that never fires during the test: the 20 messages are
    # stored together however fast the worker happens to fetch them.
    monkeypatch.setattr(receive_signups, "flush_every", 20)
    monkeypatch.setattr(receive_signups, "flush_interval", 3600)
    for i in range(20):
        enqueue_signup(f"batched{i}@trust.org", "newsletter_signup")
    with start_worker(
        app,
        pool="threads",
        concurrency=2,
        prefetch_multiplier=10,  # a batch's worth in hand, as `listsync run`'s intake worker
        perform_ping_check=False,
        loglevel="WARNING",
        queues=["signups"],
        shutdown_timeout=30,
    ):

        def stored() -> int:
            with session_scope() as session:
                return session.scalar(select(func.count()).select_from(Submission)) or 0

        wait_for(lambda: stored() == 20, timeout=30)
    with session_scope() as session:
        # One store call stamps its whole batch with one receipt time.
        stamps = session.scalar(select(func.count(func.distinct(Submission.received_at))))
    assert stamps == 1


def test_after_the_broker_connection_drops_a_part_full_intake_batch_is_still_stored(
    db: str, settings_env: dict[str, str], broker: Broker
) -> None:
    def stored() -> int:
        with session_scope() as session:
            return session.scalar(select(func.count()).select_from(Submission)) or 0

    env = {**settings_env, "LISTSYNC_BROKER_URL": os.environ["LISTSYNC_BROKER_URL"]}
    with worker_process(env, queues="signups"):  # prefork, as production runs it
        for i in range(3):
            enqueue_signup(f"before.drop{i}@trust.org", "newsletter_signup")
        wait_for(lambda: stored() == 3, timeout=60)
        # The worker's broker connections drop (a broker restart, a network blip). Its event
        # loop clears its timers; it reconnects.
        wait_for(broker.drop_connections, 10)
        for i in range(3):  # far fewer than a batch (200): only the flush timer stores them
            enqueue_signup(f"after.drop{i}@trust.org", "newsletter_signup")
        wait_for(lambda: stored() == 6, timeout=60)
