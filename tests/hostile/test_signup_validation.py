"""The signup validator and `receive_many` under hostile messages: a clear rejection that never
quotes the address, or a stored record whose normalized address hashes correctly; never a crash
and never a partial write."""

from __future__ import annotations

import hashlib
import json
import logging
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from email_validator import EmailNotValidError, validate_email
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import select

from tests.hostile.conftest import AUTH, TestClient, counts
from worker.addresses import REASONS
from worker.db import session_scope
from worker.models import Contact, RejectedSignup, Submission
from worker.signups.message import (
    Signup,
    SignupMessage,
    SignupRejected,
    build_message,
    validate,
)
from worker.signups.store import IngestResult, receive, receive_many

BOUNDED = settings(max_examples=120, deadline=None, derandomize=True, database=None)
WITH_DB = settings(
    max_examples=25,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
FORMS = ["newsletter_signup", "contact_form", "survey"]
#: The fixed texts a refused address gets (worker/addresses.py), never the address.
ADDRESS_REASONS = {f"not a valid email address: {text}" for text in REASONS.values()}
#: What a rejection's problem may name: a field of the message, or the message itself.
MESSAGE_FIELDS = {*SignupMessage.model_fields, "message", "…"}

# --- addresses, the awkward ways people and websites write them --------------------------

ascii_atom = st.text(
    "abcdefghijklmnopqrstuvwxyz0123456789!#$%&'*/=?^_`{|}~-", min_size=1, max_size=8
)
unicode_atom = st.text(
    alphabet=st.characters(min_codepoint=0xA1, max_codepoint=0x2FFF, blacklist_categories=["Cs"]),
    min_size=1,
    max_size=6,
)
atom = ascii_atom | unicode_atom
dot_local = st.lists(atom, min_size=1, max_size=3).map(".".join)
local = st.one_of(
    dot_local,
    st.tuples(dot_local, atom).map("+".join),  # plus-tags
    dot_local.map(lambda s: f'"{s} x"'),  # quoted local parts
    dot_local.map(lambda s: f'"{s}"'),
    dot_local.map(lambda s: s + "."),  # trailing dot in the local part
)
label = st.from_regex(r"[a-z0-9]([a-z0-9-]{0,8}[a-z0-9])?", fullmatch=True)
idn_label = st.sampled_from(["münchen", "bücher", "中国", "пример", "xn--mnchen-3ya", "ßtraße"])
domain = st.one_of(
    st.tuples(
        st.lists(label | idn_label, min_size=1, max_size=3), st.sampled_from(["org", "de", "io"])
    ).map(lambda t: ".".join([*t[0], t[1]])),
    st.sampled_from(["localhost", "[192.0.2.1]", "example", "-bad.org", "a..org"]),
)
trailing = st.sampled_from(["", "", "", ".", " ", "\t", "\n"])


def mixed_case(text: str, flips: list[bool]) -> str:
    return "".join(
        c.upper() if f and c.isascii() else c
        for c, f in zip(text, flips + [False] * len(text), strict=False)
    )


addresses = (
    st.builds(
        lambda lp, d, t, flips: mixed_case(f"{lp}@{d}", flips) + t,
        local,
        domain,
        trailing,
        st.lists(st.booleans(), max_size=40),
    )
    | st.emails()
)


def md5_lower(address: str) -> str:
    return hashlib.md5(address.lower().encode(), usedforsecurity=False).hexdigest()


def quoted_parts(address: str) -> list[str]:
    """What a rejection must not contain: the address and its longer parts."""
    stripped = address.strip()
    local_part, _, domain_part = stripped.rpartition("@")
    # Short parts ("org", "mail") can occur in any sentence; longer ones must not.
    return [p for p in {address, stripped, local_part, domain_part} if len(p) >= 6]


def expected_normalized(address: str) -> str | None:
    try:
        valid = validate_email(address.strip(), check_deliverability=False, allow_smtputf8=False)
    except EmailNotValidError:
        return None
    return valid.ascii_email


def assert_clean_rejection(exc: SignupRejected, address: str) -> None:
    text = str(exc) + repr([(p.field, p.reason) for p in exc.problems])
    assert exc.problems
    for part in quoted_parts(address):
        assert part not in text, (part, text)


@BOUNDED
@given(addresses, st.sampled_from(FORMS))
def test_an_address_is_rejected_without_being_quoted_or_normalized_and_hashed(
    address: str, form: str
) -> None:
    try:
        signup = validate(build_message(address, form))
    except SignupRejected as exc:
        assert_clean_rejection(exc, address)
        assert len(address) > 320 or expected_normalized(address) is None
        # One problem, on the address, in one of the fixed texts.
        [problem] = exc.problems
        assert problem.field == "email"
        if len(address) > 320:
            assert problem.reason == "String should have at most 320 characters"
        else:
            assert problem.reason in ADDRESS_REASONS, problem.reason
        return
    assert signup.email == expected_normalized(address)
    assert signup.email_hash == md5_lower(signup.email)
    domain_part = signup.email.rpartition("@")[2]
    assert domain_part == domain_part.lower()  # the domain is always normalized


@BOUNDED
@given(dot_local, st.lists(label, min_size=1, max_size=2), st.lists(st.booleans(), max_size=30))
def test_ascii_case_never_changes_who_a_person_is(
    local_part: str, labels: list[str], flips: list[bool]
) -> None:
    address = f"{local_part}@{'.'.join(labels)}.org"
    shouted = build_message(mixed_case(address, flips), "newsletter_signup")
    try:
        plain = validate(build_message(address, "newsletter_signup"))
    except SignupRejected as exc:
        # Refused whatever its case, for the same reason.
        with pytest.raises(SignupRejected) as again:
            validate(shouted)
        assert again.value.problems == exc.problems
        assert [p.field for p in exc.problems] == ["email"]
        return
    assert validate(shouted).email_hash == plain.email_hash


def test_an_idn_domain_and_its_punycode_are_the_same_person() -> None:
    spellings = ["Ann@münchen.de", "Ann@MÜNCHEN.DE", "Ann@xn--mnchen-3ya.de", "ann@münchen.de "]
    hashes = {validate(build_message(a, "newsletter_signup")).email_hash for a in spellings}
    assert hashes == {md5_lower("ann@xn--mnchen-3ya.de")}


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3)
    ),
    max_leaves=10,
)
known_keys = st.sampled_from(
    ["v", "email", "form", "submitted_at", "consent", "fields", "ip", "idempotency_key"]
)
messages = st.one_of(
    json_values,
    st.dictionaries(known_keys | st.text(max_size=8), json_values, max_size=8),
    st.builds(
        lambda base, extra: {**base, **extra},
        st.builds(build_message, addresses, st.sampled_from([*FORMS, "nope"])),
        st.dictionaries(known_keys, json_values, max_size=3),
    ),
)


