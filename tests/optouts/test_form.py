"""The bracket-key form parser and event validation, on every shape Mailchimp sends."""

from __future__ import annotations

from datetime import UTC, datetime
from urllib.parse import parse_qsl, urlencode

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from tests.optouts.payloads import (
    LIST_ID,
    body,
    campaign,
    cleaned,
    profile,
    subscribe,
    unsubscribe,
    upemail,
)
from worker.optouts.events import BadEvent, parse_fired_at, validate_event
from worker.optouts.form import FormError, form_pairs, parse_form

AT = datetime(2024, 3, 1, 12, 30, 5, tzinfo=UTC)


def test_nested_merges_interests_and_groupings_become_nested_dicts() -> None:
    fields = [
        *subscribe("ann@example.org", AT, FNAME="Ann", LNAME="Lee", INTERESTS="Group1,Group2"),
        ("data[merges][GROUPINGS][0][id]", "1"),
        ("data[merges][GROUPINGS][0][name]", "Topics"),
        ("data[merges][GROUPINGS][0][groups]", "Parks, Roads"),
        ("data[merges][ADDRESS][addr1]", "1 Main St"),
        ("data[merges][ADDRESS][city]", "Boston"),
    ]
    form = parse_form(body(fields))
    assert form["type"] == "subscribe"
    merges = form["data"]["merges"]
    assert merges["EMAIL"] == "ann@example.org"
    assert merges["INTERESTS"] == "Group1,Group2"
    assert merges["GROUPINGS"] == {"0": {"id": "1", "name": "Topics", "groups": "Parks, Roads"}}
    assert merges["ADDRESS"] == {"addr1": "1 Main St", "city": "Boston"}


def test_unicode_names_and_addresses_survive_percent_encoding() -> None:
    fields = subscribe("zoë.łukasz@exämple.org", AT, FNAME="Zoë", LNAME="Łukasz-Ørsted 山田")
    form = parse_form(body(fields))
    assert form["data"]["email"] == "zoë.łukasz@exämple.org"
    assert form["data"]["merges"]["LNAME"] == "Łukasz-Ørsted 山田"


def test_empty_fields_are_kept_as_empty_strings() -> None:
    form = parse_form(b"type=campaign&fired_at=2024-03-01+12%3A30%3A05&data[reason]=&data[x]")
    assert form["data"] == {"reason": "", "x": ""}


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"data[a]=1&data[a]=2", "repeated"),
        (b"data[a]=1&data[a][b]=2", "both a value and a group"),
        (b"data[a][b]=2&data[a]=1", "both a value and a group"),
        (b"data[]=1", "malformed field name"),
        (b"data[a=1", "malformed field name"),
        (b"data]a[=1", "malformed field name"),
        (b"a[1][2][3][4][5][6]=x", "nests deeper"),
        (b"type=%ff%fe", "not UTF-8"),
        (b"\xff=1", "not UTF-8"),
        ("&".join(f"f{i}=1" for i in range(501)).encode(), "more than 500 fields"),
    ],
)
def test_malformed_forms_are_refused_with_the_reason(raw: bytes, reason: str) -> None:
    with pytest.raises(FormError, match=reason):
        parse_form(raw)


@given(st.binary(max_size=600))
def test_arbitrary_bytes_parse_or_raise_form_error_only(raw: bytes) -> None:
    try:
        result = parse_form(raw)
    except FormError:
        return
    assert isinstance(result, dict)


keys = st.text(alphabet="ab[]0", min_size=1, max_size=12)
form_text = st.text(alphabet=st.sampled_from("ab[]=&%+ 0fF9é\x00"), max_size=80)


@example("%5B" * 300 + "=x&" + "a" * 700 + "=%C3%A9")  # names too long for the cache
@given(st.one_of(form_text, st.lists(st.tuples(st.text(), st.text())).map(urlencode)))
def test_form_pairs_are_what_parse_qsl_gives(text: str) -> None:
    # form_pairs is the fast path of parse_qsl(keep_blank_values=True, errors="strict").
    try:
        expected = parse_qsl(text, keep_blank_values=True, errors="strict")
    except UnicodeDecodeError:
        with pytest.raises(UnicodeDecodeError):
            form_pairs(text)
        return
    assert form_pairs(text) == expected


