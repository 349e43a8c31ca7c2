"""Fixtures for the hostile-input tests: the real ASGI app on a fresh database, the test
secrets, and row counts to prove that refused input wrote nothing."""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import func, select
from starlette.exceptions import StarletteDeprecationWarning

with warnings.catch_warnings():
    # Starlette 1.x prefers httpx2 for its TestClient; only this import warns about httpx.
    warnings.simplefilter("ignore", StarletteDeprecationWarning)
    from starlette.testclient import TestClient

TOKEN = "test-intake-token-0123456789"
SECRET = "test-webhook-secret-0123456789"
LIST_ID = "a1b2c3d4e5"
WEBHOOK = "/v1/mailchimp/webhook/"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
FORM = {"content-type": "application/x-www-form-urlencoded"}


@pytest.fixture
def hostile_env(settings_env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """The shared test settings plus an audience id, so webhook events can be stored."""
    from config import get_settings

    monkeypatch.setenv("LISTSYNC_MAILCHIMP_LIST_ID", LIST_ID)
    settings_env["LISTSYNC_MAILCHIMP_LIST_ID"] = LIST_ID
    # The fuzzers read the schema from /openapi.json, served only when asked for.
    monkeypatch.setenv("LISTSYNC_WEB_DOCS", "true")
    settings_env["LISTSYNC_WEB_DOCS"] = "true"
    get_settings.cache_clear()
    return settings_env


@pytest.fixture
def app(hostile_env: dict[str, str], db: str, redis_client: object) -> Any:
    """The real web app on this test's migrated database and flushed Redis DB."""
    from worker.web.app import create_app

    return create_app()


@pytest.fixture
def client(app: Any) -> Iterator[TestClient]:
    with TestClient(app) as test_client:
        yield test_client


def counts() -> dict[str, int]:
    """Rows in every table intake or the webhook writes."""
    from worker.db import session_scope
    from worker.models import (
        Contact,
        RejectedSignup,
        Submission,
        SubmissionIP,
        SyncJob,
        WebhookEvent,
    )

    tables = (Contact, Submission, SubmissionIP, SyncJob, WebhookEvent, RejectedSignup)
    with session_scope() as session:
        return {
            t.__tablename__: int(session.scalar(select(func.count()).select_from(t)) or 0)
            for t in tables
        }
