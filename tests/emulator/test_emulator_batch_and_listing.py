"""Batch subscribe and member listing (filters, paging, field selection), through the SDK."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

import pytest
import requests

from tests.emulator.support import expect_problem, put
from worker.emulator.state import EmulatorState, subscriber_hash


def test_batch_reports_per_member_errors_with_http_200(client, emulator, list_id) -> None:
    put(client, list_id, "old@gmail.com", status_if_new="subscribed")
    result = client.lists.batch_list_members(
        list_id,
        {
            "members": [
                {"email_address": "new@gmail.com", "status": "subscribed"},
                {"email_address": "old@gmail.com", "status": "subscribed"},
                {"email_address": "fake@example.com", "status": "subscribed"},
                {"email_address": "nostatus@gmail.com"},
            ]
        },
    )
    assert result["total_created"] == 1
    assert [m["email_address"] for m in result["new_members"]] == ["new@gmail.com"]
    assert result["error_count"] == 3
    errors = {e["email_address"]: e for e in result["errors"]}
    assert errors["old@gmail.com"]["error_code"] == "ERROR_CONTACT_EXISTS"
    assert errors["fake@example.com"]["error_code"] == "ERROR_GENERIC"
    assert "looks fake or invalid" in errors["fake@example.com"]["error"]
    assert errors["nostatus@gmail.com"]["field"] == "status"
    assert emulator.counters()["calls"]["POST /lists/{list_id}"] == {"200": 1}


def test_batch_update_existing(client, list_id) -> None:
    put(client, list_id, "upd@gmail.com", status_if_new="subscribed")
    result = client.lists.batch_list_members(
        list_id,
        {
            "members": [
                {
                    "email_address": "upd@gmail.com",
                    "status": "subscribed",
                    "merge_fields": {"FNAME": "U"},
                }
            ],
            "update_existing": True,
        },
    )
    assert result["total_updated"] == 1
    assert result["updated_members"][0]["merge_fields"] == {"FNAME": "U"}


def test_batch_over_500_is_refused(client, list_id) -> None:
    members = [{"email_address": f"m{i}@gmail.com", "status": "subscribed"} for i in range(501)]
    body = expect_problem(
        400, "Invalid Resource", client.lists.batch_list_members, list_id, {"members": members}
    )
    assert body["errors"][0]["field"] == "members"
    ok = client.lists.batch_list_members(list_id, {"members": members[:500]})
    assert ok["total_created"] == 500


@pytest.mark.parametrize("mode", ["ignore", "error"])
def test_batch_resubscribe_of_unsubscribed(client, emulator, list_id, mode) -> None:
    emulator.set_settings(batch_unsubscribed=mode)
    emulator.seed_member("gone@gmail.com", "unsubscribed", list_id=list_id)
    result = client.lists.batch_list_members(
        list_id,
        {
            "members": [{"email_address": "gone@gmail.com", "status": "subscribed"}],
            "update_existing": True,
        },
    )
    if mode == "ignore":
        assert result["total_updated"] == 1 and result["error_count"] == 0
    else:
        assert result["errors"][0]["error_code"] == "ERROR_GENERIC"
        assert "compliance state" in result["errors"][0]["error"]
    assert emulator.member("gone@gmail.com", list_id)["status"] == "unsubscribed"


def test_list_members_filters_and_pages(client, emulator, list_id) -> None:
    for i in range(7):
        emulator.seed_member(f"s{i}@gmail.com", "subscribed", list_id=list_id)
    for i in range(3):
        emulator.seed_member(f"u{i}@gmail.com", "unsubscribed", list_id=list_id)
    page = client.lists.get_list_members_info(list_id, status="subscribed", count=5, offset=5)
    assert page["total_items"] == 7
    assert [m["email_address"] for m in page["members"]] == ["s5@gmail.com", "s6@gmail.com"]
    unsub = client.lists.get_list_members_info(list_id, status="unsubscribed", count=1000)
    assert {m["email_address"] for m in unsub["members"]} == {f"u{i}@gmail.com" for i in range(3)}
    assert all("unsubscribe_reason" in m for m in unsub["members"])
    everyone = client.lists.get_list_members_info(list_id, count=1000)
    assert everyone["total_items"] == 10


def test_list_members_since_last_changed(client, emulator, list_id) -> None:
    base = datetime(2026, 1, 1, tzinfo=UTC)
    for i in range(5):
        stamp = (base + timedelta(hours=i)).isoformat()
        emulator.seed_member(f"t{i}@gmail.com", "unsubscribed", last_changed=stamp, list_id=list_id)
    since = (base + timedelta(hours=3)).isoformat()
    page = client.lists.get_list_members_info(
        list_id, since_last_changed=since, sort_field="last_changed", count=1000
    )
    assert [m["email_address"] for m in page["members"]] == ["t3@gmail.com", "t4@gmail.com"]
    desc = client.lists.get_list_members_info(
        list_id, sort_field="last_changed", sort_dir="DESC", count=2
    )
    assert [m["email_address"] for m in desc["members"]] == ["t4@gmail.com", "t3@gmail.com"]


def test_fields_and_exclude_fields(client, emulator, list_id) -> None:
    emulator.seed_member("f@gmail.com", "subscribed", list_id=list_id)
    page = client.lists.get_list_members_info(
        list_id, fields=["members.email_address", "members.status", "total_items"]
    )
    assert page == {
        "members": [{"email_address": "f@gmail.com", "status": "subscribed"}],
        "total_items": 1,
    }
    page = client.lists.get_list_members_info(
        list_id, exclude_fields=["members.merge_fields", "members.tags"]
    )
    assert "merge_fields" not in page["members"][0] and "status" in page["members"][0]


def test_count_over_1000(client, emulator, list_id) -> None:
    with pytest.raises(ValueError):
        client.lists.get_list_members_info(list_id, count=1001)  # the SDK refuses locally
    resp = requests.get(
        f"{emulator.base_url}/lists/{list_id}/members?count=1001",
        auth=("u", emulator.api_key),
        timeout=5,
    )
    assert resp.status_code == 400
    assert resp.json()["title"] == "Invalid Resource"


def test_since_last_changed_scales_with_changes_not_audience_size() -> None:
    now = [datetime(2026, 1, 1, tzinfo=UTC)]
    state = EmulatorState(clock=lambda: now[0])
    audience = state.add_audience("big")
    for i in range(100_000):
        state.upsert_member(
            "big",
            subscriber_hash(f"p{i}@gmail.com"),
            {"email_address": f"p{i}@gmail.com", "status_if_new": "subscribed"},
        )
    now[0] += timedelta(days=1)
    watermark = now[0].isoformat()
    for i in range(0, 100_000, 10_000):
        state.person_unsubscribe("big", f"p{i}@gmail.com")
    assert audience.status_counts["unsubscribed"] == 10
    start = time.perf_counter()
    for _ in range(100):
        result = state.list_members("big", since_last_changed=watermark, count=1000)
    per_call = (time.perf_counter() - start) / 100
    assert result["total_items"] == 10
    # A full scan of 100k members takes several milliseconds; the tail walk takes microseconds.
    assert per_call < 0.002
