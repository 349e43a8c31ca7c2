"""An audience's shape through the real SDK: merge fields and their per-type validation, groups
(interest categories and interests), tags, GDPR marketing permissions and language."""

from __future__ import annotations

import re
from typing import Any

import pytest
import requests

from tests.emulator.support import expect_problem, make_client, put
from worker.emulator.process import EmulatorError, EmulatorProcess
from worker.emulator.state import subscriber_hash

MERGE_INVALID = "Your merge fields were invalid."
HEX10 = re.compile(r"[0-9a-f]{10}")


def member(client: Any, list_id: str, email: str) -> dict[str, Any]:
    return client.lists.get_list_member(list_id, subscriber_hash(email))  # type: ignore[no-any-return]


def patch(client: Any, list_id: str, email: str, body: dict[str, Any], **query: Any) -> Any:
    return client.lists.update_list_member(list_id, subscriber_hash(email), body, **query)


def post(
    client: Any, list_id: str, email: str, skip_merge_validation: bool | None = None, **body: Any
) -> Any:
    query = (
        {} if skip_merge_validation is None else {"skip_merge_validation": skip_merge_validation}
    )
    return client.lists.add_list_member(list_id, {"email_address": email, **body}, **query)


def merge_errors(body: dict[str, Any]) -> list[dict[str, str]]:
    assert body["detail"] == MERGE_INVALID
    return body["errors"]  # type: ignore[no-any-return]


# ---- merge field definitions ----------------------------------------------------------------
def test_new_audience_has_fname_and_lname(client, emulator, list_id) -> None:
    result = client.lists.get_list_merge_fields(list_id)
    assert result["list_id"] == list_id and result["total_items"] == 2
    fname, lname = result["merge_fields"]
    assert fname == {
        "merge_id": 1,
        "tag": "FNAME",
        "name": "First Name",
        "type": "text",
        "required": False,
        "default_value": "",
        "public": True,
        "display_order": 2,
        "options": {"size": 25},
        "help_text": "",
        "list_id": list_id,
    }
    assert (lname["merge_id"], lname["tag"], lname["required"]) == (2, "LNAME", False)
    assert client.lists.get_list_merge_field(list_id, "2")["tag"] == "LNAME"
    expect_problem(404, "Resource Not Found", client.lists.get_list_merge_field, list_id, "99")
    assert emulator.counters()["calls"]["GET /lists/{list_id}/merge-fields"] == {"200": 1}


def test_create_merge_fields_with_options_per_type(client, list_id) -> None:
    add = client.lists.add_list_merge_field
    assert add(list_id, {"name": "Address", "type": "address", "tag": "addr"})["options"] == {
        "default_country": 164
    }
    phone = add(list_id, {"name": "Phone", "type": "phone", "options": {"phone_format": "US"}})
    assert phone["options"] == {"phone_format": "US"}
    # No tag given: Mailchimp makes one up, so a client must read it back.
    assert phone["tag"] == f"MMERGE{phone['merge_id']}" and phone["merge_id"] == 4
    assert add(list_id, {"name": "Since", "type": "date", "tag": "SINCE"})["options"] == {
        "date_format": "MM/DD/YYYY"
    }
    assert add(list_id, {"name": "Bday", "type": "birthday", "tag": "BDAY"})["options"] == {
        "date_format": "MM/DD"
    }
    size = add(
        list_id,
        {
            "name": "Size",
            "type": "dropdown",
            "tag": "SIZE",
            "required": True,
            "default_value": "M",
            "options": {"choices": ["S", "M", "L"]},
        },
    )
    assert (size["required"], size["default_value"], size["options"]) == (
        True,
        "M",
        {"choices": ["S", "M", "L"]},
    )
    listed = client.lists.get_list_merge_fields(list_id, count=3, offset=1)
    assert listed["total_items"] == 7
    assert [m["tag"] for m in listed["merge_fields"]] == ["LNAME", "ADDR", phone["tag"]]
    required = client.lists.get_list_merge_fields(list_id, required=True)
    assert [m["tag"] for m in required["merge_fields"]] == ["SIZE"]
    dates = client.lists.get_list_merge_fields(list_id, type="date")
    assert [m["tag"] for m in dates["merge_fields"]] == ["SINCE"]


