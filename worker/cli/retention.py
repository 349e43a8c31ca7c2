"""`listsync retention show`, `listsync purge [--dry-run]` and `listsync hold add|list|release`."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, date, datetime, time, timedelta

import click

from worker.cli.common import BadInput, ConfigError, read_address, settings_or_exit

DUE_WINDOWS_DAYS = (1, 7, 30)


@contextmanager
def _checked() -> Iterator[None]:
    """Settings problems → one line, exit 1; a bad schedule file or bad input → exit 2."""
    from worker.retention.holds import InvalidRequest
    from worker.retention.schedule import ScheduleError, get_schedule

    settings_or_exit()
    try:
        get_schedule()
    except ScheduleError as exc:
        raise ConfigError(f"invalid retention schedule: {exc}") from None
    try:
        yield
    except InvalidRequest as exc:
        raise BadInput(str(exc)) from None


def parse_until(value: str | None) -> datetime | None:
    """YYYY-MM-DD (held through the end of that UTC day) or an ISO datetime with offset."""
    if value is None:
        return None
    try:
        if len(value) == 10:
            day = date.fromisoformat(value)
            return datetime.combine(day + timedelta(days=1), time(), tzinfo=UTC)
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise BadInput(f"--until: not a date: {value!r} (use YYYY-MM-DD)") from None
    if moment.tzinfo is None:
        raise BadInput("--until: give a date (YYYY-MM-DD) or a datetime with a UTC offset")
    return moment.astimezone(UTC)


# --- retention show ---------------------------------------------------------------------


@click.group()
def retention() -> None:
    """The retention schedule."""


@retention.command("show")
@click.option("--json", "as_json", is_flag=True, help="Print as JSON, for scripts.")
def retention_show(as_json: bool) -> None:
    """Print the schedule and how many submissions fall due in the next 1, 7 and 30 days."""
    from sqlalchemy import func, select

    from worker.db import session_scope
    from worker.models import Submission, utcnow
    from worker.retention.purge import due_between
    from worker.retention.schedule import get_schedule

    with _checked():
        schedule = get_schedule()
        now = utcnow()
        with session_scope() as session:
            overdue = int(
                session.scalar(
                    select(func.count(Submission.id)).where(Submission.need_until <= now)
                )
                or 0
            )
            waiting = int(
                session.scalar(
                    select(func.count(Submission.id)).where(Submission.need_until.is_(None))
                )
                or 0
            )
            due = {
                days: due_between(session, now, now + timedelta(days=days))
                for days in DUE_WINDOWS_DAYS
            }
    report = {
        "file": schedule.source,
        "policy_version": schedule.policy_version,
        "rules": schedule.texts,
        "due_now": overdue,
        "due_within_days": {str(days): n for days, n in due.items()},
        "waiting_for_sync": waiting,
    }
    if as_json:
        click.echo(json.dumps(report, indent=2))
        return
    click.echo(f"retention schedule {schedule.source}")
    click.echo(f"policy version: {schedule.policy_version}")
    width = max(len(k) for k in schedule.texts)
    for key, value in schedule.texts.items():
        click.echo(f"  {key:<{width}}  {value}")
    click.echo(f"submissions due now (next purge): {overdue}")
    for days, n in due.items():
        click.echo(f"due within {days:>2} day{'s' if days > 1 else ' '}: {n}")
    click.echo(f"waiting for their sync to start the clock: {waiting}")


# --- purge ------------------------------------------------------------------------------


@click.command()
@click.option("--dry-run", is_flag=True, help="Count what is due; delete nothing.")
@click.option(
    "--chunk-size",
    type=click.IntRange(1, 100_000),
    default=None,
    help="Rows per transaction (default 1000).",
)
def purge(dry_run: bool, chunk_size: int | None) -> None:
    """Delete what the retention schedule says is due (runs to completion)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    from worker.db import session_scope
    from worker.models import utcnow
    from worker.retention import purge as retention_purge
    from worker.retention.schedule import get_schedule

    with _checked():
        now = utcnow()
        with session_scope() as session:
            totals = retention_purge.count_due(session, get_schedule(), now)
        with Progress(
            TextColumn("{task.description:<17}"),
            BarColumn(),
            MofNCompleteColumn(),
            transient=False,
        ) as bar:
            tasks = {kind: bar.add_task(kind, total=totals[kind]) for kind in totals}

            def advance(kind: str, n: int) -> None:
                bar.advance(tasks[kind], n)

            result = retention_purge.purge(
                dry_run=dry_run,
                now=now,
                chunk_size=chunk_size or retention_purge.CHUNK_SIZE,
                progress=advance,
            )
            for kind, n in result.counts.items():  # exact figures once done
                bar.update(tasks[kind], completed=n, total=max(n, totals[kind]))
    if result.locked_out:
        click.echo("another purge is running; nothing done")
        return
    verb = "would delete" if dry_run else "deleted"
    click.echo(f"{'dry run: ' if dry_run else ''}cutoff {result.cutoff:%Y-%m-%d %H:%M:%S}Z")
    for kind, n in result.counts.items():
        click.echo(f"  {kind:<17} {verb} {n}")
    click.echo(f"  held, skipped     {result.held_skipped}")
    click.echo(f"  {result.duration_seconds:.2f}s, audit row purge_run {result.run_id}")


