"""Measure what a Prometheus scrape of /metrics costs as the outbox and the inbox grow.

    .venv/bin/python bench/scrape.py [--rows 10000,100000,1000000] [--scrapes 20] [--redis-url U]

For each size, a throwaway PostgreSQL schema gets that many done sync jobs and that many
applied webhook events (weeks of history, as the purge keeps them), plus a few hundred
pending and failed ones. Then the whole scrape (`generate_latest` of the app's registry:
counters from Redis, gauges from the database, queue depths) is timed, in process:

- baseline: every count exact on every scrape (a GROUP BY over each table, the settled rows
  included), as a scrape did before the settled counts were cached;
- warm: a scrape as Prometheus sees it between two refreshes of the settled counts;
- the cold scrape (once per SETTLED_COUNT_SECONDS per web process) costs what baseline does.

Prints the median and p90 of each, and warm/baseline. Target: warm stays flat as rows grow.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sqlalchemy import text

from bench._common import percentile, pg_schema

LIVE_ROWS = 300


def fill(url: str, rows: int) -> None:
    from worker.db import get_engine
    from worker.models import Base

    engine = get_engine(url)
    Base.metadata.create_all(engine)
    with engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO sync_job (kind, email_hash, state, attempts, next_attempt_at,"
                " created_at, finished_at, outcome) SELECT 'upsert', md5(i::text),"
                " CASE WHEN i <= :rows THEN 'done' WHEN i % 2 = 0 THEN 'pending' ELSE 'failed'"
                " END, 1, now(), now() - interval '10 days', now() - interval '10 days',"
                " 'subscribed' FROM generate_series(1, :rows + :live) AS i"
            ),
            {"rows": rows, "live": LIVE_ROWS},
        )
        conn.execute(
            text(
                "INSERT INTO webhook_event (dedupe_key, type, source, fired_at, email_hash,"
                " received_at, state) SELECT md5('e' || i), 'unsubscribe', 'webhook',"
                " now() - interval '10 days', md5(i::text), now() - interval '10 days',"
                " CASE WHEN i <= :rows THEN 'applied' ELSE 'pending' END"
                " FROM generate_series(1, :rows + :live) AS i"
            ),
            {"rows": rows, "live": LIVE_ROWS},
        )
        conn.execute(text("ANALYZE sync_job; ANALYZE webhook_event"))


def timed(scrapes: int, before_each: object = None) -> list[float]:
    from prometheus_client import generate_latest

    from worker.web.metrics import registry

    seconds = []
    for _ in range(scrapes):
        if callable(before_each):
            before_each()
        start = time.perf_counter()
        generate_latest(registry)
        seconds.append(time.perf_counter() - start)
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", default="10000,100000,1000000")
    parser.add_argument("--scrapes", type=int, default=20)
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/3", help="counters' DB")
    args = parser.parse_args()

    print(f"{'rows':>9}  {'baseline p50/p90 ms':>20}  {'warm p50/p90 ms':>16}  warm/baseline")
    for rows in (int(n) for n in args.rows.split(",")):
        with pg_schema("bench_scrape_") as (url, _):
            os.environ.update(LISTSYNC_DATABASE_URL=url, LISTSYNC_BROKER_URL=args.redis_url)
            from config import get_settings
            from worker.db import dispose_engines
            from worker.status import settled_counts

            get_settings.cache_clear()
            fill(url, rows)
            timed(3)  # connections and plans warm, as in a long-running web process
            baseline = timed(args.scrapes, before_each=settled_counts.clear)
            timed(1)
            warm = timed(args.scrapes)
            dispose_engines()
        b50, w50 = statistics.median(baseline), statistics.median(warm)
        print(
            f"{rows:>9}  {b50 * 1e3:>9.1f} / {percentile(baseline, 0.9) * 1e3:>7.1f}  "
            f"{w50 * 1e3:>7.1f} / {percentile(warm, 0.9) * 1e3:>6.1f}  {w50 / b50:>12.2f}"
        )


if __name__ == "__main__":
    main()
