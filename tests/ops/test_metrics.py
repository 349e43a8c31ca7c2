"""GET /metrics: counters shared across processes, gauges from the database and broker."""

from __future__ import annotations

import math
import subprocess
import sys
from datetime import UTC, datetime, timedelta

import pytest
import requests
from freezegun import freeze_time
from prometheus_client.parser import text_string_to_metric_families

from tests.ops.conftest import add_job

NOW = datetime(2026, 3, 2, 12, 0, tzinfo=UTC)
#: The server's event loop keeps real time; only the code answering the scrape is frozen.
SERVER_CLOCKS = ["asyncio", "uvicorn", "anyio", "h11", "selectors", "threading", "concurrent"]


def scrape(url: str) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    """name of each sample -> {sorted labels -> value}."""
    response = requests.get(url + "/metrics", timeout=10)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    samples: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            labels = tuple(sorted(sample.labels.items()))
            samples.setdefault(sample.name, {})[labels] = sample.value
    return samples


def test_counters_from_every_process_add_up_in_one_scrape(live_web: str) -> None:
    from worker import metrics

    metrics.incr("mailchimp_calls_total", endpoint="upsert", outcome="ok")
    metrics.incr("webhook_rejected_total", reason="bad_secret")
    # Another process (a Celery worker, another uvicorn worker) counts into the same Redis.
    subprocess.run(
        [
            sys.executable,
            "-c",
            "from worker import metrics;"
            "metrics.incr('mailchimp_calls_total', endpoint='upsert', outcome='ok');"
            "metrics.incr('mailchimp_calls_total', endpoint='upsert', outcome='transient');"
            "metrics.incr('purged_rows_total', 7, kind='submission');"
            "metrics.incr('reconcile_corrections_total', 2)",
        ],
        check=True,
    )

    samples = scrape(live_web)

    calls = samples["listsync_mailchimp_calls_total"]
    assert calls[(("endpoint", "upsert"), ("outcome", "ok"))] == 2
    assert calls[(("endpoint", "upsert"), ("outcome", "transient"))] == 1
    assert samples["listsync_webhook_rejected_total"][(("reason", "bad_secret"),)] == 1
    assert samples["listsync_purged_rows_total"][(("kind", "submission"),)] == 7
    assert samples["listsync_reconcile_corrections_total"][()] == 2
    assert samples["listsync_scrape_error"] == {
        (("source", "broker"),): 0,
        (("source", "counters"),): 0,
        (("source", "database"),): 0,
    }


def test_every_known_counter_is_exposed_even_before_it_is_counted(live_web: str) -> None:
    from worker.metrics import COUNTERS

    text = requests.get(live_web + "/metrics", timeout=10).text
    for name in COUNTERS:
        assert f"# HELP listsync_{name} {COUNTERS[name]}" in text


def test_job_gauges_show_states_oldest_pending_age_and_failures_by_outcome(
    live_web: str, db: str
) -> None:
    from worker.db import session_scope

    with session_scope() as session:
        add_job(session, "pending", NOW - timedelta(minutes=10))
        add_job(session, "pending", NOW - timedelta(minutes=2))
        add_job(session, "done", NOW - timedelta(days=3))
        add_job(session, "failed", NOW - timedelta(days=1), outcome="invalid_resource")
        add_job(session, "failed", NOW - timedelta(days=1), outcome="invalid_resource")
        add_job(session, "failed", NOW - timedelta(days=1), outcome="retry_window_expired")

    with freeze_time(NOW, ignore=SERVER_CLOCKS):
        samples = scrape(live_web)

    assert samples["listsync_sync_jobs"] == {
        (("state", "pending"),): 2,
        (("state", "in_flight"),): 0,
        (("state", "done"),): 1,
        (("state", "suppressed"),): 0,
        (("state", "failed"),): 3,
    }
    assert samples["listsync_sync_oldest_pending_age_seconds"][()] == 600
    assert samples["listsync_sync_failed_jobs"] == {
        (("outcome", "invalid_resource"),): 2,
        (("outcome", "retry_window_expired"),): 1,
    }


def test_a_scrape_counts_live_rows_exactly_and_settled_ones_at_most_every_five_minutes(
    live_web: str, db: str
) -> None:
    """Done jobs and applied events pile up for weeks: counting them reads them all, so a
    scrape reuses their counts for SETTLED_COUNT_SECONDS; pending and failed stay exact."""
    from worker.db import session_scope

    def add(state: str) -> None:
        with session_scope() as session:
            add_job(session, state, NOW - timedelta(days=1))

    add("done")
    add("pending")
    with freeze_time(NOW, ignore=SERVER_CLOCKS) as clock:
        first = scrape(live_web)["listsync_sync_jobs"]
        add("done")
        add("pending")
        clock.tick(299)
        cached = scrape(live_web)["listsync_sync_jobs"]
        clock.tick(2)
        fresh = scrape(live_web)["listsync_sync_jobs"]

    done, pending = (("state", "done"),), (("state", "pending"),)
    assert (first[done], first[pending]) == (1, 1)
    assert (cached[done], cached[pending]) == (1, 2)
    assert (fresh[done], fresh[pending]) == (2, 2)


