"""`listsync check`: every form's feed held against the audience (docs/forms.md)."""

from __future__ import annotations

import json
from dataclasses import asdict

import click
from rich.console import Console
from rich.table import Table

from worker.cli.common import ConfigError, ListsyncError, settings_or_exit
from worker.cli.processes import check_services
from worker.forms import Form


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON, for scripts.")
def check(as_json: bool) -> None:
    """Check each form's merge fields, tags, groups, opt-in mode and permissions against the
    audience. Exit 0 when they all hold, 2 naming each problem (their sync waits meanwhile),
    1 when Mailchimp cannot be reached (the last good result stands and is shown)."""
    from worker.feeds.check import run_check
    from worker.forms import get_forms
    from worker.mailchimp import MailchimpError, get_gateway

    settings = settings_or_exit()
    check_services(settings)
    try:
        result = run_check(get_gateway())
    except MailchimpError as exc:  # the gateway itself could not be set up
        raise ListsyncError(f"cannot check: Mailchimp is not configured ({exc.reason})") from None
    forms = get_forms()
    if as_json:
        click.echo(
            json.dumps(
                {
                    "ok": result.ok,
                    "error": result.error,
                    "checked_at": result.checked_at.isoformat() if result.checked_at else None,
                    "problems": {
                        f: [asdict(p) for p in found] for f, found in result.problems.items()
                    },
                },
                indent=2,
            )
        )
    else:
        out = Console(highlight=False)
        for name, form in sorted(forms.items()):
            found = result.problems.get(name, [])
            errors = sum(1 for p in found if p.severity == "error")
            verdict = f"[red]{errors} problem(s)[/red]" if errors else "[green]ok[/green]"
            if len(found) > errors:
                verdict += f", {len(found) - errors} warning(s)"
            table = Table(title=f"{name}: {verdict}", title_justify="left", show_header=False)
            table.add_column(style="bold", no_wrap=True)
            table.add_column()
            for label, value in _feed_rows(form):
                table.add_row(label, value)
            out.print(table)
        for name, found in sorted(result.problems.items()):
            for p in found:
                label = "[red]error[/red]" if p.severity == "error" else "[yellow]warning[/yellow]"
                out.print(f"{label} {name} {p.key} ({p.code}): {p.message}")
        if result.error:
            out.print(
                f"[yellow]Mailchimp could not be read ({result.error}); the last good result "
                f"is shown ({result.checked_at or 'none yet'})[/yellow]"
            )
    if result.error is not None:
        raise ListsyncError(f"Mailchimp could not be read ({result.error})")
    if not result.ok:
        raise ConfigError("some forms disagree with the audience; their sync waits")


def _feed_rows(form: Form) -> list[tuple[str, str]]:
    groups = [f"{title}: {', '.join(names)}" for title, names in form.interests.items()]
    groups += [f"{title}: from the field {field}" for field, title in form.interest_fields.items()]
    language = form.language or (
        f"from the field {form.language_field}" if form.language_field else ""
    )
    return [
        ("consent", form.consent),
        ("merge fields", ", ".join(sorted(form.merge_tags)) or "-"),
        ("tags", ", ".join(form.tags) or "-"),
        ("groups", "; ".join(groups) or "-"),
        ("opt-in", _opt_in(form.double_optin)),
        ("language", language or "-"),
        ("permissions", ", ".join(form.marketing_permissions) or "-"),
    ]


def _opt_in(value: bool | str | None) -> str:
    if value is None:
        return "global rule"
    if value == "audience":
        return "as the audience"
    return "double" if value else "single"
