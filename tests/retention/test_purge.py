"""The purge deletes each kind of record at its cutoff, never held ones, once at a time."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from freezegun import freeze_time

from tests.helpers import wait_for
from tests.retention.conftest import T0, Rows, seconds
from worker.models import (
    Contact,
    ContactStatus,
    JobState,
    PurgeRun,
    RejectedSignup,
    Submission,
    SubmissionIP,
    Suppression,
    SyncJob,
    Watermark,
    WebhookEvent,
)
from worker.retention import purge as retention
from worker.retention.schedule import get_schedule

DAY = timedelta(days=1)
EMAIL = "ada@example.com"


def purge_at(moment: datetime, **kwargs: object) -> retention.PurgeResult:
    with freeze_time(moment):
        return retention.purge(**kwargs)  # type: ignore[arg-type]


# --- cutoffs, one second either side -------------------------------------------------------


def test_submission_is_deleted_one_second_after_need_until_and_kept_one_second_before(
    rows: Rows,
) -> None:
    contact = rows.contact()
    due_at = T0 + 90 * DAY
    sub = rows.submission(contact, need_until=due_at, ip="192.0.2.1")

    result = purge_at(due_at - seconds(1))
    assert result.counts["submissions"] == 0
    assert rows.exists(Submission, sub)

    result = purge_at(due_at + seconds(1))
    assert result.counts["submissions"] == 1
    assert not rows.exists(Submission, sub)
    assert rows.count(SubmissionIP) == 0


def test_submission_waiting_for_its_sync_is_never_due(rows: Rows) -> None:
    contact = rows.contact()
    sub = rows.submission(contact, form="newsletter_signup", need_until=None)
    purge_at(T0 + 3650 * DAY)
    assert rows.exists(Submission, sub)


def test_ip_is_stripped_one_second_after_its_own_retention_while_submission_stays(
    rows: Rows,
) -> None:
    ip_due = T0 + get_schedule().ip_retention
    sub = rows.submission(rows.contact(), need_until=T0 + 90 * DAY, ip="192.0.2.7")

    assert purge_at(ip_due - seconds(1)).counts["ips"] == 0
    assert rows.count(SubmissionIP) == 1

    assert purge_at(ip_due + seconds(1)).counts["ips"] == 1
    assert rows.count(SubmissionIP) == 0
    assert rows.exists(Submission, sub)


def test_webhook_payload_is_dropped_after_retention_keeping_the_dedupe_key(rows: Rows) -> None:
    event = rows.event(EMAIL, T0)
    pending = rows.event("bob@example.com", T0, state="pending")
    due = T0 + get_schedule().webhook_payload_retention

    assert purge_at(due - seconds(1)).counts["webhook_payloads"] == 0
    assert purge_at(due + seconds(1)).counts["webhook_payloads"] == 1
    with rows.session() as s:
        kept = s.get(WebhookEvent, event)
        assert kept is not None and kept.payload is None and kept.dedupe_key
        waiting = s.get(WebhookEvent, pending)
        assert waiting is not None and waiting.payload is not None  # not applied yet


def test_webhook_events_and_their_dedupe_keys_go_after_their_own_retention(rows: Rows) -> None:
    applied = rows.event(EMAIL, T0)
    ignored = rows.event("bob@example.com", T0, state="ignored")
    pending = rows.event("cy@example.com", T0, state="pending")
    held = rows.event("di@example.com", T0)
    rows.hold(email="di@example.com")
    due = T0 + get_schedule().webhook_event_retention

    assert purge_at(due - seconds(1)).counts["webhook_events"] == 0
    assert purge_at(due + seconds(1)).counts["webhook_events"] == 2
    assert not rows.exists(WebhookEvent, applied) and not rows.exists(WebhookEvent, ignored)
    assert rows.exists(WebhookEvent, pending)  # still to be applied
    assert rows.exists(WebhookEvent, held)


def test_rejected_signup_records_go_after_their_retention(rows: Rows) -> None:
    with rows.session() as s:
        s.add(RejectedSignup(received_at=T0, channel="http", form="survey", reason="email: x"))
        s.commit()
    due = T0 + get_schedule().rejected_signup_retention

    assert purge_at(due - seconds(1)).counts["rejected_signups"] == 0
    assert rows.count(RejectedSignup) == 1
    assert purge_at(due + seconds(1)).counts["rejected_signups"] == 1
    assert rows.count(RejectedSignup) == 0


def test_finished_sync_jobs_go_after_their_retention_failed_ones_later(rows: Rows) -> None:
    schedule = get_schedule()
    done = rows.job(EMAIL, state=JobState.DONE)
    failed = rows.job(EMAIL, state=JobState.FAILED)
    pending = rows.job(EMAIL, state=JobState.PENDING, finished_at=None)

    assert purge_at(T0 + schedule.finished_job_retention - seconds(1)).counts["sync_jobs"] == 0
    assert purge_at(T0 + schedule.finished_job_retention + seconds(1)).counts["sync_jobs"] == 1
    assert not rows.exists(SyncJob, done)
    assert purge_at(T0 + schedule.failed_job_retention - seconds(1)).counts["sync_jobs"] == 0
    assert purge_at(T0 + schedule.failed_job_retention + seconds(1)).counts["sync_jobs"] == 1
    assert not rows.exists(SyncJob, failed)
    assert rows.exists(SyncJob, pending)


def test_a_failed_job_retention_shorter_than_the_finished_one_takes_only_failed_jobs(
    rows: Rows, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _switch_schedule(
        tmp_path, monkeypatch, keep={"finished_sync_jobs": "200d", "failed_sync_jobs": "10d"}
    )
    done = rows.job(EMAIL, state=JobState.DONE)
    suppressed = rows.job(EMAIL, state=JobState.SUPPRESSED)
    failed = rows.job(EMAIL, state=JobState.FAILED)
    assert purge_at(T0 + 10 * DAY + seconds(1)).counts["sync_jobs"] == 1
    assert not rows.exists(SyncJob, failed)
    assert rows.exists(SyncJob, done) and rows.exists(SyncJob, suppressed)


def test_opted_out_contact_without_submissions_is_reduced_to_a_suppression_hash(
    rows: Rows,
) -> None:
    from worker.addresses import email_hash

    # Contacts with lower and higher ids have submissions: neither may keep this one.
    with_sub = rows.contact("bob@example.com", status=ContactStatus.CLEANED, changed_at=T0)
    rows.submission(with_sub, need_until=T0 + 3650 * DAY)
    gone = rows.contact(EMAIL, status=ContactStatus.UNSUBSCRIBED, changed_at=T0)
    with rows.session() as s:  # others', sorting either side: none may stand in for this one
        for other in ("0" * 32, "f" * 32):
            s.add(Suppression(email_hash=other, reason="erased", created_at=T0))
        s.commit()
    subscribed = rows.contact("cy@example.com", changed_at=T0)
    rows.submission(subscribed, need_until=T0 + 3650 * DAY)
    due = T0 + get_schedule().opted_out_contact_retention

    assert purge_at(due - seconds(1)).counts["contacts"] == 0
    assert purge_at(due + seconds(1)).counts["contacts"] == 1
    assert not rows.exists(Contact, gone)
    assert rows.exists(Contact, with_sub) and rows.exists(Contact, subscribed)
    with rows.session() as s:
        suppression = s.get(Suppression, email_hash(EMAIL))
        assert suppression is not None and suppression.reason == retention.OPTED_OUT_REASON


def test_old_purge_audits_are_deleted_after_their_retention(rows: Rows) -> None:
    purge_at(T0)  # writes one audit row at T0
    due = T0 + get_schedule().purge_run_retention
    assert purge_at(due - seconds(1)).counts["purge_runs"] == 0
    assert purge_at(due + seconds(1)).counts["purge_runs"] == 1
    assert rows.count(PurgeRun, PurgeRun.started_at == T0) == 0


# --- cutoffs, to the microsecond ------------------------------------------------------------


def _cutoff_rejected(rows: Rows) -> None:
    with rows.session() as s:
        s.add(RejectedSignup(received_at=T0, channel="http", form="survey", reason="email: x"))
        s.commit()


#: kind -> (a row of that kind dated T0, the retention after which it is due). Each rule
#: says "due once its age reaches the retention": at the cutoff instant itself it goes.
CUTOFFS: dict[str, tuple[Callable[[Rows], object], Callable[[], timedelta]]] = {
    "submissions": (lambda r: r.submission(r.contact(), need_until=T0), lambda: timedelta(0)),
    "ips": (
        lambda r: r.submission(r.contact(), need_until=T0 + 3650 * DAY, ip="192.0.2.9"),
        lambda: get_schedule().ip_retention,
    ),
    "webhook_payloads": (
        lambda r: r.event(EMAIL, T0),
        lambda: get_schedule().webhook_payload_retention,
    ),
    "webhook_events": (
        lambda r: r.event(EMAIL, T0),
        lambda: get_schedule().webhook_event_retention,
    ),
    "sync_jobs": (
        lambda r: r.job(EMAIL, state=JobState.DONE),
        lambda: get_schedule().finished_job_retention,
    ),
    "failed_sync_jobs": (
        lambda r: r.job(EMAIL, state=JobState.FAILED),
        lambda: get_schedule().failed_job_retention,
    ),
    "contacts": (
        lambda r: r.contact(EMAIL, status=ContactStatus.UNSUBSCRIBED, changed_at=T0),
        lambda: get_schedule().opted_out_contact_retention,
    ),
    "purge_runs": (lambda r: purge_at(T0), lambda: get_schedule().purge_run_retention),
    "parked_signups": (
        lambda r: _held_parked(r, EMAIL),
        lambda: get_schedule().parked_signup_retention,
    ),
    "rejected_signups": (_cutoff_rejected, lambda: get_schedule().rejected_signup_retention),
}


def test_every_kind_of_row_has_a_cutoff_test() -> None:
    assert set(CUTOFFS) - {"failed_sync_jobs"} == set(retention.KINDS)


@pytest.mark.parametrize("kind", sorted(CUTOFFS))
def test_a_row_is_kept_to_the_microsecond_before_its_cutoff_and_goes_at_it(
    rows: Rows, kind: str
) -> None:
    make, retention_of = CUTOFFS[kind]
    make(rows)
    cutoff = T0 + retention_of()
    counted = kind.removeprefix("failed_")
    assert purge_at(cutoff - timedelta(microseconds=1)).counts[counted] == 0
    assert purge_at(cutoff).counts[counted] == 1


# --- time: daylight saving and leap days do not move a cutoff -----------------------------


def test_period_spanning_daylight_saving_changes_is_exact_utc_days(rows: Rows) -> None:
    # 2026-01-15 + 90 days crosses the US (8 March) and EU (29 March) clock changes.
    sub = rows.submission(rows.contact(), form="contact_form", received_at=T0, by_schedule=True)
    due = datetime(2026, 4, 15, 12, 0, tzinfo=UTC)
    purge_at(due - seconds(1))
    assert rows.exists(Submission, sub)
    purge_at(due + seconds(1))
    assert not rows.exists(Submission, sub)


def test_year_long_period_across_a_leap_day_counts_the_leap_day(rows: Rows) -> None:
    received = datetime(2028, 2, 28, 12, 0, tzinfo=UTC)  # 2028-02-29 exists
    sub = rows.submission(rows.contact(), form="survey", received_at=received, by_schedule=True)
    due = datetime(2029, 2, 27, 12, 0, tzinfo=UTC)  # 365 days, not "same date next year"
    purge_at(due - seconds(1))
    assert rows.exists(Submission, sub)
    purge_at(due + seconds(1))
    assert not rows.exists(Submission, sub)


# --- holds --------------------------------------------------------------------------------


def test_held_rows_are_kept_and_counted_as_skipped(rows: Rows) -> None:
    contact = rows.contact(EMAIL)
    by_submission = rows.submission(contact, need_until=T0, ip="192.0.2.1")
    other = rows.contact("bob@example.com")
    by_address = rows.submission(other, need_until=T0, ip="192.0.2.2")
    free = rows.submission(rows.contact("cy@example.com"), need_until=T0)
    rows.hold(submission_id=by_submission)
    rows.hold(email="bob@example.com", until=T0 + 400 * DAY)
    rows.event("bob@example.com", T0)

    result = purge_at(T0 + 365 * DAY)
    assert result.counts["submissions"] == 1
    assert result.held_skipped == 2
    assert rows.exists(Submission, by_submission) and rows.exists(Submission, by_address)
    assert not rows.exists(Submission, free)
    assert rows.count(SubmissionIP) == 2  # IPs of held submissions stay too
    assert result.counts["webhook_payloads"] == 0


def test_released_or_ended_hold_makes_rows_due_again(rows: Rows) -> None:
    from worker.retention.holds import release_hold

    contact = rows.contact()
    released = rows.submission(contact, need_until=T0)
    ended = rows.submission(contact, need_until=T0)
    hold_id = rows.hold(submission_id=released)
    rows.hold(submission_id=ended, until=T0 + 10 * DAY)

    assert purge_at(T0 + 5 * DAY).counts["submissions"] == 0
    with rows.session() as s:
        assert release_hold(s, hold_id, now=T0 + 6 * DAY)
        s.commit()
    assert purge_at(T0 + 7 * DAY).counts["submissions"] == 1
    assert rows.exists(Submission, ended)
    assert purge_at(T0 + 10 * DAY + seconds(1)).counts["submissions"] == 1
    assert rows.count(Submission) == 0


def test_a_hold_with_an_end_keeps_rows_until_that_instant_and_not_at_it(rows: Rows) -> None:
    ends = T0 + 10 * DAY
    sub = rows.submission(rows.contact(), need_until=T0)
    rows.hold(submission_id=sub, until=ends)
    assert purge_at(ends - timedelta(microseconds=1)).counts["submissions"] == 0
    assert purge_at(ends).counts["submissions"] == 1


def test_a_hold_on_a_later_contact_keeps_only_that_contact_s_submissions(rows: Rows) -> None:
    # Created first, so its id is the lower one: a hold must match the contact exactly.
    free = rows.submission(rows.contact("free@example.com"), need_until=T0, ip="192.0.2.10")
    held = rows.submission(rows.contact("held@example.com"), need_until=T0, ip="192.0.2.11")
    rows.hold(email="held@example.com")
    purge_at(T0 + DAY)
    assert rows.exists(Submission, held) and rows.exists(SubmissionIP, held)
    assert not rows.exists(Submission, free) and not rows.exists(SubmissionIP, free)


def _held_job(rows: Rows, email: str) -> Callable[[], bool]:
    job = rows.job(email, state=JobState.DONE)
    return lambda: rows.exists(SyncJob, job)


def _held_submission(rows: Rows, email: str) -> Callable[[], bool]:
    sub = rows.submission(rows.contact(email), need_until=T0)
    return lambda: rows.exists(Submission, sub)


def _held_ip(rows: Rows, email: str) -> Callable[[], bool]:
    # The submission is kept long; only its IP, on its own clock, is due.
    sub = rows.submission(rows.contact(email), need_until=T0 + 3650 * DAY, ip="192.0.2.3")
    return lambda: rows.exists(SubmissionIP, sub)


def _held_payload(rows: Rows, email: str) -> Callable[[], bool]:
    event = rows.event(email, T0)

    def kept() -> bool:
        with rows.session() as s:
            found = s.get(WebhookEvent, event)
            return found is not None and found.payload is not None

    return kept


def _held_event(rows: Rows, email: str) -> Callable[[], bool]:
    event = rows.event(email, T0)
    return lambda: rows.exists(WebhookEvent, event)


def _held_contact(rows: Rows, email: str) -> Callable[[], bool]:
    contact = rows.contact(email, status=ContactStatus.UNSUBSCRIBED, changed_at=T0)
    return lambda: rows.exists(Contact, contact)


def _held_parked(rows: Rows, email: str) -> Callable[[], bool]:
    from worker.addresses import email_hash
    from worker.models import ParkedSignup

    with rows.session() as s:
        parked = ParkedSignup(
            parked_at=T0, channel="queue", form="survey", email_hash=email_hash(email), error="x"
        )
        s.add(parked)
        s.commit()
        parked_id = parked.id
    return lambda: rows.exists(ParkedSignup, parked_id)


#: Every kind of row the purge removes that belongs to a person, and so can be held (purge
#: runs and rejection records carry no address or hash: nothing to hold them by).
HOLDABLE = {
    "sync_jobs": _held_job,
    "submissions": _held_submission,
    "ips": _held_ip,
    "webhook_payloads": _held_payload,
    "webhook_events": _held_event,
    "contacts": _held_contact,
    "parked_signups": _held_parked,
}


def test_every_kind_of_row_the_purge_removes_is_listed_as_holdable_or_not() -> None:
    assert set(HOLDABLE) | {"purge_runs", "rejected_signups"} == set(retention.KINDS)


@pytest.mark.parametrize("kind", sorted(HOLDABLE))
def test_a_hold_on_the_address_keeps_each_kind_of_row_until_released(rows: Rows, kind: str) -> None:
    from worker.retention.holds import release_hold

    held = HOLDABLE[kind](rows, "held@example.com")
    free = HOLDABLE[kind](rows, "free@example.com")
    hold_id = rows.hold(email="held@example.com")
    later = T0 + 200 * DAY  # past every retention that applies to these rows

    result = purge_at(later)
    assert held(), f"{kind}: a held row was purged"
    assert not free(), f"{kind}: the unheld twin was kept"
    assert result.counts[kind] == 1
    with rows.session() as s:
        assert release_hold(s, hold_id, now=later)
        s.commit()
    purge_at(later + DAY)
    assert not held(), f"{kind}: kept after its hold was released"


@pytest.mark.parametrize("held_first", [True, False], ids=["held_first", "held_last"])
@pytest.mark.parametrize("kind", ["submissions", "ips"])
def test_a_hold_on_one_submission_keeps_it_and_its_ip(
    rows: Rows, kind: str, held_first: bool
) -> None:
    """In both orders of creation: a hold matches its submission's id, not a range of ids."""
    contact = rows.contact(EMAIL)
    need_until = T0 if kind == "submissions" else T0 + 3650 * DAY
    first = rows.submission(contact, need_until=need_until, ip="192.0.2.4")
    second = rows.submission(contact, need_until=need_until, ip="192.0.2.5")
    held_id, free_id = (first, second) if held_first else (second, first)
    rows.hold(submission_id=held_id)
    purge_at(T0 + 200 * DAY)
    assert rows.exists(SubmissionIP, held_id) and not rows.exists(SubmissionIP, free_id)
    assert rows.exists(Submission, held_id)
    assert rows.exists(Submission, free_id) == (kind == "ips")