# --- holds ------------------------------------------------------------------------------


@click.group()
def hold() -> None:
    """Holds keep records from the purge (a public-records request, an investigation)."""


@hold.command("add")
@click.option("--submission", "submission_id", type=int, default=None, help="A submission id.")
@click.option(
    "--email", default=None, help="Hold every record of this address (`-`: read it from stdin)."
)
@click.option("--reason", required=True, help="Why, e.g. a records request number.")
@click.option("--until", default=None, help="End of the hold, YYYY-MM-DD (UTC); default: open.")
def hold_add(submission_id: int | None, email: str | None, reason: str, until: str | None) -> None:
    """Place a hold on one submission or on everything about one address."""
    from worker.db import session_scope
    from worker.retention.holds import add_hold

    if email is not None:
        email = read_address(email, "--email")
    with _checked():
        ends = parse_until(until)
        with session_scope() as session:
            placed = add_hold(
                session, submission_id=submission_id, email=email, reason=reason, until=ends
            )
            hold_id = placed.id
    click.echo(f"hold {hold_id} placed" + (f" until {ends:%Y-%m-%d %H:%M}Z" if ends else ""))


@hold.command("list")
@click.option("--all", "include_released", is_flag=True, help="Include released and ended holds.")
def hold_list(include_released: bool) -> None:
    """Active holds (id, what, reason, until)."""
    from worker.db import session_scope
    from worker.retention.holds import list_holds

    with _checked(), session_scope() as session:
        holds = list_holds(session, include_released=include_released)
        rows = [
            (
                h.id,
                f"submission {h.submission_id}"
                if h.submission_id is not None
                else f"address {str(h.email_hash)[:12]}…",
                h.reason,
                f"{h.until:%Y-%m-%d %H:%M}Z" if h.until else "open",
                f"released {h.released_at:%Y-%m-%d}" if h.released_at else "",
            )
            for h in holds
        ]
    if not rows:
        click.echo("no holds")
    for hold_id, what, reason, until, released in rows:
        click.echo(f"{hold_id:>6}  {what:<24} until {until:<17} {released} {reason}".rstrip())


@hold.command("release")
@click.argument("hold_id", type=int)
def hold_release(hold_id: int) -> None:
    """Release a hold; its records fall due at the next purge."""
    from worker.db import session_scope
    from worker.retention.holds import release_hold

    with _checked(), session_scope() as session:
        released = release_hold(session, hold_id)
    click.echo(f"hold {hold_id} released" if released else f"hold {hold_id} was already released")
