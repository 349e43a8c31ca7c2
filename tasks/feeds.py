"""Celery task for the forms' feeds (worker/feeds/): the check against the audience."""

from __future__ import annotations

from typing import Any

from worker import publish
from worker.app import app
from worker.feeds.check import run_check
from worker.mailchimp import get_gateway
from worker.publish import CHECK_TASK


@app.task(name=CHECK_TASK)
def check() -> dict[str, Any]:
    """Check every form against the audience (beat, and when a worker starts); forms that
    disagree wait, forms that agree again are released."""
    publish.CHECK.clear()
    result = run_check(get_gateway())
    return {
        "ok": result.ok,
        "error": result.error,
        "problems": {form: len(found) for form, found in result.problems.items() if found},
    }
