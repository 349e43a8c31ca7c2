"""The Celery application; every setting lives in celeryconfig.py.

Only worker/publish.py and the task modules in tasks/ import it; the domain publishes
through worker/publish.py.
"""

from __future__ import annotations

from celery import Celery

app = Celery("listsync")
app.config_from_object("celeryconfig")
