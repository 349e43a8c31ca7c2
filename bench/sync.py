"""Benchmark of the signup → Mailchimp sync path against the naive baseline, in one run.

    .venv/bin/python bench/sync.py [--signups 100000] [--floor-signups N] [--baseline-signups 3000]
        [--steady-seconds 30] [--steady-rate 20] [--mailchimp-concurrency 4]
        [--worker QUEUES:POOL:CONCURRENCY[:PREFETCH]] ... [--profile SECONDS] [--json]

Real processes on one machine: the Mailchimp emulator (100 ms per call, 10-connection limit),
Celery workers started like production (`celery -A worker worker -Q signups,sync ...`) on a
fresh PostgreSQL schema in db `test` (dropped after) and Redis DB 8 (`--redis-url`; flushed
before and after). Phases, in order:

1. drain: N signups pre-queued on `signups` before any worker starts; time from the first
   message taken until the emulator has N members (and until the DB has N submissions);
2. steady state: `enqueue_signup` at 20/s on the idle workers; enqueue → member latency;
3. existing members: signups of people already in the audience (`--existing`), whose calls
   per signup (PUT, then groups and tags) are reported apart;
4. baseline (bench/baseline_sync.py): one task per signup calling `set_list_member`.

Before the drain, the floor: as many pre-queued signup messages drained, in the same worker
layout, by a no-op task of the same kind (bench/floor.py: celery-batches, the same flush size,
late acks, task events, every celeryconfig setting). `drain / floor` is how close listsync
comes to the cost of one Celery message per signup; `--floor-signups 0` skips it.

Mailchimp calls, 429s and limit rejections come from the emulator's counters, reset before
each phase; peak RSS is each process's VmHWM from /proc. `--worker` may be repeated (one
Celery worker each; default production's layout: `signups:prefork:2` beside
`sync,optouts,maintenance:prefork:2`). `--profile S` runs `py-spy record` for S seconds on
every worker process during the drain and prints where the time goes.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import redis
from sqlalchemy import Engine, create_engine, text

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench._common import (  # noqa: E402
    DEFAULT_REDIS_URL,
    CallSummary,
    CpuMeter,
    RssTracker,
    clean_env,
    email,
    load_average,
    percentile,
    pg_schema,
    run_migrations,
    subscribed,
    wait_for,
)
from bench._common import children as bench_children  # noqa: E402
from bench.baseline_sync import BaselineResult, run_baseline  # noqa: E402
from worker.cli.processes import LAYOUT  # noqa: E402
from worker.supervise import Child, Children, descendants  # noqa: E402

FORM = "newsletter_signup"  # implied consent: every signup becomes a sync job
#: newsletter_signup's feed (config/forms.toml) adds two tags, a fixed group and the group
#: this role names: every member carries them, as the Trust's do.
FIELDS = {"first_name": "Bench", "role": "Parent"}
SIGNUP_QUEUE = "signups"
#: Production's layout (worker.cli.processes.LAYOUT) at its default concurrency.
DEFAULT_WORKERS = [f"{queues}:prefork:2" for queues in LAYOUT.values()]
TARGETS = {
    "floor_ratio": 0.6,
    "ratio": 10.0,
    "calls_per_signup": 0.01,
    "p99_ms": 1000.0,
    "rss_mib": 150.0,
}


def say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


# --- worker configurations ----------------------------------------------------------------


@dataclass(frozen=True)
class WorkerSpec:
    """One Celery worker: `QUEUES:POOL:CONCURRENCY[:PREFETCH]`, e.g. `signups:prefork:2:4`."""

    queues: str
    pool: str
    concurrency: int
    prefetch: int | None = None

    @classmethod
    def parse(cls, spec: str) -> WorkerSpec:
        parts = spec.split(":")
        if len(parts) not in (3, 4) or parts[1] not in ("prefork", "threads", "solo"):
            raise argparse.ArgumentTypeError(
                f"--worker {spec!r}: expected QUEUES:POOL:CONCURRENCY[:PREFETCH], "
                "POOL one of prefork, threads, solo"
            )
        try:
            prefetch = int(parts[3]) if len(parts) == 4 else None
            return cls(parts[0], parts[1], int(parts[2]), prefetch)
        except ValueError:
            raise argparse.ArgumentTypeError(f"--worker {spec!r}: numbers expected") from None

    def argv(self, index: int, celery_app: str = "worker") -> list[str]:
        """Production's worker command line (worker.cli.processes) with this pool; without a
        PREFETCH, production's default prefetch applies. `celery_app`: the `-A` module
        (bench.floor for the no-op floor)."""
        from worker.cli.processes import worker_argv

        argv = worker_argv(
            self.queues, self.concurrency, prefetch_multiplier=self.prefetch, name=f"bench{index}"
        )
        argv[argv.index("-A") + 1] = celery_app
        return [*argv, "--pool", self.pool]

    @property
    def takes_signups(self) -> bool:
        return SIGNUP_QUEUE in self.queues.split(",")

    def __str__(self) -> str:
        tail = f":{self.prefetch}" if self.prefetch is not None else ""
        return f"{self.queues}:{self.pool}:{self.concurrency}{tail}"


# --- results ------------------------------------------------------------------------------


@dataclass
class DrainResult:
    signups: int
    enqueue_per_second: float  # pre-queueing, not part of the drain
    seconds: float  # first message taken -> N members in the emulator
    signups_per_second: float
    seconds_from_launch: float  # worker processes started -> N members
    stored_seconds: float  # first message taken -> N submissions in the DB
    stored_per_second: float
    members: int
    calls: int
    calls_per_signup: float
    calls_by_endpoint: dict[str, dict[str, int]]
    http_429: int
    limit_rejections: int
    peak_in_flight: int
    jobs_by_state: dict[str, int]
    cpu_ms_per_signup: dict[str, float]  # user+system CPU during the drain, by process group
    cpu_bound_ceiling_2_cores: float  # 2 s of CPU per second / the CPU a signup costs
    complete: bool


@dataclass
class FloorResult:
    """The same kind of drain through a no-op task (bench/floor.py)."""

    signups: int
    seconds: float  # first message taken -> every message taken and its batch returned
    signups_per_second: float
    cpu_ms_per_signup: dict[str, float]
    complete: bool


@dataclass
class SteadyResult:
    rate: float
    seconds: float
    enqueued: int
    measured: int
    missing: int
    p50_ms: float
    p99_ms: float
    max_ms: float
    poll_period_ms: float  # how finely "the member exists" is observed
    calls: int
    calls_per_signup: float
    http_429: int
    limit_rejections: int
    peak_in_flight: int


@dataclass
class ExistingResult:
    """Signups of people already in the audience (unknown to listsync): each comes back from
    the batch as existing and gets a PUT, then its groups (PATCH) and tags it lacks."""

    signups: int
    seconds: float
    calls: int
    calls_per_signup: float
    calls_by_endpoint: dict[str, dict[str, int]]
    jobs_by_state: dict[str, int]
    complete: bool


@dataclass
class Report:
    command: str
    workers: list[str]
    mailchimp_concurrency: int
    emulator: dict[str, Any]
    load_average_before: tuple[float, float, float]
    load_average_after: tuple[float, float, float] = (0.0, 0.0, 0.0)
    floor: FloorResult | None = None
    drain: DrainResult | None = None
    steady: SteadyResult | None = None
    existing: ExistingResult | None = None
    baseline: BaselineResult | None = None
    ratio: float | None = None  # drain / baseline
    floor_ratio: float | None = None  # drain / floor
    drain_per_s: float | None = None
    floor_per_s: float | None = None
    baseline_per_s: float | None = None
    peak_rss: list[dict[str, Any]] = field(default_factory=list)
    profile: dict[str, list[tuple[str, float]]] = field(default_factory=dict)
    targets: dict[str, bool] = field(default_factory=dict)


# --- the run context ----------------------------------------------------------------------


@dataclass
class Bench:
    emu: Any  # worker.emulator.process.EmulatorProcess
    children: Children
    rss: RssTracker
    broker: redis.Redis
    engine: Engine
    env: dict[str, str]
    specs: list[WorkerSpec]
    log_dir: Path
    app_name: str  # application_name of the workers' PostgreSQL connections
    workers: list[Child] = field(default_factory=list)
    running_specs: list[WorkerSpec] = field(default_factory=list)

    def members(self) -> int:
        return subscribed(self.emu.counters(), self.emu.list_id)

    def calls(self) -> CallSummary:
        return CallSummary.of(self.emu.counters())

    def count(self, sql: str) -> int:
        with self.engine.connect() as conn:
            return int(conn.scalar(text(sql)) or 0)

    def jobs_by_state(self) -> dict[str, int]:
        with self.engine.connect() as conn:
            rows = conn.execute(text("SELECT state, count(*) FROM sync_job GROUP BY state"))
            return {str(state): int(n) for state, n in rows}

    def idle(self) -> bool:
        """No signup or flush queued, no sync job left to send."""
        queued = sum(int(self.broker.llen(q)) for q in (SIGNUP_QUEUE, "sync"))
        jobs = self.jobs_by_state()
        return queued == 0 and not jobs.get("pending") and not jobs.get("in_flight")

    def processes(self) -> dict[int, str]:
        """Every process doing the running workers' work, by group (for CPU accounting)."""
        groups: dict[int, str] = {}
        for child, spec in zip(self.workers, self.running_specs, strict=True):
            groups[child.pid] = f"{child.name} ({spec.queues}) main"
            groups.update(
                dict.fromkeys(descendants(child.pid), f"{child.name} ({spec.queues}) pool")
            )
        with self.engine.connect() as conn:
            backends = conn.scalars(
                text("SELECT pid FROM pg_stat_activity WHERE application_name = :name"),
                {"name": self.app_name},
            )
            groups.update(dict.fromkeys((int(p) for p in backends), "postgresql backends"))
        if self.emu.pid is not None:
            groups[self.emu.pid] = "emulator"
        return groups

    def start_workers(self, specs: list[WorkerSpec] | None = None, app: str = "worker") -> None:
        for i, spec in enumerate(self.specs if specs is None else specs):
            name = f"floor{i}" if app != "worker" else f"worker{i}"
            self.workers.append(self.children.start(name, spec.argv(i, app), self.env))
            self.running_specs.append(spec)

    def first_taken(self, queued: int) -> tuple[float, CpuMeter]:
        """Wait until the workers take the first of `queued` messages; the clock's start, and a
        CPU meter started on every process then."""

        def taken() -> bool:
            self.check_workers()
            return int(self.broker.llen(SIGNUP_QUEUE)) < queued

        wait_for(taken, timeout=180, interval=0.01, what="the first message to be taken")
        started = time.perf_counter()
        cpu = CpuMeter()
        cpu.read(self.processes(), start=True)
        return started, cpu

    def workers_ready(self) -> bool:
        self.check_workers()
        return all(child.logged_since_start(" ready.") for child in self.workers)

    def check_workers(self) -> None:
        for child in self.workers:
            if not child.alive():
                tail = child.log_tail()
                raise RuntimeError(f"{child.name} exited ({child.exit_code()}):\n{tail}")

    def sample_rss(self) -> None:
        for child in self.workers:
            self.rss.sample(child.name, child.pid, with_children=True)

    def stop_workers(self) -> None:
        self.sample_rss()
        for child in self.workers:
            child.stop(20)
        self.workers.clear()
        self.running_specs.clear()


