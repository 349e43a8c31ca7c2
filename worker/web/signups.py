"""POST /v1/signups: the HTTP intake, the same validation and storage as the queue; and
GET /v1/signups/{key}: what became of a signup (docs/website.md)."""

from __future__ import annotations

import hmac
import json
import logging
from typing import Any
from urllib.parse import quote

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from sqlalchemy.exc import SQLAlchemyError

from config import get_settings
from worker import metrics
from worker.db import database_unavailable, session_scope
from worker.signups import parked
from worker.signups.message import SignupMessage, SignupRejected
from worker.signups.queue import error_code
from worker.signups.state import SignupState, signup_state
from worker.signups.store import receive

log = logging.getLogger(__name__)
router = APIRouter(tags=["intake"])

MAX_BODY_BYTES = 64 * 1024


class Accepted(BaseModel):
    key: str
    submission_id: int | None
    created: bool
    state: str


class State(BaseModel):
    key: str
    state: str
    reason: str | None
    received_at: str


def _inline_defs(schema: dict[str, Any]) -> dict[str, Any]:
    """The model's JSON schema with its `$defs` inlined. Left as they are, its "#/$defs/..."
    refs would point at the OpenAPI document's root, which has no `$defs`: clients and
    fuzzers then cannot read the request body at all."""
    defs = schema.pop("$defs", {})

    def walk(node: Any) -> Any:
        if isinstance(node, dict):
            ref = node.get("$ref", "")
            if isinstance(ref, str) and ref.startswith("#/$defs/"):
                rest = {k: v for k, v in node.items() if k != "$ref"}
                return walk({**defs[ref.removeprefix("#/$defs/")], **rest})
            return {key: walk(value) for key, value in node.items()}
        if isinstance(node, list):
            return [walk(value) for value in node]
        return node

    return dict(walk(schema))


def describe_forms(openapi: dict[str, Any]) -> dict[str, Any]:
    """Name the forms this deployment knows in the signup body's `form` (its forms file is
    read at start, so the document says exactly which names are accepted)."""
    from worker.forms import get_forms

    body = openapi["paths"]["/v1/signups"]["post"]["requestBody"]["content"]["application/json"]
    body["schema"]["properties"]["form"]["enum"] = sorted(get_forms())
    return openapi


def _refuse(status: int, reason: str, detail: Any) -> JSONResponse:
    metrics.incr("intake_rejected_total", reason=reason)
    log.info("intake refused: %s", reason)
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    if status == 413:
        # Hang up: otherwise the server would go on reading (and dropping) the rest of the body.
        headers = {"Connection": "close"}
    return JSONResponse({"detail": detail}, status_code=status, headers=headers)


def _token_ok(header: str | None) -> bool:
    scheme, _, presented = (header or "").partition(" ")
    accepted = [t.get_secret_value() for t in get_settings().intake_tokens]
    ok = False
    for token in accepted:  # compare with every token: the time taken says nothing
        ok |= hmac.compare_digest(presented.encode(), token.encode())
    return ok and scheme.lower() == "bearer"


@router.post(
    "/v1/signups",
    status_code=202,
    response_model=Accepted,
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {"schema": _inline_defs(SignupMessage.model_json_schema())}
            },
        }
    },
    responses={
        202: {"description": "stored (or kept as parked); Location names its state"},
        401: {"description": "missing or wrong bearer token"},
        413: {"description": "body over 64 KiB"},
        415: {"description": "not JSON"},
        422: {"description": "invalid signup: each problem names its field"},
        503: {"description": "database unavailable; retry later"},
    },
)
async def post_signup(request: Request) -> JSONResponse:
    """Store one signup; 202 with its key, and its state at `Location`. The same idempotency
    key is the same signup."""
    if not _token_ok(request.headers.get("authorization")):
        return _refuse(401, "bad_token", "missing or invalid bearer token")
    if not request.headers.get("content-type", "").startswith("application/json"):
        return _refuse(415, "content_type", "send application/json")
    length = request.headers.get("content-length")
    if length is not None and (not length.isdigit() or int(length) > MAX_BODY_BYTES):
        return _refuse(413, "too_large", f"body over {MAX_BODY_BYTES} bytes")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_BODY_BYTES:
            return _refuse(413, "too_large", f"body over {MAX_BODY_BYTES} bytes")
    try:
        raw = json.loads(body)
    except (ValueError, RecursionError):  # RecursionError: nesting deeper than json can parse
        return _refuse(422, "malformed", [{"field": "body", "reason": "not valid JSON"}])
    try:
        result = await run_in_threadpool(receive, raw, channel="http")
    except SignupRejected as exc:
        problems = [{"field": p.field, "reason": p.reason} for p in exc.problems]
        return _refuse(422, "invalid", problems)
    except Exception as exc:
        if database_unavailable(exc):
            # The website retries. Only the type is logged (a statement may quote the signup).
            log.warning("intake: database unavailable (%s)", type(exc).__name__)
            return JSONResponse({"detail": "database unavailable, retry later"}, status_code=503)
        # Valid, yet it could not be stored (a bug, a value the database refuses): kept for a
        # person to look at and replay, as a queued one is; the website's job is done.
        await run_in_threadpool(parked.park, raw, error=error_code(exc), attempts=0, channel="http")
        metrics.incr("signups_parked_total", error=error_code(exc))
        log.error("intake: a signup could not be stored (%s); parked", error_code(exc))
        key = raw.get("idempotency_key") if isinstance(raw.get("idempotency_key"), str) else ""
        return _accepted(key, None, created=True, state="parked")
    return _accepted(result.key, result.submission_id, created=result.created, state="stored")


def _accepted(key: str, submission_id: int | None, *, created: bool, state: str) -> JSONResponse:
    body = {"key": key, "submission_id": submission_id, "created": created, "state": state}
    headers = {"Location": f"/v1/signups/{quote(key, safe='')}"} if key else None
    return JSONResponse(body, status_code=202, headers=headers)


@router.get(
    "/v1/signups/{key}",
    response_model=State,
    responses={
        401: {"description": "missing or wrong bearer token"},
        404: {"description": "no signup is stored under this key (not yet, refused, or purged)"},
        503: {"description": "database unavailable; retry later"},
    },
)
async def get_signup(key: str, request: Request) -> JSONResponse:
    """What became of a signup: queued, synced, pending_confirmation, suppressed or failed,
    with a reason code. No personal data."""
    if not _token_ok(request.headers.get("authorization")):
        return _refuse(401, "bad_token", "missing or invalid bearer token")
    try:
        found = await run_in_threadpool(_state_of, key)
    except SQLAlchemyError as exc:
        log.warning("intake: database unavailable (%s)", type(exc).__name__)
        return JSONResponse({"detail": "database unavailable, retry later"}, status_code=503)
    if found is None:
        return JSONResponse({"detail": "no signup is stored under this key"}, status_code=404)
    return JSONResponse(found.to_json())


def _state_of(key: str) -> SignupState | None:
    with session_scope() as session:
        return signup_state(session, key)
