"""Cost of applying stored webhook events, in one process, without a web server or a broker
in the way: events/s and CPU milliseconds per event for `apply_pending`.

    .venv/bin/python bench/apply.py [--events 3000]

Stores `--events` unsubscribe events for people never seen (each creates a contact) through
the inbox's batch insert, then applies them all in this process. Needs PostgreSQL
(LISTSYNC_TEST_POSTGRES_URL, default the test database); uses its own schema, dropped after.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench._common import pg_schema  # noqa: E402
from bench.webhooks import LIST_ID, event_body  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=3000)
    args = parser.parse_args()

    with pg_schema(prefix="bench_apply_") as (url, _):
        os.environ["LISTSYNC_DATABASE_URL"] = url
        os.environ.setdefault("LISTSYNC_BROKER_URL", "redis://127.0.0.1:6379/12")
        os.environ["LISTSYNC_MAILCHIMP_LIST_ID"] = LIST_ID
        from worker.db import dispose_engines, get_engine, session_scope
        from worker.models import Base
        from worker.optouts import inbox
        from worker.optouts.apply import APPLY_BATCH, apply_pending

        Base.metadata.create_all(get_engine())
        events = [inbox.parse(event_body(n)) for n in range(args.events)]
        for start in range(0, len(events), 200):
            with session_scope() as session:
                inbox.store_many(session, events[start : start + 200])

        wall, cpu = time.perf_counter(), time.process_time()
        applied = 0
        while (count := apply_pending()) > 0:
            applied += count
            if count < APPLY_BATCH:
                break
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        dispose_engines()
    print(f"applied:             {applied} of {len(events)} events in {wall:.2f} s")
    print(f"events/s:            {applied / wall:,.0f}  (one process)")
    print(f"CPU per event:       {cpu / max(applied, 1) * 1000:.2f} ms")


if __name__ == "__main__":
    main()
