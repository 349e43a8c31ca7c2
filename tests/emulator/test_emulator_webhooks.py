"""Webhooks: registration with the URL check, delivery of every event type to a real local
receiver in Mailchimp's literal key format, events/sources filters, retries and signing."""

from __future__ import annotations

import hashlib
import hmac
import itertools
import re
from typing import Any

import pytest

from tests.emulator.support import Receiver, expect_problem, make_client, put, wait_for
from worker.emulator.process import EmulatorProcess
from worker.emulator.state import subscriber_hash

ALL_SOURCES = {"user": True, "admin": True, "api": True}


def hook(client: Any, list_id: str, url: str, **body: Any) -> dict[str, Any]:
    return client.lists.create_list_webhook(list_id, {"url": url, **body})  # type: ignore[no-any-return]


def test_create_checks_url_with_get(client, list_id, receiver: Receiver) -> None:
    created = hook(client, list_id, receiver.url, sources=ALL_SOURCES)
    assert [r.method for r in receiver.requests] == ["GET"]
    assert created["url"] == receiver.url
    assert created["sources"] == ALL_SOURCES
    assert "secret" not in created
    listed = client.lists.get_list_webhooks(list_id)
    assert [w["id"] for w in listed["webhooks"]] == [created["id"]]
    assert client.lists.delete_list_webhook(list_id, created["id"]).status_code == 204
    assert client.lists.get_list_webhooks(list_id)["total_items"] == 0
    expect_problem(
        404, "Resource Not Found", client.lists.delete_list_webhook, list_id, created["id"]
    )


def test_create_refuses_url_not_answering_200(client, list_id, receiver: Receiver) -> None:
    receiver.get_status = 404
    body = expect_problem(400, "Invalid Resource", hook, client, list_id, receiver.url)
    assert body["errors"][0]["field"] == "url"
    body = expect_problem(
        400, "Invalid Resource", hook, client, list_id, "http://127.0.0.1:9/closed"
    )
    assert client.lists.get_list_webhooks(list_id)["total_items"] == 0


def test_person_actions_fire_their_events(client, emulator, list_id, receiver) -> None:
    hook(client, list_id, receiver.url, sources=ALL_SOURCES)
    for name in ("a", "b", "c", "d", "e"):
        emulator.seed_member(
            f"{name}@gmail.com", "subscribed", merge_fields={"FNAME": name}, list_id=list_id
        )
    assert emulator.unsubscribe("a@gmail.com", campaign_id="cmp1", list_id=list_id) == [
        "unsubscribe"
    ]
    emulator.complain("b@gmail.com", list_id=list_id)
    emulator.bounce("c@gmail.com", campaign_id="cmp2", list_id=list_id)
    assert emulator.change_email("d@gmail.com", "d2@gmail.com", list_id=list_id) == [
        "upemail",
        "profile",
    ]
    emulator.edit_profile("e@gmail.com", {"LNAME": "E"}, list_id=list_id)
    wait_for(lambda: len(receiver.posts()) == 6, what="six deliveries")
    for post in receiver.posts():
        assert post.headers["Content-Type"] == "application/x-www-form-urlencoded"
        assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d", post.form["fired_at"])
        assert post.form["data[list_id]"] == list_id

    unsub = {f["data[email]"]: f for f in receiver.forms("unsubscribe")}
    a = unsub["a@gmail.com"]
    assert (a["data[action]"], a["data[reason]"], a["data[campaign_id]"]) == (
        "unsub",
        "manual",
        "cmp1",
    )
    assert a["data[id]"] == subscriber_hash("a@gmail.com")
    assert a["data[merges][EMAIL]"] == "a@gmail.com"
    assert a["data[merges][FNAME]"] == "a"
    assert a["data[email_type]"] == "html" and "data[ip_opt]" in a
    assert unsub["b@gmail.com"]["data[reason]"] == "abuse"
    (cleaned,) = receiver.forms("cleaned")
    assert (cleaned["data[email]"], cleaned["data[reason]"], cleaned["data[campaign_id]"]) == (
        "c@gmail.com",
        "hard",
        "cmp2",
    )
    (upemail,) = receiver.forms("upemail")
    assert upemail["data[old_email]"] == "d@gmail.com"
    assert upemail["data[new_email]"] == "d2@gmail.com"
    assert upemail["data[new_id]"] == subscriber_hash("d2@gmail.com")
    profiles = {f["data[email]"]: f for f in receiver.forms("profile")}
    assert profiles["e@gmail.com"]["data[merges][LNAME]"] == "E"
    assert "d2@gmail.com" in profiles
    # The raw body carries the literal bracketed keys, form-encoded.
    assert "data%5Bmerges%5D%5BEMAIL%5D=" in receiver.posts()[0].raw
    members = {
        e: emulator.member(e, list_id)
        for e in ("a@gmail.com", "b@gmail.com", "c@gmail.com", "d2@gmail.com")
    }
    assert [m["status"] for m in members.values()] == [
        "unsubscribed",
        "unsubscribed",
        "cleaned",
        "subscribed",
    ]
    assert emulator.member("d@gmail.com", list_id) is None


