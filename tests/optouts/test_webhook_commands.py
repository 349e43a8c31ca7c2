"""`listsync webhook url | register`: the secret never on a command line, never printed
unless asked."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest
import uvicorn

from tests.conftest import Audience
from tests.helpers import run_listsync, wait_for
from worker.cli.processes import free_port

SECRET = "test-webhook-secret-0123456789"  # the first of LISTSYNC_WEBHOOK_SECRETS in tests


@pytest.fixture
def receiver(audience: Audience) -> Iterator[str]:
    """The real app on a free port, so the emulator's check of a new webhook URL (a GET, as
    Mailchimp makes) finds it; yields its base URL."""
    from worker.web.app import create_app

    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(create_app(), host="127.0.0.1", port=port, log_level="warning")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    wait_for(lambda: server.started, timeout=10)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(10)


def registered_urls() -> list[str]:
    from worker.mailchimp import get_gateway

    return [str(hook["url"]) for hook in get_gateway().list_webhooks()]


def test_url_is_masked_unless_shown_and_uses_the_newest_secret(
    settings_env: dict[str, str],
) -> None:
    env = {**settings_env, "LISTSYNC_WEBHOOK_SECRETS": f"{SECRET},old-webhook-secret-0123456789"}

    masked = run_listsync("webhook", "url", "--base-url", "https://lists.example.org/", env=env)
    whole = run_listsync(
        "webhook", "url", "--base-url", "https://x.example.org/pre", "--show-secret", env=env
    )

    assert masked.returncode == 0, masked.stderr
    assert masked.stdout.strip() == "https://lists.example.org/v1/mailchimp/webhook/***"
    assert whole.stdout.strip() == f"https://x.example.org/pre/v1/mailchimp/webhook/{SECRET}"


@pytest.mark.parametrize(
    ("base_url", "problem"),
    [
        ("ftp://lists.example.org", "must be an http:// or https:// URL"),
        ("lists.example.org", "must be an http:// or https:// URL"),
        (f"https://h.example.org/v1/mailchimp/webhook/{SECRET}", "adds /v1/mailchimp/webhook/"),
        ("https://h.example.org/?a=1", "adds /v1/mailchimp/webhook/"),
    ],
)
def test_a_base_url_that_is_not_one_is_refused_naming_the_problem(
    settings_env: dict[str, str], base_url: str, problem: str
) -> None:
    result = run_listsync("webhook", "url", "--base-url", base_url, env=settings_env)

    assert result.returncode == 2
    assert problem in result.stderr
    assert SECRET not in result.stdout + result.stderr


def test_no_secret_configured_is_refused(settings_env: dict[str, str]) -> None:
    env = {**settings_env, "LISTSYNC_WEBHOOK_SECRETS": ""}
    result = run_listsync("webhook", "url", "--base-url", "https://h.example.org", env=env)

    assert result.returncode == 2
    assert "LISTSYNC_WEBHOOK_SECRETS is empty" in result.stderr


def test_register_sends_the_whole_url_and_prints_it_masked(
    audience: Audience, receiver: str, settings_env: dict[str, str]
) -> None:
    result = run_listsync("webhook", "register", "--base-url", receiver, env=settings_env)

    assert result.returncode == 0, result.stderr
    assert f"for {receiver}/v1/mailchimp/webhook/***" in result.stdout
    assert SECRET not in result.stdout + result.stderr
    assert registered_urls() == [f"{receiver}/v1/mailchimp/webhook/{SECRET}"]
    listed = run_listsync("webhook", "list", env=settings_env)
    assert f"{receiver}/v1/mailchimp/webhook/***" in listed.stdout
    assert SECRET not in listed.stdout


def test_register_prints_the_whole_url_when_asked(
    audience: Audience, receiver: str, settings_env: dict[str, str]
) -> None:
    result = run_listsync(
        "webhook", "register", "--base-url", receiver, "--show-secret", env=settings_env
    )

    assert result.returncode == 0, result.stderr
    assert f"for {receiver}/v1/mailchimp/webhook/{SECRET}" in result.stdout
