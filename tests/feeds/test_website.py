"""What a website sees: values Mailchimp would refuse are refused at intake (422 naming the
field, never the value), and GET /v1/signups/{key} tells what became of a signup, with no
personal data, through the real ASGI app, the real worker code and the emulator."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from tests.conftest import Audience
from worker.db import session_scope
from worker.feeds.check import run_check
from worker.mailchimp import get_gateway
from worker.models import Contact, ContactStatus, RejectedSignup, Submission
from worker.signups import flush
from worker.signups.message import build_message
from worker.signups.store import receive
from worker.web.app import create_app

TOKEN = "test-intake-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}

FORMS = """
[forms.order]
consent = "implied"
fields = ["size", "born", "phone", "lang", "site"]
merge_fields = { size = "SIZE", born = "BORN", phone = "PHONE", site = "SITE" }
language_field = "lang"
"""


@pytest.fixture
def typed(
    audience: Audience, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[TestClient]:
    """An audience with typed merge fields, a form mapping to them, checked; a web client."""
    from config import get_settings

    list_id = audience.emu.create_list(
        merge_fields=[
            {"tag": "SIZE", "name": "Size", "type": "dropdown", "choices": ["S", "M", "L"]},
            {
                "tag": "BORN",
                "name": "Born",
                "type": "date",
                "options": {"date_format": "DD/MM/YYYY"},
            },
            {"tag": "PHONE", "name": "Phone", "type": "phone", "options": {"phone_format": "US"}},
            {"tag": "SITE", "name": "Site", "type": "url"},
        ]
    )
    forms = tmp_path / "forms.toml"
    forms.write_text(FORMS)
    for key, value in {
        "LISTSYNC_MAILCHIMP_LIST_ID": list_id,
        "LISTSYNC_FORMS_FILE": str(forms),
        "LISTSYNC_MERGE_FIELDS": "SIZE,BORN,PHONE,SITE",
    }.items():
        monkeypatch.setenv(key, value)
    get_settings.cache_clear()
    assert run_check(get_gateway()).ok
    with TestClient(create_app()) as client:
        yield client


@pytest.mark.parametrize(
    ("fields", "refused"),
    [
        ({"size": "XXL"}, "fields.size"),
        ({"born": "1999-13-40"}, "fields.born"),
        ({"born": "12/31/1999"}, "fields.born"),  # month first, but the field is DD/MM/YYYY
        ({"phone": "call me maybe"}, "fields.phone"),
        ({"site": "not a url"}, "fields.site"),
        ({"lang": "english please"}, "fields.lang"),
    ],
)
def test_a_value_mailchimp_would_refuse_is_a_422_naming_the_field_and_stores_nothing(
    typed: TestClient, fields: dict[str, str], refused: str
) -> None:
    message = build_message("val@trust.org", "order", fields=fields)
    response = typed.post("/v1/signups", json=message, headers=AUTH)
    assert response.status_code == 422
    problems = response.json()["detail"]
    assert [p["field"] for p in problems] == [refused]
    assert all(value not in response.text for value in fields.values())
    with session_scope() as session:
        assert session.scalar(select(func.count()).select_from(Submission)) == 0
    # The same message from the queue is recorded as rejected, reasons only.
    with pytest.raises(ValueError, match=refused):
        receive(message, channel="queue")
    with session_scope() as session:
        reasons = list(session.scalars(select(RejectedSignup.reason)))
    assert reasons and all(value not in r for r in reasons for value in fields.values())


def test_values_of_the_right_type_go_through_and_reach_the_member(
    typed: TestClient, audience: Audience
) -> None:
    fields = {
        "size": "M",
        "born": "31/12/1999",
        "phone": "(555) 123-4567",
        "lang": "es",
        "site": "https://example.org/me",
    }
    message = build_message("ok@trust.org", "order", fields=fields)
    assert typed.post("/v1/signups", json=message, headers=AUTH).status_code == 202
    assert flush.flush().done == 1
    from config import get_settings

    member = audience.emu.member("ok@trust.org", list_id=get_settings().mailchimp_list_id)
    assert member is not None and member["merge_fields"]["SIZE"] == "M"
    assert member["language"] == "es"


def state(client: TestClient, key: str) -> tuple[int, dict[str, object]]:
    response = client.get(f"/v1/signups/{key}", headers=AUTH)
    return response.status_code, response.json()


@pytest.fixture
def client(audience: Audience) -> Iterator[TestClient]:
    with TestClient(create_app()) as client:
        yield client


def post(
    client: TestClient,
    email: str,
    key: str,
    form: str = "newsletter_signup",
    *,
    fields: dict[str, object] | None = None,
    newsletter: bool | None = None,
) -> None:
    message = build_message(email, form, idempotency_key=key, fields=fields, newsletter=newsletter)
    response = client.post("/v1/signups", json=message, headers=AUTH)
    assert response.status_code == 202, response.text
    assert response.headers["location"] == f"/v1/signups/{key}"
    assert response.json()["key"] == key


def test_a_website_can_tell_what_became_of_each_signup(
    client: TestClient, audience: Audience
) -> None:
    audience.emu.seed_member("left@trust.org", "unsubscribed", list_id=audience.list_id)
    post(client, "new@trust.org", "site-key-new-0001")
    post(client, "left@trust.org", "site-key-left-001")
    post(client, "quiet@trust.org", "site-key-none-001", "contact_form", newsletter=False)
    post(client, "fake@example.com", "site-key-fake-001")
    assert state(client, "site-key-new-0001")[1]["state"] == "queued"
    flush.flush()
    assert state(client, "site-key-new-0001") == (
        200,
        {
            "key": "site-key-new-0001",
            "state": "synced",
            "reason": None,
            "received_at": state(client, "site-key-new-0001")[1]["received_at"],
        },
    )
    assert state(client, "site-key-left-001")[1] | {"received_at": None} == {
        "key": "site-key-left-001",
        "state": "suppressed",
        "reason": "previously_unsubscribed",
        "received_at": None,
    }
    assert state(client, "site-key-none-001")[1]["reason"] == "no_consent"
    assert state(client, "site-key-fake-001")[1]["reason"] == "invalid_address"
    # Nothing of the person in any answer; no answer without a token; unknown keys 404.
    for key in ("site-key-new-0001", "site-key-left-001"):
        answer = client.get(f"/v1/signups/{key}", headers=AUTH).text
        assert "@" not in answer and "trust.org" not in answer
    assert client.get("/v1/signups/site-key-new-0001").status_code == 401
    assert state(client, "no-such-key-0001")[0] == 404


def test_a_double_opt_in_signup_is_pending_confirmation(
    client: TestClient, audience: Audience
) -> None:
    post(
        client, "sure@trust.org", "site-key-survey-1", "survey", fields={"newsletter_opt_in": True}
    )
    flush.flush()
    assert state(client, "site-key-survey-1")[1]["state"] == "pending_confirmation"
    with session_scope() as session:
        assert session.scalars(select(Contact.status)).one() == ContactStatus.PENDING
