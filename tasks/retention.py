"""Celery tasks for retention (see worker/retention.py)."""
