"""Celery tasks for signups."""
