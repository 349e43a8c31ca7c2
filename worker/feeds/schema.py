"""The audience's shape as the forms are checked against it: merge fields (type, required,
default, choices), groups by category, GDPR marketing permissions, double opt-in.

Read from Mailchimp (`Gateway.audience_shape`), kept in the database with the check's result
(`audience_check`, one row), so that every process (the web's intake checks, the flush's
group and permission ids) sees the last good reading, also while Mailchimp is away.
"""

from __future__ import annotations

import threading
import time
from dataclasses import asdict, dataclass, field
from typing import Any

from sqlalchemy.orm import Session

from config import get_settings
from worker.db import session_scope
from worker.models import AudienceCheck

#: How long a process keeps the schema it read from the database before reading it again.
CACHE_SECONDS = 60.0


@dataclass(frozen=True)
class MergeField:
    tag: str
    name: str
    type: str
    required: bool = False
    default: str = ""
    choices: tuple[str, ...] = ()
    date_format: str = ""
    phone_format: str = ""


@dataclass(frozen=True)
class Category:
    id: str
    title: str
    type: str
    interests: dict[str, str] = field(default_factory=dict)  # group name -> interest id


@dataclass(frozen=True)
class AudienceSchema:
    double_optin: bool
    gdpr: bool
    merge_fields: dict[str, MergeField]  # by tag
    categories: dict[str, Category]  # by title
    #: GDPR permission text -> id; None when the audience has permissions but no member yet
    #: to read their ids from (Mailchimp shows them on members only).
    permissions: dict[str, str] | None

    @classmethod
    def from_api(cls, shape: dict[str, Any]) -> AudienceSchema:
        """From what `Gateway.audience_shape` read."""
        merge_fields = {}
        for item in shape.get("merge_fields") or []:
            options = item.get("options") or {}
            tag = str(item.get("tag", "")).upper()
            merge_fields[tag] = MergeField(
                tag=tag,
                name=str(item.get("name") or ""),
                type=str(item.get("type") or "text"),
                required=bool(item.get("required")),
                default=str(item.get("default_value") or ""),
                choices=tuple(str(c) for c in options.get("choices") or ()),
                date_format=str(options.get("date_format") or ""),
                phone_format=str(options.get("phone_format") or ""),
            )
        categories = {}
        interests = shape.get("interests") or {}
        for item in shape.get("categories") or []:
            cid = str(item.get("id"))
            categories[str(item.get("title"))] = Category(
                id=cid,
                title=str(item.get("title")),
                type=str(item.get("type") or "checkboxes"),
                interests={str(i.get("name")): str(i.get("id")) for i in interests.get(cid, [])},
            )
        permissions = shape.get("permissions")
        return cls(
            double_optin=bool(shape.get("double_optin")),
            gdpr=bool(shape.get("marketing_permissions")),
            merge_fields=merge_fields,
            categories=categories,
            permissions=(
                None
                if permissions is None
                else {str(p["text"]): str(p["marketing_permission_id"]) for p in permissions}
            ),
        )

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> AudienceSchema:
        return cls(
            double_optin=bool(data["double_optin"]),
            gdpr=bool(data["gdpr"]),
            merge_fields={
                tag: MergeField(**{**mf, "choices": tuple(mf.get("choices") or ())})
                for tag, mf in data["merge_fields"].items()
            },
            categories={title: Category(**c) for title, c in data["categories"].items()},
            permissions=data.get("permissions"),
        )

    def interest_id(self, category: str, group: str) -> str | None:
        found = self.categories.get(category)
        return found.interests.get(group) if found is not None else None


# --- stored with the check's result ---------------------------------------------------------

#: Per database URL: when it was read, and what.
_cache: dict[str, tuple[float, AudienceCheck | None]] = {}
_cache_lock = threading.Lock()


def stored(session: Session) -> AudienceCheck | None:
    return session.get(AudienceCheck, AudienceCheck.SINGLE_ROW)


def last_check(*, fresh: bool = False) -> AudienceCheck | None:
    """The last stored check (and schema), read from the database at most once a minute per
    process; `fresh` reads it now. None before the first check."""
    settings = get_settings()
    url = settings.database_url
    with _cache_lock:
        cached = _cache.get(url)
    if not fresh and cached is not None and time.monotonic() - cached[0] < CACHE_SECONDS:
        row = cached[1]
    else:
        with session_scope() as session:
            row = stored(session)
            if row is not None:
                session.expunge(row)
        with _cache_lock:
            _cache[url] = (time.monotonic(), row)
    # A check of another audience (LISTSYNC_MAILCHIMP_LIST_ID changed) is no check of this one.
    return row if row is not None and row.list_id == settings.mailchimp_list_id else None


def forget_cached() -> None:
    """Read the stored check again on next use (after a new check)."""
    with _cache_lock:
        _cache.clear()


def current_schema(*, fresh: bool = False) -> AudienceSchema | None:
    row = last_check(fresh=fresh)
    return None if row is None or row.schema is None else AudienceSchema.from_json(row.schema)
