"""The one gateway to Mailchimp: every call listsync makes goes through `Gateway`.

It wraps the mailchimp-marketing 3.0.80 SDK and owns what the SDK does not: the base URL
override, timeouts, a pooled HTTP session, a cap on concurrent calls shared by every process
(a Redis semaphore), short retries, and the classification of every outcome into done,
permanent (with a reason code) or transient. Reason codes never contain PII: Mailchimp's
`detail` texts often quote the address, so they are mapped to codes and never stored.
`ApiClientError` (unpicklable, empty args) never leaves this module.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from types import MethodType
from typing import Any, TypeVar

import mailchimp_marketing
import redis
import requests
from mailchimp_marketing.api_client import ApiClientError
from requests.adapters import HTTPAdapter
from tenacity import (
    retry,
    retry_if_exception_type,
    stop_after_attempt,
    stop_after_delay,
    wait_random_exponential,
)

from config import Settings, get_settings
from worker import metrics
from worker.addresses import email_hash, member_hash
from worker.broker import get_redis

log = logging.getLogger(__name__)

T = TypeVar("T")

INFLIGHT_KEY = "listsync:mailchimp:inflight"
#: A slot outlives a call that timed out on our side by this much: Mailchimp may still be
#: running it and holding one of the account's 10 connections.
SLOT_GRACE_SECONDS = 10.0
#: Short in-call retries; longer waits go through the outbox's next_attempt_at.
IN_CALL_ATTEMPTS = 3
IN_CALL_MAX_SECONDS = 20.0
MAX_BATCH = 500
LIST_SETTINGS_TTL_SECONDS = 300.0


class MailchimpError(Exception):
    """A failed call. Picklable; `reason` is a code without PII."""

    permanent = False

    def __init__(self, reason: str, status: int | None = None) -> None:
        super().__init__(reason, status)
        self.reason = reason
        self.status = status

    def __str__(self) -> str:
        return f"{self.reason} (HTTP {self.status})" if self.status else self.reason


class TransientError(MailchimpError):
    """Worth retrying later: 429, 5xx, timeouts, connection errors, a refused API key."""


class PermanentError(MailchimpError):
    """Retrying will not help: compliance state, forgotten, fake address, schema error."""

    permanent = True


@dataclass(frozen=True)
class MemberResult:
    """What happened to one member in an upsert or batch."""

    email_hash: str
    ok: bool
    status: str | None = None  # the member's status in Mailchimp after the call, if known
    reason: str | None = None  # reason code when not ok
    permanent: bool = True
    exists: bool = False  # the member already existed (batch ERROR_CONTACT_EXISTS)
    #: The member's tags after the call, when the answer said (a PUT's does).
    tags: frozenset[str] | None = None
    #: When the member last changed in Mailchimp, when the answer said (a read's does).
    last_changed: datetime | None = None


@dataclass(frozen=True)
class MemberExtras:
    """What a form's feed adds to a member write besides address, status and merge fields:
    tags (they count only when the write creates the member), groups to switch on, a
    language, and GDPR marketing permissions to enable. Nothing here ever switches a group
    or a permission off, and nothing here is a status."""

    tags: tuple[str, ...] = ()
    interests: tuple[str, ...] = ()  # interest ids
    language: str | None = None
    permissions: tuple[str, ...] = ()  # marketing permission ids

    @property
    def profile(self) -> MemberExtras:
        """All but the tags: what a PATCH can still set on a member that exists."""
        return MemberExtras(
            interests=self.interests, language=self.language, permissions=self.permissions
        )

    def body(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.tags:
            out["tags"] = list(self.tags)
        if self.interests:
            out["interests"] = dict.fromkeys(self.interests, True)
        if self.language:
            out["language"] = self.language
        if self.permissions:
            out["marketing_permissions"] = [
                {"marketing_permission_id": pid, "enabled": True} for pid in self.permissions
            ]
        return out


NO_EXTRAS = MemberExtras()


@dataclass(frozen=True)
class BatchMember:
    """One member of a batch subscribe: created with `status`, or reported as existing."""

    email: str
    merge_fields: dict[str, Any]
    status: str
    extras: MemberExtras = NO_EXTRAS


@dataclass
class BatchResult:
    results: dict[str, MemberResult] = field(default_factory=dict)  # by email hash


# --- classification ---------------------------------------------------------------------


def _problem(text: Any) -> dict[str, Any]:
    if isinstance(text, dict):
        return text
    if isinstance(text, str):
        try:
            parsed = json.loads(text)
        except ValueError:
            return {}
        return parsed if isinstance(parsed, dict) else {}
    return {}


def classify_problem(status: int, problem: dict[str, Any]) -> MailchimpError:
    """Map an HTTP error status and its problem+json body to a reason code."""
    title = str(problem.get("title") or "")
    detail = str(problem.get("detail") or "").lower()
    if status == 429:
        return TransientError("rate_limited", status)
    if status >= 500:
        return TransientError(
            "cdn_timeout" if status == 502 and not problem else "server_error", status
        )
    if status == 401 or (status == 403 and not problem):
        # A wrong key is an operator's mistake to fix, not a reason to give up on signups;
        # a bodiless 403 is what Mailchimp sends under very high volume.
        return TransientError("auth_failed" if status == 401 else "forbidden_no_body", status)
    if title == "Member In Compliance State":
        return PermanentError("compliance_state", status)
    if title == "Forgotten Email Not Subscribed":
        return PermanentError("forgotten", status)
    if title == "Invalid Resource":
        if "invalid interest" in detail:
            return PermanentError("unknown_interest", status)
        if "marketing permission" in detail:
            return PermanentError("unknown_permission", status)
        if "fake" in detail or ("invalid" in detail and "email" in detail):
            return PermanentError("fake_or_invalid", status)
        if "signed up to a lot of lists" in detail:
            return PermanentError("throttled", status)
        errors = problem.get("errors")
        if isinstance(errors, list) and errors:
            fields = sorted({str(e.get("field", "?")) for e in errors if isinstance(e, dict)})
            return PermanentError("schema_error:" + ",".join(fields)[:80], status)
        return PermanentError("invalid_resource", status)
    if status == 404:
        return PermanentError("not_found", status)
    if status == 405:
        return PermanentError("method_not_allowed", status)
    slug = "".join(c if c.isalnum() else "_" for c in title.lower())[:40] or "error"
    return PermanentError(f"http_{status}_{slug}", status)


def _batch_error_reason(error: dict[str, Any]) -> MailchimpError:
    code = str(error.get("error_code") or "")
    text = str(error.get("error") or "").lower()
    if code == "ERROR_CONTACT_EXISTS":
        return PermanentError("exists")
    if "compliance" in text or "unsubscribed" in text:
        return PermanentError("compliance_state")
    if "forgotten" in text or "permanently deleted" in text:
        return PermanentError("forgotten")
    if "fake" in text or "looks invalid" in text or "real email" in text:
        return PermanentError("fake_or_invalid")
    if "signed up to a lot of lists" in text:
        return PermanentError("throttled")
    if error.get("field"):
        return PermanentError(f"schema_error:{str(error['field'])[:60]}")
    return PermanentError(f"batch_{code.lower() or 'error'}"[:60])


# --- the concurrency cap ----------------------------------------------------------------

# Drop expired leases, then take a slot if fewer than the cap are held. Uses the Redis
# server's clock so that every host agrees on expiry.
_ACQUIRE = """
local now = redis.call('TIME')
local t = tonumber(now[1]) + tonumber(now[2]) / 1000000
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', t)
if redis.call('ZCARD', KEYS[1]) < tonumber(ARGV[1]) then
  redis.call('ZADD', KEYS[1], t + tonumber(ARGV[2]), ARGV[3])
  redis.call('EXPIRE', KEYS[1], math.ceil(tonumber(ARGV[2])) + 60)
  return 1
