"""The skeleton: settings, migrations, the command's error messages."""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from pydantic import ValidationError

from config import Settings
from tests.helpers import run_listsync
from worker.db import dispose_engines, get_engine
from worker.migrate import upgrade
from worker.models import Base
from worker.supervise import descendants


def test_migrations_produce_exactly_the_models(settings_env: dict[str, str]) -> None:
    url = settings_env["LISTSYNC_DATABASE_URL"]
    upgrade(url)
    upgrade(url)  # a second run is a no-op
    with get_engine(url).connect() as conn:
        context = MigrationContext.configure(conn, opts={"compare_type": True})
        diff = compare_metadata(context, Base.metadata)
    dispose_engines()
    assert diff == []


def test_db_upgrade_command_migrates_a_new_database(settings_env: dict[str, str]) -> None:
    result = run_listsync("db", "upgrade", env=settings_env)
    assert result.returncode == 0, result.stderr
    assert "up to date" in result.stdout
    from sqlalchemy import inspect

    tables = set(inspect(get_engine(settings_env["LISTSYNC_DATABASE_URL"])).get_table_names())
    dispose_engines()
    assert {"contact", "submission", "submission_ip", "sync_job", "webhook_event"} <= tables
    assert {"hold", "purge_run", "suppression"} <= tables


@pytest.mark.parametrize(
    ("variable", "value", "reason"),
    [
        ("LISTSYNC_MAILCHIMP_CONCURRENCY", "11", "less than or equal to 10"),
        ("LISTSYNC_DATABASE_URL", "mysql://x/y", "sqlite:/// or postgresql"),
        ("LISTSYNC_BROKER_URL", "http://localhost:5672/", "amqp:// (RabbitMQ) or redis://"),
        ("LISTSYNC_REDIS_URL", "amqp://guest@localhost//", "must be a redis:// URL"),
        ("LISTSYNC_WEB_PORT", "eighty", "valid integer"),
        ("LISTSYNC_WEBHOOK_SECRETS", "short", "at least 16 characters"),
    ],
)
def test_bad_setting_is_one_clear_line_naming_the_variable(
    variable: str, value: str, reason: str
) -> None:
    result = run_listsync("db", "upgrade", env={variable: value})
    assert result.returncode == 1
    assert variable in result.stderr
    assert reason in result.stderr
    assert "Traceback" not in result.stderr
    if variable == "LISTSYNC_WEBHOOK_SECRETS":
        assert value not in result.stderr  # a rejected secret is not echoed back


def test_unreachable_database_names_the_setting_and_host() -> None:
    password = "app-password-0123456789"
    url = f"postgresql://app:{password}@127.0.0.1:1/nope"
    result = run_listsync("db", "upgrade", env={"LISTSYNC_DATABASE_URL": url})
    assert result.returncode == 1
    assert "LISTSYNC_DATABASE_URL" in result.stderr
    assert "127.0.0.1:1" in result.stderr
    assert password not in result.stderr
    assert "Traceback" not in result.stderr


def test_unreachable_broker_names_the_setting(settings_env: dict[str, str]) -> None:
    env = {**settings_env, "LISTSYNC_BROKER_URL": "redis://127.0.0.1:1/0"}
    result = run_listsync("worker", env=env)
    assert result.returncode == 1
    assert "LISTSYNC_BROKER_URL" in result.stderr and "127.0.0.1:1" in result.stderr
    assert "Traceback" not in result.stderr


def test_secrets_never_appear_in_reprs() -> None:
    settings = Settings(
        mailchimp_api_key="abcdef0123456789-us6",
        webhook_secrets="first-secret-0123456789,second-secret-0123456789",
        intake_tokens="token-0123456789abcdef",
    )
    text = repr(settings) + str(settings) + str(settings.model_dump())
    for secret in ("abcdef0123456789", "first-secret", "second-secret", "token-0123456789"):
        assert secret not in text
    assert settings.mailchimp_server == "us6"
    assert len(settings.webhook_secrets) == 2


def test_secret_is_not_echoed_in_validation_errors() -> None:
    with pytest.raises(ValidationError) as info:
        Settings(webhook_secrets="tiny-secret")
    assert "tiny-secret" not in str(info.value)


def test_every_setting_is_documented() -> None:
    from tests.conftest import ROOT

    doc = (ROOT / "docs" / "configuration.md").read_text()
    missing = [n for n in Settings.model_fields if f"`LISTSYNC_{n.upper()}`" not in doc]
    assert missing == []


def printed_by_new_process(code: str) -> int:
    """Run `code` in a fresh interpreter and return the int it prints."""
    import subprocess

    from tests.conftest import ROOT

    run = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=os.environ, capture_output=True, text=True
    )
    assert run.returncode == 0, run.stderr
    return int(run.stdout.split()[-1])


@pytest.mark.parametrize(
    "start",
    [
        "from worker.web.app import serve_app; serve_app()",  # a `listsync web` process
        "from tasks.lifecycle import _start_pool_process; _start_pool_process()",  # a pool process
    ],
)
def test_long_running_processes_hide_their_start_up_objects_from_the_cycle_collector(
    start: str, settings_env: dict[str, str]
) -> None:
    # Full collections walked every module, class and route, stalling a web process's event
    # loop for 150 ms and more under load (docs/performance.md).
    frozen = printed_by_new_process(f"import gc; {start}; print(gc.get_freeze_count())")
    assert frozen > 10_000


