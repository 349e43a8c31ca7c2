"""Email addresses: how listsync normalizes one and derives Mailchimp's member key from it.

One address, one key. An address is normalized by email-validator (no DNS) and kept in its
ASCII form: an internationalized domain in IDNA A-labels (`münchen.de` → `xn--mnchen-3ya.de`),
so `Ann@münchen.de`, `ann@MÜNCHEN.DE` and `ann@xn--mnchen-3ya.de` are one person, and the
key is the MD5 of that form lowercased, which is Mailchimp's member key of the address
listsync sends it. A local part with letters outside ASCII is refused: Mailchimp cannot take
one (docs/intake.md, "Addresses").

Errors are fixed codes with fixed texts: email-validator's own messages quote parts of the
address, which must not reach a log, a rejection record or an answer.

A leaf module: every package may import it, and it imports nothing of listsync.
"""

from __future__ import annotations

from hashlib import md5

import idna
from email_validator import EmailNotValidError, validate_email

#: Why an address is refused: code -> the text shown (never any of the address).
REASONS = {
    "no_at_sign": "has no @-sign",
    "empty_local_part": "has nothing before the @-sign",
    "empty_domain": "has nothing after the @-sign",
    "too_long": "is too long",
    "local_part_not_ascii": "has letters outside ASCII before the @-sign (Mailchimp takes none)",
    "invalid_local_part": "has characters before the @-sign that an address cannot have",
    "invalid_domain": "has a domain that is not valid",
    "invalid": "is not a valid email address",
}


class InvalidAddress(ValueError):
    """Not an address listsync accepts: `code` is one of REASONS, and the message is that
    code's fixed text, so it never quotes the address."""

    def __init__(self, code: str) -> None:
        self.code = code
        super().__init__(f"not a valid email address: {REASONS[code]}")


def normalize_email(email: str) -> str:
    """The normalized ASCII form of an address (see the module's doc); raises InvalidAddress."""
    try:
        valid = validate_email(email, check_deliverability=False, allow_smtputf8=False)
    except EmailNotValidError as exc:
        raise InvalidAddress(_code(str(exc))) from None
    return valid.ascii_email or valid.normalized


def _code(message: str) -> str:
    """The REASONS code of an email-validator message. Its texts are matched, not shown."""
    text = message.lower()
    rules = (
        ("too long", "too_long"),
        ("something before the @-sign", "empty_local_part"),
        ("something after the @-sign", "empty_domain"),
        ("must have an @-sign", "no_at_sign"),
        ("at-sign", "no_at_sign"),  # a full-width or "small commercial at" instead of @
        ("internationalized characters before the @-sign", "local_part_not_ascii"),
        ("before the @-sign", "invalid_local_part"),
        ("quot", "invalid_local_part"),
        ("after the @-sign", "invalid_domain"),
        ("idna", "invalid_domain"),
    )
    return next((code for needle, code in rules if needle in text), "invalid")


def email_hash(email: str) -> str:
    """Mailchimp's member key: MD5 hex of the lowercased address."""
    return md5(email.lower().encode(), usedforsecurity=False).hexdigest()


def member_hash(address: str) -> str:
    """The key of an address from elsewhere (a webhook, Mailchimp's listing, an old message):
    that of its normalized form, so every spelling of one address finds one person; an
    address listsync would refuse is keyed as it is."""
    address = address.strip()
    if address.isascii():
        # Normalizing an ASCII address changes at most the case of its domain, which the key
        # ignores, and one it refuses is keyed as it is: the same key, without the validator
        # (the apply of every webhook event comes here).
        return email_hash(address)
    try:
        return email_hash(normalize_email(address))
    except InvalidAddress:
        return email_hash(address)


def unicode_hash(email: str) -> str | None:
    """The key an internationalized address had when listsync kept domains in Unicode (before
    migration 0006); None when that is its key today. The intake still looks it up among the
    suppressions, which hold only hashes and so could not be moved to the new key."""
    local, _, domain = email.rpartition("@")
    if not domain.startswith("xn--") and ".xn--" not in domain:
        return None
    try:
        unicode_domain = idna.decode(domain)
    except (idna.IDNAError, UnicodeError):
        return None
    return email_hash(f"{local}@{unicode_domain}")
