"""Celery tasks for the outbox flush (worker/sync.py)."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from worker import sync
from worker.app import app


@app.task(name=sync.FLUSH_TASK)
def flush() -> dict[str, Any]:
    """Send due sync jobs to Mailchimp and record each outcome."""
    return asdict(sync.flush())


@app.task(name="listsync.sync.sweep")
def sweep() -> dict[str, Any]:
    """Rescue stuck jobs and queue a flush when jobs are due (beat, every 30 s)."""
    return asdict(sync.sweep())
