"""`listsync status` and `listsync flower`: what ops look at.

Flower is started read-only and behind basic auth; it is configured from listsync's settings
alone (Flower's own FLOWER_* variables and flowerconfig.py are ignored), so nothing in the
environment can quietly switch its API's task control back on.
"""

from __future__ import annotations

import json
import os
import sys
from datetime import datetime

import click
from rich.console import Console
from rich.table import Table

from worker.cli.common import BadInput, ListsyncError, settings_or_exit
from worker.cli.processes import check_broker, check_services

LOCALHOST = "127.0.0.1"


# --- status ------------------------------------------------------------------------------


def _ago(seconds: float | None) -> str:
    if seconds is None:
        return "never"
    seconds = max(0.0, seconds)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.1f}{unit} ago"
    return f"{seconds:.0f}s ago"


def _when(value: datetime | None, age: float | None) -> str:
    if value is None:
        return "never"
    return f"{value:%Y-%m-%d %H:%M:%S}Z ({_ago(age)})"


def _pairs(rows: dict[str, int] | list[tuple[str, int]], empty: str) -> Table:
    table = Table(show_header=False, box=None, padding=(0, 1, 0, 2))
    table.add_column(no_wrap=True)
    table.add_column(justify="right")
    items = list(rows.items()) if isinstance(rows, dict) else rows
    for name, value in items:
        table.add_row(name, str(value))
    if not items:
        table.add_row(f"[dim]{empty}[/dim]", "")
    return table


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print the facts as JSON, for scripts.")
def status(as_json: bool) -> None:
    """Queues, sync jobs, failures, last purge and reconcile, rejects, Mailchimp calls."""
    from sqlalchemy.exc import SQLAlchemyError

    from worker.db import session_scope
    from worker.status import broker_client, gather_status

    settings = settings_or_exit()
    check_services(settings)
    try:
        with session_scope() as session:
            report = gather_status(session, broker_client())
    except SQLAlchemyError as exc:
        raise ListsyncError(
            f"cannot read the database ({type(exc).__name__}); has `listsync db upgrade` run?"
        ) from None

    if as_json:
        click.echo(json.dumps(report.to_dict(), indent=2))
        return

    out = Console(highlight=False)
    oldest = report.oldest_pending_at
    out.print(f"[bold]listsync status[/bold] at {report.generated_at:%Y-%m-%d %H:%M:%S}Z\n")
    out.print("[bold]Queues[/bold] (messages waiting)", _pairs(report.queues, "none"))
    unacked = "not shown by RabbitMQ" if report.unacked is None else report.unacked
    out.print(f"  taken by a worker, not yet acked: {unacked}\n")
    out.print("[bold]Sync jobs[/bold]", _pairs(report.jobs, "none"))
    forms = report.forms or {}
    for form, code in forms.get("waiting", {}).items():
        out.print(f"  [yellow]form {form} waits: its feed disagrees with the audience ({code});")
        out.print("    its signups are kept; `listsync check` says what to fix[/yellow]")
    if forms.get("error"):
        out.print(f"  last check of the forms could not read Mailchimp: {forms['error']}")
    out.print(f"  parked signups: {report.parked} (`listsync failed list`)")
    out.print(f"  oldest pending: {_when(oldest, report.age(oldest))}\n")
    out.print(
        f"[bold]Failed jobs[/bold]: {report.failed}; top reasons",
        _pairs(report.failed_reasons, "none"),
    )
    out.print()
    for job in ("purge", "reconcile"):
        at = report.last_success.get(job)
        out.print(f"[bold]Last successful {job}[/bold]: {_when(at, report.age(at))}")
    if report.last_purge_counts:
        counts = ", ".join(f"{k}={v}" for k, v in sorted(report.last_purge_counts.items()))
        out.print(f"  rows purged in that run: {counts}")
    out.print()
    out.print(
        "[bold]Webhook rejects[/bold], last hour", _pairs(report.webhook_rejects_last_hour, "none")
    )
    out.print(
        "[bold]Intake rejects[/bold], last hour", _pairs(report.intake_rejects_last_hour, "none")
    )
    out.print()
    out.print(
        f"[bold]Mailchimp calls in flight[/bold]: {report.mailchimp_in_flight} "
        f"of {report.mailchimp_cap}"
    )


# --- flower ------------------------------------------------------------------------------


def flower_argv(address: str, port: int) -> list[str]:
    # --read_only makes Flower answer 403 to every POST of its API: task apply/send/abort,
    # revoke, rate limits and worker control; so no purge or erasure can be started from it.
    # --conf=/dev/null: a flowerconfig.py in the working directory must not override these.
    return [
        sys.executable,
        "-m",
        "celery",
        "-A",
        "worker",
        "flower",
        f"--address={address}",
        f"--port={port}",
        "--read_only=true",
        "--conf=/dev/null",
    ]


@click.command()
@click.option("--address", default=LOCALHOST, show_default=True, help="Address to bind.")
@click.option("--port", type=click.IntRange(1, 65535), default=5555, show_default=True)
@click.option(
    "--insecure-local",
    is_flag=True,
    help="Allow starting without LISTSYNC_FLOWER_BASIC_AUTH, bound to 127.0.0.1 only.",
)
def flower(address: str, port: int, insecure_local: bool) -> None:
    """Run Flower (read-only, basic auth from LISTSYNC_FLOWER_BASIC_AUTH)."""
    settings = settings_or_exit()
    if insecure_local and address != LOCALHOST:
        raise BadInput(f"--insecure-local binds {LOCALHOST} only; drop --address {address}")
    # Flower's own variables would override ours (an empty password list, an open API with
    # `Access-Control-Allow-Origin: *`): only listsync's settings configure it.
    env = {name: value for name, value in os.environ.items() if not name.startswith("FLOWER_")}
    if settings.flower_basic_auth is not None:
        # Checked with the settings (user:password, real passwords); passed in the
        # environment, never the visible argv.
        env["FLOWER_BASIC_AUTH"] = settings.flower_basic_auth.get_secret_value()
    elif not insecure_local:
        raise ListsyncError(
            "Flower needs authentication: set LISTSYNC_FLOWER_BASIC_AUTH=user:password "
            "(or use --insecure-local for a 127.0.0.1-only instance without it)"
        )
    else:
        click.secho(
            f"flower: NO AUTHENTICATION, bound to {LOCALHOST} only (--insecure-local)",
            fg="yellow",
            bold=True,
        )
    check_broker(settings.broker_url or "redis://127.0.0.1:6379/0")
    os.execve(sys.executable, flower_argv(address, port), env)
