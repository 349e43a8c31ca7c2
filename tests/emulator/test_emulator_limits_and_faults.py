"""The 10-connection limit under concurrent load, fault injection and counters."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest
import requests
from mailchimp_marketing.api_client import ApiClientError

from tests.emulator.support import expect_problem, make_client, problem, put, wait_for
from worker.emulator.process import EmulatorProcess
from worker.emulator.state import subscriber_hash


def concurrent_calls(emu: EmulatorProcess, list_id: str, n: int) -> list[Any]:
    """n SDK calls released together; each result is the answer or the ApiClientError."""
    barrier = threading.Barrier(n)
    results: list[Any] = [None] * n

    def call(i: int) -> None:
        client = make_client(emu, timeout=10)
        barrier.wait()
        try:
            results[i] = client.lists.get_list(list_id)
        except ApiClientError as exc:
            results[i] = exc

    threads = [threading.Thread(target=call, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    return results


def test_eleventh_simultaneous_call_gets_429(emulator, list_id) -> None:
    # Latency keeps every call in flight long enough for all 15 to overlap.
    emulator.set_faults(latency_ms=1500)
    results = concurrent_calls(emulator, list_id, 15)
    ok = [r for r in results if isinstance(r, dict)]
    refused = [r for r in results if isinstance(r, ApiClientError)]
    assert (len(ok), len(refused)) == (10, 5)
    for exc in refused:
        assert exc.status_code == 429
        body = problem(exc)
        assert body["title"] == "TooManyRequests"
        assert "10 simultaneous connections" in body["detail"]
    counters = emulator.counters()
    assert counters["peak_in_flight"] == 10
    # Refused calls are answered at once, so at most one of them overlaps the ten.
    assert counters["peak_attempted"] == 11
    assert counters["limit_rejections"] == 5
    assert counters["calls"]["GET /lists/{list_id}"] == {"200": 10, "429": 5}


@pytest.mark.parametrize("mode,status", [("429_empty", 429), ("403_empty", 403)])
def test_limit_answer_without_body_is_not_raised_by_the_sdk(emulator, list_id, mode, status):
    emulator.set_faults(latency_ms=1500, max_connections=2, limit_response=mode)
    results = concurrent_calls(emulator, list_id, 4)
    bodiless = [r for r in results if isinstance(r, requests.Response)]
    assert len(bodiless) == 2  # the SDK hands these back as if they had succeeded
    assert all(r.status_code == status and r.content == b"" for r in bodiless)


def test_limit_can_be_lifted(emulator, list_id) -> None:
    emulator.set_faults(latency_ms=500, max_connections=0)
    results = concurrent_calls(emulator, list_id, 14)
    assert all(isinstance(r, dict) for r in results)
    assert emulator.counters()["peak_in_flight"] == 14


def test_fault_rate_and_admin_is_never_faulted(client, emulator, list_id) -> None:
    emulator.set_faults(rates={"503": 1.0})
    for _ in range(3):
        body = expect_problem(503, "Service Unavailable", client.lists.get_list, list_id)
        assert body["status"] == 503
    counters = emulator.counters()  # the admin API still answers
    assert counters["faults_injected"] == {"503": 3}
    emulator.set_faults(rates={})
    assert client.lists.get_list(list_id)["id"] == list_id


def test_mixed_rates_are_roughly_honoured(client, emulator, list_id) -> None:
    emulator.set_faults(rates={"500": 0.5, "429": 0.5})
    statuses = []
    for _ in range(40):
        with pytest.raises(ApiClientError) as info:
            client.ping.get()
        statuses.append(info.value.status_code)
    assert set(statuses) <= {500, 429} and len(set(statuses)) == 2


def test_scripted_failures_for_next_calls_to_a_path(client, emulator, list_id) -> None:
    path = f"/3.0/lists/{list_id}/members/*"
    emulator.script_failures("500", count=2, path=path, method="PUT")
    assert client.lists.get_list(list_id)["id"] == list_id  # another path: unaffected
    for _ in range(2):
        expect_problem(
            500,
            "Internal Server Error",
            put,
            client,
            list_id,
            "s@gmail.com",
            status_if_new="subscribed",
        )
    assert put(client, list_id, "s@gmail.com", status_if_new="subscribed")["status"] == "subscribed"
    assert emulator.faults()["scripts"] == []


def test_502_has_an_html_body(client, emulator, list_id) -> None:
    emulator.script_failures("502")
    with pytest.raises(ApiClientError) as info:
        client.lists.get_list(list_id)
    assert info.value.status_code == 502
    assert info.value.text.startswith("<html>")


def test_read_timeout_still_lands_later(emulator, list_id) -> None:
    client = make_client(emulator, timeout=0.5)
    emulator.script_failures("timeout", path=f"/3.0/lists/{list_id}/members/*")
    with pytest.raises(ApiClientError) as info:
        put(client, list_id, "late@gmail.com", status_if_new="subscribed")
    assert info.value.status_code is None  # a transport failure, as the SDK reports them
    assert emulator.counters()["in_flight"] == 1  # the call still holds its slot
    wait_for(lambda: emulator.member("late@gmail.com", list_id), what="the late write")
    wait_for(lambda: emulator.counters()["in_flight"] == 0, what="slot released")


def test_dropped_connection_before_and_after_applying(client, emulator, list_id) -> None:
    emulator.script_failures("drop")
    with pytest.raises(ApiClientError) as info:
        put(client, list_id, "d1@gmail.com", status_if_new="subscribed")
    assert info.value.status_code is None
    assert emulator.member("d1@gmail.com", list_id) is None
    emulator.script_failures("drop_after")
    with pytest.raises(ApiClientError):
        put(client, list_id, "d2@gmail.com", status_if_new="subscribed")
    assert emulator.member("d2@gmail.com", list_id)["status"] == "subscribed"


def test_scripted_429_problem_and_bodiless(client, emulator, list_id) -> None:
    emulator.script_failures("429")
    expect_problem(429, "TooManyRequests", client.lists.get_list, list_id)
    emulator.script_failures("429_empty")
    resp = client.lists.get_list(list_id)
    assert isinstance(resp, requests.Response) and resp.status_code == 429


def test_latency_model(client, emulator, list_id) -> None:
    emulator.set_latency(300, jitter_ms=100)
    emulator.reset_counters()
    for _ in range(5):
        start = time.monotonic()
        client.lists.get_list(list_id)
        # A sleep never ends early: each call took at least the base latency.
        assert time.monotonic() - start >= 0.3
    # Every delay the emulator applied lies in [latency, latency + jitter].
    delay = emulator.counters()["delay_ms"]
    assert 300 <= delay["min"] <= delay["max"] <= 400
    emulator.set_latency(0)
    emulator.reset_counters()
    client.lists.get_list(list_id)
    assert emulator.counters()["delay_ms"] is None  # no latency, no delay


def test_counters(client, emulator, list_id) -> None:
    put(client, list_id, "c1@gmail.com", status_if_new="subscribed")
    put(client, list_id, "c2@gmail.com", status_if_new="unsubscribed")
    expect_problem(
        400, "Invalid Resource", put, client, list_id, "c3@example.com", status_if_new="subscribed"
    )
    client.lists.delete_list_member_permanent(list_id, subscriber_hash("c1@gmail.com"))
    counters = emulator.counters()
    assert counters["calls"]["PUT /lists/{list_id}/members/{subscriber_hash}"] == {
        "200": 2,
        "400": 1,
    }
    assert counters["calls"][
        "POST /lists/{list_id}/members/{subscriber_hash}/actions/delete-permanent"
    ] == {"204": 1}
    members = counters["members"][list_id]
    assert (members["subscribed"], members["unsubscribed"], members["forgotten"]) == (0, 1, 1)
    emulator.reset_counters()
    assert emulator.counters()["calls"] == {}
