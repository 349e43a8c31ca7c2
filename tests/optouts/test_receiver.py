"""The webhook receiver over the real ASGI app: authentication, limits, storage, dedupe."""

from __future__ import annotations

import hashlib
import hmac
import logging
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import func, select

from config import get_settings
from tests.helpers import wait_for
from tests.optouts.payloads import (
    FORM,
    OLD_SECRET,
    SECRET,
    URL,
    TestClient,
    body,
    campaign,
    cleaned,
    post,
    profile,
    subscribe,
    unsubscribe,
    upemail,
)
from worker import metrics
from worker.db import session_scope
from worker.models import EventState, WebhookEvent

AT = datetime(2024, 3, 1, 12, 30, 5, tzinfo=UTC)
EMAIL = "ann.lee@example.org"
SIGNING = "whsec-test-signing-secret"


def events() -> list[WebhookEvent]:
    with session_scope() as session:
        return list(session.scalars(select(WebhookEvent).order_by(WebhookEvent.id)))


def event_count() -> int:
    with session_scope() as session:
        return int(session.scalar(select(func.count()).select_from(WebhookEvent)) or 0)


def rejected() -> dict[str, float]:
    series = metrics.read_counters()["webhook_rejected_total"]
    return {dict(labels)["reason"]: value for labels, value in series.items()}


def received_total() -> float:
    return sum(metrics.read_counters().get("webhook_events_received_total", {}).values())


def queued_applies(redis_client: Any) -> int:
    return int(redis_client.llen("optouts"))


def sign(raw: bytes, stamp: int | None = None, secret: str = SIGNING) -> str:
    t = int(time.time()) if stamp is None else stamp
    digest = hmac.new(secret.encode(), f"{t}.".encode() + raw, hashlib.sha256).hexdigest()
    return f"t={t},v1={digest}"


def use(monkeypatch: pytest.MonkeyPatch, **env: str) -> None:
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    get_settings.cache_clear()


# --- URL check and authentication -------------------------------------------------------


def test_mailchimp_url_check_gets_200(client: TestClient) -> None:
    assert client.get(URL).status_code == 200


@pytest.mark.parametrize(
    "headers",
    [{}, FORM, {"content-type": "application/json"}, {"content-type": "text/plain"}],
    ids=["no content type", "form", "json", "text"],
)
def test_the_url_check_as_an_empty_post_gets_200_and_stores_nothing(
    client: TestClient, headers: dict[str, str]
) -> None:
    for content in (b"", b"  \r\n"):
        response = client.post(URL, content=content, headers=headers)
        assert (response.status_code, response.json()) == (200, {"status": "ok"})
    assert event_count() == 0 and received_total() == 0
    assert client.post(URL, content=b"", headers=headers).json() == client.get(URL).json()


def test_an_event_dated_more_than_an_hour_ahead_is_refused(client: TestClient) -> None:
    from freezegun import freeze_time

    with freeze_time(AT):
        far = post(client, unsubscribe(EMAIL, "9999-12-31 23:59:59"))
        assert far.status_code == 400 and far.json()["reason"] == "fired_in_future"
        ahead = post(client, unsubscribe(EMAIL, AT + timedelta(minutes=61)))
        assert ahead.status_code == 400
        assert event_count() == 0
        skewed = post(client, unsubscribe(EMAIL, AT + timedelta(minutes=59)))
        assert skewed.status_code == 200  # clocks drift: within the hour is accepted
    assert event_count() == 1
    assert rejected()["fired_in_future"] == 2
    wait_for(lambda: received_total() == 1)  # the step after the answer, before the next test


def test_unknown_secret_gets_a_plain_404_and_is_counted(client: TestClient) -> None:
    for response in (
        client.get("/v1/mailchimp/webhook/wrong-secret-0123456789"),
        client.post(
            "/v1/mailchimp/webhook/wrong-secret-0123456789",
            content=body(unsubscribe(EMAIL, AT)),
            headers=FORM,
        ),
    ):
        assert response.status_code == 404
        assert response.json() == client.get("/no/such/route").json()
    assert event_count() == 0
    assert rejected()["unknown_secret"] == 2


