"""Fixtures of the operations tests: a live web server on our routers, rows, child processes."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.helpers import wait_for

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def live_web(db: str, broker: object) -> Iterator[str]:
    """Our health and metrics routers served by a real uvicorn on a free port; yields its URL."""
    import uvicorn
    from fastapi import FastAPI

    from worker.cli.processes import free_port
    from worker.web import health, metrics

    app = FastAPI()
    app.include_router(health.router)
    app.include_router(metrics.router)
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    wait_for(lambda: server.started, timeout=10)
    yield url
    server.should_exit = True
    thread.join(10)


def add_job(session: Any, state: str, created_at: datetime, **values: Any) -> Any:
    """A sync job row (the contact is not needed for what ops read)."""
    from worker.models import SyncJob

    job = SyncJob(email_hash="0" * 32, state=state, created_at=created_at, **values)
    session.add(job)
    return job


class Processes:
    """Child processes a test started: each in its own process group, all killed at the end."""

    def __init__(self, logs: Path) -> None:
        self.logs = logs
        self.started: list[tuple[str, subprocess.Popen[bytes]]] = []

    def start(self, name: str, argv: Sequence[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
        with (self.logs / f"{name}.log").open("wb") as log:  # the child keeps its own copy
            proc = subprocess.Popen(
                list(argv),
                env=env,
                cwd=ROOT,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.started.append((name, proc))
        return proc

    def output(self, name: str) -> str:
        return (self.logs / f"{name}.log").read_text(errors="replace")

    def stop_all(self) -> None:
        for _name, proc in reversed(self.started):
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGTERM)
        for _name, proc in reversed(self.started):
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            # Celery's pool children are in the same group: take any straggler along.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)


@pytest.fixture
def processes(tmp_path: Path) -> Iterator[Processes]:
    procs = Processes(tmp_path)
    try:
        yield procs
    finally:
        procs.stop_all()


def listsync_argv(*args: str) -> list[str]:
    """The `listsync` console script, as the venv would run it."""
    return [sys.executable, "-m", "worker.cli", *args]


def get(url: str, auth: tuple[str, str] | None = None, timeout: float = 5) -> requests.Response:
    return requests.get(url, auth=auth, timeout=timeout)


def answers(url: str, auth: tuple[str, str] | None = None, status: int = 200) -> bool:
    try:
        return get(url, auth=auth).status_code == status
    except requests.RequestException:
        return False