# --- phase 1: the drain -------------------------------------------------------------------


def prequeue(count: int, prefix: str) -> float:
    """Publish `count` signup messages as enqueue_signup does; returns messages per second.

    The first message goes through `validate` like every `enqueue_signup` call; the rest
    have the same shape.
    """
    from worker.publish import publish_signup
    from worker.signups.message import build_message, validate

    validate(build_message(email(prefix, 0), FORM, fields=FIELDS))
    started = time.perf_counter()
    for n in range(count):
        publish_signup(build_message(email(prefix, n), FORM, fields=FIELDS))
    return count / (time.perf_counter() - started)


def run_floor(bench: Bench, signups: int, timeout: float) -> FloorResult:
    """Drain `signups` pre-queued signup messages through the no-op task (bench/floor.py), in
    the workers of the layout that take signups; time from the first message taken until the
    task has returned every batch."""
    from bench.floor import COUNTER

    specs = [spec for spec in bench.specs if spec.takes_signups]
    say(f"floor: pre-queueing {signups} signups for the no-op task …")
    bench.broker.delete(COUNTER)
    prequeue(signups, f"bench-floor-{int(time.time())}")
    bench.start_workers(specs, app="bench.floor")
    started, cpu = bench.first_taken(signups)
    taken = 0
    while taken < signups and time.perf_counter() - started < timeout:
        bench.check_workers()
        cpu.read(bench.processes(), start=True)
        time.sleep(0.05)
        taken = int(bench.broker.get(COUNTER) or 0)
    seconds = time.perf_counter() - started
    cpu.read(bench.processes(), start=True)
    bench.sample_rss()
    bench.stop_workers()
    bench.broker.delete(COUNTER)
    cpu_ms = {k: round(1000 * v / max(1, taken), 3) for k, v in sorted(cpu.used().items())}
    return FloorResult(
        signups=signups,
        seconds=round(seconds, 3),
        signups_per_second=round(taken / seconds, 1),
        cpu_ms_per_signup=cpu_ms,
        complete=taken >= signups,
    )


