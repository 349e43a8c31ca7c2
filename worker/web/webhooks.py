"""The Mailchimp list webhook receiver: authenticate, store the raw event, answer fast.

`GET /v1/mailchimp/webhook/{secret}` answers Mailchimp's URL check; `POST` takes its
form-encoded events. Refusals are counted by reason and logged without the secret or PII,
and the access log never shows the path's secret.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from sqlalchemy.exc import SQLAlchemyError
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Receive, Scope, Send

from config import get_settings
from worker import metrics
from worker.optouts import inbox
from worker.optouts.events import KNOWN_TYPES, UNSUB_ACTIONS, BadEvent, ParsedEvent
from worker.optouts.form import FormError
from worker.web.group_commit import GroupCommit

log = logging.getLogger(__name__)

router = APIRouter(tags=["webhook"])

PREFIX = "/v1/mailchimp/webhook/"
MAX_BODY_BYTES = 64 * 1024
SIGNATURE_TOLERANCE_SECONDS = 300
FORM_TYPE = "application/x-www-form-urlencoded"
#: The events of concurrent requests are stored in one transaction (group_commit.py); the
#: answers go out once it is committed, and counting the events and asking for an apply run
#: follow (their Redis round trips were a tenth of a batch's time, more at the tail).
_INBOX: GroupCommit[ParsedEvent, inbox.Receipt] = GroupCommit(
    inbox.store_batch, then=inbox.announce
)


#: The secret segment after the webhook path, wherever that path sits in a text: behind a
#: --root-path prefix or a proxy's, inside a full URL, before a query string.
_SECRET_IN_PATH = re.compile(re.escape(PREFIX) + r"[^/?#\s\"']+")


def redact(text: str) -> str:
    """text with every webhook secret in it shown as ***."""
    return _SECRET_IN_PATH.sub(PREFIX + "***", text)


class _RedactWebhookSecret(logging.Filter):
    """Rewrites uvicorn access-log lines so the path's secret never reaches a log."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, str):
            record.msg = redact(record.msg)
        if isinstance(record.args, tuple):
            record.args = tuple(redact(a) if isinstance(a, str) else a for a in record.args)
        return True


def install_access_log_redaction() -> None:
    logger = logging.getLogger("uvicorn.access")
    if not any(isinstance(f, _RedactWebhookSecret) for f in logger.filters):
        logger.addFilter(_RedactWebhookSecret())


install_access_log_redaction()


def secret_ok(candidate: str) -> bool:
    """Compare with every configured secret in constant time (two during rotation)."""
    given = candidate.encode()
    ok = False
    for secret in get_settings().webhook_secrets:
        ok |= hmac.compare_digest(given, secret.get_secret_value().encode())
    return ok


_STAMP = re.compile(r"[0-9]{1,12}")


def signature_problem(header: str | None, body: bytes, now: float | None = None) -> str | None:
    """None when the signature is valid or none is configured, else the reason code."""
    configured = get_settings().webhook_signing_secret
    if configured is None:
        return None
    if not header:
        return "missing_signature"
    parts: dict[str, list[str]] = {}
    for item in header.split(","):
        name, _, value = item.strip().partition("=")
        parts.setdefault(name, []).append(value)
    stamp = (parts.get("t") or [""])[0]
    # ASCII digits only, and few: str.isdigit() takes "²", and int() refuses 4,300+ digits.
    if not _STAMP.fullmatch(stamp) or not parts.get("v1"):
        return "bad_signature"
    if abs((now if now is not None else time.time()) - int(stamp)) > SIGNATURE_TOLERANCE_SECONDS:
        return "stale_signature"
    key = configured.get_secret_value().encode()
    expected = hmac.new(key, stamp.encode() + b"." + body, hashlib.sha256).hexdigest()
    if any(hmac.compare_digest(expected.encode(), v.encode()) for v in parts["v1"]):
        return None
    return "bad_signature"


@dataclass(frozen=True)
class Answer:
    """What the receiver answers: a status and a small JSON body."""

    status: int
    body: dict[str, str]
    headers: dict[str, str] | None = None

    def response(self) -> JSONResponse:
        return JSONResponse(self.body, status_code=self.status, headers=self.headers)


#: Exactly what an unknown route answers: nothing hints that a secret was wrong.
_NOT_FOUND = Answer(404, {"detail": "Not Found"})
#: The answer to Mailchimp's URL check, a GET or an empty POST.
_URL_CHECKED = Answer(200, {"status": "ok"})


async def _refuse(status: int, reason: str, detail: str) -> Answer:
    await run_in_threadpool(metrics.incr, "webhook_rejected_total", reason=reason)
    log.warning("webhook refused: %s (HTTP %d)", reason, status)
    if status == 404:
        return _NOT_FOUND
    # On 413, hang up: otherwise the server would go on reading (and dropping) the rest.
    headers = {"Connection": "close"} if status == 413 else None
    return Answer(status, {"detail": detail, "reason": reason}, headers)


