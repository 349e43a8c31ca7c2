"""`listsync status [--json]`: the terminal summary and its JSON form for scripts."""

from __future__ import annotations

import json
from datetime import timedelta

from tests.helpers import run_listsync
from tests.ops.conftest import add_job


def _seed(db: str) -> None:
    from worker import metrics
    from worker.app import app
    from worker.db import session_scope
    from worker.models import PurgeRun, Watermark, utcnow

    now = utcnow()
    with session_scope() as session:
        add_job(session, "pending", now - timedelta(hours=2))
        add_job(session, "pending", now - timedelta(minutes=1))
        add_job(session, "done", now - timedelta(days=1))
        for _ in range(3):
            add_job(
                session,
                "failed",
                now - timedelta(days=1),
                outcome="invalid_resource",
                last_error="Mailchimp: looks fake or invalid",
            )
        add_job(session, "failed", now, outcome="retry_window_expired", last_error="HTTP 503")
        session.add(Watermark(name="reconcile_success", value=now - timedelta(minutes=5)))
        session.add(
            PurgeRun(
                started_at=now - timedelta(hours=9, minutes=1),
                finished_at=now - timedelta(hours=9),
                cutoff=now - timedelta(days=30),
                dry_run=False,
                counts={"submission": 12, "submission_ip": 30},
            )
        )
    for _ in range(4):
        metrics.incr("webhook_rejected_total", reason="bad_secret")
    metrics.incr("webhook_rejected_total", reason="bad_signature")
    metrics.incr("intake_rejected_total", reason="bad_token")
    app.send_task("listsync.signups.receive", kwargs={"message": {}}, queue="signups")


def test_status_json_gives_every_fact_for_scripts(
    db: str, broker: object, settings_env: dict[str, str]
) -> None:
    _seed(db)

    result = run_listsync("status", "--json", env=settings_env)

    assert result.returncode == 0, result.stderr
    facts = json.loads(result.stdout)
    assert facts["queues"] == {"signups": 1, "sync": 0, "optouts": 0, "maintenance": 0}
    assert facts["sync_jobs"] == {
        "pending": 2,
        "in_flight": 0,
        "done": 1,
        "suppressed": 0,
        "failed": 4,
    }
    assert 7190 < facts["oldest_pending"]["age_seconds"] < 7300
    assert facts["failed"]["count"] == 4
    assert facts["failed"]["top_reasons"] == [
        {"reason": "invalid_resource — Mailchimp: looks fake or invalid", "count": 3},
        {"reason": "retry_window_expired — HTTP 503", "count": 1},
    ]
    assert 299 < facts["last_success"]["reconcile"]["age_seconds"] < 400
    assert 9 * 3600 - 1 < facts["last_success"]["purge"]["age_seconds"] < 9 * 3600 + 100
    assert facts["last_purge_counts"] == {"submission": 12, "submission_ip": 30}
    assert facts["webhook_rejects_last_hour"] == {"bad_secret": 4, "bad_signature": 1}
    assert facts["intake_rejects_last_hour"] == {"bad_token": 1}
    assert facts["mailchimp"] == {"in_flight": 0, "cap": 4}


def test_status_prints_a_readable_summary(
    db: str, broker: object, settings_env: dict[str, str]
) -> None:
    _seed(db)

    result = run_listsync("status", env={**settings_env, "COLUMNS": "120"})

    assert result.returncode == 0, result.stderr
    out = result.stdout
    for line in (
        "signups",
        "oldest pending: ",
        "Failed jobs: 4",
        "invalid_resource — Mailchimp: looks fake or invalid",
        "Last successful reconcile: ",
        "rows purged in that run: submission=12, submission_ip=30",
        "bad_secret",
        "Mailchimp calls in flight: 0 of 4",
    ):
        assert line in out
    assert "Last successful purge: never" not in out


def test_webhook_rejects_older_than_an_hour_are_not_in_the_last_hour(
    db: str, broker: object, settings_env: dict[str, str]
) -> None:
    from freezegun import freeze_time

    from worker import metrics
    from worker.models import utcnow

    with freeze_time(utcnow() - timedelta(minutes=61)):
        metrics.incr("webhook_rejected_total", reason="bad_secret")
    metrics.incr("webhook_rejected_total", reason="bad_payload")

    facts = json.loads(run_listsync("status", "--json", env=settings_env).stdout)

    assert facts["webhook_rejects_last_hour"] == {"bad_payload": 1}


def test_status_with_the_database_away_is_one_line_naming_the_setting(
    settings_env: dict[str, str],
) -> None:
    env = {
        **settings_env,
        "LISTSYNC_DATABASE_URL": "postgresql://app:app-password-0123456789@127.0.0.1:1/none",
    }
    result = run_listsync("status", env=env)
    assert result.returncode == 1
    assert "LISTSYNC_DATABASE_URL" in result.stderr
    assert "Traceback" not in result.stderr