def run_drain(bench: Bench, signups: int, timeout: float, profile_seconds: float) -> DrainResult:
    say(f"drain: pre-queueing {signups} signups …")
    enqueue_rate = prequeue(signups, f"bench-drain-{int(time.time())}")
    say(f"drain: queued at {enqueue_rate:,.0f}/s; starting {len(bench.specs)} worker(s)")
    bench.emu.reset_counters()
    before = bench.members()
    launched = time.perf_counter()
    bench.start_workers()
    started, cpu = bench.first_taken(signups)
    profilers = start_profilers(bench, profile_seconds) if profile_seconds > 0 else []
    members = stored = 0
    stored_at: float | None = None
    next_db = next_rss = started
    next_note = started + 10
    while True:
        now = time.perf_counter()
        members = bench.members() - before
        if members >= signups or now - started > timeout:
            break
        bench.check_workers()
        if stored_at is None and now >= next_db:
            stored = bench.count("SELECT count(*) FROM submission")
            if stored >= signups:
                stored_at = now
            next_db = now + 0.5
        if now >= next_rss:
            bench.sample_rss()
            cpu.read(bench.processes(), start=True)
            next_rss = now + 1.0
        if now >= next_note:
            queued = int(bench.broker.llen(SIGNUP_QUEUE))
            say(
                f"  {now - started:6.1f} s  queued {queued:>7}  stored {stored:>7}  "
                f"members {members:>7}  load {load_average()[0]:.2f}"
            )
            next_note += 10
        time.sleep(0.1)
    finished = time.perf_counter()
    cpu.read(bench.processes(), start=True)
    bench.sample_rss()
    if stored_at is None:
        stored = bench.count("SELECT count(*) FROM submission")
        stored_at = finished
    calls = bench.calls()
    for child in profilers:
        child.proc.wait(profile_seconds + 30)
    seconds = finished - started
    cpu_ms = {k: round(1000 * v / max(1, members), 3) for k, v in sorted(cpu.used().items())}
    return DrainResult(
        signups=signups,
        enqueue_per_second=round(enqueue_rate, 1),
        seconds=round(seconds, 3),
        signups_per_second=round(members / seconds, 1),
        seconds_from_launch=round(finished - launched, 3),
        stored_seconds=round(stored_at - started, 3),
        stored_per_second=round(stored / max(1e-9, stored_at - started), 1),
        members=members,
        calls=calls.total,
        calls_per_signup=round(calls.total / max(1, members), 4),
        calls_by_endpoint=calls.by_endpoint,
        http_429=calls.http_429,
        limit_rejections=calls.limit_rejections,
        peak_in_flight=calls.peak_in_flight,
        jobs_by_state=bench.jobs_by_state(),
        cpu_ms_per_signup=cpu_ms,
        cpu_bound_ceiling_2_cores=round(2000 / max(1e-9, sum(cpu_ms.values())), 1),
        complete=members >= signups,
    )