def test_merge_field_definition_errors(client, list_id) -> None:
    add = client.lists.add_list_merge_field
    for tag in ("FNAME", "fname", "EMAIL"):
        body = expect_problem(
            400, "Invalid Resource", add, list_id, {"name": "X", "type": "text", "tag": tag}
        )
        assert body["detail"] == (
            f'A Merge Field with the tag "{tag.upper()}" already exists for this list.'
        )
        assert "errors" not in body
    for bad, fld in (
        ({"type": "text"}, "name"),
        ({"name": "X"}, "type"),
        ({"name": "X", "type": "colour"}, "type"),
        ({"name": "X", "type": "text", "tag": "MUCH_TOO_LONG"}, "tag"),
        ({"name": "X", "type": "dropdown"}, "options.choices"),
        ({"name": "X", "type": "date", "options": {"date_format": "YYYY"}}, "options.date_format"),
        (
            {"name": "X", "type": "radio", "options": {"choices": ["A"]}, "default_value": "B"},
            "default_value",
        ),
    ):
        body = expect_problem(400, "Invalid Resource", add, list_id, bad)
        assert body["errors"][0]["field"] == fld
    assert client.lists.get_list_merge_fields(list_id)["total_items"] == 2


# ---- member write validation ------------------------------------------------------------------
@pytest.fixture
def required_list(emulator: EmulatorProcess) -> str:
    """FNAME required; SIZE a dropdown; TIER a radio with a default."""
    return emulator.create_list(
        merge_fields=[
            {"tag": "FNAME", "name": "First Name", "type": "text", "required": True},
            {"tag": "SIZE", "name": "Size", "type": "dropdown", "choices": ["S", "M", "L"]},
            {
                "tag": "TIER",
                "name": "Tier",
                "type": "radio",
                "choices": ["Free", "Paid"],
                "default_value": "Free",
            },
        ]
    )


def test_required_field_missing_on_create(client, required_list) -> None:
    for write in (
        lambda: put(client, required_list, "ann@gmail.com", status_if_new="subscribed"),
        lambda: post(client, required_list, "ann@gmail.com", status="subscribed"),
        lambda: put(
            client,
            required_list,
            "ann@gmail.com",
            status_if_new="subscribed",
            merge_fields={"FNAME": "  "},
        ),
    ):
        body = expect_problem(400, "Invalid Resource", write)
        assert merge_errors(body) == [{"field": "FNAME", "message": "Please enter a value"}]
    expect_problem(404, "Resource Not Found", member, client, required_list, "ann@gmail.com")
    created = put(
        client,
        required_list,
        "ann@gmail.com",
        status_if_new="subscribed",
        merge_fields={"FNAME": "A"},
    )
    assert created["merge_fields"] == {"FNAME": "A", "TIER": "Free"}  # the default filled in


def test_skip_merge_validation_waives_required_fields(client, emulator, required_list) -> None:
    skipped = client.lists.set_list_member(
        required_list,
        subscriber_hash("bea@gmail.com"),
        {"email_address": "bea@gmail.com", "status_if_new": "subscribed"},
        skip_merge_validation=True,  # the SDK sends "True"
    )
    assert skipped["status"] == "subscribed" and "FNAME" not in skipped["merge_fields"]
    post(client, required_list, "cy@gmail.com", status="subscribed", skip_merge_validation=True)
    # An update answers only for what it sends: leaving FNAME out is fine, emptying it is not.
    assert patch(client, required_list, "bea@gmail.com", {"language": "en"})["language"] == "en"
    body = expect_problem(
        400,
        "Invalid Resource",
        patch,
        client,
        required_list,
        "bea@gmail.com",
        {"merge_fields": {"FNAME": ""}},
    )
    assert merge_errors(body) == [{"field": "FNAME", "message": "Please enter a value"}]
    patch(
        client,
        required_list,
        "bea@gmail.com",
        {"merge_fields": {"FNAME": ""}},
        skip_merge_validation=True,
    )
    # The waiver covers required fields only (what Mailchimp documents) unless switched.
    bad_size = {"merge_fields": {"SIZE": "XL"}}
    body = expect_problem(
        400,
        "Invalid Resource",
        patch,
        client,
        required_list,
        "bea@gmail.com",
        bad_size,
        skip_merge_validation=True,
    )
    assert merge_errors(body)[0]["field"] == "SIZE"
    emulator.set_settings(skip_merge_validation="all")
    waived = patch(client, required_list, "bea@gmail.com", bad_size, skip_merge_validation=True)
    assert waived["merge_fields"]["SIZE"] == "XL"
    counts = emulator.counters()["calls"]["PATCH /lists/{list_id}/members/{subscriber_hash}"]
    assert counts == {"200": 3, "400": 2}


