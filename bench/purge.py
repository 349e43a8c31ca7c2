"""Measure the retention purge on PostgreSQL: rows deleted per second, the longest chunk
transaction, and intake p99 latency while the purge runs versus idle.

    .venv/bin/python bench/purge.py [--rows 1000000] [--idle-seconds 10] [--url URL]

Builds its own schema (dropped afterwards) with `--rows` submissions, half of them due, each
with a contact (4 submissions per contact), an IP row and a sync job finished at receipt
(so all jobs are past their 30-day retention and go too). Intake is one
transaction inserting a contact, a submission and a sync job, as worker/signups/store.py does.
Targets: >= 50,000 rows/s, longest transaction <= 200 ms, intake p99 during purge <= 2x idle.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import statistics
import sys
import time
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sqlalchemy import create_engine, text

DEFAULT_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
SUBMISSIONS_PER_CONTACT = 4


def fill(url: str, rows: int) -> None:
    from worker.db import get_engine
    from worker.models import Base

    engine = get_engine(url)
    Base.metadata.create_all(engine)
    contacts = max(1, rows // SUBMISSIONS_PER_CONTACT)
    with engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO contact (id, email, email_hash, status, status_changed_at,"
                " status_source, merge_fields, created_at, updated_at)"
                " SELECT i, 'b' || i || '@example.com', md5('b' || i || '@example.com'),"
                " 'subscribed', now(), 'signup', '{}', now(), now()"
                " FROM generate_series(1, :n) i"
            ),
            {"n": contacts},
        )
        # Even ids are due (need_until yesterday), odd ids are kept for 30 more days.
        conn.execute(
            text(
                "INSERT INTO submission (id, contact_id, form, fields, newsletter_consent,"
                " submitted_at, received_at, need_until, policy_version, idempotency_key)"
                " SELECT i, 1 + (i % :c), 'contact_form', '{\"message\": \"hello\"}', true,"
                " now() - interval '91 days', now() - interval '91 days',"
                " CASE WHEN i % 2 = 0 THEN now() - interval '1 day'"
                " ELSE now() + interval '30 days' END,"
                " '2026-11', 'bench-' || i FROM generate_series(1, :n) i"
            ),
            {"n": rows, "c": contacts},
        )
        # IPs received recently: only those of due submissions go (with their submission).
        conn.execute(
            text(
                "INSERT INTO submission_ip (submission_id, ip, received_at)"
                " SELECT i, '192.0.2.1', now() FROM generate_series(1, :n) i"
            ),
            {"n": rows},
        )
        conn.execute(
            text(
                "INSERT INTO sync_job (kind, contact_id, email_hash, submission_id,"
                " state, attempts, next_attempt_at, created_at, finished_at, outcome)"
                " SELECT 'upsert', 1 + (i % :c), md5('x'), i, 'done', 1, now(),"
                " now() - interval '91 days', now() - interval '91 days', 'member_subscribed'"
                " FROM generate_series(1, :n) i"
            ),
            {"n": rows, "c": contacts},
        )
        for table in ("contact", "submission", "sync_job"):
            conn.execute(
                text(
                    f"SELECT setval(pg_get_serial_sequence('{table}', 'id'),"  # noqa: S608
                    f" (SELECT max(id) FROM {table}))"
                )
            )
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(text("VACUUM ANALYZE"))


IDLE, DURING, STOP = 1, 2, 0


def intake(url: str, phase: Any, out: Any) -> None:
    """Inserts contact + submission + IP + sync job in one transaction, back to back, and
    reports its latencies per phase when told to stop. It runs in a process of its own, as
    intake does in production: sharing the purge's process would time the purge's hold on
    the GIL, not the database."""
    from worker.db import get_sessionmaker
    from worker.models import Contact, JobKind, Submission, SubmissionIP, SyncJob, utcnow

    sessions = get_sessionmaker(url)
    latencies: dict[int, list[float]] = {IDLE: [], DURING: []}
    while (current := phase.value) != STOP:
        key = uuid.uuid4().hex
        started = time.perf_counter()
        with sessions() as s:
            now = utcnow()
            contact = Contact(email=f"{key}@example.com", email_hash=key)
            s.add(contact)
            s.flush()
            sub = Submission(
                contact_id=contact.id,
                form="contact_form",
                fields={"message": "hi"},
                newsletter_consent=True,
                submitted_at=now,
                received_at=now,
                need_until=now + timedelta(days=90),
                policy_version="2026-11",
                idempotency_key=key,
            )
            s.add(sub)
            s.flush()
            s.add(SubmissionIP(submission_id=sub.id, ip="192.0.2.1", received_at=now))
            s.add(
                SyncJob(
                    kind=JobKind.UPSERT,
                    contact_id=contact.id,
                    email_hash=key,
                    submission_id=sub.id,
                )
            )
            s.commit()
        if current == phase.value:  # a transaction across the change of phase counts for neither
            latencies[current].append(time.perf_counter() - started)
        time.sleep(0.005)  # a steady trickle, like a busy website
    out.put(latencies)


def p99(values: list[float]) -> float:
    return statistics.quantiles(values, n=100)[98] if len(values) >= 2 else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--idle-seconds", type=float, default=10.0)
    parser.add_argument("--url", default=os.environ.get("LISTSYNC_TEST_POSTGRES_URL", DEFAULT_URL))
    args = parser.parse_args()

    schema = "bench_purge_" + uuid.uuid4().hex[:8]
    admin = create_engine(args.url)
    with admin.begin() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    url = f"{args.url}?options=-csearch_path%3D{schema}"
    os.environ["LISTSYNC_DATABASE_URL"] = url
    os.environ.setdefault("LISTSYNC_BROKER_URL", "redis://127.0.0.1:6379/13")
    try:
        from worker.retention import purge as retention

        t = time.perf_counter()
        fill(url, args.rows)
        print(f"filled {args.rows:,} submissions (+IPs, jobs) in {time.perf_counter() - t:.0f}s")

        context = multiprocessing.get_context("spawn")
        phase = context.Value("i", IDLE)
        out = context.Queue()
        writer = context.Process(target=intake, args=(url, phase, out), daemon=True)
        writer.start()
        time.sleep(args.idle_seconds)
        phase.value = DURING
        result = retention.purge(url=url)
        phase.value = STOP
        latencies = out.get(timeout=30)
        writer.join(10)
        idle, during = latencies[IDLE], latencies[DURING]

        deleted = result.counts["submissions"]
        total = result.total
        print(f"purge: {result.counts} in {result.duration_seconds:.1f}s")
        print(
            f"submissions deleted per second: {deleted / result.duration_seconds:,.0f} "
            f"(all rows incl. IPs: {total / result.duration_seconds:,.0f})  target >= 50,000"
        )
        print(
            f"longest single transaction: {result.longest_transaction_seconds * 1000:.0f} ms"
            "  target <= 200 ms"
        )
        print(
            f"intake p99 idle: {p99(idle) * 1000:.1f} ms ({len(idle)} inserts); "
            f"during purge: {p99(during) * 1000:.1f} ms ({len(during)} inserts); "
            f"ratio {p99(during) / p99(idle):.2f}  target <= 2.0"
        )
    finally:
        from worker.db import dispose_engines

        dispose_engines()
        with admin.begin() as conn:
            conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


if __name__ == "__main__":
    main()