# --- profiling ----------------------------------------------------------------------------


def start_profilers(bench: Bench, seconds: float) -> list[Child]:
    """`py-spy record` on every worker process (pool children included) for `seconds`."""
    py_spy = Path(sys.executable).parent / "py-spy"
    if not py_spy.exists():
        say("profile: py-spy is not installed in .venv (pip install py-spy); skipped")
        return []
    time.sleep(2)  # past the start-up burst
    started = []
    for worker in bench.workers:
        for pid in [worker.pid, *descendants(worker.pid)]:
            out = bench.log_dir / f"pyspy-{worker.name}-{pid}.txt"
            argv = [str(py_spy), "record", "--pid", str(pid), "--duration", str(int(seconds))]
            argv += ["--rate", "50", "--format", "raw", "--nonblocking", "--output", str(out)]
            started.append(bench.children.start(f"pyspy-{pid}", argv, os.environ))
    return started


#: Where a sample's time goes: the first of these found walking from the innermost frame out.
CATEGORIES = (
    ("database (sqlalchemy, psycopg)", ("sqlalchemy/", "psycopg/", "psycopg_binary/")),
    ("redis client", ("redis/",)),
    ("http client (requests, urllib3)", ("requests/", "urllib3/", "http/client", "mailchimp_")),
    ("validation (pydantic, email_validator)", ("pydantic", "email_validator/")),
    ("listsync code (worker/, tasks/)", ("(worker/", "(tasks/")),
    ("celery, kombu, billiard", ("celery/", "kombu/", "billiard/", "celery_batches/", "vine/")),
)


def summarize_profiles(log_dir: Path, top: int = 14) -> dict[str, list[tuple[str, float]]]:
    """Per profiled process: share of samples by library (innermost match) and the
    listsync functions with the largest inclusive share."""
    summary: dict[str, list[tuple[str, float]]] = {}
    for path in sorted(log_dir.glob("pyspy-worker*.txt")):
        by_category: collections.Counter[str] = collections.Counter()
        ours: collections.Counter[str] = collections.Counter()
        total = 0
        for line in path.read_text(errors="replace").splitlines():
            stack, _, count_text = line.rpartition(" ")
            if not stack or not count_text.isdigit():
                continue
            count = int(count_text)
            total += count
            frames = stack.split(";")
            by_category[_category(frames)] += count
            for name in {_short(f) for f in frames if _ours(f)}:
                ours[name] += count
        if total:
            rows = [(f"[{name}]", n) for name, n in by_category.most_common()]
            rows += ours.most_common(top)
            summary[f"{path.stem} ({total} samples)"] = [
                (name, round(100 * n / total, 1)) for name, n in rows
            ]
    return summary