def test_skip_merge_validation_query_is_a_boolean(emulator, required_list) -> None:
    url = f"{emulator.base_url}/lists/{required_list}/members/{subscriber_hash('q@gmail.com')}"
    body = {"email_address": "q@gmail.com", "status_if_new": "subscribed"}

    def send(flag: str) -> requests.Response:
        params = {"skip_merge_validation": flag}
        return requests.put(url, json=body, params=params, auth=("u", emulator.api_key), timeout=5)

    resp = send("maybe")
    assert resp.status_code == 400 and "skip_merge_validation" in resp.json()["detail"]
    resp = send("false")
    assert resp.status_code == 400 and resp.json()["detail"] == MERGE_INVALID
    assert send("TRUE").status_code == 200


def test_dropdown_and_radio_choices(client, required_list) -> None:
    body = expect_problem(
        400,
        "Invalid Resource",
        put,
        client,
        required_list,
        "dee@gmail.com",
        status_if_new="subscribed",
        merge_fields={"FNAME": "D", "SIZE": "XL", "TIER": "Gold"},
    )
    assert merge_errors(body) == [
        {"field": "SIZE", "message": "Value must be one of: S, M, L (not XL)"},
        {"field": "TIER", "message": "Value must be one of: Free, Paid (not Gold)"},
    ]
    created = put(
        client,
        required_list,
        "dee@gmail.com",
        status_if_new="subscribed",
        merge_fields={"FNAME": "D", "SIZE": "L", "TIER": "Paid"},
    )
    assert created["merge_fields"] == {"FNAME": "D", "SIZE": "L", "TIER": "Paid"}
    # An optional choice may be cleared.
    cleared = patch(client, required_list, "dee@gmail.com", {"merge_fields": {"SIZE": ""}})
    assert cleared["merge_fields"]["SIZE"] == ""


ADDRESS = {"addr1": "1 Main St", "city": "Boston", "state": "MA", "zip": "02134"}
DATE = "Please enter the date"
BIRTHDAY = "Please enter a month (01-12) and a day (01-31)"
PHONE = "Please enter a valid phone number"
URL = "Please enter a valid URL"
US = {"phone_format": "US"}
# (type, options, refused value, accepted value, message)
TYPE_CASES = [
    ("number", {}, "twelve", "12.5", "Please enter a number"),
    ("number", {}, True, -3, "Please enter a number"),
    ("date", {}, "31/12/2024", "12/31/2024", DATE),
    ("date", {}, "2024-02-30", "2024-02-29", DATE),
    ("date", {"date_format": "DD/MM/YYYY"}, "12/31/2024", "31/12/2024", DATE),
    ("birthday", {}, "13/01", "01/13", BIRTHDAY),
    ("birthday", {}, "02/30", "02/29", BIRTHDAY),
    ("birthday", {"date_format": "DD/MM"}, "01/13", "13/01", BIRTHDAY),
    ("phone", US, "555-1234", "(555) 123-4567", PHONE),
    ("phone", US, "+44 20 7946 0958", "555-123-4567", PHONE),
    ("phone", {}, "call me", "+44 (0)20 7946-0958", PHONE),
    ("zip", {}, "2134", "02134", "Please enter a valid zip code"),
    ("url", {}, "trust.org", "https://trust.org/about?x=1", URL),
    ("imageurl", {}, "ftp://trust.org/a.png", "http://cdn.trust.org/a.png", URL),
    (
        "address",
        {},
        {"addr1": "1 Main St", "city": "Boston"},
        ADDRESS,
        "Please enter a complete address",
    ),
    ("address", {}, "1 Main St  Boston  MA  02134", ADDRESS, "Please enter a complete address"),
    ("text", {}, "x" * 256, "x" * 255, "Please enter a value of at most 255 characters"),
    ("text", {}, ["a"], 42, "Please enter a value"),
]


