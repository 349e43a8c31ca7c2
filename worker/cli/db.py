"""`listsync db ...`: schema migrations."""

from __future__ import annotations

import click
from sqlalchemy.exc import OperationalError

from worker.cli.common import ListsyncError, settings_or_exit


@click.group()
def db() -> None:
    """Database schema."""


@db.command()
def upgrade() -> None:
    """Apply all migrations (safe to run again)."""
    from worker.db import safe_url
    from worker.migrate import upgrade as do_upgrade

    settings = settings_or_exit()
    try:
        do_upgrade(settings.database_url)
    except OperationalError as exc:
        raise ListsyncError(
            f"cannot reach the database at {safe_url(settings.database_url)} "
            f"(LISTSYNC_DATABASE_URL): {str(exc.orig).strip().splitlines()[0]}"
        ) from None
    click.echo(f"database at {safe_url(settings.database_url)} is up to date")
