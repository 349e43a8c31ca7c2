"""The emulator's in-memory model of Mailchimp audiences, members and webhooks.

Plain Python with no HTTP: every operation either returns a result plus the webhook events it
fires, or raises ``ApiError`` carrying the exact problem Mailchimp would answer with.
"""

from __future__ import annotations

import hashlib
import json
import re
import secrets
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from worker.emulator.problems import ApiError, invalid, not_found, schema_error
from worker.emulator.shape import (
    AudienceShape,
    Interest,
    InterestCategory,
    MergeField,
    check_interest_map,
    check_language,
    check_permission_items,
    check_tag_name,
    check_tag_names,
)

# Statuses a member can hold, and the subset an API client may write.
MEMBER_STATUSES = ("subscribed", "unsubscribed", "cleaned", "pending", "transactional", "archived")
WRITABLE_STATUSES = ("subscribed", "unsubscribed", "pending", "transactional")
# Statuses from which Mailchimp refuses a plain re-subscribe (compliance state).
COMPLIANCE_STATUSES = ("unsubscribed", "cleaned")
# DELETE (archive) answers 405 for these, as Mailchimp does.
UNARCHIVABLE_STATUSES = ("cleaned", "pending", "archived")
WEBHOOK_EVENTS = ("subscribe", "unsubscribe", "profile", "cleaned", "upemail", "campaign")
WEBHOOK_SOURCES = ("user", "admin", "api")
DEFAULT_FAKE_DOMAINS = frozenset(
    {"example.com", "example.net", "example.org", "test.com", "mailinator.com"}
)
EMAIL_RE = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
MAX_BATCH = 500


def compliance_error(email: str) -> ApiError:
    return ApiError(
        400,
        "Member In Compliance State",
        f"{email} is in a compliance state due to unsubscribe, bounce, or compliance review "
        "and cannot be subscribed.",
    )


def forgotten_error(email: str) -> ApiError:
    return ApiError(
        400,
        "Forgotten Email Not Subscribed",
        f"{email} was permanently deleted and cannot be re-imported. "
        "The contact must re-subscribe to get back on the list.",
    )


def member_exists_error(email: str) -> ApiError:
    return ApiError(
        400,
        "Member Exists",
        f"{email} is already a list member. Use PUT to insert or update list members.",
    )


def method_not_allowed() -> ApiError:
    return ApiError(
        405,
        "Method Not Allowed",
        "The requested method and resource are not compatible. "
        "See the Allow header for this resource's available methods.",
    )


def subscriber_hash(email: str) -> str:
    """Mailchimp's member key: MD5 hex of the lowercased address."""
    return hashlib.md5(email.lower().encode(), usedforsecurity=False).hexdigest()


def iso(ts: datetime) -> str:
    return ts.astimezone(UTC).isoformat(timespec="seconds")


def fired_at(ts: datetime) -> str:
    return ts.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")


def parse_iso(value: str) -> datetime:
    """Parse an ISO 8601 timestamp; naive values are taken as UTC."""
    try:
        ts = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    except ValueError as exc:
        raise invalid(f"The timestamp '{value}' is not a valid ISO 8601 date.") from exc
    return ts if ts.tzinfo else ts.replace(tzinfo=UTC)


@dataclass
class Event:
    """One webhook event: its type, who caused it, and its form fields in Mailchimp's order."""

    list_id: str
    type: str
    source: str
    fields: list[tuple[str, str]]
    emails: tuple[str, ...]


@dataclass
class Member:
    list_id: str
    email_address: str
    status: str
    last_changed: datetime
    merge_fields: dict[str, Any] = field(default_factory=dict)
    email_type: str = "html"
    tags: dict[str, str] = field(default_factory=dict)  # name -> date_added
    interests: dict[str, bool] = field(default_factory=dict)
    marketing_permissions: dict[str, bool] = field(default_factory=dict)
    language: str = ""
    vip: bool = False
    ip_signup: str = ""
    ip_opt: str = ""
    timestamp_signup: str = ""
    timestamp_opt: str = ""
    unsubscribe_reason: str = ""
    unique_email_id: str = field(default_factory=lambda: secrets.token_hex(5))
    web_id: int = field(default_factory=lambda: secrets.randbelow(10**9))

    @property
    def id(self) -> str:
        return subscriber_hash(self.email_address)

    def to_json(self, shape: AudienceShape | None = None) -> dict[str, Any]:
        """The member as the API shows it; with its audience's ``shape``, every interest of the
        audience on or off and, on a GDPR audience, every marketing permission."""
        body: dict[str, Any] = {
            "id": self.id,
            "email_address": self.email_address,
            "unique_email_id": self.unique_email_id,
            "contact_id": self.unique_email_id,
            "full_name": " ".join(
                str(v)
                for v in (self.merge_fields.get("FNAME"), self.merge_fields.get("LNAME"))
                if v
            ),
            "web_id": self.web_id,
            "email_type": self.email_type,
            "status": self.status,
            "merge_fields": dict(self.merge_fields),
            "interests": shape.member_interests(self.interests) if shape else dict(self.interests),
            "stats": {"avg_open_rate": 0, "avg_click_rate": 0},
            "ip_signup": self.ip_signup,
            "timestamp_signup": self.timestamp_signup,
            "ip_opt": self.ip_opt,
            "timestamp_opt": self.timestamp_opt,
            "member_rating": 2,
            "last_changed": iso(self.last_changed),
            "language": self.language,
            "vip": self.vip,
            "email_client": "",
            "location": {"latitude": 0, "longitude": 0, "gmtoff": 0, "dstoff": 0},
            "source": "API - Generic",
            "tags_count": len(self.tags),
            "tags": [{"id": _tag_id(name), "name": name} for name in self.tags],
            "list_id": self.list_id,
        }
        if shape is not None and shape.permissions:
            body["marketing_permissions"] = shape.member_permissions(self.marketing_permissions)
        if self.status == "unsubscribed" and self.unsubscribe_reason:
            body["unsubscribe_reason"] = self.unsubscribe_reason
        return body

    def tags_json(self) -> list[dict[str, Any]]:
        return [
            {"id": _tag_id(name), "name": name, "date_added": added}
            for name, added in self.tags.items()
        ]

    def to_state(self) -> dict[str, Any]:
        return {
            "email_address": self.email_address,
            "status": self.status,
            "last_changed": iso(self.last_changed),
            "merge_fields": self.merge_fields,
            "email_type": self.email_type,
            "tags": [{"name": name, "date_added": added} for name, added in self.tags.items()],
            "interests": self.interests,
            "marketing_permissions": self.marketing_permissions,
            "language": self.language,
            "vip": self.vip,
            "ip_signup": self.ip_signup,
            "ip_opt": self.ip_opt,
            "timestamp_signup": self.timestamp_signup,
            "timestamp_opt": self.timestamp_opt,
            "unsubscribe_reason": self.unsubscribe_reason,
            "unique_email_id": self.unique_email_id,
            "web_id": self.web_id,
        }


