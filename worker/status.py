"""The operational facts as plain data: queues, the outbox, last runs, rejects, the call cap.

`listsync status` prints them and `/metrics` exposes them; each fact is one aggregate query
or one Redis round-trip, never a per-row read. A scrape must stay cheap however large the
tables grow, so no query reads a whole table: rows still moving (pending, in flight, failed
jobs; pending events) are counted exactly through the index that leads with their state, and
the settled ones (done and suppressed jobs, applied and ignored events: most of each table,
kept for weeks) are counted at most once per SETTLED_COUNT_SECONDS in each process.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Collection
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache
from typing import Any

import redis
from sqlalchemy import func, select
from sqlalchemy.orm import InstrumentedAttribute, Session

from config import get_settings
from worker import broker, metrics
from worker.feeds.check import held_forms
from worker.models import (
    AudienceCheck,
    EventState,
    JobState,
    ParkedSignup,
    PurgeRun,
    SyncJob,
    Watermark,
    WebhookEvent,
    utcnow,
)

log = logging.getLogger(__name__)

#: The broker keeps each queue as a Redis list named after it (celeryconfig.task_queues).
QUEUES = ("signups", "sync", "optouts", "maintenance")
#: kombu stores prioritised messages in sibling lists "<queue>\x06\x16<priority>".
_PRIORITY_SUFFIXES = ("", "\x06\x163", "\x06\x166", "\x06\x169")
#: kombu's hash of messages delivered to a worker and not yet acknowledged.
UNACKED_KEY = "unacked"

#: Watermark rows the reconcile and purge owners write after each successful run.
RUNS = {"reconcile": "reconcile_success", "purge": "purge_success"}

#: States whose rows settle for good and pile up until the purge: counted from a cache.
SETTLED_JOB_STATES = (JobState.DONE, JobState.SUPPRESSED)
SETTLED_EVENT_STATES = (EventState.APPLIED, EventState.IGNORED)
#: How old the counts of settled rows may be on a scrape. Counting them reads every one of
#: them, which the outbox's and the inbox's weeks of history make slow; they only grow.
SETTLED_COUNT_SECONDS = 300.0

TOP_REASONS = 5
_REASON_WIDTH = 120


class AmqpBroker:
    """RabbitMQ seen from a client: queue depths through passive `queue_declare` (the
    management plugin is not needed). A connection per call, with short timeouts: a probe or
    a scrape must not hang on a dead broker, and must not hold a connection open for good."""

    def __init__(self, url: str) -> None:
        self.url = url

    def _connection(self) -> Any:
        from kombu import Connection

        return Connection(self.url, connect_timeout=2, transport_options={"read_timeout": 2})

    def ping(self) -> bool:
        with self._connection() as conn:
            conn.ensure_connection(max_retries=1, timeout=2)
        return True

    def message_counts(self, queues: Collection[str]) -> dict[str, int]:
        """Ready messages in each queue (0 for a queue not declared yet)."""
        from amqp.exceptions import NotFound

        counts: dict[str, int] = {}
        with self._connection() as conn:
            channel = conn.channel()
            for queue in queues:
                try:
                    counts[queue] = int(channel.queue_declare(queue=queue, passive=True)[1])
                except NotFound:  # a passive declare of a missing queue closes the channel
                    counts[queue] = 0
                    channel = conn.channel()
        return counts


BrokerClient = redis.Redis | AmqpBroker


def broker_client() -> BrokerClient:
    """A client for the configured broker, with short timeouts: a probe or a scrape must not
    hang on a dead broker."""
    url = broker.broker_url()
    if broker.is_amqp(url):
        return AmqpBroker(url)
    return _client_for(url)


@lru_cache(maxsize=4)
def _client_for(url: str) -> redis.Redis:
    return redis.Redis.from_url(url, socket_connect_timeout=2, socket_timeout=2)


# --- the database ------------------------------------------------------------------------


class _SettledCounts:
    """Per-process cache of the settled rows' counts, by table."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: dict[str, tuple[float, dict[str, int]]] = {}

    def get(
        self,
        session: Session,
        column: InstrumentedAttribute[str],
        states: Collection[str],
        max_age: float,
    ) -> dict[str, int]:
        key = str(column)
        with self._lock:
            cached = self._counts.get(key)
        if cached is not None and time.monotonic() - cached[0] < max_age:
            return cached[1]
        counts = _count_by_state(session, column, states)
        with self._lock:
            self._counts[key] = (time.monotonic(), counts)
        return counts

    def clear(self) -> None:
        with self._lock:
            self._counts.clear()


settled_counts = _SettledCounts()