#: The POST body as OpenAPI sees it: flat form fields whose names carry Mailchimp's literal
#: brackets, one shape per event type (docs/mailchimp.md), as `validate_event` checks them.
_EMAIL = {"type": "string", "format": "email", "maxLength": 320}
_SHORT = {"type": "string", "maxLength": 64, "pattern": "^[^\\x00]*$"}
_TEXT = {"type": "string", "pattern": "^[^\\x00]*$"}
#: A real date and time: the month's days (29 February left out), hours to 23.
_DAY = (
    "((0[13578]|1[02])-(0[1-9]|[12][0-9]|3[01])"
    "|(0[469]|11)-(0[1-9]|[12][0-9]|30)"
    "|02-(0[1-9]|1[0-9]|2[0-8]))"
)
_FIRED_AT = f"^[1-9][0-9]{{3}}-{_DAY} ([01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9]$"
_COMMON: dict[str, Any] = {
    "fired_at": {
        "type": "string",
        "pattern": _FIRED_AT,
        "description": "YYYY-MM-DD HH:MM:SS, UTC; at most an hour ahead of the server's clock",
    },
    "data[list_id]": {**_SHORT, "description": "the configured audience"},
    "data[merges][FNAME]": _TEXT,
}
#: A field name the form parser takes as one flat value (worker/optouts/form.py): at most
#: 200 characters and 6 levels, brackets well formed, no NUL; not "data" or "data[merges]"
#: alone (each holds a group of fields), nor a group under a field that holds a value.
_VALUED = "type|fired_at|data\\[(list_id|email|old_email|new_email|action|id|reason)\\]"
_NAMES = {
    "maxLength": 200,
    "pattern": (
        f"^(?!data(\\[merges\\])?$)(?!({_VALUED}|data\\[merges\\]\\[FNAME\\])\\[)"
        "[^\\[\\]\\x00]+(\\[[^\\[\\]\\x00]+\\]){0,5}$"
    ),
}
KNOWN = sorted(KNOWN_TYPES)


def _event(kind: str | None, required: list[str], fields: dict[str, Any]) -> dict[str, Any]:
    """One type's shape; kind None: a type listsync does not know, stored and ignored."""
    # Stripped before it is compared: no surrounding whitespace.
    other = {"type": "string", "pattern": "^\\S(.*\\S)?$", "maxLength": 32, "not": {"enum": KNOWN}}
    return {
        "type": "object",
        "properties": {"type": other if kind is None else {"const": kind}, **_COMMON, **fields},
        "required": ["type", "fired_at", "data[list_id]", *required],
        # Mailchimp sends more fields (data[ip_opt], data[merges][LNAME], ...): kept as text.
        "additionalProperties": _TEXT,
        "propertyNames": _NAMES,
        "maxProperties": 499,
    }


_MEMBER = {"data[email]": _EMAIL, "data[reason]": _SHORT}
WEBHOOK_FORM_SCHEMA: dict[str, Any] = {
    "oneOf": [
        *(_event(kind, ["data[email]"], _MEMBER) for kind in ("subscribe", "profile", "cleaned")),
        _event(
            "unsubscribe",
            ["data[email]"],
            {**_MEMBER, "data[action]": {"type": "string", "enum": sorted(UNSUB_ACTIONS)}},
        ),
        _event(
            "upemail",
            ["data[old_email]", "data[new_email]"],
            {"data[old_email]": _EMAIL, "data[new_email]": _EMAIL},
        ),
        _event("campaign", ["data[id]"], {"data[id]": _SHORT}),
        _event(None, [], {}),
        {"type": "object", "maxProperties": 0, "description": "Mailchimp's URL check"},
    ]
}


def describe_audience(openapi: dict[str, Any]) -> dict[str, Any]:
    """Name the configured audience in each event's `data[list_id]`: events of another one
    are refused (400)."""
    list_id = get_settings().mailchimp_list_id
    post = openapi["paths"][PREFIX + "{secret}"]["post"]
    for shape in post["requestBody"]["content"][FORM_TYPE]["schema"]["oneOf"]:
        if list_id and "properties" in shape:
            shape["properties"]["data[list_id]"]["enum"] = [list_id]
    return openapi


_RESPONSES: dict[int | str, dict[str, Any]] = {
    404: {"description": "unknown secret: the same answer as an unknown route"},
}


@router.get(
    PREFIX + "{secret}",
    summary="Mailchimp's URL check",
    responses=_RESPONSES,
)
async def check_url(secret: str) -> Response:
    """Mailchimp's URL check when the webhook is created."""
    if not secret_ok(secret):
        return (await _refuse(404, "unknown_secret", "")).response()
    return _URL_CHECKED.response()


