"""One address, one person: every spelling of an internationalized address (Unicode domain,
IDNA A-labels, any case) is one contact, from a signup, a webhook or an old row; refused
addresses are named by a fixed code, never quoted."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select

from tests.optouts.payloads import unsubscribe
from tests.optouts.test_apply import apply, deliver
from worker.addresses import REASONS, InvalidAddress, email_hash, normalize_email
from worker.db import session_scope
from worker.models import (
    Contact,
    ContactStatus,
    RejectedSignup,
    Suppression,
    SuppressionReason,
)
from worker.signups.message import SignupRejected, build_message
from worker.signups.store import receive

SPELLINGS = ["Ann@münchen.de", "ann@MÜNCHEN.DE", "Ann@xn--mnchen-3ya.de", " ann@xn--MNCHEN-3ya.de"]
ASCII_KEY = email_hash("ann@xn--mnchen-3ya.de")
UNICODE_KEY = email_hash("ann@münchen.de")  # the key before migration 0006

pytestmark = pytest.mark.usefixtures("store")


def contacts() -> list[tuple[str, str, str]]:
    with session_scope() as session:
        return [
            (c.email, c.email_hash, c.status)
            for c in session.scalars(select(Contact).order_by(Contact.id))
        ]


def test_every_spelling_is_one_contact_keyed_by_its_ascii_form() -> None:
    for i, spelling in enumerate(SPELLINGS):
        receive(
            build_message(spelling, "newsletter_signup", idempotency_key=f"spelling-{i}"),
            channel="queue",
        )

    assert contacts() == [("Ann@xn--mnchen-3ya.de", ASCII_KEY, ContactStatus.NEW)]


@pytest.mark.parametrize("spelling", ["ann@münchen.de", "ANN@xn--mnchen-3ya.de"])
def test_an_unsubscribe_in_either_spelling_reaches_the_contact(spelling: str) -> None:
    receive(build_message("Ann@münchen.de", "newsletter_signup"), channel="queue")

    state, _ = apply(deliver(unsubscribe(spelling, datetime.now(UTC) + timedelta(seconds=1))))

    assert state == "applied"
    assert contacts() == [("Ann@xn--mnchen-3ya.de", ASCII_KEY, ContactStatus.UNSUBSCRIBED)]


@pytest.mark.parametrize(
    ("reason", "kept_out"),
    [(SuppressionReason.ERASED, "address was erased"), (SuppressionReason.OPTED_OUT, "")],
)
def test_a_suppression_under_the_old_unicode_key_still_holds(reason: str, kept_out: str) -> None:
    erased_at = datetime.now(UTC)
    with session_scope() as session:
        session.add(Suppression(email_hash=UNICODE_KEY, reason=reason, created_at=erased_at))
    stale = build_message(
        "ann@xn--mnchen-3ya.de", "newsletter_signup", submitted_at=erased_at - timedelta(days=1)
    )

    if kept_out:
        with pytest.raises(SignupRejected, match=kept_out):
            receive(stale, channel="queue")
        assert contacts() == []
    else:
        receive(stale, channel="queue")
        assert contacts() == [("ann@xn--mnchen-3ya.de", ASCII_KEY, ContactStatus.UNSUBSCRIBED)]


@pytest.mark.parametrize(
    ("address", "code"),
    [
        ("☃@smithfamily.org", "local_part_not_ascii"),
        ("jo@☃smithfamily", "invalid_domain"),
        ("jo.smithfamily.org", "no_at_sign"),
        ("@smithfamily.org", "empty_local_part"),
        ("jo.smith@", "empty_domain"),
        ('"jo smith"@smithfamily.org', "invalid_local_part"),
        ("jo.smith@[192.0.2.1]", "invalid_domain"),
        ("jo..smith@smithfamily.org", "invalid"),
        ("jo@" + ("smithfamily" * 6 + ".") * 4 + "org", "too_long"),
    ],
)
def test_a_refused_address_is_named_by_a_fixed_code_and_never_quoted(
    address: str, code: str
) -> None:
    with pytest.raises(InvalidAddress) as refused:
        normalize_email(address)
    with pytest.raises(SignupRejected) as rejected:
        receive(build_message(address, "newsletter_signup"), channel="queue")

    assert refused.value.code == code
    expected = f"email: not a valid email address: {REASONS[code]}"
    assert [f"{p.field}: {p.reason}" for p in rejected.value.problems] == [expected]
    with session_scope() as session:
        stored = session.scalars(select(RejectedSignup.reason)).all()
    assert [str(r) for r in stored] == [str(stored[0])] and "smith" not in str(stored)


@pytest.mark.parametrize(
    "address",
    [
        "Ann.Smith@Example.ORG",
        "  padded@trust.org ",
        "o'brien+news@sub.example.co.uk",
        "ann@xn--mnchen-3ya.de",
        "ANN@XN--MNCHEN-3YA.DE",
        "no-at-sign.example.org",  # refused: keyed as it is
        "two@@example.org",
        "ann@münchen.de",  # not ASCII: normalized to its IDNA form first
        "Ann@MÜNCHEN.DE",
    ],
)
def test_member_hash_is_the_key_of_the_normalized_address_or_of_the_address_as_it_is(
    address: str,
) -> None:
    from worker.addresses import member_hash

    try:
        expected = email_hash(normalize_email(address.strip()))
    except InvalidAddress:
        expected = email_hash(address.strip())
    assert member_hash(address) == expected
