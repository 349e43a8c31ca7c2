"""Celery tasks for signup intake (worker/signups/queue.py).

`listsync.signups.receive` is a celery-batches task: the worker buffers up to RECEIVE_BATCH
messages (or RECEIVE_WAIT seconds) and stores them in one transaction, which is what lets
intake keep up with a burst. Each message is still one ordinary Celery message that any
client can publish (docs/intake.md). A message is acknowledged only once it is settled:
stored, rejected, parked or published again (tasks/batching.py).
"""

from __future__ import annotations

from celery_batches import SimpleRequest

from tasks.batching import SettlingBatches
from worker.app import app
from worker.publish import RECEIVE_BATCH, RECEIVE_TASK, RECEIVE_WAIT
from worker.signups import queue


@app.task(
    name=RECEIVE_TASK,
    base=SettlingBatches,
    flush_every=RECEIVE_BATCH,
    flush_interval=RECEIVE_WAIT,
    acks_late=True,
)
def receive_signups(requests: list[SimpleRequest]) -> list[int]:
    """Settle a batch of signup messages; returns the positions to acknowledge."""
    return queue.take([queue.Envelope(r.id, r.args, r.kwargs) for r in requests])
