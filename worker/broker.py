"""The broker's URL, and a Redis client for Redis's other jobs: locks, flags, counters and the
Mailchimp call cap.

The queues run on the broker (RabbitMQ in production, or Redis); those other jobs always need
a Redis. With a Redis broker it is the same server unless LISTSYNC_REDIS_URL says otherwise;
with RabbitMQ, LISTSYNC_REDIS_URL is required (config/settings.py refuses to start without).
"""

from __future__ import annotations

import os
import threading

import redis

from config import get_settings
from config.settings import AMQP_SCHEMES

DEFAULT_BROKER_URL = "redis://127.0.0.1:6379/0"

_clients: dict[tuple[int, str], redis.Redis] = {}
_lock = threading.Lock()


def broker_url() -> str:
    return get_settings().broker_url or DEFAULT_BROKER_URL


def is_amqp(url: str) -> bool:
    """Whether `url` is RabbitMQ's (kombu's py-amqp transport) rather than Redis's."""
    return url.startswith(AMQP_SCHEMES)


def redis_url() -> str:
    """The Redis for everything but the queues."""
    settings = get_settings()
    if settings.redis_url:
        return settings.redis_url
    url = broker_url()
    if is_amqp(url):  # settings validation refuses this; kept for a hand-built Settings
        raise RuntimeError("LISTSYNC_REDIS_URL must be set when the broker is RabbitMQ")
    return url


def get_redis() -> redis.Redis:
    """One client (connection pool) per process and URL; short timeouts, never hangs."""
    key = (os.getpid(), redis_url())
    with _lock:
        client = _clients.get(key)
        if client is None:
            client = _clients[key] = redis.Redis.from_url(
                key[1], socket_connect_timeout=3, socket_timeout=5, health_check_interval=30
            )
        return client