@BOUNDED
@given(messages)
def test_any_json_message_is_either_a_signup_or_a_clean_rejection(message: Any) -> None:
    try:
        result = validate(message)
    except SignupRejected as exc:
        assert all(p.field and p.reason for p in exc.problems)
        # Each problem names a field of the message (a name that is not plain shows as "…"),
        # or the message itself when it is not an object.
        for p in exc.problems:
            if p.reason != "Extra inputs are not permitted":  # a key no message has
                assert p.field.split(".")[0] in MESSAGE_FIELDS, p
        address = message.get("email") if isinstance(message, dict) else None
        if isinstance(address, str):
            assert_clean_rejection(exc, address)
        return
    assert isinstance(result, Signup)
    assert result.email_hash == md5_lower(result.email)


# --- end to end with a real database ------------------------------------------------------


@WITH_DB
@given(
    batch=st.lists(
        messages | st.builds(build_message, addresses, st.sampled_from(FORMS)),
        min_size=1,
        max_size=6,
    )
)
def test_receive_many_stores_the_good_and_writes_nothing_for_the_bad(
    db: str, redis_client: object, batch: list[Any]
) -> None:
    before = counts()
    results = receive_many(batch, channel="queue")
    after = counts()
    assert len(results) == len(batch)
    rejected = [r for r in results if isinstance(r, SignupRejected)]
    created = [r for r in results if isinstance(r, IngestResult) and r.created]
    assert after["rejected_signup"] - before["rejected_signup"] == len(rejected)
    assert after["submission"] - before["submission"] == len(created)
    assert after["submission_ip"] - before["submission_ip"] <= len(created)
    assert after["sync_job"] - before["sync_job"] <= len(created)
    with session_scope() as session:
        recorded = " ".join(session.scalars(select(RejectedSignup.reason)))
        for message, result in zip(batch, results, strict=True):
            if isinstance(result, SignupRejected):
                if isinstance(message, dict) and isinstance(message.get("email"), str):
                    assert_clean_rejection(result, message["email"])
                    assert all(p not in recorded for p in quoted_parts(message["email"]))
                continue
            submission = session.get(Submission, result.submission_id)
            assert submission is not None
            contact = session.get(Contact, submission.contact_id)
            assert contact is not None
            normalized = expected_normalized(message["email"])
            assert normalized is not None
            assert contact.email_hash == md5_lower(normalized)
            assert contact.email.lower() == normalized.lower()


