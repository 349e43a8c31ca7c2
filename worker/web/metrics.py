"""GET /metrics: Prometheus exposition of listsync's counters and gauges, read at scrape time.

Nothing is kept in this process: counters come from Redis (every worker and web process adds
to them there) and gauges from a handful of aggregate queries, so any uvicorn worker answers
the same. A source that cannot be read is reported by `listsync_scrape_error{source}`, and the
rest of the scrape still succeeds. Label values are states, reasons and kinds: never PII.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Iterator

from fastapi import APIRouter, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from config import get_settings
from worker import metrics, status
from worker.db import session_scope
from worker.models import utcnow

log = logging.getLogger(__name__)

router = APIRouter(tags=["metrics"])

NAMESPACE = "listsync_"
_LABEL_NAME = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")


def _counter_families() -> Iterator[Metric]:
    for name, series in metrics.read_counters().items():
        label_names = sorted(
            {key for labels in series for key, _ in labels if _LABEL_NAME.match(key)}
        )
        family = CounterMetricFamily(NAMESPACE + name, metrics.COUNTERS[name], labels=label_names)
        for labels, value in sorted(series.items()):
            given = dict(labels)
            family.add_metric([str(given.get(key, "")) for key in label_names], value)
        yield family


def _database_families() -> Iterator[Metric]:
    now = utcnow()
    with session_scope() as session:
        jobs = status.job_counts(session)
        oldest = status.oldest_pending(session)
        failed = status.failed_by_outcome(session)
        inbox = status.inbox_counts(session)
        runs = status.last_successes(session)
        parked = status.parked_count(session)
        forms = status.forms_check(session)

    family = GaugeMetricFamily(
        NAMESPACE + "sync_jobs", "Sync jobs (the outbox) by state.", labels=["state"]
    )
    for state, count in jobs.items():
        family.add_metric([state], count)
    yield family

    yield GaugeMetricFamily(
        NAMESPACE + "sync_oldest_pending_age_seconds",
        "Age of the oldest pending sync job (0 when none is pending).",
        value=max(0.0, (now - oldest).total_seconds()) if oldest is not None else 0.0,
    )

    family = GaugeMetricFamily(
        NAMESPACE + "sync_failed_jobs",
        "Sync jobs in the failed state, by outcome code.",
        labels=["outcome"],
    )
    for outcome, count in sorted(failed.items()):
        family.add_metric([outcome], count)
    yield family

    family = GaugeMetricFamily(
        NAMESPACE + "webhook_inbox_events",
        "Stored webhook events (the inbox) by state.",
        labels=["state"],
    )
    for state, count in inbox.items():
        family.add_metric([state], count)
    yield family

    stamp = GaugeMetricFamily(
        NAMESPACE + "last_success_timestamp_seconds",
        "Unix time of the last successful run, by job (absent if it never succeeded).",
        labels=["job"],
    )
    since = GaugeMetricFamily(
        NAMESPACE + "seconds_since_last_success",
        "Seconds since the last successful run, by job (+Inf if it never succeeded).",
        labels=["job"],
    )
    for job, at in sorted(runs.items()):
        if at is None:
            since.add_metric([job], math.inf)
        else:
            stamp.add_metric([job], at.timestamp())
            since.add_metric([job], max(0.0, (now - at).total_seconds()))
    yield stamp
    yield since

    yield GaugeMetricFamily(
        NAMESPACE + "parked_signups",
        "Queued signups parked because they could not be stored (listsync failed list).",
        value=parked,
    )
    family = GaugeMetricFamily(
        NAMESPACE + "forms_waiting",
        "1 for each form whose sync waits: its feed disagrees with the audience (listsync check).",
        labels=["form", "code"],
    )
    for form, code in sorted(forms["waiting"].items()):
        family.add_metric([form, code], 1)
    yield family
    checked = forms["checked_at"]
    yield GaugeMetricFamily(
        NAMESPACE + "forms_check_age_seconds",
        "Seconds since the forms were last checked against the audience (+Inf: never).",
        value=max(0.0, (now - checked).total_seconds()) if checked is not None else math.inf,
    )


def _broker_families() -> Iterator[Metric]:
    client = status.broker_client()
    lengths = status.queue_lengths(client)
    unacked = status.unacked_messages(client)
    in_flight = status.mailchimp_in_flight()

    family = GaugeMetricFamily(
        NAMESPACE + "queue_messages", "Messages waiting in each broker queue.", labels=["queue"]
    )
    for queue, length in lengths.items():
        family.add_metric([queue], length)
    yield family
    if unacked is not None:  # RabbitMQ tells it only through its management API
        yield GaugeMetricFamily(
            NAMESPACE + "queue_unacked_messages",
            "Messages taken by a worker and not yet acknowledged.",
            value=unacked,
        )
    yield GaugeMetricFamily(
        NAMESPACE + "mailchimp_calls_in_flight",
        "Mailchimp calls holding a slot of the global concurrency cap right now.",
        value=in_flight,
    )


class ListsyncCollector(Collector):
    """Reads every source at scrape time; one failing source does not hide the others."""

    SOURCES = (
        ("counters", _counter_families),
        ("database", _database_families),
        ("broker", _broker_families),
    )

    def collect(self) -> Iterator[Metric]:
        errors = GaugeMetricFamily(
            NAMESPACE + "scrape_error",
            "1 when this source could not be read during the scrape.",
            labels=["source"],
        )
        for source, families in self.SOURCES:
            try:
                # Materialised first, so a failure halfway never yields half a source.
                collected = list(families())
            except Exception as exc:
                # The class name only: driver messages can carry hosts and credentials.
                log.warning("metrics: could not read %s (%s)", source, type(exc).__name__)
                errors.add_metric([source], 1)
                continue
            errors.add_metric([source], 0)
            yield from collected
        yield errors
        yield GaugeMetricFamily(
            NAMESPACE + "mailchimp_concurrency_cap",
            "The configured cap on simultaneous Mailchimp calls.",
            value=get_settings().mailchimp_concurrency,
        )


registry = CollectorRegistry(auto_describe=False)
registry.register(ListsyncCollector())


@router.get("/metrics", response_class=Response)
def prometheus_metrics() -> Response:
    """Prometheus text exposition (scraped; cheap: a few aggregate queries)."""
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)