@pytest.mark.parametrize(("kind", "options", "bad", "good", "message"), TYPE_CASES)
def test_each_type_refuses_what_it_cannot_hold(
    client, list_id, kind, options, bad, good, message
) -> None:
    client.lists.add_list_merge_field(
        list_id, {"name": "Field", "type": kind, "tag": "FIELD", "options": options}
    )
    body = expect_problem(
        400,
        "Invalid Resource",
        put,
        client,
        list_id,
        "eve@gmail.com",
        status_if_new="subscribed",
        merge_fields={"FIELD": bad},
    )
    assert merge_errors(body) == [{"field": "FIELD", "message": message}]
    created = put(
        client, list_id, "eve@gmail.com", status_if_new="subscribed", merge_fields={"FIELD": good}
    )
    assert created["merge_fields"]["FIELD"] == good
    # The same check guards an update of an existing member.
    body = expect_problem(
        400,
        "Invalid Resource",
        patch,
        client,
        list_id,
        "eve@gmail.com",
        {"merge_fields": {"FIELD": bad}},
    )
    assert merge_errors(body)[0]["field"] == "FIELD"


def test_unknown_merge_tag(client, emulator, list_id) -> None:
    body = expect_problem(
        400,
        "Invalid Resource",
        put,
        client,
        list_id,
        "fin@gmail.com",
        status_if_new="subscribed",
        merge_fields={"FNAME": "F", "PHONE": "555"},
    )
    assert merge_errors(body) == [{"field": "PHONE", "message": "This merge field does not exist"}]
    emulator.set_settings(unknown_merge_fields="ignore")
    created = put(
        client,
        list_id,
        "fin@gmail.com",
        status_if_new="subscribed",
        merge_fields={"FNAME": "F", "PHONE": "555"},
    )
    assert created["merge_fields"] == {"FNAME": "F"}  # dropped, never stored


def test_batch_reports_merge_errors_per_member(client, emulator, required_list) -> None:
    result = client.lists.batch_list_members(
        required_list,
        {
            "members": [
                {
                    "email_address": "ok@gmail.com",
                    "status": "subscribed",
                    "merge_fields": {"FNAME": "O"},
                    "tags": ["batch"],
                },
                {"email_address": "nofname@gmail.com", "status": "subscribed"},
                {
                    "email_address": "badsize@gmail.com",
                    "status": "subscribed",
                    "merge_fields": {"FNAME": "B", "SIZE": "XXL"},
                },
                {
                    "email_address": "badgroup@gmail.com",
                    "status": "subscribed",
                    "merge_fields": {"FNAME": "G"},
                    "interests": {"0123456789": True},
                },
            ]
        },
    )
    assert result["total_created"] == 1 and result["error_count"] == 3
    assert [m["email_address"] for m in result["new_members"]] == ["ok@gmail.com"]
    assert [t["name"] for t in result["new_members"][0]["tags"]] == ["batch"]
    errors = {e["email_address"]: e for e in result["errors"]}
    assert errors["nofname@gmail.com"] == {
        "email_address": "nofname@gmail.com",
        "error": MERGE_INVALID,
        "error_code": "ERROR_GENERIC",
        "field": "FNAME",
        "field_message": "Please enter a value",
    }
    assert errors["badsize@gmail.com"]["field"] == "SIZE"
    assert errors["badsize@gmail.com"]["field_message"] == (
        "Value must be one of: S, M, L (not XXL)"
    )
    assert errors["badgroup@gmail.com"]["error"] == "Invalid interest ID: '0123456789'."
    assert emulator.member("nofname@gmail.com", required_list) is None
    assert emulator.counters()["calls"]["POST /lists/{list_id}"] == {"200": 1}
    # The batch takes skip_merge_validation too.
    skipped = client.lists.batch_list_members(
        required_list,
        {"members": [{"email_address": "nofname@gmail.com", "status": "subscribed"}]},
        skip_merge_validation=True,
    )
    assert skipped["total_created"] == 1
    assert member(client, required_list, "nofname@gmail.com")["status"] == "subscribed"


