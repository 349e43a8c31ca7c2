"""What an audience lets its members carry, and the checks a member write must pass: merge
field definitions with their per-type rules, groups (interest categories and interests), GDPR
marketing permissions, language codes and tag names.

Where Mailchimp's documentation is silent the rules lean strict, so that listsync learns to send
clean data here rather than in production; docs/emulator.md marks each such choice [?].
"""

from __future__ import annotations

import json
import re
import secrets
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

from worker.emulator.problems import ApiError, invalid, not_found, schema_error

MERGE_TYPES = (
    "text",
    "number",
    "address",
    "phone",
    "date",
    "birthday",
    "url",
    "imageurl",
    "radio",
    "dropdown",
    "zip",
)
CATEGORY_TYPES = ("checkboxes", "dropdown", "radio", "hidden")
MERGE_INVALID = "Your merge fields were invalid."
REQUIRED_MESSAGE = "Please enter a value"
UNKNOWN_TAG_MESSAGE = "This merge field does not exist"
# Every audience has EMAIL (merge_id 0); it is never listed and never re-creatable.
RESERVED_TAGS = frozenset({"EMAIL"})
MERGE_TAG_RE = re.compile(r"^[A-Z0-9_]{1,10}$")
MAX_TEXT_LENGTH = 255
MAX_TAG_NAME_LENGTH = 100
LANGUAGE_RE = re.compile(r"^[a-z]{2}(_[A-Z]{2})?$")
DATE_FORMATS = {"MM/DD/YYYY": "%m/%d/%Y", "DD/MM/YYYY": "%d/%m/%Y"}
BIRTHDAY_FORMATS = ("MM/DD", "DD/MM")
PHONE_FORMATS = ("US", "none")
US_PHONE_RE = re.compile(r"^(\(\d{3}\) ?|\d{3}-)\d{3}-\d{4}$")
ANY_PHONE_RE = re.compile(r"^[0-9 +\-().]*[0-9][0-9 +\-().]*$")
ZIP_RE = re.compile(r"^\d{5}$")
URL_RE = re.compile(r"^https?://[^\s/?#.]+(\.[^\s/?#.]+)+(:\d+)?([/?#]\S*)?$", re.IGNORECASE)
NUMBER_RE = re.compile(r"^[+-]?(\d+(\.\d*)?|\.\d+)$")
ADDRESS_PARTS = ("addr1", "city", "state", "zip")
# Mailchimp's default country for address fields: 164 is the United States.
DEFAULT_COUNTRY = 164


def opaque_id(taken: Iterable[str] = ()) -> str:
    """Mailchimp's ids for groups and permissions: 10 hex digits, meaningless to clients."""
    seen = set(taken)
    while True:
        candidate = secrets.token_hex(5)
        if candidate not in seen:
            return candidate


def is_empty(value: Any) -> bool:
    if value is None:
        return True
    if isinstance(value, str):
        return not value.strip()
    if isinstance(value, dict):
        return all(is_empty(v) for v in value.values())
    return False


def _scalar(value: Any) -> str | None:
    """A value as the text a form would hold; None for what no form field can hold."""
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        return None
    return str(value).strip()


# ---- per-type checks: each returns the refusal message, or None when the value is fine --------
def _check_text(mf: MergeField, value: Any) -> str | None:
    text = _scalar(value)
    if text is None:
        return REQUIRED_MESSAGE
    if len(text) > MAX_TEXT_LENGTH:
        return f"Please enter a value of at most {MAX_TEXT_LENGTH} characters"
    return None


def _check_number(mf: MergeField, value: Any) -> str | None:
    text = _scalar(value)
    return None if text is not None and NUMBER_RE.match(text) else "Please enter a number"


def _check_address(mf: MergeField, value: Any) -> str | None:
    # Only the object form; Mailchimp's double-space-separated string form is refused [?].
    complete = isinstance(value, dict) and all(
        isinstance(value.get(part), str) and value[part].strip() for part in ADDRESS_PARTS
    )
    return None if complete else "Please enter a complete address"