def _category(frames: list[str]) -> str:
    for frame in reversed(frames):
        where = "(" + frame.rpartition("(")[2]
        for name, needles in CATEGORIES:
            if any(needle in where for needle in needles):
                return name
    return "other (stdlib, interpreter)"


def _ours(frame: str) -> bool:
    """A frame of listsync's own code (py-spy shows those paths relative to the root)."""
    return " (worker/" in frame or " (tasks/" in frame


def _short(frame: str) -> str:
    """`fn (worker/sync.py:12)` -> `worker/sync.py fn`."""
    name, _, where = frame.partition(" (")
    return f"{where.split(':')[0]} {name}"


# --- phase 2: steady state ----------------------------------------------------------------


class MemberWatcher(threading.Thread):
    """Notices when enqueued signups become members of the emulator's audience.

    It polls the admin counters (one cheap call, never counted as API traffic) every
    `interval`; when the subscribed count grows it looks the waiting signups up by hash. A
    member counted by that poll is stamped with the poll's time, so the stamp is late by at
    most one poll period plus one poll's duration. If a lookup finds more members than the
    poll counted (some appeared in between), all found are stamped after the lookups.
    """

    def __init__(self, emu: Any, before: int, interval: float = 0.01) -> None:
        super().__init__(daemon=True)
        self.emu = emu
        self.last = before
        self.interval = interval
        self.lock = threading.Lock()
        self.waiting: dict[str, float] = {}
        self.latencies: dict[str, float] = {}
        self.polls = 0
        self.stopping = threading.Event()
        self.error: BaseException | None = None

    def add(self, email_hash: str, enqueued_at: float) -> None:
        with self.lock:
            self.waiting[email_hash] = enqueued_at

    def pending(self) -> int:
        with self.lock:
            return len(self.waiting)

    def run(self) -> None:
        carried = 0  # members stamped already that the counters had not counted yet
        try:
            while not self.stopping.is_set():
                began = time.perf_counter()
                count = subscribed(self.emu.counters(), self.emu.list_id)
                polled = time.perf_counter()
                self.polls += 1
                if count > self.last:
                    fresh = count - self.last - carried
                    self.last = count
                    with self.lock:
                        waiting = sorted(self.waiting.items(), key=lambda kv: kv[1])
                    hits = [(h, t0) for h, t0 in waiting if self.emu.member(h) is not None]
                    stamp = polled if len(hits) <= fresh else time.perf_counter()
                    carried = max(0, len(hits) - max(0, fresh))
                    with self.lock:
                        for h, t0 in hits:
                            self.latencies[h] = stamp - t0
                            self.waiting.pop(h, None)
                self.stopping.wait(max(0.0, self.interval - (time.perf_counter() - began)))
        except BaseException as exc:  # surfaced by the phase, never swallowed
            self.error = exc


def run_steady(bench: Bench, seconds: float, rate: float) -> SteadyResult:
    from worker.addresses import email_hash
    from worker.publish import enqueue_signup

    total = int(seconds * rate)
    wait_for(bench.idle, timeout=300, interval=0.5, what="the workers to finish the drain")
    say(f"steady: {total} signups at {rate:g}/s with enqueue_signup …")
    bench.emu.reset_counters()
    watcher = MemberWatcher(bench.emu, bench.members())
    watcher.start()
    prefix = f"bench-steady-{int(time.time())}"
    started = time.perf_counter()
    for n in range(total):
        delay = started + n / rate - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        address = email(prefix, n)
        enqueued_at = time.perf_counter()
        enqueue_signup(address, FORM, fields=FIELDS)
        watcher.add(email_hash(address), enqueued_at)
        if n % int(rate * 5) == 0:
            bench.sample_rss()
    try:
        wait_for(lambda: watcher.pending() == 0 or watcher.error is not None, timeout=60)
    except TimeoutError:
        say(f"steady: {watcher.pending()} signups never became members within 60 s")
    polled_for = time.perf_counter() - started
    watcher.stopping.set()
    watcher.join(10)
    if watcher.error is not None:
        raise watcher.error
    bench.sample_rss()
    calls = bench.calls()
    latencies = [v * 1000 for v in watcher.latencies.values()]
    if not latencies:
        raise RuntimeError("steady state: no signup became a member")
    return SteadyResult(
        rate=rate,
        seconds=seconds,
        enqueued=total,
        measured=len(latencies),
        missing=total - len(latencies),
        p50_ms=round(percentile(latencies, 0.50), 1),
        p99_ms=round(percentile(latencies, 0.99), 1),
        max_ms=round(max(latencies), 1),
        poll_period_ms=round(1000 * polled_for / max(1, watcher.polls), 1),
        calls=calls.total,
        calls_per_signup=round(calls.total / max(1, len(latencies)), 3),
        http_429=calls.http_429,
        limit_rejections=calls.limit_rejections,
        peak_in_flight=calls.peak_in_flight,
    )


