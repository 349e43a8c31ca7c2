"""Builds the FastAPI app from one router per area."""

from __future__ import annotations

from fastapi import FastAPI

from worker.web import health, signups, webhooks


def create_app() -> FastAPI:
    app = FastAPI(
        title="listsync",
        version="1",
        summary="Signup intake, Mailchimp webhook receiver, health and metrics.",
    )
    app.include_router(health.router)
    app.include_router(signups.router)
    app.include_router(webhooks.router)
    return app