def _check_phone(mf: MergeField, value: Any) -> str | None:
    text = _scalar(value)
    pattern = US_PHONE_RE if mf.options.get("phone_format") == "US" else ANY_PHONE_RE
    if text is not None and pattern.match(text):
        return None
    return "Please enter a valid phone number"


def _parses(text: str, fmt: str) -> bool:
    try:
        datetime.strptime(text, fmt)  # a calendar date: no time, no zone
    except ValueError:
        return False
    return True


def _check_date(mf: MergeField, value: Any) -> str | None:
    # The audience's date_format, or ISO YYYY-MM-DD (how Mailchimp's API shows dates) [?].
    text = _scalar(value)
    fmt = DATE_FORMATS.get(str(mf.options.get("date_format")), "%m/%d/%Y")
    if text is not None and (_parses(text, fmt) or _parses(text, "%Y-%m-%d")):
        return None
    return "Please enter the date"


def _check_birthday(mf: MergeField, value: Any) -> str | None:
    text = _scalar(value)
    match = re.fullmatch(r"(\d{2})/(\d{2})", text or "")
    if match is not None:
        first, second = match.groups()
        month, day = (second, first) if mf.options.get("date_format") == "DD/MM" else match.groups()
        # 2000 is a leap year, so 02/29 is a birthday and 02/30 is not.
        if _parses(f"2000-{month}-{day}", "%Y-%m-%d"):
            return None
    return "Please enter a month (01-12) and a day (01-31)"


def _check_url(mf: MergeField, value: Any) -> str | None:
    text = _scalar(value)
    return None if text is not None and URL_RE.match(text) else "Please enter a valid URL"


def _check_choice(mf: MergeField, value: Any) -> str | None:
    choices = [str(c) for c in mf.options.get("choices", [])]
    text = _scalar(value)
    if text is not None and text in choices:
        return None
    shown = text if text is not None else json.dumps(value)
    return f"Value must be one of: {', '.join(choices)} (not {shown})"


def _check_zip(mf: MergeField, value: Any) -> str | None:
    text = _scalar(value)
    return None if text is not None and ZIP_RE.match(text) else "Please enter a valid zip code"


CHECKS: dict[str, Callable[[MergeField, Any], str | None]] = {
    "text": _check_text,
    "number": _check_number,
    "address": _check_address,
    "phone": _check_phone,
    "date": _check_date,
    "birthday": _check_birthday,
    "url": _check_url,
    "imageurl": _check_url,
    "radio": _check_choice,
    "dropdown": _check_choice,
    "zip": _check_zip,
}


def default_options(kind: str) -> dict[str, Any]:
    """The options Mailchimp shows for each type when none are given."""
    defaults: dict[str, dict[str, Any]] = {
        "text": {"size": 25},
        "address": {"default_country": DEFAULT_COUNTRY},
        "phone": {"phone_format": "none"},
        "date": {"date_format": "MM/DD/YYYY"},
        "birthday": {"date_format": "MM/DD"},
        "radio": {"choices": []},
        "dropdown": {"choices": []},
    }
    return dict(defaults.get(kind, {}))


