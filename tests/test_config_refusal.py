"""Configuration that would fail every signup is refused when any process starts: exit 2,
naming `file:line`, before a single message is taken."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT
from tests.helpers import run_listsync
from worker.forms import FormsConfigError, load_forms
from worker.retention.schedule import ScheduleError, parse_schedule

LONG_NAME = "f" * 65  # submission.form holds 64 characters
FORMS = f"""# the website's forms
[forms.newsletter_signup]
consent = "implied"
fields = ["first_name"]

[forms.{LONG_NAME}]
consent = "none"
fields = []
"""
SCHEDULE = """policy_version = "v1"
[forms]
default = "90d"
survey = "3650000d"
"""


def test_a_form_name_longer_than_its_column_is_refused_naming_file_and_line(
    tmp_path: Path,
) -> None:
    path = tmp_path / "forms.toml"
    path.write_text(FORMS.replace(LONG_NAME, LONG_NAME[:64]))
    assert LONG_NAME[:64] in load_forms(path)  # 64 fit
    path.write_text(FORMS)
    with pytest.raises(FormsConfigError) as caught:
        load_forms(path)
    assert f"{path}:6: [forms.{LONG_NAME}]" in str(caught.value)
    assert "at most 64 characters" in str(caught.value)


@pytest.mark.parametrize("period", ["3650000d", "10000000000000w", "999999999999999999d"])
def test_a_period_that_would_overflow_a_date_is_refused_naming_the_line(period: str) -> None:
    text = SCHEDULE.replace("3650000d", period)
    with pytest.raises(ScheduleError) as caught:
        parse_schedule(text, "r.toml")
    assert "r.toml:4: forms.survey: the period may be at most 100 years" in str(caught.value)


def test_a_hundred_years_is_still_accepted() -> None:
    schedule = parse_schedule(SCHEDULE.replace("3650000d", "36500d"), "r.toml")
    assert schedule.rule_for("survey").period.days == 36500


@pytest.fixture
def bad_files(tmp_path: Path, settings_env: dict[str, str]) -> dict[str, str]:
    forms = tmp_path / "forms.toml"
    forms.write_text(FORMS)
    return {**settings_env, "LISTSYNC_FORMS_FILE": str(forms)}


def _plain(argv: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        argv,
        cwd=ROOT,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.mark.parametrize(
    "command",
    [
        ["worker"],
        ["beat"],
        ["web"],
        ["run"],
        [sys.executable, "-m", "celery", "-A", "worker", "worker", "-Q", "maintenance"],
        [sys.executable, "-m", "celery", "-A", "worker", "beat"],
        [sys.executable, "-m", "uvicorn", "--factory", "worker.web.app:serve_app", "--port", "0"],
    ],
    ids=[
        "listsync worker",
        "listsync beat",
        "listsync web",
        "listsync run",
        "celery worker",
        "celery beat",
        "uvicorn",
    ],
)
def test_every_process_refuses_to_start_with_exit_2(
    command: list[str], bad_files: dict[str, str], db: str, tmp_path: Path
) -> None:
    if command[0] == sys.executable:
        result = _plain(
            [*command, *(["-s", str(tmp_path / "s")] if "beat" in command else [])], bad_files
        )
    else:
        result = run_listsync(*command, env=bad_files)
    output = result.stderr + result.stdout
    assert result.returncode == 2, output[-2000:]
    assert f"forms.toml:6: [forms.{LONG_NAME}]" in output
    assert "Traceback" not in output