# --- runs: audit, dry run, chunks, budget ---------------------------------------------------


def test_dry_run_counts_the_ips_that_go_with_their_submissions(rows: Rows) -> None:
    contact = rows.contact()
    for _ in range(3):
        rows.submission(contact, need_until=T0, ip="192.0.2.1")  # IPs well inside retention
    rows.submission(contact, need_until=T0 + 400 * DAY, ip="192.0.2.2")

    dry = purge_at(T0 + DAY, dry_run=True)
    real = purge_at(T0 + DAY)
    assert dry.counts["ips"] == real.counts["ips"] == 3
    assert rows.count(SubmissionIP) == 1


def test_dry_run_counts_the_same_rows_and_deletes_nothing(rows: Rows) -> None:
    contact = rows.contact()
    for _ in range(3):
        rows.submission(contact, need_until=T0, ip="192.0.2.1")
    rows.submission(contact, need_until=T0 + 400 * DAY)

    dry = purge_at(T0 + 31 * DAY, dry_run=True)
    assert rows.count(Submission) == 4
    real = purge_at(T0 + 31 * DAY)
    assert dry.counts == real.counts
    assert dry.counts["submissions"] == 3
    with rows.session() as s:
        runs = s.query(PurgeRun).order_by(PurgeRun.id).all()
        assert [r.dry_run for r in runs] == [True, False]
        assert runs[0].counts == runs[1].counts


