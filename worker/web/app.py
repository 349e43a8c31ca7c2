"""Builds the FastAPI app from one router per area."""

from __future__ import annotations

import sys

from fastapi import FastAPI

from worker.startup import ConfigFileError, check_config_files, freeze_startup_objects
from worker.web import health, metrics, signups, webhooks


def create_app() -> FastAPI:
    check_config_files()  # a bad forms or retention file stops the web app at start
    app = FastAPI(
        title="listsync",
        version="1",
        summary="Signup intake, Mailchimp webhook receiver, health and metrics.",
    )
    app.include_router(health.router)
    app.include_router(metrics.router)
    app.include_router(signups.router)
    app.include_router(webhooks.router)
    app.add_middleware(webhooks.FastPath)  # webhook POSTs skip the routing (hot path)
    return app


def serve_app() -> FastAPI:
    """The app as `listsync web` serves it (uvicorn --factory, in each worker process): built,
    then everything alive at start-up hidden from the cycle collector, whose full passes
    otherwise stall the event loop (worker/startup.py). Tests build theirs with create_app.

    A bad forms or retention file stops the process with exit status 2."""
    try:
        app = create_app()
    except ConfigFileError as exc:
        print(f"invalid configuration file: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    freeze_startup_objects()
    return app
