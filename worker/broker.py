"""A Redis client on the broker's Redis, for locks, flags and the Mailchimp call cap."""

from __future__ import annotations

import os
import threading

import redis

from config import get_settings

DEFAULT_BROKER_URL = "redis://127.0.0.1:6379/0"

_clients: dict[tuple[int, str], redis.Redis] = {}
_lock = threading.Lock()


def broker_url() -> str:
    return get_settings().broker_url or DEFAULT_BROKER_URL


def get_redis() -> redis.Redis:
    """One client (connection pool) per process and URL; short timeouts, never hangs."""
    key = (os.getpid(), broker_url())
    with _lock:
        client = _clients.get(key)
        if client is None:
            client = _clients[key] = redis.Redis.from_url(
                key[1], socket_connect_timeout=3, socket_timeout=5, health_check_interval=30
            )
        return client
