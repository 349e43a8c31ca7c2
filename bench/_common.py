"""Shared helpers of the sync benchmarks (bench/sync.py, bench/baseline_sync.py): child
processes, a throwaway PostgreSQL schema, peak RSS from /proc, emulator counter sums."""

from __future__ import annotations

import contextlib
import ctypes
import math
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, text

ROOT = Path(__file__).resolve().parent.parent
PG_ADMIN_URL = os.environ.get(
    "LISTSYNC_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/8"
#: Synthetic addresses on a domain the emulator does not treat as fake (example.com is).
EMAIL_DOMAIN = "bench.listsync.org"
_PR_SET_PDEATHSIG = 1


def email(prefix: str, n: int) -> str:
    return f"{prefix}-{n:06d}@{EMAIL_DOMAIN}"


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..1) of a non-empty sequence."""
    ordered = sorted(values)
    rank = max(1, math.ceil(q * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


def load_average() -> tuple[float, float, float]:
    return os.getloadavg()


# --- PostgreSQL ---------------------------------------------------------------------------


@contextlib.contextmanager
def pg_schema(prefix: str = "bench_sync_", keep: bool = False) -> Iterator[tuple[str, str]]:
    """A fresh schema in the test database, dropped (CASCADE) after unless `keep`. Yields its
    URL and its name, which is also the connections' application_name (to find backends)."""
    schema = prefix + uuid.uuid4().hex[:10]
    admin = create_engine(PG_ADMIN_URL)
    try:
        with admin.begin() as conn:
            conn.execute(text(f'CREATE SCHEMA "{schema}"'))
        try:
            yield (
                f"{PG_ADMIN_URL}?options=-csearch_path%3D{schema}&application_name={schema}",
                schema,
            )
        finally:
            if keep:
                print(f"kept schema {schema}", file=sys.stderr)
            else:
                with admin.begin() as conn:
                    conn.execute(text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
    finally:
        admin.dispose()


def run_migrations(env: Mapping[str, str]) -> None:
    """`python -m worker.cli db upgrade`, as a deployment does."""
    subprocess.run(
        [sys.executable, "-m", "worker.cli", "db", "upgrade"],
        env=dict(env),
        cwd=ROOT,
        check=True,
        stdout=subprocess.DEVNULL,
    )


def clean_env(**overrides: str) -> dict[str, str]:
    """This process's environment without any LISTSYNC_ setting, plus `overrides`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("LISTSYNC_")}
    env.update(overrides)
    return env


# --- child processes ----------------------------------------------------------------------


def _die_with_parent() -> None:  # pragma: no cover - runs in the child before exec
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


@dataclass
class Child:
    name: str
    proc: subprocess.Popen[bytes]
    log: Path

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None


class Children:
    """Processes this benchmark started. Each leads its own process group (a Celery prefork
    worker and its pool), so `stop` can end exactly that group, by its id."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.started: list[Child] = []

    def start(self, name: str, argv: Sequence[str], env: Mapping[str, str]) -> Child:
        log = self.log_dir / f"{name}.log"
        with log.open("wb") as out:
            proc = subprocess.Popen(
                list(argv),
                env=dict(env),
                cwd=ROOT,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=_die_with_parent,
            )
        child = Child(name, proc, log)
        self.started.append(child)
        return child

    def stop(self, child: Child, timeout: float = 20.0) -> None:
        """SIGTERM (Celery's warm shutdown), then SIGKILL to the child's own group."""
        if child.alive():
            child.proc.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                child.proc.wait(timeout)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(child.pid, signal.SIGKILL)  # pool processes left behind, if any
        if child.alive():
            child.proc.kill()
        child.proc.wait()

    def stop_all(self) -> None:
        for child in reversed(self.started):
            self.stop(child)


def wait_for(predicate: Any, timeout: float, interval: float = 0.05, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what or predicate}")
        time.sleep(interval)


# --- peak RSS -----------------------------------------------------------------------------


def vm_hwm_kib(pid: int | str = "self") -> int | None:
    """The process's peak resident set size (VmHWM) in KiB, or None if it is gone."""
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    return None


def descendants(root: int) -> list[int]:
    """Every live descendant of `root` (scans /proc once)."""
    parents: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as stat:
                ppid = int(stat.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        parents.setdefault(ppid, []).append(int(entry))
    found: list[int] = []
    todo = [root]
    while todo:
        for child in parents.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU the process has used so far (its own, not its children's)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    return (int(fields[11]) + int(fields[12])) / _TICKS  # utime, stime


@dataclass
class CpuMeter:
    """CPU used by groups of processes between `start` and `stop`; a process that appears
    in between counts from zero, one that exits early counts up to its last reading."""

    first: dict[int, float] = field(default_factory=dict)
    last: dict[int, float] = field(default_factory=dict)
    group: dict[int, str] = field(default_factory=dict)

    def read(self, pids: dict[int, str], *, start: bool = False) -> None:
        for pid, name in pids.items():
            used = cpu_seconds(pid)
            if used is None:
                continue
            self.group[pid] = name
            if start:
                self.first.setdefault(pid, used)
            self.last[pid] = used

    def used(self) -> dict[str, float]:
        totals: dict[str, float] = {}
        for pid, name in self.group.items():
            spent = self.last.get(pid, 0.0) - self.first.get(pid, 0.0)
            totals[name] = totals.get(name, 0.0) + spent
        return totals


@dataclass
class RssTracker:
    """The highest VmHWM seen per (role, pid); sample often, before processes exit."""

    peaks: dict[tuple[str, int], int] = field(default_factory=dict)

    def sample(self, role: str, pid: int, *, with_children: bool = False) -> None:
        pids = [(role, pid)]
        if with_children:
            pids += [(f"{role} pool child", p) for p in descendants(pid)]
        for name, p in pids:
            kib = vm_hwm_kib(p)
            if kib is not None:
                self.peaks[(name, p)] = max(kib, self.peaks.get((name, p), 0))

    def rows(self) -> list[dict[str, Any]]:
        return [
            {"process": role, "pid": pid, "peak_rss_mib": round(kib / 1024, 1)}
            for (role, pid), kib in self.peaks.items()
        ]


# --- emulator counters --------------------------------------------------------------------


def subscribed(counters: Mapping[str, Any], list_id: str) -> int:
    return int(counters["members"].get(list_id, {}).get("subscribed", 0))


@dataclass(frozen=True)
class CallSummary:
    """API calls the emulator answered (admin routes are never counted)."""

    total: int
    by_endpoint: dict[str, dict[str, int]]
    http_429: int
    limit_rejections: int
    peak_in_flight: int

    @classmethod
    def of(cls, counters: Mapping[str, Any]) -> CallSummary:
        calls: dict[str, dict[str, int]] = counters["calls"]
        return cls(
            total=sum(sum(statuses.values()) for statuses in calls.values()),
            by_endpoint=calls,
            http_429=sum(statuses.get("429", 0) for statuses in calls.values()),
            limit_rejections=int(counters["limit_rejections"]),
            peak_in_flight=int(counters["peak_in_flight"]),
        )