@pytest.mark.parametrize(("setting", "runs_at"), [("7", 7), ("0", 0)])
def test_listsync_worker_and_its_pool_run_at_the_configured_niceness(
    setting: str, runs_at: int, db: str, settings_env: dict[str, str], tmp_path: Path
) -> None:
    # Tasks are a backlog; the web's answers come first where both share CPUs.
    import psutil

    from tests.helpers import wait_for
    from worker.supervise import Child, descendants

    argv = [sys.executable, "-m", "worker.cli", "worker", "-Q", "maintenance", "-c", "1"]
    env = {**os.environ, **settings_env, "LISTSYNC_WORKER_NICE": setting}
    worker = Child("worker", argv, env, log=tmp_path / "worker.log", own_group=True).start()
    try:
        wait_for(lambda: worker.logged_since_start(" ready.") or not worker.alive(), timeout=60)
        pids = [worker.pid, *descendants(worker.pid)]
        assert len(pids) >= 2, worker.log_tail()  # the Celery main process and its pool
        assert {psutil.Process(pid).nice() for pid in pids} == {runs_at}
    finally:
        worker.kill()


@pytest.mark.postgres_only
def test_postgresql_connections_carry_the_statement_and_connect_timeouts(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Nothing waits on the database past the broker's visibility timeout or a client's
    patience: every connection is opened, and every statement cancelled, within bounds."""
    from sqlalchemy import text
    from sqlalchemy.exc import OperationalError

    from config import get_settings
    from tests.conftest import PG_ADMIN_URL
    from worker.db import database_unavailable

    monkeypatch.setenv("LISTSYNC_DATABASE_STATEMENT_TIMEOUT_SECONDS", "0.25")
    monkeypatch.setenv("LISTSYNC_DATABASE_CONNECT_TIMEOUT_SECONDS", "3")
    get_settings.cache_clear()
    dispose_engines()
    try:
        engine = get_engine(PG_ADMIN_URL)
        with engine.connect() as conn:
            assert conn.scalar(text("SHOW statement_timeout")) == "250ms"
            parameters = conn.connection.dbapi_connection.info.get_parameters()  # type: ignore[union-attr]
            assert parameters["connect_timeout"] == "3"
            with pytest.raises(OperationalError) as caught:
                conn.execute(text("SELECT pg_sleep(2)"))
        assert database_unavailable(caught.value)  # a timeout reads as "the database is away"
    finally:
        dispose_engines()
        get_settings.cache_clear()


def _start_layout(settings_env: dict[str, str], tmp_path: Path) -> Any:
    from tests.helpers import wait_for
    from worker.supervise import Child

    argv = [sys.executable, "-m", "worker.cli", "worker", "-c", "1"]
    env = {**os.environ, **settings_env}
    supervisor = Child("workers", argv, env, log=tmp_path / "workers.log", own_group=True).start()
    wait_for(
        lambda: supervisor.log_tail(100_000).count(" ready.") >= 2 or not supervisor.alive(),
        timeout=90,
    )
    assert supervisor.alive(), supervisor.log_tail()
    return supervisor


def _celery_children(pid: int) -> dict[str, int]:
    """The supervisor's Celery workers by node name (intake, worker)."""
    import psutil

    found = {}
    for child in psutil.Process(pid).children():
        argv = child.cmdline()
        found[argv[argv.index("--hostname") + 1].split("@")[0]] = child.pid
    return found


def _running(pid: int) -> bool:
    import psutil

    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def test_listsync_worker_runs_intake_apart_from_the_other_queues_and_stops_them_together(
    db: str, settings_env: dict[str, str], tmp_path: Path
) -> None:
    # The default layout: a flush waiting on Mailchimp never holds a process intake needs.
    from worker.app import app

    supervisor = _start_layout(settings_env, tmp_path)
    try:
        assert set(_celery_children(supervisor.pid)) == {"intake", "worker"}
        replies = app.control.inspect(timeout=5).active_queues() or {}
        queues = {node.split("@")[0]: sorted(q["name"] for q in qs) for node, qs in replies.items()}
        assert queues == {"intake": ["signups"], "worker": ["maintenance", "optouts", "sync"]}
        everyone = [supervisor.pid, *descendants(supervisor.pid)]
        supervisor.terminate()  # a warm shutdown of both
        supervisor.wait_or_kill(60)
        assert supervisor.exit_code() == 0, supervisor.log_tail()
        assert not [p for p in everyone if _running(p)]
    finally:
        supervisor.kill()


def test_when_one_worker_of_the_layout_dies_the_other_is_stopped_and_the_status_says_so(
    db: str, settings_env: dict[str, str], tmp_path: Path
) -> None:
    # A supervisor above (compose, systemd) restarts the layout whole, never half of it.
    from tests.helpers import wait_for

    supervisor = _start_layout(settings_env, tmp_path)
    try:
        workers = _celery_children(supervisor.pid)
        left = [workers["worker"], *descendants(workers["worker"]), *descendants(workers["intake"])]
        os.kill(workers["intake"], signal.SIGKILL)
        supervisor.wait_or_kill(60)
        assert supervisor.exit_code() not in (0, None), supervisor.log_tail()
        assert "intake exited with status" in supervisor.log_tail()
        # The other worker and its pool, and the dead one's pool: nothing is left running.
        wait_for(lambda: not [p for p in left if _running(p)], timeout=30)
    finally:
        supervisor.kill()
