"""What worker, pool and beat processes do as they start (Celery signals).

Loaded with the task modules (celeryconfig.imports), which Celery imports before it sends
worker_init or beat_init.
"""

from __future__ import annotations

import sys
from typing import Any

from celery.signals import beat_init, worker_init, worker_process_init, worker_ready

from worker import publish
from worker.db import dispose_engines
from worker.optouts.inbox import on_worker_start
from worker.startup import ConfigFileError, check_config_files, freeze_startup_objects


@worker_process_init.connect
def _start_pool_process(**_: Any) -> None:
    dispose_engines()  # a forked pool process must not share its parent's database sockets
    freeze_startup_objects()


@worker_init.connect
@beat_init.connect
def _check_config_files(**_: Any) -> None:
    # A bad forms or retention file stops the worker and beat at start, naming file and line,
    # with exit status 2 as every listsync command. SystemExit, because Celery logs and
    # swallows ordinary exceptions from signal handlers.
    try:
        check_config_files()
    except ConfigFileError as exc:
        print(f"invalid configuration file: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


@worker_ready.connect
def _catch_up(**_: Any) -> None:
    on_worker_start()  # events a killed worker left pending
    publish.CHECK.request()  # the forms against the audience, as it is now
