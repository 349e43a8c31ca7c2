"""POST /v1/signups: the HTTP intake."""

from __future__ import annotations

from fastapi import APIRouter

router = APIRouter(tags=["intake"])
