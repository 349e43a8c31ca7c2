"""The ``listsync emulator`` command: start the Mailchimp emulator on a local port."""

from __future__ import annotations

import asyncio
import logging
import sys
from pathlib import Path

import click

from worker.emulator.server import (
    FAULT_KINDS,
    LIMIT_RESPONSES,
    Emulator,
    EmulatorConfig,
    Faults,
    serve,
)
from worker.emulator.state import EmulatorState
from worker.emulator.webhooks import RetryPolicy


def _rates(values: tuple[str, ...]) -> dict[str, float]:
    rates: dict[str, float] = {}
    for value in values:
        kind, _, rate = value.partition("=")
        if kind not in FAULT_KINDS:
            raise click.BadParameter(f"{kind!r}: kinds are {', '.join(FAULT_KINDS)}")
        try:
            rates[kind] = float(rate)
        except ValueError:
            raise click.BadParameter(f"{value!r}: expected KIND=RATE, e.g. 500=0.05") from None
    if sum(rates.values()) > 1:
        raise click.BadParameter("fault rates must sum to at most 1")
    return rates


@click.command("emulator")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", default=8099, show_default=True, help="Port; 0 picks a free one.")
@click.option("--latency-ms", default=0.0, show_default=True, help="Fixed latency per API call.")
@click.option("--jitter-ms", default=0.0, show_default=True, help="Extra random latency, 0..N ms.")
@click.option(
    "--list", "lists", multiple=True, help="Create an audience with this id (repeatable)."
)
@click.option(
    "--double-optin-list",
    "optin_lists",
    multiple=True,
    help="Create a double opt-in audience with this id (repeatable).",
)
@click.option("--api-key", default=None, help="Accept only this API key (default: any key).")
@click.option(
    "--state-file",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Load state from this JSON file at start (if present) and save it at exit.",
)
@click.option(
    "--fault",
    "faults",
    multiple=True,
    metavar="KIND=RATE",
    help=f"Random fault rate, repeatable; kinds: {', '.join(FAULT_KINDS)}.",
)
@click.option(
    "--timeout-hold-s",
    default=30.0,
    show_default=True,
    help="How long a 'timeout' fault holds the call before it lands.",
)
@click.option(
    "--max-connections",
    default=10,
    show_default=True,
    help="Simultaneous API calls allowed (Mailchimp: 10); 0 = unlimited.",
)
@click.option(
    "--limit-response",
    type=click.Choice(LIMIT_RESPONSES),
    default="problem",
    show_default=True,
    help="What a call over the limit gets.",
)
@click.option(
    "--sign-webhooks/--no-sign-webhooks",
    default=False,
    show_default=True,
    help="Give new webhooks a secret and sign deliveries (X-Mailchimp-Signature).",
)
@click.option(
    "--webhook-timeout-s",
    default=10.0,
    show_default=True,
    help="A receiver slower than this counts as failed.",
)
@click.option(
    "--webhook-retry-s",
    default=60.0,
    show_default=True,
    help="First retry delay; each later one doubles.",
)
@click.option(
    "--webhook-attempts", default=7, show_default=True, help="Delivery attempts before giving up."
)
@click.option(
    "--batch-unsubscribed",
    type=click.Choice(["ignore", "error"]),
    default="ignore",
    show_default=True,
    help="Batch re-subscribe of an unsubscribed member: silently ignored, or an error.",
)
@click.option(
    "--unknown-merge-fields",
    type=click.Choice(["error", "ignore"]),
    default="error",
    show_default=True,
    help="A member write naming a merge tag the audience lacks: refused (400), or the tag dropped.",
)
@click.option(
    "--skip-merge-validation",
    "skip_merge_scope",
    type=click.Choice(["required", "all"]),
    default="required",
    show_default=True,
    help="What skip_merge_validation=true waives: required fields only, or every merge check.",
)
@click.option(
    "--refuse-pending-resubscribe",
    is_flag=True,
    help="Refuse status=pending for unsubscribed members (Member In Compliance State).",
)
@click.option("--verbose", is_flag=True, help="Log every request.")
def emulator(
    host: str,
    port: int,
    latency_ms: float,
    jitter_ms: float,
    lists: tuple[str, ...],
    optin_lists: tuple[str, ...],
    api_key: str | None,
    state_file: Path | None,
    faults: tuple[str, ...],
    timeout_hold_s: float,
    max_connections: int,
    limit_response: str,
    sign_webhooks: bool,
    webhook_timeout_s: float,
    webhook_retry_s: float,
    webhook_attempts: int,
    batch_unsubscribed: str,
    unknown_merge_fields: str,
    skip_merge_scope: str,
    refuse_pending_resubscribe: bool,
    verbose: bool,
) -> None:
    """Run a local stand-in for the Mailchimp Marketing API (base path /3.0)."""
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
    )
    if not verbose:
        # A dropped-connection fault makes aiohttp log a reset; that is the point of it.
        logging.getLogger("aiohttp.server").setLevel(logging.CRITICAL)
    state = EmulatorState(
        allow_pending_resubscribe=not refuse_pending_resubscribe,
        batch_unsubscribed=batch_unsubscribed,
        sign_webhooks=sign_webhooks,
        unknown_merge_fields=unknown_merge_fields,
        skip_merge_validation=skip_merge_scope,
    )
    if state_file is not None and state_file.exists():
        state.load(state_file)
    for list_id in lists:
        if list_id not in state.audiences:
            state.add_audience(list_id, double_optin=False)
    for list_id in optin_lists:
        if list_id not in state.audiences:
            state.add_audience(list_id, double_optin=True)
    if not state.audiences:
        state.add_audience()
    emu = Emulator(
        state,
        EmulatorConfig(
            api_key=api_key,
            max_connections=max_connections,
            limit_response=limit_response,
            state_file=state_file,
            verbose=verbose,
        ),
        Faults(
            latency_ms=latency_ms,
            jitter_ms=jitter_ms,
            rates=_rates(faults),
            timeout_hold_s=timeout_hold_s,
        ),
        RetryPolicy(
            timeout_s=webhook_timeout_s,
            first_delay_s=webhook_retry_s,
            max_attempts=webhook_attempts,
        ),
    )

    def ready(bound: int) -> None:
        ids = ",".join(state.audiences)
        # One machine-readable line: EmulatorProcess parses it to learn the port.
        sys.stdout.write(f"emulator listening on http://{host}:{bound}/3.0 list={ids}\n")
        sys.stdout.flush()

    asyncio.run(serve(emu, host, port, ready))