@dataclass
class MergeField:
    merge_id: int
    tag: str
    name: str
    type: str
    required: bool = False
    default_value: str = ""
    public: bool = False
    display_order: int = 0
    options: dict[str, Any] = field(default_factory=dict)
    help_text: str = ""

    def check(self, value: Any) -> str | None:
        """Why this (non-empty) value is refused, or None."""
        return CHECKS[self.type](self, value)

    def to_json(self, list_id: str) -> dict[str, Any]:
        return {**asdict(self), "options": dict(self.options), "list_id": list_id}

    def to_state(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Interest:
    id: str
    category_id: str
    name: str
    display_order: int = 0

    def to_json(self, list_id: str, subscriber_count: int) -> dict[str, Any]:
        return {
            "category_id": self.category_id,
            "list_id": list_id,
            "id": self.id,
            "name": self.name,
            # Mailchimp sends this count as a string.
            "subscriber_count": str(subscriber_count),
            "display_order": self.display_order,
        }


@dataclass
class InterestCategory:
    id: str
    title: str
    type: str
    display_order: int = 0
    interests: dict[str, Interest] = field(default_factory=dict)

    def to_json(self, list_id: str) -> dict[str, Any]:
        return {
            "list_id": list_id,
            "id": self.id,
            "title": self.title,
            "display_order": self.display_order,
            "type": self.type,
        }

    def ordered(self) -> list[Interest]:
        return sorted(self.interests.values(), key=lambda i: i.display_order)

    def to_state(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "title": self.title,
            "type": self.type,
            "display_order": self.display_order,
            "interests": [asdict(i) for i in self.interests.values()],
        }


@dataclass
class MarketingPermission:
    id: str
    text: str


def _text(body: dict[str, Any], key: str) -> str:
    """A required, non-blank string field of a definition body."""
    value = body.get(key)
    if not isinstance(value, str):
        raise schema_error(key, f"Schema describes string, {_kind(value)} found instead")
    if not value.strip():
        raise schema_error(key, "This value should not be blank.")
    return value.strip()


def _kind(value: Any) -> str:
    return "NULL" if value is None else type(value).__name__


def _optional(body: dict[str, Any], key: str, kind: type, default: Any) -> Any:
    value = body.get(key, default)
    if value is None:
        return default
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise schema_error(key, f"Schema describes {kind.__name__}, {_kind(value)} found instead")
    return value


def _duplicate(name: str) -> ApiError:
    return invalid(f'Cannot add "{name}" because it already exists on the list.')


class AudienceShape:
    """One audience's merge fields, groups and GDPR permissions, and the checks that a member
    write's ``merge_fields``, ``interests`` and ``marketing_permissions`` must pass."""

    def __init__(self) -> None:
        self.merge_fields: dict[str, MergeField] = {}  # by tag
        self.categories: dict[str, InterestCategory] = {}
        self.permissions: dict[str, MarketingPermission] = {}

    @classmethod
    def default(cls) -> AudienceShape:
        """A new audience's fields, as Mailchimp creates them (the emulator leaves out ADDRESS
        and PHONE, which Mailchimp's own defaults include, so tests opt in to them)."""
        shape = cls()
        for tag, name in (("FNAME", "First Name"), ("LNAME", "Last Name")):
            shape.add_merge_field({"tag": tag, "name": name, "type": "text", "public": True})
        return shape

    # ---- merge field definitions ------------------------------------------------------
    def add_merge_field(self, body: Any, replace: bool = False) -> MergeField:
        """POST /lists/{list}/merge-fields. ``replace`` (admin only) redefines an existing tag
        in place, keeping its merge_id: how a test makes FNAME required."""
        if not isinstance(body, dict):
            raise schema_error("", f"Schema describes object, {_kind(body)} found instead")
        name = _text(body, "name")
        kind = body.get("type")
        if kind not in MERGE_TYPES:
            raise schema_error("type", f"Schema describes enum, {json.dumps(kind)} found instead")
        existing, merge_id = self._merge_slot(body, replace)
        options = self._options(kind, body.get("options"))
        mf = MergeField(
            merge_id=merge_id,
            tag=existing.tag if existing else self._new_tag(body.get("tag"), merge_id),
            name=name,
            type=kind,
            required=_optional(body, "required", bool, False),
            default_value=_optional(body, "default_value", str, ""),
            public=_optional(body, "public", bool, False),
            display_order=_optional(body, "display_order", int, merge_id + 1),
            options=options,
            help_text=_optional(body, "help_text", str, ""),
        )
        if mf.default_value.strip():
            message = mf.check(mf.default_value)
            if message is not None:
                raise schema_error("default_value", message)
        self.merge_fields[mf.tag] = mf
        return mf

    def _merge_slot(self, body: dict[str, Any], replace: bool) -> tuple[MergeField | None, int]:
        tag = body.get("tag")
        existing = self.merge_fields.get(tag.upper()) if isinstance(tag, str) else None
        if existing is not None and replace:
            return existing, existing.merge_id
        return None, max((m.merge_id for m in self.merge_fields.values()), default=0) + 1

    def _new_tag(self, tag: Any, merge_id: int) -> str:
        if tag is None or tag == "":
            # Mailchimp makes up MMERGE<n>: a client must read the tag back, never guess it.
            tag = f"MMERGE{merge_id}"
        if not isinstance(tag, str) or not MERGE_TAG_RE.match(tag.upper()):
            raise schema_error("tag", "A merge tag is 1 to 10 letters, digits or underscores.")
        tag = tag.upper()
        if tag in self.merge_fields or tag in RESERVED_TAGS:
            raise invalid(f'A Merge Field with the tag "{tag}" already exists for this list.')
        return tag

    @staticmethod
    def _options(kind: str, given: Any) -> dict[str, Any]:
        if given is not None and not isinstance(given, dict):
            raise schema_error("options", f"Schema describes object, {_kind(given)} found instead")
        options = default_options(kind)
        options.update({k: v for k, v in (given or {}).items() if k in options})
        if kind in ("radio", "dropdown"):
            choices = options["choices"]
            if not isinstance(choices, list) or not choices:
                raise schema_error("options.choices", f"A {kind} field needs at least one choice.")
            if not all(isinstance(c, str) and c.strip() for c in choices):
                raise schema_error("options.choices", "Each choice is a non-blank string.")
        allowed = {
            "date": tuple(DATE_FORMATS),
            "birthday": BIRTHDAY_FORMATS,
            "phone": PHONE_FORMATS,
        }.get(kind)
        key = "phone_format" if kind == "phone" else "date_format"
        if allowed is not None and options[key] not in allowed:
            raise schema_error(
                f"options.{key}", f"Schema describes enum, {json.dumps(options[key])} found instead"
            )
        return options

    def merge_field(self, merge_id: str) -> MergeField:
        for mf in self.merge_fields.values():
            if str(mf.merge_id) == merge_id:
                return mf
        raise not_found()

    def ordered_merge_fields(self) -> list[MergeField]:
        return sorted(self.merge_fields.values(), key=lambda m: m.display_order)

    # ---- groups -----------------------------------------------------------------------
    def add_category(self, body: Any) -> InterestCategory:
        if not isinstance(body, dict):
            raise schema_error("", f"Schema describes object, {_kind(body)} found instead")
        title = _text(body, "title")
        kind = body.get("type")
        if kind not in CATEGORY_TYPES:
            raise schema_error("type", f"Schema describes enum, {json.dumps(kind)} found instead")
        # Two groups titled alike would make resolving by title ambiguous [?].
        if any(c.title.lower() == title.lower() for c in self.categories.values()):
            raise _duplicate(title)
        category = InterestCategory(
            id=opaque_id(self.categories),
            title=title,
            type=kind,
            display_order=_optional(body, "display_order", int, len(self.categories)),
        )
        self.categories[category.id] = category
        return category

    def category(self, category_id: str) -> InterestCategory:
        category = self.categories.get(category_id)
        if category is None:
            raise not_found()
        return category

    def ordered_categories(self) -> list[InterestCategory]:
        return sorted(self.categories.values(), key=lambda c: c.display_order)

    def add_interest(self, category_id: str, body: Any) -> Interest:
        category = self.category(category_id)
        if not isinstance(body, dict):
            raise schema_error("", f"Schema describes object, {_kind(body)} found instead")
        name = self._interest_name(category, body, None)
        interest = Interest(
            id=opaque_id(self.interest_index()),
            category_id=category.id,
            name=name,
            display_order=_optional(body, "display_order", int, len(category.interests)),
        )
        category.interests[interest.id] = interest
        return interest

    def update_interest(self, category_id: str | None, interest_id: str, body: Any) -> Interest:
        """PATCH of an interest (``category_id`` None: the admin rename, by interest id only)."""
        interest = self.interest_index().get(interest_id)
        if interest is None or (category_id is not None and interest.category_id != category_id):
            raise not_found()
        if not isinstance(body, dict):
            raise schema_error("", f"Schema describes object, {_kind(body)} found instead")
        category = self.categories[interest.category_id]
        if "name" in body:
            interest.name = self._interest_name(category, body, interest.id)
        interest.display_order = _optional(body, "display_order", int, interest.display_order)
        return interest

    @staticmethod
    def _interest_name(category: InterestCategory, body: dict[str, Any], own: str | None) -> str:
        name = _text(body, "name")
        if any(i.name.lower() == name.lower() and i.id != own for i in category.interests.values()):
            raise _duplicate(name)
        return name

    def interest(self, category_id: str, interest_id: str) -> Interest:
        interest = self.category(category_id).interests.get(interest_id)
        if interest is None:
            raise not_found()
        return interest

    def interest_index(self) -> dict[str, Interest]:
        """Every interest of the audience by id, in display order (category, then interest)."""
        return {i.id: i for c in self.ordered_categories() for i in c.ordered()}

    # ---- GDPR -------------------------------------------------------------------------
    def add_permission(self, text: str) -> MarketingPermission:
        permission = MarketingPermission(opaque_id(self.permissions), text)
        self.permissions[permission.id] = permission
        return permission

    # ---- checks on a member write -----------------------------------------------------
    def check_merge_fields(
        self, values: dict[str, Any], *, creating: bool, skip: str | None, unknown: str
    ) -> dict[str, Any]:
        """The merge fields to store, or 400 "Your merge fields were invalid." listing every
        refused field. ``skip`` is None (check all), "required" (skip_merge_validation=true
        waives required fields only) or "all"; ``unknown`` is "error" or "ignore"."""
        errors: list[dict[str, str]] = []
        kept: dict[str, Any] = {}
        for tag, value in values.items():
            if tag in self.merge_fields:
                kept[tag] = value
            elif unknown == "error" and skip != "all":
                errors.append({"field": tag, "message": UNKNOWN_TAG_MESSAGE})
        if creating:
            for mf in self.merge_fields.values():
                if mf.tag not in kept and mf.default_value:
                    kept[mf.tag] = mf.default_value
        if skip != "all":
            errors += self._field_errors(kept, creating, require=skip is None)
        if errors:
            raise invalid(MERGE_INVALID, errors)
        return kept

    def _field_errors(
        self, values: dict[str, Any], creating: bool, require: bool
    ) -> list[dict[str, str]]:
        errors: list[dict[str, str]] = []
        for mf in self.ordered_merge_fields():
            if is_empty(values.get(mf.tag)):
                # An update only answers for the fields it sends (sending one empty counts).
                if mf.required and require and (creating or mf.tag in values):
                    errors.append({"field": mf.tag, "message": REQUIRED_MESSAGE})
                continue
            message = mf.check(values[mf.tag])
            if message is not None:
                errors.append({"field": mf.tag, "message": message})
        return errors

    def check_interests(self, interests: dict[str, bool]) -> dict[str, bool]:
        known = self.interest_index()
        for interest_id in interests:
            if interest_id not in known:
                raise invalid(f"Invalid interest ID: '{interest_id}'.")
        return dict(interests)

    def check_permissions(self, items: list[dict[str, Any]]) -> dict[str, bool]:
        if items and not self.permissions:
            # Mailchimp's answer here is unknown; refusing keeps a client from believing a
            # consent was recorded where the audience cannot hold one [?].
            raise invalid("This audience does not have GDPR marketing permissions enabled.")
        chosen: dict[str, bool] = {}
        for item in items:
            pid = item["marketing_permission_id"]
            if pid not in self.permissions:
                raise invalid(f"Invalid marketing permission ID: '{pid}'.")
            chosen[pid] = item["enabled"]
        return chosen

    # ---- views and persistence ----------------------------------------------------------
    def member_interests(self, stored: dict[str, bool]) -> dict[str, bool]:
        """Every interest of the audience, on or off, as a member GET shows them."""
        return {iid: bool(stored.get(iid, False)) for iid in self.interest_index()}

    def member_permissions(self, stored: dict[str, bool]) -> list[dict[str, Any]]:
        return [
            {"marketing_permission_id": p.id, "text": p.text, "enabled": stored.get(p.id, False)}
            for p in self.permissions.values()
        ]

    def groups(self, stored: dict[str, bool]) -> dict[str, list[str]]:
        """{category title: names of the interests that are on}: the admin's readable view."""
        return {
            c.title: [i.name for i in c.ordered() if stored.get(i.id)]
            for c in self.ordered_categories()
        }

    def to_state(self) -> dict[str, Any]:
        return {
            "merge_fields": [mf.to_state() for mf in self.merge_fields.values()],
            "interest_categories": [c.to_state() for c in self.categories.values()],
            "marketing_permissions": [asdict(p) for p in self.permissions.values()],
        }

    @classmethod
    def from_state(cls, raw: dict[str, Any]) -> AudienceShape:
        shape = cls()
        for m in raw.get("merge_fields", []):
            shape.merge_fields[m["tag"]] = MergeField(**m)
        for c in raw.get("interest_categories", []):
            interests = {i["id"]: Interest(**i) for i in c.get("interests", [])}
            shape.categories[c["id"]] = InterestCategory(
                c["id"], c["title"], c["type"], c.get("display_order", 0), interests
            )
        for p in raw.get("marketing_permissions", []):
            shape.permissions[p["id"]] = MarketingPermission(p["id"], p["text"])
        return shape


# ---- audience-independent checks on a member write --------------------------------------
def check_language(value: Any) -> str:
    """A language code such as en, es or es_ES; "" leaves it unset."""
    if not isinstance(value, str) or (value and not LANGUAGE_RE.match(value)):
        raise schema_error("language", "Please enter a language code such as en, fr or es_ES.")
    return value


def check_tag_names(tags: Any, fld: str = "tags") -> list[str]:
    """Tag names in a member create: non-blank strings of at most 100 characters [?]."""
    if not isinstance(tags, list):
        raise schema_error(fld, f"Schema describes array, {_kind(tags)} found instead")
    for name in tags:
        check_tag_name(name, fld)
    return list(tags)


def check_tag_name(name: Any, fld: str) -> str:
    if not isinstance(name, str):
        raise schema_error(fld, f"Schema describes string, {_kind(name)} found instead")
    if not name.strip():
        raise schema_error(fld, "A tag name must not be blank.")
    if len(name) > MAX_TAG_NAME_LENGTH:
        raise schema_error(fld, f"A tag name is at most {MAX_TAG_NAME_LENGTH} characters.")
    return name


def check_interest_map(value: Any) -> dict[str, bool]:
    if not isinstance(value, dict):
        raise schema_error("interests", f"Schema describes object, {_kind(value)} found instead")
    for flag in value.values():
        if not isinstance(flag, bool):
            raise schema_error(
                "interests", f"Schema describes boolean, {_kind(flag)} found instead"
            )
    return value


def check_permission_items(value: Any) -> list[dict[str, Any]]:
    if not isinstance(value, list):
        raise schema_error(
            "marketing_permissions", f"Schema describes array, {_kind(value)} found instead"
        )
    for item in value:
        ok = (
            isinstance(item, dict)
            and isinstance(item.get("marketing_permission_id"), str)
            and isinstance(item.get("enabled"), bool)
        )
        if not ok:
            raise schema_error(
                "marketing_permissions",
                "Each item needs marketing_permission_id (string) and enabled (boolean).",
            )
    return value
