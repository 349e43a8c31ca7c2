"""What long-running processes do at start: check the config files (a bad forms or retention
file stops the process), and, once started, keep the cycle collector off their start-up
objects."""

from __future__ import annotations

import gc

from worker.forms import FormsConfigError, get_forms
from worker.retention.schedule import ScheduleError, get_schedule

ConfigFileError = (FormsConfigError, ScheduleError)


def check_config_files() -> None:
    """Load config/forms.toml and the retention schedule; raises naming the file and line."""
    get_forms()
    get_schedule()


def freeze_startup_objects() -> None:
    """Take the objects alive once a process has started out of the garbage collector's sight.

    Modules, classes, the app and its routes are never garbage, yet every full collection
    walks them all (about 140,000 objects in a web process), and a web process's event loop
    answers nothing while it does. Frozen objects are still freed by reference counting;
    only the cycle search skips them. Call once, at the end of start-up.
    """
    gc.collect()  # what is garbage now must not be kept for ever
    gc.freeze()
