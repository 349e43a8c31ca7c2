"""The webhook-event inbox: store each event once (dedupe key), then nudge the applier.

Storing comes first and is the only thing the webhook waits for; the web process stores the
events that arrive together in one transaction (worker/web/group_commit.py). After the commit
it asks for an apply run (at most one is waiting at a time, so a burst of webhooks
costs one Celery message, not one each); the run applies every pending event in `fired_at`
order. A failed nudge is left to the sweep, so a Redis outage never loses an event.
"""

from __future__ import annotations

import functools
import json
import logging
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import (
    JSON,
    Insert,
    Select,
    Table,
    Text,
    bindparam,
    cast,
    column,
    func,
    select,
)
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.orm import Session

from config import get_settings
from worker import metrics, publish
from worker.db import dialect_insert, session_scope
from worker.models import ChangeSource, EventState, WebhookEvent, utcnow
from worker.optouts.events import KNOWN_TYPES, ParsedEvent, validate_event
from worker.optouts.form import parse_form

log = logging.getLogger(__name__)

#: The sweep leaves younger pending events alone: their apply message is most likely queued.
SWEEP_GRACE = timedelta(seconds=60)
#: The inbox table, for Core INSERTs (the ORM class would make them ORM bulk inserts).
_TABLE: Table = WebhookEvent.metadata.tables[WebhookEvent.__tablename__]


@dataclass(frozen=True)
class Receipt:
    event_id: int
    created: bool  # False: a redelivery of an event already stored
    state: str


def _state(event: ParsedEvent) -> EventState:
    return EventState.PENDING if event.known else EventState.IGNORED


def _row(event: ParsedEvent, now: datetime) -> dict[str, Any]:
    known = event.known
    return {
        "dedupe_key": event.dedupe_key,
        "type": event.type if known else event.type[:32],
        "source": ChangeSource.WEBHOOK,
        "fired_at": event.fired_at,
        "email_hash": event.email_hash,
        "payload": event.payload,
        "received_at": now,
        "state": _state(event),
        "applied_at": None if known else now,
        "outcome": None if known else "unknown_type",
    }


def store_many(
    session: Session, events: Sequence[ParsedEvent], *, now: datetime | None = None
) -> list[Receipt]:
    """Insert each event unless its dedupe key is already stored (without committing).

    One INSERT for all of them; the receipts follow the order of `events`, and a key that
    comes twice in `events` is stored once (the second gets created=False).
    """
    if not events:
        return []
    now = now or utcnow()
    rows: dict[str, dict[str, Any]] = {}
    # In key order: two batches inserting the same keys then wait for each other in the same
    # order instead of deadlocking (a redelivery racing its original in another web process).
    for event in sorted(events, key=lambda e: e.dedupe_key):
        rows.setdefault(event.dedupe_key, _row(event, now))
    on_postgresql = session.get_bind().dialect.name == "postgresql"
    insert_new = _insert_postgresql if on_postgresql else _insert_values
    inserted = insert_new(session, list(rows.values()))
    known: dict[str, tuple[int, str]] = {}
    if missing := [key for key in rows if key not in inserted]:
        found = session.execute(
            select(WebhookEvent.id, WebhookEvent.dedupe_key, WebhookEvent.state).where(
                WebhookEvent.dedupe_key.in_(missing)
            )
        )
        known = {key: (int(event_id), str(state)) for event_id, key, state in found}
    receipts: list[Receipt] = []
    new = set(inserted)
    for event in events:
        key = event.dedupe_key
        if key in inserted:
            receipts.append(Receipt(inserted[key], created=key in new, state=_state(event)))
            new.discard(key)  # a repeat later in `events` is not new
        else:
            event_id, state = known[key]
            receipts.append(Receipt(event_id, created=False, state=state))
    return receipts


def _insert_postgresql(session: Session, rows: list[dict[str, Any]]) -> dict[str, int]:
    """Insert the rows not stored yet, sent as one JSON parameter; {dedupe_key: id} of those.

    A multi-row INSERT carries ten parameters per row, and psycopg parses every statement of
    over 50 parameters anew (it caches only smaller ones): that was a tenth of the web
    process's CPU in a burst. One JSON array, turned back into rows of the table's column
    types by `json_to_recordset`, halves the client's CPU per event (docs/performance.md).
    """
    statement = _json_insert_statement(tuple(rows[0]))
    param = json.dumps(rows, default=_aware_timestamp, ensure_ascii=False)
    return {key: int(event_id) for event_id, key in session.execute(statement, {"rows": param})}