def test_every_run_writes_an_audit_row_without_pii_and_a_success_watermark(
    rows: Rows, redis_client: object, caplog: pytest.LogCaptureFixture
) -> None:
    import redis

    assert isinstance(redis_client, redis.Redis)
    contact = rows.contact(EMAIL, first="Ada")
    rows.submission(contact, need_until=T0, ip="192.0.2.55")
    caplog.set_level(logging.DEBUG)

    result = purge_at(T0 + DAY)
    with rows.session() as s:
        run = s.get(PurgeRun, result.run_id)
        assert run is not None
        assert run.cutoff == T0 + DAY and run.dry_run is False
        assert run.counts["submissions"] == 1 and run.finished_at is not None
        assert run.duration_seconds is not None and run.error is None
        stored = json.dumps({"counts": run.counts, "error": run.error, "held": run.held_skipped})
        watermark = s.get(Watermark, retention.WATERMARK)
        assert watermark is not None
    for secret in (EMAIL, "Ada", "192.0.2.55"):
        assert secret not in stored and secret not in caplog.text
    counters = redis_client.hgetall("listsync:metrics:purged_rows_total")
    assert counters[json.dumps({"kind": "submissions"}).encode()] == b"1"


def test_small_chunks_delete_everything_chunk_by_chunk(rows: Rows) -> None:
    contact = rows.contact()
    for _ in range(7):
        rows.submission(contact, need_until=T0, ip="192.0.2.1")
    chunks: list[int] = []
    result = purge_at(
        T0 + DAY,
        chunk_size=3,
        progress=lambda kind, n: chunks.append(n) if kind == "submissions" else None,
    )
    assert chunks == [3, 3, 1]
    assert result.counts["submissions"] == 7 and rows.count(Submission) == 0