end
return 0
"""
_COUNT = """
local now = redis.call('TIME')
local t = tonumber(now[1]) + tonumber(now[2]) / 1000000
return redis.call('ZCOUNT', KEYS[1], '(' .. t, '+inf')
"""


class CallSlots:
    """A semaphore in Redis: at most `limit` Mailchimp calls at once across all processes.

    Each slot is a lease that expires by itself, so a worker killed mid-call cannot leak one.
    """

    def __init__(self, client: redis.Redis, limit: int, lease_seconds: float) -> None:
        self.client = client
        self.limit = limit
        self.lease_seconds = lease_seconds
        self._acquire = client.register_script(_ACQUIRE)
        self._count = client.register_script(_COUNT)

    @contextmanager
    def slot(self, wait_seconds: float = 60.0) -> Iterator[Callable[[], None]]:
        """Hold a slot for one call. The yielded function keeps the slot after a timeout."""
        token = uuid.uuid4().hex
        deadline = time.monotonic() + wait_seconds
        pause = 0.005
        while not self._acquire(keys=[INFLIGHT_KEY], args=[self.limit, self.lease_seconds, token]):
            if time.monotonic() > deadline:
                raise TransientError("concurrency_cap_wait")
            time.sleep(pause)
            pause = min(pause * 2, 0.1)
        keep = False

        def keep_until_lease_expires() -> None:
            nonlocal keep
            keep = True

        try:
            yield keep_until_lease_expires
        finally:
            if not keep:
                self.client.zrem(INFLIGHT_KEY, token)

    def in_use(self) -> int:
        return int(self._count(keys=[INFLIGHT_KEY]))


# --- the gateway ------------------------------------------------------------------------


def _pooled_request(session: requests.Session) -> Callable[..., requests.Response]:
    """The SDK's ApiClient.request, but on a pooled session (it uses module-level requests)."""

    def request(
        self: Any,
        method: str,
        url: str,
        query_params: Any = None,
        headers: dict[str, str] | None = None,
        body: Any = None,
    ) -> requests.Response:
        data = json.dumps(body) if method in {"POST", "PUT", "PATCH"} else None
        return session.request(
            method,
            url,
            params=query_params,
            data=data,
            headers=headers,
            auth=("user", self.api_key),
            timeout=self.timeout,
        )

    return request


