"""Celery settings for listsync, read by worker/app.py.

At-least-once delivery: a task is acknowledged only after it finished, a task whose worker
died is redelivered, and each worker holds one message at a time. Every task is idempotent,
so a redelivery is harmless. Only JSON crosses the broker.
"""

from __future__ import annotations

from celery.schedules import crontab
from kombu import Exchange, Queue

from config import get_settings
from config.settings import AMQP_SCHEMES

_settings = get_settings()

#: Redis redelivers a message unacked for this long (LISTSYNC_BROKER_VISIBILITY_TIMEOUT_SECONDS,
#: default 120 s): it bounds how long the messages a SIGKILLed worker held wait before they
#: come back. Every countdown we use is shorter (a signup published again waits at most half
#: of it; a retry backoff at most 60 s), and every task finishes well inside it: a flush stops
#: calling Mailchimp after 60 s, long purges and reconciliations continue in a follow-up
#: task. A task that did overrun would only run twice, and every task is idempotent.
VISIBILITY_TIMEOUT_SECONDS = _settings.broker_visibility_timeout_seconds
#: A task that can run long (the purge, reconciliation) stops after this much work and
#: queues its own continuation, so none holds its message near the visibility timeout.
TASK_TIME_BUDGET_SECONDS = 60.0
#: How often each worker looks for such messages (kombu's default works out at 100 s).
UNACKED_RESTORE_INTERVAL_SECONDS = 10

broker_url = _settings.broker_url or "redis://127.0.0.1:6379/0"
broker_connection_retry_on_startup = True
if broker_url.startswith(AMQP_SCHEMES):
    # RabbitMQ: durable queues (below), persistent messages, and publisher confirms, so a
    # publish returns only once the broker has taken the message (a refusal raises instead
    # of vanishing). A message a worker took stays unacknowledged on the broker until the
    # worker acknowledges it; a lost connection hands it back at once: no visibility timeout.
    broker_transport_options: dict[str, object] = {
        "confirm_publish": True,
        # Fail fast when RabbitMQ is away rather than hang a web request that enqueues.
        "connect_timeout": 5,
    }
else:
    broker_transport_options = {
        "visibility_timeout": VISIBILITY_TIMEOUT_SECONDS,
        "unacked_restore_interval": UNACKED_RESTORE_INTERVAL_SECONDS,
        "unacked_restore_throttle": 1,
        # Fail fast when Redis is away rather than hang a web request that enqueues.
        "socket_connect_timeout": 5,
        "socket_timeout": 10,
    }
# Written to disk by RabbitMQ (delivery_mode 2); the Redis transport ignores it.
task_default_delivery_mode = "persistent"

task_serializer = "json"
result_serializer = "json"
accept_content = ["json"]
task_ignore_result = True
result_backend = None

task_acks_late = True
task_reject_on_worker_lost = True
task_acks_on_failure_or_timeout = True
worker_prefetch_multiplier = 1
worker_concurrency = _settings.worker_concurrency
worker_cancel_long_running_tasks_on_connection_loss = True
# Soft shutdown (Celery >= 5.5): on a warm shutdown, running tasks get this long to finish.
worker_soft_shutdown_timeout = 10.0
worker_enable_soft_shutdown_on_idle = True

# Flower needs task events, including "sent" ones, to show every task.
worker_send_task_events = True
task_send_sent_event = True

worker_hijack_root_logger = False
worker_task_log_format = (
    "[%(asctime)s: %(levelname)s/%(processName)s] %(task_name)s[%(task_id)s]: %(message)s"
)

# Classic durable queues on RabbitMQ, not quorum queues: Celery turns global QoS off for
# quorum queues, and countdown/ETA messages (a signup published again, a retry) are held
# unacknowledged by the worker that took them, which needs the prefetch window celery-batches
# batches in (docs/reliability.md, "Brokers").
_default_exchange = Exchange("listsync", type="direct", durable=True)
task_queues = [
    Queue(name, _default_exchange, routing_key=name, durable=True)
    for name in ("signups", "sync", "optouts", "maintenance")
]
task_default_queue = "maintenance"
task_default_exchange = "listsync"
task_default_routing_key = "maintenance"
task_routes = {
    "listsync.signups.*": {"queue": "signups", "routing_key": "signups"},
    "listsync.sync.*": {"queue": "sync", "routing_key": "sync"},
    "listsync.optouts.*": {"queue": "optouts", "routing_key": "optouts"},
    "listsync.retention.*": {"queue": "maintenance", "routing_key": "maintenance"},
    "listsync.feeds.*": {"queue": "maintenance", "routing_key": "maintenance"},
}

imports = (
    "tasks.lifecycle",
    "tasks.signups",
    "tasks.sync",
    "tasks.optouts",
    "tasks.retention",
    "tasks.feeds",
)

timezone = "UTC"
enable_utc = True
beat_schedule = {
    "sync-sweep": {
        "task": "listsync.sync.sweep",
        "schedule": float(_settings.sync_sweep_seconds),
    },
    "optouts-sweep": {
        "task": "listsync.optouts.sweep",
        "schedule": 60.0,
    },
    "optouts-reconcile": {
        "task": "listsync.optouts.reconcile",
        "schedule": float(_settings.reconcile_interval_seconds),
    },
    "feeds-check": {
        "task": "listsync.feeds.check",
        "schedule": float(_settings.audience_check_seconds),
    },
    "retention-purge": {
        "task": "listsync.retention.purge",
        "schedule": crontab(hour=_settings.purge_hour_utc, minute=_settings.purge_minute_utc),
    },
}
