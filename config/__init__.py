"""Settings (environment variables with the LISTSYNC_ prefix) and the default retention schedule."""

from config.settings import Settings, get_settings

__all__ = ["Settings", "get_settings"]
