"""The receiver's own work per webhook, in one process, each against its baseline in the same
run: decoding the form's pairs (ours against `parse_qsl`), and storing batches in the inbox on
PostgreSQL (one JSON parameter against SQLAlchemy's multi-row INSERT, "insertmanyvalues").

    .venv/bin/python bench/inbox.py [--bodies 2000] [--events 4000] [--batches 5,10,20,40]

Prints µs per body and client CPU µs per stored event, best of `--repeat` rounds, and the
ratio to the baseline. Needs PostgreSQL (LISTSYNC_TEST_POSTGRES_URL, default the test
database); uses its own schema, dropped after.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from urllib.parse import parse_qsl

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench._common import pg_schema  # noqa: E402
from bench.webhooks import LIST_ID, event_body  # noqa: E402


def best_of(repeat: int, run: Callable[[], float]) -> float:
    return min(run() for _ in range(repeat))


def per_item_us(work: Callable[[], object], items: int) -> float:
    started = time.perf_counter()
    work()
    return (time.perf_counter() - started) / items * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bodies", type=int, default=2000)
    parser.add_argument("--events", type=int, default=4000, help="stored per round and size")
    parser.add_argument("--batches", default="5,10,20,40", help="events per transaction")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    sizes = [int(size) for size in args.batches.split(",")]

    with pg_schema(prefix="bench_inbox_") as (url, _):
        os.environ["LISTSYNC_DATABASE_URL"] = url
        os.environ["LISTSYNC_MAILCHIMP_LIST_ID"] = LIST_ID
        from worker.db import dispose_engines, get_engine, session_scope
        from worker.models import Base, utcnow
        from worker.optouts import inbox
        from worker.optouts.form import form_pairs

        texts = [event_body(n).decode() for n in range(args.bodies)]

        def per_body_us(decode: Callable[[str], object]) -> float:
            return best_of(
                args.repeat, lambda: per_item_us(lambda: [*map(decode, texts)], len(texts))
            )

        ours = per_body_us(form_pairs)
        qsl = per_body_us(lambda text: parse_qsl(text, keep_blank_values=True, errors="strict"))
        whole = per_body_us(lambda text: inbox.parse(text.encode()))
        print(f"form pairs:          {ours:.1f} µs per body, parse_qsl {qsl:.1f} µs ", end="")
        print(f"({ours / qsl:.2f}x)")
        print(f"parse and validate:  {whole:.1f} µs per body (inbox.parse, the whole step)")

        Base.metadata.create_all(get_engine())

        rounds = args.repeat * len(sizes) * 2
        events = [inbox.parse(event_body(n)) for n in range(args.events * rounds)]
        unused = iter(range(0, len(events), args.events))

        def store_cpu_us(size: int, insert: Callable[..., dict[str, int]]) -> float:
            start = next(unused)  # fresh events every round: each one is new to the table
            chunk = events[start : start + args.events]
            cpu = time.process_time()
            for at in range(0, len(chunk), size):
                now = utcnow()
                rows = [inbox._row(event, now) for event in chunk[at : at + size]]
                with session_scope() as session:
                    insert(session, rows)
            return (time.process_time() - cpu) / len(chunk) * 1e6

        for size in sizes:
            json_us, many_us = zip(
                *(
                    (
                        store_cpu_us(size, inbox._insert_postgresql),
                        store_cpu_us(
                            size, inbox._insert_values
                        ),  # SQLite's way, here on PostgreSQL
                    )
                    for _ in range(args.repeat)
                ),
                strict=True,
            )
            print(
                f"store, {size:>3} a batch:  {min(json_us):.0f} µs client CPU per event, "
                f"insertmanyvalues {min(many_us):.0f} µs ({min(json_us) / min(many_us):.2f}x)"
            )
        dispose_engines()


if __name__ == "__main__":
    main()
