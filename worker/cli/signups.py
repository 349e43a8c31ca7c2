"""`listsync enqueue` and `listsync failed ...`: put signups in, look at what failed."""

from __future__ import annotations

import json
from typing import Any

import click

from worker.cli.common import BadInput, read_address, settings_or_exit


@click.command()
@click.argument("email")
@click.option("--form", "form", required=True, help="Form name, e.g. newsletter_signup.")
@click.option("--field", "fields", multiple=True, metavar="NAME=VALUE", help="A form field.")
@click.option("--no-newsletter", is_flag=True, help="State that newsletter consent was refused.")
@click.option("--idempotency-key", default=None)
def enqueue(
    email: str, form: str, fields: tuple[str, ...], no_newsletter: bool, idempotency_key: str | None
) -> None:
    """Publish one signup to the queue, as the website does.

    EMAIL may be `-`: the address is then read from standard input (kept out of ps)."""
    from worker.publish import enqueue_signup
    from worker.signups.message import SignupRejected

    settings_or_exit()
    email = read_address(email)
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
    """Sync jobs that ended failed and parked signups: list and replay them."""


@failed.command("list")
@click.option("--json", "as_json", is_flag=True)
def failed_list(as_json: bool) -> None:
    """Show failed sync jobs and parked signups with their reasons (no addresses)."""
    from worker.db import session_scope
    from worker.signups.flush import failed_jobs
    from worker.signups.parked import list_parked

    settings_or_exit()
    with session_scope() as session:
        jobs: list[dict[str, Any]] = [
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
        parked: list[dict[str, Any]] = [
            {
                "id": f"{PARKED_PREFIX}{row.id}",
                "form": row.form,
                "email_hash": row.email_hash,
                "attempts": row.attempts,
                "reason": row.error,
                "parked_at": row.parked_at.isoformat(),
            }
            for row in list_parked(session)
        ]
    if as_json:
        click.echo(json.dumps({"sync_jobs": jobs, "parked_signups": parked}, indent=2))
        return
    if not jobs:
        click.echo("no failed sync jobs")
    for row in jobs:
        click.echo(
            f"{row['id']:>8}  {row['kind']:<7} {row['email_hash'][:12]}…  "
            f"attempts={row['attempts']}  {row['reason']}"
        )
    if not parked:
        click.echo("no parked signups")
    for row in parked:
        key = f"{row['email_hash'][:12]}…" if row["email_hash"] else "(no address)"
        click.echo(
            f"{row['id']:>8}  {row['form'] or '?':<20} {key}  "
            f"attempts={row['attempts']}  {row['reason']}"
        )


#: Parked signups are named `P<id>` on the command line, beside plain sync job ids.
PARKED_PREFIX = "P"


@failed.command("retry")
@click.argument("ids", nargs=-1)
@click.option("--all", "retry_all", is_flag=True, help="Replay every failed job and parked signup.")
def failed_retry(ids: tuple[str, ...], retry_all: bool) -> None:
    """Replay failed sync jobs (by id) and parked signups (P<id>), or --all."""
    from worker import publish
    from worker.db import session_scope
    from worker.signups.flush import retry_failed
    from worker.signups.parked import replay

    settings_or_exit()
    if bool(ids) == retry_all:
        raise BadInput("give ids (a sync job's, or P<id> of a parked signup) or --all, not both")
    job_ids: list[int] = []
    parked_ids: list[int] = []
    for given in ids:
        number = given[len(PARKED_PREFIX) :] if given.upper().startswith(PARKED_PREFIX) else given
        if not number.isdigit() or not number.isascii():
            raise BadInput(f"not an id: {given!r} (a sync job's id, or P<id> of a parked signup)")
        (parked_ids if number != given else job_ids).append(int(number))
    with session_scope() as session:
        jobs = retry_failed(session, None if retry_all else job_ids) if retry_all or job_ids else 0
    replayed = 0
    if retry_all or parked_ids:
        with session_scope() as session:
            replayed = replay(session, None if retry_all else parked_ids)
    if not retry_all and jobs + replayed != len(set(job_ids)) + len(set(parked_ids)):
        click.echo("note: some of the given ids were not failed jobs or parked signups", err=True)
    if jobs:
        publish.FLUSH.request(force=True)
    click.echo(f"{jobs} job(s) pending again, {replayed} parked signup(s) queued again")
