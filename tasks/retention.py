"""Celery tasks for retention (worker/retention/): the scheduled purge."""

from __future__ import annotations

from typing import Any

from celeryconfig import TASK_TIME_BUDGET_SECONDS
from worker import publish
from worker.app import app
from worker.publish import PURGE_TASK
from worker.retention import purge as retention


@app.task(name=PURGE_TASK)
def purge() -> dict[str, Any]:
    """Delete what the retention schedule says is due (beat, daily at 03:15 UTC)."""
    result = retention.purge(time_budget_seconds=TASK_TIME_BUDGET_SECONDS)
    if not result.complete:
        publish.continue_task(PURGE_TASK)  # after this run's commits: continue where it stopped
    return {
        "counts": result.counts,
        "held_skipped": result.held_skipped,
        "complete": result.complete,
        "locked_out": result.locked_out,
    }
