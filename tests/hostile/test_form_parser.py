"""The webhook's bracket-key form parser under hostile bodies: a correct nested record or a
FormError naming the problem (never a value, never an address), nothing else. The plain
arbitrary-bytes property lives in tests/optouts/test_form.py; these go further."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote, urlencode

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.hostile.conftest import FORM, SECRET, WEBHOOK, TestClient, counts
from worker.optouts.form import MAX_DEPTH, MAX_KEY_CHARS, FormError, parse_form

BOUNDED = settings(max_examples=100, deadline=None, derandomize=True, database=None)

# Names of one bracket part: anything but brackets and NUL, including "&", "=", "%", "+",
# spaces, "@" and non-ASCII, all of which must survive percent-encoding.
part = st.text(
    alphabet=st.characters(blacklist_categories=["Cs"], blacklist_characters="[]\x00"),
    min_size=1,
    max_size=12,
)
value = st.text(
    alphabet=st.characters(blacklist_categories=["Cs"], blacklist_characters="\x00"),
    max_size=40,
)
tree = st.recursive(
    value, lambda children: st.dictionaries(part, children, min_size=1, max_size=4), max_leaves=25
)
records = st.dictionaries(part, tree, max_size=6)


def flatten(node: dict[str, Any], prefix: str = "") -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    for name, child in node.items():
        key = f"{prefix}[{name}]" if prefix else name
        out += flatten(child, key) if isinstance(child, dict) else [(key, child)]
    return out


def depth(node: Any) -> int:
    return 1 + max(map(depth, node.values())) if isinstance(node, dict) and node else 0


def too_big(record: dict[str, Any]) -> bool:
    fields = flatten(record)
    return depth(record) > MAX_DEPTH or any(len(key) > MAX_KEY_CHARS for key, _ in fields)


@BOUNDED
@given(records)
def test_any_well_formed_form_parses_back_into_the_same_record(record: dict[str, Any]) -> None:
    body = urlencode(flatten(record)).encode()
    if too_big(record):
        with pytest.raises(FormError):
            parse_form(body)
    else:
        assert parse_form(body) == record


@BOUNDED
@given(st.lists(part, min_size=1, max_size=40), value)
def test_keys_nesting_deeper_than_the_limit_are_refused(parts: list[str], text: str) -> None:
    key = parts[0] + "".join(f"[{p}]" for p in parts[1:])
    body = urlencode([(key, text)]).encode()
    if len(key) > MAX_KEY_CHARS:
        with pytest.raises(FormError, match="longer than"):
            parse_form(body)
    elif len(parts) > MAX_DEPTH:
        with pytest.raises(FormError, match="nests deeper"):
            parse_form(body)
    else:
        assert parse_form(body)


@pytest.mark.parametrize("size", [MAX_KEY_CHARS + 1, 5_000, 60_000])
def test_huge_keys_are_refused_without_being_echoed(size: int) -> None:
    key = "d" * size
    with pytest.raises(FormError, match="longer than") as info:
        parse_form(f"{key}=1".encode())
    assert key not in str(info.value)


@BOUNDED
@given(records.filter(bool), st.data())
def test_a_repeated_field_is_refused_whatever_its_values(
    record: dict[str, Any], data: st.DataObject
) -> None:
    fields = flatten(record)
    key, first = data.draw(st.sampled_from(fields))
    again = data.draw(value)
    body = urlencode([*fields, (key, again)]).encode()
    with pytest.raises(FormError) as info:
        parse_form(body)
    for text in (first, again):
        if len(text) >= 4:
            assert text not in str(info.value)


@BOUNDED
@given(records, st.binary(min_size=1, max_size=8), st.booleans())
def test_bytes_that_are_not_utf8_are_refused(
    record: dict[str, Any], junk: bytes, percent_encoded: bool
) -> None:
    bad = b"\xff" + junk  # 0xFF never occurs in UTF-8
    raw = "".join(f"%{b:02X}" for b in bad).encode() if percent_encoded else bad
    body = urlencode(flatten(record)).encode() + b"&data[x]=" + raw
    with pytest.raises(FormError, match="not UTF-8"):
        parse_form(body)


@pytest.mark.parametrize("body", [b"type=a%00b", b"type=a\x00b", b"data[%00]=1", b"ty%00pe=x"])
def test_nul_characters_are_refused(body: bytes) -> None:
    with pytest.raises(FormError, match="NUL"):
        parse_form(body)


addresses = st.emails().map(str.swapcase)


@BOUNDED
@given(addresses, st.sampled_from(["{a}[", "data[{a}", "data]{a}[", "{a}[]", "[{a}]"]))
def test_an_address_sent_as_a_field_name_is_never_echoed(address: str, shape: str) -> None:
    key = shape.format(a=address)
    with pytest.raises(FormError) as info:
        parse_form(urlencode([(key, "x")]).encode())
    assert "@" not in str(info.value)
    assert address not in str(info.value)


# --- over HTTP ---------------------------------------------------------------------------


@settings(
    max_examples=60,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    fields=st.lists(
        st.tuples(st.sampled_from(["type", "data[email]", "data[merges][EMAIL]", "x"]), addresses),
        min_size=1,
        max_size=4,
    ),
    suffix=st.sampled_from(["&data[x]=%00", "&data[x]=%ff", "&data[x][y]=1&data[x]=2", "&[=1"]),
)
def test_a_refused_webhook_body_stores_nothing_and_echoes_no_address(
    client: TestClient, fields: list[tuple[str, str]], suffix: str
) -> None:
    before = counts()
    body = urlencode(fields).encode() + suffix.encode()
    response = client.post(WEBHOOK + SECRET, content=body, headers=FORM)
    assert response.status_code == 400
    assert response.json()["reason"] == "malformed"
    assert counts() == before
    for _, address in fields:
        assert address not in response.text
        assert quote(address) not in response.text
