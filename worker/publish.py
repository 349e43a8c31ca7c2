"""Everything listsync sends to Celery: the task names, the signup message, its republishing,
and the nudges that ask for a flush or an apply run.

The one module outside `tasks/` that imports the Celery app: the domain calls these
functions and never publishes by itself (tests/test_layout.py holds every module to that).
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from typing import Any

import redis

from celeryconfig import VISIBILITY_TIMEOUT_SECONDS
from worker.app import app
from worker.broker import get_redis
from worker.signups.message import build_message, masked_repr, validate

log = logging.getLogger(__name__)

RECEIVE_TASK = "listsync.signups.receive"
#: Intake stores queued signups in batches (tasks/signups.py): up to this many messages, or
#: what arrived within this many seconds, per store.
RECEIVE_BATCH = 200
RECEIVE_WAIT = 0.05
FLUSH_TASK = "listsync.sync.flush"
SYNC_SWEEP_TASK = "listsync.sync.sweep"
APPLY_TASK = "listsync.optouts.apply"
OPTOUTS_SWEEP_TASK = "listsync.optouts.sweep"
RECONCILE_TASK = "listsync.optouts.reconcile"
PURGE_TASK = "listsync.retention.purge"
CHECK_TASK = "listsync.feeds.check"

#: A signup message the database could not take is published again, due after 5 s, then
#: 10, 20, ... doubling with each attempt up to a cap.
REPUBLISH_FIRST_DELAY = 5
#: The cap stays under half the broker's visibility timeout (celeryconfig): a worker holds a
#: delayed message unacknowledged until it is due, and Redis would hand a message held longer
#: than the visibility timeout to a second worker as well.
REPUBLISH_MAX_DELAY = min(300, VISIBILITY_TIMEOUT_SECONDS // 2)


def enqueue_signup(email: str, form: str, **options: Any) -> str:
    """Publish a signup to the `signups` queue; returns the Celery task id.

    The message is validated first, so a Python caller hears about bad input at once
    (SignupRejected).
    """
    message = build_message(email, form, **options)
    validate(message)
    return publish_signup(message)


def publish_signup(message: Any, *, attempt: int = 0, countdown: float | None = None) -> str:
    """Publish a signup message as it is; returns the Celery task id. What Flower and
    `inspect` show of it is masked: the address never appears there. Raises when the broker
    does not take it."""
    kwargs: dict[str, Any] = {"message": message}
    if attempt:
        kwargs["attempt"] = attempt
    result = app.send_task(
        RECEIVE_TASK,
        kwargs=kwargs,
        queue="signups",
        countdown=countdown,
        argsrepr="()",
        kwargsrepr=masked_repr(message, attempt) if isinstance(message, dict) else "<message>",
    )
    return str(result.id)


def republish_delay(attempt: int) -> int:
    """Seconds before attempt number `attempt` (1 for the first republish) is due."""
    return min(REPUBLISH_FIRST_DELAY * 2 ** min(max(attempt - 1, 0), 16), REPUBLISH_MAX_DELAY)


def republish_signup(message: Any, attempt: int) -> None:
    """Publish a signup message again as attempt number `attempt`, due after
    `republish_delay(attempt)` seconds; raises when the broker does not take it."""
    publish_signup(message, attempt=attempt, countdown=republish_delay(attempt))


def continue_task(name: str, **kwargs: Any) -> None:
    """Queue the rest of a task that stopped at its time budget (purge, reconcile)."""
    app.send_task(name, kwargs=kwargs or None)


@dataclass(frozen=True)
class Nudge:
    """Ask for one run of a task unless one is already on its way.

    A Redis flag, set for `seconds`, stands for the queued run; the task clears it when it
    starts. A nudge never raises: each task has a periodic sweep that queues a run when work
    waits, so a nudge lost to a Redis or broker outage only delays the work.
    """

    flag: str
    task: str
    seconds: int = 10

    def request(self, *, force: bool = False) -> bool:
        """Queue a run (always, with `force`); False when it could not be queued."""
        try:
            if force or get_redis().set(self.flag, "1", nx=True, ex=self.seconds):
                # retry=False: a web request must not wait out publish retries.
                app.send_task(self.task, retry=False)
        except Exception as exc:
            log.warning("could not queue %s (%s); its sweep will", self.task, type(exc).__name__)
            return False
        return True

    def clear(self) -> None:
        """The run has started: the next nudge queues another."""
        with contextlib.suppress(redis.RedisError):
            get_redis().delete(self.flag)


FLUSH = Nudge("listsync:sync:flush-requested", FLUSH_TASK)
APPLY = Nudge("listsync:optouts:apply-requested", APPLY_TASK)
#: Workers starting together ask for one check of the forms against the audience.
CHECK = Nudge("listsync:feeds:check-requested", CHECK_TASK, seconds=60)