def test_no_pending_job_means_an_oldest_pending_age_of_zero(live_web: str) -> None:
    samples = scrape(live_web)
    assert samples["listsync_sync_oldest_pending_age_seconds"][()] == 0


def test_seconds_since_last_purge_and_reconcile_come_from_their_watermarks(
    live_web: str, db: str
) -> None:
    from worker.db import session_scope
    from worker.models import PurgeRun, Watermark

    with session_scope() as session:
        session.add(Watermark(name="reconcile_success", value=NOW - timedelta(minutes=15)))
        # A dry run and a failed run are not successes; only the real, clean one counts.
        for dry_run, error, hours in ((False, None, 5), (True, None, 1), (False, "boom", 2)):
            session.add(
                PurgeRun(
                    started_at=NOW - timedelta(hours=hours, minutes=1),
                    finished_at=NOW - timedelta(hours=hours),
                    cutoff=NOW - timedelta(days=30),
                    dry_run=dry_run,
                    error=error,
                )
            )

    with freeze_time(NOW, ignore=SERVER_CLOCKS):
        samples = scrape(live_web)

    since = samples["listsync_seconds_since_last_success"]
    assert since[(("job", "reconcile"),)] == 15 * 60
    assert since[(("job", "purge"),)] == 5 * 3600
    stamps = samples["listsync_last_success_timestamp_seconds"]
    assert stamps[(("job", "reconcile"),)] == (NOW - timedelta(minutes=15)).timestamp()


def test_a_job_that_never_succeeded_is_infinitely_long_ago(live_web: str) -> None:
    samples = scrape(live_web)
    assert math.isinf(samples["listsync_seconds_since_last_success"][(("job", "purge"),)])
    assert "listsync_last_success_timestamp_seconds" not in samples


def test_in_flight_mailchimp_calls_are_read_from_the_gateways_semaphore(
    live_web: str, settings_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from config import get_settings
    from worker.broker import get_redis
    from worker.mailchimp import CallSlots

    monkeypatch.setenv("LISTSYNC_MAILCHIMP_CONCURRENCY", "3")
    get_settings.cache_clear()
    slots = CallSlots(get_redis(), limit=3, lease_seconds=60)
    with slots.slot(), slots.slot():
        samples = scrape(live_web)
    assert samples["listsync_mailchimp_calls_in_flight"][()] == 2
    assert samples["listsync_mailchimp_concurrency_cap"][()] == 3
    assert scrape(live_web)["listsync_mailchimp_calls_in_flight"][()] == 0


def test_queue_lengths_are_the_broker_queues(live_web: str, broker: object) -> None:
    from worker.app import app

    for _ in range(3):
        app.send_task("listsync.sync.flush", args=[1], queue="sync")
    samples = scrape(live_web)
    assert samples["listsync_queue_messages"][(("queue", "sync"),)] == 3
    assert samples["listsync_queue_messages"][(("queue", "signups"),)] == 0


def test_a_database_outage_is_reported_and_the_rest_still_scraped(
    live_web: str, settings_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from config import get_settings
    from worker import metrics

    metrics.incr("webhook_rejected_total", reason="bad_secret")
    monkeypatch.setenv(
        "LISTSYNC_DATABASE_URL", "postgresql://nobody:secret-password-0123456789@127.0.0.1:1/none"
    )
    get_settings.cache_clear()

    response = requests.get(live_web + "/metrics", timeout=10)

    assert response.status_code == 200
    assert 'listsync_scrape_error{source="database"} 1.0' in response.text
    assert 'listsync_scrape_error{source="counters"} 0.0' in response.text
    assert 'listsync_webhook_rejected_total{reason="bad_secret"} 1.0' in response.text
    assert "secret-password-0123456789" not in response.text


def test_no_email_address_reaches_a_metric(live_web: str, db: str) -> None:
    from worker import metrics
    from worker.db import session_scope
    from worker.models import Contact, Submission

    address = "metrics.pii.probe@example.org"
    with session_scope() as session:
        contact = Contact(email=address, email_hash="a" * 32)
        session.add(contact)
        session.flush()
        session.add(
            Submission(
                contact_id=contact.id,
                form="newsletter_signup",
                fields={"first_name": "Probe"},
                newsletter_consent=True,
                submitted_at=NOW,
                policy_version="test",
                idempotency_key="k1",
            )
        )
        add_job(session, "failed", NOW, contact_id=contact.id, outcome="invalid_resource")
    metrics.incr("signups_received_total", channel="queue", result="stored")

    text = requests.get(live_web + "/metrics", timeout=10).text

    assert "metrics.pii.probe" not in text
    assert "Probe" not in text
    assert "@" not in text
