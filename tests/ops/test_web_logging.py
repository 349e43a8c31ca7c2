"""The web's own log: listsync's loggers at LISTSYNC_LOG_LEVEL, the webhook secret never in it."""

from __future__ import annotations

import logging
import os
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
import uvicorn

from tests.helpers import wait_for
from worker.cli.processes import free_port, web_argv

SECRET = "test-webhook-secret-0123456789"  # LISTSYNC_WEBHOOK_SECRETS in the tests


def web_log(env: dict[str, str], tmp_path: Path) -> Iterator[tuple[str, Path]]:
    port = free_port()
    log = tmp_path / "web.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            web_argv("127.0.0.1", port), env=env, stdout=out, stderr=subprocess.STDOUT
        )
    base = f"http://127.0.0.1:{port}"

    def up() -> bool:
        assert proc.poll() is None, log.read_text()
        try:
            return requests.get(base + "/healthz", timeout=1).ok
        except requests.RequestException:
            return False

    try:
        wait_for(up, timeout=30)
        yield base, log
    finally:
        proc.terminate()
        proc.wait(15)


@pytest.mark.parametrize(("level", "shown"), [("info", True), ("WARNING", False)])
def test_intake_refusals_are_logged_at_the_configured_level(
    db: str, settings_env: dict[str, str], tmp_path: Path, level: str, shown: bool
) -> None:
    env = {**os.environ, **settings_env, "LISTSYNC_LOG_LEVEL": level}
    for base, log in web_log(env, tmp_path):
        refused = requests.post(
            base + "/v1/signups", json={}, headers={"Authorization": "Bearer wrong"}, timeout=5
        )
        assert refused.status_code == 401
        # The line is written before the answer goes out.
        assert ("intake refused: bad_token" in log.read_text()) is shown


def test_an_unknown_log_level_is_refused_naming_the_variable(
    settings_env: dict[str, str],
) -> None:
    from tests.helpers import run_listsync

    result = run_listsync("status", env={**settings_env, "LISTSYNC_LOG_LEVEL": "LOUD"})

    assert result.returncode == 1
    assert "LISTSYNC_LOG_LEVEL" in result.stderr


def test_the_access_log_hides_the_secret_behind_a_root_path(
    db: str, settings_env: dict[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    from worker.web.app import create_app

    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(
            create_app(), port=port, root_path="/lists", access_log=True, log_config=None
        )
    )
    thread = threading.Thread(target=server.run, daemon=True)
    caplog.set_level(logging.INFO, logger="uvicorn.access")
    thread.start()
    wait_for(lambda: server.started, timeout=10)
    try:
        for path in (
            f"/lists/v1/mailchimp/webhook/{SECRET}?x=1",
            f"/v1/mailchimp/webhook/{SECRET}",
        ):
            requests.get(f"http://127.0.0.1:{port}{path}", timeout=5)
        wait_for(lambda: len(caplog.records) >= 2, timeout=10)
    finally:
        server.should_exit = True
        thread.join(10)

    lines = [r.getMessage() for r in caplog.records if r.name == "uvicorn.access"]
    assert len(lines) == 2
    assert all("/v1/mailchimp/webhook/***" in line for line in lines)
    assert SECRET not in caplog.text
