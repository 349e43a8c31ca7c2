"""The queue message as docs/intake.md documents it, pushed by hand as a PHP or Node site would."""

from __future__ import annotations

import base64
import json
import uuid
from typing import Any

import redis
from sqlalchemy import select

from tests.helpers import wait_for
from worker.db import session_scope
from worker.models import Submission


def foreign_message(signup: dict[str, Any]) -> str:
    """A message built from the documented fields only, without Celery or kombu."""
    task_id = str(uuid.uuid4())
    body = json.dumps([[], {"message": signup}, {}]).encode()
    return json.dumps(
        {
            "body": base64.b64encode(body).decode(),
            "content-encoding": "utf-8",
            "content-type": "application/json",
            "headers": {
                "lang": "py",
                "task": "listsync.signups.receive",
                "id": task_id,
                "root_id": task_id,
                "parent_id": None,
                "group": None,
                "retries": 0,
                "eta": None,
                "expires": None,
                "timelimit": [None, None],
                "argsrepr": "()",
                "kwargsrepr": "{'message': {'form': 'newsletter_signup', 'email': '<masked>'}}",
            },
            "properties": {
                "correlation_id": task_id,
                "delivery_mode": 2,
                "delivery_info": {"exchange": "", "routing_key": "signups"},
                "priority": 0,
                "body_encoding": "base64",
                "delivery_tag": str(uuid.uuid4()),
            },
        }
    )


def test_a_hand_built_message_on_the_signups_list_is_stored(
    celery_worker: object, redis_client: redis.Redis
) -> None:
    signup = {
        "v": 1,
        "email": "from.php@trust.org",
        "form": "newsletter_signup",
        "submitted_at": "2026-11-28T10:00:00+00:00",
        "consent": {"newsletter": True, "text_version": "2026-11"},
        "fields": {"first_name": "Pat"},
        "idempotency_key": "php-site-000001",
    }
    redis_client.lpush("signups", foreign_message(signup))

    def stored() -> Submission | None:
        with session_scope() as session:
            return session.scalars(
                select(Submission).where(Submission.idempotency_key == "php-site-000001")
            ).one_or_none()

    submission = wait_for(stored, timeout=30)
    assert submission.form == "newsletter_signup" and submission.fields == {"first_name": "Pat"}
    assert submission.consent_text_version == "2026-11"
