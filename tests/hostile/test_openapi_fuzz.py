"""schemathesis against the app's own OpenAPI spec, in-process: whatever a client sends, the
answer is never a 5xx, never a traceback, and never echoes a secret or an address it was sent."""

from __future__ import annotations

import re
from collections import Counter
from datetime import datetime
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode

from tests.hostile.conftest import LIST_ID, SECRET, TOKEN, WEBHOOK, counts

SIGNUPS = "POST /v1/signups"
HOOK_POST = f"POST {WEBHOOK}{{secret}}"
HOOK_GET = f"GET {WEBHOOK}{{secret}}"
PROBES = ["GET /healthz", "GET /readyz", "GET /metrics"]
SIGNUP_STATE = "GET /v1/signups/{key}"
ALL = [SIGNUPS, SIGNUP_STATE, HOOK_POST, HOOK_GET, *PROBES]
FORMS = ["newsletter_signup", "contact_form", "survey"]
#: The fields that make a webhook body a complete event of its type.
WHOLE_EVENTS = [
    {"type": "campaign", "data[id]": "5f2a1c"},
    {"type": "unsubscribe", "data[email]": "fuzz.person@trust.org", "data[action]": "unsub"},
    {"type": "cleaned", "data[email]": "fuzz.person@trust.org", "data[reason]": "hard"},
    {"type": "no-such-type"},
]
EXAMPLES = 40  # per operation and generation mode; the whole file stays well under a minute

ADDRESS = re.compile(r"[^\s\"'<>@,;:\\()\[\]]+@[^\s\"'<>@,;:\\()\[\]]+")


def load(app: Any) -> Any:
    return schemathesis.openapi.from_asgi("/openapi.json", app)


def addresses_in(value: Any) -> set[str]:
    """Every address-looking string anywhere in a request body."""
    if isinstance(value, dict):
        return set().union(*(addresses_in(k) | addresses_in(v) for k, v in value.items()))
    if isinstance(value, list | tuple):
        return set().union(*(addresses_in(v) for v in value))
    if isinstance(value, str):
        return {m for m in ADDRESS.findall(value) if len(m) >= 5}
    return set()


def assert_harmless(case: Any, response: Any) -> None:
    text = response.text
    assert response.status_code < 500, (case.operation.label, response.status_code, text[:300])
    assert "Traceback" not in text and 'File "' not in text
    assert TOKEN not in text and SECRET not in text
    for address in addresses_in(case.body):
        assert address not in text, (case.operation.label, response.status_code)


#: Each refusal of `POST /v1/signups` and the exact answer it gets (422 lists its problems).
SIGNUP_REFUSALS = {
    401: "missing or invalid bearer token",
    413: f"body over {64 * 1024} bytes",
    415: "send application/json",
}
#: The reason codes a refused webhook POST names, by status.
WEBHOOK_REFUSALS = {
    400: {"malformed", "fired_in_future", "wrong_list"},
    413: {"too_large"},
    415: {"content_type"},
}


def assert_signup_refusal(response: Any) -> None:
    """A refused signup says what was wrong: a fixed text, or each problem by its field."""
    detail = response.json()["detail"]
    if response.status_code == 422:
        assert isinstance(detail, list) and detail, detail
        for problem in detail:
            assert set(problem) == {"field", "reason"}, problem
            assert problem["field"] and problem["reason"], problem
        return
    assert detail == SIGNUP_REFUSALS[response.status_code]
    if response.status_code == 401:
        headers = {k.lower(): v for k, v in response.headers.items()}
        assert headers["www-authenticate"] == ["Bearer"]


def assert_webhook_refusal(response: Any) -> None:
    """A refused event names the reason (a code) and what was wrong, never a bare status."""
    if response.status_code == 404:
        assert response.json() == {"detail": "Not Found"}  # as an unknown route
        return
    body = response.json()
    assert set(body) == {"detail", "reason"}, body
    assert body["reason"] in WEBHOOK_REFUSALS[response.status_code], body
    assert isinstance(body["detail"], str) and body["detail"], body


def fuzz(
    operation: Any,
    mode: GenerationMode,
    prepare: Any,
    after: Any,
) -> Counter[int]:
    """Run one operation's cases; returns how often each status was answered."""
    statuses: Counter[int] = Counter()

    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(case=operation.as_strategy(generation_mode=mode), valid=st.booleans(), data=st.data())
    def run(case: Any, valid: bool, data: st.DataObject) -> None:
        headers = prepare(case, valid, data)
        before = counts()
        response = case.call(headers=headers)
        assert_harmless(case, response)
        case.validate_response(
            response,
            checks=[schemathesis.checks.not_a_server_error],
            headers=headers,
        )
        after(case, response, before)
        statuses[response.status_code] += 1

    run()
    return statuses