def test_old_and_new_secret_both_work_during_rotation(
    client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    use(monkeypatch, LISTSYNC_WEBHOOK_SECRETS=f"{SECRET},{OLD_SECRET}")
    old_url = f"/v1/mailchimp/webhook/{OLD_SECRET}"
    assert client.get(old_url).status_code == 200
    response = client.post(old_url, content=body(unsubscribe(EMAIL, AT)), headers=FORM)
    assert response.status_code == 200
    assert post(client, cleaned(EMAIL, AT)).status_code == 200
    assert event_count() == 2
    use(monkeypatch, LISTSYNC_WEBHOOK_SECRETS=SECRET)  # rotation finished: the old one is gone
    assert client.get(old_url).status_code == 404


def test_a_valid_signature_is_accepted_when_a_signing_secret_is_set(
    client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    use(monkeypatch, LISTSYNC_WEBHOOK_SIGNING_SECRET=SIGNING)
    raw = body(unsubscribe(EMAIL, AT))
    response = post(client, raw, **{"X-Mailchimp-Signature": sign(raw)})
    assert response.status_code == 200
    assert event_count() == 1


@pytest.mark.parametrize(
    ("header", "reason"),
    [
        (None, "missing_signature"),
        ("t=1,v1=abc", "stale_signature"),
        ("garbage", "bad_signature"),
        ("SIGNED-WITH-OTHER-SECRET", "bad_signature"),
        ("SIGNED-OTHER-BODY", "bad_signature"),
        ("SIGNED-A-DAY-AGO", "stale_signature"),
        (b"t=\xb2,v1=abc", "bad_signature"),  # "²" is a digit to str.isdigit(), not to int()
        ("t=" + "9" * 5000 + ",v1=abc", "bad_signature"),  # past int()'s digit limit
    ],
)
def test_missing_bad_or_stale_signatures_get_401_and_store_nothing(
    client: TestClient, monkeypatch: pytest.MonkeyPatch, header: str | bytes | None, reason: str
) -> None:
    use(monkeypatch, LISTSYNC_WEBHOOK_SIGNING_SECRET=SIGNING)
    raw = body(unsubscribe(EMAIL, AT))
    if header == "SIGNED-WITH-OTHER-SECRET":
        header = sign(raw, secret="another-secret")
    elif header == "SIGNED-OTHER-BODY":
        header = sign(body(unsubscribe("someone.else@example.org", AT)))
    elif header == "SIGNED-A-DAY-AGO":
        header = sign(raw, int(time.time()) - 86400)
    headers = {"X-Mailchimp-Signature": header} if header else {}
    response = post(client, raw, **headers)
    assert response.status_code == 401
    assert event_count() == 0
    assert rejected()[reason] == 1


def test_unsigned_events_are_accepted_when_no_signing_secret_is_set(client: TestClient) -> None:
    assert post(client, unsubscribe(EMAIL, AT)).status_code == 200


# --- storage ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "fields",
    [
        subscribe(EMAIL, AT, FNAME="Ann", INTERESTS="Parks,Roads"),
        unsubscribe(EMAIL, AT),
        profile(EMAIL, AT, FNAME="Ann"),
        upemail(EMAIL, "ann.new@example.org", AT),
        cleaned(EMAIL, AT),
        campaign(AT),
    ],
    ids=["subscribe", "unsubscribe", "profile", "upemail", "cleaned", "campaign"],
)
def test_every_event_type_is_stored_pending_and_its_apply_enqueued(
    client: TestClient, redis_client: Any, fields: list[tuple[str, str]]
) -> None:
    response = post(client, fields)
    assert response.status_code == 200
    assert response.json() == {"status": "stored"}
    [event] = events()
    assert event.state == EventState.PENDING
    assert event.type == fields[0][1]
    assert event.fired_at == AT
    assert event.payload is not None and event.payload["type"] == fields[0][1]
    # Asking for the run and counting follow the answer, in that order.
    received = wait_for(lambda: metrics.read_counters().get("webhook_events_received_total"))
    assert received == {(("type", fields[0][1]),): 1.0}
    assert queued_applies(redis_client) == 1


def test_of_the_merge_fields_sent_only_the_synced_ones_are_stored_and_no_ip(
    client: TestClient,
) -> None:
    """Mailchimp sends every merge field of the member; the inbox keeps LISTSYNC_MERGE_FIELDS
    (here FNAME, LNAME, ADDRESS)."""
    sent = profile(EMAIL, AT, FNAME="Ann", LNAME="Lee", PHONE="555-0100", BIRTHDAY="01/02")

    assert post(client, sent).status_code == 200

    [event] = events()
    assert event.payload is not None
    data = event.payload["data"]
    assert data["merges"] == {"FNAME": "Ann", "LNAME": "Lee"}
    assert "ip_opt" not in data and "555-0100" not in str(event.payload)


def test_a_duplicate_delivery_answers_200_and_is_stored_and_enqueued_once(
    client: TestClient, redis_client: Any
) -> None:
    fields = unsubscribe(EMAIL, AT)
    assert post(client, fields).json() == {"status": "stored"}
    assert post(client, fields).json() == {"status": "duplicate"}
    assert post(client, unsubscribe(EMAIL.upper(), AT)).json() == {"status": "duplicate"}
    assert event_count() == 1
    wait_for(lambda: received_total() == 3)  # each batch asked for its run before counting
    assert queued_applies(redis_client) == 1


def test_an_unknown_type_gets_200_and_is_recorded_as_ignored(
    client: TestClient, redis_client: Any
) -> None:
    fields = [("type", "merge_party"), *campaign(AT)[1:]]
    response = post(client, fields)
    assert response.status_code == 200
    assert response.json() == {"status": "ignored"}
    [event] = events()
    assert (event.state, event.outcome) == (EventState.IGNORED, "unknown_type")
    wait_for(lambda: received_total() == 1)  # counted after the run would have been asked for
    assert queued_applies(redis_client) == 0


def test_an_event_for_another_audience_gets_400_and_stores_nothing(client: TestClient) -> None:
    fields = [(k, "someotherlist" if k == "data[list_id]" else v) for k, v in campaign(AT)]
    response = post(client, fields)
    assert response.status_code == 400
    assert "list_id" in response.json()["detail"]
    assert event_count() == 0
    assert rejected()["wrong_list"] == 1


@pytest.mark.parametrize(
    ("raw", "needle"),
    [
        (b"type=unsubscribe&fired_at=yesterday&data[list_id]=x", "fired_at"),
        (b"fired_at=2024-03-01+12%3A30%3A05", "type"),
        (b"data[a]=1&data[a]=2", "repeated"),
        (b"\xff\xfe", "UTF-8"),
    ],
)
def test_malformed_fields_get_400_naming_the_problem(
    client: TestClient, raw: bytes, needle: str
) -> None:
    response = post(client, raw)
    assert response.status_code == 400
    assert needle in response.json()["detail"]
    assert event_count() == 0
    assert rejected()["malformed"] == 1


def test_a_body_over_64_kib_gets_413(client: TestClient) -> None:
    fields = [*unsubscribe(EMAIL, AT), ("data[merges][NOTES]", "x" * 70_000)]
    assert post(client, fields).status_code == 413

    def chunks() -> Any:  # no content-length: the limit holds while streaming
        for _ in range(80):
            yield b"x" * 1024

    response = client.post(URL, content=chunks(), headers=FORM)
    assert response.status_code == 413
    assert event_count() == 0
    assert rejected()["too_large"] == 2


@pytest.mark.parametrize("content_type", ["application/json", "multipart/form-data", None])
def test_anything_but_a_form_gets_415(client: TestClient, content_type: str | None) -> None:
    headers = {"content-type": content_type} if content_type else {}
    response = client.post(URL, content=body(unsubscribe(EMAIL, AT)), headers=headers)
    assert response.status_code == 415
    assert event_count() == 0


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    raw=st.one_of(
        st.binary(max_size=400),
        st.lists(
            st.tuples(
                st.sampled_from(["type", "fired_at", "data[email]", "data[list_id]", "data[x][y]"])
                | st.text(max_size=10),
                st.text(max_size=20),
            ),
            max_size=8,
        ).map(lambda pairs: body(pairs)),
    )
)
def test_garbage_bodies_get_a_4xx_or_are_stored_never_a_500(client: TestClient, raw: bytes) -> None:
    before = event_count()
    response = post(client, raw)
    assert response.status_code in {200, 400}
    if response.status_code == 400:
        assert event_count() == before


