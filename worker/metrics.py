"""Counters shared by every process (workers, web workers), kept in Redis.

Prometheus' client keeps counters per process; our work happens in Celery pool processes and
several uvicorn workers, so each event is counted in a Redis hash instead and the web app's
`/metrics` collector reads them all at scrape time. Counting is best-effort: a Redis outage
must never fail the work being counted. Label values are never PII (reasons, outcomes, kinds).
"""

from __future__ import annotations

import json
import logging
import time
from functools import lru_cache

import redis

from worker import broker

log = logging.getLogger(__name__)

PREFIX = "listsync:metrics:"

#: Every counter and its help text; /metrics exposes exactly these.
COUNTERS: dict[str, str] = {
    "mailchimp_calls_total": "Mailchimp API calls by endpoint and outcome.",
    "sync_members_total": "Members flushed to Mailchimp by outcome.",
    "signups_received_total": "Signups received by channel and result.",
    "signups_republished_total": "Queued signups published again, by reason (database away).",
    "signups_parked_total": "Queued signups parked because they could not be stored, by error.",
    "signup_fields_dropped_total": "Form fields dropped because the form does not allow them.",
    "webhook_events_received_total": "Webhook events stored, by type.",
    "webhook_rejected_total": "Webhook calls refused, by reason.",
    "intake_rejected_total": "HTTP intake calls refused, by reason.",
    "reconcile_corrections_total": "Local contacts corrected by reconciliation (lost webhooks).",
    "purged_rows_total": "Rows deleted by the retention purge, by kind.",
}


#: Counters also kept in per-minute buckets, so `listsync status` can say "in the last hour".
RECENT: frozenset[str] = frozenset({"webhook_rejected_total", "intake_rejected_total"})
RECENT_BUCKET_SECONDS = 60
RECENT_KEEP_SECONDS = 2 * 3600


def _recent_key(name: str, bucket: int) -> str:
    return f"{PREFIX}recent:{name}:{bucket}"


@lru_cache(maxsize=4)
def _client(url: str) -> redis.Redis:
    return redis.Redis.from_url(url, socket_connect_timeout=1, socket_timeout=1)


def redis_url() -> str:
    return broker.redis_url()


def incr(name: str, amount: float = 1, **labels: str) -> None:
    """Add `amount` to counter `name` with these labels. Never raises."""
    if name not in COUNTERS:
        raise ValueError(f"unknown counter {name!r}")  # a programming error, not an outage
    field = json.dumps(labels, sort_keys=True)
    try:
        pipe = _client(redis_url()).pipeline(transaction=False)
        pipe.hincrbyfloat(PREFIX + name, field, amount)
        if name in RECENT:
            key = _recent_key(name, int(time.time()) // RECENT_BUCKET_SECONDS)
            pipe.hincrbyfloat(key, field, amount)
            pipe.expire(key, RECENT_KEEP_SECONDS)
        pipe.execute()
    except redis.RedisError:
        log.warning("metrics: could not count %s (Redis unavailable)", name)


def read_counters() -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    """All counters: name -> {sorted label pairs -> value}."""
    pipe = _client(redis_url()).pipeline(transaction=False)
    for name in COUNTERS:
        pipe.hgetall(PREFIX + name)
    out: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for name, raw in zip(COUNTERS, pipe.execute(), strict=True):
        series: dict[tuple[tuple[str, str], ...], float] = {}
        for field, value in raw.items():
            labels = json.loads(field)
            series[tuple(sorted(labels.items()))] = float(value)
        out[name] = series
    return out


def read_recent(name: str, seconds: int = 3600) -> dict[tuple[tuple[str, str], ...], float]:
    """Counter `name` (one of RECENT) summed over the last `seconds`, to the minute."""
    if name not in RECENT:
        raise ValueError(f"{name!r} is not kept per minute")
    now = int(time.time()) // RECENT_BUCKET_SECONDS
    buckets = range(now - seconds // RECENT_BUCKET_SECONDS + 1, now + 1)
    pipe = _client(redis_url()).pipeline(transaction=False)
    for bucket in buckets:
        pipe.hgetall(_recent_key(name, bucket))
    series: dict[tuple[tuple[str, str], ...], float] = {}
    for raw in pipe.execute():
        for field, value in raw.items():
            labels = tuple(sorted(json.loads(field).items()))
            series[labels] = series.get(labels, 0.0) + float(value)
    return series
