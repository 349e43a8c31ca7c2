"""The naive baseline for bench/sync.py: one Celery task per signup, each calling the SDK's
`set_list_member` directly (status_if_new subscribed), on a threads-pool worker.

    .venv/bin/python bench/baseline_sync.py [--signups 2000] [--concurrency 10] [--pool threads]

Runs alone against its own emulator (100 ms latency, 10-connection limit), or from
bench/sync.py (`--baseline-signups`). Redis DB 8 by default (`--redis-url`); its queue
`bench_baseline` is deleted before and after. No database: the baseline keeps no outbox.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from hashlib import md5
from pathlib import Path
from typing import Any

import mailchimp_marketing
import redis
from celery import Celery, Task
from mailchimp_marketing.api_client import ApiClientError

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench._common import (  # noqa: E402
    DEFAULT_REDIS_URL,
    CallSummary,
    RssTracker,
    children,
    clean_env,
    email,
    load_average,
    subscribed,
    wait_for,
)
from worker.supervise import Children  # noqa: E402

QUEUE = "bench_baseline"
TASK = "bench.baseline.set_member"
BROKER_ENV = "BENCH_BASELINE_BROKER_URL"
API_KEY_ENV = "BENCH_BASELINE_API_KEY"
BASE_URL_ENV = "BENCH_BASELINE_BASE_URL"
LIST_ID_ENV = "BENCH_BASELINE_LIST_ID"

app = Celery("listsync_bench_baseline", broker=os.environ.get(BROKER_ENV, DEFAULT_REDIS_URL))
app.conf.update(
    task_default_queue=QUEUE,
    task_serializer="json",
    accept_content=["json"],
    task_ignore_result=True,
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=False,
)

_local = threading.local()


def _client() -> Any:
    """One SDK client per worker thread; the SDK itself opens a connection per call."""
    client = getattr(_local, "client", None)
    if client is None:
        client = mailchimp_marketing.Client()
        client.set_config({"api_key": os.environ[API_KEY_ENV], "server": "us1", "timeout": 10})
        client.api_client.host = os.environ[BASE_URL_ENV]
        _local.client = client
    return client


@app.task(name=TASK, bind=True, max_retries=10)
def set_member(self: Task, address: str, merge_fields: dict[str, str]) -> None:
    """PUT one member. A refused call (429, 5xx) is retried a second later."""
    key = md5(address.lower().encode(), usedforsecurity=False).hexdigest()
    body = {"email_address": address, "status_if_new": "subscribed", "merge_fields": merge_fields}
    try:
        _client().lists.set_list_member(os.environ[LIST_ID_ENV], key, body)
    except ApiClientError:
        raise self.retry(countdown=1) from None


@dataclass
class BaselineResult:
    signups: int
    pool: str
    concurrency: int
    seconds: float  # first message taken from the queue -> last member exists
    signups_per_second: float
    members: int
    calls: int
    calls_per_signup: float
    http_429: int
    limit_rejections: int
    peak_in_flight: int
    complete: bool


def prequeue(redis_url: str, signups: int, prefix: str) -> None:
    """Publish `signups` tasks through one producer, before any worker runs."""
    app.conf.broker_url = redis_url
    with app.producer_or_acquire() as producer:
        for n in range(signups):
            app.send_task(
                TASK, args=[email(prefix, n), {"FNAME": "Bench"}], queue=QUEUE, producer=producer
            )


def worker_argv(pool: str, concurrency: int) -> list[str]:
    argv = [sys.executable, "-m", "celery", "-A", "bench.baseline_sync", "worker", "-Q", QUEUE]
    argv += ["--pool", pool, "--concurrency", str(concurrency), "-n", "baseline@%h"]
    argv += ["--loglevel", "INFO", "--without-mingle", "--without-gossip"]
    return argv


def run_baseline(
    emu: Any,
    children: Children,
    rss: RssTracker,
    *,
    redis_url: str,
    signups: int,
    pool: str = "threads",
    concurrency: int = 10,
    timeout: float = 1800.0,
    progress: bool = True,
) -> BaselineResult:
    """Pre-queue, start the baseline worker, time until every signup is a member."""
    broker = redis.Redis.from_url(redis_url)
    broker.delete(QUEUE)
    prefix = f"bench-base-{int(time.time())}"
    prequeue(redis_url, signups, prefix)
    emu.reset_counters()
    before = subscribed(emu.counters(), emu.list_id)
    env = clean_env(
        **{
            BROKER_ENV: redis_url,
            API_KEY_ENV: emu.api_key,
            BASE_URL_ENV: emu.base_url,
            LIST_ID_ENV: emu.list_id,
        }
    )
    child = children.start("baseline-worker", worker_argv(pool, concurrency), env)
    try:
        wait_for(
            lambda: int(broker.llen(QUEUE)) < signups or not child.alive(),
            timeout=120,
            interval=0.01,
            what="the baseline worker to take its first message",
        )
        started = time.perf_counter()
        members = 0
        deadline = started + timeout
        next_note = started + 10
        while child.alive() and time.perf_counter() < deadline:
            members = subscribed(emu.counters(), emu.list_id) - before
            rss.sample("baseline worker", child.pid, with_children=True)
            if members >= signups:
                break
            if progress and time.perf_counter() >= next_note:
                print(f"  baseline: {members}/{signups} members", file=sys.stderr)
                next_note += 10
            time.sleep(0.1)
        seconds = time.perf_counter() - started
        calls = CallSummary.of(emu.counters())
        rss.sample("baseline worker", child.pid, with_children=True)
    finally:
        child.stop(20)
        broker.delete(QUEUE)
        broker.close()
    return BaselineResult(
        signups=signups,
        pool=pool,
        concurrency=concurrency,
        seconds=round(seconds, 3),
        signups_per_second=round(members / seconds, 1) if seconds > 0 else 0.0,
        members=members,
        calls=calls.total,
        calls_per_signup=round(calls.total / max(1, members), 3),
        http_429=calls.http_429,
        limit_rejections=calls.limit_rejections,
        peak_in_flight=calls.peak_in_flight,
        complete=members >= signups,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--signups", type=int, default=2000)
    parser.add_argument("--pool", choices=["threads", "prefork"], default="threads")
    parser.add_argument("--concurrency", type=int, default=10)
    parser.add_argument("--latency-ms", type=float, default=100.0)
    parser.add_argument("--max-connections", type=int, default=10)
    parser.add_argument("--redis-url", default=DEFAULT_REDIS_URL)
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    args = parser.parse_args()

    from worker.emulator.process import EmulatorProcess

    rss = RssTracker()
    load_before = load_average()
    with tempfile.TemporaryDirectory(prefix="bench-baseline-") as logs:
        supervisor = children(Path(logs))
        with EmulatorProcess() as emu:
            emu.set_faults(latency_ms=args.latency_ms, max_connections=args.max_connections)
            try:
                result = run_baseline(
                    emu,
                    supervisor,
                    rss,
                    redis_url=args.redis_url,
                    signups=args.signups,
                    pool=args.pool,
                    concurrency=args.concurrency,
                )
                if emu.pid is not None:
                    rss.sample("emulator", emu.pid)
            finally:
                supervisor.stop_all()
    rss.sample("bench driver", os.getpid())
    if args.json:
        out = {"baseline": asdict(result), "peak_rss": rss.rows(), "load_before": load_before}
        print(json.dumps(out, indent=2))
        return
    print(f"load average before: {' '.join(f'{x:.2f}' for x in load_before)}")
    for key, value in asdict(result).items():
        print(f"{key:20} {value}")
    for row in rss.rows():
        print(f"peak RSS {row['process']:24} pid {row['pid']:>7}  {row['peak_rss_mib']:7.1f} MiB")


if __name__ == "__main__":
    main()
