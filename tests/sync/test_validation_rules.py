"""Rules of intake validation (worker/signups/message.py `validate`) that `make mutation` found
no test for (docs/reliability.md, "Mutation testing"): each refusal names its field and rule,
and what is accepted is kept exactly."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from worker.feeds.schema import AudienceSchema, MergeField
from worker.signups.message import (
    MAX_CHOICES,
    MAX_CLOCK_SKEW,
    MAX_FIELD_CHARS,
    Signup,
    SignupRejected,
    build_message,
    validate,
)


def accepted(form: str, schema: AudienceSchema | None = None, **fields: Any) -> Signup:
    return validate(build_message("ada@example.com", form, fields=fields), schema=schema)


def refusal(form: str, schema: AudienceSchema | None = None, **fields: Any) -> list[str]:
    with pytest.raises(SignupRejected) as caught:
        accepted(form, schema, **fields)
    return [f"{p.field}: {p.reason}" for p in caught.value.problems]


def test_a_field_may_hold_up_to_the_most_choices_and_only_texts() -> None:
    most = [f"choice {n}" for n in range(MAX_CHOICES)]
    assert accepted("contact_form", role=most).fields["role"] == most
    assert accepted("contact_form", role=["Parent"]).fields["role"] == ["Parent"]
    too_many = [*most, "one more"]
    only_texts = f"fields.role: Value error, a list may hold at most {MAX_CHOICES} texts"
    assert refusal("contact_form", role=too_many) == [only_texts]
    assert refusal("contact_form", role=["Parent", 7]) == [only_texts]


def test_a_value_that_is_not_text_a_number_true_false_null_or_a_list_is_refused() -> None:
    assert accepted("contact_form", subject=None).fields["subject"] is None
    assert refusal("contact_form", subject={"nested": "object"}) == [
        "fields.subject: Value error, must be text, a number, true/false, null or a list of texts"
    ]


def test_fields_the_form_does_not_have_are_dropped_and_counted() -> None:
    signup = accepted("contact_form", first_name="Ada", subject="Hi", a="1", b="2", c="3")
    assert signup.fields == {"first_name": "Ada", "subject": "Hi"}
    assert signup.dropped_fields == 3


@pytest.mark.parametrize("language", ["en", "pt_BR", "", None])
def test_a_language_code_is_accepted(language: str | None) -> None:
    assert accepted("newsletter_signup", lang=language).fields["lang"] == language


@pytest.mark.parametrize("language", ["english", "EN", "pt-BR", 5, True])
def test_anything_else_as_the_language_is_refused_naming_the_field(language: object) -> None:
    assert refusal("newsletter_signup", lang=language) == ["fields.lang: is not a language code"]


def schema(**types: str) -> AudienceSchema:
    return AudienceSchema(
        double_optin=False,
        gdpr=False,
        merge_fields={tag: MergeField(tag=tag, name=tag, type=kind) for tag, kind in types.items()},
        categories={},
        permissions=None,
    )


def test_every_value_its_merge_field_would_refuse_is_named() -> None:
    """contact_form maps first_name to FNAME and last_name to LNAME."""
    both = schema(FNAME="number", LNAME="zip")
    assert refusal("contact_form", both, first_name="Ada", last_name="Lovelace") == [
        "fields.first_name: must be a number (merge field FNAME)",
        "fields.last_name: must be a 5-digit US zip code (merge field LNAME)",
    ]
    # A field skipped (empty, or its merge field missing) does not end the checking.
    assert refusal("contact_form", both, first_name="", last_name="Lovelace") == [
        "fields.last_name: must be a 5-digit US zip code (merge field LNAME)"
    ]
    assert refusal("contact_form", schema(LNAME="zip"), first_name="x", last_name="y") == [
        "fields.last_name: must be a 5-digit US zip code (merge field LNAME)"
    ]
    # Right for their types, empty, or for a merge field the audience lacks: accepted.
    assert accepted("contact_form", both, first_name="12", last_name="90210")
    assert accepted("contact_form", both, first_name="", last_name=None)
    assert accepted("contact_form", schema(FNAME="number"), first_name="1", last_name="Lovelace")


def test_a_number_must_be_finite() -> None:
    assert accepted("contact_form", subject=1.5).fields["subject"] == 1.5
    for number in (float("inf"), float("-inf"), float("nan")):
        assert refusal("contact_form", subject=number) == [
            "fields.subject: Value error, numbers must be finite"
        ]


def test_a_signup_is_dated_only_when_the_message_carries_its_time() -> None:
    message = build_message("ada@example.com", "contact_form")
    assert validate(message).dated
    del message["submitted_at"]
    assert not validate(message).dated


def test_a_text_may_have_up_to_the_most_characters() -> None:
    assert accepted("contact_form", message="x" * MAX_FIELD_CHARS).fields["message"]
    assert refusal("contact_form", message="x" * (MAX_FIELD_CHARS + 1)) == [
        f"fields.message: Value error, text may have at most {MAX_FIELD_CHARS} characters"
    ]


@pytest.mark.parametrize("ip", [3232235777, 1.5, True])
def test_an_ip_address_must_be_text(ip: object) -> None:
    message = build_message("ada@example.com", "contact_form")
    message["ip"] = ip
    with pytest.raises(SignupRejected) as caught:
        validate(message)
    assert [(p.field, p.reason) for p in caught.value.problems] == [
        ("ip", "Value error, must be text")
    ]


def test_a_signup_may_be_dated_up_to_the_clock_skew_ahead_and_no_further() -> None:
    now = datetime(2026, 12, 5, 12, 0, tzinfo=UTC)
    ahead = build_message("ada@example.com", "contact_form", submitted_at=now + MAX_CLOCK_SKEW)
    assert validate(ahead, now=now).submitted_at == now + MAX_CLOCK_SKEW
    further = build_message(
        "ada@example.com",
        "contact_form",
        submitted_at=now + MAX_CLOCK_SKEW + timedelta(microseconds=1),
    )
    with pytest.raises(SignupRejected) as caught:
        validate(further, now=now)
    assert [(p.field, p.reason) for p in caught.value.problems] == [
        ("submitted_at", "is in the future")
    ]
