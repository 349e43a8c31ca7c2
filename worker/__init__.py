"""listsync: keeps website signups in step with a Mailchimp audience, honours opt-outs,
and purges form submissions on schedule.

`celery -A worker` finds the Celery app here.
"""

from worker.app import app as celery_app

__all__ = ["celery_app"]