def _count_by_state(
    session: Session, column: InstrumentedAttribute[str], states: Collection[str]
) -> dict[str, int]:
    rows = session.execute(
        select(column, func.count()).where(column.in_(list(states))).group_by(column)
    )
    return {str(state): int(count) for state, count in rows}


def job_counts(session: Session, max_age: float = SETTLED_COUNT_SECONDS) -> dict[str, int]:
    """Sync jobs by state, every state present (zero when none); done and suppressed as of
    at most max_age seconds ago (0: now)."""
    counts = {state.value: 0 for state in JobState}
    live = [state for state in JobState if state not in SETTLED_JOB_STATES]
    counts.update(_count_by_state(session, SyncJob.state, live))
    counts.update(settled_counts.get(session, SyncJob.state, SETTLED_JOB_STATES, max_age))
    return counts


def oldest_pending(session: Session) -> datetime | None:
    """When the oldest job still waiting to be sent was created."""
    return session.scalar(
        select(func.min(SyncJob.created_at)).where(SyncJob.state == JobState.PENDING)
    )


def failed_by_outcome(session: Session) -> dict[str, int]:
    """Failed jobs by their short outcome code (a bounded set: fit for a metric label)."""
    rows = session.execute(
        select(SyncJob.outcome, func.count())
        .where(SyncJob.state == JobState.FAILED)
        .group_by(SyncJob.outcome)
    )
    return {str(outcome or "unknown"): int(count) for outcome, count in rows}


def failed_reasons(session: Session, limit: int = TOP_REASONS) -> list[tuple[str, int]]:
    """The commonest reasons jobs failed (outcome and last error; neither holds PII)."""
    count = func.count().label("n")
    rows = session.execute(
        select(SyncJob.outcome, SyncJob.last_error, count)
        .where(SyncJob.state == JobState.FAILED)
        .group_by(SyncJob.outcome, SyncJob.last_error)
        .order_by(count.desc())
        .limit(limit)
    )
    reasons = []
    for outcome, last_error, n in rows:
        text = " — ".join(part for part in (outcome, last_error) if part) or "unknown"
        if len(text) > _REASON_WIDTH:
            text = text[: _REASON_WIDTH - 1] + "…"
        reasons.append((text, int(n)))
    return reasons


def parked_count(session: Session) -> int:
    """Queued signups parked because they could not be stored (`listsync failed list`)."""
    return int(session.scalar(select(func.count()).select_from(ParkedSignup)) or 0)


def forms_check(session: Session) -> dict[str, Any]:
    """The last check of the forms against the audience: when, why it failed (if it did),
    and the forms whose sync waits, with the code of their first problem."""
    row = session.get(AudienceCheck, AudienceCheck.SINGLE_ROW)
    if row is None or row.list_id != get_settings().mailchimp_list_id:
        return {"checked_at": None, "error": None, "waiting": {}}
    return {"checked_at": row.checked_at, "error": row.error, "waiting": held_forms(row.problems)}


def inbox_counts(session: Session, max_age: float = SETTLED_COUNT_SECONDS) -> dict[str, int]:
    """Stored webhook events by state (the inbox); applied and ignored as of at most max_age
    seconds ago (0: now)."""
    counts = {state.value: 0 for state in EventState}
    live = [state for state in EventState if state not in SETTLED_EVENT_STATES]
    counts.update(_count_by_state(session, WebhookEvent.state, live))
    counts.update(settled_counts.get(session, WebhookEvent.state, SETTLED_EVENT_STATES, max_age))
    return counts


def last_successes(session: Session) -> dict[str, datetime | None]:
    """When reconcile and purge last succeeded, from their watermarks.

    For the purge, the audit table counts too (a finished real run without an error), so a
    purge that ran before its watermark was first written is not reported as never run.
    """
    marks = dict(
        session.execute(
            select(Watermark.name, Watermark.value).where(Watermark.name.in_(RUNS.values()))
        ).all()
    )
    out: dict[str, datetime | None] = {job: marks.get(name) for job, name in RUNS.items()}
    audited = session.scalar(
        select(func.max(PurgeRun.finished_at)).where(
            PurgeRun.dry_run.is_(False), PurgeRun.error.is_(None)
        )
    )
    if audited is not None and (out["purge"] is None or audited > out["purge"]):
        out["purge"] = audited
    return out


def last_purge_counts(session: Session) -> dict[str, Any]:
    """Rows deleted by kind in the last successful real purge (empty if none yet)."""
    run = session.scalars(
        select(PurgeRun)
        .where(PurgeRun.dry_run.is_(False), PurgeRun.error.is_(None))
        .where(PurgeRun.finished_at.is_not(None))
        .order_by(PurgeRun.finished_at.desc())
        .limit(1)
    ).first()
    return dict(run.counts) if run is not None else {}