# --- the run ------------------------------------------------------------------------------


@contextmanager
def log_directory(keep: Path | None) -> Iterator[Path]:
    if keep is not None:
        keep.mkdir(parents=True, exist_ok=True)
        yield keep
        return
    with tempfile.TemporaryDirectory(prefix="bench-sync-") as tmp:
        yield Path(tmp)


def run(args: argparse.Namespace) -> Report:
    from worker.cli.processes import emulator_audience
    from worker.emulator.process import EmulatorProcess

    specs: list[WorkerSpec] = args.worker or [WorkerSpec.parse(w) for w in DEFAULT_WORKERS]
    report = Report(
        command=" ".join([".venv/bin/python", "bench/sync.py", *sys.argv[1:]]),
        workers=[str(s) for s in specs],
        mailchimp_concurrency=args.mailchimp_concurrency,
        emulator={"latency_ms": args.latency_ms, "max_connections": args.max_connections},
        load_average_before=load_average(),
    )
    broker = redis.Redis.from_url(args.redis_url)
    broker.flushdb()  # our own DB (8 by default): stale messages would skew the drain
    rss = RssTracker()
    try:
        with log_directory(args.log_dir) as log_dir, pg_schema() as (db_url, schema):
            children = bench_children(log_dir)
            emu = EmulatorProcess()
            emu.create_list(**emulator_audience(), default=True)  # as config/forms.toml expects
            engine = create_engine(
                db_url, pool_size=2, connect_args={"application_name": "bench-sync-driver"}
            )
            try:
                emu.set_faults(latency_ms=args.latency_ms, max_connections=args.max_connections)
                listsync_env = {
                    "LISTSYNC_DATABASE_URL": db_url,
                    "LISTSYNC_BROKER_URL": args.redis_url,
                    "LISTSYNC_MAILCHIMP_API_KEY": emu.api_key,
                    "LISTSYNC_MAILCHIMP_BASE_URL": emu.base_url,
                    "LISTSYNC_MAILCHIMP_LIST_ID": emu.list_id,
                    "LISTSYNC_MAILCHIMP_CONCURRENCY": str(args.mailchimp_concurrency),
                }
                # This process publishes through worker.publish too: same settings, set before
                # anything reads them.
                os.environ.update(listsync_env)
                env = clean_env(**listsync_env)
                run_migrations(env)
                bench = Bench(emu, children, rss, broker, engine, env, specs, log_dir, schema)
                if args.floor_signups > 0:
                    report.floor = run_floor(bench, args.floor_signups, args.timeout)
                if args.signups > 0:
                    report.drain = run_drain(bench, args.signups, args.timeout, args.profile)
                    if args.profile > 0:
                        report.profile = summarize_profiles(log_dir)
                if args.steady_seconds > 0:
                    if not bench.workers:
                        bench.start_workers()
                        wait_for(bench.workers_ready, timeout=120, what="the workers")
                    report.steady = run_steady(bench, args.steady_seconds, args.steady_rate)
                if args.existing > 0:
                    if not bench.workers:
                        bench.start_workers()
                        wait_for(bench.workers_ready, timeout=120, what="the workers")
                    report.existing = run_existing(bench, args.existing, args.timeout)
                bench.stop_workers()
                if args.baseline_signups > 0:
                    say(f"baseline: {args.baseline_signups} signups …")
                    report.baseline = run_baseline(
                        emu,
                        children,
                        rss,
                        redis_url=args.redis_url,
                        signups=args.baseline_signups,
                        pool=args.baseline_pool,
                        concurrency=args.baseline_concurrency,
                    )
                if emu.pid is not None:
                    rss.sample("emulator", emu.pid)
            finally:
                children.stop_all()
                emu.stop()
                engine.dispose()
    finally:
        broker.flushdb()
        broker.close()
    rss.sample("bench driver", os.getpid())
    report.peak_rss = rss.rows()
    report.load_average_after = load_average()
    judge(report)
    return report