@router.post(
    PREFIX + "{secret}",
    summary="Receive one Mailchimp list event",
    responses={
        **_RESPONSES,
        200: {"description": "stored, a duplicate, ignored; or the URL check (an empty body)"},
        400: {"description": "malformed form or event, another audience, or dated ahead"},
        401: {"description": "missing, stale or invalid X-Mailchimp-Signature (when configured)"},
        413: {"description": f"body over {MAX_BODY_BYTES // 1024} KiB"},
        415: {"description": f"not {FORM_TYPE}"},
        503: {"description": "database unavailable; Mailchimp retries"},
    },
    openapi_extra={
        "requestBody": {
            # An empty POST is Mailchimp's URL check (200 {"status": "ok"}).
            "required": False,
            "content": {FORM_TYPE: {"schema": WEBHOOK_FORM_SCHEMA}},
        }
    },
)
async def receive(secret: str, request: Request) -> Response:
    """Store one Mailchimp event and answer 200; its application happens in a worker.

    In the app `create_app` builds, `FastPath` answers these POSTs before routing; this
    route documents the operation and serves it in an app without that middleware."""
    return (await take(secret, request.headers, request.stream())).response()


async def take(secret: str, headers: Mapping[str, str], chunks: AsyncIterator[bytes]) -> Answer:
    """Check one POSTed event and store it; the answer says what became of it."""
    if not secret_ok(secret):
        return await _refuse(404, "unknown_secret", "")
    length = headers.get("content-length")
    if length is not None and (not length.isdigit() or int(length) > MAX_BODY_BYTES):
        return await _refuse(413, "too_large", f"body over {MAX_BODY_BYTES} bytes")
    body = bytearray()
    async for chunk in chunks:
        body += chunk
        if len(body) > MAX_BODY_BYTES:
            return await _refuse(413, "too_large", f"body over {MAX_BODY_BYTES} bytes")
    raw = bytes(body)
    if not raw.strip():
        # Mailchimp's URL check may come as an empty POST, with or without a content type:
        # answered as the GET is, and nothing is stored.
        return _URL_CHECKED
    content_type = headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type != FORM_TYPE:
        return await _refuse(415, "content_type", f"send {FORM_TYPE}")
    problem = signature_problem(headers.get("x-mailchimp-signature"), raw)
    if problem is not None:
        return await _refuse(401, problem, "missing, stale or invalid X-Mailchimp-Signature")
    try:
        event = inbox.parse(raw)
    except FormError as exc:
        return await _refuse(400, "malformed", str(exc))
    except BadEvent as exc:
        return await _refuse(400, exc.code, str(exc))
    try:
        receipt = await _INBOX.submit(event)
    except SQLAlchemyError as exc:
        log.warning("webhook: database unavailable (%s); answering 503", type(exc).__name__)
        await run_in_threadpool(metrics.incr, "webhook_rejected_total", reason="unavailable")
        return Answer(503, {"detail": "database unavailable, retry later"})
    if not receipt.created:
        return Answer(200, {"status": "duplicate"})
    return Answer(200, {"status": "ignored" if receipt.state == "ignored" else "stored"})


class FastPath:
    """Pure ASGI middleware that answers webhook POSTs itself, with `take`, and passes every
    other request on to the app.

    A burst of webhooks is the hot path: FastAPI's routing, dependency solving and middleware
    cost more CPU per POST than checking, parsing and storing the event (py-spy, docs/
    performance.md). The route above still documents the POST in the OpenAPI schema.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        secret = _posted_secret(scope)
        if secret is None:
            if _other_method_on_webhook(scope):
                # The router would answer 405 with only its GET route's method in `Allow`.
                await _METHOD_NOT_ALLOWED(scope, receive, send)
                return
            await self.app(scope, receive, send)
            return
        headers: dict[str, str] = {}
        for name, value in scope["headers"]:  # as Starlette's Headers: any case, first wins
            headers.setdefault(name.decode("latin-1").lower(), value.decode("latin-1"))
        answer = await take(secret, headers, _chunks(receive))
        await answer.response()(scope, receive, send)


#: A method the webhook path does not serve: 405, naming the two it does (GET for Mailchimp's
#: URL check, POST for events; HEAD goes with GET), whatever the secret.
_METHOD_NOT_ALLOWED = JSONResponse(
    {"detail": "Method Not Allowed"}, status_code=405, headers={"Allow": "GET, POST"}
)


def _other_method_on_webhook(scope: Scope) -> bool:
    if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "POST"):
        return False
    path: str = scope["path"]
    secret = path[len(PREFIX) :] if path.startswith(PREFIX) else ""
    return bool(secret) and "/" not in secret


def _posted_secret(scope: Scope) -> str | None:
    """The path's secret when this is a POST to the webhook, else None (for the router)."""
    if scope["type"] != "http" or scope["method"] != "POST":
        return None
    path: str = scope["path"]
    if not path.startswith(PREFIX):
        return None
    secret = path[len(PREFIX) :]
    return secret if secret and "/" not in secret else None


async def _chunks(receive: Receive) -> AsyncIterator[bytes]:
    """The request body as it arrives, as Starlette's Request.stream() gives it."""
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientDisconnect()
        yield message.get("body", b"")
        if not message.get("more_body", False):
            return