# --- the broker --------------------------------------------------------------------------


def queue_lengths(client: BrokerClient) -> dict[str, int]:
    """Messages waiting in each queue (Redis: LLEN, priorities included; RabbitMQ: the ready
    messages of a passive declare)."""
    if isinstance(client, AmqpBroker):
        return client.message_counts(QUEUES)
    pipe = client.pipeline(transaction=False)
    for queue in QUEUES:
        for suffix in _PRIORITY_SUFFIXES:
            pipe.llen(queue + suffix)
    lengths = iter(pipe.execute())
    return {queue: sum(int(next(lengths)) for _ in _PRIORITY_SUFFIXES) for queue in QUEUES}


def unacked_messages(client: BrokerClient) -> int | None:
    """Messages a worker has taken and not yet acknowledged (running or reserved); None on
    RabbitMQ, which tells that only through its management API."""
    if isinstance(client, AmqpBroker):
        return None
    return int(client.hlen(UNACKED_KEY))


def mailchimp_in_flight() -> int:
    """Mailchimp calls holding a slot of the global cap right now (the gateway's semaphore)."""
    from worker.mailchimp import calls_in_flight

    return calls_in_flight()


def recent_rejects(name: str, seconds: int = 3600) -> dict[str, int]:
    """Refused webhook or intake calls in the last `seconds`, by reason."""
    out: dict[str, int] = {}
    for labels, value in metrics.read_recent(name, seconds).items():
        reason = dict(labels).get("reason", "unknown")
        out[reason] = out.get(reason, 0) + int(value)
    return dict(sorted(out.items(), key=lambda item: (-item[1], item[0])))


# --- the whole picture -------------------------------------------------------------------


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def _age(now: datetime, value: datetime | None) -> float | None:
    return round((now - value).total_seconds(), 3) if value is not None else None


@dataclass
class Status:
    """Everything `listsync status` shows, as plain data."""

    generated_at: datetime
    queues: dict[str, int]
    unacked: int | None
    jobs: dict[str, int]
    oldest_pending_at: datetime | None
    failed_reasons: list[tuple[str, int]]
    last_success: dict[str, datetime | None]
    last_purge_counts: dict[str, Any]
    webhook_rejects_last_hour: dict[str, int]
    intake_rejects_last_hour: dict[str, int]
    mailchimp_in_flight: int
    mailchimp_cap: int
    parked: int = 0
    forms: dict[str, Any] | None = None

    @property
    def failed(self) -> int:
        return self.jobs.get(JobState.FAILED.value, 0)

    def age(self, value: datetime | None) -> float | None:
        return _age(self.generated_at, value)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: timestamps in ISO 8601 with ages in seconds beside them."""
        return {
            "generated_at": _iso(self.generated_at),
            "queues": self.queues,
            "unacked_messages": self.unacked,
            "sync_jobs": self.jobs,
            "oldest_pending": {
                "created_at": _iso(self.oldest_pending_at),
                "age_seconds": self.age(self.oldest_pending_at),
            },
            "failed": {
                "count": self.failed,
                "top_reasons": [{"reason": r, "count": n} for r, n in self.failed_reasons],
            },
            "last_success": {
                job: {"at": _iso(at), "age_seconds": self.age(at)}
                for job, at in self.last_success.items()
            },
            "last_purge_counts": self.last_purge_counts,
            "webhook_rejects_last_hour": self.webhook_rejects_last_hour,
            "intake_rejects_last_hour": self.intake_rejects_last_hour,
            "mailchimp": {"in_flight": self.mailchimp_in_flight, "cap": self.mailchimp_cap},
            "parked_signups": self.parked,
            "forms_check": {
                "checked_at": _iso((self.forms or {}).get("checked_at")),
                "error": (self.forms or {}).get("error"),
                "waiting": (self.forms or {}).get("waiting", {}),
            },
        }


def gather_status(session: Session, client: BrokerClient) -> Status:
    """Collect every fact, exact; raises if the database or the broker is unreachable."""
    jobs = job_counts(session, max_age=0)
    return Status(
        generated_at=utcnow(),
        queues=queue_lengths(client),
        unacked=unacked_messages(client),
        jobs=jobs,
        oldest_pending_at=oldest_pending(session),
        failed_reasons=failed_reasons(session),
        last_success=last_successes(session),
        last_purge_counts=last_purge_counts(session),
        webhook_rejects_last_hour=recent_rejects("webhook_rejected_total"),
        intake_rejects_last_hour=recent_rejects("intake_rejected_total"),
        mailchimp_in_flight=mailchimp_in_flight(),
        mailchimp_cap=get_settings().mailchimp_concurrency,
        parked=parked_count(session),
        forms=forms_check(session),
    )
