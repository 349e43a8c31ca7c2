"""The `listsync` command. Each area adds its commands from its own module here."""

from __future__ import annotations

import click

from worker.cli.common import run_cli
from worker.cli.db import db
from worker.cli.feeds import check
from worker.cli.ops import flower, status
from worker.cli.processes import beat, run, web, worker
from worker.cli.retention import hold, purge, retention
from worker.cli.rights import correct, erase, export
from worker.cli.signups import enqueue, failed
from worker.cli.webhooks import webhook
from worker.emulator.cli import emulator


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="listsync", prog_name="listsync")
def cli() -> None:
    """listsync: website signups to Mailchimp, opt-outs back, submissions purged on time."""


for command in (
    *(run, worker, beat, web, db, check, enqueue, failed, emulator, status, flower, webhook),
    *(retention, purge, hold, export, correct, erase),
):
    cli.add_command(command)


def main() -> None:
    run_cli(cli)
