"""Member upserts, reads, updates, archive and permanent delete, through the real SDK."""

from __future__ import annotations

import re
from datetime import datetime

import pytest
import requests

from tests.emulator.support import PROBLEM_CT, expect_problem, make_client, put
from worker.emulator.process import EmulatorProcess
from worker.emulator.state import subscriber_hash


def test_new_member_takes_status_if_new(client, list_id: str) -> None:
    member = put(
        client, list_id, "Ann@Gmail.com", status_if_new="subscribed", merge_fields={"FNAME": "Ann"}
    )
    assert member["status"] == "subscribed"
    assert member["id"] == subscriber_hash("ann@gmail.com")
    assert member["merge_fields"] == {"FNAME": "Ann"}
    assert member["list_id"] == list_id
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\+00:00", member["last_changed"])


def test_status_if_new_leaves_an_unsubscribed_member_alone(client, emulator, list_id) -> None:
    emulator.seed_member("bob@gmail.com", "unsubscribed", list_id=list_id)
    member = put(client, list_id, "bob@gmail.com", status_if_new="subscribed")
    assert member["status"] == "unsubscribed"
    assert "unsubscribe_reason" in member


@pytest.mark.parametrize("current", ["unsubscribed", "cleaned"])
def test_status_subscribed_on_compliance_state_is_refused(client, emulator, list_id, current):
    emulator.seed_member("cat@gmail.com", current, list_id=list_id)
    body = expect_problem(
        400,
        "Member In Compliance State",
        put,
        client,
        list_id,
        "cat@gmail.com",
        status="subscribed",
    )
    assert "compliance state" in body["detail"]
    assert emulator.member("cat@gmail.com", list_id)["status"] == current


def test_pending_resubscribe_is_a_switch(client, emulator, list_id) -> None:
    emulator.seed_member("dan@gmail.com", "unsubscribed", list_id=list_id)
    emulator.set_settings(allow_pending_resubscribe=False)
    expect_problem(
        400, "Member In Compliance State", put, client, list_id, "dan@gmail.com", status="pending"
    )
    emulator.set_settings(allow_pending_resubscribe=True)
    assert put(client, list_id, "dan@gmail.com", status="pending")["status"] == "pending"


def test_archived_stays_archived_under_status_if_new(client, emulator, list_id) -> None:
    emulator.seed_member("eve@gmail.com", "archived", list_id=list_id)
    assert put(client, list_id, "eve@gmail.com", status_if_new="subscribed")["status"] == "archived"
    assert put(client, list_id, "eve@gmail.com", status="subscribed")["status"] == "subscribed"


def test_permanently_deleted_address_cannot_be_re_added(client, emulator, list_id) -> None:
    put(client, list_id, "fay@gmail.com", status_if_new="subscribed")
    resp = client.lists.delete_list_member_permanent(list_id, subscriber_hash("fay@gmail.com"))
    assert resp.status_code == 204
    assert emulator.member("fay@gmail.com", list_id) == {
        "id": subscriber_hash("fay@gmail.com"),
        "status": "forgotten",
    }
    for status in ("subscribed", "pending"):
        body = expect_problem(
            400,
            "Forgotten Email Not Subscribed",
            put,
            client,
            list_id,
            "fay@gmail.com",
            status_if_new=status,
        )
        assert "permanently deleted" in body["detail"]
    expect_problem(
        404,
        "Resource Not Found",
        client.lists.get_list_member,
        list_id,
        subscriber_hash("fay@gmail.com"),
    )
    # Only the person signing up again through a form brings them back.
    emulator.signup("fay@gmail.com", list_id=list_id)
    assert (
        put(client, list_id, "fay@gmail.com", status_if_new="subscribed")["status"] == "subscribed"
    )


def test_seeded_forgotten_member(client, emulator, list_id) -> None:
    emulator.seed_member("gus@gmail.com", "forgotten", list_id=list_id)
    expect_problem(
        400,
        "Forgotten Email Not Subscribed",
        put,
        client,
        list_id,
        "gus@gmail.com",
        status_if_new="pending",
    )


@pytest.mark.parametrize("email", ["someone@example.com", "x@test.com", "y@foo.invalid"])
def test_fake_looking_addresses_are_invalid(client, list_id, email) -> None:
    body = expect_problem(
        400, "Invalid Resource", put, client, list_id, email, status_if_new="subscribed"
    )
    assert "looks fake or invalid" in body["detail"]


