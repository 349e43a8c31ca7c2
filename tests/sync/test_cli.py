"""`listsync enqueue` and `listsync failed list|retry` through the real command."""

from __future__ import annotations

import json

from sqlalchemy import select, update

from tests.conftest import Broker
from tests.helpers import run_listsync
from worker.db import session_scope
from worker.models import JobState, SyncJob, utcnow
from worker.signups.message import build_message
from worker.signups.store import receive


def test_enqueue_refuses_bad_input_with_exit_2_and_queues_nothing(
    db: str, settings_env: dict[str, str], broker: Broker
) -> None:
    for args in (
        ("enqueue", "not-an-address", "--form", "newsletter_signup"),
        ("enqueue", "ok@trust.org", "--form", "no_such_form"),
        ("enqueue", "ok@trust.org", "--form", "newsletter_signup", "--field", "novalue"),
    ):
        result = run_listsync(*args, env=settings_env)
        assert result.returncode == 2, result.stderr
        assert "Traceback" not in result.stderr
    assert broker.queued("signups") == 0
    ok = run_listsync("enqueue", "ok@trust.org", "--form", "newsletter_signup", env=settings_env)
    assert ok.returncode == 0 and "queued signup for form newsletter_signup" in ok.stdout
    assert "ok@trust.org" not in ok.stdout
    assert broker.queued("signups") == 1


def test_failed_jobs_are_listed_without_addresses_and_replayed(
    db: str, settings_env: dict[str, str], redis_client: object
) -> None:
    job_id = receive(build_message("failing@trust.org", "newsletter_signup"), channel="queue")
    with session_scope() as session:
        session.execute(
            update(SyncJob).values(
                state=JobState.FAILED, last_error="fake_or_invalid", finished_at=utcnow()
            )
        )
    listed = run_listsync("failed", "list", "--json", env=settings_env)
    assert listed.returncode == 0
    rows = json.loads(listed.stdout)
    assert [(r["id"], r["reason"]) for r in rows["sync_jobs"]] == [
        (job_id.sync_job_id, "fake_or_invalid")
    ]
    assert rows["parked_signups"] == []
    assert "failing" not in listed.stdout
    assert run_listsync("failed", "retry", env=settings_env).returncode == 2  # ids or --all
    replay = run_listsync("failed", "retry", "--all", env=settings_env)
    assert replay.returncode == 0 and "1 job(s) pending again" in replay.stdout
    with session_scope() as session:
        assert session.scalars(select(SyncJob.state)).all() == [JobState.PENDING]


def test_enqueue_reads_the_address_from_standard_input_for_a_dash(
    db: str, settings_env: dict[str, str], broker: Broker
) -> None:
    empty = run_listsync("enqueue", "-", "--form", "newsletter_signup", env=settings_env)
    assert empty.returncode == 2 and "standard input holds no address" in empty.stderr
    assert broker.queued("signups") == 0

    ok = run_listsync(
        "enqueue", "-", "--form", "newsletter_signup", env=settings_env, stdin="in@trust.org\n"
    )

    assert ok.returncode == 0, ok.stderr
    [(_headers, body)] = broker.messages("signups")
    assert body[1]["message"]["email"] == "in@trust.org"
