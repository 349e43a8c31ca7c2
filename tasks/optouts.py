"""Celery tasks for optouts (see worker/optouts.py)."""