# ---- groups -------------------------------------------------------------------------------------
def test_interest_categories(client, emulator, list_id) -> None:
    assert client.lists.get_list_interest_categories(list_id) == {
        "list_id": list_id,
        "categories": [],
        "total_items": 0,
    }
    topics = client.lists.create_list_interest_category(
        list_id, {"title": "Topics", "type": "checkboxes"}
    )
    assert HEX10.fullmatch(topics["id"])
    assert topics == {
        "list_id": list_id,
        "id": topics["id"],
        "title": "Topics",
        "display_order": 0,
        "type": "checkboxes",
    }
    client.lists.create_list_interest_category(list_id, {"title": "Region", "type": "dropdown"})
    client.lists.create_list_interest_category(list_id, {"title": "Internal", "type": "hidden"})
    listed = client.lists.get_list_interest_categories(list_id, count=2, offset=1)
    assert listed["total_items"] == 3
    assert [c["title"] for c in listed["categories"]] == ["Region", "Internal"]
    hidden = client.lists.get_list_interest_categories(list_id, type="hidden")
    assert [c["title"] for c in hidden["categories"]] == ["Internal"]
    assert client.lists.get_interest_category(list_id, topics["id"])["title"] == "Topics"
    for bad, fld in (({"type": "checkboxes"}, "title"), ({"title": "X", "type": "grid"}, "type")):
        body = expect_problem(
            400, "Invalid Resource", client.lists.create_list_interest_category, list_id, bad
        )
        assert body["errors"][0]["field"] == fld
    body = expect_problem(
        400,
        "Invalid Resource",
        client.lists.create_list_interest_category,
        list_id,
        {"title": "topics", "type": "radio"},
    )
    assert "already exists" in body["detail"]
    expect_problem(404, "Resource Not Found", client.lists.get_interest_category, list_id, "nope")
    calls = emulator.counters()["calls"]
    assert calls["POST /lists/{list_id}/interest-categories"] == {"200": 3, "400": 3}
    assert calls["GET /lists/{list_id}/interest-categories/{interest_category_id}"] == {
        "200": 1,
        "404": 1,
    }


def test_interests_create_list_rename(client, emulator, list_id) -> None:
    cat = client.lists.create_list_interest_category(
        list_id, {"title": "Topics", "type": "checkboxes"}
    )["id"]
    parks = client.lists.create_interest_category_interest(list_id, cat, {"name": "Parks"})
    assert HEX10.fullmatch(parks["id"]) and parks["id"] != cat
    assert parks == {
        "category_id": cat,
        "list_id": list_id,
        "id": parks["id"],
        "name": "Parks",
        "subscriber_count": "0",
        "display_order": 0,
    }
    roads = client.lists.create_interest_category_interest(list_id, cat, {"name": "Roads"})
    listed = client.lists.list_interest_category_interests(list_id, cat)
    assert listed["total_items"] == 2
    assert [i["name"] for i in listed["interests"]] == ["Parks", "Roads"]
    expect_problem(
        400, "Invalid Resource", client.lists.create_interest_category_interest, list_id, cat, {}
    )
    body = expect_problem(
        400,
        "Invalid Resource",
        client.lists.create_interest_category_interest,
        list_id,
        cat,
        {"name": "parks"},
    )
    assert "already exists" in body["detail"]
    expect_problem(
        404,
        "Resource Not Found",
        client.lists.list_interest_category_interests,
        list_id,
        "0000000000",
    )
    put(client, list_id, "gil@gmail.com", status_if_new="subscribed", interests={parks["id"]: True})
    got = client.lists.get_interest_category_interest(list_id, cat, parks["id"])
    assert got["subscriber_count"] == "1"
    renamed = client.lists.update_interest_category_interest(
        list_id, cat, roads["id"], {"name": "Streets"}
    )
    assert (renamed["id"], renamed["name"]) == (roads["id"], "Streets")
    # A rename in the UI: same id, new name; members keep their choice.
    emulator.rename_interest(parks["id"], "Green spaces", list_id=list_id)
    names = [
        i["name"] for i in client.lists.list_interest_category_interests(list_id, cat)["interests"]
    ]
    assert names == ["Green spaces", "Streets"]
    assert member(client, list_id, "gil@gmail.com")["interests"][parks["id"]] is True
    assert emulator.member("gil@gmail.com", list_id)["groups"] == {"Topics": ["Green spaces"]}
    expect_problem(
        404,
        "Resource Not Found",
        client.lists.update_interest_category_interest,
        list_id,
        cat,
        "0000000000",
        {"name": "X"},
    )
    calls = emulator.counters()["calls"]
    key = (
        "PATCH /lists/{list_id}/interest-categories/{interest_category_id}/interests/{interest_id}"
    )
    assert calls[key] == {"200": 1, "404": 1}


