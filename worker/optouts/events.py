"""Validation of one parsed webhook event: its type, time, audience and member, and the
dedupe key that makes a redelivery a no-op."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from config import get_settings
from worker.addresses import member_hash

#: Event types Mailchimp sends to list webhooks; anything else is stored as ignored.
KNOWN_TYPES = frozenset({"subscribe", "unsubscribe", "profile", "upemail", "cleaned", "campaign"})
UNSUB_ACTIONS = frozenset({"unsub", "delete"})
MAX_EMAIL_CHARS = 320
MAX_SHORT_CHARS = 64
FIRED_AT_FORMAT = "%Y-%m-%d %H:%M:%S"
#: The shape of fired_at, ASCII digits only; the OpenAPI schema of the webhook says the same.
FIRED_AT_PATTERN = r"[0-9]{4}-[0-9]{2}-[0-9]{2} [0-9]{2}:[0-9]{2}:[0-9]{2}"
_FIRED_AT = re.compile(FIRED_AT_PATTERN)
#: Clocks drift, but an event Mailchimp fired later than this ahead of ours is refused: its
#: date decides the order of a contact's changes, and one dated years ahead would pin the
#: contact's status against every real event after it.
MAX_CLOCK_SKEW = timedelta(hours=1)
#: Fields never stored: the IPs Mailchimp echoes back (P4: no IP kept beside an address).
UNSTORED_DATA_FIELDS = frozenset({"ip_opt", "ip_signup"})


class BadEvent(ValueError):
    """An event we refuse (400). `code` is a metric label; the message names fields only."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class ParsedEvent:
    """A valid event, ready for the inbox. `payload` holds PII; nothing else here does."""

    type: str
    fired_at: datetime
    list_id: str
    email_hash: str | None
    dedupe_key: str
    payload: dict[str, Any]

    @property
    def known(self) -> bool:
        return self.type in KNOWN_TYPES


def parse_fired_at(value: object) -> datetime:
    """Mailchimp's "YYYY-MM-DD HH:MM:SS", no zone: taken as UTC (docs/mailchimp.md)."""
    if not isinstance(value, str):
        raise BadEvent("malformed", "fired_at: missing or not a single value")
    value = value.strip()
    try:
        # The pattern fixes the format (fromisoformat alone takes many more); fromisoformat
        # then checks the date and is several times cheaper than strptime.
        if _FIRED_AT.fullmatch(value):
            return datetime.fromisoformat(value).replace(tzinfo=UTC)
    except ValueError:
        pass
    raise BadEvent("malformed", "fired_at: not YYYY-MM-DD HH:MM:SS")


def _text(data: dict[str, Any], name: str, *, required: bool, limit: int = MAX_SHORT_CHARS) -> str:
    value = data.get(name)
    if value is None:
        if required:
            raise BadEvent("malformed", f"data[{name}]: missing")
        return ""
    if not isinstance(value, str):
        raise BadEvent("malformed", f"data[{name}]: not a single value")
    if len(value) > limit:
        raise BadEvent("malformed", f"data[{name}]: longer than {limit} characters")
    return value


def _email(data: dict[str, Any], name: str) -> str:
    value = _text(data, name, required=True, limit=MAX_EMAIL_CHARS).strip()
    local, at, domain = value.rpartition("@")
    if not at or not local or not domain or any(c.isspace() for c in value):
        raise BadEvent("malformed", f"data[{name}]: not an email address")
    return value


def dedupe_key(*parts: str) -> str:
    """sha256 hex of the parts: the inbox's unique key. It carries no PII."""
    return hashlib.sha256("\x1f".join(parts).encode()).hexdigest()


def validate_event(
    form: dict[str, Any], expected_list_id: str | None, *, now: datetime | None = None
) -> ParsedEvent:
    """Check one parsed form against the shapes in docs/mailchimp.md; raises BadEvent."""
    kind = form.get("type")
    if not isinstance(kind, str) or not kind.strip():
        raise BadEvent("malformed", "type: missing or not a single value")
    kind = kind.strip()
    if len(kind) > 32:
        raise BadEvent("malformed", "type: longer than 32 characters")
    fired_at = parse_fired_at(form.get("fired_at"))
    if fired_at > (now or datetime.now(UTC)) + MAX_CLOCK_SKEW:
        raise BadEvent("fired_in_future", "fired_at: more than an hour ahead of this clock")
    data = form.get("data")
    if not isinstance(data, dict):
        raise BadEvent("malformed", "data: missing or not a group of data[...] fields")
    list_id = _text(data, "list_id", required=True)
    if not expected_list_id or list_id != expected_list_id:
        raise BadEvent("wrong_list", "data[list_id]: not the configured audience")
    merges = data.get("merges")
    if merges is not None and not isinstance(merges, dict):
        raise BadEvent("malformed", "data[merges]: not a group of data[merges][...] fields")

    when = fired_at.strftime(FIRED_AT_FORMAT)
    key_hash: str | None = None
    if kind in {"subscribe", "unsubscribe", "profile", "cleaned"}:
        email = _email(data, "email")
        key_hash = member_hash(email)
        _text(data, "reason", required=False)
        if kind == "unsubscribe" and _text(data, "action", required=False) not in (
            UNSUB_ACTIONS | {""}
        ):
            raise BadEvent("malformed", "data[action]: not unsub or delete")
        key = dedupe_key(kind, when, list_id, key_hash)
    elif kind == "upemail":
        old = _email(data, "old_email")
        new = _email(data, "new_email")
        key_hash = member_hash(old)
        key = dedupe_key(kind, when, list_id, key_hash, member_hash(new))
    elif kind == "campaign":
        key = dedupe_key(kind, when, list_id, _text(data, "id", required=True))
    else:
        # An unknown shape: the whole body decides what counts as the same delivery.
        key = dedupe_key("unknown", repr(sorted(_flatten(form))))
    return ParsedEvent(kind, fired_at, list_id, key_hash, key, _stored(form, data))


def _stored(form: dict[str, Any], data: dict[str, Any]) -> dict[str, Any]:
    """What the inbox keeps of an event: no IPs, and of the merge fields Mailchimp sends (all
    of the member's: phone, address, birthday, groups…) only those listsync syncs
    (LISTSYNC_MERGE_FIELDS), which are all that applying it reads."""
    kept = {k: v for k, v in data.items() if k not in UNSTORED_DATA_FIELDS}
    if isinstance(merges := data.get("merges"), dict):
        synced = get_settings().merge_fields
        kept["merges"] = {tag: value for tag, value in merges.items() if tag in synced}
    return {**form, "data": kept}


def _flatten(node: dict[str, Any], prefix: str = "") -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    for name, value in node.items():
        path = f"{prefix}[{name}]" if prefix else name
        if isinstance(value, dict):
            out += _flatten(value, path)
        else:
            out.append((path, str(value)))
    return out
