"""Retention: the schedule, the purge and holds."""
