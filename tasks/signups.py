"""Celery tasks for signup intake (worker/intake.py)."""

from __future__ import annotations

from typing import Any

from worker.app import app
from worker.intake import RECEIVE_TASK, SignupRejected, receive


@app.task(
    name=RECEIVE_TASK,
    autoretry_for=(Exception,),
    dont_autoretry_for=(SignupRejected,),
    retry_backoff=2,
    retry_backoff_max=300,
    max_retries=None,
)
def receive_signup(message: dict[str, Any]) -> dict[str, Any]:
    """Store one signup message. Invalid ones are recorded as rejected and acked.

    Any other failure (database away, a bug) is retried with backoff, never dropped.
    """
    try:
        result = receive(message, channel="queue")
    except SignupRejected:
        return {"rejected": True}
    return {"submission_id": result.submission_id, "created": result.created}
