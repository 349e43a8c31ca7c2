"""Signup messages from the queue, taken in batches and settled one by one.

Each message of a batch ends settled in exactly one way, and only a settled message is
acknowledged (tasks/batching.py):

- **stored** (or found stored already: every step is idempotent on the signup's key);
- **rejected**: invalid, recorded in `rejected_signup` with its reasons, never its values. A
  malformed envelope (positional arguments, keyword arguments that are not a mapping or hold
  no `message`) is rejected the same way, and never costs the other messages of its batch;
- **published again**, when the database is away: with its attempt count and a delay that
  doubles from 5 s (worker/publish.py), never dropped;
- **parked**, when storing it fails for any other reason: the batch is stored again one
  message at a time, and a message that still fails goes to `parked_signup` with an error
  code, for `listsync failed list|retry` (worker/signups/parked.py).

A message that could not be settled (the database and the broker both away) is left to the
broker, which delivers it again.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy.exc import DBAPIError

from worker import metrics, publish
from worker.db import database_unavailable
from worker.signups import parked
from worker.signups.message import Problem, SignupRejected
from worker.signups.store import receive_many, record_rejections

log = logging.getLogger(__name__)

CHANNEL = "queue"
#: The keyword arguments a signup message may carry: the message, and how many times it
#: was published again (docs/intake.md).
ENVELOPE_KEYS = frozenset({"message", "attempt"})


@dataclass(frozen=True)
class Envelope:
    """One queued message as the worker got it: the Celery task id and its arguments."""

    task_id: str | None
    args: Any
    kwargs: Any


@dataclass(frozen=True)
class Queued:
    """A well-formed envelope: its place in the batch, the message, and its attempt count."""

    position: int
    message: Any
    attempt: int


def envelope_problem(envelope: Envelope) -> str | None:
    """Why an envelope is not a signup message (a short code), or None when it is one."""
    if envelope.args not in ((), [], None):
        return "positional_arguments"
    kwargs = envelope.kwargs
    if not isinstance(kwargs, dict):
        return "arguments_not_a_mapping"
    if "message" not in kwargs:
        return "no_message"
    if not set(kwargs) <= ENVELOPE_KEYS:
        return "unknown_argument"
    attempt = kwargs.get("attempt", 0)
    if not isinstance(attempt, int) or isinstance(attempt, bool) or attempt < 0:
        return "bad_attempt"
    return None


def keyed(envelope: Envelope) -> Any:
    """The message, with an idempotency key from the Celery task id when it has neither a key
    nor a submitted_at: a key derived from the time of receipt would differ on each
    redelivery. A copy published again carries it, so it stays the same signup."""
    message = envelope.kwargs["message"]
    unkeyed = isinstance(message, dict) and not message.get("idempotency_key")
    if unkeyed and not message.get("submitted_at") and envelope.task_id:
        # Hashed: a publisher's task id may hold characters a key may not.
        digest = hashlib.sha256(str(envelope.task_id).encode()).hexdigest()[:40]
        return {**message, "idempotency_key": f"celery:{digest}"}
    return message


def take(envelopes: Sequence[Envelope]) -> list[int]:
    """Settle a batch of queued messages; returns the positions settled (to acknowledge)."""
    settled: list[int] = []
    queued: list[Queued] = []
    malformed: list[tuple[int, SignupRejected]] = []
    for position, envelope in enumerate(envelopes):
        problem = envelope_problem(envelope)
        if problem is not None:
            malformed.append((position, SignupRejected([Problem("envelope", problem)])))
        else:
            attempt = envelope.kwargs.get("attempt", 0)
            queued.append(Queued(position, keyed(envelope), attempt))
    if malformed:
        settled += _reject_envelopes(malformed)
    if queued:
        settled += _store(queued)
    return sorted(settled)


def _reject_envelopes(malformed: list[tuple[int, SignupRejected]]) -> list[int]:
    try:
        record_rejections([(None, rejection) for _, rejection in malformed], CHANNEL)
    except Exception as exc:
        log.warning(
            "intake: %d malformed messages not recorded (%s); the broker delivers them again",
            len(malformed),
            type(exc).__name__,
        )
        return []
    return [position for position, _ in malformed]


def _store(queued: list[Queued]) -> list[int]:
    try:
        receive_many([q.message for q in queued], channel=CHANNEL)
    except Exception as exc:
        if database_unavailable(exc):
            return _publish_again(queued, exc)
        log.warning(
            "intake: a batch of %d failed (%s); storing its messages one at a time",
            len(queued),
            type(exc).__name__,
        )
        return [position for q in queued for position in _store_alone(q)]
    return [q.position for q in queued]


def _store_alone(q: Queued) -> list[int]:
    """Store one message in its own transaction; park it when it still fails."""
    try:
        receive_many([q.message], channel=CHANNEL)
    except Exception as exc:
        if database_unavailable(exc):
            return _publish_again([q], exc)
        return _park(q, error_code(exc))
    return [q.position]


def _publish_again(queued: list[Queued], exc: BaseException) -> list[int]:
    """Publish each message again with its attempt count raised; the ones the broker took
    are settled."""
    settled = []
    for q in queued:
        try:
            publish.republish_signup(q.message, q.attempt + 1)
        except Exception as publish_exc:
            log.warning(
                "intake: could not publish a signup again (%s); the broker delivers it again",
                type(publish_exc).__name__,
            )
            continue
        settled.append(q.position)
    if settled:
        metrics.incr("signups_republished_total", len(settled), reason="database_unavailable")
    log.warning(
        "intake: database unavailable (%s); %d of %d signups published again",
        type(exc).__name__,
        len(settled),
        len(queued),
    )
    return settled


def _park(q: Queued, error: str) -> list[int]:
    try:
        parked.park(q.message, error=error, attempts=q.attempt, channel=CHANNEL)
    except Exception as exc:
        log.warning(
            "intake: could not park a signup (%s); the broker delivers it again",
            type(exc).__name__,
        )
        return []
    metrics.incr("signups_parked_total", error=error)
    log.error("intake: a signup could not be stored (%s); parked", error)
    return [q.position]


def error_code(exc: BaseException) -> str:
    """A short code for why storing failed: the database's SQLSTATE, or the exception's type.
    Never the exception's text, which may quote the signup."""
    if isinstance(exc, DBAPIError):
        sqlstate = getattr(exc.orig, "sqlstate", None)
        if sqlstate:
            return f"database:{sqlstate}"
        return f"database:{type(exc.orig).__name__}"[:64]
    return f"internal:{type(exc).__name__}"[:64]
