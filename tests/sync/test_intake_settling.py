"""Invariant 1 at the intake batch: every queued message is settled on its own (stored,
rejected, parked or published again) and only then acknowledged; a bad message never costs
its neighbours, and none is republished for ever or lost.

The workers here are real `celery worker` processes taking signups as production's intake
worker does (prefork, a batch's worth prefetched); faults are real too: a database trigger
that refuses one row, a connection pool with no connection free, a private PostgreSQL
stopped mid-drain, a private Redis that refuses writes.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, create_engine, func, select, text

from bench._services import PrivatePostgres, PrivateRedis
from tests.conftest import Broker
from tests.helpers import run_listsync, wait_for, worker_process
from worker import metrics
from worker.app import app
from worker.db import get_engine, session_scope
from worker.models import ParkedSignup, RejectedSignup, Submission
from worker.publish import RECEIVE_TASK, publish_signup, republish_delay
from worker.signups import queue
from worker.signups.message import build_message

pytestmark = pytest.mark.timeout(240)

POISON = "Poison"  # a first name the database trigger below refuses


def signups(count: int, prefix: str = "batch") -> list[dict[str, Any]]:
    return [
        build_message(f"{prefix}{i}@trust.org", "newsletter_signup", fields={"first_name": "Ann"})
        for i in range(count)
    ]


def count(model: Any) -> int:
    with session_scope() as session:
        return int(session.scalar(select(func.count()).select_from(model)) or 0)


def counter(name: str) -> float:
    return sum(metrics.read_counters()[name].values())


@pytest.fixture
def intake_env(db: str, settings_env: dict[str, str], broker: Broker) -> dict[str, str]:
    return {**settings_env, "LISTSYNC_BROKER_URL": os.environ["LISTSYNC_BROKER_URL"]}


def test_malformed_envelopes_are_rejected_and_cost_their_batch_nothing(
    intake_env: dict[str, str], broker: Broker, tmp_path: Path
) -> None:
    good = signups(196)
    message = good[0]
    malformed: list[tuple[Any, Any]] = [
        ([message], {}),  # positional arguments instead of `message`
        ([], ["message", message]),  # keyword arguments that are not a mapping
        ([], {"signup": message}),  # no `message`
        ([], {"message": message, "priority": "high"}),  # an unknown argument
    ]
    for args, kwargs in malformed:  # first in the queue: they share the first batch
        broker.push_raw("signups", RECEIVE_TASK, args, kwargs)
    for item in good:
        publish_signup(item)
    with worker_process(intake_env, "signups", prefetch=200, log=tmp_path / "w.log", ready=True):
        wait_for(lambda: count(Submission) + count(RejectedSignup) == 200, timeout=60)
        wait_for(broker.settled, timeout=30, what="every message acknowledged")
    assert count(Submission) == 196
    with session_scope() as session:
        reasons = sorted(session.scalars(select(RejectedSignup.reason)))
    assert reasons == [
        "envelope: arguments_not_a_mapping",
        "envelope: no_message",
        "envelope: positional_arguments",
        "envelope: unknown_argument",
    ]
    assert "trust.org" not in (tmp_path / "w.log").read_text()


def _refuse_poison(engine: Engine) -> None:
    """A database that refuses one particular row, as a future bug or a constraint would."""
    with engine.begin() as conn:
        if engine.dialect.name == "postgresql":
            conn.execute(
                text(
                    "CREATE FUNCTION refuse_poison() RETURNS trigger AS $$ BEGIN "
                    f"IF NEW.fields->>'first_name' = '{POISON}' THEN "
                    "RAISE EXCEPTION 'refused'; END IF; RETURN NEW; END $$ LANGUAGE plpgsql"
                )
            )
            conn.execute(
                text(
                    "CREATE TRIGGER poison BEFORE INSERT ON submission "
                    "FOR EACH ROW EXECUTE FUNCTION refuse_poison()"
                )
            )
        else:
            conn.execute(
                text(
                    "CREATE TRIGGER poison BEFORE INSERT ON submission "
                    f"WHEN json_extract(NEW.fields, '$.first_name') = '{POISON}' "
                    "BEGIN SELECT RAISE(ABORT, 'refused'); END"
                )
            )


def _cure(engine: Engine) -> None:
    with engine.begin() as conn:
        conn.execute(text("DROP TRIGGER poison" + (" ON submission" if _pg(engine) else "")))


def _pg(engine: Engine) -> bool:
    return engine.dialect.name == "postgresql"


def test_a_poison_message_is_parked_alone_then_replayed_once_the_cause_is_fixed(
    intake_env: dict[str, str], broker: Broker, tmp_path: Path
) -> None:
    engine = get_engine()
    _refuse_poison(engine)
    batch = signups(199)
    poison = build_message("poison@trust.org", "newsletter_signup", fields={"first_name": POISON})
    for item in [*batch[:100], poison, *batch[100:]]:
        publish_signup(item)
    with worker_process(intake_env, "signups", prefetch=200, log=tmp_path / "w.log", ready=True):
        wait_for(lambda: count(ParkedSignup) == 1, timeout=60, what="the poison parked")
        wait_for(lambda: count(Submission) == 199, timeout=30)
        wait_for(broker.settled, timeout=30, what="every message acknowledged")
        # Parked, not published again: nothing comes back however long we look.
        assert counter("signups_republished_total") == 0
        with session_scope() as session:
            row = session.scalars(select(ParkedSignup)).one()
            assert row.error == ("database:P0001" if _pg(engine) else "database:IntegrityError")
            assert row.form == "newsletter_signup" and row.payload["email"] == "poison@trust.org"
        assert counter("signups_parked_total") == 1

        listed = run_listsync("failed", "list", env=intake_env)
        assert listed.returncode == 0 and f"P{row.id}" in listed.stdout
        assert "poison@" not in listed.stdout and row.error in listed.stdout

        _cure(engine)
        replayed = run_listsync("failed", "retry", f"P{row.id}", env=intake_env)
        assert replayed.returncode == 0, replayed.stderr
        assert "1 parked signup(s) queued again" in replayed.stdout
        wait_for(lambda: count(Submission) == 200, timeout=30, what="the replayed signup stored")
    assert count(ParkedSignup) == 0
    assert "poison@" not in (tmp_path / "w.log").read_text()


def test_with_no_connection_free_a_batch_is_published_again_with_its_attempt_and_a_delay(
    intake_env: dict[str, str], broker: Broker, monkeypatch: pytest.MonkeyPatch
) -> None:
    from config import get_settings
    from worker.db import dispose_engines

    monkeypatch.setenv("LISTSYNC_DATABASE_POOL_TIMEOUT_SECONDS", "0.2")
    get_settings.cache_clear()
    dispose_engines()
    engine = get_engine()
    held = [engine.connect() for _ in range(engine.pool.size() + engine.pool._max_overflow)]  # type: ignore[attr-defined]
    messages = signups(5, "away")
    envelopes = [queue.Envelope(f"task-{i}", [], {"message": m}) for i, m in enumerate(messages)]
    envelopes[2] = queue.Envelope("task-2", [], {"message": messages[2], "attempt": 3})
    try:
        assert queue.take(envelopes) == [0, 1, 2, 3, 4]  # each one published again
    finally:
        for conn in held:
            conn.close()
    assert count(Submission) == 0
    assert counter("signups_republished_total") == 5
    republished = broker.messages("signups")
    assert sorted(body[1]["attempt"] for _headers, body in republished) == [1, 1, 1, 1, 4]
    assert all(headers["eta"] for headers, _body in republished)  # due later, not at once
    assert all("away" not in headers["kwargsrepr"] for headers, _body in republished)


def test_the_republish_delay_doubles_from_five_seconds_up_to_its_cap() -> None:
    from worker.publish import REPUBLISH_MAX_DELAY

    delays = [republish_delay(attempt) for attempt in range(1, 12)]
    assert delays[:4] == [5, 10, 20, 40]
    assert delays == sorted(delays) and delays[-1] == REPUBLISH_MAX_DELAY
    assert republish_delay(10_000) == REPUBLISH_MAX_DELAY  # no overflow for a huge count


@pytest.fixture
def private_postgres() -> Iterator[PrivatePostgres]:
    with PrivatePostgres() as pg:
        yield pg


def rows(url: str, model: Any) -> int:
    """Rows of `model` in the database at `url` (a fresh connection: the server restarts)."""
    engine = create_engine(url, connect_args={"connect_timeout": 2})
    try:
        with engine.connect() as conn:
            return int(conn.scalar(select(func.count()).select_from(model)) or 0)
    finally:
        engine.dispose()


def test_postgresql_stopped_and_started_during_a_drain_loses_nothing(
    private_postgres: PrivatePostgres,
    settings_env: dict[str, str],
    broker: Broker,
    tmp_path: Path,
) -> None:
    pg = private_postgres
    env = {
        **settings_env,
        "LISTSYNC_DATABASE_URL": pg.url,
        "LISTSYNC_BROKER_URL": os.environ["LISTSYNC_BROKER_URL"],
    }
    assert run_listsync("db", "upgrade", env=env).returncode == 0
    batch = signups(300, "drain")
    log = tmp_path / "w.log"
    with worker_process(env, "signups", prefetch=200, log=log, ready=True):
        for item in batch[:100]:
            publish_signup(item)
        wait_for(lambda: rows(pg.url, Submission) == 100, timeout=60)
        pg.stop()
        for item in batch[100:]:
            publish_signup(item)
        wait_for(
            lambda: counter("signups_republished_total") >= 1,
            timeout=60,
            what="signups published again while the database is away",
        )
        pg.start()
        wait_for(lambda: rows(pg.url, Submission) == 300, timeout=120, what="all stored")
        wait_for(broker.settled, timeout=30, what="every message acknowledged")
    assert rows(pg.url, ParkedSignup) == 0
    assert "drain" not in log.read_text()


@pytest.mark.redis_broker
def test_redis_refusing_writes_while_a_batch_is_published_again_loses_nothing(
    private_postgres: PrivatePostgres, settings_env: dict[str, str], tmp_path: Path
) -> None:
    """The database is away, so the batch is published again; Redis is full (maxmemory with
    noeviction), so that publish fails and so does handing the messages back: they stay
    taken-but-unacknowledged, and come back once Redis takes writes again."""
    pg = private_postgres
    with PrivateRedis(tmp_path) as broker:
        env = {
            **settings_env,
            "LISTSYNC_DATABASE_URL": pg.url,
            "LISTSYNC_BROKER_URL": broker.url,
            "LISTSYNC_BROKER_VISIBILITY_TIMEOUT_SECONDS": "10",
            "LISTSYNC_DATABASE_CONNECT_TIMEOUT_SECONDS": "4",
        }
        assert run_listsync("db", "upgrade", env=env).returncode == 0
        postmaster = int((pg.data / "postmaster.pid").read_text().split()[0])
        producer = app.connection_for_write(broker.url)
        batch = signups(40, "full")
        with producer:
            for item in batch:
                app.send_task(
                    RECEIVE_TASK,
                    kwargs={"message": item},
                    queue="signups",
                    connection=producer,
                    argsrepr="()",
                    kwargsrepr="<masked>",
                )
        os.kill(postmaster, signal.SIGSTOP)  # connecting now hangs until the timeout
        try:
            with worker_process(env, "signups", prefetch=200, log=tmp_path / "w.log", ready=True):
                wait_for(
                    lambda: (
                        broker.client.llen("signups") == 0 and broker.client.hlen("unacked") == 40
                    ),
                    timeout=30,
                    what="the worker to take every message",
                )
                broker.refuse_writes()
                wait_for(
                    lambda: (
                        b"could not publish a signup again" in (tmp_path / "w.log").read_bytes()
                    ),
                    timeout=60,
                    what="the publish refused",
                )
                os.kill(postmaster, signal.SIGCONT)
                broker.accept_writes()
                wait_for(lambda: rows(pg.url, Submission) == 40, timeout=120, what="all stored")
        finally:
            os.kill(postmaster, signal.SIGCONT)


def test_a_parked_message_delivered_again_is_parked_once(db: str) -> None:
    # Its acknowledgement was lost (the worker or the broker died after the park committed),
    # so the broker hands the same message out again and it fails the same way.
    from worker.signups.parked import park

    message = build_message("twice@trust.org", "newsletter_signup", fields={"first_name": POISON})
    first = park(message, error="database:P0001", attempts=0, channel="queue")
    assert park(dict(message), error="database:P0001", attempts=0, channel="queue") == first
    other = build_message("other@trust.org", "newsletter_signup")
    assert park(other, error="database:P0001", attempts=0, channel="queue") != first
    assert count(ParkedSignup) == 2


def test_only_positions_the_task_names_are_acknowledged() -> None:
    from tasks.batching import settled_positions

    assert settled_positions([0, 2, 2, 5], 4) == {0, 2}  # out of range: not ours
    assert settled_positions(None, 4) == set()  # the task raised: nothing is settled
    assert settled_positions([True, 1.0, "1", -1], 4) == set()
    assert settled_positions((1, 3), 4) == {1, 3}