def test_signup_throttle(client, emulator, list_id) -> None:
    emulator.throttle("busy@gmail.com", list_id=list_id)
    body = expect_problem(
        400, "Invalid Resource", put, client, list_id, "busy@gmail.com", status_if_new="subscribed"
    )
    assert "signed up to a lot of lists very recently" in body["detail"]


def test_schema_errors_list_the_field(client, list_id) -> None:
    body = expect_problem(
        400, "Invalid Resource", put, client, list_id, "hal@gmail.com", status_if_new="bogus"
    )
    assert body["errors"][0]["field"] == "status_if_new"
    body = expect_problem(400, "Invalid Resource", put, client, list_id, "hal@gmail.com")
    assert body["errors"][0]["field"] == "status"
    body = expect_problem(
        400,
        "Invalid Resource",
        client.lists.set_list_member,
        list_id,
        subscriber_hash("hal@gmail.com"),
        {"status_if_new": "subscribed"},
    )
    assert body["errors"][0]["field"] == "email_address"


def test_hash_must_match_email(client, list_id) -> None:
    body = expect_problem(
        400,
        "Invalid Resource",
        client.lists.set_list_member,
        list_id,
        subscriber_hash("other@gmail.com"),
        {"email_address": "ida@gmail.com", "status_if_new": "subscribed"},
    )
    assert body["errors"][0]["field"] == "email_address"


def test_unknown_list_and_member_are_not_found(client, list_id) -> None:
    expect_problem(
        404, "Resource Not Found", put, client, "nolist", "jo@gmail.com", status_if_new="subscribed"
    )
    expect_problem(404, "Resource Not Found", client.lists.get_list, "nolist")
    expect_problem(
        404,
        "Resource Not Found",
        client.lists.get_list_member,
        list_id,
        subscriber_hash("nobody@gmail.com"),
    )


def test_errors_are_problem_json(emulator, list_id) -> None:
    resp = requests.get(
        f"{emulator.base_url}/lists/nolist", auth=("u", emulator.api_key), timeout=5
    )
    assert resp.status_code == 404
    assert resp.headers["Content-Type"] == PROBLEM_CT


def test_get_and_patch_member(client, emulator, list_id) -> None:
    put(client, list_id, "kim@gmail.com", status_if_new="subscribed", merge_fields={"FNAME": "K"})
    member = client.lists.get_list_member(list_id, subscriber_hash("kim@gmail.com"))
    assert member["email_address"] == "kim@gmail.com"
    patched = client.lists.update_list_member(
        list_id, subscriber_hash("kim@gmail.com"), {"merge_fields": {"LNAME": "L"}}
    )
    assert patched["merge_fields"] == {"FNAME": "K", "LNAME": "L"}
    emulator.unsubscribe("kim@gmail.com", list_id=list_id)
    expect_problem(
        400,
        "Member In Compliance State",
        client.lists.update_list_member,
        list_id,
        subscriber_hash("kim@gmail.com"),
        {"status": "subscribed"},
    )


def test_post_member_that_exists(client, list_id) -> None:
    client.lists.add_list_member(
        list_id, {"email_address": "lou@gmail.com", "status": "subscribed"}
    )
    expect_problem(
        400,
        "Member Exists",
        client.lists.add_list_member,
        list_id,
        {"email_address": "lou@gmail.com", "status": "subscribed"},
    )


def test_archive_and_where_mailchimp_refuses(client, emulator, list_id) -> None:
    put(client, list_id, "max@gmail.com", status_if_new="subscribed")
    resp = client.lists.delete_list_member(list_id, subscriber_hash("max@gmail.com"))
    assert resp.status_code == 204
    assert emulator.member("max@gmail.com", list_id)["status"] == "archived"
    expect_problem(
        405,
        "Method Not Allowed",
        client.lists.delete_list_member,
        list_id,
        subscriber_hash("max@gmail.com"),
    )
    for status in ("pending", "cleaned"):
        emulator.seed_member(f"{status}@gmail.com", status, list_id=list_id)
        expect_problem(
            405,
            "Method Not Allowed",
            client.lists.delete_list_member,
            list_id,
            subscriber_hash(f"{status}@gmail.com"),
        )
    expect_problem(
        404,
        "Resource Not Found",
        client.lists.delete_list_member,
        list_id,
        subscriber_hash("ghost@gmail.com"),
    )


