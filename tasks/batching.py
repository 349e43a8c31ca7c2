"""celery-batches, acknowledging each message only once the task settled it, and with a flush
timer that survives the loss of the broker connection.

celery-batches 0.11 acknowledges every message of a batch when the pool reports back, also
when the task raised (its trace catches the exception and returns None): a batch that failed
half-way lost every message it had not yet dealt with. `SettlingBatches` has the task return
the positions of the messages it settled; only those are acknowledged, in the consumer process
that holds them, and every other one is handed back to the broker (requeued), so it is
delivered again. A pool process that dies mid-batch acknowledges nothing.

When the connection drops, Celery's event loop clears its timer queue (celery/worker/loops.py)
and the consumer reconnects. celery-batches keeps the handle of its periodic flush timer,
sees it set, and never starts another: from then on a worker flushes only every
`flush_every` messages, and the last few signups of a burst wait in its buffer, unacked, for
good (the fault drill found them after a Redis restart). `Strategy` below notices the dropped
timer on the next message and lets celery-batches start a fresh one.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

from celery.worker.request import Request
from celery_batches import Batches, SimpleRequest
from celery_batches.trace import apply_batches_task


class SettlingBatches(Batches):
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

    def flush(self, requests: Collection[Request]) -> Any:
        """Run the task on a batch in the pool; settle its messages when it reports back.

        Runs in the consumer process, as do the callbacks: the messages (and their
        acknowledgement) never leave it; the pool gets picklable copies."""
        held = list(requests)  # same order as the copies the task gets
        copies = ([SimpleRequest.from_request(request) for request in held],)

        def settle(result: Any) -> None:
            done = settled_positions(result, len(held))
            for position, request in enumerate(held):
                if position in done:
                    request.acknowledge()
                else:
                    request.reject(requeue=True)

        def lost(_exc_info: Any) -> None:  # the pool process died, or a hard time limit
            settle(None)

        return self._pool.apply_async(
            apply_batches_task,
            (self, copies, 0, None),
            callback=settle,
            error_callback=lost,
        )


def settled_positions(result: Any, size: int) -> set[int]:
    """The positions a batch task's result names as settled; none when it raised (None)."""
    if not isinstance(result, list | tuple | set | frozenset):
        return set()
    return {p for p in result if isinstance(p, int) and not isinstance(p, bool) and 0 <= p < size}
