"""GET /healthz (the process is up) and GET /readyz (database and broker reachable)."""

from __future__ import annotations

import pytest
import requests


def test_healthz_answers_while_the_process_is_up(live_web: str) -> None:
    response = requests.get(live_web + "/healthz", timeout=5)
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


def test_readyz_is_ok_when_database_and_broker_answer(live_web: str) -> None:
    response = requests.get(live_web + "/readyz", timeout=5)
    assert response.status_code == 200
    assert response.json() == {"status": "ok", "checks": {"database": "ok", "broker": "ok"}}


PASSWORD = "secret-password-0123456789"


@pytest.mark.parametrize(
    ("variable", "value", "down"),
    [
        ("LISTSYNC_DATABASE_URL", f"postgresql://app:{PASSWORD}@127.0.0.1:1/none", "database"),
        ("LISTSYNC_BROKER_URL", f"redis://:{PASSWORD}@127.0.0.1:1/0", "broker"),
    ],
)
def test_readyz_is_503_naming_what_is_unreachable_without_its_address(
    live_web: str,
    settings_env: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
    variable: str,
    value: str,
    down: str,
) -> None:
    from config import get_settings

    monkeypatch.setenv(variable, value)
    get_settings.cache_clear()

    response = requests.get(live_web + "/readyz", timeout=15)

    assert response.status_code == 503
    body = response.json()
    assert body["status"] == "unavailable"
    assert body["checks"][down] == "unreachable"
    assert set(body["checks"].values()) == {"ok", "unreachable"}
    assert PASSWORD not in response.text and "127.0.0.1" not in response.text
    # Liveness is not readiness: the process itself is still up.
    assert requests.get(live_web + "/healthz", timeout=5).status_code == 200
