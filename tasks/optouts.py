"""Celery tasks for opt-outs (worker/optouts/): apply pending inbox events, sweep, reconcile."""

from __future__ import annotations

import logging
from dataclasses import asdict
from typing import Any

from sqlalchemy.exc import OperationalError

from celeryconfig import TASK_TIME_BUDGET_SECONDS
from worker import publish
from worker.app import app
from worker.mailchimp import TransientError, get_gateway
from worker.optouts import inbox
from worker.optouts.apply import APPLY_BATCH, apply_pending
from worker.optouts.reconcile import reconcile as run_reconcile
from worker.publish import APPLY_TASK, OPTOUTS_SWEEP_TASK, RECONCILE_TASK

log = logging.getLogger(__name__)


@app.task(
    name=APPLY_TASK,
    autoretry_for=(OperationalError,),
    retry_backoff=1,
    retry_backoff_max=60,
    max_retries=10,  # then the sweep, which re-queues runs for waiting events, takes over
)
def apply() -> int:
    """Apply pending inbox events in fired_at order; queues itself again while more wait."""
    publish.APPLY.clear()
    count = apply_pending()
    if count >= APPLY_BATCH:
        publish.APPLY.request(force=True)
    return count


@app.task(name=OPTOUTS_SWEEP_TASK)
def sweep() -> int:
    """Queue an apply run when inbox events wait too long (beat, every minute)."""
    return inbox.sweep()


@app.task(name=RECONCILE_TASK)
def reconcile(resume: dict[str, Any] | None = None) -> dict[str, Any] | None:
    """Pull opted-out members changed since the watermark (beat, reconcile interval); a run
    that spends its time budget queues the rest of itself (`resume`: no member in it)."""
    try:
        report = run_reconcile(
            get_gateway(), time_budget_seconds=TASK_TIME_BUDGET_SECONDS, resume=resume
        )
    except TransientError as exc:
        # The next beat tick retries; the watermark only holds committed pages.
        log.warning("reconcile: Mailchimp unavailable (%s); will retry next interval", exc)
        return None
    if report.resume is not None:
        publish.continue_task(RECONCILE_TASK, resume=report.resume)
    return asdict(report)
