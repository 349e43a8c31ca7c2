"""Burst of webhook POSTs against `listsync web` (uvicorn, 2 workers) on PostgreSQL, with a
real Celery worker applying them: requests/s, p50/p99 latency, the web processes' CPU per
request, time until all are applied, lost and applied-twice counts.

    .venv/bin/python bench/webhooks.py --requests 20000 [--concurrency 64] [--duplicates 0.05]

Needs PostgreSQL (LISTSYNC_TEST_POSTGRES_URL, default the test database) and Redis
(--redis-url, default DB 14, which is flushed). Each run uses its own schema, dropped after.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import re
import subprocess
import sys
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urlsplit

import aiohttp
import httptools
import redis
import uvloop
from sqlalchemy import create_engine, func, select, text

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench._common import CpuMeter, descendants  # noqa: E402
from config import Settings  # noqa: E402
from worker.cli import processes  # noqa: E402
from worker.cli.processes import free_port  # noqa: E402
from worker.models import Base, EventState, WebhookEvent  # noqa: E402
from worker.startup import freeze_startup_objects  # noqa: E402

PG = os.environ.get(
    "LISTSYNC_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)
SECRET = "bench-webhook-secret-0123456789"
LIST_ID = "benchlist01"
#: The worker's line for each event it settles (worker/optouts/apply.py, at INFO).
SETTLED = re.compile(r"optouts: event (\d+) -> applied ")


def event_body(n: int) -> bytes:
    fired = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(1_700_000_000 + n))
    email = f"bench.{n}@bench-listsync.org"
    return urlencode(
        [
            ("type", "unsubscribe"),
            ("fired_at", fired),
            ("data[action]", "unsub"),
            ("data[reason]", "manual"),
            ("data[id]", f"{n:010x}"),
            ("data[email]", email),
            ("data[email_type]", "html"),
            ("data[list_id]", LIST_ID),
            ("data[merges][EMAIL]", email),
            ("data[merges][FNAME]", "Bench"),
        ]
    ).encode()


async def burst(
    url: str, bodies: list[bytes], concurrency: int
) -> tuple[list[float], Counter[int]]:
    latencies: list[float] = []
    statuses: Counter[int] = Counter()
    queue: asyncio.Queue[bytes] = asyncio.Queue()
    for raw in bodies:
        queue.put_nowait(raw)
    headers = {"Content-Type": "application/x-www-form-urlencoded"}
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def client() -> None:
            while not queue.empty():
                raw = queue.get_nowait()
                started = time.perf_counter()
                try:
                    async with session.post(url, data=raw, headers=headers) as resp:
                        await resp.read()
                        statuses[resp.status] += 1
                except aiohttp.ClientError:
                    statuses[0] += 1
                latencies.append(time.perf_counter() - started)

        await asyncio.gather(*(client() for _ in range(concurrency)))
    return latencies, statuses


class _Connection(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection that sends prepared POSTs one at a time; answers
    are parsed with httptools, the parser uvicorn itself uses. It costs a fraction of
    aiohttp's CPU per request, which matters when the load generator shares the server's
    two cores (`--client aiohttp` measures with aiohttp instead)."""

    def __init__(self) -> None:
        self.parser = httptools.HttpResponseParser(self)
        self.answer: asyncio.Future[int] | None = None

    def data_received(self, data: bytes) -> None:
        self.parser.feed_data(data)

    def on_message_complete(self) -> None:  # httptools callback: one whole answer read
        if self.answer is not None and not self.answer.done():
            self.answer.set_result(self.parser.get_status_code())

    def connection_lost(self, exc: Exception | None) -> None:
        if self.answer is not None and not self.answer.done():
            self.answer.set_exception(ConnectionError("connection closed"))

    async def post(self, transport: Any, request: bytes) -> int:
        # Any: uvloop's transports are not subclasses of asyncio's, whose write() they have.
        self.answer = asyncio.get_running_loop().create_future()
        transport.write(request)
        return await self.answer


