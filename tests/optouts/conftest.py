"""Fixtures for the opt-out tests: settings with an audience, a migrated database, a flushed
Redis DB and the real ASGI app."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.optouts.payloads import LIST_ID, TestClient


@pytest.fixture
def optout_env(settings_env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """The test settings plus an audience id and merge fields including a nested one."""
    from config import get_settings

    extra = {"LISTSYNC_MAILCHIMP_LIST_ID": LIST_ID, "LISTSYNC_MERGE_FIELDS": "FNAME,LNAME,ADDRESS"}
    for key, value in extra.items():
        monkeypatch.setenv(key, value)
    settings_env.update(extra)
    get_settings.cache_clear()
    return settings_env


@pytest.fixture
def store(optout_env: dict[str, str], db: str, redis_client: Any) -> str:
    """A migrated database and a flushed Redis DB, with the opt-out settings."""
    return db


@pytest.fixture
def client(store: str) -> Iterator[TestClient]:
    from worker.web.app import create_app

    with TestClient(create_app()) as test_client:
        yield test_client
