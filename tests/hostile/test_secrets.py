"""Secrets under attack: every wrong webhook secret and intake token is refused alike, each
check compares against every configured secret in constant time, and no secret reaches a log.
(Settings reprs are covered by tests/test_foundation.py.)"""

from __future__ import annotations

import hmac
import logging
from typing import Any

import pytest

from config import get_settings
from tests.hostile.conftest import AUTH, FORM, SECRET, TOKEN, WEBHOOK, TestClient

OLD_SECRET = "old-webhook-secret-9876543210"
OLD_TOKEN = "old-intake-token-9876543210"


def wrong(right: str) -> list[str]:
    """Wrong values of every length 0..80, prefixes and extensions of the right one included."""
    values = {"x" * n for n in range(81)}
    values |= {right[:n] for n in range(len(right))}
    values |= {right + "x" * n for n in range(1, 81 - len(right))}
    values |= {right.upper(), right[::-1], right[:-1] + "X", "0" + right[1:]}
    return sorted(values - {right}, key=lambda v: (len(v), v))


def test_every_wrong_webhook_secret_gets_the_same_answer_as_an_unknown_route(
    client: TestClient,
) -> None:
    unknown = client.get("/no/such/route")
    answers = set()
    for candidate in wrong(SECRET):
        for response in (
            client.get(WEBHOOK + candidate),
            client.post(WEBHOOK + candidate, content=b"type=campaign", headers=FORM),
        ):
            answers.add((response.status_code, response.content, response.headers["content-type"]))
    assert answers == {(404, unknown.content, unknown.headers["content-type"])}
    assert client.get(WEBHOOK + SECRET).status_code == 200


def test_every_wrong_intake_token_gets_the_same_401(client: TestClient) -> None:
    body = b'{"email": "a@example.org", "form": "newsletter_signup"}'
    answers = set()
    headers: list[dict[str, str]] = [{}, {"Authorization": f"Basic {TOKEN}"}]
    headers += [{"Authorization": f"Bearer {candidate}"} for candidate in wrong(TOKEN)]
    for extra in headers:
        response = client.post(
            "/v1/signups", content=body, headers={**extra, "Content-Type": "application/json"}
        )
        answers.add(
            (response.status_code, response.content, response.headers.get("www-authenticate"))
        )
    assert answers == {(401, b'{"detail":"missing or invalid bearer token"}', "Bearer")}


@pytest.mark.parametrize("presented", ["new", "old", "wrong", "prefix"])
def test_each_check_compares_with_every_configured_secret_and_no_early_exit(
    client: TestClient, monkeypatch: pytest.MonkeyPatch, presented: str
) -> None:
    """Rotation keeps two secrets; whichever matches (or none), both are compared."""
    monkeypatch.setenv("LISTSYNC_WEBHOOK_SECRETS", f"{SECRET},{OLD_SECRET}")
    monkeypatch.setenv("LISTSYNC_INTAKE_TOKENS", f"{TOKEN},{OLD_TOKEN}")
    get_settings.cache_clear()
    calls: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def counting(a: Any, b: Any) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", counting)
    secret, token = {
        "new": (SECRET, TOKEN),
        "old": (OLD_SECRET, OLD_TOKEN),
        "wrong": ("w" * len(SECRET), "w" * len(TOKEN)),
        "prefix": (SECRET[:5], TOKEN[:5]),
    }[presented]

    client.get(WEBHOOK + secret)
    assert sorted(b for _, b in calls) == sorted([SECRET.encode(), OLD_SECRET.encode()])
    assert all(isinstance(a, bytes) for a, _ in calls)
    calls.clear()
    client.post("/v1/signups", content=b"{}", headers={"Authorization": f"Bearer {token}"})
    assert sorted(b for _, b in calls) == sorted([TOKEN.encode(), OLD_TOKEN.encode()])


def test_no_secret_or_token_reaches_any_log_record(
    client: TestClient, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    signup = b'{"email": "logged@example.org", "form": "newsletter_signup"}'
    json_type = {"Content-Type": "application/json"}
    client.post("/v1/signups", content=signup, headers={**AUTH, **json_type})
    client.post("/v1/signups", content=signup, headers={"Authorization": f"Bearer {TOKEN}x"})
    client.post("/v1/signups", content=b"{", headers={**AUTH, **json_type})
    client.post("/v1/signups", content=b"x" * 70_000, headers={**AUTH, **json_type})
    client.get(WEBHOOK + SECRET)
    client.get(WEBHOOK + SECRET[:-1])
    client.post(WEBHOOK + SECRET, content=b"type=a%00", headers=FORM)
    client.post(WEBHOOK + SECRET, content=b"type=x", headers={"content-type": "text/plain"})
    monkeypatch.setenv("LISTSYNC_DATABASE_URL", "postgresql+psycopg://u:pw@127.0.0.1:1/none")
    get_settings.cache_clear()
    client.post("/v1/signups", content=signup, headers={**AUTH, **json_type})
    client.post(WEBHOOK + SECRET, content=b"type=campaign", headers=FORM)
    client.get("/readyz")
    # The test's own HTTP client logs the URLs it calls; every other record is the app's.
    ours = [r for r in caplog.records if not r.name.startswith(("httpx", "httpcore"))]
    assert any("refused" in r.getMessage() for r in ours)
    for record in ours:
        text = record.getMessage() + (record.exc_text or "")
        for secret in (SECRET, TOKEN, "logged@example.org", ":pw@"):
            assert secret not in text, record.name