def test_time_budget_stops_after_a_chunk_and_the_next_run_continues(rows: Rows) -> None:
    contact = rows.contact()
    for _ in range(5):
        rows.submission(contact, need_until=T0)
    first = purge_at(T0 + DAY, chunk_size=2, time_budget_seconds=0)
    assert not first.complete and first.counts["submissions"] == 2
    with rows.session() as s:
        assert s.get(Watermark, retention.WATERMARK) is None  # only complete runs count
    runs = 1
    while purge_at(T0 + DAY, chunk_size=2, time_budget_seconds=0).complete is False:
        runs += 1
        assert runs < 10
    assert rows.count(Submission) == 0


# --- concurrency and crashes -------------------------------------------------------------


def test_two_purges_racing_one_runs_the_other_returns_at_once(rows: Rows) -> None:
    contact = rows.contact()
    for _ in range(4):
        rows.submission(contact, need_until=T0)
    in_chunk = threading.Event()
    go_on = threading.Event()
    results: list[retention.PurgeResult] = []

    def pause(kind: str, n: int) -> None:
        in_chunk.set()
        assert go_on.wait(20)

    first = threading.Thread(
        target=lambda: results.append(retention.purge(now=T0 + DAY, chunk_size=2, progress=pause))
    )
    first.start()
    try:
        assert in_chunk.wait(20)
        second = retention.purge(now=T0 + DAY)
        assert second.locked_out and second.total == 0
    finally:
        go_on.set()
        first.join(30)
    assert results[0].counts["submissions"] == 4 and not results[0].locked_out
    assert rows.count(Submission) == 0


