"""`listsync export`, `listsync correct`, `listsync erase`: the person's rights (P4, P7, P10)."""

from __future__ import annotations

import json
from pathlib import Path

import click

from worker.cli.common import BadInput, read_address
from worker.cli.retention import _checked
from worker.files import create_private


def _nudge_flush() -> None:
    """Best effort: the sync sweep picks the job up anyway if Redis is away."""
    from worker import publish

    publish.FLUSH.request()


@click.command()
@click.argument("email")
@click.option(
    "--out",
    "out",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Write the JSON to this new file (mode 0600) instead of standard output; "
    "an existing file or a symbolic link there is refused.",
)
@click.option("--include-ip", is_flag=True, help="Include form IPs (needs --reason; recorded).")
@click.option("--reason", default=None, help="Why IPs are needed (a criminal investigation).")
def export(email: str, out: Path | None, include_ip: bool, reason: str | None) -> None:
    """Everything held about EMAIL, as JSON (access request, public-records request).

    EMAIL may be `-`: the address is then read from standard input (kept out of ps)."""
    from worker.db import session_scope
    from worker.rights import export as export_records

    email = read_address(email)
    if reason is not None and not include_ip:
        raise BadInput("--reason goes with --include-ip")
    if include_ip and not (reason or "").strip():
        raise BadInput("--include-ip needs --reason TEXT: IPs are used only for an investigation")
    if out is not None and not out.parent.is_dir():
        raise BadInput(f"--out: directory {out.parent} does not exist")
    if out is not None and (out.exists() or out.is_symlink()):
        raise BadInput(f"--out: {out} already exists; an export goes to a new file only")
    with _checked(), session_scope() as session:
        data = export_records(session, email, include_ip=include_ip, ip_reason=reason)
    # Out only after the commit: an export with IPs is never given without its audit row.
    text = json.dumps(data, indent=2, ensure_ascii=False) + "\n"
    if out is None:
        click.echo(text, nl=False)
    else:
        # Personal data: a new file, owner-only from creation, never through a link. Checked
        # above for a clear message; the exclusive create is what guarantees it.
        try:
            create_private(out, text)
        except FileExistsError:
            raise BadInput(
                f"--out: {out} already exists; an export goes to a new file only"
            ) from None
        click.echo(f"written to {out}", err=True)


@click.command()
@click.argument("email")
@click.option(
    "--set",
    "assignments",
    multiple=True,
    metavar="FIELD=VALUE",
    required=True,
    help="A merge field to correct, e.g. FNAME=Ada (repeatable).",
)
def correct(email: str, assignments: tuple[str, ...]) -> None:
    """Correct EMAIL's merge fields here and in Mailchimp (PATCH; status untouched).

    EMAIL may be `-`: the address is then read from standard input (kept out of ps)."""
    from worker.db import session_scope
    from worker.rights import correct as correct_records
    from worker.rights import parse_assignments

    email = read_address(email)
    with _checked():
        changes = parse_assignments(assignments)
        with session_scope() as session:
            job = correct_records(session, email, changes)
            job_id = job.id
    _nudge_flush()
    click.echo(
        f"corrected {', '.join(sorted(changes))}; Mailchimp update queued (sync job {job_id})"
    )


@click.command()
@click.argument("email")
@click.option("--reason", required=True, help="The request, e.g. its reference number.")
def erase(email: str, reason: str) -> None:
    """Erase EMAIL here and in Mailchimp (delete-permanent); keep only a suppression hash.

    EMAIL may be `-`: the address is then read from standard input (kept out of ps)."""
    from worker.db import session_scope
    from worker.rights import erase as erase_records

    email = read_address(email)
    with _checked(), session_scope() as session:
        report = erase_records(session, email, reason)
    _nudge_flush()
    click.echo(
        f"erased {report.email_hash[:12]}…: {report.submissions} submissions, {report.ips} IPs, "
        f"{report.parked} parked signups, {report.jobs_suppressed} queued jobs stopped; "
        "Mailchimp deletion queued "
        f"(sync job {report.sync_job_id}, again as {report.erase_again_job_id} once calls "
        "already out have landed)"
    )
