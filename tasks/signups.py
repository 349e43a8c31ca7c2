"""Celery tasks for signup intake (worker/signups/store.py).

`listsync.signups.receive` is a celery-batches task: the worker buffers up to
RECEIVE_BATCH messages (or RECEIVE_WAIT seconds) and stores them in one transaction, which
is what lets intake keep up with a burst. Each message is still one ordinary Celery message
that any client can publish. Messages are acked only after the batch was handled.
"""

from __future__ import annotations

import hashlib
import logging
from typing import Any

from celery_batches import SimpleRequest

from tasks.batching import ReconnectSafeBatches
from worker.app import app
from worker.publish import RECEIVE_TASK, REPUBLISH_DELAY, republish_signup
from worker.signups.store import receive_many

log = logging.getLogger(__name__)

RECEIVE_BATCH = 200
RECEIVE_WAIT = 0.05


@app.task(
    name=RECEIVE_TASK,
    base=ReconnectSafeBatches,
    flush_every=RECEIVE_BATCH,
    flush_interval=RECEIVE_WAIT,
    acks_late=True,
)
def receive_signups(requests: list[SimpleRequest]) -> None:
    """Store a batch of signup messages; invalid ones are recorded as rejected and acked.

    If the batch cannot be stored (database away, or a bug), each message is published
    again before this batch is acknowledged, so no signup is dropped.
    """
    messages = [_keyed(request) for request in requests]
    try:
        receive_many(messages, channel="queue")
    except Exception as exc:
        log.warning(
            "could not store %d signups (%s); publishing them again in %ds",
            len(messages),
            type(exc).__name__,
            REPUBLISH_DELAY,
        )
        for message in messages:
            republish_signup(message)


def _keyed(request: SimpleRequest) -> Any:
    """The message, with an idempotency key from the Celery task id when it has neither a
    key nor a submitted_at: a key derived from the time of receipt would differ on each
    redelivery. The republished copy carries it, so a retried message stays the same signup.
    """
    message = request.kwargs.get("message")
    unkeyed = isinstance(message, dict) and not message.get("idempotency_key")
    if unkeyed and not message.get("submitted_at") and request.id:
        # Hashed: a publisher's task id may hold characters a key may not.
        digest = hashlib.sha256(str(request.id).encode()).hexdigest()[:40]
        return {**message, "idempotency_key": f"celery:{digest}"}
    return message
