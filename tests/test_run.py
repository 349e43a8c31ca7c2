"""`listsync run`: everything on one machine with embedded defaults, and nothing left behind."""

from __future__ import annotations

import os
import re
import signal
import socket
import sqlite3
import stat
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from tests.helpers import wait_for
from worker.addresses import email_hash
from worker.cli.processes import free_port


def descendants(pid: int) -> set[int]:
    """All processes below `pid` (Linux /proc)."""
    found: set[int] = set()
    todo = [pid]
    while todo:
        current = todo.pop()
        for task in Path(f"/proc/{current}/task").glob("*"):
            try:
                children = (task / "children").read_text().split()
            except OSError:
                continue
            for child in map(int, children):
                if child not in found:
                    found.add(child)
                    todo.append(child)
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
    except OSError:
        return False
    return state != "Z"


def port_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


class Run:
    def __init__(self, proc: subprocess.Popen[str], web_port: int) -> None:
        self.proc = proc
        self.web_port = web_port
        self.lines: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line)

    @property
    def text(self) -> str:
        return "".join(self.lines)

    def find(self, pattern: str) -> re.Match[str] | None:
        return re.search(pattern, self.text)


@pytest.fixture
def listsync_run(tmp_path: Path) -> Iterator[Run]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LISTSYNC_")}
    env["LISTSYNC_METRICS_PORT"] = str(free_port())  # two runs at once: not both the default
    port = free_port()
    (tmp_path / "var").mkdir()
    (tmp_path / "var").chmod(0o755)  # as an older listsync, or a umask of 022, left it
    proc = subprocess.Popen(
        [sys.executable, "-m", "worker.cli", "run", "--port", str(port)],
        cwd=tmp_path,
        env={**env, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    run = Run(proc, port)
    try:
        wait_for(lambda: "listsync is running" in run.text or proc.poll() is not None, 60)
        assert proc.poll() is None, run.text
        yield run
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        if proc.stdout is not None:
            proc.stdout.close()


def test_run_starts_everything_with_embedded_defaults_and_stops_cleanly(
    listsync_run: Run, tmp_path: Path
) -> None:
    run = listsync_run
    text = run.text
    assert "embedded SQLite file var/listsync.db" in text
    assert "embedded Redis server" in text
    assert "for trying listsync out: production queues on RabbitMQ" in text
    assert "EMULATOR" in text
    broker = run.find(r"embedded Redis server at (redis://127\.0\.0\.1:(\d+)/0)")
    emulator = run.find(r"EMULATOR at (http://127\.0\.0\.1:(\d+)/3\.0), audience (\w+)")
    assert broker and emulator
    redis_port, emulator_port = int(broker.group(2)), int(emulator.group(2))
    env = {**os.environ, "LISTSYNC_BROKER_URL": broker.group(1)}

    # The usual Celery command sees the workers (once they have booted).
    def ping() -> str:
        result = subprocess.run(
            [sys.executable, "-m", "celery", "-A", "worker", "inspect", "ping", "--timeout", "3"],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        both = "intake@" in result.stdout and "worker@" in result.stdout
        return result.stdout if result.returncode == 0 and both else ""

    assert "pong" in wait_for(ping, timeout=90, interval=1)

    # The web app answers, and a signup reaches the emulator's audience.
    assert requests.get(f"http://127.0.0.1:{run.web_port}/healthz", timeout=5).ok
    enqueue = subprocess.run(
        [
            sys.executable,
            "-m",
            "worker.cli",
            "enqueue",
            "run.test@trust.org",
            "--form",
            "newsletter_signup",
        ],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert enqueue.returncode == 0, enqueue.stderr
    member_url = (
        f"http://127.0.0.1:{emulator_port}/_emulator/lists/{emulator.group(3)}/members/"
        + email_hash("run.test@trust.org")
    )
    wait_for(lambda: requests.get(member_url, timeout=5).status_code == 200, timeout=60)
    assert requests.get(member_url, timeout=5).json()["status"] == "subscribed"

    # The emulator's webhook points at this run: an unsubscribe there comes home.
    admin = f"http://127.0.0.1:{emulator_port}/_emulator/lists/{emulator.group(3)}"
    unsubscribe = requests.post(
        f"{admin}/actions/unsubscribe", json={"email": "run.test@trust.org"}, timeout=5
    )
    assert unsubscribe.ok, unsubscribe.text
    database = sqlite3.connect(tmp_path / "var" / "listsync.db")

    def local_status() -> str:
        row = database.execute(
            "SELECT status FROM contact WHERE email_hash = ?", (email_hash("run.test@trust.org"),)
        ).fetchone()
        return str(row[0]) if row else ""

    wait_for(lambda: local_status() == "unsubscribed", timeout=60)
    database.close()
    run_env = (tmp_path / "var" / "run.env").read_text()
    assert f"LISTSYNC_BROKER_URL={broker.group(1)}" in run_env
    # Owner-only: var/ (narrowed), this run's secrets, the database, the embedded Redis.
    var = tmp_path / "var"
    assert [stat.S_IMODE(p.stat().st_mode) for p in (var, var / "run.env", var / "redis")] == [
        0o700,
        0o600,
        0o700,
    ]
    assert stat.S_IMODE((var / "listsync.db").stat().st_mode) & 0o077 == 0
    # The webhook URL is printed with its (generated) secret masked.
    secret = re.search(r"LISTSYNC_WEBHOOK_SECRETS=(\S+)", run_env)
    assert secret is not None and secret.group(1) not in run.text
    assert f"http://127.0.0.1:{run.web_port}/v1/mailchimp/webhook/***" in run.text

    children = descendants(run.proc.pid)
    assert len(children) >= 5  # redis, emulator, intake, worker, beat, web (+ pool processes)
    run.proc.send_signal(signal.SIGINT)
    assert run.proc.wait(60) == 0, run.text
    assert "stopped" in run.text
    assert not (tmp_path / "var" / "run.env").exists()
    wait_for(lambda: not any(alive(pid) for pid in children), timeout=30)
    for port in (redis_port, emulator_port, run.web_port):
        assert not port_open(port)


def test_run_killed_outright_takes_its_embedded_redis_down(listsync_run: Run) -> None:
    broker = listsync_run.find(r"embedded Redis server at redis://127\.0\.0\.1:(\d+)/0")
    assert broker
    children = descendants(listsync_run.proc.pid)
    listsync_run.proc.kill()  # SIGKILL: no cleanup code of ours runs
    listsync_run.proc.wait(10)
    wait_for(lambda: not port_open(int(broker.group(1))), timeout=30)
    wait_for(lambda: not any(alive(pid) for pid in children), timeout=60)


def test_run_refuses_an_unreachable_broker_with_one_line(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LISTSYNC_")}
    env["LISTSYNC_BROKER_URL"] = "redis://127.0.0.1:1/0"
    result = subprocess.run(
        [sys.executable, "-m", "worker.cli", "run"],
        cwd=tmp_path,
        env={**env, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 1
    assert "LISTSYNC_BROKER_URL" in result.stderr and "Traceback" not in result.stderr