def test_a_failure_halfway_through_a_batch_rolls_the_whole_batch_back(
    db: str, redis_client: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    import worker.signups.store

    def broken(**_: Any) -> None:
        raise RuntimeError("disk full")

    # Contacts and submissions are flushed before the IPs: fail there.
    monkeypatch.setattr(worker.signups.store, "SubmissionIP", broken)
    before = counts()
    batch = [
        build_message("first@example.org", "newsletter_signup"),
        build_message("second@example.org", "newsletter_signup", ip="192.0.2.7"),
    ]
    with pytest.raises(RuntimeError):
        receive_many(batch, channel="queue")
    assert counts() == before


# --- regressions: each of these was a 500 (or junk stored) before ---------------------------


def post(client: TestClient, message: Any) -> Any:
    return client.post(
        "/v1/signups",
        content=json.dumps(message),
        headers={**AUTH, "Content-Type": "application/json"},
    )


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"consent": {"newsletter": True, "text_version": "v\x001"}}, "consent.text_version"),
        ({"fields": {"first_name": "A\x00nn"}}, "fields.first_name"),
        ({"fields": {"first_name": "\ud800"}}, "fields.first_name"),
        ({"submitted_at": "0001-01-01T00:00:00+14:00"}, "submitted_at"),
        ({"ip": "fe80::1%" + "x" * 60}, "ip"),
        ({"ip": "::ffff:192.0.2.1%eth0"}, "ip"),
    ],
)
def test_text_postgres_cannot_hold_and_dates_without_utc_are_a_422(
    client: TestClient, change: dict[str, Any], field: str
) -> None:
    before = counts()
    response = post(client, {**build_message("hana@example.org", "newsletter_signup"), **change})
    assert response.status_code == 422, response.text
    assert field in {p["field"] for p in response.json()["detail"]}
    assert {k: v for k, v in counts().items() if k != "rejected_signup"} == {
        k: v for k, v in before.items() if k != "rejected_signup"
    }


@pytest.mark.parametrize("nesting", ["[" * 10_000, '{"a":' * 10_000, '{"fields":' + "[" * 20_000])
def test_json_nested_deeper_than_the_parser_goes_is_a_422(client: TestClient, nesting: str) -> None:
    response = client.post(
        "/v1/signups",
        content=nesting.encode(),
        headers={**AUTH, "Content-Type": "application/json"},
    )
    assert response.status_code == 422
    assert response.json()["detail"] == [{"field": "body", "reason": "not valid JSON"}]


def test_an_address_used_as_a_field_name_is_not_echoed_logged_or_recorded(
    client: TestClient, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    message = build_message("ok@example.org", "survey")
    message["fields"] = {"victim@example.org": {"nested": True}, "x@y.example": [1]}
    response = post(client, message)
    assert response.status_code == 422
    assert {p["field"] for p in response.json()["detail"]} == {"fields.…"}
    ours = "\n".join(r.getMessage() for r in caplog.records if not r.name.startswith("httpx"))
    with session_scope() as session:
        recorded = " ".join(session.scalars(select(RejectedSignup.reason)))
    for text in (response.text, ours, recorded):
        assert "victim" not in text and "x@y" not in text


def test_a_submission_time_far_in_the_past_but_representable_is_kept_as_sent(db: str) -> None:
    sent = datetime(1970, 1, 1, 9, tzinfo=UTC) + timedelta(minutes=1)
    result = receive(
        build_message("old@example.org", "newsletter_signup", submitted_at=sent), channel="queue"
    )
    with session_scope() as session:
        submission = session.get(Submission, result.submission_id)
        assert submission is not None and submission.submitted_at == sent
