"""The Mailchimp call cap (worker/mailchimp.py CallSlots) when Redis loses its data: calls
leased before the loss may still be running, so no new slot is granted for one lease period,
unless nothing was ever seen (a fresh start)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis

from tests.conftest import REDIS_URL
from tests.helpers import wait_for
from worker.mailchimp import EPOCH_KEY, QUIET_KEY, CallSlots, TransientError

LEASE = 60.0  # far longer than any check below: the quiet period cannot end mid-test


@pytest.fixture
def client() -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(REDIS_URL)
    client.flushdb()
    yield client
    client.flushdb()
    client.close()


def granted(slots: CallSlots) -> bool:
    try:
        with slots.slot(wait_seconds=0):
            return True
    except TransientError:
        return False


def test_a_fresh_redis_grants_slots_at_once_up_to_the_cap(client: redis.Redis) -> None:
    slots = CallSlots(client, limit=2, lease_seconds=LEASE)
    with slots.slot(wait_seconds=0), slots.slot(wait_seconds=0):
        assert not granted(slots)
        assert not granted(CallSlots(client, limit=2, lease_seconds=LEASE))
    assert granted(slots)
    assert client.exists(QUIET_KEY) == 0


def test_leases_lost_with_redis_data_hold_every_new_call_back_for_one_lease(
    client: redis.Redis,
) -> None:
    holder = CallSlots(client, limit=2, lease_seconds=LEASE)
    with holder.slot(wait_seconds=0), holder.slot(wait_seconds=0):
        client.flushdb()  # Redis lost its data: two calls still run, their leases gone
        assert not granted(holder)
        quiet_ms = client.pttl(QUIET_KEY)
        assert 0 < quiet_ms <= LEASE * 1000
        # Every other process, new or old, waits too.
        assert not granted(CallSlots(client, limit=2, lease_seconds=LEASE))
    client.pexpire(QUIET_KEY, 1)  # as one lease period later
    assert wait_for(lambda: granted(holder), timeout=10)


def test_a_new_process_first_after_the_loss_cannot_lift_the_wait_of_one_that_saw_before(
    client: redis.Redis,
) -> None:
    holder = CallSlots(client, limit=2, lease_seconds=LEASE)
    with holder.slot(wait_seconds=0):
        client.flushdb()
        newcomer = CallSlots(client, limit=2, lease_seconds=LEASE)
        # It cannot tell a loss from a fresh start: it starts a new epoch and gets a slot.
        assert granted(newcomer)
        assert client.get(EPOCH_KEY) is not None
        # The process that saw the old epoch can: from then on nobody gets one.
        assert not granted(holder)
        assert not granted(newcomer)
