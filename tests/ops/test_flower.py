"""`listsync flower`: authentication required, read-only API, and no PII anywhere in Flower."""

from __future__ import annotations

import os
import re
import secrets
from pathlib import Path

import pytest
import requests

from tests.conftest import DB_BACKENDS, Broker
from tests.helpers import run_listsync, wait_for
from tests.ops.conftest import Processes, answers, get, listsync_argv

PASSWORD = "flower-test-password-0123"
AUTH = ("ops", PASSWORD)
#: The production database (PostgreSQL when it is up): these tests start real processes.
PRODUCTION_DB = DB_BACKENDS[-1:]


def start_flower(processes: Processes, env: dict[str, str], *args: str) -> str:
    from worker.cli.processes import free_port

    port = free_port()
    processes.start("flower", listsync_argv("flower", "--port", str(port), *args), env)
    url = f"http://127.0.0.1:{port}"
    wait_for(lambda: answers(url + "/healthcheck"), timeout=30)
    return url


@pytest.fixture
def flower_env() -> dict[str, str]:
    """The environment of a Flower with basic auth (it needs the broker only)."""
    return {**os.environ, "LISTSYNC_FLOWER_BASIC_AUTH": f"{AUTH[0]}:{PASSWORD}"}


def test_flower_refuses_to_start_without_basic_auth() -> None:
    result = run_listsync("flower", timeout=30)
    assert result.returncode == 1
    assert "LISTSYNC_FLOWER_BASIC_AUTH" in result.stderr
    assert "--insecure-local" in result.stderr


def test_flower_refuses_a_malformed_credential() -> None:
    result = run_listsync("flower", env={"LISTSYNC_FLOWER_BASIC_AUTH": "just-a-password"})
    assert result.returncode == 1
    assert "user:password" in result.stderr
    assert "just-a-password" not in result.stderr


def test_insecure_local_binds_loopback_only_and_refuses_any_other_address() -> None:
    anywhere = "0.0.0.0"  # noqa: S104 - the address we expect to be refused
    result = run_listsync("flower", "--insecure-local", "--address", anywhere, timeout=30)
    assert result.returncode == 2
    assert "127.0.0.1" in result.stderr


def _listening_addresses(port: int) -> set[str]:
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            address, hex_port = local.rsplit(":", 1)
            if state == "0A" and int(hex_port, 16) == port:
                found.add(address)
    return found


def test_insecure_local_flower_listens_on_loopback_only(
    processes: Processes, broker: Broker
) -> None:
    url = start_flower(processes, dict(os.environ), "--insecure-local")
    port = int(url.rsplit(":", 1)[1])
    assert _listening_addresses(port) == {"0100007F"}  # 127.0.0.1, nothing else
    assert "NO AUTHENTICATION" in processes.output("flower")


def test_flower_requires_auth_and_its_api_cannot_start_a_purge(
    processes: Processes, broker: Broker, flower_env: dict[str, str]
) -> None:
    url = start_flower(processes, flower_env)

    for path in ("/", "/tasks", "/api/workers", "/api/tasks"):
        assert get(url + path).status_code == 401
        assert get(url + path, auth=("ops", "wrong-password-000")).status_code == 401
    assert get(url + "/api/tasks", auth=AUTH).status_code == 200
    assert get(url + "/", auth=AUTH).status_code == 200

    for path in (
        "/api/task/send-task/listsync.retention.purge",
        "/api/task/async-apply/listsync.retention.purge",
        "/api/task/apply/listsync.retention.purge",
        "/api/task/send-task/listsync.optouts.erase",
        "/api/task/revoke/any-task-id",
        "/api/worker/shutdown/celery@anywhere",
    ):
        response = requests.post(url + path, auth=AUTH, json={}, timeout=10)
        assert response.status_code == 403, path
        assert "Read only" in response.text
    assert broker.queued("maintenance") == 0
    assert broker.queued("optouts") == 0

    # The password reaches Flower through its environment, not a command line `ps` shows.
    flower_pid = processes.started[0][1].pid
    cmdline = Path(f"/proc/{flower_pid}/cmdline").read_bytes().decode()
    assert "flower" in cmdline and "--read_only=true" in cmdline
    assert PASSWORD not in cmdline


@pytest.mark.parametrize("db_url", PRODUCTION_DB, indirect=True)
def test_no_signup_address_appears_anywhere_in_flower(
    processes: Processes,
    audience: object,
    settings_env: dict[str, str],
    db: str,
    broker: Broker,
    flower_env: dict[str, str],
) -> None:
    from sqlalchemy import func, select

    from worker.db import session_scope
    from worker.models import Submission
    from worker.publish import enqueue_signup

    env = {**flower_env, **settings_env}
    processes.start("worker", listsync_argv("worker", "--concurrency", "2"), env)
    url = start_flower(processes, env)
    workers = wait_for(lambda: get(url + "/api/workers?refresh=1", auth=AUTH).json(), timeout=30)
    worker_name = next(iter(workers))

    token = secrets.token_hex(4)
    addresses = [f"flower-pii-{token}-{i}@example.org" for i in range(12)]
    first_name = f"Zelda{token}"
    for address in addresses:
        enqueue_signup(email=address, form="newsletter_signup", fields={"first_name": first_name})

    seen: list[str] = []

    def look() -> str:
        # What an operator sees: the worker page runs inspect active/reserved/scheduled.
        for path in (f"/worker/{worker_name}", "/api/workers?refresh=1", "/api/tasks"):
            seen.append(get(url + path, auth=AUTH, timeout=15).text)
        return seen[-1]

    def all_stored() -> bool:
        look()
        with session_scope() as session:
            return session.scalar(select(func.count()).select_from(Submission)) == len(addresses)

    wait_for(all_stored, timeout=60, interval=0.2)

    def flushed() -> bool:
        look()
        tasks = get(url + "/api/tasks?taskname=listsync.sync.flush", auth=AUTH).json()
        return any(task.get("state") == "SUCCESS" for task in tasks.values())

    wait_for(flushed, timeout=60, interval=0.2)
    look()
    every_task = get(url + "/api/tasks", auth=AUTH).json()
    assert {"listsync.signups.receive", "listsync.sync.flush"} <= {
        task["name"] for task in every_task.values()
    }
    for task_id in every_task:
        seen.append(get(url + f"/api/task/info/{task_id}", auth=AUTH).text)
        seen.append(get(url + f"/task/{task_id}", auth=AUTH).text)
    table = "/tasks/datatable?draw=1&start=0&length=100&order[0][column]=0&columns[0][data]=name"
    seen.append(get(url + table, auth=AUTH).text)

    text = "\n".join(seen)
    for address in addresses:
        local_part = address.split("@")[0]
        assert local_part not in text, f"{local_part} shown by Flower"
    assert f"flower-pii-{token}" not in text
    assert first_name not in text
    assert "listsync.signups.receive" in text and "<masked>" in text  # we did look at them


def test_workers_send_every_task_event_under_stable_readable_names() -> None:
    from worker.app import app
    from worker.cli.processes import worker_argv

    assert app.conf.worker_send_task_events and app.conf.task_send_sent_event
    assert "-E" in worker_argv()
    app.loader.import_default_modules()
    names = {name for name in app.tasks if not name.startswith("celery.")}
    assert {"listsync.signups.receive", "listsync.sync.flush"} <= names
    for name in names:
        assert re.fullmatch(r"listsync\.[a-z]+\.[a-z_]+", name), name
