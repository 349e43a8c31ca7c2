"""Builds the FastAPI app from one router per area."""

from __future__ import annotations

import sys

from fastapi import FastAPI
from fastapi.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from config import get_settings
from worker.startup import ConfigFileError, check_config_files, freeze_startup_objects
from worker.web import health, metrics, signups, webhooks


def create_app() -> FastAPI:
    check_config_files()  # a bad forms or retention file stops the web app at start
    docs = get_settings().web_docs
    app = FastAPI(
        title="listsync",
        version="1",
        summary="Signup intake, Mailchimp webhook receiver, health and metrics.",
        # Off unless asked for: the schema maps every route for whoever reaches the site.
        docs_url="/docs" if docs else None,
        redoc_url=None,
        openapi_url="/openapi.json" if docs else None,
    )
    app.include_router(health.router)
    app.include_router(metrics.router)
    app.include_router(signups.router)
    app.include_router(webhooks.router)
    app.add_middleware(webhooks.FastPath)  # webhook POSTs skip the routing (hot path)
    app.add_middleware(Listeners)
    document = app.openapi
    app.openapi = lambda: webhooks.describe_audience(  # type: ignore[method-assign]
        signups.describe_forms(document())
    )
    return app


#: What the internal listener serves; the public one serves everything but /metrics.
INTERNAL_PATHS = frozenset({"/metrics", "/healthz", "/readyz"})


class Listeners:
    """Pure ASGI middleware: a request is served only on the listener it belongs to
    (worker/web/serve.py). /metrics on the public listener, or anything but the metrics and
    the probes on the internal one, gets the same 404 as an unknown route."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            server = scope.get("server") or (None, None)
            internal = server[1] == get_settings().metrics_port
            path = scope["path"]
            if (path == "/metrics" and not internal) or (internal and path not in INTERNAL_PATHS):
                await JSONResponse({"detail": "Not Found"}, status_code=404)(scope, receive, send)
                return
        await self.app(scope, receive, send)


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