def _tag_id(name: str) -> int:
    return int(hashlib.md5(name.encode(), usedforsecurity=False).hexdigest()[:6], 16)


@dataclass
class Webhook:
    id: str
    list_id: str
    url: str
    events: dict[str, bool]
    sources: dict[str, bool]
    secret: str | None = None

    def to_json(self, with_secret: bool = False) -> dict[str, Any]:
        body: dict[str, Any] = {
            "id": self.id,
            "url": self.url,
            "events": dict(self.events),
            "sources": dict(self.sources),
            "list_id": self.list_id,
        }
        if with_secret and self.secret is not None:
            body["secret"] = self.secret
        return body

    def wants(self, event: Event) -> bool:
        return self.events.get(event.type, False) and self.sources.get(event.source, False)


class Audience:
    """One audience. ``members`` is kept in last_changed order: a change moves the member to
    the end, so ``since_last_changed`` scans only the recent tail, not the whole audience."""

    def __init__(
        self,
        list_id: str,
        double_optin: bool,
        name: str = "",
        shape: AudienceShape | None = None,
    ) -> None:
        self.id = list_id
        self.double_optin = double_optin
        self.name = name or f"Emulated audience {list_id}"
        self.shape = shape or AudienceShape.default()
        self.members: dict[str, Member] = {}
        self.forgotten: set[str] = set()
        self.webhooks: dict[str, Webhook] = {}
        self.status_counts: dict[str, int] = dict.fromkeys(MEMBER_STATUSES, 0)
        self.confirmations_sent = 0
        self.date_created = iso(datetime.now(UTC))

    def to_json(self) -> dict[str, Any]:
        counts = self.status_counts
        return {
            "id": self.id,
            "web_id": int(hashlib.md5(self.id.encode(), usedforsecurity=False).hexdigest()[:6], 16),
            "name": self.name,
            "double_optin": self.double_optin,
            "marketing_permissions": bool(self.shape.permissions),
            "email_type_option": False,
            "use_archive_bar": False,
            "date_created": self.date_created,
            "list_rating": 0,
            "visibility": "prv",
            "stats": {
                "member_count": counts["subscribed"],
                "unsubscribe_count": counts["unsubscribed"],
                "cleaned_count": counts["cleaned"],
                "member_count_since_send": counts["subscribed"],
                "unsubscribe_count_since_send": counts["unsubscribed"],
                "cleaned_count_since_send": counts["cleaned"],
                "total_contacts": len(self.members),
            },
        }


def _fake(email: str, fake_domains: frozenset[str]) -> bool:
    domain = email.rsplit("@", 1)[-1].lower()
    return domain in fake_domains or domain.endswith((".invalid", ".test", ".example"))


