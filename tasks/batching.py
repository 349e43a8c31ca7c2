"""celery-batches, with a flush timer that survives the loss of the broker connection.

When the connection drops, Celery's event loop clears its timer queue (celery/worker/loops.py)
and the consumer reconnects. celery-batches keeps the handle of its periodic flush timer,
sees it set, and never starts another: from then on a worker flushes only every
`flush_every` messages, and the last few signups of a burst wait in its buffer, unacked, for
good (the fault drill found them after a Redis restart). This subclass notices the dropped
timer on the next message and lets celery-batches start a fresh one.
"""

from __future__ import annotations

from typing import Any

from celery_batches import Batches


class ReconnectSafeBatches(Batches):
    abstract = True

    def Strategy(self, task: Any, app: Any, consumer: Any) -> Any:  # Celery's name for it
        handle = super().Strategy(task, app, consumer)
        timer = consumer.timer

        def on_message(*args: Any, **kwargs: Any) -> None:
            tref: Any = getattr(self, "_tref", None)
            # `timer.queue` is a snapshot of (eta, priority, entry); a live timer is in it,
            # except while its own callback runs, which cannot overlap this handler.
            if tref is not None and all(item[2] is not tref for item in timer.queue):
                self._tref = None  # celery-batches starts a new timer for this message
            handle(*args, **kwargs)

        return on_message
