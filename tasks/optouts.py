"""Celery tasks for opt-outs (worker/optouts/): apply an inbox event, sweep, reconcile."""

from __future__ import annotations

import logging
from dataclasses import asdict
from typing import Any

from sqlalchemy.exc import OperationalError

from worker.app import app
from worker.db import session_scope
from worker.mailchimp import TransientError, get_gateway
from worker.optouts import inbox
from worker.optouts.apply import apply_event
from worker.optouts.reconcile import reconcile as run_reconcile

log = logging.getLogger(__name__)


@app.task(
    name=inbox.APPLY_TASK,
    autoretry_for=(OperationalError,),
    retry_backoff=1,
    retry_backoff_max=60,
    max_retries=None,
)
def apply(event_id: int) -> dict[str, Any] | None:
    """Apply one stored webhook event; a second delivery of the message is a no-op (None)."""
    with session_scope() as session:
        result = apply_event(session, int(event_id))
    return {"event": int(event_id), "outcome": result.outcome} if result is not None else None


@app.task(name="listsync.optouts.sweep")
def sweep() -> int:
    """Re-enqueue inbox events never applied (beat, every minute)."""
    return inbox.sweep()


@app.task(name="listsync.optouts.reconcile")
def reconcile() -> dict[str, Any] | None:
    """Pull opted-out members changed since the watermark (beat, reconcile interval)."""
    try:
        return asdict(run_reconcile(get_gateway()))
    except TransientError as exc:
        # The next beat tick retries; the watermark only holds committed pages.
        log.warning("reconcile: Mailchimp unavailable (%s); will retry next interval", exc)
        return None