class EmulatorState:
    """All audiences of one emulated account, and the rules that change them."""

    def __init__(
        self,
        *,
        fake_domains: frozenset[str] = DEFAULT_FAKE_DOMAINS,
        allow_pending_resubscribe: bool = True,
        batch_unsubscribed: str = "ignore",
        sign_webhooks: bool = False,
        unknown_merge_fields: str = "error",
        skip_merge_validation: str = "required",
        clock: Callable[[], datetime] | None = None,
    ) -> None:
        self.audiences: dict[str, Audience] = {}
        self.fake_domains = fake_domains
        # docs/mailchimp.md marks these unsettled ([?]); each is a switch.
        self.allow_pending_resubscribe = allow_pending_resubscribe
        self.batch_unsubscribed = batch_unsubscribed  # "ignore" | "error"
        self.unknown_merge_fields = unknown_merge_fields  # "error" | "ignore"
        # What skip_merge_validation=true waives: "required" fields only (what Mailchimp
        # documents) or "all" merge checks.
        self.skip_merge_validation = skip_merge_validation
        self.sign_webhooks = sign_webhooks
        self.throttled: set[str] = set()
        self.clock_offset = timedelta(0)
        self._clock = clock or (lambda: datetime.now(UTC))
        self._last_ts = datetime.min.replace(tzinfo=UTC)

    # ---- time -------------------------------------------------------------------------
    def now(self) -> datetime:
        """Second-resolution UTC time, never earlier than the last one handed out, so that
        member order by change equals order by ``last_changed``."""
        ts = (self._clock() + self.clock_offset).replace(microsecond=0)
        if ts < self._last_ts:
            ts = self._last_ts
        self._last_ts = ts
        return ts

    # ---- audiences --------------------------------------------------------------------
    def add_audience(
        self,
        list_id: str | None = None,
        double_optin: bool = False,
        *,
        name: str = "",
        merge_fields: Any = None,
        interest_categories: Any = None,
        marketing_permissions: Any = None,
    ) -> Audience:
        """Create an audience, shaped by the admin API's definitions; a bad definition is
        refused before anything is created."""
        shape = build_shape(merge_fields, interest_categories, marketing_permissions)
        list_id = list_id or secrets.token_hex(5)
        audience = Audience(list_id, double_optin, name, shape)
        self.audiences[list_id] = audience
        return audience

    def audience(self, list_id: str) -> Audience:
        try:
            return self.audiences[list_id]
        except KeyError:
            raise not_found() from None

    def member(self, list_id: str, member_hash: str) -> Member:
        audience = self.audience(list_id)
        member = audience.members.get(member_hash.lower())
        if member is None:
            raise not_found()
        return member

    def find_member(self, list_id: str, email_or_hash: str) -> Member:
        key = email_or_hash if "@" not in email_or_hash else subscriber_hash(email_or_hash)
        return self.member(list_id, key)

    def member_json(self, member: Member) -> dict[str, Any]:
        """The member as the API shows it, interests and permissions from its audience."""
        audience = self.audiences.get(member.list_id)
        return member.to_json(audience.shape if audience else None)

    # ---- low-level mutation (keeps ordering and counts right) -----------------------
    def _touch(self, audience: Audience, member: Member, ts: datetime | None = None) -> None:
        member.last_changed = ts or self.now()
        key = member.id
        audience.members.pop(key, None)
        audience.members[key] = member

    def _set_status(self, audience: Audience, member: Member, status: str) -> None:
        if member.status == status:
            return
        audience.status_counts[member.status] -= 1
        audience.status_counts[status] += 1
        member.status = status
        if status != "unsubscribed":
            member.unsubscribe_reason = ""

    def _insert(self, audience: Audience, member: Member) -> None:
        audience.members[member.id] = member
        audience.status_counts[member.status] += 1

    def _remove(self, audience: Audience, member: Member) -> None:
        del audience.members[member.id]
        audience.status_counts[member.status] -= 1

    # ---- validation -------------------------------------------------------------------
    def _check_email(self, email: Any) -> str:
        if not isinstance(email, str) or not email.strip():
            raise schema_error("email_address", "This value should not be blank.")
        email = email.strip()
        if not EMAIL_RE.match(email):
            raise invalid("Please provide a valid email address.")
        if _fake(email, self.fake_domains):
            raise invalid(f"{email} looks fake or invalid, please enter a real email address.")
        if email.lower() in self.throttled:
            raise invalid(
                f"{email} has signed up to a lot of lists very recently; "
                "we're not allowing more signups for now"
            )
        return email

    @staticmethod
    def _check_body(body: Any) -> dict[str, Any]:
        if not isinstance(body, dict):
            raise schema_error("", "Schema describes object, " + type(body).__name__ + " found")
        for key in ("status", "status_if_new"):
            value = body.get(key)
            if value is not None and value not in WRITABLE_STATUSES:
                raise schema_error(
                    key, "Schema describes enum, " + json.dumps(value) + " found instead"
                )
        if "merge_fields" in body and not isinstance(body["merge_fields"], dict):
            raise schema_error("merge_fields", "Schema describes object, found instead")
        if "email_type" in body and body["email_type"] not in ("html", "text"):
            raise schema_error("email_type", "Schema describes enum, value found instead")
        if "tags" in body:
            check_tag_names(body["tags"])
        if body.get("interests") is not None:
            check_interest_map(body["interests"])
        if body.get("marketing_permissions") is not None:
            check_permission_items(body["marketing_permissions"])
        if body.get("language") is not None:
            check_language(body["language"])
        return body

    def _check_shape(
        self, audience: Audience, body: dict[str, Any], creating: bool, skip_merge: bool
    ) -> dict[str, Any]:
        """The body with its merge fields, interests and permissions checked against the
        audience (defaults filled in on creation), before anything is changed."""
        shape = audience.shape
        checked = dict(body)
        if creating or body.get("merge_fields"):
            checked["merge_fields"] = shape.check_merge_fields(
                body.get("merge_fields") or {},
                creating=creating,
                skip=self.skip_merge_validation if skip_merge else None,
                unknown=self.unknown_merge_fields,
            )
        if body.get("interests") is not None:
            checked["interests"] = shape.check_interests(body["interests"])
        if body.get("marketing_permissions") is not None:
            checked["marketing_permissions"] = shape.check_permissions(
                body["marketing_permissions"]
            )
        return checked

    # ---- members via the API ----------------------------------------------------------
    def upsert_member(
        self, list_id: str, member_hash: str, body: Any, skip_merge_validation: bool = False
    ) -> tuple[Member, bool, list[Event]]:
        """PUT /lists/{list}/members/{hash}: returns (member, created, events)."""
        audience = self.audience(list_id)
        body = self._check_body(body)
        email = self._check_email(body.get("email_address"))
        if subscriber_hash(email) != member_hash.lower():
            raise invalid(
                "The subscriber hash in the URL does not match the email_address in the body.",
                [{"field": "email_address", "message": "Does not match the subscriber hash."}],
            )
        return self._apply_upsert(audience, email, body, skip_merge_validation)

    def add_member(
        self, list_id: str, body: Any, skip_merge_validation: bool = False
    ) -> tuple[Member, list[Event]]:
        """POST /lists/{list}/members: create only; an existing member is 'Member Exists'."""
        audience = self.audience(list_id)
        body = self._check_body(body)
        email = self._check_email(body.get("email_address"))
        existing = audience.members.get(subscriber_hash(email))
        if existing is not None:
            raise member_exists_error(email)
        if body.get("status") is None:
            raise schema_error("status", "Schema describes enum, NULL found instead")
        member, _, events = self._apply_upsert(audience, email, body, skip_merge_validation)
        return member, events

    def _apply_upsert(
        self, audience: Audience, email: str, body: dict[str, Any], skip_merge: bool
    ) -> tuple[Member, bool, list[Event]]:
        key = subscriber_hash(email)
        if key in audience.forgotten:
            raise forgotten_error(email)
        existing = audience.members.get(key)
        if existing is None:
            status = body.get("status") or body.get("status_if_new")
            if status is None:
                raise schema_error("status", "Schema describes enum, NULL found instead")
            body = self._check_shape(audience, body, creating=True, skip_merge=skip_merge)
            return (
                self._create(audience, email, status, body),
                True,
                self._created_events(audience, email, status),
            )
        body = self._check_shape(audience, body, creating=False, skip_merge=skip_merge)
        return existing, False, self._update(audience, existing, body, with_status=True)

    def _create(self, audience: Audience, email: str, status: str, body: dict[str, Any]) -> Member:
        now = self.now()
        member = Member(
            list_id=audience.id,
            email_address=email,
            status=status,
            last_changed=now,
            merge_fields=dict(body.get("merge_fields") or {}),
            email_type=body.get("email_type") or "html",
            interests=dict(body.get("interests") or {}),
            marketing_permissions=dict(body.get("marketing_permissions") or {}),
            language=body.get("language") or "",
            vip=bool(body.get("vip", False)),
            ip_signup=body.get("ip_signup") or "",
            ip_opt=body.get("ip_opt") or "",
            timestamp_signup=body.get("timestamp_signup") or "",
            timestamp_opt=body.get("timestamp_opt") or (iso(now) if status == "subscribed" else ""),
        )
        # Tags in a PUT only take effect on creation (docs/mailchimp.md).
        for tag in body.get("tags") or []:
            member.tags[tag] = iso(now)
        self._insert(audience, member)
        if status == "pending":
            audience.confirmations_sent += 1
        return member

    def _created_events(self, audience: Audience, email: str, status: str) -> list[Event]:
        member = audience.members[subscriber_hash(email)]
        if status == "subscribed":
            return [self._event(member, "subscribe", "api")]
        if status == "unsubscribed":
            return [self._unsub_event(member, "api", "unsub", "manual")]
        return []

    def _update(
        self, audience: Audience, member: Member, body: dict[str, Any], with_status: bool
    ) -> list[Event]:
        events: list[Event] = []
        changed = False
        new_status = body.get("status") if with_status else None
        if new_status is not None and new_status != member.status:
            if member.status in COMPLIANCE_STATUSES and new_status in ("subscribed", "pending"):
                refused = (
                    new_status == "subscribed"
                    or member.status == "cleaned"
                    or not self.allow_pending_resubscribe
                )
                if refused:
                    raise compliance_error(member.email_address)
            old = member.status
            self._set_status(audience, member, new_status)
            changed = True
            if new_status == "pending":
                audience.confirmations_sent += 1
            if new_status == "subscribed":
                member.timestamp_opt = iso(self.now())
                events.append(self._event(member, "subscribe", "api"))
            elif new_status == "unsubscribed" and old != "archived":
                member.unsubscribe_reason = "N/A (Unsubscribed by an admin)"
                events.append(self._unsub_event(member, "api", "unsub", "manual"))
        merges = body.get("merge_fields")
        if merges:
            updated = {**member.merge_fields, **merges}
            if updated != member.merge_fields:
                member.merge_fields = updated
                changed = True
                if member.status in ("subscribed", "pending", "transactional"):
                    events.append(self._event(member, "profile", "api"))
        for attr in ("email_type", "language", "vip"):
            if attr in body and body[attr] is not None and getattr(member, attr) != body[attr]:
                setattr(member, attr, body[attr])
                changed = True
        # Interests and permissions not named in the write keep their value.
        for attr in ("interests", "marketing_permissions"):
            current = getattr(member, attr)
            updated = {**current, **(body.get(attr) or {})}
            if updated != current:
                setattr(member, attr, updated)
                changed = True
        if changed:
            self._touch(audience, member)
        return events

    def patch_member(
        self, list_id: str, member_hash: str, body: Any, skip_merge_validation: bool = False
    ) -> tuple[Member, list[Event]]:
        audience = self.audience(list_id)
        member = self.member(list_id, member_hash)
        body = self._check_body(body)
        body = self._check_shape(audience, body, creating=False, skip_merge=skip_merge_validation)
        events: list[Event] = []
        new_email = body.get("email_address")
        if new_email is not None and new_email.lower() != member.email_address.lower():
            new_email = self._check_email(new_email)
            if subscriber_hash(new_email) in audience.members:
                raise member_exists_error(new_email)
            events += self._change_email(audience, member, new_email, "api")
        events += self._update(audience, member, body, with_status=True)
        return member, events

    def archive_member(self, list_id: str, member_hash: str) -> list[Event]:
        """DELETE /lists/{list}/members/{hash}: archive (405 where Mailchimp refuses)."""
        audience = self.audience(list_id)
        member = self.member(list_id, member_hash)
        if member.status in UNARCHIVABLE_STATUSES:
            raise method_not_allowed()
        was_subscribed = member.status == "subscribed"
        self._set_status(audience, member, "archived")
        self._touch(audience, member)
        if was_subscribed:
            return [self._unsub_event(member, "api", "delete", "manual")]
        return []

    def delete_permanent(self, list_id: str, member_hash: str) -> list[Event]:
        audience = self.audience(list_id)
        member = self.member(list_id, member_hash)
        events = []
        if member.status == "subscribed":
            events.append(self._unsub_event(member, "api", "delete", "manual"))
        self._remove(audience, member)
        audience.forgotten.add(member.id)
        return events

    def update_tags(self, list_id: str, member_hash: str, body: Any) -> None:
        audience = self.audience(list_id)
        member = self.member(list_id, member_hash)
        tags = body.get("tags") if isinstance(body, dict) else None
        if not isinstance(tags, list):
            raise schema_error("tags", "Schema describes array, NULL found instead")
        for tag in tags:
            if not isinstance(tag, dict) or not isinstance(tag.get("name"), str):
                raise schema_error("tags.item:name", "Schema describes string, NULL found instead")
            check_tag_name(tag["name"], "tags.item:name")
            if tag.get("status") not in ("active", "inactive"):
                raise schema_error("tags.item:status", "Schema describes enum, found instead")
        now = iso(self.now())
        for tag in tags:
            if tag["status"] == "active":
                member.tags.setdefault(tag["name"], now)
            else:
                member.tags.pop(tag["name"], None)
        self._touch(audience, member)

    def member_tags(
        self, list_id: str, member_hash: str, count: int, offset: int
    ) -> dict[str, Any]:
        """GET .../members/{hash}/tags: the tags with the date each was added."""
        tags = self.member(list_id, member_hash).tags_json()
        return {"tags": _page(tags, count, offset), "total_items": len(tags)}

    # ---- batch subscribe --------------------------------------------------------------
    def batch_subscribe(
        self, list_id: str, body: Any, skip_merge_validation: bool = False
    ) -> tuple[dict[str, Any], list[Event]]:
        audience = self.audience(list_id)
        if not isinstance(body, dict) or not isinstance(body.get("members"), list):
            raise schema_error("members", "Schema describes array, NULL found instead")
        members_in = body["members"]
        if len(members_in) > MAX_BATCH:
            raise schema_error("members", f"Schema describes array of maximum {MAX_BATCH} items")
        update_existing = bool(body.get("update_existing", False))
        new: list[dict[str, Any]] = []
        updated: list[dict[str, Any]] = []
        errors: list[dict[str, Any]] = []
        events: list[Event] = []
        for item in members_in:
            email_raw = item.get("email_address", "") if isinstance(item, dict) else ""
            try:
                item = self._check_body(item)
                email = self._check_email(item.get("email_address"))
                if item.get("status") is None and item.get("status_if_new") is None:
                    raise schema_error("status", "Schema describes enum, NULL found instead")
                existing = audience.members.get(subscriber_hash(email))
                if existing is not None and not update_existing:
                    errors.append(
                        _batch_error(
                            email,
                            f"{email} is already a list member, do you want to update? "
                            "please provide update_existing:true in the request body",
                            "ERROR_CONTACT_EXISTS",
                        )
                    )
                    continue
                if (
                    existing is not None
                    and existing.status in COMPLIANCE_STATUSES
                    and item.get("status") in ("subscribed", "pending")
                    and self.batch_unsubscribed == "ignore"
                ):
                    # Reported behaviour: the batch API silently ignores the re-subscribe.
                    item = {k: v for k, v in item.items() if k != "status"}
                member, created, evs = self._apply_upsert(
                    audience, email, item, skip_merge_validation
                )
                events += evs
                (new if created else updated).append(member.to_json(audience.shape))
            except ApiError as exc:
                err = _batch_error(str(email_raw), exc.detail, "ERROR_GENERIC")
                if exc.errors:
                    err["field"] = exc.errors[0]["field"]
                    err["field_message"] = exc.errors[0]["message"]
                errors.append(err)
        result = {
            "new_members": new,
            "updated_members": updated,
            "errors": errors,
            "total_created": len(new),
            "total_updated": len(updated),
            "error_count": len(errors),
        }
        return result, events

    # ---- listing ----------------------------------------------------------------------
    def list_members(
        self,
        list_id: str,
        *,
        status: str | None = None,
        since_last_changed: str | None = None,
        before_last_changed: str | None = None,
        count: int = 10,
        offset: int = 0,
        sort_dir: str = "ASC",
    ) -> dict[str, Any]:
        audience = self.audience(list_id)
        if status is not None and status not in MEMBER_STATUSES:
            raise schema_error("status", "Schema describes enum, " + json.dumps(status) + " found")
        if count > 1000 or count < 0:
            raise invalid("count must be between 0 and 1000.")
        since = parse_iso(since_last_changed) if since_last_changed else None
        before = parse_iso(before_last_changed) if before_last_changed else None
        matches: Iterator[Member]
        if since is not None:
            # Walk the change-ordered tail back to the watermark: O(changes since), not O(n).
            tail: list[Member] = []
            for member in reversed(audience.members.values()):
                if member.last_changed < since:
                    break
                tail.append(member)
            tail.reverse()
            matches = iter(tail)
        else:
            matches = iter(audience.members.values())
        selected = [
            m
            for m in matches
            if (status is None or m.status == status)
            and (before is None or m.last_changed < before)
        ]
        if sort_dir.upper() == "DESC":
            selected.reverse()
        page = selected[offset : offset + count]
        return {
            "members": [m.to_json(audience.shape) for m in page],
            "list_id": list_id,
            "total_items": len(selected),
        }

    # ---- audience shape: merge fields and groups ----------------------------------------
    def merge_fields(
        self,
        list_id: str,
        count: int,
        offset: int,
        kind: str | None = None,
        required: bool | None = None,
    ) -> dict[str, Any]:
        """GET /lists/{list}/merge-fields, filtered by ``type`` and ``required``."""
        audience = self.audience(list_id)
        fields = [
            mf.to_json(list_id)
            for mf in audience.shape.ordered_merge_fields()
            if (kind is None or mf.type == kind) and (required is None or mf.required == required)
        ]
        return {
            "merge_fields": _page(fields, count, offset),
            "list_id": list_id,
            "total_items": len(fields),
        }

    def add_merge_field(self, list_id: str, body: Any) -> MergeField:
        return self.audience(list_id).shape.add_merge_field(body)

    def merge_field(self, list_id: str, merge_id: str) -> MergeField:
        return self.audience(list_id).shape.merge_field(merge_id)

    def interest_categories(
        self, list_id: str, count: int, offset: int, kind: str | None = None
    ) -> dict[str, Any]:
        audience = self.audience(list_id)
        categories = [
            c.to_json(list_id)
            for c in audience.shape.ordered_categories()
            if kind is None or c.type == kind
        ]
        return {
            "list_id": list_id,
            "categories": _page(categories, count, offset),
            "total_items": len(categories),
        }

    def add_interest_category(self, list_id: str, body: Any) -> InterestCategory:
        return self.audience(list_id).shape.add_category(body)

    def interest_category(self, list_id: str, category_id: str) -> InterestCategory:
        return self.audience(list_id).shape.category(category_id)

    def interests(self, list_id: str, category_id: str, count: int, offset: int) -> dict[str, Any]:
        category = self.interest_category(list_id, category_id)
        interests = [self.interest_json(list_id, i) for i in category.ordered()]
        return {
            "interests": _page(interests, count, offset),
            "list_id": list_id,
            "category_id": category_id,
            "total_items": len(interests),
        }

    def add_interest(self, list_id: str, category_id: str, body: Any) -> Interest:
        return self.audience(list_id).shape.add_interest(category_id, body)

    def interest(self, list_id: str, category_id: str, interest_id: str) -> Interest:
        return self.audience(list_id).shape.interest(category_id, interest_id)

    def update_interest(
        self, list_id: str, category_id: str | None, interest_id: str, body: Any
    ) -> Interest:
        """PATCH of an interest; ``category_id`` None for the admin's rename (as in the UI):
        ids stay, names change."""
        return self.audience(list_id).shape.update_interest(category_id, interest_id, body)

    def interest_json(self, list_id: str, interest: Interest) -> dict[str, Any]:
        """An interest with its subscriber count: subscribed members who have it on. Counted on
        each read, which is cheap at test sizes and can never drift."""
        audience = self.audience(list_id)
        count = sum(
            1
            for m in audience.members.values()
            if m.status == "subscribed" and m.interests.get(interest.id)
        )
        return interest.to_json(list_id, count)

    # ---- webhooks ---------------------------------------------------------------------
    def validate_webhook(
        self, list_id: str, body: Any
    ) -> tuple[str, dict[str, bool], dict[str, bool]]:
        self.audience(list_id)
        if not isinstance(body, dict):
            raise schema_error("url", "Schema describes string, NULL found instead")
        url = body.get("url")
        if not isinstance(url, str) or not re.match(r"^https?://", url):
            raise schema_error("url", "Schema describes string, NULL found instead")
        events = dict.fromkeys(WEBHOOK_EVENTS, True)
        events.update({k: bool(v) for k, v in (body.get("events") or {}).items()})
        sources = {"user": True, "admin": True, "api": False}
        sources.update({k: bool(v) for k, v in (body.get("sources") or {}).items()})
        for key in events:
            if key not in WEBHOOK_EVENTS:
                raise schema_error(f"events.{key}", "Unknown event type.")
        for key in sources:
            if key not in WEBHOOK_SOURCES:
                raise schema_error(f"sources.{key}", "Unknown source.")
        return url, events, sources

    def add_webhook(
        self, list_id: str, url: str, events: dict[str, bool], sources: dict[str, bool]
    ) -> Webhook:
        audience = self.audience(list_id)
        hook = Webhook(
            id=secrets.token_hex(5),
            list_id=list_id,
            url=url,
            events=events,
            sources=sources,
            secret=secrets.token_hex(16) if self.sign_webhooks else None,
        )
        audience.webhooks[hook.id] = hook
        return hook

    def delete_webhook(self, list_id: str, webhook_id: str) -> None:
        if self.audience(list_id).webhooks.pop(webhook_id, None) is None:
            raise not_found()

    def webhook(self, list_id: str, webhook_id: str) -> Webhook:
        hook = self.audience(list_id).webhooks.get(webhook_id)
        if hook is None:
            raise not_found()
        return hook

    # ---- person actions (the admin API) -----------------------------------------------
    def person_signup(
        self, list_id: str, email: str, merge_fields: dict[str, Any] | None = None
    ) -> list[Event]:
        """A person signs up through a Mailchimp form: the only way back after a forget."""
        audience = self.audience(list_id)
        key = subscriber_hash(email)
        audience.forgotten.discard(key)
        status = "pending" if audience.double_optin else "subscribed"
        member = audience.members.get(key)
        if member is None:
            member = self._create(audience, email, status, {"merge_fields": merge_fields or {}})
        else:
            self._set_status(audience, member, status)
            if merge_fields:
                member.merge_fields.update(merge_fields)
            self._touch(audience, member)
        return [self._event(member, "subscribe", "user")] if status == "subscribed" else []

    def person_unsubscribe(
        self, list_id: str, email: str, campaign_id: str = "", reason: str = "manual"
    ) -> list[Event]:
        audience = self.audience(list_id)
        member = self.find_member(list_id, email)
        self._set_status(audience, member, "unsubscribed")
        member.unsubscribe_reason = (
            "Spam complaint" if reason == "abuse" else "N/A (Unsubscribed from a campaign)"
        )
        self._touch(audience, member)
        return [self._unsub_event(member, "user", "unsub", reason, campaign_id)]

    def person_bounce(self, list_id: str, email: str, campaign_id: str = "") -> list[Event]:
        audience = self.audience(list_id)
        member = self.find_member(list_id, email)
        self._set_status(audience, member, "cleaned")
        self._touch(audience, member)
        fields = [
            ("type", "cleaned"),
            ("fired_at", fired_at(member.last_changed)),
            ("data[list_id]", list_id),
            ("data[campaign_id]", campaign_id),
            ("data[reason]", "hard"),
            ("data[email]", member.email_address),
        ]
        return [Event(list_id, "cleaned", "user", fields, (member.email_address,))]

    def person_change_email(self, list_id: str, email: str, new_email: str) -> list[Event]:
        audience = self.audience(list_id)
        member = self.find_member(list_id, email)
        if subscriber_hash(new_email) in audience.members:
            raise member_exists_error(new_email)
        events = self._change_email(audience, member, new_email, "user")
        events.append(self._event(member, "profile", "user"))
        return events

    def person_edit_profile(
        self, list_id: str, email: str, merge_fields: dict[str, Any]
    ) -> list[Event]:
        audience = self.audience(list_id)
        member = self.find_member(list_id, email)
        member.merge_fields.update(merge_fields)
        self._touch(audience, member)
        return [self._event(member, "profile", "user")]

    def person_confirm(self, list_id: str, email: str) -> list[Event]:
        audience = self.audience(list_id)
        member = self.find_member(list_id, email)
        if member.status != "pending":
            raise invalid(f"{member.email_address} is not pending confirmation.")
        self._set_status(audience, member, "subscribed")
        member.timestamp_opt = iso(self.now())
        self._touch(audience, member)
        return [self._event(member, "subscribe", "user")]

    def seed_member(
        self,
        list_id: str,
        email: str,
        status: str,
        merge_fields: dict[str, Any] | None = None,
        last_changed: str | None = None,
    ) -> Member | None:
        """Put a member straight into a status (no webhooks, no rules). 'forgotten' means
        permanently deleted."""
        audience = self.audience(list_id)
        key = subscriber_hash(email)
        existing = audience.members.get(key)
        if existing is not None:
            self._remove(audience, existing)
        if status == "forgotten":
            audience.forgotten.add(key)
            return None
        if status not in MEMBER_STATUSES:
            raise invalid(f"Unknown status {status!r}.")
        audience.forgotten.discard(key)
        ts = parse_iso(last_changed) if last_changed else self.now()
        member = Member(
            list_id=list_id,
            email_address=email,
            status=status,
            last_changed=ts,
            merge_fields=dict(merge_fields or {}),
        )
        if status == "unsubscribed":
            member.unsubscribe_reason = "N/A (Unsubscribed by an admin)"
        self._insert(audience, member)
        if last_changed:
            # An explicit timestamp may be out of order: restore the change order.
            audience.members = dict(
                sorted(audience.members.items(), key=lambda kv: kv[1].last_changed)
            )
        return member

    # ---- events -----------------------------------------------------------------------
    def _change_email(
        self, audience: Audience, member: Member, new_email: str, source: str
    ) -> list[Event]:
        old_email = member.email_address
        old_id = member.id
        del audience.members[old_id]
        member.email_address = new_email
        self._touch(audience, member)
        fields = [
            ("type", "upemail"),
            ("fired_at", fired_at(member.last_changed)),
            ("data[list_id]", audience.id),
            ("data[new_id]", member.id),
            ("data[new_email]", new_email),
            ("data[old_email]", old_email),
        ]
        return [Event(audience.id, "upemail", source, fields, (old_email, new_email))]

    def _event(self, member: Member, kind: str, source: str) -> Event:
        fields = [
            ("type", kind),
            ("fired_at", fired_at(self.now())),
            ("data[id]", member.id),
            ("data[list_id]", member.list_id),
            ("data[email]", member.email_address),
            ("data[email_type]", member.email_type),
            ("data[ip_opt]", member.ip_opt),
        ]
        if kind == "subscribe":
            fields.append(("data[ip_signup]", member.ip_signup))
        fields += _merge_fields(member)
        return Event(member.list_id, kind, source, fields, (member.email_address,))

    def _unsub_event(
        self, member: Member, source: str, action: str, reason: str, campaign_id: str = ""
    ) -> Event:
        fields = [
            ("type", "unsubscribe"),
            ("fired_at", fired_at(self.now())),
            ("data[action]", action),
            ("data[reason]", reason),
            ("data[id]", member.id),
            ("data[email]", member.email_address),
            ("data[email_type]", member.email_type),
            ("data[list_id]", member.list_id),
            ("data[ip_opt]", member.ip_opt),
            ("data[campaign_id]", campaign_id),
        ]
        fields += _merge_fields(member)
        return Event(member.list_id, "unsubscribe", source, fields, (member.email_address,))

    # ---- counters and persistence -----------------------------------------------------
    def member_counts(self) -> dict[str, dict[str, int]]:
        return {
            list_id: {**a.status_counts, "forgotten": len(a.forgotten)}
            for list_id, a in self.audiences.items()
        }

    def to_state(self) -> dict[str, Any]:
        return {
            "audiences": [
                {
                    "id": a.id,
                    "double_optin": a.double_optin,
                    "name": a.name,
                    "shape": a.shape.to_state(),
                    "members": [m.to_state() for m in a.members.values()],
                    "forgotten": sorted(a.forgotten),
                    "webhooks": [h.to_json(with_secret=True) for h in a.webhooks.values()],
                }
                for a in self.audiences.values()
            ]
        }

    def save(self, path: Path) -> None:
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_text(json.dumps(self.to_state()))
        tmp.replace(path)

    def load(self, path: Path) -> None:
        data = json.loads(path.read_text())
        for raw in data.get("audiences", []):
            audience = self.audiences.get(raw["id"]) or self.add_audience(
                raw["id"], raw.get("double_optin", False)
            )
            audience.name = raw.get("name") or audience.name
            if "shape" in raw:
                audience.shape = AudienceShape.from_state(raw["shape"])
            for m in raw.get("members", []):
                member = Member(
                    list_id=audience.id,
                    email_address=m["email_address"],
                    status=m["status"],
                    last_changed=parse_iso(m["last_changed"]),
                    merge_fields=m.get("merge_fields", {}),
                    email_type=m.get("email_type", "html"),
                    tags=_loaded_tags(m.get("tags", [])),
                    interests=m.get("interests", {}),
                    marketing_permissions=m.get("marketing_permissions", {}),
                    language=m.get("language", ""),
                    vip=m.get("vip", False),
                    ip_signup=m.get("ip_signup", ""),
                    ip_opt=m.get("ip_opt", ""),
                    timestamp_signup=m.get("timestamp_signup", ""),
                    timestamp_opt=m.get("timestamp_opt", ""),
                    unsubscribe_reason=m.get("unsubscribe_reason", ""),
                    unique_email_id=m.get("unique_email_id") or secrets.token_hex(5),
                    web_id=m.get("web_id") or 0,
                )
                self._insert(audience, member)
                self._last_ts = max(self._last_ts, member.last_changed)
            audience.forgotten.update(raw.get("forgotten", []))
            for h in raw.get("webhooks", []):
                audience.webhooks[h["id"]] = Webhook(
                    id=h["id"],
                    list_id=audience.id,
                    url=h["url"],
                    events=h["events"],
                    sources=h["sources"],
                    secret=h.get("secret"),
                )


