"""What one signup adds to its member write, from its form's feed: tags, groups (names
resolved to Mailchimp's ids), language, marketing permissions, and the status a new member
gets. Nothing here can change an existing member's status: groups and permissions are only
ever switched on, and `status_if_new` applies to a member the call creates.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from worker.feeds.schema import AudienceSchema
from worker.forms import LANGUAGE_PATTERN, Form
from worker.mailchimp import MemberExtras

_LANGUAGE = re.compile(LANGUAGE_PATTERN)


class Unresolved(LookupError):
    """A group or permission name the audience does not have (renamed in Mailchimp?).

    `code` names the problem for the job's reason; the message carries no personal data."""

    def __init__(self, code: str) -> None:
        super().__init__(code)
        self.code = code


@dataclass(frozen=True)
class Feed:
    """One signup's extras, and the status Mailchimp gives the member if the call creates it
    (None: the global rule, LISTSYNC_DOUBLE_OPTIN or the audience's own setting)."""

    extras: MemberExtras
    double_optin: bool | None


def needs_schema(form: Form) -> bool:
    """Whether the form's feed names things only the audience can resolve."""
    return bool(
        form.interests
        or form.interest_fields
        or form.marketing_permissions
        or form.double_optin == "audience"
    )


def feed_of(form: Form, fields: dict[str, Any], schema: AudienceSchema | None) -> Feed:
    """A signup's feed; raises Unresolved when a name does not resolve in `schema`."""
    interests: list[str] = []
    if schema is None and needs_schema(form):
        raise Unresolved("audience_unknown")
    if schema is not None:
        for title, groups in form.interests.items():
            interests += [_interest(schema, title, group) for group in groups]
        for field_name, title in form.interest_fields.items():
            interests += [_interest(schema, title, group) for group in _values(fields, field_name)]
    language = form.language
    if form.language_field is not None:
        stated = fields.get(form.language_field)
        language = stated if isinstance(stated, str) and _LANGUAGE.match(stated) else None
    permissions: list[str] = []
    if form.marketing_permissions and schema is not None and schema.gdpr:
        if schema.permissions is None:
            raise Unresolved("permissions_unreadable")
        for text in form.marketing_permissions:
            if text not in schema.permissions:
                raise Unresolved("unknown_permission")
            permissions.append(schema.permissions[text])
    double_optin: bool | None
    if form.double_optin == "audience":
        assert schema is not None  # needs_schema
        double_optin = schema.double_optin
    else:
        double_optin = form.double_optin
    extras = MemberExtras(
        tags=form.tags,
        interests=tuple(dict.fromkeys(interests)),
        language=language,
        permissions=tuple(permissions),
    )
    return Feed(extras, double_optin)


def _interest(schema: AudienceSchema, title: str, group: str) -> str:
    found = schema.interest_id(title, group)
    if found is None:
        raise Unresolved("unknown_group")
    return found


def _values(fields: dict[str, Any], name: str) -> list[str]:
    """The group names a form field gives: one text, or a list of them."""
    value = fields.get(name)
    if isinstance(value, str):
        return [value] if value.strip() else []
    if isinstance(value, list):
        return [v for v in value if isinstance(v, str) and v.strip()]
    return []


def merged(feeds: Iterable[Feed]) -> Feed:
    """The feeds of one person's signups flushed together: every tag, group and permission
    they name, the latest language, and double opt-in if any of them asks for it."""
    tags: list[str] = []
    interests: list[str] = []
    permissions: list[str] = []
    language: str | None = None
    double_optin: bool | None = None
    for feed in feeds:
        tags += feed.extras.tags
        interests += feed.extras.interests
        permissions += feed.extras.permissions
        language = feed.extras.language or language
        if feed.double_optin is not None:
            double_optin = bool(double_optin) or feed.double_optin
    extras = MemberExtras(
        tags=tuple(dict.fromkeys(tags)),
        interests=tuple(dict.fromkeys(interests)),
        language=language,
        permissions=tuple(dict.fromkeys(permissions)),
    )
    return Feed(extras, double_optin)
