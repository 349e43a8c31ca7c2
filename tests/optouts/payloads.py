"""Mailchimp-shaped webhook bodies (every shape docs/webhooks.md lists) and a poster for them."""

from __future__ import annotations

import warnings
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlencode

from starlette.exceptions import StarletteDeprecationWarning

with warnings.catch_warnings():
    # Starlette 1.x prefers httpx2 for its TestClient; httpx (already a dev dependency)
    # still works, and only this import warns about it.
    warnings.simplefilter("ignore", StarletteDeprecationWarning)
    from starlette.testclient import TestClient


LIST_ID = "a1b2c3d4e5"
SECRET = "test-webhook-secret-0123456789"
OLD_SECRET = "old-webhook-secret-9876543210"
URL = f"/v1/mailchimp/webhook/{SECRET}"
FORM = {"content-type": "application/x-www-form-urlencoded"}
Fields = list[tuple[str, str]]


def fired(ts: datetime | str) -> str:
    if isinstance(ts, str):
        return ts
    return ts.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")


def merges(email: str, **extra: str) -> Fields:
    out = [("data[merges][EMAIL]", email)]
    out += [(f"data[merges][{k}]", v) for k, v in extra.items()]
    return out


def subscribe(email: str, at: datetime | str, **merge: str) -> Fields:
    return [
        ("type", "subscribe"),
        ("fired_at", fired(at)),
        ("data[id]", "8a25ff1d98"),
        ("data[list_id]", LIST_ID),
        ("data[email]", email),
        ("data[email_type]", "html"),
        ("data[ip_opt]", "10.20.10.30"),
        ("data[ip_signup]", "10.20.10.30"),
        *merges(email, **merge),
    ]


def unsubscribe(
    email: str, at: datetime | str, *, action: str = "unsub", reason: str = "manual"
) -> Fields:
    return [
        ("type", "unsubscribe"),
        ("fired_at", fired(at)),
        ("data[action]", action),
        ("data[reason]", reason),
        ("data[id]", "8a25ff1d98"),
        ("data[list_id]", LIST_ID),
        ("data[email]", email),
        ("data[email_type]", "html"),
        ("data[ip_opt]", "10.20.10.30"),
        ("data[campaign_id]", "cb398d21d2"),
        *merges(email, FNAME="Ann"),
    ]


def profile(email: str, at: datetime | str, **merge: str) -> Fields:
    return [
        ("type", "profile"),
        ("fired_at", fired(at)),
        ("data[id]", "8a25ff1d98"),
        ("data[list_id]", LIST_ID),
        ("data[email]", email),
        ("data[email_type]", "html"),
        ("data[ip_opt]", "10.20.10.30"),
        *merges(email, **merge),
    ]


def upemail(old: str, new: str, at: datetime | str) -> Fields:
    return [
        ("type", "upemail"),
        ("fired_at", fired(at)),
        ("data[list_id]", LIST_ID),
        ("data[new_id]", "51aa6d9b8c"),
        ("data[new_email]", new),
        ("data[old_email]", old),
    ]


def cleaned(email: str, at: datetime | str, reason: str = "hard") -> Fields:
    return [
        ("type", "cleaned"),
        ("fired_at", fired(at)),
        ("data[list_id]", LIST_ID),
        ("data[campaign_id]", "4fjk2ma9xd"),
        ("data[reason]", reason),
        ("data[email]", email),
    ]


def campaign(at: datetime | str) -> Fields:
    return [
        ("type", "campaign"),
        ("fired_at", fired(at)),
        ("data[id]", "5aa2102003"),
        ("data[subject]", "Campaign Subject"),
        ("data[status]", "sent"),
        ("data[reason]", ""),
        ("data[list_id]", LIST_ID),
    ]


def body(fields: Fields) -> bytes:
    return urlencode(fields).encode()


def post(client: TestClient, fields: Fields | bytes, **headers: str | bytes) -> Any:
    raw = fields if isinstance(fields, bytes) else body(fields)
    return client.post(URL, content=raw, headers={**FORM, **headers})
