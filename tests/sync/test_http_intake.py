"""POST /v1/signups: the HTTP intake, through the real ASGI app."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from worker.db import session_scope
from worker.models import Contact, Submission, SubmissionIP, SyncJob
from worker.signups.message import build_message
from worker.web.app import create_app

TOKEN = "test-intake-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture
def client(db: str, redis_client: object) -> Iterator[TestClient]:
    with TestClient(create_app()) as client:
        yield client


def rows() -> dict[str, int]:
    with session_scope() as session:
        return {
            m.__tablename__: session.scalar(select(func.count()).select_from(m)) or 0
            for m in (Contact, Submission, SubmissionIP, SyncJob)
        }


def test_valid_signup_is_accepted_with_its_submission_id(client: TestClient) -> None:
    message = build_message("web.person@trust.org", "newsletter_signup", ip="192.0.2.10")
    response = client.post("/v1/signups", json=message, headers=AUTH)
    assert response.status_code == 202
    body = response.json()
    assert body["created"] is True and isinstance(body["submission_id"], int)
    assert rows() == {"contact": 1, "submission": 1, "submission_ip": 1, "sync_job": 1}


def test_repeat_with_the_same_idempotency_key_returns_the_same_id(client: TestClient) -> None:
    message = build_message("twice@trust.org", "newsletter_signup", idempotency_key="form-77-abc")
    first = client.post("/v1/signups", json=message, headers=AUTH).json()
    second = client.post("/v1/signups", json=message, headers=AUTH).json()
    assert second == {
        "key": "form-77-abc",
        "submission_id": first["submission_id"],
        "created": False,
        "state": "stored",
    }
    assert rows()["submission"] == 1


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer wrong-token"},
        {"Authorization": f"Basic {TOKEN}"},
        {"Authorization": f"Bearer {TOKEN}x"},
        {"Authorization": f"Bearer {TOKEN[:-1]}"},
    ],
)
def test_missing_or_wrong_token_is_401_and_writes_nothing(
    client: TestClient, headers: dict[str, str]
) -> None:
    message = build_message("intruder@trust.org", "newsletter_signup")
    response = client.post("/v1/signups", json=message, headers=headers)
    assert response.status_code == 401
    assert TOKEN not in response.text
    assert rows()["submission"] == 0


def test_invalid_signup_is_422_naming_each_field_without_echoing_it(client: TestClient) -> None:
    message = {**build_message("bad-address", "nope"), "extra": "x"}
    response = client.post("/v1/signups", json=message, headers=AUTH)
    assert response.status_code == 422
    fields = {p["field"] for p in response.json()["detail"]}
    assert "extra" in fields
    assert "bad-address" not in response.text
    assert rows() == {"contact": 0, "submission": 0, "submission_ip": 0, "sync_job": 0}


def test_unknown_form_is_422(client: TestClient) -> None:
    message = build_message("someone@trust.org", "no_such_form")
    response = client.post("/v1/signups", json=message, headers=AUTH)
    assert response.status_code == 422
    assert response.json()["detail"] == [{"field": "form", "reason": "unknown form"}]


def test_not_json_is_415_and_garbage_json_is_422(client: TestClient) -> None:
    form = client.post(
        "/v1/signups",
        content=b"email=a@b.org",
        headers={**AUTH, "Content-Type": "application/x-www-form-urlencoded"},
    )
    assert form.status_code == 415
    garbage = client.post(
        "/v1/signups", content=b"{not json", headers={**AUTH, "Content-Type": "application/json"}
    )
    assert garbage.status_code == 422
    assert garbage.json()["detail"][0]["field"] == "body"


def test_oversized_body_is_413(client: TestClient) -> None:
    body = json.dumps({"email": "big@trust.org", "form": "survey", "fields": {"a": "x" * 70000}})
    response = client.post(
        "/v1/signups", content=body, headers={**AUTH, "Content-Type": "application/json"}
    )
    assert response.status_code == 413
    assert rows()["submission"] == 0


def test_no_address_in_logs_of_a_rejected_call(
    client: TestClient, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    message = build_message("secret.person@@trust.org", "newsletter_signup")
    assert client.post("/v1/signups", json=message, headers=AUTH).status_code == 422
    assert "secret.person" not in caplog.text


def test_database_down_is_503(client: TestClient, monkeypatch: pytest.MonkeyPatch) -> None:
    from config import get_settings
    from worker.db import dispose_engines

    monkeypatch.setenv("LISTSYNC_DATABASE_URL", "postgresql://nobody@127.0.0.1:1/none")
    get_settings.cache_clear()
    dispose_engines()
    message = build_message("later@trust.org", "newsletter_signup")
    response = client.post("/v1/signups", json=message, headers=AUTH)
    assert response.status_code == 503
    assert "later@" not in response.text
