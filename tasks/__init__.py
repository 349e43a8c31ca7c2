"""Celery task modules: thin wrappers that decode arguments and call worker/."""
