"""`listsync webhook url | register | list`: the Mailchimp list webhook that brings opt-outs home.

The webhook's secret is the last segment of its URL. It never goes on a command line (where
`ps` and shell history keep it): the commands take the public base URL and add the first
secret of LISTSYNC_WEBHOOK_SECRETS themselves, and print the URL masked unless asked.
"""

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
WEBHOOK_PATH = "/v1/mailchimp/webhook/"


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


def webhook_url(base_url: str) -> str:
    """The receiver's URL under base_url, with the first (newest) configured secret."""
    parts = urlsplit(base_url)
    if parts.scheme not in {"http", "https"} or not parts.netloc:
        raise BadInput("--base-url must be an http:// or https:// URL")
    if parts.query or parts.fragment or "webhook" in parts.path:
        raise BadInput(
            "--base-url is where listsync web is reached (e.g. https://lists.example.org); "
            f"listsync adds {WEBHOOK_PATH}<secret> itself"
        )
    secrets = settings_or_exit().webhook_secrets
    if not secrets:
        raise BadInput("LISTSYNC_WEBHOOK_SECRETS is empty: set the secret first")
    root = f"{parts.scheme}://{parts.netloc}{parts.path.rstrip('/')}"
    return root + WEBHOOK_PATH + secrets[0].get_secret_value()


BASE_URL = click.option(
    "--base-url",
    required=True,
    help="Where Mailchimp reaches listsync web, with any path prefix (https://host/prefix).",
)
SHOW_SECRET = click.option(
    "--show-secret", is_flag=True, help="Print the URL whole, secret included (default: ***)."
)


@webhook.command()
@BASE_URL
@SHOW_SECRET
def url(base_url: str, show_secret: bool) -> None:
    """Print the webhook URL (with the first LISTSYNC_WEBHOOK_SECRETS secret) for base_url."""
    full = webhook_url(base_url)
    click.echo(full if show_secret else masked_url(full))


@webhook.command()
@BASE_URL
@SHOW_SECRET
def register(base_url: str, show_secret: bool) -> None:
    """Create the list webhook at base_url + /v1/mailchimp/webhook/<first secret>: all events,
    sources user and admin (not api)."""
    from worker.mailchimp import MailchimpError

    full = webhook_url(base_url)
    gateway = _gateway()
    try:
        hook = gateway.create_webhook(full, events=EVENTS, sources=SOURCES)
    except MailchimpError as exc:
        raise ListsyncError(f"Mailchimp refused the webhook: {exc}") from None
    shown = full if show_secret else masked_url(full)
    click.echo(f"registered webhook {hook.get('id', '?')} for {shown}")
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