def test_the_spec_describes_intake_webhook_and_probes(app: Any) -> None:
    schema = load(app)
    labels = sorted(op.ok().label for op in schema.get_all_operations())
    assert labels == sorted(ALL)
    # Both bodies must be usable: a dangling $ref once left the signup body undescribed.
    hook = schema[f"{WEBHOOK}{{secret}}"]["POST"]
    assert [b.media_type for b in hook.body] == ["application/x-www-form-urlencoded"]
    assert [b.media_type for b in schema["/v1/signups"]["POST"].body] == ["application/json"]


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_signup_intake_never_fails_or_leaks_and_refusals_write_nothing(
    app: Any, mode: GenerationMode
) -> None:
    def prepare(case: Any, valid: bool, data: st.DataObject) -> dict[str, str]:
        if valid and isinstance(case.body, dict) and data.draw(st.booleans()):
            # Half of the authorized bodies name a real form and address: they reach storage.
            case.body["form"] = data.draw(st.sampled_from(FORMS))
            case.body["email"] = data.draw(st.emails())
        return {"Authorization": f"Bearer {TOKEN if valid else TOKEN[:-1]}"}

    def after(case: Any, response: Any, before: dict[str, int]) -> None:
        now = counts()
        if response.status_code == 202:
            assert set(response.json()) == {"key", "submission_id", "created", "state"}
            return
        assert response.status_code in {401, 413, 415, 422}
        assert_signup_refusal(response)
        grew = {k for k in now if now[k] != before[k]}
        # A refusal writes at most its own rejection record, never a partial signup.
        assert grew <= {"rejected_signup"}
        if response.status_code == 401:
            assert grew == set()

    statuses = fuzz(load(app)["/v1/signups"]["POST"], mode, prepare, after)
    assert statuses[401]  # the locked door was tried
    if mode == GenerationMode.POSITIVE:
        # Valid signups got through to storage. (A 422 here is rare, not excluded: a time
        # ahead of the server's clock is refused, and a schema cannot say "now".)
        assert statuses[202]
    else:
        assert statuses[422]


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_webhook_never_fails_or_leaks_and_refusals_store_nothing(
    app: Any, mode: GenerationMode
) -> None:
    def prepare(case: Any, valid: bool, data: st.DataObject) -> dict[str, str]:
        if valid:
            case.path_parameters = {"secret": SECRET}
            shape = data.draw(st.sampled_from(["as generated", "our audience", "whole event"]))
            if isinstance(case.body, dict) and shape != "as generated":
                # A third of the authorized bodies carry our audience and a real time: they
                # reach validation of the event itself, not just the first checks. Another
                # third are whole events of each kind, so that storage is always reached
                # (random bodies rarely get that far, however the generator's stream falls).
                if shape == "whole event":
                    case.body = dict(data.draw(st.sampled_from(WHOLE_EVENTS)))
                case.body["data[list_id]"] = LIST_ID
                # Not ahead of this clock: an event dated ahead is refused (400).
                when = data.draw(st.datetimes(datetime(2000, 1, 1), datetime(2025, 12, 31)))
                case.body["fired_at"] = when.strftime("%Y-%m-%d %H:%M:%S")
        return {}

    def after(case: Any, response: Any, before: dict[str, int]) -> None:
        now = counts()
        if response.status_code == 200:
            # "ok": an empty body, answered as Mailchimp's URL check.
            assert response.json()["status"] in {"stored", "duplicate", "ignored", "ok"}
        else:
            assert response.status_code in {400, 404, 413, 415}
            assert_webhook_refusal(response)
            assert now == before

    statuses = fuzz(load(app)[f"{WEBHOOK}{{secret}}"]["POST"], mode, prepare, after)
    assert statuses[404]
    if mode == GenerationMode.POSITIVE:
        # The document states each event's shape and the audience: what it generates as
        # valid is stored, never refused.
        assert statuses[200] and not statuses[400]
    else:
        assert statuses[400]


def test_webhook_url_check_answers_200_or_a_plain_404(app: Any) -> None:
    def prepare(case: Any, valid: bool, data: st.DataObject) -> dict[str, str]:
        if valid:
            case.path_parameters = {"secret": SECRET}
        return {}

    def after(case: Any, response: Any, before: dict[str, int]) -> None:
        expected = 200 if case.path_parameters["secret"] == SECRET else 404
        assert response.status_code == expected
        assert counts() == before

    fuzz(load(app)[f"{WEBHOOK}{{secret}}"]["GET"], GenerationMode.POSITIVE, prepare, after)


def test_signup_state_answers_only_with_a_token_and_never_fails(app: Any) -> None:
    authorized: list[bool] = []

    def prepare(case: Any, valid: bool, data: st.DataObject) -> dict[str, str]:
        authorized.append(valid)
        return {"Authorization": f"Bearer {TOKEN if valid else TOKEN[:-1]}"}

    def after(case: Any, response: Any, before: dict[str, int]) -> None:
        # Nothing is stored under any key here: 404 with the token, 401 without.
        assert response.status_code == (404 if authorized[-1] else 401)
        assert counts() == before

    fuzz(load(app)["/v1/signups/{key}"]["GET"], GenerationMode.POSITIVE, prepare, after)


@pytest.mark.parametrize("label", PROBES)
def test_health_and_metrics_answer_without_leaking(
    app: Any, label: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from config import get_settings

    method, path = label.split(" ")
    operation = load(app)[path][method]
    # Then sent as the internal listener receives them: the test client's requests come to
    # port 80, and the internal listener serves the probes and /metrics only.
    monkeypatch.setenv("LISTSYNC_METRICS_PORT", "80")
    get_settings.cache_clear()

    def after(case: Any, response: Any, before: dict[str, int]) -> None:
        assert response.status_code == 200

    fuzz(operation, GenerationMode.POSITIVE, lambda case, valid, data: {}, after)
