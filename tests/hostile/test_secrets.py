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
    monkeypatch.setenv(
        "LISTSYNC_DATABASE_URL",
        "postgresql+psycopg://u:unreachable-db-password-01@127.0.0.1:1/none",
    )
    get_settings.cache_clear()
    client.post("/v1/signups", content=signup, headers={**AUTH, **json_type})
    client.post(WEBHOOK + SECRET, content=b"type=campaign", headers=FORM)
    client.get("/readyz")
    # The test's own HTTP client logs the URLs it calls; every other record is the app's.
    ours = [r for r in caplog.records if not r.name.startswith(("httpx", "httpcore"))]
    assert any("refused" in r.getMessage() for r in ours)
    for record in ours:
        text = record.getMessage() + (record.exc_text or "")
        for secret in (SECRET, TOKEN, "logged@example.org", "unreachable-db-password-01"):
            assert secret not in text, record.name


def _env_example() -> dict[str, str]:
    from tests.conftest import ROOT

    values = {}
    for line in (ROOT / ".env.example").read_text().splitlines():
        name, sep, value = line.partition("=")
        if sep and name.startswith("LISTSYNC_") and not line.startswith("#"):
            values[name] = value
    return values


SECRET_SETTINGS = (
    "LISTSYNC_WEBHOOK_SECRETS",
    "LISTSYNC_INTAKE_TOKENS",
    "LISTSYNC_WEBHOOK_SIGNING_SECRET",
    "LISTSYNC_MAILCHIMP_API_KEY",
    "LISTSYNC_FLOWER_BASIC_AUTH",
)


@pytest.mark.parametrize("name", sorted(set(SECRET_SETTINGS) & set(_env_example())))
def test_the_example_files_placeholders_are_refused_naming_the_variable_only(name: str) -> None:
    from tests.helpers import run_listsync

    value = _env_example()[name]
    result = run_listsync("db", "upgrade", env={name: value})
    assert result.returncode == 1
    assert name in result.stderr and "placeholder" in result.stderr
    secret = value.partition(":")[2] if name.endswith("BASIC_AUTH") else value
    assert secret not in result.stderr


@pytest.mark.parametrize("name", SECRET_SETTINGS)
@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("0123456789abcde", "at least 16 characters"),  # one short
        ("my-change-me-0123456789", "placeholder"),
        ("new-secret", "placeholder"),  # the docs' example
    ],
)
def test_every_secret_and_token_needs_16_real_characters(
    name: str, value: str, problem: str
) -> None:
    from pydantic import ValidationError

    from config import Settings

    given = f"ops:{value}" if name.endswith("BASIC_AUTH") else value
    with pytest.raises(ValidationError) as caught:
        Settings(**{name.removeprefix("LISTSYNC_").lower(): given})  # type: ignore[arg-type]
    assert problem in str(caught.value) and value not in str(caught.value)
    good = "0123456789abcdef"  # 16: enough
    accepted = Settings(  # type: ignore[arg-type]
        **{name.removeprefix("LISTSYNC_").lower(): f"ops:{good}" if "AUTH" in name else good}
    )
    assert accepted is not None


def test_a_placeholder_database_password_is_refused() -> None:
    from pydantic import ValidationError

    from config import Settings

    url = "postgresql://listsync:change-me-postgres-password-0123456789@db/listsync"
    with pytest.raises(ValidationError) as caught:
        Settings(database_url=url)
    assert "placeholder" in str(caught.value) and "change-me-postgres" not in str(caught.value)
