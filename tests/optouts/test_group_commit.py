"""Webhooks that arrive together are stored together: the inbox's batch insert, the web
process's group commit, and concurrent requests through the real ASGI app."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy.exc import IntegrityError, OperationalError

from tests.optouts.payloads import FORM, URL, body, campaign, subscribe, unsubscribe
from tests.optouts.test_receiver import event_count
from worker.db import session_scope
from worker.models import EventState, WebhookEvent
from worker.optouts import inbox
from worker.web.group_commit import GroupCommit

AT = datetime(2024, 3, 1, 12, 30, 5, tzinfo=UTC)
#: The tests below wait on conditions, never on a clock; what they guard against (a request
#: or a batch waiting for ever) shows as a test that never ends, stopped here.
pytestmark = pytest.mark.timeout(60)


def parsed(n: int) -> Any:
    return inbox.parse(body(unsubscribe(f"person.{n}@example.org", AT + timedelta(seconds=n))))


# --- the batch insert -------------------------------------------------------------------


@pytest.mark.usefixtures("store")
def test_a_batch_stores_each_key_once_and_answers_in_order() -> None:
    earlier = parsed(0)
    with session_scope() as session:
        first = inbox.store(session, earlier)
    unknown = inbox.parse(body([("type", "merge_party"), *campaign(AT)[1:]]))
    batch = [parsed(1), earlier, parsed(2), parsed(1), unknown]
    with session_scope() as session:
        receipts = inbox.store_many(session, batch)

    assert [r.created for r in receipts] == [True, False, True, False, True]
    assert receipts[1].event_id == first.event_id
    assert receipts[3].event_id == receipts[0].event_id  # the repeat within the batch
    assert [r.state for r in receipts] == [EventState.PENDING] * 4 + [EventState.IGNORED]
    assert len({r.event_id for r in receipts}) == 4
    assert event_count() == 4


@pytest.mark.usefixtures("store")
def test_a_batch_stores_every_column_as_given_unicode_and_quotes_included() -> None:
    # PostgreSQL gets the rows as one JSON document, SQLite as parameters: the same rows.
    event = inbox.parse(
        body(subscribe("zoë+tag@exämple.org", AT, FNAME='Zoë "Z"', LNAME="Łukasz \\ 山田"))
    )
    unknown = inbox.parse(body([("type", "merge_party"), *campaign(AT)[1:]]))
    now = datetime(2024, 3, 2, 8, 0, 1, 250000, tzinfo=UTC)
    with session_scope() as session:
        receipts = inbox.store_many(session, [event, unknown], now=now)
    names = [c.name for c in WebhookEvent.__table__.columns if c.name != "id"]
    with session_scope() as session:
        stored = [session.get(WebhookEvent, r.event_id) for r in receipts]
        columns = [{name: getattr(e, name) for name in names} for e in stored if e is not None]
    common = {"source": "webhook", "fired_at": AT, "received_at": now}
    assert columns == [
        {"dedupe_key": event.dedupe_key, "type": "subscribe", "email_hash": event.email_hash}
        | {"payload": event.payload, "state": "pending", "applied_at": None, "outcome": None}
        | common,
        {"dedupe_key": unknown.dedupe_key, "type": "merge_party", "email_hash": None}
        | {"payload": unknown.payload, "state": "ignored", "applied_at": now}
        | {"outcome": "unknown_type"}
        | common,
    ]
    assert event.payload["data"]["merges"]["LNAME"] == "Łukasz \\ 山田"


@pytest.mark.usefixtures("store")
def test_a_batch_with_a_time_of_no_zone_is_refused_and_stores_nothing() -> None:
    with pytest.raises(Exception, match="naive"), session_scope() as session:
        inbox.store_many(session, [parsed(1), parsed(2)], now=datetime(2024, 3, 2, 8, 0))
    assert event_count() == 0


# --- the group commit, with a store of the test's own -------------------------------------


class Recorder:
    """A store that records its batches and refuses items it is told to."""

    def __init__(self, refuse: Exception | None = None, bad: int | None = None) -> None:
        self.batches: list[list[int]] = []
        self.started = threading.Event()
        self.release = threading.Event()
        self.refuse = refuse
        self.bad = bad

    def __call__(self, items: Sequence[int]) -> list[int]:
        self.started.set()
        self.release.wait()  # the first batch waits, so that the others pile up behind it
        self.batches.append(list(items))
        if self.refuse is not None and (self.bad is None or self.bad in items):
            raise self.refuse
        return [item * 10 for item in items]


async def submit_all(group: GroupCommit[int, int], items: list[int], recorder: Recorder) -> Any:
    tasks = [asyncio.ensure_future(group.submit(items[0]))]
    await asyncio.to_thread(recorder.started.wait)  # the first batch is held up
    tasks += [asyncio.ensure_future(group.submit(item)) for item in items[1:]]
    await asyncio.sleep(0)  # one turn of the loop: each new task has queued its item
    recorder.release.set()
    return await asyncio.gather(*tasks, return_exceptions=True)


def test_requests_waiting_behind_a_batch_share_the_next_one() -> None:
    recorder = Recorder()
    results = asyncio.run(submit_all(GroupCommit(recorder), list(range(10)), recorder))
    assert results == [item * 10 for item in range(10)]
    assert recorder.batches == [[0], list(range(1, 10))]


def test_batches_are_capped() -> None:
    recorder = Recorder()
    results = asyncio.run(submit_all(GroupCommit(recorder, max_batch=4), list(range(9)), recorder))
    assert results == [item * 10 for item in range(9)]
    assert [len(batch) for batch in recorder.batches] == [1, 4, 4]


def test_an_item_the_database_refuses_fails_alone() -> None:
    refused = IntegrityError("INSERT", {}, Exception("refused"))
    recorder = Recorder(refuse=refused, bad=3)
    results = asyncio.run(submit_all(GroupCommit(recorder), list(range(6)), recorder))
    assert results[3] is refused
    assert [r for i, r in enumerate(results) if i != 3] == [0, 10, 20, 40, 50]


def test_when_the_database_is_away_every_waiting_request_gets_the_error() -> None:
    away = OperationalError("INSERT", {}, Exception("connection refused"))
    recorder = Recorder(refuse=away)
    results = asyncio.run(submit_all(GroupCommit(recorder), list(range(6)), recorder))
    assert all(r is away for r in results)
    assert len(recorder.batches) == 2  # not retried item by item


# --- concurrent requests through the real app ---------------------------------------------


def test_requests_are_answered_before_the_step_after_the_store_whatever_it_does() -> None:
    """`then` (counting, asking for an apply run) must not hold up the answers, and its
    failure must fail no request: the events are committed by then."""
    all_answered = threading.Event()
    waited: list[bool] = []

    def then(items: Sequence[int], results: list[int]) -> None:
        # Blocks until every request has its answer: were the answers waiting for this
        # step, neither would ever go on (the test then fails at its timeout).
        waited.append(all_answered.wait())
        raise RuntimeError("the counters' Redis is away")

    async def main() -> list[int]:
        group: GroupCommit[int, int] = GroupCommit(lambda items: [i * 10 for i in items], then=then)
        results = await asyncio.gather(*(group.submit(i) for i in range(3)))
        all_answered.set()
        while not waited:
            await asyncio.sleep(0.01)  # let the step finish before the loop closes
        return results

    try:
        assert asyncio.run(main()) == [0, 10, 20]
    finally:
        all_answered.set()  # a failed run leaves no thread blocked behind it
    assert waited and all(waited)


@pytest.mark.usefixtures("store")
def test_concurrent_webhooks_are_each_stored_once_and_answered_alike(redis_client: Any) -> None:
    from worker.web.app import create_app

    distinct = [body(unsubscribe(f"person.{n}@example.org", AT)) for n in range(40)]
    requests = distinct + distinct[:10]  # ten redeliveries, racing their originals

    async def burst() -> list[httpx.Response]:
        transport = httpx.ASGITransport(app=create_app())
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
            responses = await asyncio.gather(
                *(http.post(URL, content=raw, headers=FORM) for raw in requests)
            )
        # The apply run is asked for after the answers: wait for the writer's last step.
        while not redis_client.llen("optouts"):
            await asyncio.sleep(0.01)
        return responses

    responses = asyncio.run(burst())
    assert {r.status_code for r in responses} == {200}
    statuses = [r.json()["status"] for r in responses]
    assert statuses.count("stored") == 40
    assert statuses.count("duplicate") == 10
    assert event_count() == 40
    assert int(redis_client.llen("optouts")) == 1  # one apply run asked for, not forty


def test_if_the_writer_itself_fails_no_request_waits_for_ever() -> None:
    def wrong_length(items: Sequence[int]) -> list[int]:
        return []  # a bug: one result short per item

    async def run() -> list[Any]:
        group: GroupCommit[int, int] = GroupCommit(wrong_length)
        tasks = [asyncio.ensure_future(group.submit(item)) for item in range(3)]
        # A request left waiting for ever fails the test at its timeout.
        return await asyncio.gather(*tasks, return_exceptions=True)

    results = asyncio.run(run())
    assert len(results) == 3 and all(isinstance(r, ValueError) for r in results)