@given(st.lists(st.tuples(keys, st.text(max_size=20)), max_size=20))
def test_arbitrary_bracket_keys_parse_or_raise_form_error_only(
    pairs: list[tuple[str, str]],
) -> None:
    try:
        result = parse_form(urlencode(pairs).encode())
    except FormError:
        return
    assert isinstance(result, dict)


@pytest.mark.parametrize(
    "fields",
    [
        subscribe("ann@example.org", AT, FNAME="Ann"),
        unsubscribe("ann@example.org", AT, action="delete", reason="abuse"),
        profile("ann@example.org", AT, FNAME=""),
        upemail("ann@example.org", "ann.new@example.org", AT),
        cleaned("ann@example.org", AT, reason="abuse"),
        campaign(AT),
    ],
    ids=["subscribe", "unsubscribe", "profile", "upemail", "cleaned", "campaign"],
)
def test_every_sample_shape_validates_with_a_pii_free_key(fields: list[tuple[str, str]]) -> None:
    event = validate_event(parse_form(body(fields)), LIST_ID)
    assert event.fired_at == AT
    assert len(event.dedupe_key) == 64
    assert "ann" not in event.dedupe_key


def test_the_same_event_gets_the_same_key_and_the_address_case_does_not_matter() -> None:
    first = validate_event(parse_form(body(unsubscribe("Ann@Example.org", AT))), LIST_ID)
    again = validate_event(parse_form(body(unsubscribe("ann@example.org", AT))), LIST_ID)
    other = validate_event(parse_form(body(cleaned("ann@example.org", AT))), LIST_ID)
    assert first.dedupe_key == again.dedupe_key != other.dedupe_key


@pytest.mark.parametrize(
    ("fields", "code", "message"),
    [
        ([("fired_at", "2024-03-01 12:30:05")], "malformed", "type"),
        ([("type", "unsubscribe"), ("fired_at", "yesterday")], "malformed", "fired_at"),
        ([("type", "unsubscribe"), ("fired_at", "2024-03-01 12:30:05")], "malformed", "data"),
        (unsubscribe("not-an-address", AT), "malformed", "data[email]"),
        (unsubscribe("ann@example.org", AT, action="explode"), "malformed", "data[action]"),
        (upemail("ann@example.org", "", AT), "malformed", "data[new_email]"),
        ([*campaign(AT)[:2], ("data[list_id]", "other")], "wrong_list", "audience"),
    ],
)
def test_invalid_events_name_the_field(
    fields: list[tuple[str, str]], code: str, message: str
) -> None:
    with pytest.raises(BadEvent, match=message.replace("[", r"\[").replace("]", r"\]")) as info:
        validate_event(parse_form(body(fields)), LIST_ID)
    assert info.value.code == code


def test_events_are_refused_when_no_audience_is_configured() -> None:
    with pytest.raises(BadEvent) as info:
        validate_event(parse_form(body(campaign(AT))), None)
    assert info.value.code == "wrong_list"


@pytest.mark.parametrize(
    "value",
    [
        "2024-03-01T12:30:05",  # ISO 8601, which fromisoformat alone would take
        "2024-03-01 12:30:05+01:00",
        "2024-03-01",
        "2024-3-01 12:30:05",
        "2024-02-30 12:30:05",  # the right shape, not a date
        "2024-03-01 24:00:00",
        "\uff12\uff10\uff12\uff14-03-01 12:30:05",  # full-width digits: not ASCII ones
    ],
)
def test_fired_at_must_be_exactly_mailchimps_format(value: str) -> None:
    with pytest.raises(BadEvent, match="fired_at"):
        parse_fired_at(value)


def test_fired_at_is_read_as_utc_with_surrounding_spaces_ignored() -> None:
    assert parse_fired_at(" 2024-02-29 23:59:59 ") == datetime(2024, 2, 29, 23, 59, 59, tzinfo=UTC)
