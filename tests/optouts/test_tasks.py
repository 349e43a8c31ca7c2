"""The opt-out tasks on a real worker: apply runs, and the sweep that recovers lost messages."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from kombu.exceptions import OperationalError as KombuOperationalError
from sqlalchemy import select, text

from tests.helpers import wait_for
from tests.optouts.payloads import TestClient, body, post, unsubscribe
from worker import metrics
from worker.app import app
from worker.db import session_scope
from worker.models import EventState, WebhookEvent, utcnow
from worker.optouts import inbox
from worker.optouts.events import validate_event
from worker.optouts.form import parse_form

AT = datetime(2024, 3, 1, 12, 0, 0, tzinfo=UTC)
EMAIL = "lost.message@example.org"


def state_of(event_id: int) -> str | None:
    with session_scope() as session:
        event = session.get(WebhookEvent, event_id)
        return event.state if event else None


def test_a_stored_event_is_applied_by_the_worker_once(
    client: TestClient, celery_worker: object
) -> None:
    assert post(client, unsubscribe(EMAIL, AT)).status_code == 200
    assert post(client, unsubscribe(EMAIL, AT)).status_code == 200
    with session_scope() as session:
        [event_id] = session.scalars(select(WebhookEvent.id)).all()
    wait_for(lambda: state_of(event_id) == EventState.APPLIED)


def test_an_event_whose_message_redis_lost_is_applied_by_the_sweep(
    store: str, celery_worker: object
) -> None:
    event = validate_event(parse_form(body(unsubscribe(EMAIL, AT))), "a1b2c3d4e5")
    with session_scope() as session:  # stored, but its apply message never reached Redis
        receipt = inbox.store(session, event, now=utcnow() - timedelta(minutes=5))
    assert state_of(receipt.event_id) == EventState.PENDING
    app.send_task("listsync.optouts.sweep")
    wait_for(lambda: state_of(receipt.event_id) == EventState.APPLIED)


@pytest.mark.postgres_only
@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)  # the planner's choice
def test_the_sweep_reads_the_pending_events_only_however_many_were_applied(store: str) -> None:
    with session_scope() as session:  # an hour ago: 49,998 applied, 2 pending
        session.execute(
            text(
                "INSERT INTO webhook_event (dedupe_key, type, source, fired_at, received_at, state)"
                " SELECT md5(n::text), 'unsubscribe', 'webhook', now(), now() - interval '1 hour',"
                " CASE WHEN n % 25000 = 0 THEN 'pending' ELSE 'applied' END"
                " FROM generate_series(1, 50000) AS n"
            )
        )
        session.execute(text("ANALYZE webhook_event"))
    statement = inbox.count_waiting(utcnow(), inbox.SWEEP_GRACE)
    with session_scope() as session:
        assert session.scalar(statement) == 2
        compiled = statement.compile(session.get_bind(), compile_kwargs={"literal_binds": True})
        explain = text(f"EXPLAIN (ANALYZE, BUFFERS, COSTS OFF) {compiled}")
        plan = "\n".join(row[0] for row in session.execute(explain))
    assert "ix_webhook_event_state_fired" in plan and "Seq Scan" not in plan, plan
    read = re.search(r"Buffers: shared hit=(\d+)", plan)  # the top node's: the whole query's
    assert read is not None and int(read.group(1)) < 20, plan  # the whole index: 250


def test_redis_refusing_the_enqueue_still_answers_200_and_the_sweep_sends_it_later(
    client: TestClient, redis_client: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broker_down(*_: Any, **__: Any) -> Any:
        raise KombuOperationalError("Error 111 connecting to 127.0.0.1:6379. Connection refused.")

    with monkeypatch.context() as patch:
        patch.setattr(app, "send_task", broker_down)
        assert post(client, unsubscribe(EMAIL, AT)).status_code == 200
        # The run is asked for after the answer, and before the event is counted.
        wait_for(lambda: metrics.read_counters().get("webhook_events_received_total"))
    with session_scope() as session:
        [event] = session.scalars(select(WebhookEvent)).all()
    assert event.state == EventState.PENDING
    assert redis_client.llen("optouts") == 0
    assert inbox.sweep() == 0  # too young: its message may still be on its way
    assert inbox.sweep(now=utcnow() + timedelta(minutes=2)) == 1
    assert redis_client.llen("optouts") == 1


def test_a_starting_worker_asks_at_once_for_the_events_a_killed_worker_left_pending(
    store: str, redis_client: Any
) -> None:
    inbox.on_worker_start()
    assert redis_client.llen("optouts") == 0  # nothing pending: no run asked for
    event = validate_event(parse_form(body(unsubscribe(EMAIL, AT))), "a1b2c3d4e5")
    with session_scope() as session:  # a second old: far inside the sweep's grace
        inbox.store(session, event, now=utcnow() - timedelta(seconds=1))
    assert inbox.sweep() == 0
    inbox.on_worker_start()
    assert redis_client.llen("optouts") == 1


def test_a_burst_of_webhooks_queues_one_apply_run_and_all_are_applied(
    client: TestClient, redis_client: Any
) -> None:
    for n in range(20):
        assert post(client, unsubscribe(f"burst{n}@trust.org", AT)).status_code == 200
    assert redis_client.llen("optouts") == 1  # one run for the whole burst
    from worker.optouts.apply import apply_pending

    assert apply_pending() == 20
    with session_scope() as session:
        states = set(session.scalars(select(WebhookEvent.state)))
    assert states == {EventState.APPLIED}
