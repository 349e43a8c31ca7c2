"""Checks every long-running process makes at start: a bad forms or retention file stops it."""

from __future__ import annotations

from worker.forms import FormsConfigError, get_forms
from worker.retention.schedule import ScheduleError, get_schedule

ConfigFileError = (FormsConfigError, ScheduleError)


def check_config_files() -> None:
    """Load config/forms.toml and the retention schedule; raises naming the file and line."""
    get_forms()
    get_schedule()
