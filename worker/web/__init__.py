"""The ASGI web app (`listsync web`): webhook receiver, signup intake, health and metrics."""