def _merge_fields(member: Member) -> list[tuple[str, str]]:
    merges = {"EMAIL": member.email_address, **member.merge_fields}
    out: list[tuple[str, str]] = []
    for key, value in merges.items():
        if isinstance(value, dict):
            out += [(f"data[merges][{key}][{k}]", str(v)) for k, v in value.items()]
        else:
            out.append((f"data[merges][{key}]", "" if value is None else str(value)))
    return out


def _loaded_tags(raw: list[Any]) -> dict[str, str]:
    """Tags from a state file: {name, date_added} items, or bare names from older files."""
    tags: dict[str, str] = {}
    for item in raw:
        if isinstance(item, str):
            tags[item] = ""
        else:
            tags[item["name"]] = item.get("date_added", "")
    return tags


def _page(items: list[Any], count: int, offset: int) -> list[Any]:
    if count > 1000 or count < 0 or offset < 0:
        raise invalid("count must be between 0 and 1000, offset at least 0.")
    return items[offset : offset + count]


def build_shape(merge_fields: Any, categories: Any, permissions: Any) -> AudienceShape:
    """An audience's shape from the admin API's definitions.

    ``merge_fields``: the API's merge-field bodies (a ``choices`` list may sit at the top);
    one naming an existing tag (FNAME, LNAME) redefines it. ``categories``: ``{"title",
    "type", "interests": [name, ...]}``. ``permissions``: texts, or ``{"text"}`` objects.
    """
    shape = AudienceShape.default()
    for spec in _items(merge_fields, "merge_fields"):
        if isinstance(spec, dict) and "choices" in spec:
            options = dict(spec.get("options") or {}, choices=spec["choices"])
            spec = {k: v for k, v in spec.items() if k != "choices"} | {"options": options}
        shape.add_merge_field(spec, replace=True)
    for spec in _items(categories, "interest_categories"):
        category = shape.add_category(spec)
        for name in _items(spec.get("interests"), "interests"):
            shape.add_interest(category.id, name if isinstance(name, dict) else {"name": name})
    for spec in _items(permissions, "marketing_permissions"):
        text = spec.get("text") if isinstance(spec, dict) else spec
        if not isinstance(text, str) or not text.strip():
            raise invalid("marketing_permissions: each needs a text, e.g. 'Email'.")
        shape.add_permission(text.strip())
    return shape


