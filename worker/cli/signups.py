"""`listsync enqueue` and `listsync failed ...`: put signups in, look at what failed."""

from __future__ import annotations

import json
from typing import Any

import click

from worker.cli.common import BadInput, settings_or_exit


@click.command()
@click.argument("email")
@click.option("--form", "form", required=True, help="Form name, e.g. newsletter_signup.")
@click.option("--field", "fields", multiple=True, metavar="NAME=VALUE", help="A form field.")
@click.option("--no-newsletter", is_flag=True, help="State that newsletter consent was refused.")
@click.option("--idempotency-key", default=None)
def enqueue(
    email: str, form: str, fields: tuple[str, ...], no_newsletter: bool, idempotency_key: str | None
) -> None:
    """Publish one signup to the queue, as the website does."""
    from worker.publish import enqueue_signup
    from worker.signups.message import SignupRejected

    settings_or_exit()
    parsed: dict[str, str] = {}
    for item in fields:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise BadInput(f"--field wants NAME=VALUE, got {name or item!r}")
        parsed[name] = value
    try:
        task_id = enqueue_signup(
            email,
            form,
            fields=parsed,
            newsletter=False if no_newsletter else None,
            idempotency_key=idempotency_key,
        )
    except SignupRejected as exc:
        raise BadInput(str(exc)) from None
    click.echo(f"queued signup for form {form} (task {task_id})")


@click.group()
def failed() -> None:
    """Sync jobs that ended failed: list and replay them."""


@failed.command("list")
@click.option("--json", "as_json", is_flag=True)
def failed_list(as_json: bool) -> None:
    """Show failed sync jobs with their reasons (no addresses)."""
    from worker.db import session_scope
    from worker.signups.flush import failed_jobs

    settings_or_exit()
    with session_scope() as session:
        rows: list[dict[str, Any]] = [
            {
                "id": job.id,
                "kind": job.kind,
                "email_hash": job.email_hash,
                "attempts": job.attempts,
                "reason": job.last_error,
                "finished_at": job.finished_at.isoformat() if job.finished_at else None,
            }
            for job in failed_jobs(session)
        ]
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    if not rows:
        click.echo("no failed sync jobs")
    for row in rows:
        click.echo(
            f"{row['id']:>8}  {row['kind']:<7} {row['email_hash'][:12]}…  "
            f"attempts={row['attempts']}  {row['reason']}"
        )


@failed.command("retry")
@click.argument("job_ids", nargs=-1, type=int)
@click.option("--all", "retry_all", is_flag=True, help="Replay every failed job.")
def failed_retry(job_ids: tuple[int, ...], retry_all: bool) -> None:
    """Replay failed jobs (by id, or --all)."""
    from worker import publish
    from worker.db import session_scope
    from worker.signups.flush import retry_failed

    settings_or_exit()
    if bool(job_ids) == retry_all:
        raise BadInput("give job ids or --all (not both)")
    with session_scope() as session:
        count = retry_failed(session, None if retry_all else list(job_ids))
    if not retry_all and count != len(set(job_ids)):
        click.echo(f"note: only {count} of the given ids were failed jobs", err=True)
    publish.FLUSH.request(force=True)
    click.echo(f"{count} job(s) pending again")
