"""`listsync webhook register | list`: the Mailchimp list webhook that brings opt-outs home."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

import click

from worker.cli.common import BadInput, ListsyncError, settings_or_exit

#: Every list event; `api` off so our own API writes do not echo back.
EVENTS = {
    "subscribe": True,
    "unsubscribe": True,
    "profile": True,
    "cleaned": True,
    "upemail": True,
    "campaign": True,
}
SOURCES = {"user": True, "admin": True, "api": False}


def masked_url(url: str) -> str:
    """The URL with its last path segment (the webhook secret) hidden."""
    parts = urlsplit(url)
    head, _, tail = parts.path.rstrip("/").rpartition("/")
    path = f"{head}/***" if tail else parts.path
    return f"{parts.scheme}://{parts.netloc}{path}"


def _gateway() -> Any:
    from worker.mailchimp import MailchimpError, get_gateway

    settings_or_exit()
    try:
        return get_gateway()
    except MailchimpError as exc:
        raise ListsyncError(f"Mailchimp is not usable: {exc}") from None


@click.group()
def webhook() -> None:
    """The Mailchimp list webhook (opt-outs, profile and address changes)."""


@webhook.command()
@click.option("--url", required=True, help="Public URL ending in /v1/mailchimp/webhook/<secret>.")
def register(url: str) -> None:
    """Create the list webhook: all events, sources user and admin (not api)."""
    from worker.mailchimp import MailchimpError

    parts = urlsplit(url)
    if parts.scheme not in {"http", "https"} or not parts.netloc:
        raise BadInput("--url must be an http:// or https:// URL")
    if "/v1/mailchimp/webhook/" not in parts.path or parts.path.endswith("/webhook/"):
        raise BadInput("--url must end in /v1/mailchimp/webhook/<secret>")
    gateway = _gateway()
    try:
        hook = gateway.create_webhook(url, events=EVENTS, sources=SOURCES)
    except MailchimpError as exc:
        raise ListsyncError(f"Mailchimp refused the webhook: {exc}") from None
    click.echo(f"registered webhook {hook.get('id', '?')} for {masked_url(url)}")
    secret = hook.get("secret")
    if secret:
        click.echo(f"signing secret (shown once; set LISTSYNC_WEBHOOK_SIGNING_SECRET): {secret}")


@webhook.command(name="list")
def list_() -> None:
    """Show the audience's webhooks (URLs with their secret hidden)."""
    from worker.mailchimp import MailchimpError

    gateway = _gateway()
    try:
        hooks = gateway.list_webhooks()
    except MailchimpError as exc:
        raise ListsyncError(f"could not list webhooks: {exc}") from None
    if not hooks:
        click.echo("no webhooks")
        return
    for hook in hooks:
        events = ",".join(k for k, v in sorted((hook.get("events") or {}).items()) if v)
        sources = ",".join(k for k, v in sorted((hook.get("sources") or {}).items()) if v)
        url = masked_url(str(hook.get("url", "")))
        click.echo(f"{hook.get('id', '?')}  {url}  events={events}  sources={sources}")
