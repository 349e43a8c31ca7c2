"""The webhook-event inbox: store each event once (dedupe key), then nudge the applier.

Storing comes first and is the only thing the webhook waits for. After the commit the web
process asks for an apply run (at most one is waiting at a time, so a burst of webhooks
costs one Celery message, not one each); the run applies every pending event in `fired_at`
order. A failed nudge is left to the sweep, so a Redis outage never loses an event.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import redis
from sqlalchemy import func, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from config import get_settings
from worker import metrics
from worker.db import session_scope
from worker.models import ChangeSource, EventState, WebhookEvent, utcnow
from worker.optouts.events import KNOWN_TYPES, ParsedEvent, validate_event
from worker.optouts.form import parse_form

log = logging.getLogger(__name__)

APPLY_TASK = "listsync.optouts.apply"
APPLY_FLAG = "listsync:optouts:apply-requested"
#: While this flag lives, no further apply run is queued: one is already on its way.
APPLY_FLAG_SECONDS = 10
#: The sweep leaves younger pending events alone: their apply message is most likely queued.
SWEEP_GRACE = timedelta(seconds=60)


@dataclass(frozen=True)
class Receipt:
    event_id: int
    created: bool  # False: a redelivery of an event already stored
    state: str


def _insert(session: Session) -> Any:
    return pg_insert if session.get_bind().dialect.name == "postgresql" else sqlite_insert


def store(session: Session, event: ParsedEvent, *, now: datetime | None = None) -> Receipt:
    """Insert the event unless its dedupe key is already there (without committing)."""
    now = now or utcnow()
    state = EventState.PENDING if event.known else EventState.IGNORED
    values: dict[str, Any] = {
        "dedupe_key": event.dedupe_key,
        "type": event.type if event.known else event.type[:32],
        "source": ChangeSource.WEBHOOK,
        "fired_at": event.fired_at,
        "email_hash": event.email_hash,
        "payload": event.payload,
        "received_at": now,
        "state": state,
        "applied_at": None if event.known else now,
        "outcome": None if event.known else "unknown_type",
    }
    inserted = session.execute(
        _insert(session)(WebhookEvent)
        .values(**values)
        .on_conflict_do_nothing(index_elements=["dedupe_key"])
        .returning(WebhookEvent.id)
    ).scalar()
    if inserted is not None:
        return Receipt(int(inserted), created=True, state=state)
    existing = session.execute(
        select(WebhookEvent.id, WebhookEvent.state).where(
            WebhookEvent.dedupe_key == event.dedupe_key
        )
    ).one()
    return Receipt(int(existing.id), created=False, state=str(existing.state))


def receive(body: bytes) -> Receipt:
    """Parse, validate and store one webhook body; ask for an apply run after the commit.

    Raises FormError or BadEvent for bad input (nothing stored) and SQLAlchemy errors when
    the database is away (the caller answers 503 so Mailchimp retries).
    """
    event = validate_event(parse_form(body), get_settings().mailchimp_list_id)
    with session_scope() as session:
        receipt = store(session, event)
    label = event.type if event.type in KNOWN_TYPES else "unknown"
    metrics.incr("webhook_events_received_total", type=label)
    if receipt.created and receipt.state == EventState.PENDING:
        request_apply()
    return receipt


def request_apply(*, force: bool = False) -> bool:
    """Queue an apply run unless one is already queued. Never raises: the sweep retries."""
    from worker.app import app
    from worker.broker import get_redis

    try:
        if force or get_redis().set(APPLY_FLAG, "1", nx=True, ex=APPLY_FLAG_SECONDS):
            # retry=False: a web request must not wait out publish retries; the sweep retries.
            app.send_task(APPLY_TASK, retry=False)
    except Exception as exc:
        log.warning("inbox: could not queue an apply run (%s); the sweep will", type(exc).__name__)
        return False
    return True


def clear_apply_request() -> None:
    from worker.broker import get_redis

    with contextlib.suppress(redis.RedisError):
        get_redis().delete(APPLY_FLAG)


def sweep(*, now: datetime | None = None) -> int:
    """Queue an apply run when events wait longer than they should (their message was lost).

    Returns how many such events there are.
    """
    now = now or utcnow()
    with session_scope() as session:
        stale = session.scalar(
            select(func.count()).where(
                WebhookEvent.state == EventState.PENDING,
                WebhookEvent.received_at < now - SWEEP_GRACE,
            )
        )
    if stale:
        log.warning("inbox sweep: %d events were never applied; queueing an apply run", stale)
        request_apply(force=True)
    return int(stale or 0)
