"""Counters shared by every process (workers, web workers), kept in Redis.

Prometheus' client keeps counters per process; our work happens in Celery pool processes and
several uvicorn workers, so each event is counted in a Redis hash instead and the web app's
`/metrics` collector reads them all at scrape time. Counting is best-effort: a Redis outage
must never fail the work being counted. Label values are never PII (reasons, outcomes, kinds).
"""

from __future__ import annotations

import json
import logging
from functools import lru_cache

import redis

from config import get_settings

log = logging.getLogger(__name__)

PREFIX = "listsync:metrics:"

#: Every counter and its help text; /metrics exposes exactly these.
COUNTERS: dict[str, str] = {
    "mailchimp_calls_total": "Mailchimp API calls by endpoint and outcome.",
    "sync_members_total": "Members flushed to Mailchimp by outcome.",
    "signups_received_total": "Signups received by channel and result.",
    "signup_fields_dropped_total": "Form fields dropped because the form does not allow them.",
    "webhook_events_received_total": "Webhook events stored, by type.",
    "webhook_rejected_total": "Webhook calls refused, by reason.",
    "intake_rejected_total": "HTTP intake calls refused, by reason.",
    "reconcile_corrections_total": "Local contacts corrected by reconciliation (lost webhooks).",
    "purged_rows_total": "Rows deleted by the retention purge, by kind.",
}


@lru_cache(maxsize=4)
def _client(url: str) -> redis.Redis:
    return redis.Redis.from_url(url, socket_connect_timeout=1, socket_timeout=1)


def redis_url() -> str:
    return get_settings().broker_url or "redis://127.0.0.1:6379/0"


def incr(name: str, amount: float = 1, **labels: str) -> None:
    """Add `amount` to counter `name` with these labels. Never raises."""
    if name not in COUNTERS:
        raise ValueError(f"unknown counter {name!r}")  # a programming error, not an outage
    field = json.dumps(labels, sort_keys=True)
    try:
        _client(redis_url()).hincrbyfloat(PREFIX + name, field, amount)
    except redis.RedisError:
        log.warning("metrics: could not count %s (Redis unavailable)", name)


def read_counters() -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    """All counters: name -> {sorted label pairs -> value}."""
    client = _client(redis_url())
    out: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for name in COUNTERS:
        raw = client.hgetall(PREFIX + name)
        series: dict[tuple[tuple[str, str], ...], float] = {}
        for field, value in raw.items():
            labels = json.loads(field)
            series[tuple(sorted(labels.items()))] = float(value)
        out[name] = series
    return out