class Gateway:
    """Every Mailchimp call listsync makes. One per process (see get_gateway)."""

    def __init__(self, settings: Settings, redis_client: redis.Redis) -> None:
        if settings.mailchimp_api_key is None or not settings.mailchimp_list_id:
            raise TransientError("mailchimp_not_configured")
        self.settings = settings
        self.list_id = settings.mailchimp_list_id
        self.client = mailchimp_marketing.Client()
        self.client.set_config(
            {
                "api_key": settings.mailchimp_api_key.get_secret_value(),
                "server": settings.mailchimp_server or "us1",
                "timeout": settings.mailchimp_timeout_seconds,
            }
        )
        if settings.mailchimp_base_url:
            self.client.api_client.host = settings.mailchimp_base_url.rstrip("/")
            # The SDK replaces every "server" in the URL by this; an override is final.
            self.client.api_client.server = ""
        self.session = requests.Session()
        adapter = HTTPAdapter(pool_connections=1, pool_maxsize=16, max_retries=0)
        self.session.mount("http://", adapter)
        self.session.mount("https://", adapter)
        api = self.client.api_client
        api.request = MethodType(_pooled_request(self.session), api)
        self.slots = CallSlots(
            redis_client,
            settings.mailchimp_concurrency,
            settings.mailchimp_timeout_seconds + SLOT_GRACE_SECONDS,
        )
        self._list_settings: tuple[float, dict[str, Any]] | None = None
        self._lock = threading.Lock()

    # -- the one place a call is made ----------------------------------------------------

    def _call_once(self, endpoint: str, fn: Callable[[], T]) -> T:
        try:
            return self._call_in_slot(endpoint, fn)
        except redis.RedisError:
            # No shared cap without Redis: wait for it rather than risk the account's limit.
            # (Should the release fail after a call went through, repeating it is harmless:
            # every call listsync makes is idempotent.)
            raise TransientError("call_cap_unavailable") from None

    def _call_in_slot(self, endpoint: str, fn: Callable[[], T]) -> T:
        with self.slots.slot() as keep_slot:
            try:
                result = fn()
            except ApiClientError as exc:
                error = self._from_sdk_error(exc)
                if error.reason == "timeout":
                    keep_slot()
                metrics.incr("mailchimp_calls_total", endpoint=endpoint, outcome=error.reason)
                raise error from None
        if isinstance(result, requests.Response) and not result.ok:
            # The SDK returns a bodiless error response instead of raising.
            error = classify_problem(result.status_code, {})
            if result.status_code == 429:
                error = TransientError("rate_limited_no_body", 429)
            metrics.incr("mailchimp_calls_total", endpoint=endpoint, outcome=error.reason)
            raise error
        metrics.incr("mailchimp_calls_total", endpoint=endpoint, outcome="ok")
        return result

    def call(self, endpoint: str, fn: Callable[[], T]) -> T:
        """Make one call with short, jittered retries of transient failures."""
        retrying = retry(
            retry=retry_if_exception_type(TransientError),
            stop=stop_after_attempt(IN_CALL_ATTEMPTS) | stop_after_delay(IN_CALL_MAX_SECONDS),
            wait=wait_random_exponential(multiplier=0.2, max=3),
            reraise=True,
        )
        return retrying(self._call_once)(endpoint, fn)

    @staticmethod
    def _from_sdk_error(exc: ApiClientError) -> MailchimpError:
        if exc.status_code is None:
            # Transport failure: the SDK wraps the requests exception as `text`.
            cause = exc.text
            if isinstance(cause, requests.Timeout):
                return TransientError("timeout")
            return TransientError("connection_error")
        return classify_problem(int(exc.status_code), _problem(exc.text))

    # -- audience ------------------------------------------------------------------------

    def list_settings(self) -> dict[str, Any]:
        """The audience's settings (cached a few minutes): double_optin and so on."""
        with self._lock:
            cached = self._list_settings
        if cached and time.monotonic() - cached[0] < LIST_SETTINGS_TTL_SECONDS:
            return cached[1]
        data = self.call(
            "lists.get",
            lambda: self.client.lists.get_list(self.list_id, fields=["id", "double_optin"]),
        )
        with self._lock:
            self._list_settings = (time.monotonic(), data)
        return data

    def audience_shape(self) -> dict[str, Any]:
        """The audience as the forms are checked against it: its settings (double opt-in,
        GDPR), merge fields, interest categories with their interests, and the marketing
        permissions (read from one member: Mailchimp lists them nowhere else)."""
        settings = self.call(
            "lists.get",
            lambda: self.client.lists.get_list(
                self.list_id, fields=["id", "double_optin", "marketing_permissions"]
            ),
        )
        merge_fields = self.call(
            "lists.merge_fields",
            lambda: self.client.lists.get_list_merge_fields(self.list_id, count=1000),
        )
        categories = self.call(
            "lists.interest_categories",
            lambda: self.client.lists.get_list_interest_categories(self.list_id, count=1000),
        )
        groups: dict[str, list[dict[str, Any]]] = {}
        for category in categories.get("categories") or []:
            cid = str(category.get("id"))
            interests = self.call(
                "lists.interests",
                lambda cid=cid: self.client.lists.list_interest_category_interests(  # type: ignore[misc]
                    self.list_id, cid, count=1000
                ),
            )
            groups[cid] = list(interests.get("interests") or [])
        permissions: list[dict[str, Any]] | None = None
        if settings.get("marketing_permissions"):
            page = self.call(
                "members.list",
                lambda: self.client.lists.get_list_members_info(
                    self.list_id, count=1, fields=["members.marketing_permissions"]
                ),
            )
            members = page.get("members") or []
            permissions = list(members[0].get("marketing_permissions") or []) if members else None
        return {
            "double_optin": bool(settings.get("double_optin")),
            "marketing_permissions": bool(settings.get("marketing_permissions")),
            "merge_fields": list(merge_fields.get("merge_fields") or []),
            "categories": list(categories.get("categories") or []),
            "interests": groups,
            "permissions": permissions,
        }

    def status_if_new(self) -> str:
        double_optin = self.settings.double_optin
        if double_optin is None:
            double_optin = bool(self.list_settings().get("double_optin"))
        return "pending" if double_optin else "subscribed"

    # -- members -------------------------------------------------------------------------

    def upsert_member(
        self,
        email: str,
        merge_fields: dict[str, Any],
        status_if_new: str,
        *,
        status: str | None = None,
        extras: MemberExtras = NO_EXTRAS,
    ) -> MemberResult:
        """PUT one member. `status` only for an explicit re-confirmation (pending)."""
        key = email_hash(email)
        body: dict[str, Any] = {
            "email_address": email,
            "status_if_new": status_if_new,
            **extras.body(),
        }
        if status is not None:
            body["status"] = status
        if merge_fields:
            body["merge_fields"] = merge_fields
        try:
            data = self.call(
                "members.put",
                lambda: self.client.lists.set_list_member(self.list_id, key, body),
            )
        except MailchimpError as exc:
            return MemberResult(key, ok=False, reason=exc.reason, permanent=exc.permanent)
        member_status = data.get("status") if isinstance(data, dict) else None
        return MemberResult(key, ok=True, status=member_status, tags=_tag_names(data))

    def batch_subscribe(self, members: Sequence[BatchMember]) -> BatchResult:
        """Batch-subscribe up to 500 NEW members; existing ones come back as `exists`.

        `update_existing` stays false, so the batch never changes an existing member: each
        member's `status` only ever applies to a member the call creates (invariant 2), and
        so do its tags, groups, language and permissions.
        """
        if not members or len(members) > MAX_BATCH:
            raise ValueError(f"a batch holds 1 to {MAX_BATCH} members, not {len(members)}")
        body = {
            "members": [
                {
                    "email_address": m.email,
                    "status": m.status,
                    **({"merge_fields": m.merge_fields} if m.merge_fields else {}),
                    **m.extras.body(),
                }
                for m in members
            ],
            "update_existing": False,
        }
        data = self.call(
            "lists.batch", lambda: self.client.lists.batch_list_members(self.list_id, body)
        )
        if not isinstance(data, dict):  # a 2xx without a JSON body: nothing learned
            raise TransientError("batch_no_body")
        out = BatchResult()
        for member in list(data.get("new_members") or []) + list(data.get("updated_members") or []):
            key = member_hash(str(member.get("email_address", "")))
            out.results[key] = MemberResult(key, ok=True, status=member.get("status"))
        for error in data.get("errors") or []:
            key = member_hash(str(error.get("email_address", "")))
            problem = _batch_error_reason(error)
            out.results[key] = MemberResult(
                key,
                ok=False,
                reason=problem.reason,
                permanent=True,
                exists=problem.reason == "exists",
            )
        return out

    def add_tags(self, email_hash_: str, tags: Sequence[str]) -> MemberResult:
        """Tag an existing member (`status: active`; tags it has keep theirs). Never removes
        a tag and never changes the member's status."""
        body = {"tags": [{"name": name, "status": "active"} for name in tags]}
        try:
            self.call(
                "members.tags",
                lambda: self.client.lists.update_list_member_tags(self.list_id, email_hash_, body),
            )
        except MailchimpError as exc:
            return MemberResult(email_hash_, ok=False, reason=exc.reason, permanent=exc.permanent)
        return MemberResult(email_hash_, ok=True)

    def update_member(
        self, email_hash_: str, merge_fields: dict[str, Any], extras: MemberExtras = NO_EXTRAS
    ) -> MemberResult:
        """PATCH merge fields (and groups, language, permissions) of an existing member;
        never touches status."""
        body: dict[str, Any] = {**extras.profile.body()}
        if merge_fields:
            body["merge_fields"] = merge_fields
        try:
            data = self.call(
                "members.patch",
                lambda: self.client.lists.update_list_member(self.list_id, email_hash_, body),
            )
        except MailchimpError as exc:
            return MemberResult(email_hash_, ok=False, reason=exc.reason, permanent=exc.permanent)
        return MemberResult(email_hash_, ok=True, status=_status_of(data))

    def read_member(self, email_hash_: str) -> MemberResult:
        """Read one member's status and when it last changed (`not_found` when none)."""
        try:
            data = self.call(
                "members.get",
                lambda: self.client.lists.get_list_member(
                    self.list_id, email_hash_, fields=["status", "last_changed"]
                ),
            )
        except MailchimpError as exc:
            return MemberResult(email_hash_, ok=False, reason=exc.reason, permanent=exc.permanent)
        changed = data.get("last_changed") if isinstance(data, dict) else None
        try:
            last_changed = datetime.fromisoformat(changed) if isinstance(changed, str) else None
        except ValueError:
            last_changed = None
        if last_changed is not None and last_changed.tzinfo is None:
            last_changed = last_changed.replace(tzinfo=UTC)
        return MemberResult(
            email_hash_, ok=True, status=_status_of(data), last_changed=last_changed
        )

    def unsubscribe_member(self, email_hash_: str) -> MemberResult:
        """Set an existing member back to unsubscribed (PATCH `status`): only ever to restore
        an opt-out. A member that is not there has nothing to restore."""
        try:
            data = self.call(
                "members.patch",
                lambda: self.client.lists.update_list_member(
                    self.list_id, email_hash_, {"status": "unsubscribed"}
                ),
            )
        except MailchimpError as exc:
            if exc.reason in {"not_found", "forgotten"}:
                return MemberResult(email_hash_, ok=True, status="not_found")
            return MemberResult(email_hash_, ok=False, reason=exc.reason, permanent=exc.permanent)
        return MemberResult(email_hash_, ok=True, status=_status_of(data))

    def delete_permanent(self, email_hash_: str) -> MemberResult:
        """Permanently delete a member (irreversible). A member already gone counts as done,
        with its own status: `deleted` when this call deleted it, `not_found` when Mailchimp
        held no such member (never there, already deleted, or not yet created by a call
        still on its way)."""
        try:
            self.call(
                "members.delete_permanent",
                lambda: self.client.lists.delete_list_member_permanent(self.list_id, email_hash_),
            )
        except MailchimpError as exc:
            if exc.reason in {"not_found", "forgotten"}:
                return MemberResult(email_hash_, ok=True, status="not_found")
            return MemberResult(email_hash_, ok=False, reason=exc.reason, permanent=exc.permanent)
        return MemberResult(email_hash_, ok=True, status="deleted")

    def list_members(
        self,
        status: str,
        since_last_changed: datetime | None,
        offset: int,
        count: int = 1000,
    ) -> tuple[list[dict[str, Any]], int]:
        """One page of members with `status`, changed since the given time, oldest first."""
        kwargs: dict[str, Any] = {
            "status": status,
            "count": min(count, 1000),
            "offset": offset,
            "sort_field": "last_changed",
            "sort_dir": "ASC",
            "fields": [
                "members.id",
                "members.email_address",
                "members.status",
                "members.last_changed",
                "members.unsubscribe_reason",
                "total_items",
            ],
        }
        if since_last_changed is not None:
            kwargs["since_last_changed"] = since_last_changed.astimezone(UTC).isoformat()
        data = self.call(
            "members.list",
            lambda: self.client.lists.get_list_members_info(self.list_id, **kwargs),
        )
        return list(data.get("members") or []), int(data.get("total_items") or 0)

    # -- webhooks ------------------------------------------------------------------------

    def create_webhook(
        self, url: str, *, events: dict[str, bool], sources: dict[str, bool]
    ) -> dict[str, Any]:
        body = {"url": url, "events": events, "sources": sources}
        result: dict[str, Any] = self.call(
            "webhooks.create",
            lambda: self.client.lists.create_list_webhook(self.list_id, body),
        )
        return result

    def list_webhooks(self) -> list[dict[str, Any]]:
        data = self.call("webhooks.list", lambda: self.client.lists.get_list_webhooks(self.list_id))
        return list(data.get("webhooks") or [])


def _status_of(data: Any) -> str | None:
    return data.get("status") if isinstance(data, dict) else None


def _tag_names(data: Any) -> frozenset[str] | None:
    tags = data.get("tags") if isinstance(data, dict) else None
    if not isinstance(tags, list):
        return None
    return frozenset(str(t.get("name")) for t in tags if isinstance(t, dict))


_gateways: dict[tuple[int, str], Gateway] = {}
_gateways_lock = threading.Lock()


def get_gateway() -> Gateway:
    """The process's gateway, built from the current settings (rebuilt when they change)."""
    import os

    settings = get_settings()
    key = (os.getpid(), settings.model_dump_json())
    with _gateways_lock:
        gateway = _gateways.get(key)
        if gateway is None:
            _gateways.clear()
            gateway = _gateways[key] = Gateway(settings, get_redis())
        return gateway


def calls_in_flight() -> int:
    """Mailchimp calls holding a slot right now, across every process."""
    settings = get_settings()
    return CallSlots(get_redis(), settings.mailchimp_concurrency, 1).in_use()