@pytest.fixture
def groups_list(emulator: EmulatorProcess) -> str:
    return emulator.create_list(
        interest_categories=[
            {"title": "Topics", "type": "checkboxes", "interests": ["Parks", "Roads"]},
            {"title": "Region", "type": "radio", "interests": ["North", "South"]},
        ]
    )


def test_member_interests_on_and_off(client, emulator, groups_list) -> None:
    parks, roads = (emulator.interest_id(n, "Topics", groups_list) for n in ("Parks", "Roads"))
    north = emulator.interest_id("North", list_id=groups_list)
    created = put(
        client, groups_list, "hal@gmail.com", status_if_new="subscribed", interests={parks: True}
    )
    # Every interest of the audience shows, on or off.
    assert created["interests"] == {
        parks: True,
        roads: False,
        north: False,
        emulator.interest_id("South", list_id=groups_list): False,
    }
    updated = patch(
        client, groups_list, "hal@gmail.com", {"interests": {parks: False, north: True}}
    )
    assert (updated["interests"][parks], updated["interests"][north]) == (False, True)
    assert emulator.member("hal@gmail.com", groups_list)["groups"] == {
        "Topics": [],
        "Region": ["North"],
    }
    # A PUT of an existing member switches only the interests it names.
    again = put(
        client, groups_list, "hal@gmail.com", status_if_new="subscribed", interests={roads: True}
    )
    assert (again["interests"][roads], again["interests"][north]) == (True, True)
    body = expect_problem(
        400,
        "Invalid Resource",
        patch,
        client,
        groups_list,
        "hal@gmail.com",
        {"interests": {"abcdef0123": True}},
    )
    assert body["detail"] == "Invalid interest ID: 'abcdef0123'."
    assert "errors" not in body
    body = expect_problem(
        400,
        "Invalid Resource",
        patch,
        client,
        groups_list,
        "hal@gmail.com",
        {"interests": [parks]},
    )
    assert body["errors"][0]["field"] == "interests"
    result = client.lists.batch_list_members(
        groups_list,
        {
            "members": [
                {
                    "email_address": "ivy@gmail.com",
                    "status": "subscribed",
                    "interests": {roads: True},
                }
            ]
        },
    )
    assert result["new_members"][0]["interests"][roads] is True


# ---- tags ---------------------------------------------------------------------------------------
def test_tags_on_creation_only(client, emulator, list_id) -> None:
    put(client, list_id, "jo@gmail.com", status_if_new="subscribed", tags=["put"])
    post(client, list_id, "kay@gmail.com", status="subscribed", tags=["post", "web"])
    client.lists.batch_list_members(
        list_id,
        {"members": [{"email_address": "lee@gmail.com", "status": "subscribed", "tags": ["b"]}]},
    )
    names = {
        e: [t["name"] for t in member(client, list_id, e)["tags"]]
        for e in ("jo@gmail.com", "kay@gmail.com", "lee@gmail.com")
    }
    assert names == {
        "jo@gmail.com": ["put"],
        "kay@gmail.com": ["post", "web"],
        "lee@gmail.com": ["b"],
    }
    # Existing members: tags in a PUT or an updating batch are ignored.
    put(client, list_id, "jo@gmail.com", status_if_new="subscribed", tags=["later"])
    client.lists.batch_list_members(
        list_id,
        {
            "members": [{"email_address": "lee@gmail.com", "status": "subscribed", "tags": ["x"]}],
            "update_existing": True,
        },
    )
    jo = member(client, list_id, "jo@gmail.com")
    assert [t["name"] for t in jo["tags"]] == ["put"] and jo["tags_count"] == 1
    assert [t["name"] for t in member(client, list_id, "lee@gmail.com")["tags"]] == ["b"]
    admin_view = emulator.member("kay@gmail.com", list_id)
    assert [t["name"] for t in admin_view["tags"]] == ["post", "web"]


