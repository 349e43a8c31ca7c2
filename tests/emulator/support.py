"""Helpers for the emulator tests: waiting on conditions, SDK clients, problem bodies, and
the recording webhook receiver."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl

import mailchimp_marketing
import pytest
from mailchimp_marketing.api_client import ApiClientError

from tests import helpers
from worker.emulator.process import EmulatorProcess
from worker.emulator.state import subscriber_hash

# Webhook retries are shrunk from Mailchimp's minutes to fractions of a second.
FAST_ARGS = (
    "--webhook-retry-s",
    "0.2",
    "--webhook-timeout-s",
    "1",
    "--webhook-attempts",
    "4",
    "--timeout-hold-s",
    "1.5",
)


def wait_for(predicate: Callable[[], Any], timeout: float = 10.0, what: str = "condition") -> Any:
    return helpers.wait_for(predicate, timeout=timeout, interval=0.01, what=what)


def make_client(emu: EmulatorProcess, timeout: float = 5) -> mailchimp_marketing.Client:
    client = mailchimp_marketing.Client()
    client.set_config({"api_key": emu.api_key, "server": "us1", "timeout": timeout})
    client.api_client.host = emu.base_url
    return client


def problem(exc: Any) -> dict[str, Any]:
    """The problem+json body of an ApiClientError (the SDK keeps it as a raw string)."""
    return json.loads(exc.text)  # type: ignore[no-any-return]


@dataclass
class Received:
    method: str
    path: str
    headers: dict[str, str]
    raw: str
    at: float

    @property
    def form(self) -> dict[str, str]:
        return dict(parse_qsl(self.raw, keep_blank_values=True))


@dataclass
class Receiver:
    """A local webhook endpoint that records every request and can be told to fail."""

    url: str = ""
    requests: list[Received] = field(default_factory=list)
    get_status: int = 200
    post_plan: list[tuple[int, float]] = field(default_factory=list)  # (status, delay) per POST
    lock: threading.Lock = field(default_factory=threading.Lock)

    def posts(self) -> list[Received]:
        with self.lock:
            return [r for r in self.requests if r.method == "POST"]

    def forms(self, kind: str | None = None) -> list[dict[str, str]]:
        return [p.form for p in self.posts() if kind is None or p.form.get("type") == kind]

    def fail_next(self, *plan: tuple[int, float]) -> None:
        with self.lock:
            self.post_plan.extend(plan)


PROBLEM_CT = "application/problem+json; charset=utf-8"


def put(client: Any, list_id: str, email: str, **body: Any) -> Any:
    return client.lists.set_list_member(
        list_id, subscriber_hash(email), {"email_address": email, **body}
    )


def expect_problem(
    status: int, title: str, call: Callable[..., Any], /, *args: Any, **kwargs: Any
) -> dict[str, Any]:
    with pytest.raises(ApiClientError) as info:
        call(*args, **kwargs)
    assert info.value.status_code == status
    body = problem(info.value)
    assert body["title"] == title
    assert body["status"] == status
    assert set(body) >= {"type", "title", "status", "detail", "instance"}
    return body