def test_database_down_gets_503_then_the_retry_is_stored(
    client: TestClient, monkeypatch: pytest.MonkeyPatch, store: str
) -> None:
    fields = unsubscribe(EMAIL, AT)
    use(monkeypatch, LISTSYNC_DATABASE_URL="postgresql+psycopg://postgres@127.0.0.1:1/none")
    response = post(client, fields)
    assert response.status_code == 503
    use(monkeypatch, LISTSYNC_DATABASE_URL=store)
    assert post(client, fields).status_code == 200
    assert event_count() == 1


def test_logs_carry_neither_addresses_nor_the_secret(
    client: TestClient, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    post(client, unsubscribe(EMAIL, AT))
    post(client, unsubscribe(EMAIL, AT))
    post(client, [*unsubscribe(EMAIL, AT)[:-1], ("data[merges][EMAIL]", "x@y")] * 2)
    post(client, unsubscribe("not-an-address", AT))
    client.post(URL, content=body(unsubscribe(EMAIL, AT)), headers={"content-type": "text/plain"})
    use(monkeypatch, LISTSYNC_DATABASE_URL="postgresql+psycopg://postgres@127.0.0.1:1/none")
    post(client, cleaned(EMAIL, AT))
    # The test's own HTTP client logs the URL it calls; everything else is ours.
    ours = "\n".join(r.getMessage() for r in caplog.records if not r.name.startswith("httpx"))
    assert "webhook refused" in ours
    assert EMAIL not in ours
    assert "ann.lee" not in ours
    assert SECRET not in ours


def test_the_access_log_hides_the_path_secret() -> None:
    import worker.web.webhooks  # noqa: F401  (installs the redaction)

    logger = logging.getLogger("uvicorn.access")
    record = logger.makeRecord(
        "uvicorn.access",
        logging.INFO,
        __file__,
        1,
        '%s - "%s %s HTTP/%s" %d',
        ("127.0.0.1:5000", "POST", URL, "1.1", 200),
        None,
    )
    for log_filter in logger.filters:
        assert not isinstance(log_filter, logging.Filter) or log_filter.filter(record)
    assert SECRET not in record.getMessage()
    assert "/v1/mailchimp/webhook/***" in record.getMessage()


def test_the_routed_post_answers_exactly_as_the_fast_path(client: TestClient) -> None:
    """create_app answers webhook POSTs in the FastPath middleware, before routing; the route
    it skips must still answer the same in an app built without that middleware."""
    from fastapi import FastAPI

    from worker.web import webhooks

    routed = FastAPI()
    routed.include_router(webhooks.router)
    requests: list[tuple[str, bytes, dict[str, str]]] = [
        (URL, body(unsubscribe(EMAIL, AT)), FORM),
        (URL, body(unsubscribe(EMAIL, AT)), FORM),  # the duplicate
        (URL.replace(SECRET, "wrong-secret"), body(unsubscribe(EMAIL, AT)), FORM),
        (URL, body(unsubscribe(EMAIL, AT)), {"content-type": "application/json"}),
        (URL, b"type=unsubscribe&fired_at=yesterday&data[list_id]=x", FORM),
        (URL, body([*unsubscribe(EMAIL, AT), ("data[merges][NOTES]", "x" * 70_000)]), FORM),
        (URL + "/extra", body(unsubscribe(EMAIL, AT)), FORM),
    ]

    def answers(test_client: TestClient) -> list[tuple[int, Any, str | None]]:
        with session_scope() as session:
            session.query(WebhookEvent).delete()
        out = []
        for url, raw, headers in requests:
            response = test_client.post(url, content=raw, headers=headers)
            out.append((response.status_code, response.json(), response.headers.get("connection")))
        return out

    installed = getattr(client.app, "user_middleware", [])
    assert any(middleware.cls is webhooks.FastPath for middleware in installed)
    fast = answers(client)
    with TestClient(routed) as routed_client:
        assert answers(routed_client) == fast
    assert [status for status, _, _ in fast] == [200, 200, 404, 415, 400, 413, 404]
    assert fast[0][1] == {"status": "stored"} and fast[1][1] == {"status": "duplicate"}