def test_tags_endpoint(client, emulator, list_id) -> None:
    put(client, list_id, "max@gmail.com", status_if_new="subscribed", tags=["web"])
    key = subscriber_hash("max@gmail.com")
    resp = client.lists.update_list_member_tags(
        list_id,
        key,
        {"tags": [{"name": "vip", "status": "active"}, {"name": "web", "status": "inactive"}]},
    )
    assert resp.status_code == 204
    tags = client.lists.get_list_member_tags(list_id, key)
    assert tags["total_items"] == 1
    (vip,) = tags["tags"]
    assert vip["name"] == "vip" and isinstance(vip["id"], int)
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\+00:00", vip["date_added"])
    assert member(client, list_id, "max@gmail.com")["tags"] == [{"id": vip["id"], "name": "vip"}]
    for call, args in (
        (client.lists.update_list_member_tags, ({"tags": []},)),
        (client.lists.get_list_member_tags, ()),
    ):
        expect_problem(
            404, "Resource Not Found", call, list_id, subscriber_hash("no@gmail.com"), *args
        )
    calls = emulator.counters()["calls"]
    assert calls["GET /lists/{list_id}/members/{subscriber_hash}/tags"] == {"200": 1, "404": 1}
    assert calls["POST /lists/{list_id}/members/{subscriber_hash}/tags"] == {"204": 1, "404": 1}


def test_tag_names_longer_than_100_are_refused(client, list_id) -> None:
    long = "t" * 101
    body = expect_problem(
        400,
        "Invalid Resource",
        put,
        client,
        list_id,
        "ned@gmail.com",
        status_if_new="subscribed",
        tags=[long],
    )
    assert body["errors"][0]["field"] == "tags"
    put(client, list_id, "ned@gmail.com", status_if_new="subscribed", tags=["t" * 100])
    body = expect_problem(
        400,
        "Invalid Resource",
        client.lists.update_list_member_tags,
        list_id,
        subscriber_hash("ned@gmail.com"),
        {"tags": [{"name": long, "status": "active"}]},
    )
    assert body["errors"][0]["field"] == "tags.item:name"


# ---- GDPR marketing permissions -----------------------------------------------------------------
def test_marketing_permissions_on_a_gdpr_audience(client, emulator) -> None:
    gdpr = emulator.create_list(marketing_permissions=["Email", "Direct Mail"])
    assert client.lists.get_list(gdpr)["marketing_permissions"] is True
    email_id = emulator.marketing_permission_id("Email", gdpr)
    mail_id = emulator.marketing_permission_id("Direct Mail", gdpr)
    assert HEX10.fullmatch(email_id) and email_id != mail_id
    created = put(client, gdpr, "oda@gmail.com", status_if_new="subscribed")
    assert created["marketing_permissions"] == [
        {"marketing_permission_id": email_id, "text": "Email", "enabled": False},
        {"marketing_permission_id": mail_id, "text": "Direct Mail", "enabled": False},
    ]
    consent = [{"marketing_permission_id": email_id, "enabled": True}]
    enabled = post(
        client, gdpr, "pia@gmail.com", status="subscribed", marketing_permissions=consent
    )
    assert [p["enabled"] for p in enabled["marketing_permissions"]] == [True, False]
    withdrawn = patch(
        client,
        gdpr,
        "pia@gmail.com",
        {"marketing_permissions": [{"marketing_permission_id": email_id, "enabled": False}]},
    )
    assert [p["enabled"] for p in withdrawn["marketing_permissions"]] == [False, False]
    body = expect_problem(
        400,
        "Invalid Resource",
        patch,
        client,
        gdpr,
        "pia@gmail.com",
        {"marketing_permissions": [{"marketing_permission_id": "abcdef0123", "enabled": True}]},
    )
    assert body["detail"] == "Invalid marketing permission ID: 'abcdef0123'."
    body = expect_problem(
        400,
        "Invalid Resource",
        patch,
        client,
        gdpr,
        "pia@gmail.com",
        {"marketing_permissions": {"marketing_permission_id": email_id, "enabled": True}},
    )
    assert body["errors"][0]["field"] == "marketing_permissions"
    assert emulator.member("oda@gmail.com", gdpr)["marketing_permissions"][0]["enabled"] is False