def test_tags_only_on_creation_then_through_tags_endpoint(client, list_id) -> None:
    member = put(client, list_id, "ned@gmail.com", status_if_new="subscribed", tags=["web"])
    assert [t["name"] for t in member["tags"]] == ["web"]
    member = put(client, list_id, "ned@gmail.com", status_if_new="subscribed", tags=["ignored"])
    assert [t["name"] for t in member["tags"]] == ["web"]
    resp = client.lists.update_list_member_tags(
        list_id,
        subscriber_hash("ned@gmail.com"),
        {"tags": [{"name": "vip", "status": "active"}, {"name": "web", "status": "inactive"}]},
    )
    assert resp.status_code == 204
    member = client.lists.get_list_member(list_id, subscriber_hash("ned@gmail.com"))
    assert [t["name"] for t in member["tags"]] == ["vip"]
    expect_problem(
        404,
        "Resource Not Found",
        client.lists.update_list_member_tags,
        list_id,
        subscriber_hash("ghost@gmail.com"),
        {"tags": []},
    )


def test_last_changed_moves_on_change_only(client, emulator, list_id) -> None:
    first = put(client, list_id, "oli@gmail.com", status_if_new="subscribed")
    emulator.advance_clock(60)
    same = put(client, list_id, "oli@gmail.com", status_if_new="subscribed")
    assert same["last_changed"] == first["last_changed"]
    changed = put(
        client, list_id, "oli@gmail.com", status_if_new="subscribed", merge_fields={"FNAME": "O"}
    )
    assert datetime.fromisoformat(changed["last_changed"]) > datetime.fromisoformat(
        first["last_changed"]
    )


def test_double_optin_audience(client, emulator) -> None:
    list_id = emulator.create_list(double_optin=True)
    assert client.lists.get_list(list_id)["double_optin"] is True
    for _ in range(2):  # an identical re-send does not send the confirmation again
        assert put(client, list_id, "pat@gmail.com", status_if_new="pending")["status"] == "pending"
    assert (
        put(client, list_id, "quin@gmail.com", status_if_new="subscribed")["status"] == "subscribed"
    )
    assert emulator.audience(list_id)["confirmations_sent"] == 1
    emulator.confirm("pat@gmail.com", list_id=list_id)
    assert emulator.member("pat@gmail.com", list_id)["status"] == "subscribed"


def test_get_list_and_ping(client, list_id) -> None:
    assert client.ping.get() == {"health_status": "Everything's Chimpy!"}
    audience = client.lists.get_list(list_id)
    assert audience["id"] == list_id
    assert audience["double_optin"] is False


def test_unlisted_routes_answer_501(client, emulator) -> None:
    expect_problem(501, "Not Implemented", client.campaigns.list)
    expect_problem(501, "Not Implemented", client.lists.list_segments, emulator.list_id)
    # Merge-field definitions are read and created, never changed or deleted.
    expect_problem(
        501, "Not Implemented", client.lists.delete_list_merge_field, emulator.list_id, "1"
    )


def test_bad_json_is_a_parse_error(emulator, list_id) -> None:
    resp = requests.put(
        f"{emulator.base_url}/lists/{list_id}/members/{subscriber_hash('r@gmail.com')}",
        data="{not json",
        auth=("u", emulator.api_key),
        timeout=5,
    )
    assert resp.status_code == 400
    assert resp.json()["title"] == "JSON Parse Error"


def test_missing_api_key(emulator) -> None:
    resp = requests.get(f"{emulator.base_url}/ping", timeout=5)
    assert resp.status_code == 401
    assert resp.json()["title"] == "API Key Missing"


def test_wrong_api_key_is_401() -> None:
    with EmulatorProcess(api_key="right-us1") as emu:
        good = make_client(emu)
        assert good.ping.get()["health_status"]
        bad = make_client(emu)
        bad.set_config({"api_key": "wrong-us1", "server": "us1", "timeout": 5})
        bad.api_client.host = emu.base_url
        body = expect_problem(401, "API Key Invalid", bad.ping.get)
        assert "API key may be invalid" in body["detail"]
