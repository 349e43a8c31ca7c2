"""The schedule file: rules per form with a default, extra periods, errors that name the line."""

from __future__ import annotations

import os
from datetime import timedelta
from pathlib import Path

import pytest

from worker.retention.schedule import (
    DEFAULT_FILE,
    Rule,
    ScheduleError,
    get_schedule,
    load_schedule,
    parse_schedule,
)

GOOD = """policy_version = "v1"
[forms]
default = "90d"
newsletter_signup = "30d after synced"
"""


def test_default_file_gives_each_form_its_rule_and_unlisted_forms_the_default() -> None:
    schedule = load_schedule(DEFAULT_FILE)
    assert schedule.rule_for("newsletter_signup") == Rule(timedelta(days=30), after_synced=True)
    assert schedule.rule_for("survey") == Rule(timedelta(days=365), after_synced=False)
    assert schedule.rule_for("no_such_form") == schedule.default
    assert schedule.ip_retention == timedelta(days=30)


def test_left_out_keep_periods_take_their_defaults() -> None:
    schedule = parse_schedule(GOOD, "x.toml")
    assert schedule.ip_retention == timedelta(days=30)
    assert schedule.failed_job_retention == timedelta(days=180)


@pytest.mark.parametrize(
    ("text", "where", "problem"),
    [
        (GOOD + 'survey = "12 days"\n', "x.toml:5:", "forms.survey"),
        (GOOD + '[keep]\nip = "7d after synced"\n', "x.toml:6:", "forms only"),
        (GOOD + '[keep]\nipp = "7d"\n', "x.toml:6:", "unknown key keep.ipp"),
        (GOOD + 'survey = "0d"\n', "x.toml:5:", "longer than zero"),
        (GOOD.replace('default = "90d"\n', ""), "x.toml:2:", "needs a `default`"),
        ('policy_version = ""\n[forms]\ndefault = "1d"\n', "x.toml:1:", "policy_version"),
        (GOOD + "survey = \n", "line 5", "invalid TOML"),
    ],
)
def test_invalid_schedule_names_file_line_and_problem(text: str, where: str, problem: str) -> None:
    with pytest.raises(ScheduleError) as caught:
        parse_schedule(text, "x.toml")
    assert where in str(caught.value) and problem in str(caught.value)


def test_get_schedule_reads_the_configured_file_once_per_process(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from config import get_settings

    path = tmp_path / "r.toml"
    path.write_text(GOOD, encoding="utf-8")
    monkeypatch.setenv("LISTSYNC_RETENTION_FILE", str(path))
    get_settings.cache_clear()
    try:
        first = get_schedule()
        path.write_text(GOOD.replace("v1", "v2"), encoding="utf-8")
        assert get_schedule() is first and first.policy_version == "v1"
        get_schedule.cache_clear()  # type: ignore[attr-defined]
        assert get_schedule().policy_version == "v2"
    finally:
        get_settings.cache_clear()


def test_worker_and_beat_refuse_to_start_with_an_invalid_schedule(
    tmp_path: Path, db: str, settings_env: dict[str, str]
) -> None:
    import subprocess
    import sys

    from tests.helpers import run_listsync

    path = tmp_path / "r.toml"
    path.write_text(GOOD + 'survey = "soon"\n', encoding="utf-8")
    env = {**settings_env, "LISTSYNC_RETENTION_FILE": str(path)}
    result = run_listsync("worker", env=env)
    assert result.returncode == 2
    assert "r.toml:5: forms.survey" in result.stderr and "Traceback" not in result.stderr
    # The plain Celery command stops too (the check runs on worker_init / beat_init).
    beat = subprocess.run(
        [sys.executable, "-m", "celery", "-A", "worker", "beat", "-s", str(tmp_path / "sched")],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert beat.returncode == 2
    assert "r.toml:5: forms.survey" in beat.stderr + beat.stdout