def test_marketing_permissions_refused_without_gdpr_fields(client, list_id) -> None:
    assert client.lists.get_list(list_id)["marketing_permissions"] is False
    created = put(client, list_id, "quy@gmail.com", status_if_new="subscribed")
    assert "marketing_permissions" not in created
    body = expect_problem(
        400,
        "Invalid Resource",
        put,
        client,
        list_id,
        "rae@gmail.com",
        status_if_new="subscribed",
        marketing_permissions=[{"marketing_permission_id": "abcdef0123", "enabled": True}],
    )
    assert "does not have GDPR marketing permissions" in body["detail"]


# ---- language and email type --------------------------------------------------------------------
def test_language_and_email_type(client, emulator, list_id) -> None:
    created = put(
        client,
        list_id,
        "sol@gmail.com",
        status_if_new="subscribed",
        language="es",
        email_type="text",
    )
    assert (created["language"], created["email_type"]) == ("es", "text")
    assert patch(client, list_id, "sol@gmail.com", {"language": "es_ES"})["language"] == "es_ES"
    for bad in ("Spanish", "ES", "es-ES", "es_es"):
        body = expect_problem(
            400, "Invalid Resource", patch, client, list_id, "sol@gmail.com", {"language": bad}
        )
        assert body["errors"] == [
            {
                "field": "language",
                "message": "Please enter a language code such as en, fr or es_ES.",
            }
        ]
    view = emulator.member(subscriber_hash("sol@gmail.com"), list_id)
    assert (view["language"], view["email_type"]) == ("es_ES", "text")


# ---- the admin API and the state file -----------------------------------------------------------
def test_admin_shape_view_and_bad_definitions(emulator) -> None:
    list_id = emulator.create_list(
        double_optin=True,
        merge_fields=[{"tag": "PHONE", "name": "Phone", "type": "phone", "required": True}],
        interest_categories=[{"title": "Topics", "type": "checkboxes", "interests": ["Parks"]}],
        marketing_permissions=["Email"],
    )
    shape = emulator.audience_shape(list_id)
    assert [m["tag"] for m in shape["merge_fields"]] == ["FNAME", "LNAME", "PHONE"]
    assert shape["merge_fields"][2]["required"] is True
    (topics,) = shape["interest_categories"]
    assert [i["name"] for i in topics["interests"]] == ["Parks"]
    assert [p["text"] for p in shape["marketing_permissions"]] == ["Email"]
    assert emulator.audience(list_id)["double_optin"] is True
    with pytest.raises(EmulatorError, match="400"):
        emulator.create_list(merge_fields=[{"tag": "X", "name": "X", "type": "colour"}])
    with pytest.raises(EmulatorError, match="400"):
        emulator.create_list(marketing_permissions=[""])
    with pytest.raises(EmulatorError, match="no interest named"):
        emulator.interest_id("Roads", list_id=list_id)


def test_shape_and_member_feeds_survive_a_restart(tmp_path) -> None:
    path = tmp_path / "state.json"
    with EmulatorProcess("--state-file", str(path)) as emu:
        list_id = emu.create_list(
            merge_fields=[{"tag": "SIZE", "name": "Size", "type": "dropdown", "choices": ["S"]}],
            interest_categories=[{"title": "Topics", "type": "checkboxes", "interests": ["P"]}],
            marketing_permissions=["Email"],
        )
        parks = emu.interest_id("P", list_id=list_id)
        consent = emu.marketing_permission_id("Email", list_id)
        put(
            make_client(emu),
            list_id,
            "tia@gmail.com",
            status_if_new="subscribed",
            merge_fields={"SIZE": "S"},
            interests={parks: True},
            tags=["web"],
            language="fr",
            marketing_permissions=[{"marketing_permission_id": consent, "enabled": True}],
        )
        before = emu.member("tia@gmail.com", list_id)
        shape = emu.audience_shape(list_id)
    with EmulatorProcess("--state-file", str(path)) as emu:
        assert emu.audience_shape(list_id) == shape
        assert emu.member("tia@gmail.com", list_id) == before
        client = make_client(emu)
        expect_problem(
            400,
            "Invalid Resource",
            put,
            client,
            list_id,
            "uma@gmail.com",
            status_if_new="subscribed",
            merge_fields={"SIZE": "M"},
        )