def test_confirming_double_optin_fires_subscribe(client, emulator, receiver) -> None:
    list_id = emulator.create_list(double_optin=True)
    hook(client, list_id, receiver.url, sources=ALL_SOURCES)
    put(client, list_id, "p@gmail.com", status_if_new="pending")
    assert emulator.confirm("p@gmail.com", list_id=list_id) == ["subscribe"]
    (sub,) = wait_for(lambda: receiver.forms("subscribe"), what="subscribe delivery")
    assert sub["data[email]"] == "p@gmail.com" and "data[ip_signup]" in sub


def test_events_filter(client, emulator, list_id, receiver) -> None:
    events = {
        "subscribe": True,
        "unsubscribe": False,
        "profile": True,
        "cleaned": True,
        "upemail": True,
        "campaign": False,
    }
    hook(client, list_id, receiver.url, events=events, sources=ALL_SOURCES)
    emulator.seed_member("x@gmail.com", "subscribed", list_id=list_id)
    emulator.unsubscribe("x@gmail.com", list_id=list_id)
    emulator.seed_member("y@gmail.com", "subscribed", list_id=list_id)
    emulator.bounce("y@gmail.com", list_id=list_id)
    wait_for(lambda: receiver.forms("cleaned"), what="cleaned delivery")
    wait_for(lambda: emulator.counters()["webhooks"]["in_progress"] == 0, what="idle")
    assert [f["type"] for f in receiver.forms()] == ["cleaned"]


@pytest.mark.parametrize("api", [False, True])
def test_api_changes_echo_only_when_sources_api(client, emulator, list_id, receiver, api) -> None:
    hook(client, list_id, receiver.url, sources={"user": True, "admin": True, "api": api})
    put(client, list_id, "api@gmail.com", status_if_new="subscribed")
    client.lists.update_list_member(
        list_id, subscriber_hash("api@gmail.com"), {"status": "unsubscribed"}
    )
    emulator.seed_member("user@gmail.com", "subscribed", list_id=list_id)
    emulator.unsubscribe("user@gmail.com", list_id=list_id)
    wait_for(
        lambda: any(f["data[email]"] == "user@gmail.com" for f in receiver.forms()),
        what="the user's unsubscribe",
    )
    wait_for(lambda: emulator.counters()["webhooks"]["in_progress"] == 0, what="idle")
    api_forms = [f for f in receiver.forms() if f["data[email]"] == "api@gmail.com"]
    # Deliveries run concurrently and may arrive in either order, as Mailchimp's do: what is
    # promised is the set of events, and fired_at (second resolution) never going backwards.
    assert sorted(f["type"] for f in api_forms) == (["subscribe", "unsubscribe"] if api else [])
    if api:
        fired = {f["type"]: f["fired_at"] for f in api_forms}
        assert fired["subscribe"] <= fired["unsubscribe"]


def test_retries_at_growing_intervals(client, emulator, list_id, receiver) -> None:
    hook(client, list_id, receiver.url, sources=ALL_SOURCES)
    receiver.fail_next((500, 0.0), (503, 0.0))
    emulator.seed_member("r@gmail.com", "subscribed", list_id=list_id)
    emulator.unsubscribe("r@gmail.com", list_id=list_id)
    posts = wait_for(lambda: len(receiver.posts()) == 3 and receiver.posts(), what="3 attempts")
    gaps = [b.at - a.at for a, b in itertools.pairwise(posts)]
    assert gaps[0] >= 0.2 * 0.9  # first_delay_s
    assert gaps[1] >= 0.4 * 0.9 and gaps[1] > gaps[0] * 1.3  # doubling
    assert {p.raw for p in posts} == {posts[0].raw}  # the same event, re-sent
    (delivery,) = wait_for(
        lambda: [d for d in emulator.deliveries() if d["state"] == "delivered"], what="delivered"
    )
    assert delivery["attempts"] == 3 and delivery["statuses"] == [500, 503, 200]
    counters = emulator.counters()["webhooks"]
    assert counters["delivered"] == 1 and counters["failed_attempts"] == 2