def _items(value: Any, name: str) -> list[Any]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise invalid(f"{name} must be a list.")
    return value


def _batch_error(email: str, message: str, code: str) -> dict[str, Any]:
    return {
        "email_address": email,
        "error": message,
        "error_code": code,
        "field": "",
        "field_message": "",
    }


def select_fields(obj: Any, fields: list[str] | None, exclude: list[str] | None) -> Any:
    """Apply Mailchimp's ``fields``/``exclude_fields`` (dot paths, lists mapped through)."""
    if fields:
        obj = _keep(obj, [f.split(".") for f in fields if f])
    for path in exclude or []:
        if path:
            _drop(obj, path.split("."))
    return obj


def _keep(obj: Any, paths: list[list[str]]) -> Any:
    if isinstance(obj, list):
        return [_keep(item, paths) for item in obj]
    if not isinstance(obj, dict):
        return obj
    out: dict[str, Any] = {}
    for path in paths:
        head = path[0]
        if head not in obj:
            continue
        if len(path) == 1:
            out[head] = obj[head]
        else:
            sub = _keep(obj[head], [path[1:]])
            if isinstance(sub, dict) and isinstance(out.get(head), dict):
                out[head].update(sub)
            elif isinstance(sub, list) and isinstance(out.get(head), list):
                out[head] = [
                    {**a, **b} if isinstance(a, dict) and isinstance(b, dict) else b
                    for a, b in zip(out[head], sub, strict=True)
                ]
            else:
                out[head] = sub
    return out


def _drop(obj: Any, path: list[str]) -> None:
    if isinstance(obj, list):
        for item in obj:
            _drop(item, path)
        return
    if not isinstance(obj, dict) or path[0] not in obj:
        return
    if len(path) == 1:
        del obj[path[0]]
    else:
        _drop(obj[path[0]], path[1:])
