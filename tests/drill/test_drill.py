"""The fault drill (bench/drill.py) as tests: a small run in the default test run, the full
20,000-signup run marked slow (`pytest -m slow tests/drill`)."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.drill import DrillConfig, run_drill
from tests.conftest import BROKER

#: The drill's queues on the broker under test (LISTSYNC_TEST_BROKER): its own Redis, or a
#: RabbitMQ node of its own.
DRILL_BROKER = "rabbitmq" if BROKER == "amqp" else "redis"


def test_small_drill_loses_nothing_resubscribes_nobody_and_settles(tmp_path: Path) -> None:
    # One fault of each kind: each worker killed once, Redis emptied once and full once (on
    # RabbitMQ, the node crashed once as well), PostgreSQL restarted once, web killed once,
    # one poison message of each kind. The kills happen after the signups were taken from the
    # queue: on Redis, a killed worker's unacked signups come back only after the broker's
    # visibility timeout (120 s), which the full drill measures.
    config = DrillConfig(
        signups=300,
        actions=60,
        seed=7,
        signup_rate=50,
        kills_per_worker=1,
        poison_per_kind=1,
        fault_seconds=20,
        faults_after_intake=True,
        settle_timeout_seconds=60,
        quiet_seconds=30,
        log_dir=tmp_path / "logs",
        broker=DRILL_BROKER,
    )
    report = run_drill(config)
    assert report.ok, report.summary()
    assert report.faults["worker-a_killed"] == report.faults["worker-b_killed"] == 1
    assert report.faults["redis_killed"] == report.faults["web_killed"] == 1
    assert report.faults["redis_full_killed"] == report.faults["postgres_killed"] == 1
    if DRILL_BROKER == "rabbitmq":
        assert report.faults["rabbitmq_killed"] == 1
        assert report.wiped_in_broker == 0  # Redis held no message to lose
    assert report.parked == report.poison_sent == 1
    assert report.webhooks["duplicated"] > 0 and report.webhooks["dropped"] > 0
    assert report.rejected_signups >= report.sent["kind_invalid"]


@pytest.mark.slow
@pytest.mark.timeout(3600)
def test_full_drill_twenty_thousand_signups_under_every_fault(tmp_path: Path) -> None:
    report = run_drill(DrillConfig(log_dir=tmp_path / "logs", broker=DRILL_BROKER))
    assert report.ok, report.summary()
