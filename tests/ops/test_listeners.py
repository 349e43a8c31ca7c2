"""The web app's two listeners, as `listsync web` serves them: the public one (intake,
webhook, probes) and the internal one (/metrics and the probes), each refusing the other's
routes; the API schema and its docs only when a setting asks for them."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from tests.helpers import wait_for
from worker.cli.processes import free_port
from worker.supervise import Child


def answers(url: str) -> bool:
    try:
        return requests.get(url, timeout=1).status_code < 500
    except requests.RequestException:
        return False


@pytest.fixture(params=[1, 2], ids=["one process", "two workers"])
def web(
    request: pytest.FixtureRequest, db: str, settings_env: dict[str, str], tmp_path: Path
) -> Iterator[tuple[str, str]]:
    public, internal = free_port(), free_port()
    env = {**os.environ, **settings_env, "LISTSYNC_METRICS_PORT": str(internal)}
    argv = [sys.executable, "-m", "worker.cli", "web", "--port", str(public)]
    argv += ["--workers", str(request.param)]
    child = Child("web", argv, env, log=tmp_path / "web.log", own_group=True).start()
    urls = (f"http://127.0.0.1:{public}", f"http://127.0.0.1:{internal}")
    try:
        wait_for(lambda: all(answers(u + "/healthz") for u in urls), timeout=60)
        yield urls
    finally:
        child.stop(10)


def test_metrics_are_served_on_the_internal_listener_only(web: tuple[str, str]) -> None:
    public, internal = web
    scrape = requests.get(internal + "/metrics", timeout=10)
    assert scrape.status_code == 200 and "listsync_sync_jobs" in scrape.text
    not_found = requests.get(public + "/no/such/route", timeout=5)
    hidden = requests.get(public + "/metrics", timeout=5)
    assert (hidden.status_code, hidden.content) == (404, not_found.content)
    for path in ("/healthz", "/readyz"):
        assert requests.get(internal + path, timeout=5).status_code == 200
        assert requests.get(public + path, timeout=5).status_code == 200
    # The internal listener serves nothing of the website's side.
    assert requests.post(internal + "/v1/signups", json={}, timeout=5).status_code == 404
    assert requests.get(internal + "/v1/mailchimp/webhook/x", timeout=5).status_code == 404


def test_the_schema_and_its_docs_are_off_unless_asked_for(web: tuple[str, str]) -> None:
    public, _ = web
    for path in ("/docs", "/openapi.json", "/redoc"):
        assert requests.get(public + path, timeout=5).status_code == 404


def test_with_docs_on_the_schema_is_served_and_still_describes_every_route(
    monkeypatch: pytest.MonkeyPatch, db: str
) -> None:
    from fastapi.testclient import TestClient

    from config import get_settings
    from worker.web.app import create_app

    off = create_app()
    assert "/v1/signups" in off.openapi()["paths"]  # testable, whatever the setting
    monkeypatch.setenv("LISTSYNC_WEB_DOCS", "true")
    get_settings.cache_clear()
    with TestClient(create_app()) as client:
        schema = client.get("/openapi.json").json()
        assert "/v1/signups/{key}" in schema["paths"]
        assert client.get("/docs").status_code == 200
