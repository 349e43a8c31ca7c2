"""What every command shares: one clear line for bad settings and unreachable services."""

from __future__ import annotations

import os
import sys
from typing import NoReturn

import click
from pydantic import ValidationError

from config import Settings, get_settings
from worker.files import PRIVATE_UMASK


class ListsyncError(click.ClickException):
    """A problem the operator can fix: printed as one line, exit status 1."""


class ConfigError(ListsyncError):
    """A configuration file that would fail the work (forms, retention): exit status 2."""

    exit_code = 2


class BadInput(click.UsageError):
    """Bad input on the command line (unknown email, malformed date): exit status 2."""


def settings_or_exit() -> Settings:
    try:
        return get_settings()
    except ValidationError as exc:
        raise ListsyncError(describe_settings_error(exc)) from None


def describe_settings_error(exc: ValidationError) -> str:
    lines = []
    for error in exc.errors():
        name = "LISTSYNC_" + "_".join(str(p) for p in error["loc"] if isinstance(p, str)).upper()
        lines.append(f"{name}: {error['msg']}")
    return "invalid setting: " + "; ".join(lines)


def read_address(value: str, option: str = "EMAIL") -> str:
    """An address given on the command line, or read from standard input when it is `-`:
    command lines show in `ps` and stay in shell history, standard input does not."""
    if value != "-":
        return value
    line = str(sys.stdin.readline()).strip()
    if not line:
        raise BadInput(f"{option} is `-` but standard input holds no address")
    return line


def run_cli(group: click.Group) -> NoReturn:
    # Everything a command writes (SQLite, exports, run.env, the embedded Redis's files, the
    # processes `run` starts) is for its owner only.
    os.umask(PRIVATE_UMASK)
    try:
        group.main(standalone_mode=False)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.Abort:
        click.echo("aborted", err=True)
        sys.exit(1)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except ValidationError as exc:
        click.echo(f"Error: {describe_settings_error(exc)}", err=True)
        sys.exit(1)
    sys.exit(0)
