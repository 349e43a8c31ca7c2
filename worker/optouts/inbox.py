"""The webhook-event inbox: store each event once (dedupe key), then enqueue its apply task.

Storing comes first and is the only thing the webhook waits for; the apply task is sent after
the commit and a failed send is left to the sweep, so a Redis outage never loses an event.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select
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
#: The sweep leaves younger pending events alone: their apply message is most likely queued.
SWEEP_GRACE = timedelta(seconds=60)
SWEEP_LIMIT = 5000


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
    """Parse, validate and store one webhook body; enqueue its apply after the commit.

    Raises FormError or BadEvent for bad input (nothing stored) and SQLAlchemy errors when
    the database is away (the caller answers 503 so Mailchimp retries).
    """
    event = validate_event(parse_form(body), get_settings().mailchimp_list_id)
    with session_scope() as session:
        receipt = store(session, event)
    label = event.type if event.type in KNOWN_TYPES else "unknown"
    metrics.incr("webhook_events_received_total", type=label)
    if receipt.created and receipt.state == EventState.PENDING:
        enqueue_apply(receipt.event_id)
    return receipt


def enqueue_apply(event_id: int) -> bool:
    """Send the apply task; on a broker failure log it and leave the event to the sweep."""
    from worker.app import app

    try:
        # retry=False: a web request must not wait out publish retries; the sweep retries.
        app.send_task(APPLY_TASK, args=[event_id], retry=False)
    except Exception as exc:
        log.warning(
            "inbox: could not enqueue apply of event %d (%s); the sweep will",
            event_id,
            type(exc).__name__,
        )
        return False
    return True


def sweep(*, now: datetime | None = None) -> int:
    """Re-enqueue events stored but never applied (their message was lost). Returns the count."""
    now = now or utcnow()
    with session_scope() as session:
        ids = list(
            session.scalars(
                select(WebhookEvent.id)
                .where(
                    WebhookEvent.state == EventState.PENDING,
                    WebhookEvent.received_at < now - SWEEP_GRACE,
                )
                .order_by(WebhookEvent.fired_at, WebhookEvent.id)
                .limit(SWEEP_LIMIT)
            )
        )
    sent = sum(1 for event_id in ids if enqueue_apply(event_id))
    if ids:
        log.warning("inbox sweep: %d events were never applied; re-enqueued %d", len(ids), sent)
    return sent