def test_slow_receiver_counts_as_failed_and_is_retried(client, emulator, list_id, receiver):
    hook(client, list_id, receiver.url, sources=ALL_SOURCES)
    receiver.fail_next((200, 1.5))  # slower than the 1 s timeout these tests configure
    emulator.seed_member("slow@gmail.com", "subscribed", list_id=list_id)
    emulator.unsubscribe("slow@gmail.com", list_id=list_id)
    (delivery,) = wait_for(
        lambda: [d for d in emulator.deliveries() if d["state"] == "delivered"], what="delivered"
    )
    assert delivery["statuses"] == ["timeout", 200]
    assert len(receiver.posts()) == 2


def test_gives_up_after_max_attempts(client, emulator, list_id, receiver) -> None:
    emulator.set_settings(webhook_retry={"max_attempts": 3, "first_delay_s": 0.05})
    hook(client, list_id, receiver.url, sources=ALL_SOURCES)
    receiver.fail_next(*[(500, 0.0)] * 5)
    emulator.seed_member("never@gmail.com", "subscribed", list_id=list_id)
    emulator.unsubscribe("never@gmail.com", list_id=list_id)
    wait_for(lambda: emulator.counters()["webhooks"]["gave_up"] == 1, what="give up")
    assert len(receiver.posts()) == 3
    assert emulator.deliveries()[0]["state"] == "failed"


def test_delivery_can_be_dropped_for_chosen_addresses(client, emulator, list_id, receiver):
    hook(client, list_id, receiver.url, sources=ALL_SOURCES)
    emulator.block_webhooks_for("Lost@gmail.com")
    for email in ("lost@gmail.com", "kept@gmail.com"):
        emulator.seed_member(email, "subscribed", list_id=list_id)
        emulator.unsubscribe(email, list_id=list_id)
    wait_for(lambda: receiver.forms("unsubscribe"), what="kept delivery")
    assert [f["data[email]"] for f in receiver.forms()] == ["kept@gmail.com"]
    assert emulator.counters()["webhooks"]["dropped"] == 1
    emulator.unblock_webhooks_for("lost@gmail.com")
    emulator.edit_profile("lost@gmail.com", {"FNAME": "L"}, list_id=list_id)
    wait_for(lambda: receiver.forms("profile"), what="unblocked delivery")
    emulator.set_webhook_delivery(enabled=False)
    emulator.edit_profile("kept@gmail.com", {"FNAME": "K"}, list_id=list_id)
    assert emulator.counters()["webhooks"]["dropped"] == 2


def test_signed_deliveries(receiver: Receiver) -> None:
    with EmulatorProcess("--sign-webhooks", "--webhook-retry-s", "0.1") as emu:
        client = make_client(emu)
        created = hook(client, emu.list_id, receiver.url, sources=ALL_SOURCES)
        secret = created["secret"]
        assert secret and "secret" not in client.lists.get_list_webhook(emu.list_id, created["id"])
        emu.seed_member("sig@gmail.com", "subscribed")
        emu.unsubscribe("sig@gmail.com")
        (post,) = wait_for(receiver.posts, what="signed delivery")
        header = post.headers["X-Mailchimp-Signature"]
        match = re.fullmatch(r"t=(\d+),v1=([0-9a-f]{64})", header)
        assert match is not None
        expected = hmac.new(secret.encode(), f"{match[1]}.{post.raw}".encode(), hashlib.sha256)
        assert hmac.compare_digest(match[2], expected.hexdigest())


def test_unsigned_by_default(client, emulator, list_id, receiver) -> None:
    hook(client, list_id, receiver.url, sources=ALL_SOURCES)
    emulator.seed_member("u@gmail.com", "subscribed", list_id=list_id)
    emulator.unsubscribe("u@gmail.com", list_id=list_id)
    (post,) = wait_for(receiver.posts, what="delivery")
    assert "X-Mailchimp-Signature" not in post.headers
