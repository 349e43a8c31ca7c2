"""The broker settings: RabbitMQ or Redis for the queues, Redis for everything else, each
transport with its own options, and a clear refusal when the pair does not fit."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from pydantic import ValidationError

from config import Settings
from tests.conftest import ROOT
from tests.helpers import run_listsync

AMQP = "amqp://listsync:broker-password-0123456789@127.0.0.1:1/listsync"


def celery_options(env: dict[str, str]) -> dict[str, object]:
    """celeryconfig's broker settings as a fresh process reads them under `env`."""
    code = (
        "import json, celeryconfig as c; print(json.dumps({'options': "
        "c.broker_transport_options, 'delivery_mode': c.task_default_delivery_mode, "
        "'durable': [q.durable for q in c.task_queues]}))"
    )
    clean = {k: v for k, v in os.environ.items() if not k.startswith("LISTSYNC_")}
    run = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env={**clean, **env},
        capture_output=True,
        text=True,
        check=False,
    )
    assert run.returncode == 0, run.stderr
    result: dict[str, object] = json.loads(run.stdout)
    return result


def test_rabbitmq_gets_publisher_confirms_durable_queues_and_persistent_messages() -> None:
    config = celery_options(
        {"LISTSYNC_BROKER_URL": AMQP, "LISTSYNC_REDIS_URL": "redis://127.0.0.1:1/0"}
    )
    options = config["options"]
    assert isinstance(options, dict)
    assert options["confirm_publish"] is True
    assert "visibility_timeout" not in options  # a Redis transport option, not RabbitMQ's
    assert config["delivery_mode"] == "persistent"
    assert config["durable"] == [True, True, True, True]


def test_redis_gets_its_visibility_timeout_and_no_amqp_options() -> None:
    options = celery_options({"LISTSYNC_BROKER_URL": "redis://127.0.0.1:1/0"})["options"]
    assert isinstance(options, dict)
    assert options["visibility_timeout"] == 120
    assert "confirm_publish" not in options


def test_rabbitmq_without_a_redis_url_is_refused_naming_both_settings() -> None:
    result = run_listsync("status", env={"LISTSYNC_BROKER_URL": AMQP, "LISTSYNC_REDIS_URL": ""})
    assert result.returncode == 1
    assert "LISTSYNC_REDIS_URL" in result.stderr and "LISTSYNC_BROKER_URL" in result.stderr
    assert "broker-password" not in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("values", "reason"),
    [
        ({"broker_url": "http://127.0.0.1:5672/"}, "must be an amqp:// (RabbitMQ) or redis://"),
        (
            {"broker_url": AMQP, "redis_url": AMQP},
            "must be a redis:// URL (the call cap, counters and flags need Redis)",
        ),
    ],
)
def test_a_url_of_the_wrong_kind_is_refused(values: dict[str, str], reason: str) -> None:
    with pytest.raises(ValidationError) as info:
        Settings(**values)  # type: ignore[arg-type]
    assert reason in str(info.value)
    assert "broker-password" not in str(info.value)


def test_redis_for_the_rest_defaults_to_a_redis_broker_and_may_be_its_own() -> None:
    from worker import broker

    with pytest.MonkeyPatch.context() as patch:
        from config import get_settings

        patch.setenv("LISTSYNC_BROKER_URL", "redis://127.0.0.1:1/3")
        patch.delenv("LISTSYNC_REDIS_URL", raising=False)
        get_settings.cache_clear()
        assert broker.redis_url() == "redis://127.0.0.1:1/3"
        patch.setenv("LISTSYNC_BROKER_URL", AMQP)
        patch.setenv("LISTSYNC_REDIS_URL", "redis://127.0.0.1:1/4")
        get_settings.cache_clear()
        assert broker.redis_url() == "redis://127.0.0.1:1/4"
        assert broker.is_amqp(broker.broker_url())
    get_settings.cache_clear()
