"""Celery tasks for the outbox flush (worker/signups/flush.py)."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from worker.app import app
from worker.publish import FLUSH_TASK, SYNC_SWEEP_TASK
from worker.signups import flush as outbox


@app.task(name=FLUSH_TASK)
def flush() -> dict[str, Any]:
    """Send due sync jobs to Mailchimp and record each outcome."""
    return asdict(outbox.flush())


@app.task(name=SYNC_SWEEP_TASK)
def sweep() -> dict[str, Any]:
    """Rescue stuck jobs and queue a flush when jobs are due (beat, every 30 s)."""
    return asdict(outbox.sweep())
