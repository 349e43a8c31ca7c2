"""Liveness and readiness probes."""

from __future__ import annotations

import logging

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from sqlalchemy import text

from worker import status
from worker.db import get_engine

log = logging.getLogger(__name__)

router = APIRouter(tags=["health"])


@router.get("/healthz")
def healthz() -> dict[str, str]:
    """The process is up."""
    return {"status": "ok"}


def _database_ok() -> bool:
    try:
        with get_engine().connect() as conn:
            conn.execute(text("SELECT 1"))
    except Exception as exc:
        # The class name only: driver messages can carry hosts and credentials.
        log.warning("readyz: database unreachable (%s)", type(exc).__name__)
        return False
    return True


def _broker_ok() -> bool:
    try:
        status.broker_client().ping()
    except Exception as exc:
        log.warning("readyz: broker unreachable (%s)", type(exc).__name__)
        return False
    return True


@router.get("/readyz")
def readyz() -> JSONResponse:
    """Ready to serve: the database and the broker both answer (503 otherwise)."""
    checks = {
        "database": "ok" if _database_ok() else "unreachable",
        "broker": "ok" if _broker_ok() else "unreachable",
    }
    ready = all(value == "ok" for value in checks.values())
    return JSONResponse(
        {"status": "ok" if ready else "unavailable", "checks": checks},
        status_code=200 if ready else 503,
    )