async def lean_burst(
    url: str, bodies: list[bytes], concurrency: int, rate: float | None = None
) -> tuple[list[float], Counter[int]]:
    """The burst over `concurrency` keep-alive connections of `_Connection`.

    With `rate`, request k is due at start + k / rate (an open loop, as Mailchimp's
    deliveries do not wait for our answers) and its latency counts from when it was due, so
    a request held back because every connection was busy is counted late, not on time."""
    target = urlsplit(url)
    host, port = target.hostname or "127.0.0.1", target.port or 80
    head = (
        f"POST {target.path} HTTP/1.1\r\nHost: {host}:{port}\r\n"
        "Content-Type: application/x-www-form-urlencoded\r\nContent-Length: "
    ).encode()
    requests = [b"%s%d\r\n\r\n%s" % (head, len(raw), raw) for raw in bodies]
    requests.reverse()  # popped from the end: sent in the order of `bodies`
    latencies: list[float] = []
    statuses: Counter[int] = Counter()
    loop = asyncio.get_running_loop()
    total = len(requests)
    begin = time.perf_counter()

    async def client() -> None:
        open_: tuple[asyncio.BaseTransport, _Connection] | None = None
        while requests:
            due = begin + (total - len(requests)) / rate if rate else None
            request = requests.pop()
            if due is not None and (wait := due - time.perf_counter()) > 0:
                await asyncio.sleep(wait)
            started = time.perf_counter() if due is None else due
            try:
                if open_ is None:
                    open_ = await loop.create_connection(_Connection, host, port)
                transport, connection = open_
                statuses[await connection.post(transport, request)] += 1
            except (ConnectionError, httptools.HttpParserError):
                statuses[0] += 1
                open_ = None
            latencies.append(time.perf_counter() - started)
        if open_ is not None:
            open_[0].close()

    await asyncio.gather(*(client() for _ in range(concurrency)))
    return latencies, statuses


