"""Celery task for the forms' feeds (worker/feeds/): the check against the audience."""

from __future__ import annotations

import logging
from typing import Any

from worker import publish
from worker.app import app
from worker.feeds.check import run_check
from worker.mailchimp import MailchimpError, get_gateway
from worker.publish import CHECK_TASK

log = logging.getLogger(__name__)


@app.task(name=CHECK_TASK)
def check() -> dict[str, Any]:
    """Check every form against the audience (beat, and when a worker starts); forms that
    disagree wait, forms that agree again are released."""
    publish.CHECK.clear()
    try:
        gateway = get_gateway()
    except MailchimpError as exc:  # not configured: nothing to check against
        log.warning("check: %s", exc)
        return {"ok": False, "error": exc.reason, "problems": {}}
    result = run_check(gateway)
    return {
        "ok": result.ok,
        "error": result.error,
        "problems": {form: len(found) for form, found in result.problems.items() if found},
    }