def judge(report: Report) -> None:
    drain, steady, base = report.drain, report.steady, report.baseline
    floor = report.floor
    report.drain_per_s = drain.signups_per_second if drain is not None else None
    report.floor_per_s = floor.signups_per_second if floor is not None else None
    report.baseline_per_s = base.signups_per_second if base is not None else None
    if drain is not None and base is not None and base.signups_per_second > 0:
        report.ratio = round(drain.signups_per_second / base.signups_per_second, 1)
    if drain is not None and floor is not None and floor.signups_per_second > 0:
        report.floor_ratio = round(drain.signups_per_second / floor.signups_per_second, 2)
        report.targets["drain >= 0.6 x no-op floor"] = (
            drain.complete and floor.complete and report.floor_ratio >= TARGETS["floor_ratio"]
        )
    if drain is not None:
        report.targets["<= 0.01 Mailchimp calls per signup (drain)"] = (
            drain.complete and drain.calls_per_signup <= TARGETS["calls_per_signup"]
        )
    if report.ratio is not None:
        report.targets[">= 10x baseline"] = report.ratio >= TARGETS["ratio"]
    if steady is not None:
        report.targets["p99 <= 1 s at 20/s"] = (
            steady.missing == 0 and steady.p99_ms <= TARGETS["p99_ms"]
        )
    workers = [r for r in report.peak_rss if str(r["process"]).startswith("worker")]
    if workers:
        report.targets["peak RSS <= 150 MiB per worker process"] = all(
            r["peak_rss_mib"] <= TARGETS["rss_mib"] for r in workers
        )
    ours = [r for r in (drain, steady) if r is not None]
    if ours:
        report.targets["zero 429s (listsync)"] = all(
            r.http_429 == 0 and r.limit_rejections == 0 for r in ours
        )


# --- existing members ---------------------------------------------------------------------


def run_existing(bench: Bench, signups: int, timeout: float) -> ExistingResult:
    """Seed `signups` members in the audience (as Mailchimp's own forms would have), then
    queue a signup for each and wait until every one is done."""
    from worker import publish

    prefix = f"bench-existing-{int(time.time())}"
    say(f"existing members: seeding {signups} in the emulator …")
    for n in range(signups):
        bench.emu.seed_member(email(prefix, n), "subscribed")
    done_before = bench.jobs_by_state().get("done", 0)
    bench.emu.reset_counters()
    started = time.perf_counter()
    prequeue(signups, prefix)
    deadline = started + timeout
    next_sweep = started
    while bench.jobs_by_state().get("done", 0) - done_before < signups:
        bench.check_workers()
        if time.perf_counter() > deadline:
            break
        if time.perf_counter() >= next_sweep:
            # What beat's sync sweep does: a flush that reached its time budget handed jobs
            # back for later, and only a sweep (or new signups) queues the flush for them.
            publish.FLUSH.request(force=True)
            next_sweep += 5
        time.sleep(0.2)
    seconds = time.perf_counter() - started
    calls = bench.calls()
    done = bench.jobs_by_state().get("done", 0) - done_before
    return ExistingResult(
        signups=signups,
        seconds=round(seconds, 3),
        calls=calls.total,
        calls_per_signup=round(calls.total / max(1, done), 3),
        calls_by_endpoint=calls.by_endpoint,
        jobs_by_state=bench.jobs_by_state(),
        complete=done >= signups,
    )


# --- output -------------------------------------------------------------------------------