@functools.lru_cache(maxsize=4)
def _json_insert_statement(columns: tuple[str, ...]) -> Insert:
    """INSERT … SELECT … FROM json_to_recordset(:rows) AS anon(column type, …) ON CONFLICT …"""
    rows = (
        func.json_to_recordset(cast(bindparam("rows", type_=Text), JSON))
        .table_valued(*(column(name, _TABLE.c[name].type) for name in columns))
        .render_derived(with_types=True)
    )
    return (
        pg_insert(_TABLE)
        .from_select(list(columns), select(rows))
        .on_conflict_do_nothing(index_elements=["dedupe_key"])
        .returning(_TABLE.c.id, _TABLE.c.dedupe_key)
    )


def _insert_values(session: Session, rows: list[dict[str, Any]]) -> dict[str, int]:
    """As _insert_postgresql, for SQLite: SQLAlchemy's "insertmanyvalues", multi-row INSERTs of one
    statement compiled once (a literal .values(list) would be compiled anew per count)."""
    insert = (
        dialect_insert(session)(_TABLE)
        .on_conflict_do_nothing(index_elements=["dedupe_key"])
        .returning(_TABLE.c.id, _TABLE.c.dedupe_key)
    )
    return {key: int(event_id) for event_id, key in session.execute(insert, rows)}


def _aware_timestamp(value: object) -> str:
    if not isinstance(value, datetime) or value.tzinfo is None:  # as UTCDateTime refuses
        raise TypeError(f"cannot store {type(value).__name__} (naive or not a timestamp)")
    return value.isoformat()


def store(session: Session, event: ParsedEvent, *, now: datetime | None = None) -> Receipt:
    """Insert one event unless its dedupe key is already there (without committing)."""
    return store_many(session, [event], now=now)[0]


def parse(body: bytes) -> ParsedEvent:
    """Parse and validate one webhook body. Raises FormError or BadEvent for bad input."""
    return validate_event(parse_form(body), get_settings().mailchimp_list_id)


def store_batch(events: Sequence[ParsedEvent]) -> list[Receipt]:
    """Store events in one transaction and commit.

    Raises SQLAlchemy errors when the database is away (the caller answers 503 so Mailchimp
    retries); nothing is stored then.
    """
    with session_scope() as session:
        return store_many(session, events)


def announce(events: Sequence[ParsedEvent], receipts: Sequence[Receipt]) -> None:
    """After the commit: ask for one apply run, then count the events. Never raises (a lost
    request for a run is the sweep's to repair)."""
    if any(r.created and r.state == EventState.PENDING for r in receipts):
        publish.APPLY.request()
    types = Counter(event.type if event.type in KNOWN_TYPES else "unknown" for event in events)
    for label, count in types.items():
        metrics.incr("webhook_events_received_total", count, type=label)


def count_waiting(now: datetime, grace: timedelta) -> Select[int]:
    """How many events are pending since before `now - grace`: an index scan of the pending
    ones (ix_webhook_event_state_fired), however many events are stored."""
    return select(func.count()).where(
        WebhookEvent.state == EventState.PENDING, WebhookEvent.received_at < now - grace
    )


def sweep(*, now: datetime | None = None, grace: timedelta = SWEEP_GRACE) -> int:
    """Queue an apply run when events wait longer than they should (their message was lost).

    Returns how many such events there are.
    """
    with session_scope() as session:
        stale = session.scalar(count_waiting(now or utcnow(), grace))
    if stale:
        log.warning("inbox sweep: %d events wait to be applied; queueing an apply run", stale)
        publish.APPLY.request(force=True)
    return int(stale or 0)


def on_worker_start() -> None:
    """A worker that starts asks for an apply run when events are pending, at once.

    A worker killed in the middle of a chunk leaves its events pending (the chunk rolled
    back) and its apply message unacknowledged until the broker's visibility timeout; the
    sweep would wait its grace first. Never raises: a worker must start whatever the state
    of the database.
    """
    try:
        sweep(grace=timedelta(0))
    except Exception as exc:
        log.warning("inbox: pending events not checked at start (%s)", type(exc).__name__)