def wait_http(url: str, proc: subprocess.Popen[bytes], timeout: float = 30) -> None:
    import requests

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit("the web server exited; see its log")
        try:
            if requests.get(url, timeout=1).ok:
                return
        except requests.RequestException:
            pass
        time.sleep(0.1)
    raise SystemExit("the web server did not start")


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=20_000)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--duplicates", type=float, default=0.05, help="share re-sent (dedupe)")
    parser.add_argument(
        "--client",
        choices=["lean", "aiohttp"],
        default="lean",
        help="load generator: keep-alive connections parsed by httptools, or aiohttp",
    )
    parser.add_argument(
        "--rate",
        type=float,
        default=None,
        help="offer this many requests/s (lean client) instead of as many as the server takes",
    )
    parser.add_argument("--web-workers", type=int, default=2)
    parser.add_argument(
        "--worker-concurrency",
        type=int,
        default=2,
        help="Celery processes, as LISTSYNC_WORKER_CONCURRENCY gives `listsync worker`",
    )
    parser.add_argument(
        "--worker-nice",
        type=int,
        default=Settings.model_fields["worker_nice"].default,
        help="start the worker through `nice -n N`, as listsync worker does with "
        "LISTSYNC_WORKER_NICE (default: the setting's; 0: not at all)",
    )
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/14")
    parser.add_argument("--apply-timeout", type=float, default=600.0)
    parser.add_argument(
        "--worker-after",
        action="store_true",
        help="start the Celery worker only after the burst (receiver and apply measured apart)",
    )
    args = parser.parse_args()
    if args.rate is not None and (args.client != "lean" or args.rate <= 0):
        parser.error("--rate needs the lean client and a positive rate")

    schema = "bench_" + uuid.uuid4().hex[:10]
    admin = create_engine(PG)
    with admin.begin() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    db_url = f"{PG}?options=-csearch_path%3D{schema}"
    engine = create_engine(db_url)
    Base.metadata.create_all(engine)
    redis.Redis.from_url(args.redis_url).flushdb()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("LISTSYNC_")},
        "LISTSYNC_DATABASE_URL": db_url,
        "LISTSYNC_BROKER_URL": args.redis_url,
        "LISTSYNC_WEBHOOK_SECRETS": SECRET,
        "LISTSYNC_MAILCHIMP_LIST_ID": LIST_ID,
        "LISTSYNC_LOG_LEVEL": "WARNING",
        # /metrics on an internal port of this run's own: two runs (or a run and the tests)
        # at once must not both want the default.
        "LISTSYNC_METRICS_PORT": str(free_port()),
    }
    logs = ROOT / "var" / "bench" / schema  # per run: two runs at once must not share logs
    logs.mkdir(parents=True, exist_ok=True)
    port = free_port()
    procs: list[subprocess.Popen[bytes]] = []
    try:
        with (logs / "web.log").open("wb") as web_log, (logs / "worker.log").open("wb") as w_log:
            web_argv = [sys.executable, "-m", "worker.cli", "web", "--port", str(port)]
            web_argv += ["--workers", str(args.web_workers)]
            procs.append(
                subprocess.Popen(web_argv, env=env, cwd=ROOT, stdout=web_log, stderr=web_log)
            )
            # The worker as `listsync worker` runs it (prefork), on the optouts queue only.
            worker_argv = processes.worker_argv(
                "optouts", args.worker_concurrency, nice=args.worker_nice
            )
            if not args.worker_after:
                procs.append(
                    subprocess.Popen(worker_argv, env=env, cwd=ROOT, stdout=w_log, stderr=w_log)
                )
        base = f"http://127.0.0.1:{port}"
        wait_http(base + "/healthz", procs[0])

        distinct = args.requests - int(args.requests * args.duplicates)
        bodies = [event_body(n) for n in range(distinct)]
        bodies += [event_body(random.randrange(distinct)) for _ in range(args.requests - distinct)]
        random.shuffle(bodies)
        url = f"{base}/v1/mailchimp/webhook/{SECRET}"
        print(
            f"sending {len(bodies)} POSTs ({distinct} distinct events), "
            f"{args.concurrency} concurrent {args.client} clients"
            f"{f' offering {args.rate:,.0f}/s' if args.rate else ''}, "
            f"{args.web_workers} uvicorn workers, worker niceness {args.worker_nice}"
        )
        # The client's own full collections would walk its 20,000 bodies and stall every
        # request in flight: latency that is the load generator's, not the server's.
        freeze_startup_objects()
        # The uvicorn workers' CPU during the burst: steadier than the rate on a busy machine.
        web_cpu = CpuMeter()
        web_pids = {pid: "web" for pid in descendants(procs[0].pid)}
        web_cpu.read(web_pids, start=True)
        started = time.perf_counter()
        if args.client == "lean":
            sending = lean_burst(url, bodies, args.concurrency, args.rate)
        else:
            sending = burst(url, bodies, args.concurrency)
        latencies, statuses = uvloop.run(sending)
        elapsed = time.perf_counter() - started
        web_cpu.read(web_pids)
        if args.worker_after:
            with (logs / "worker.log").open("ab") as w_log:
                procs.append(
                    subprocess.Popen(worker_argv, env=env, cwd=ROOT, stdout=w_log, stderr=w_log)
                )

        def pending() -> int:
            with engine.connect() as conn:
                return int(
                    conn.scalar(
                        select(func.count()).where(WebhookEvent.state == EventState.PENDING)
                    )
                    or 0
                )

        deadline = time.monotonic() + args.apply_timeout
        while pending() and time.monotonic() < deadline:
            time.sleep(0.2)
        all_applied = time.perf_counter() - started
        with engine.connect() as conn:
            stored = int(conn.scalar(select(func.count()).select_from(WebhookEvent)) or 0)
            applied = int(
                conn.scalar(select(func.count()).where(WebhookEvent.state == EventState.APPLIED))
                or 0
            )
            contacts = int(conn.scalar(text("SELECT count(*) FROM contact")) or 0)
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        engine.dispose()
        with admin.begin() as conn:
            conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()

    runs = Counter(
        int(m) for m in SETTLED.findall((logs / "worker.log").read_text(errors="replace"))
    )
    twice = sum(1 for count in runs.values() if count > 1)
    print(f"requests/s:          {len(bodies) / elapsed:,.0f}  ({len(bodies)} in {elapsed:.2f} s)")
    print(
        f"latency p50 / p99:   {percentile(latencies, 0.50) * 1000:.1f} ms / "
        f"{percentile(latencies, 0.99) * 1000:.1f} ms"
    )
    print(f"HTTP statuses:       {dict(sorted(statuses.items()))}")
    web_seconds = web_cpu.used().get("web", 0.0)
    print(
        f"web CPU per request: {web_seconds / len(bodies) * 1e6:.0f} µs "
        f"({web_seconds:.2f} s in {len(web_pids)} processes during the burst)"
    )
    print(
        f"all applied after:   {all_applied:.2f} s from the first request "
        f"({'done' if applied == distinct else 'NOT done'})"
    )
    print(f"stored / distinct:   {stored} / {distinct}   applied: {applied}   contacts: {contacts}")
    print(f"lost:                {distinct - stored}")
    print(f"applied twice:       {twice}   (events the worker logged as applied: {len(runs)})")


if __name__ == "__main__":
    main()