def render(report: Report) -> str:
    lines = [
        f"command:           {report.command}",
        f"workers:           {', '.join(report.workers)}   "
        f"LISTSYNC_MAILCHIMP_CONCURRENCY={report.mailchimp_concurrency}",
        f"emulator:          {report.emulator['latency_ms']:g} ms per call, "
        f"{report.emulator['max_connections']} connections",
        "load average:      before "
        + " ".join(f"{x:.2f}" for x in report.load_average_before)
        + "   after "
        + " ".join(f"{x:.2f}" for x in report.load_average_after),
        "",
    ]
    row: Callable[[str, Any], str] = lambda name, value: f"  {name:34} {value}"  # noqa: E731
    if (f := report.floor) is not None:
        lines += [
            f"no-op floor: {f.signups:,} pre-queued signups, same layout (bench/floor.py)"
            + ("" if f.complete else " (INCOMPLETE)"),
            row("messages/s (first take -> all taken)", f"{f.signups_per_second:,.1f}"),
            row("time", f"{f.seconds:,.2f} s"),
            row("CPU ms per message", json.dumps(f.cpu_ms_per_signup, sort_keys=True)),
            "",
        ]
    if (d := report.drain) is not None:
        lines += [
            f"drain of {d.signups:,} pre-queued signups" + ("" if d.complete else " (INCOMPLETE)"),
            row("members/s (first take -> all members)", f"{d.signups_per_second:,.1f}"),
            row("time", f"{d.seconds:,.2f} s ({d.seconds_from_launch:,.2f} s from launch)"),
            row("submissions stored/s (DB)", f"{d.stored_per_second:,.1f} in {d.stored_seconds} s"),
            row("Mailchimp calls per signup", f"{d.calls_per_signup} ({d.calls} calls)"),
            row("calls by endpoint", json.dumps(d.calls_by_endpoint, sort_keys=True)),
            row("429s / limit rejections", f"{d.http_429} / {d.limit_rejections}"),
            row("peak calls in flight (emulator)", d.peak_in_flight),
            row("sync jobs by state", json.dumps(d.jobs_by_state, sort_keys=True)),
            row("CPU ms per signup", json.dumps(d.cpu_ms_per_signup, sort_keys=True)),
            row("CPU-bound ceiling on 2 idle cores", f"{d.cpu_bound_ceiling_2_cores:,.0f}/s"),
            row("pre-queue rate (not timed)", f"{d.enqueue_per_second:,.0f}/s"),
            "",
        ]
    if (s := report.steady) is not None:
        lines += [
            f"steady state: {s.rate:g} signups/s for {s.seconds:g} s (enqueue_signup -> member)",
            row("latency p50 / p99 / max", f"{s.p50_ms} / {s.p99_ms} / {s.max_ms} ms"),
            row("measured / missing", f"{s.measured} / {s.missing}"),
            row("observation poll period", f"{s.poll_period_ms} ms"),
            row("Mailchimp calls per signup", f"{s.calls_per_signup} ({s.calls} calls)"),
            row("429s / limit rejections", f"{s.http_429} / {s.limit_rejections}"),
            row("peak calls in flight (emulator)", s.peak_in_flight),
            "",
        ]
    if (e := report.existing) is not None:
        lines += [
            f"existing members: {e.signups:,} signups of people already in the audience"
            + ("" if e.complete else " (INCOMPLETE)"),
            row("time", f"{e.seconds:,.2f} s"),
            row("Mailchimp calls per signup", f"{e.calls_per_signup} ({e.calls} calls)"),
            row("calls by endpoint", json.dumps(e.calls_by_endpoint, sort_keys=True)),
            "",
        ]
    if (b := report.baseline) is not None:
        lines += [
            f"baseline: {b.signups:,} signups, one task each, {b.pool} pool x {b.concurrency}"
            + ("" if b.complete else " (INCOMPLETE)"),
            row("members/s", f"{b.signups_per_second:,.1f} in {b.seconds} s"),
            row("Mailchimp calls per signup", b.calls_per_signup),
            row("429s / limit rejections", f"{b.http_429} / {b.limit_rejections}"),
            row("peak calls in flight (emulator)", b.peak_in_flight),
            "",
        ]
    if report.floor_ratio is not None:
        lines += [f"drain / no-op floor: {report.floor_ratio}"]
    if report.ratio is not None:
        lines += [f"drain / naive baseline: {report.ratio}x"]
    lines.append("")
    lines.append("peak RSS (VmHWM)")
    for r in report.peak_rss:
        lines.append(f"  {r['process']:28} pid {r['pid']:>7}  {r['peak_rss_mib']:8.1f} MiB")
    if report.profile:
        lines += ["", "py-spy, inclusive share of samples during the drain"]
        for name, frames in report.profile.items():
            lines.append(f"  {name}")
            lines += [f"    {share:5.1f}%  {frame}" for frame, share in frames]
    lines += ["", "targets"]
    lines += [f"  {'met' if ok else 'MISSED':7} {name}" for name, ok in report.targets.items()]
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--signups", type=int, default=100_000, help="drain size (0: skip)")
    parser.add_argument(
        "--floor-signups",
        type=int,
        default=None,
        help="no-op floor drain size (default: --signups; 0: skip)",
    )
    parser.add_argument("--baseline-signups", type=int, default=3000, help="0: skip")
    parser.add_argument("--steady-seconds", type=float, default=30.0, help="0: skip")
    parser.add_argument("--steady-rate", type=float, default=20.0, help="signups per second")
    parser.add_argument(
        "--existing",
        type=int,
        default=300,
        help="signups of people already in the audience, for their calls per signup (0: skip)",
    )
    parser.add_argument(
        "--worker",
        type=WorkerSpec.parse,
        action="append",
        metavar="QUEUES:POOL:CONCURRENCY[:PREFETCH]",
        help=f"one Celery worker; repeat for several (default {' '.join(DEFAULT_WORKERS)})",
    )
    parser.add_argument("--mailchimp-concurrency", type=int, default=4, choices=range(1, 11))
    parser.add_argument("--baseline-pool", choices=["threads", "prefork"], default="threads")
    parser.add_argument("--baseline-concurrency", type=int, default=10)
    parser.add_argument("--latency-ms", type=float, default=100.0)
    parser.add_argument("--max-connections", type=int, default=10)
    parser.add_argument("--redis-url", default=DEFAULT_REDIS_URL)
    parser.add_argument("--timeout", type=float, default=1800.0, help="drain gives up after")
    parser.add_argument("--profile", type=float, default=0.0, metavar="SECONDS")
    parser.add_argument("--log-dir", type=Path, default=None, help="keep worker logs here")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    args = parser.parse_args(argv)
    if args.floor_signups is None:
        args.floor_signups = args.signups
    return args


def main() -> None:
    args = parse_args()
    report = run(args)
    if args.json:
        print(json.dumps(asdict(report), indent=2))
    else:
        print(render(report))


if __name__ == "__main__":
    main()
