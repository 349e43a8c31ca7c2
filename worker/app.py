"""The Celery application; every setting lives in celeryconfig.py."""

from __future__ import annotations

from typing import Any

from celery import Celery
from celery.signals import beat_init, worker_init, worker_process_init, worker_ready

app = Celery("listsync")
app.config_from_object("celeryconfig")


@worker_process_init.connect
def _start_pool_process(**_: Any) -> None:
    from config import get_settings
    from worker.db import dispose_engines
    from worker.startup import freeze_startup_objects, lower_priority

    dispose_engines()  # a forked pool process must not share its parent's database sockets
    lower_priority(get_settings().worker_nice)
    freeze_startup_objects()


@worker_init.connect
@beat_init.connect
def _check_config_files(**_: Any) -> None:
    # A bad forms or retention file stops the worker and beat at start, naming file and line.
    # SystemExit, because Celery logs and swallows ordinary exceptions from signal handlers.
    from worker.startup import ConfigFileError, check_config_files

    try:
        check_config_files()
    except ConfigFileError as exc:
        raise SystemExit(f"invalid configuration file: {exc}") from None


@worker_ready.connect
def _apply_what_a_killed_worker_left(**_: Any) -> None:
    from worker.optouts.inbox import on_worker_start

    on_worker_start()
