"""Parked signups: queued messages that could not be stored for a reason other than the
database being away, kept for a person to look at and replay once the cause is fixed.

Like Mailman's shunt queue: a bad message never holds back its neighbours, and never
vanishes either. The payload is the message as it came (personal data included), so a parked
signup is exported and erased with its address and purged on its own schedule
(`keep.parked_signups`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from worker import publish
from worker.addresses import member_hash
from worker.db import session_scope
from worker.forms import MAX_FORM_NAME
from worker.models import ParkedSignup


def address_hash(message: Any) -> str | None:
    """The hash of the message's address, when it has one: what export and erase look for."""
    email = message.get("email") if isinstance(message, dict) else None
    if not isinstance(email, str) or not email.strip():
        return None
    return member_hash(email)


def park(message: Any, *, error: str, attempts: int, channel: str) -> int:
    """Keep a message that could not be stored, in its own transaction; returns its id.

    A message parked already is not parked twice: the broker delivers a message again when
    its acknowledgement was lost (the worker or the broker died after the park committed),
    and a person should see, and replay, it once."""
    form = message.get("form") if isinstance(message, dict) else None
    key = address_hash(message)
    payload = message if isinstance(message, dict) else {}
    with session_scope() as session:
        for row_id, stored in session.execute(
            select(ParkedSignup.id, ParkedSignup.payload).where(
                ParkedSignup.email_hash == key
                if key is not None
                else ParkedSignup.email_hash.is_(None),
                ParkedSignup.channel == channel,
            )
        ):
            if stored == payload:
                return int(row_id)
    row = ParkedSignup(
        channel=channel,
        form=form if isinstance(form, str) and len(form) <= MAX_FORM_NAME else None,
        email_hash=key,
        error=error[:64],
        attempts=attempts,
        # A message that is not a mapping is refused by validation before it could fail to
        # store; should one get here all the same, it is parked without its content.
        payload=payload,
    )
    with session_scope() as session:
        session.add(row)
        session.flush()
        return row.id


def list_parked(session: Session, limit: int = 100) -> list[ParkedSignup]:
    return list(session.scalars(select(ParkedSignup).order_by(ParkedSignup.id).limit(limit)))


def replay(session: Session, ids: Sequence[int] | None) -> int:
    """Publish parked signups to the queue again (all of them when `ids` is None) and forget
    them; returns how many. Each is published before its row goes, so a failure half-way
    leaves the rest parked, and one replayed twice is the same signup (its key)."""
    stmt = select(ParkedSignup).order_by(ParkedSignup.id)
    if ids is not None:
        stmt = stmt.where(ParkedSignup.id.in_(ids))
    count = 0
    for row in session.scalars(stmt):
        publish.publish_signup(row.payload)
        session.execute(delete(ParkedSignup).where(ParkedSignup.id == row.id))
        session.commit()
        count += 1
    return count
