"""The no-op floor for bench/sync.py: the same signup messages drained by a task that does
nothing with them, in the same worker layout, so that `drain / floor` says how close listsync
comes to what one Celery message per signup costs on its own.

The floor task is listsync's intake task with an empty body: the same name, the same
celery-batches base (`tasks.batching.SettlingBatches`: a message is acknowledged after its
batch returns), the same flush size and wait, and every Celery setting of `celeryconfig.py`
(late acks, task events, the broker's transport options). It counts what it took in one Redis
`INCRBY` per batch, which is how the bench knows the drain is over.

    celery -A bench.floor worker -Q signups -E ...   (started by bench/sync.py)
"""

from __future__ import annotations

import os

import redis
from celery import Celery
from celery_batches import SimpleRequest

from tasks.batching import SettlingBatches
from worker.publish import RECEIVE_BATCH, RECEIVE_TASK, RECEIVE_WAIT

#: The Redis key the floor task counts taken messages under (the bench's own Redis DB).
COUNTER = "bench:floor:taken"

app = Celery("listsync_bench_floor")
app.config_from_object("celeryconfig")
app.conf.update(imports=(), beat_schedule={})

_client: redis.Redis | None = None


def _redis() -> redis.Redis:
    global _client
    if _client is None:
        _client = redis.Redis.from_url(os.environ["LISTSYNC_BROKER_URL"])
    return _client


# Not shared with other apps (Celery's default), and tasks/signups.py never imported here:
# listsync's own task of this name must not take the floor's place in this worker.
@app.task(
    name=RECEIVE_TASK,
    shared=False,
    base=SettlingBatches,
    flush_every=RECEIVE_BATCH,
    flush_interval=RECEIVE_WAIT,
    acks_late=True,
)
def receive_signups(requests: list[SimpleRequest]) -> list[int]:
    """Take a batch and do nothing with it; every message is settled."""
    _redis().incrby(COUNTER, len(requests))
    return list(range(len(requests)))
