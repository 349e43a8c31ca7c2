"""The queue message as docs/intake.md documents it, pushed by hand as a PHP or Node site would
(Redis: LPUSH; RabbitMQ: a basic.publish)."""

from __future__ import annotations

import base64
import json
import uuid
from typing import Any

from sqlalchemy import select

from tests.conftest import Broker
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


def publish_foreign_amqp(url: str, signup: dict[str, Any]) -> None:
    """The RabbitMQ form of the same message, with py-amqp alone, as php-amqplib would send it:
    exchange `listsync`, routing key `signups`, the Celery headers, persistent, confirmed."""
    import amqp
    from kombu.utils.url import parse_url

    parts = parse_url(url)
    task_id = str(uuid.uuid4())
    with amqp.Connection(
        f"{parts['hostname']}:{parts['port']}",
        userid=parts["userid"],
        password=parts["password"],
        virtual_host=parts["virtual_host"],
        confirm_publish=True,
    ) as conn:
        channel = conn.channel()
        channel.basic_publish(
            amqp.Message(
                json.dumps([[], {"message": signup}, {}]),
                content_type="application/json",
                content_encoding="utf-8",
                delivery_mode=2,
                correlation_id=task_id,
                application_headers={
                    "lang": "py",
                    "task": "listsync.signups.receive",
                    "id": task_id,
                    "root_id": task_id,
                    "argsrepr": "()",
                    "kwargsrepr": "{'message': '<masked>'}",
                },
            ),
            exchange="listsync",
            routing_key="signups",
        )


def test_a_hand_built_message_on_the_signups_queue_is_stored(
    celery_worker: object, broker: Broker
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
    if broker.kind == "amqp":
        publish_foreign_amqp(broker.url, signup)
    else:
        broker.redis.lpush("signups", foreign_message(signup))

    def stored() -> Submission | None:
        with session_scope() as session:
            return session.scalars(
                select(Submission).where(Submission.idempotency_key == "php-site-000001")
            ).one_or_none()

    submission = wait_for(stored, timeout=30)
    assert submission.form == "newsletter_signup" and submission.fields == {"first_name": "Pat"}
    assert submission.consent_text_version == "2026-11"
