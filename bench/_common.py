"""Shared helpers of the benchmarks: child processes, a throwaway PostgreSQL schema, CPU and
peak RSS of process trees, emulator counter sums."""

from __future__ import annotations

import base64
import contextlib
import json
import math
import os
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
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from worker.supervise import Children, cpu_seconds, descendants, peak_rss_kib  # noqa: E402

PG_ADMIN_URL = os.environ.get(
    "LISTSYNC_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/8"
#: Synthetic addresses on a domain the emulator does not treat as fake (example.com is).
EMAIL_DOMAIN = "bench.listsync.org"


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


# --- messages as any producer builds them ----------------------------------------------------


def raw_task_message(task: str, args: Any, kwargs: Any, routing_key: str = "signups") -> str:
    """A Celery message (protocol 2) for kombu's Redis transport, built by hand as a producer
    in another language would, with any arguments at all: what `LPUSH <queue>` takes."""
    task_id = str(uuid.uuid4())
    body = json.dumps([args, kwargs, {}]).encode()
    return json.dumps(
        {
            "body": base64.b64encode(body).decode(),
            "content-encoding": "utf-8",
            "content-type": "application/json",
            "headers": {"lang": "py", "task": task, "id": task_id, "root_id": task_id},
            "properties": {
                "correlation_id": task_id,
                "delivery_mode": 2,
                "delivery_info": {"exchange": "", "routing_key": routing_key},
                "priority": 0,
                "body_encoding": "base64",
                "delivery_tag": str(uuid.uuid4()),
            },
        }
    )


def publish_raw_amqp(url: str, task: str, args: Any, kwargs: Any, queue: str = "signups") -> None:
    """The same hand-built message published to RabbitMQ: the body is [args, kwargs, embed],
    the Celery headers are AMQP headers, persistent, to exchange `listsync` with the queue's
    name as routing key, confirmed by the broker before this returns."""
    from kombu import Connection

    task_id = str(uuid.uuid4())
    with Connection(url, connect_timeout=5, transport_options={"confirm_publish": True}) as conn:
        channel = conn.default_channel
        channel.basic_publish(
            channel.prepare_message(
                json.dumps([args, kwargs, {}]),
                content_type="application/json",
                content_encoding="utf-8",
                headers={"lang": "py", "task": task, "id": task_id, "root_id": task_id},
                properties={"delivery_mode": 2, "correlation_id": task_id},
            ),
            exchange="listsync",
            routing_key=queue,
        )


# --- child processes ----------------------------------------------------------------------


def children(log_dir: Path) -> Children:
    """The benchmark's children: each logs to its own file in `log_dir` and leads its own
    process group (a Celery prefork worker and its pool), run from the project's root."""
    return Children(log_dir, own_groups=True, cwd=ROOT)


def wait_for(predicate: Any, timeout: float, interval: float = 0.05, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what or predicate}")
        time.sleep(interval)


# --- peak RSS -----------------------------------------------------------------------------


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
            kib = peak_rss_kib(p)
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