@pytest.mark.postgres_only
def test_the_purge_lock_guards_one_schema_not_the_whole_database(tmp_path: Path) -> None:
    """Two deployments (or test processes) in two schemas of one database each purge their
    own tables: the lock held in one schema excludes a second purge there, not in the other."""
    from sqlalchemy import create_engine

    from tests.conftest import fresh_database

    with (
        fresh_database("postgresql", tmp_path) as one,
        fresh_database("postgresql", tmp_path) as other,
    ):
        engines = [create_engine(one), create_engine(one), create_engine(other)]
        try:
            with retention.purge_lock(engines[0]) as first:
                assert first
                with retention.purge_lock(engines[1]) as same_schema:
                    assert not same_schema
                with retention.purge_lock(engines[2]) as other_schema:
                    assert other_schema
            with retention.purge_lock(engines[1]) as after_release:
                assert after_release
        finally:
            for engine in engines:
                engine.dispose()


KILLED_PURGE = """
import sys, time
from datetime import datetime, timedelta, UTC
from worker.retention import purge
def stop(kind, n):
    print("chunk", flush=True)
    time.sleep(600)  # killed here, holding the lock, one chunk committed
purge.purge(now=datetime.fromisoformat(sys.argv[1]), chunk_size=2, progress=stop)
"""


