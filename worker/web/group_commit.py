"""Group commit: requests that arrive together share one database transaction.

Each webhook request used to take its own pooled connection, insert one row and commit. Under
a burst that meant one commit (and often one fresh connection, past the pool's size) per
request. Here every request hands its item to the process's `GroupCommit` and waits; one
writer stores all items that arrived while the previous batch was being stored, in one call
of `store` on a worker thread, then answers each request with its own result. A lone request
is stored at once (no waiting for company), so latency at low rates is what it was.

Failure stays per request: when a batch fails for a reason that is not the database being
away (a row it refuses, say), each item is stored alone, so one bad item fails only its own
request. When the database is away every request in the batch gets the error (and a 503).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from typing import Generic, TypeVar

from sqlalchemy.exc import InterfaceError, OperationalError
from starlette.concurrency import run_in_threadpool

log = logging.getLogger(__name__)

Item = TypeVar("Item")
Result = TypeVar("Result")

#: Items per transaction at most; the rest wait for the next one.
MAX_BATCH = 256
#: Errors that mean the database is away: retrying the items one by one would not help.
UNAVAILABLE = (OperationalError, InterfaceError)


class StoreBug(ValueError):
    """`store` broke its contract (one result per item): no retrying item by item."""


class GroupCommit(Generic[Item, Result]):
    """Batches concurrent `submit()` calls into calls of `store(items) -> results`.

    `store` runs on a worker thread, returns one result per item in order, and is atomic:
    on an exception nothing of the batch was stored. `then(items, results)`, when given, runs
    on the same worker thread right after, while the event loop answers the batch's requests,
    and before the next batch is stored: work the answers need not wait for.
    """

    def __init__(
        self,
        store: Callable[[Sequence[Item]], list[Result]],
        max_batch: int = MAX_BATCH,
        then: Callable[[Sequence[Item], list[Result]], None] | None = None,
    ) -> None:
        self._store = store
        self._then = then
        self._max_batch = max_batch
        self._waiting: list[tuple[Item, asyncio.Future[Result]]] = []
        self._writer: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    async def submit(self, item: Item) -> Result:
        loop = asyncio.get_running_loop()
        if loop is not self._loop:  # a new event loop (tests run several): start afresh
            self._loop, self._waiting, self._writer = loop, [], None
        future: asyncio.Future[Result] = loop.create_future()
        self._waiting.append((item, future))
        if self._writer is None or self._writer.done():
            self._writer = loop.create_task(self._write())
        return await future

    async def _write(self) -> None:
        waiting = self._waiting
        batch: list[tuple[Item, asyncio.Future[Result]]] = []
        try:
            while waiting:
                batch = waiting[: self._max_batch]
                del waiting[: self._max_batch]
                await self._settle(batch)
        except BaseException as exc:
            # Whatever stopped the writer (a bug, cancellation at shutdown), no request may
            # wait for ever: this batch and everything queued behind it gets the error.
            for _, future in (*batch, *waiting):
                if isinstance(exc, asyncio.CancelledError):
                    future.cancel()
                else:
                    _fail(future, exc)
            waiting.clear()
            if not isinstance(exc, Exception):
                raise  # cancellation, exit: not ours to swallow
            log.error("group commit: the writer failed (%s)", type(exc).__name__)

    async def _settle(self, batch: list[tuple[Item, asyncio.Future[Result]]]) -> None:
        loop = asyncio.get_running_loop()
        items = [item for item, _ in batch]

        def store_answer_then() -> None:
            # One trip to a worker thread per batch: each wakes a sleeping thread, which cost
            # this process a tenth of its CPU when the step after the store took a second one.
            results = self._store(items)
            if len(results) != len(items):
                raise StoreBug(f"store gave {len(results)} results for {len(items)} items")
            loop.call_soon_threadsafe(_answer, batch, results)
            if self._then is not None:  # the answers are on their way; the next batch waits
                try:
                    self._then(items, results)
                except Exception as exc:
                    log.warning(
                        "group commit: the step after a store failed (%s)", type(exc).__name__
                    )

        try:
            await run_in_threadpool(store_answer_then)
        except StoreBug:
            raise  # the writer's own failure: every waiting request gets it (_write)
        except UNAVAILABLE as exc:
            for _, future in batch:
                _fail(future, exc)
        except Exception as exc:
            if len(batch) == 1:
                _fail(batch[0][1], exc)
                return
            for one in batch:  # find the item at fault: each alone, in its own transaction
                await self._settle([one])


def _answer(batch: list[tuple[Item, asyncio.Future[Result]]], results: list[Result]) -> None:
    for (_, future), result in zip(batch, results, strict=True):  # counted by the writer
        if not future.done():  # done: the request was cancelled (client went away)
            future.set_result(result)


def _fail(future: asyncio.Future[Result], exc: BaseException) -> None:
    if not future.done():
        future.set_exception(exc)
