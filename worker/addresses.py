"""Email addresses: how listsync normalizes one and derives Mailchimp's member key from it.

A leaf module: every package may import it, and it imports nothing of listsync.
"""

from __future__ import annotations

from hashlib import md5

from email_validator import EmailNotValidError, validate_email


class InvalidAddress(ValueError):
    """Not an address listsync accepts. The message never quotes the address."""


def normalize_email(email: str) -> str:
    """The normalized address (email-validator, no DNS); raises InvalidAddress."""
    try:
        return validate_email(email, check_deliverability=False).normalized
    except EmailNotValidError as exc:
        raise InvalidAddress(_without(str(exc), email)) from None


def _without(text: str, email: str) -> str:
    """email-validator's messages may quote parts of the address: cut them out."""
    local, _, domain = email.rpartition("@")
    for part in sorted({email, local, domain}, key=len, reverse=True):
        if len(part) >= 3:
            text = text.replace(part, "…")
    return text


def email_hash(email: str) -> str:
    """Mailchimp's member key: MD5 hex of the lowercased address."""
    return md5(email.lower().encode(), usedforsecurity=False).hexdigest()