def test_purge_killed_midway_leaves_committed_chunks_and_a_rerun_finishes(
    rows: Rows, settings_env: dict[str, str]
) -> None:
    contact = rows.contact()
    for _ in range(5):
        rows.submission(contact, need_until=T0, ip="192.0.2.1")
    when = T0 + DAY
    root = Path(__file__).resolve().parents[2]
    proc = subprocess.Popen(
        [sys.executable, "-c", KILLED_PURGE, when.isoformat()],
        env={**os.environ, **settings_env},
        cwd=root,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "chunk"
        assert retention.purge(now=when).locked_out  # the lock is held meanwhile
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(30)
        if proc.stdout is not None:
            proc.stdout.close()
    assert rows.count(Submission) == 3  # the committed chunk stayed deleted
    with rows.session() as s:
        killed = s.query(PurgeRun).one()
        assert killed.finished_at is None and killed.counts["submissions"] == 2

    # The lock died with the process: the rerun goes ahead and finishes the work.
    rerun = wait_for(lambda: (r := retention.purge(now=when)) and not r.locked_out and r, 20)
    assert rerun.counts["submissions"] == 3
    assert rows.count(Submission) == 0 and rows.count(SubmissionIP) == 0


def test_chunk_commits_do_not_wait_for_the_disk_and_the_closing_commit_does(rows: Rows) -> None:
    """A chunk lost in a database crash is purged again by the next run, so on PostgreSQL its
    commit is asynchronous; the run's closing commit is not, and it makes every chunk before
    it durable (WAL is flushed in order)."""
    from sqlalchemy import event

    from worker.db import get_engine

    contact = rows.contact()
    for _ in range(3):
        rows.submission(contact, need_until=T0)
    engine = get_engine()
    transactions: list[list[str]] = [[]]

    def statement(conn: object, cursor: object, sql: str, *args: object) -> None:
        transactions[-1].append(sql)

    def commit(conn: object) -> None:
        transactions.append([])

    event.listen(engine, "before_cursor_execute", statement)
    event.listen(engine, "commit", commit)
    try:
        result = purge_at(T0 + DAY, chunk_size=2)
    finally:
        event.remove(engine, "before_cursor_execute", statement)
        event.remove(engine, "commit", commit)
    assert result.counts["submissions"] == 3 and rows.count(Submission) == 0

    asynchronous = "SET LOCAL synchronous_commit = off"
    postgres = engine.dialect.name == "postgresql"
    chunks = [t for t in transactions if any(s.startswith("DELETE FROM submission ") for s in t)]
    assert len(chunks) == 2
    assert all((asynchronous in t) == postgres for t in chunks)
    (closing,) = [t for t in transactions if any("SET finished_at" in s for s in t)]
    assert asynchronous not in closing


# --- the schedule is not retroactive (P8) ----------------------------------------------------


def _switch_schedule(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    survey: str = "365d",
    keep: dict[str, str] | None = None,
) -> None:
    from config import get_settings

    shorter = tmp_path / "retention.toml"
    kept = "".join(f'{kind} = "{period}"\n' for kind, period in (keep or {}).items())
    shorter.write_text(
        f'policy_version = "2027-01"\n[forms]\ndefault = "90d"\nsurvey = "{survey}"\n'
        f"[keep]\n{kept}",
        encoding="utf-8",
    )
    monkeypatch.setenv("LISTSYNC_RETENTION_FILE", str(shorter))
    get_settings.cache_clear()
    get_schedule.cache_clear()  # type: ignore[attr-defined]


def test_schedule_change_is_not_applied_retroactively_by_the_purge(
    rows: Rows, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    old = rows.submission(rows.contact(), form="survey", received_at=T0, by_schedule=True)
    _switch_schedule(tmp_path, monkeypatch, survey="10d")
    new = rows.submission(rows.contact("bob@example.com"), form="survey", by_schedule=True)

    purge_at(T0 + 11 * DAY)
    assert rows.exists(Submission, old) and not rows.exists(Submission, new)
    with rows.session() as s:
        kept = s.get(Submission, old)
        assert kept is not None and kept.policy_version == "2026-11"
        assert kept.need_until == T0 + 365 * DAY


def test_intake_stamps_need_date_and_policy_version_in_force_at_receipt(
    rows: Rows, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from sqlalchemy import select

    from worker.db import session_scope
    from worker.signups.message import validate
    from worker.signups.store import ingest

    def signup(email: str) -> int:
        with session_scope() as s:
            ingest(s, validate({"email": email, "form": "survey"}, now=T0), now=T0)
        with rows.session() as s:
            found = s.scalar(select(Submission.id).order_by(Submission.id.desc()).limit(1))
            assert found is not None
            return found

    old_id = signup("old@example.com")
    _switch_schedule(tmp_path, monkeypatch, survey="10d")
    new_id = signup("new@example.com")

    with rows.session() as s:
        old, new = s.get(Submission, old_id), s.get(Submission, new_id)
        assert old is not None and new is not None
        assert (old.policy_version, old.need_until) == ("2026-11", T0 + 365 * DAY)
        assert (new.policy_version, new.need_until) == ("2027-01", T0 + 10 * DAY)
    purge_at(T0 + 11 * DAY)
    assert rows.exists(Submission, old_id) and not rows.exists(Submission, new_id)


# --- the Celery task ------------------------------------------------------------------------


def test_purge_task_on_a_real_worker_deletes_due_rows_and_records_success(
    rows: Rows, celery_worker: object
) -> None:
    from tasks.retention import PURGE_TASK
    from worker.app import app
    from worker.models import utcnow

    contact = rows.contact()
    due = rows.submission(contact, need_until=utcnow() - DAY, ip="192.0.2.1")
    kept = rows.submission(contact, need_until=utcnow() + DAY)
    app.send_task(PURGE_TASK)
    wait_for(lambda: rows.exists(Watermark, retention.WATERMARK), 30)
    assert not rows.exists(Submission, due) and rows.exists(Submission, kept)
