"""The Celery application; every setting lives in celeryconfig.py."""

from __future__ import annotations

from typing import Any

from celery import Celery
from celery.signals import worker_process_init

app = Celery("listsync")
app.config_from_object("celeryconfig")


@worker_process_init.connect
def _fresh_connections_after_fork(**_: Any) -> None:
    # A forked pool process must not share its parent's database sockets.
    from worker.db import dispose_engines

    dispose_engines()
